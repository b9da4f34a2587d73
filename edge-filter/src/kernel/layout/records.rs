//! The records of one family: every address with exact entries, in
//! address order ([`Records`]).
//!
//! A B-tree keyed by the address as the family's width has it: IPv4 keys
//! are `u32`, IPv6 `u128`. At 1M IPv4 records a 1% change walks the tree
//! about seven times a changed key, each walk a path of cold nodes, and a
//! node's keys are what a walk scans: eleven `u32` keys are one cache line
//! where eleven `u128` keys were three, and a leaf is 188 bytes instead of
//! 320 (the agent keeps about 11 bytes less per entry; see
//! `docs/bench/REPORT-agent.md`).

use std::collections::BTreeMap;
use std::collections::btree_map;

/// The exact (full-length) entries of one address, which has a record:
/// how many there are (the portless one and address+port ones) and the
/// portless one's value. Full-length portless entries live here, not in
/// the family's map of portless nets: a fresh build fills them in address
/// order from a sorted run, and a record's own entry comes with its
/// address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Exact {
    /// Exact entries at the address (portless and address+port).
    pub refs: u32,
    /// The portless entry: (drop?, id).
    pub plain: Option<(bool, u32)>,
}

impl Exact {
    /// Whether address+port entries exist at the address.
    pub fn ported(&self) -> bool {
        self.refs > self.plain.is_some() as u32
    }
}

/// Address → exact entries, in address order (see the module).
#[derive(Clone, Debug)]
pub(crate) enum Records {
    /// IPv4: `u32` keys.
    Narrow(BTreeMap<u32, Exact>),
    /// IPv6: `u128` keys.
    Wide(BTreeMap<u128, Exact>),
}

/// An iterator over `(address, exact entries)` of either width.
pub(crate) enum Iter<A, B> {
    Narrow(A),
    Wide(B),
}

impl<'a, A, B> Iterator for Iter<A, B>
where
    A: Iterator<Item = (&'a u32, &'a Exact)>,
    B: Iterator<Item = (&'a u128, &'a Exact)>,
{
    type Item = (u128, &'a Exact);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Narrow(i) => i.next().map(|(&a, e)| (a as u128, e)),
            Iter::Wide(i) => i.next().map(|(&a, e)| (a, e)),
        }
    }
}

impl Records {
    /// No records, for a family of `width` bits (32 or 128).
    pub fn new(width: u8) -> Records {
        if width == 32 {
            Records::Narrow(BTreeMap::new())
        } else {
            Records::Wide(BTreeMap::new())
        }
    }

    /// Records from `(address, exact)` pairs in strictly increasing
    /// address order (a bulk build into full nodes).
    pub fn from_sorted(width: u8, v: Vec<(u128, Exact)>) -> Records {
        if width == 32 {
            Records::Narrow(v.into_iter().map(|(a, e)| (a as u32, e)).collect())
        } else {
            Records::Wide(v.into_iter().collect())
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Records::Narrow(m) => m.len(),
            Records::Wide(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `a` as an IPv4 key: `None` past 32 bits (no such record).
    fn narrow(a: u128) -> Option<u32> {
        u32::try_from(a).ok()
    }

    pub fn get(&self, a: u128) -> Option<&Exact> {
        match self {
            Records::Narrow(m) => m.get(&Self::narrow(a)?),
            Records::Wide(m) => m.get(&a),
        }
    }

    pub fn contains(&self, a: u128) -> bool {
        self.get(a).is_some()
    }

    /// The record of `a`, made empty if there is none, and whether it was
    /// made. An IPv4 address must fit 32 bits.
    pub fn get_or_insert(&mut self, a: u128) -> (&mut Exact, bool) {
        fn entry<K: Ord>(e: btree_map::Entry<'_, K, Exact>) -> (&mut Exact, bool) {
            match e {
                btree_map::Entry::Occupied(o) => (o.into_mut(), false),
                btree_map::Entry::Vacant(v) => (v.insert(Exact::default()), true),
            }
        }
        match self {
            Records::Narrow(m) => entry(m.entry(a as u32)),
            Records::Wide(m) => entry(m.entry(a)),
        }
    }

    /// Apply `f` to the record of `a` if there is one, removing the record
    /// when `f` says so (one walk of the tree for both).
    pub fn update(&mut self, a: u128, f: impl FnOnce(&mut Exact) -> bool) {
        fn with<K: Ord>(e: btree_map::Entry<'_, K, Exact>, f: impl FnOnce(&mut Exact) -> bool) {
            if let btree_map::Entry::Occupied(mut o) = e
                && f(o.get_mut())
            {
                o.remove();
            }
        }
        match self {
            Records::Narrow(m) => {
                if let Some(k) = Self::narrow(a) {
                    with(m.entry(k), f)
                }
            }
            Records::Wide(m) => with(m.entry(a), f),
        }
    }

    /// Every record in address order.
    pub fn iter(&self) -> Iter<btree_map::Iter<'_, u32, Exact>, btree_map::Iter<'_, u128, Exact>> {
        match self {
            Records::Narrow(m) => Iter::Narrow(m.iter()),
            Records::Wide(m) => Iter::Wide(m.iter()),
        }
    }

    /// The records of addresses `lo..=hi`, in address order.
    pub fn range(
        &self,
        lo: u128,
        hi: u128,
    ) -> Iter<btree_map::Range<'_, u32, Exact>, btree_map::Range<'_, u128, Exact>> {
        match self {
            Records::Narrow(m) => {
                // Nothing past 32 bits; an empty range for `lo > hi`
                // (which `range` would refuse).
                let hi = u32::try_from(hi).unwrap_or(u32::MAX);
                match Self::narrow(lo) {
                    Some(lo) if lo <= hi => Iter::Narrow(m.range(lo..=hi)),
                    _ => Iter::Narrow(m.range(0..0)),
                }
            }
            Records::Wide(m) => {
                if lo > hi {
                    return Iter::Wide(m.range(0..0));
                }
                Iter::Wide(m.range(lo..=hi))
            }
        }
    }

    /// Rebuild the tree from its records in order (full nodes).
    pub fn rebuild(&mut self) {
        match self {
            Records::Narrow(m) => *m = std::mem::take(m).into_iter().collect(),
            Records::Wide(m) => *m = std::mem::take(m).into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Both widths behave as a `BTreeMap<u128, Exact>` under random
    /// inserts, updates, removals, rebuilds, lookups and ranges (ranges
    /// include bounds past 32 bits and reversed ones, which an IPv4 index
    /// must answer as empty or clamp, as the reference does).
    #[test]
    fn records_behave_as_a_map_of_u128() {
        let seed = crate::testing::seed();
        let mut rng = StdRng::seed_from_u64(seed);
        for width in [32u8, 128] {
            let mut r = Records::new(width);
            let mut model: BTreeMap<u128, Exact> = BTreeMap::new();
            // A narrow space so that operations meet the same addresses.
            let space: u128 = if width == 32 { 1 << 32 } else { u128::MAX };
            let pick = |rng: &mut StdRng| {
                if rng.random_bool(0.5) {
                    rng.random_range(0..64u128) * (space / 64)
                } else {
                    rng.random_range(0..space.min(1 << 40))
                }
            };
            for step in 0..20_000 {
                let a = pick(&mut rng);
                let ctx = format!("seed {seed} width {width} step {step} addr {a:#x}");
                match rng.random_range(0..6) {
                    0 | 1 => {
                        let (e, made) = r.get_or_insert(a);
                        assert_eq!(made, !model.contains_key(&a), "{ctx}");
                        e.refs += 1;
                        e.plain = Some((true, step));
                        let m = model.entry(a).or_default();
                        m.refs += 1;
                        m.plain = Some((true, step));
                    }
                    2 => {
                        r.update(a, |e| {
                            e.refs -= 1;
                            e.refs == 0
                        });
                        if let Some(m) = model.get_mut(&a) {
                            m.refs -= 1;
                            if m.refs == 0 {
                                model.remove(&a);
                            }
                        }
                    }
                    3 => {
                        // One address, a reversed range, a span.
                        let b = match rng.random_range(0..10) {
                            0 => a,
                            1 => a.wrapping_sub(rng.random_range(1..1 << 20)),
                            _ => a.saturating_add(rng.random_range(0..1u128 << 34)),
                        };
                        let got: Vec<(u128, Exact)> = r.range(a, b).map(|(k, e)| (k, *e)).collect();
                        let want: Vec<(u128, Exact)> = if a <= b {
                            model.range(a..=b).map(|(k, e)| (*k, *e)).collect()
                        } else {
                            Vec::new()
                        };
                        assert_eq!(got, want, "{ctx} range to {b:#x}");
                    }
                    4 => {
                        assert_eq!(r.get(a), model.get(&a), "{ctx}");
                        assert_eq!(r.contains(a), model.contains_key(&a), "{ctx}");
                    }
                    _ => {
                        if rng.random_bool(0.01) {
                            r.rebuild();
                        }
                    }
                }
                assert_eq!(r.len(), model.len(), "{ctx}");
            }
            let all: Vec<(u128, Exact)> = r.iter().map(|(k, e)| (k, *e)).collect();
            let want: Vec<(u128, Exact)> = model.iter().map(|(k, e)| (*k, *e)).collect();
            assert_eq!(all, want, "seed {seed} width {width}: iteration");
            let rebuilt = Records::from_sorted(width, want.clone());
            let got: Vec<(u128, Exact)> = rebuilt.iter().map(|(k, e)| (k, *e)).collect();
            assert_eq!(got, want, "seed {seed} width {width}: from_sorted");
        }
    }
}
