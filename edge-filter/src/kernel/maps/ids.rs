//! Entry ids: dense indexes of the per-entry hit counters.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Entry id allocation. Ids index the per-entry hit counters
/// (`ENTRY_STATS`), so they are kept dense: the lowest free id is handed out
/// first, and ids of removed entries are reused. An id released by a sync
/// becomes free only once that sync has landed ([`IdAlloc::commit`]): the
/// old key is gone from the kernel before a new key gets its id. Every id
/// handed out is recorded, so its counters can be zeroed before its entry
/// lands and a new entry never inherits an old one's hits.
#[derive(Clone, Debug, Default)]
pub struct IdAlloc {
    /// Free ids below `next`, lowest on top. A heap rather than a
    /// `BTreeSet`: a 1% delta frees ~10k scattered ids at once, and
    /// pushing them onto an array-backed heap costs a quarter of the
    /// B-tree inserts.
    free: BinaryHeap<Reverse<u32>>,
    /// Every id at or above this is free.
    next: u32,
    /// Released by the sync in progress (free after `commit`).
    released: Vec<u32>,
    /// Handed out since the last `take_assigned`.
    assigned: Vec<u32>,
}

impl IdAlloc {
    /// The allocator for maps whose entries have the ids `in_use`
    /// ([`Desired::ids`](super::Desired::ids)): the gaps between them are
    /// free.
    pub fn in_use(in_use: impl IntoIterator<Item = u32>) -> IdAlloc {
        let mut used: Vec<u64> = Vec::new();
        let mut max: Option<u32> = None;
        in_use.into_iter().for_each(|id| {
            let (w, b) = ((id / 64) as usize, id % 64);
            if used.len() <= w {
                used.resize(w + 1, 0);
            }
            used[w] |= 1 << b;
            max = Some(max.map_or(id, |m| m.max(id)));
        });
        let next = max.map_or(0, |m| m + 1);
        let free = (0..next)
            .filter(|&id| used[(id / 64) as usize] & (1 << (id % 64)) == 0)
            .map(Reverse)
            .collect();
        IdAlloc {
            free,
            next,
            ..Default::default()
        }
    }

    /// The lowest free id.
    pub fn alloc(&mut self) -> u32 {
        let id = self.free.pop().map(|Reverse(id)| id).unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.assigned.push(id);
        id
    }

    /// `id` is no longer used once the sync in progress lands.
    pub fn release(&mut self, id: u32) {
        self.released.push(id);
    }

    /// The sync landed: released ids become free.
    pub fn commit(&mut self) {
        self.free.extend(self.released.drain(..).map(Reverse));
    }

    /// Ids handed out since the last call.
    pub fn take_assigned(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.assigned)
    }
}
