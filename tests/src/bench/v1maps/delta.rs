//! Incremental updates written to the kernel: [`V1Maps::apply_changes`]
//! applies planned key changes ([`super::plan`]) to the shadow copy and
//! the maps in proportion to the change, on two threads.

use aya::Pod;
use edge_filter::error::Result;
use edge_filter::kernel::maps::{Change, Slot};

use super::plan::{HashPlan, HashWrites, Planned, Shadow, SlotMap, TrieFilters, Updated};
use super::{
    MAP_INDEX, SyncStats, V1Maps, both, delete_by_fd, merge_stats, note_refused, tight_maps,
    write_by_fd,
};

impl V1Maps {
    /// Apply key-level changes to the shadow and the kernel, in
    /// proportion to the changes. The shadow must exist; it is dropped on
    /// refusals or errors (the next apply reads the kernel back). `None`
    /// when the changes do not fit the shadow: the caller must do a full
    /// sync.
    ///
    /// Ids of added keys are handed out first, in change order (as a
    /// full build would), and their counters zeroed. Then two threads:
    /// one updates the hash maps in the shadow and writes them, straight
    /// from the changes (an add's value needs only its id); the other
    /// updates the tries in the shadow, writes the trie nodes whose values
    /// changed, then takes its share of the hash writes (they are cut in
    /// [`Jobs`]). Removals start once both have written every add and
    /// change, so an entry present before and after is never absent in
    /// between; they are shared the same way.
    pub(super) fn apply_slots(
        &mut self,
        changes: &[(Slot, Change)],
        flags: u32,
    ) -> Result<Option<SyncStats>> {
        let mut shadow = self.shadow.take().expect("apply_slots needs the shadow");
        let mut filters = self
            .filters
            .take()
            .unwrap_or_else(|| TrieFilters::build(&shadow));
        let mut ids = self.ids.clone();
        let mut grow_mask = shadow.nonempty();
        let mut hash_plan = HashPlan::default();
        let (mut hash_changes, mut trie_changes) = (Vec::new(), Vec::new());
        for &(slot, change) in changes {
            let id = match change {
                Change::Add(_) => {
                    grow_mask |= slot.map_bit();
                    ids.alloc()
                }
                Change::Set(_) => match shadow.get(&slot) {
                    Some(v) => v.id,
                    None => {
                        // Not the set last applied: nothing touched yet.
                        self.shadow = Some(shadow);
                        self.filters = Some(filters);
                        return Ok(None);
                    }
                },
                Change::Remove => 0,
            };
            let p = Planned { slot, change, id };
            if hash_plan.push(&p) {
                hash_changes.push(p);
            } else {
                trie_changes.push(p);
            }
        }
        // A map that cannot take its adds before its removals needs the
        // removals-first order of a full sync: nothing is touched here.
        let mut adds = [0usize; 10];
        for p in hash_changes.iter().chain(&trie_changes) {
            if let Change::Add(_) = p.change {
                adds[p.slot.map_index()] += 1;
            }
        }
        if tight_maps(&shadow.counts(), &adds, &self.caps) != 0 {
            self.shadow = Some(shadow);
            self.filters = Some(filters);
            return Ok(None);
        }
        // A new entry must not inherit the hits of the one that had its id.
        self.zero_entry_stats(&ids.take_assigned())?;
        // Widen the nonempty mask first so new entries are looked up as soon
        // as they land; narrow it after removals.
        self.set_config(flags, grow_mask)?;
        let b = self.batch;
        let mut tries = shadow.take_tries();
        let (hashes, mut trie_maps) = self.split();
        let fds = hashes.fds();
        let p = &hash_plan;
        let mut jobs = Vec::new();
        write_jobs(&mut jobs, 0, fds[0], &p.addr_v4, b);
        write_jobs(&mut jobs, 1, fds[1], &p.addr_v6, b);
        write_jobs(&mut jobs, 2, fds[2], &p.port_v4, b);
        write_jobs(&mut jobs, 3, fds[3], &p.port_v6, b);
        let writes = Jobs::new(jobs);
        let (hash_up, trie_up) = both(
            || -> Result<([usize; 4], Updated)> {
                // The hash maps' shadow (quick), then the writes.
                let h_up = shadow.update_hashes(&hash_changes);
                Ok((writes.run()?, h_up))
            },
            || -> Result<(SyncStats, Updated, [usize; 4])> {
                let t_up = tries.update_tries(&trie_changes, &mut filters);
                let mut st = SyncStats::default();
                trie_maps.upsert(&t_up.touched.old, &t_up.touched.new, &mut st, u32::MAX)?;
                // Then help the other thread with the hash writes.
                let refused = writes.run()?;
                Ok((st, t_up, refused))
            },
        );
        drop(writes);
        let (mut st, t_up, refused_t) = trie_up?;
        let (refused_h, h_up) = hash_up?;
        for (i, w) in [
            p.addr_v4.counts(),
            p.addr_v6.counts(),
            p.port_v4.counts(),
            p.port_v6.counts(),
        ]
        .into_iter()
        .enumerate()
        {
            let name = MAP_INDEX[i];
            let refused = refused_h[i] + refused_t[i];
            // Refusals are new keys (updates of existing keys always fit).
            st.changed += w.1;
            st.added += w.0 - w.1 - refused;
            note_refused(name, refused, &mut st);
        }
        shadow.put_tries(tries);
        let mut jobs = Vec::new();
        delete_jobs(&mut jobs, 0, fds[0], &p.addr_v4.delete, b);
        delete_jobs(&mut jobs, 1, fds[1], &p.addr_v6.delete, b);
        delete_jobs(&mut jobs, 2, fds[2], &p.port_v4.delete, b);
        delete_jobs(&mut jobs, 3, fds[3], &p.port_v6.delete, b);
        let deletes = Jobs::new(jobs);
        let (hash_rm, lpm_rm) = both(
            || deletes.run(),
            || -> Result<(SyncStats, [usize; 4])> {
                let mut st = SyncStats::default();
                trie_maps.remove(&t_up.touched.old, &t_up.touched.new, &mut st, u32::MAX)?;
                let removed = deletes.run()?;
                Ok((st, removed))
            },
        );
        drop(deletes);
        let (lpm_st, removed_t) = lpm_rm?;
        let removed_h = hash_rm?;
        st = merge_stats(st, lpm_st);
        st.removed += removed_h.iter().chain(&removed_t).sum::<usize>();
        self.set_config(flags, shadow.nonempty())?;
        if t_up.mismatched + h_up.mismatched > 0 {
            // Changes against another set: the kernel got them, the shadow
            // is no account of it. The caller syncs in full.
            self.last_set = None;
            return Ok(None);
        }
        if st.refused == 0 {
            self.shadow = Some(shadow);
            self.filters = Some(filters);
            for id in t_up.released.into_iter().chain(h_up.released) {
                ids.release(id);
            }
            ids.commit();
            self.ids = ids;
        } else {
            // Refusals: the kernel differs from the plan; rebuild the
            // shadow from what landed next time.
            self.last_set = None;
        }
        Ok(Some(st))
    }
}

/// Keys per job of an incremental update's hash-map writes: small enough
/// that the thread done first with its own work takes a fair share.
const JOB_KEYS: usize = 1024;

/// One chunk of hash-map writes or deletes: the map's index (0..4, as in
/// [`HashPlan`]) and the work, returning how many keys it refused (writes)
/// or removed (deletes).
type Job<'a> = (usize, Box<dyn Fn() -> Result<usize> + Send + Sync + 'a>);

/// Jobs either thread takes in turn, so two threads share the hash-map
/// writes of an incremental update however long their other work takes.
struct Jobs<'a> {
    jobs: Vec<Job<'a>>,
    next: std::sync::atomic::AtomicUsize,
}

impl<'a> Jobs<'a> {
    fn new(jobs: Vec<Job<'a>>) -> Self {
        Jobs {
            jobs,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Take and run jobs until none is left; per-map sums of their results.
    fn run(&self) -> Result<[usize; 4]> {
        let mut sum = [0; 4];
        loop {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((map, job)) = self.jobs.get(i) else {
                return Ok(sum);
            };
            sum[*map] += job()?;
        }
    }
}

/// Queue the writes of `w` to hash map `map` ([`MAP_INDEX`]) in
/// [`JOB_KEYS`] chunks.
fn write_jobs<'a, K: Pod + Sync>(
    jobs: &mut Vec<Job<'a>>,
    map: usize,
    fd: std::os::fd::BorrowedFd<'a>,
    w: &'a HashWrites<K>,
    batch: bool,
) {
    let name = MAP_INDEX[map];
    for (keys, vals) in w.keys.chunks(JOB_KEYS).zip(w.vals.chunks(JOB_KEYS)) {
        jobs.push((
            map,
            Box::new(move || write_by_fd(fd, keys, vals, name, batch)),
        ));
    }
}

/// Queue the deletion of `keys` in [`JOB_KEYS`] chunks.
fn delete_jobs<'a, K: Pod + Sync>(
    jobs: &mut Vec<Job<'a>>,
    map: usize,
    fd: std::os::fd::BorrowedFd<'a>,
    keys: &'a [K],
    batch: bool,
) {
    for keys in keys.chunks(JOB_KEYS) {
        jobs.push((map, Box::new(move || delete_by_fd(fd, keys, batch))));
    }
}
