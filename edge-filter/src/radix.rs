//! A stable LSD radix sort of 64-bit words by a range of their bits.
//!
//! The agent sorts a million-entry set more than once at every start and
//! refresh (the merge's assertions, the compiler's exact addresses and
//! ids). By comparison, keys of nested enums (`IpNet`, `Option<PortMatch>`)
//! cost a branchy call per step; a radix sort of a packed key is four
//! linear passes.

/// Sort `v` by its bits `lo..hi` (LSD radix, 11 bits a pass; stable).
pub fn sort_by_bits(v: &mut Vec<u64>, lo: u32, hi: u32) {
    const B: u32 = 11;
    // The agent's sets come sorted by key, so the exact addresses
    // collected from them usually are too: one read instead of three or
    // four passes that write (a twelfth of a 1M-entry start).
    let mask = if hi - lo >= 64 {
        u64::MAX
    } else {
        ((1u64 << (hi - lo)) - 1) << lo
    };
    if v.windows(2).all(|w| w[0] & mask <= w[1] & mask) {
        return;
    }
    let mut tmp = vec![0u64; v.len()];
    let mut shift = lo;
    while shift < hi {
        // The last pass reads only the bits below `hi`.
        let digit = (1u64 << B.min(hi - shift)) - 1;
        let mut count = [0usize; 1 << B];
        for &x in v.iter() {
            count[((x >> shift) & digit) as usize] += 1;
        }
        let mut sum = 0;
        for c in count.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for &x in v.iter() {
            let d = ((x >> shift) & digit) as usize;
            tmp[count[d]] = x;
            count[d] += 1;
        }
        std::mem::swap(v, &mut tmp);
        shift += B;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::sort_by_bits;

    /// The radix sort is the standard library's stable sort by the same
    /// bits, sorted input (skipped) or not, with ties among the bits.
    #[test]
    fn radix_sort_is_a_stable_sort_by_its_bits() {
        let seed = crate::testing::seed();
        let mut rng = StdRng::seed_from_u64(seed);
        for (lo, hi) in [(0, 32), (0, 33), (32, 64), (0, 64), (5, 17)] {
            for n in [0, 1, 2, 100, 5000] {
                for sorted in [false, true] {
                    let mask = if hi - lo >= 64 {
                        u64::MAX
                    } else {
                        ((1u64 << (hi - lo)) - 1) << lo
                    };
                    // Sixteen values of the sorted bits (many ties, whose
                    // order the other, random bits tell apart), spread over
                    // the range (every pass sees some of them).
                    let keys: Vec<u64> = (0..16).map(|_| rng.random::<u64>() & mask).collect();
                    let mut v: Vec<u64> = (0..n)
                        .map(|_| rng.random::<u64>() & !mask | keys[rng.random_range(0..16)])
                        .collect();
                    if sorted {
                        v.sort_by_key(|x| x & mask);
                    }
                    let mut want = v.clone();
                    want.sort_by_key(|x| x & mask);
                    sort_by_bits(&mut v, lo, hi);
                    assert_eq!(
                        v, want,
                        "bits {lo}..{hi}, n {n}, sorted {sorted} (seed {seed})"
                    );
                }
            }
        }
    }
}
