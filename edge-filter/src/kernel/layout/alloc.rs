//! Where things go: slots of the 2-choice exact tables and runs of heap
//! lines. Freed space is quarantined until the plan that freed it has
//! been applied (ending with a grace period when readers might still
//! hold it), then reused.

use std::hash::Hash;

use rustc_hash::FxHashMap;

/// Slot placement of one exact table: `slots` per bucket, a key lives in
/// its first bucket or, when that is full, its second (and the first's
/// spill count says so).
#[derive(Clone, Debug)]
pub(crate) struct Placement<K: Copy + Eq + Hash + Default> {
    pub slots: u32,
    /// The key in each slot, valid where its `used` bit is set (a bitmap
    /// beside plain keys: `Option<u32>` took 8 bytes a slot, 32 MB of a
    /// 1M-entry tier's 4M slots).
    keys: Vec<K>,
    used: Bits,
    /// Keys placed (a key is found by scanning its two buckets: no
    /// per-key index).
    count: usize,
    /// Keys whose first bucket is this one that live in their second.
    spills: Vec<u32>,
    quarantine: Vec<u32>,
    /// Slots freed by a plan not yet applied.
    held: Bits,
}

/// A fixed-size bitmap.
#[derive(Clone, Debug)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, i: usize, on: bool) {
        let (w, b) = (i / 64, i % 64);
        self.0[w] = self.0[w] & !(1 << b) | (on as u64) << b;
    }
}

/// Where an insert or removal happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub bucket: u32,
    pub slot: u32,
    /// The first bucket whose spill count went 0 -> 1 (insert) or
    /// 1 -> 0 (removal): its spill bit changes.
    pub spill_flip: Option<u32>,
}

impl<K: Copy + Eq + Hash + Default> Placement<K> {
    pub fn new(buckets: u32, slots: u32) -> Self {
        let n = (buckets * slots) as usize;
        Placement {
            slots,
            keys: vec![K::default(); n],
            used: Bits::new(n),
            count: 0,
            spills: vec![0; buckets as usize],
            quarantine: Vec::new(),
            held: Bits::new(n),
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// The key in slot `p`.
    fn occ(&self, p: usize) -> Option<K> {
        self.used.get(p).then(|| self.keys[p])
    }

    fn put(&mut self, p: usize, k: Option<K>) {
        self.used.set(p, k.is_some());
        self.keys[p] = k.unwrap_or_default();
    }

    /// The position of `k` (buckets `b1`, `b2`).
    fn find(&self, k: &K, b1: u32, b2: u32) -> Option<u32> {
        for b in [b1, b2] {
            for s in 0..self.slots {
                let p = b * self.slots + s;
                if self.occ(p as usize).as_ref() == Some(k) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// (bucket, slot) of `k` (buckets `b1`, `b2`).
    pub fn get(&self, k: &K, b1: u32, b2: u32) -> Option<(u32, u32)> {
        self.find(k, b1, b2)
            .map(|p| (p / self.slots, p % self.slots))
    }

    pub fn spilled(&self, bucket: u32) -> bool {
        self.spills[bucket as usize] > 0
    }

    fn free_in(&self, b: u32) -> Option<u32> {
        (0..self.slots).find(|&s| {
            let p = (b * self.slots + s) as usize;
            !self.used.get(p) && !self.held.get(p)
        })
    }

    /// Place `k` (buckets `b1`, `b2`); `None` when both are full.
    pub fn insert(&mut self, k: K, b1: u32, b2: u32) -> Option<Placed> {
        let (bucket, slot, spill_flip) = if let Some(s) = self.free_in(b1) {
            (b1, s, None)
        } else if let Some(s) = self.free_in(b2) {
            let c = &mut self.spills[b1 as usize];
            *c += 1;
            (b2, s, (*c == 1).then_some(b1))
        } else {
            return None;
        };
        let p = bucket * self.slots + slot;
        self.put(p as usize, Some(k));
        self.count += 1;
        Some(Placed {
            bucket,
            slot,
            spill_flip,
        })
    }

    /// The other buckets of the movable occupants of `b1` and `b2`, each
    /// once: where a second move would have to make room when
    /// [`Placement::relocate_for`] finds none.
    pub fn alternates(
        &self,
        b1: u32,
        b2: u32,
        pair_of: impl Fn(&K) -> (u32, u32),
        movable: impl Fn(&K) -> bool,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        for b in [b1, b2] {
            for s in 0..self.slots {
                let Some(k) = self.occ((b * self.slots + s) as usize) else {
                    continue;
                };
                if !movable(&k) {
                    continue;
                }
                let (h1, h2) = pair_of(&k);
                let alt = if b == h1 { h2 } else { h1 };
                if alt != b1 && alt != b2 && !out.contains(&alt) {
                    out.push(alt);
                }
            }
        }
        out
    }

    /// Make room in bucket `b1` or `b2` by moving one occupant to its other
    /// bucket (`pair_of` gives a key's two buckets); `None` when no
    /// occupant's other bucket has room either. The freed slot is free at
    /// once: the caller's relocation steps end with a grace period.
    pub fn relocate_for(
        &mut self,
        b1: u32,
        b2: u32,
        pair_of: impl Fn(&K) -> (u32, u32),
        movable: impl Fn(&K) -> bool,
    ) -> Option<Move<K>> {
        for b in [b1, b2] {
            for s in 0..self.slots {
                let from = b * self.slots + s;
                let Some(k) = self.occ(from as usize) else {
                    continue;
                };
                if !movable(&k) {
                    continue;
                }
                let (h1, h2) = pair_of(&k);
                let alt = if b == h1 { h2 } else { h1 };
                if alt == b {
                    continue;
                }
                let Some(t) = self.free_in(alt) else {
                    continue;
                };
                let to = alt * self.slots + t;
                self.put(from as usize, None);
                self.put(to as usize, Some(k));
                let mut spill_set = None;
                let mut spill_clear = None;
                if alt == h2 {
                    let c = &mut self.spills[h1 as usize];
                    *c += 1;
                    if *c == 1 {
                        spill_set = Some(h1);
                    }
                } else {
                    let c = &mut self.spills[h1 as usize];
                    *c -= 1;
                    if *c == 0 {
                        spill_clear = Some(h1);
                    }
                }
                return Some(Move {
                    to_first: alt == h1,
                    key: k,
                    from: (b, s),
                    to: (alt, t),
                    spill_set,
                    spill_clear,
                });
            }
        }
        None
    }

    /// Remove `k` (buckets `b1`, `b2`); its slot waits in quarantine.
    pub fn remove(&mut self, k: &K, b1: u32, b2: u32) -> Option<Placed> {
        let p = self.find(k, b1, b2)?;
        self.count -= 1;
        self.put(p as usize, None);
        self.held.set(p as usize, true);
        self.quarantine.push(p);
        let (bucket, slot) = (p / self.slots, p % self.slots);
        let mut spill_flip = None;
        if bucket != b1 {
            let c = &mut self.spills[b1 as usize];
            *c -= 1;
            if *c == 0 {
                spill_flip = Some(b1);
            }
        }
        Some(Placed {
            bucket,
            slot,
            spill_flip,
        })
    }

    /// Quarantined slots become free.
    pub fn release(&mut self) {
        for p in self.quarantine.drain(..) {
            self.held.set(p as usize, false);
        }
    }

    /// Whether slots wait in quarantine.
    pub fn holding(&self) -> bool {
        !self.quarantine.is_empty()
    }
}

/// One key moved to its other bucket to make room.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Move<K> {
    pub key: K,
    /// (bucket, slot) it left.
    pub from: (u32, u32),
    /// (bucket, slot) it went to.
    pub to: (u32, u32),
    /// A first bucket whose spill bit must now be set (before `from` is
    /// cleared).
    pub spill_set: Option<u32>,
    /// A first bucket whose spill bit may now be cleared (after `from`).
    pub spill_clear: Option<u32>,
    /// The key moved back to its first bucket: a reader may look there
    /// before the copy lands and in the old slot after it is cleared, so
    /// a grace period must separate the two.
    pub to_first: bool,
}

/// A run of heap lines: `(first line, count)`.
pub(crate) type Run = (u32, u32);

/// Heap lines: runs by size, a bump pointer, a quarantine.
#[derive(Clone, Debug)]
pub(crate) struct Heap {
    cap: u32,
    next: u32,
    free: FxHashMap<u32, Vec<u32>>,
    quarantine: Vec<Run>,
    /// Lines in use.
    pub used: u64,
}

impl Heap {
    pub fn new(cap: u32) -> Heap {
        Heap {
            cap,
            next: 0,
            free: FxHashMap::default(),
            quarantine: Vec::new(),
            used: 0,
        }
    }

    /// A run of `n` lines, `None` when the heap is full.
    pub fn alloc(&mut self, n: u32) -> Option<u32> {
        let start = match self.free.get_mut(&n).and_then(Vec::pop) {
            Some(s) => s,
            None => {
                if self.next as u64 + n as u64 > self.cap as u64 {
                    return None;
                }
                self.next += n;
                self.next - n
            }
        };
        self.used += n as u64;
        Some(start)
    }

    /// Free a run once the plan lands.
    pub fn free(&mut self, r: Run) {
        self.used -= r.1 as u64;
        self.quarantine.push(r);
    }

    /// Quarantined runs become free.
    pub fn release(&mut self) {
        for (s, n) in self.quarantine.drain(..) {
            self.free.entry(n).or_default().push(s);
        }
    }

    /// Whether runs wait in quarantine.
    pub fn holding(&self) -> bool {
        !self.quarantine.is_empty()
    }

    /// Lines ever handed out (the bump pointer).
    pub fn high_water(&self) -> u32 {
        self.next
    }

    /// A new capacity, at least the high water.
    pub fn set_cap(&mut self, cap: u32) {
        debug_assert!(cap >= self.next);
        self.cap = cap;
    }
}

/// Indexes of a fixed-size array handed out lowest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slots {
    cap: u32,
    next: u32,
    free: Vec<u32>,
    quarantine: Vec<u32>,
}

impl Slots {
    pub fn new(cap: u32) -> Slots {
        Slots {
            cap,
            ..Default::default()
        }
    }

    pub fn alloc(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.next >= self.cap {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    pub fn free(&mut self, i: u32) {
        self.quarantine.push(i);
    }

    pub fn release(&mut self) {
        self.free.append(&mut self.quarantine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys name their own pair: key `k` lives in bucket `k / 10` or
    /// `k % 10`.
    fn pair(k: &u32) -> (u32, u32) {
        (k / 10, k % 10)
    }

    #[test]
    fn a_second_move_makes_room_where_one_cannot() {
        // One slot a bucket: 1 in bucket 0 (or 1), 12 in 1 (or 2), 23 in 2
        // (or 3); bucket 3 is empty.
        let mut p = Placement::<u32>::new(4, 1);
        for k in [1, 12, 23] {
            let (b1, b2) = pair(&k);
            assert_eq!(p.insert(k, b1, b2).map(|x| x.bucket), Some(b1));
        }
        // A new key for buckets 0 and 1: neither occupant's other bucket
        // is free, so one move finds no room.
        assert!(p.clone().relocate_for(0, 1, pair, |_| true).is_none());
        // The other buckets worth freeing: 12's bucket 2 (1's other is 1).
        assert_eq!(p.alternates(0, 1, pair, |_| true), vec![2]);
        // Keys that may not move are never offered.
        assert!(p.alternates(0, 1, pair, |k| *k != 12).is_empty());
        // 23 moves on to 3, then 12 to 2, and bucket 1 is free.
        let first = p.relocate_for(2, 2, pair, |_| true).expect("23 moves");
        assert_eq!((first.key, first.from, first.to), (23, (2, 0), (3, 0)));
        let second = p.relocate_for(0, 1, pair, |_| true).expect("12 moves");
        assert_eq!((second.key, second.to), (12, (2, 0)));
        assert_eq!(p.insert(10, 1, 0).map(|x| x.bucket), Some(1));
    }
}
