//! Helpers of the crate's own unit tests.

/// The seed of a randomized test: `$EDGE_FILTER_SEED` (decimal or `0x`
/// hex) repeats a run, otherwise a fresh one. Printed, so a failure in CI
/// can be replayed; every panic message also names it.
pub(crate) fn seed() -> u64 {
    let seed = match std::env::var("EDGE_FILTER_SEED") {
        Ok(s) => {
            let t = s.trim();
            let v = match t.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => t.parse(),
            };
            v.unwrap_or_else(|_| panic!("EDGE_FILTER_SEED={s:?} is not a number"))
        }
        Err(_) => rand::random(),
    };
    println!("EDGE_FILTER_SEED={seed}");
    seed
}
