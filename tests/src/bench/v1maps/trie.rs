//! The trie bookkeeping of incremental updates: keys masked to a prefix
//! length or filled past it, finding the nodes a changed prefix covers and
//! re-flattening them ([`flat_value`]: each node carries the strongest
//! action of the prefixes covering it), and the per-length probe filter
//! ([`LenFilter`]) that keeps an incremental update's trie work in
//! proportion to the change. A full build flattens with
//! `edge_filter`'s own one-sweep flatten (in `Desired::build_from`). Knows
//! tries as ordered maps of `(length, key)`, nothing of the maps they
//! belong to.

use std::collections::BTreeMap;

use edge_filter_common::{EntryValue, PORT_PREFIX_FIXED_BITS, PortPrefixV4, PortPrefixV6};

/// Trie keys whose leading `bits` can be kept (masked) or filled (the last
/// key a prefix covers), for flattening and for finding covered nodes.
pub(super) trait TrieKey: Copy + Ord {
    /// Where [`TrieKey::window`] starts: the bits before it are the same
    /// for every node a prefix of this length or longer covers.
    const BUCKET_AT: u32;
    /// Keep the first `bits` bits, zero the rest.
    fn masked(&self, bits: u32) -> Self;
    /// Keep the first `bits` bits, set the rest to one.
    fn filled(&self, bits: u32) -> Self;
    /// The 32 bits from [`TrieKey::BUCKET_AT`], whose leading bits are the
    /// key's bucket in a [`LenFilter`].
    fn window(&self) -> u32;
}

fn mask_bytes<const N: usize>(mut b: [u8; N], bits: u32, fill: bool) -> [u8; N] {
    for (i, x) in b.iter_mut().enumerate() {
        let lo = i as u32 * 8;
        let keep: u8 = if lo >= bits {
            0
        } else if lo + 8 > bits {
            0xffu8 << (8 - (bits - lo))
        } else {
            0xff
        };
        *x = if fill { *x | !keep } else { *x & keep };
    }
    b
}

impl<const N: usize> TrieKey for [u8; N] {
    const BUCKET_AT: u32 = 0;
    fn masked(&self, bits: u32) -> Self {
        mask_bytes(*self, bits, false)
    }
    fn filled(&self, bits: u32) -> Self {
        mask_bytes(*self, bits, true)
    }
    fn window(&self) -> u32 {
        u32::from_be_bytes([self[0], self[1], self[2], self[3]])
    }
}

macro_rules! port_prefix_key {
    ($t:ty, $n:expr) => {
        impl TrieKey for $t {
            const BUCKET_AT: u32 = PORT_PREFIX_FIXED_BITS;
            fn masked(&self, bits: u32) -> Self {
                self.with(bits, false)
            }
            fn filled(&self, bits: u32) -> Self {
                self.with(bits, true)
            }
            fn window(&self) -> u32 {
                u32::from_be_bytes([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
            }
        }
        impl PortPrefixBytes for $t {
            fn with(&self, bits: u32, fill: bool) -> Self {
                let mut b = [0u8; $n];
                b[0] = self.proto;
                b[1] = self.side;
                b[2..4].copy_from_slice(&self.port);
                b[4..].copy_from_slice(&self.addr);
                let b = mask_bytes(b, bits, fill);
                let mut out = *self;
                out.proto = b[0];
                out.side = b[1];
                out.port = [b[2], b[3]];
                out.addr.copy_from_slice(&b[4..]);
                out
            }
        }
    };
}

trait PortPrefixBytes {
    fn with(&self, bits: u32, fill: bool) -> Self;
}

port_prefix_key!(PortPrefixV4, 8);
port_prefix_key!(PortPrefixV6, 20);

/// Distinct prefix lengths of a trie, longest first: one range seek per
/// distinct length (keys are ordered by length first), not a walk over
/// every node, so an incremental update stays proportional to the change.
pub(super) fn lengths_or_empty<K: TrieKey>(trie: &BTreeMap<(u32, K), EntryValue>) -> Vec<u32> {
    let Some((&(_, any), _)) = trie.first_key_value() else {
        return Vec::new();
    };
    // All bits zero: the smallest key data of any length.
    let zero = any.masked(0);
    let mut lens: Vec<u32> = Vec::new();
    let mut from = 0;
    while let Some((&(l, _), _)) = trie.range((from, zero)..).next() {
        lens.push(l);
        match l.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    lens.reverse();
    lens
}

/// The strongest action among node `(len, key)` and the shorter nodes
/// covering it (ties keep the longer, more specific node as decider).
pub(super) fn flat_value<K: TrieKey>(
    trie: &BTreeMap<(u32, K), EntryValue>,
    lens: &[u32],
    filter: Option<&LenFilter>,
    fixed: u32,
    len: u32,
    key: K,
    own: EntryValue,
) -> EntryValue {
    let mut best = (own.own_action, own.id);
    for &l in lens.iter().filter(|&&l| l < len && l >= fixed) {
        let k = key.masked(l);
        if filter.is_some_and(|f| !f.may_hold(l, &k)) {
            continue;
        }
        if let Some(c) = trie.get(&(l, k))
            && c.own_action > best.0
        {
            best = (c.own_action, c.id);
        }
    }
    EntryValue {
        action: best.0,
        decider: best.1,
        ..own
    }
}

/// Every existing node covered by prefix `(len, key)`, itself included.
pub(super) fn covered<'a, K: TrieKey>(
    trie: &'a BTreeMap<(u32, K), EntryValue>,
    lens: &'a [u32],
    filter: Option<&'a LenFilter>,
    len: u32,
    key: K,
) -> impl Iterator<Item = ((u32, K), EntryValue)> + 'a {
    let (lo, hi) = (key.masked(len), key.filled(len));
    lens.iter()
        .filter(move |&&l| l >= len && filter.is_none_or(|f| f.may_cover(l, len, &lo)))
        .flat_map(move |&l| trie.range((l, lo)..=(l, hi)).map(|(k, v)| (*k, *v)))
}

/// Which buckets of a trie's keys hold nodes, per prefix length: a filter
/// in front of the per-length probes of an incremental update
/// ([`flat_value`], [`covered`]). With ~100k prefixes over 23 lengths,
/// nearly every probe for a changed prefix finds nothing; a B-tree seek
/// costs ~200 ns, a look at this filter a few.
///
/// A node of length `l` falls in the bucket given by its first
/// `min(l, 20)` bits after [`TrieKey::BUCKET_AT`] (at most 2^20 bits, 128 KiB,
/// per length in use). A bit is set when a node arrives and cleared when
/// the last node of its bucket leaves (one range query), so the filter
/// never hides a node. Port-prefix tries (whose buckets mix ports) only
/// ever set bits. Valid only together with the trie it follows:
/// [`V1Maps`](super::V1Maps) keeps it next to its shadow copy
/// ([`TrieFilters`](super::plan::TrieFilters)).
#[derive(Clone, Debug, Default)]
pub(super) struct LenFilter {
    by_len: Vec<Option<Box<[u64]>>>,
}

impl LenFilter {
    const MAX_BITS: u32 = 20;
    /// Longest bucket range [`LenFilter::may_cover`] scans.
    const MAX_SCAN: usize = 4096;

    fn width<K: TrieKey>(len: u32) -> u32 {
        len.saturating_sub(K::BUCKET_AT).min(Self::MAX_BITS)
    }

    fn bucket<K: TrieKey>(len: u32, key: &K) -> usize {
        match Self::width::<K>(len) {
            0 => 0,
            w => (key.window() >> (32 - w)) as usize,
        }
    }

    pub(super) fn build<K: TrieKey>(trie: &BTreeMap<(u32, K), EntryValue>) -> LenFilter {
        let mut f = LenFilter::default();
        for (l, k) in trie.keys() {
            f.add(*l, k);
        }
        f
    }

    /// Node `(len, key)` arrived.
    pub(super) fn add<K: TrieKey>(&mut self, len: u32, key: &K) {
        let l = len as usize;
        if self.by_len.len() <= l {
            self.by_len.resize_with(l + 1, || None);
        }
        let words = ((1usize << Self::width::<K>(len)) / 64).max(1);
        let bits = self.by_len[l].get_or_insert_with(|| vec![0; words].into());
        let b = Self::bucket(len, key);
        bits[b / 64] |= 1 << (b % 64);
    }

    /// Node `(len, key)` left `trie` (already removed from it).
    pub(super) fn remove<K: TrieKey>(
        &mut self,
        trie: &BTreeMap<(u32, K), EntryValue>,
        len: u32,
        key: &K,
    ) {
        if K::BUCKET_AT != 0 {
            return;
        }
        let Some(Some(bits)) = self.by_len.get_mut(len as usize) else {
            return;
        };
        let w = Self::width::<K>(len);
        let (lo, hi) = (key.masked(w), key.filled(w));
        if trie.range((len, lo)..=(len, hi)).next().is_none() {
            let b = Self::bucket(len, key);
            bits[b / 64] &= !(1 << (b % 64));
        }
    }

    fn any(&self, len: u32, lo: usize, hi: usize) -> bool {
        let Some(Some(bits)) = self.by_len.get(len as usize) else {
            return false;
        };
        (lo / 64..=hi / 64).any(|i| {
            let mut w = bits[i];
            if i == lo / 64 {
                w &= !0u64 << (lo % 64);
            }
            if i == hi / 64 {
                w &= !0u64 >> (63 - hi % 64);
            }
            w != 0
        })
    }

    /// Whether node `(len, key)` (key masked to `len`) may exist.
    fn may_hold<K: TrieKey>(&self, len: u32, key: &K) -> bool {
        let b = Self::bucket(len, key);
        self.any(len, b, b)
    }

    /// Whether a node of length `len` may lie under prefix `(from, key)`.
    fn may_cover<K: TrieKey>(&self, len: u32, from: u32, key: &K) -> bool {
        let lo = Self::bucket(len, &key.masked(from));
        let hi = Self::bucket(len, &key.filled(from));
        hi - lo > Self::MAX_SCAN || self.any(len, lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_filter::entry::Action;
    use edge_filter::kernel::maps::value;
    use rand::{Rng, SeedableRng};

    /// Lengths found by seeking equal those of a walk over every key.
    #[test]
    fn lengths_by_seek() {
        let mut trie: BTreeMap<(u32, PortPrefixV4), EntryValue> = BTreeMap::new();
        assert!(lengths_or_empty(&trie).is_empty());
        for (l, a) in [(40u32, 1u8), (40, 2), (33, 0), (64, 9), (32, 0)] {
            let k = PortPrefixV4 {
                proto: 6,
                side: 0,
                port: [0, 80],
                addr: [a, 0, 0, 0],
            };
            trie.insert((l, k.masked(l)), value(Action::Drop, 0));
        }
        assert_eq!(lengths_or_empty(&trie), vec![64, 40, 33, 32]);
    }

    /// The probe filter never hides a node: covered nodes and flattened
    /// values are the same with and without it while nodes come and go,
    /// and for address tries it stays exact (a bit per non-empty bucket).
    #[test]
    fn len_filter_never_hides_a_node() {
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        const LENS: [u32; 14] = [0, 4, 8, 12, 15, 16, 17, 19, 20, 21, 24, 28, 31, 32];
        // Few distinct /16s: buckets are shared.
        let key = |rng: &mut rand::rngs::StdRng| {
            let l = LENS[rng.random_range(0..LENS.len())];
            let a: [u8; 4] = [
                10,
                rng.random_range(0..3),
                rng.random(),
                rng.random_range(0..4),
            ];
            (l, a.masked(l))
        };
        let bits = |f: &LenFilter, l: usize| -> Vec<u64> {
            match f.by_len.get(l) {
                Some(Some(b)) => b.to_vec(),
                _ => Vec::new(),
            }
        };
        let mut trie: BTreeMap<(u32, [u8; 4]), EntryValue> = BTreeMap::new();
        let mut f = LenFilter::default();
        for round in 0..6000u32 {
            let (l, k) = key(&mut rng);
            if rng.random_bool(0.5) {
                if trie.insert((l, k), value(Action::Drop, round)).is_none() {
                    f.add(l, &k);
                }
            } else if trie.remove(&(l, k)).is_some() {
                f.remove(&trie, l, &k);
            }
            if round % 300 != 0 {
                continue;
            }
            let fresh = LenFilter::build(&trie);
            for l in 0..=32 {
                let (a, b) = (bits(&f, l), bits(&fresh, l));
                let zero = |v: &Vec<u64>| v.iter().all(|&w| w == 0);
                assert!(
                    a == b || (zero(&a) && zero(&b)),
                    "/{l}: kept filter differs from a fresh one, round {round} (seed {seed})"
                );
            }
            let lens = lengths_or_empty(&trie);
            for (l, k) in (0..300)
                .map(|_| key(&mut rng))
                .chain(trie.keys().copied().take(50))
            {
                let a: Vec<_> = covered(&trie, &lens, None, l, k).collect();
                let b: Vec<_> = covered(&trie, &lens, Some(&f), l, k).collect();
                assert_eq!(a, b, "covered by /{l} {k:?}, round {round} (seed {seed})");
                let own = value(Action::Monitor, u32::MAX);
                assert_eq!(
                    flat_value(&trie, &lens, None, 0, l, k, own),
                    flat_value(&trie, &lens, Some(&f), 0, l, k, own),
                    "flat value of /{l} {k:?}, round {round} (seed {seed})"
                );
            }
        }
        // Port prefixes: buckets start at the address, after the fixed bits,
        // and a bit once set stays (their buckets mix ports).
        let fixed = PORT_PREFIX_FIXED_BITS;
        let p = PortPrefixV4 {
            proto: 6,
            side: 0,
            port: [0, 80],
            addr: [192, 0, 2, 0],
        };
        let other = PortPrefixV4 {
            addr: [198, 51, 100, 0],
            ..p
        };
        let mut t: BTreeMap<(u32, PortPrefixV4), EntryValue> = BTreeMap::new();
        let mut f = LenFilter::default();
        f.add(fixed + 24, &p);
        assert!(f.may_hold(fixed + 24, &p));
        assert!(!f.may_hold(fixed + 24, &other));
        assert!(f.may_cover(fixed + 24, fixed + 16, &p));
        assert!(!f.may_cover(fixed + 24, fixed + 16, &other));
        // Shorter than the bucket: a range of buckets is looked at, or,
        // when too long to scan, nothing is excluded.
        let ten = PortPrefixV4 {
            addr: [10, 0, 0, 0],
            ..p
        };
        assert!(f.may_cover(fixed + 24, fixed + 12, &p));
        assert!(!f.may_cover(fixed + 24, fixed + 12, &ten));
        assert!(f.may_cover(fixed + 24, fixed + 1, &ten));
        f.remove(&t, fixed + 24, &p);
        assert!(f.may_hold(fixed + 24, &p));
        t.clear();
    }
}
