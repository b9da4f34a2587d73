//! The kernel side of the v2 tables (`docs/datapath-v2.md`): map sizes for
//! a loader, `mmap`s of the array maps (`BPF_F_MMAPABLE`), writing compiled
//! [`Tables`] and update [`Plan`]s into them with aligned atomic stores and
//! grace periods (`membarrier`), reading the tables and the per-entry
//! counters back.
//!
//! One writer: whoever holds `&mut V2Maps`. Readers (the XDP program, and
//! [`V2Maps::read`] / [`V2Maps::stats`] here) see every word change
//! atomically; the plan's order and grace periods make the verdicts they
//! compute old-or-new (section 3 of the design).

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie},
};
use edge_filter_common::v2::{
    Bucket4, Bucket6, ConfigV2, DIR4_ENTRIES, DIR4_LINES, EntryCounter, LastHit, Line,
    MAP_V2_CATADDR6, MAP_V2_CATALOG, MAP_V2_CONFIG, MAP_V2_DIR4, MAP_V2_EXACT4, MAP_V2_EXACT6,
    MAP_V2_HEAP, MAP_V2_LASTHIT, MAP_V2_STATS, MAP_V2_SUM4, MAP_V2_SUM6, MAP_V2_TRIE4_A,
    MAP_V2_TRIE4_B, MAP_V2_TRIE6_A, MAP_V2_TRIE6_B, V2_MAP_NAMES, V2_SHORT6, summary_words,
};

use crate::error::{Error, Result};
use crate::kernel::layout::{Arr, Backing, Backings, Geometry, Plan, Step, Tables, Write};

/// The flags of `V2_CONFIG` the compiler owns; the others (record last,
/// malformed drop, sampling) are the agent's and survive its stores.
pub const LAYOUT_FLAGS: u32 = V2_SHORT6;

/// Every v2 map, in the order [`Sizes::per_map`] lists them.
pub const V2_MAPS: [&str; 15] = V2_MAP_NAMES;

/// `max_entries` of every v2 map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// `V2_SUM4` words.
    pub sum4_words: u32,
    /// `V2_EXACT4` buckets.
    pub buckets4: u32,
    /// `V2_HEAP` lines.
    pub heap_lines: u32,
    /// `V2_SUM6` words.
    pub sum6_words: u32,
    /// `V2_EXACT6` buckets.
    pub buckets6: u32,
    /// Nodes of each IPv4 trie generation.
    pub trie4: u32,
    /// Nodes of each IPv6 trie generation.
    pub trie6: u32,
    /// `V2_STATS` elements: possible CPUs x the id stride.
    pub stats: u32,
    /// `V2_CATALOG` words (the id stride).
    pub catalog: u32,
    /// `V2_CATADDR6` addresses.
    pub catalog6: u32,
}

impl Sizes {
    /// Tiny maps: enough to load a program.
    pub fn small() -> Sizes {
        Sizes {
            sum4_words: summary_words(16),
            buckets4: 1,
            heap_lines: 1,
            sum6_words: summary_words(16),
            buckets6: 1,
            trie4: 1,
            trie6: 1,
            stats: 1,
            catalog: 1,
            catalog6: 1,
        }
    }

    /// The maps of tables of geometry `g` on a machine of `cpus` possible
    /// CPUs.
    pub fn for_cpus(g: &Geometry, cpus: u32) -> Sizes {
        Sizes {
            sum4_words: summary_words(g.sum4_bits),
            buckets4: g.buckets4,
            heap_lines: g.heap_lines,
            sum6_words: summary_words(g.sum6_bits),
            buckets6: g.buckets6,
            trie4: g.trie_nodes4,
            trie6: g.trie_nodes6,
            stats: g.ids.saturating_mul(cpus.max(1)),
            catalog: g.ids,
            catalog6: g.catalog6,
        }
    }

    /// [`Sizes::for_cpus`] on this machine.
    pub fn of(g: &Geometry) -> Result<Sizes> {
        Ok(Sizes::for_cpus(g, possible_cpus()?))
    }

    /// `(map name, max_entries)` of every v2 map, in [`V2_MAPS`] order.
    pub fn per_map(&self) -> [(&'static str, u32); 15] {
        let n = [
            1,
            self.sum4_words,
            self.buckets4,
            DIR4_LINES,
            self.heap_lines,
            self.sum6_words,
            self.buckets6,
            self.trie4,
            self.trie4,
            self.trie6,
            self.trie6,
            self.stats,
            self.catalog,
            self.catalog6,
            self.catalog,
        ];
        std::array::from_fn(|i| (V2_MAPS[i], n[i].max(1)))
    }

    /// Set them on a loader of an object with the v2 maps.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        for (name, n) in self.per_map() {
            loader.map_max_entries(name, n);
        }
    }

    /// Bytes of the array maps (tries aside): what a tier costs the kernel,
    /// page rounding aside.
    pub fn array_bytes(&self) -> u64 {
        size_of::<ConfigV2>() as u64
            + (self.sum4_words as u64 + self.sum6_words as u64) * 8
            + (self.buckets4 as u64 + self.buckets6 as u64 + self.heap_lines as u64) * 64
            + DIR4_LINES as u64 * 64
            + self.stats as u64 * size_of::<EntryCounter>() as u64
            + self.catalog as u64 * (8 + size_of::<LastHit>() as u64)
            + self.catalog6 as u64 * 16
    }
}

/// Possible CPUs (`/sys/devices/system/cpu/possible`): the per-entry
/// counters hold a stride of ids for each.
pub fn possible_cpus() -> Result<u32> {
    aya::util::nr_cpus()
        .map(|n| n as u32)
        .map_err(|(_, source)| Error::Syscall {
            op: "counting possible CPUs".into(),
            source,
        })
}

/// Wait for a grace period: `membarrier(MEMBARRIER_CMD_GLOBAL)`, which is
/// `synchronize_rcu()` (kernel/sched/membarrier.c) when more than one CPU
/// is online; XDP programs and BPF_PROG_TEST_RUN run inside RCU read-side
/// sections.
pub fn grace_period() -> Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        return Err(Error::Syscall {
            op: "waiting for a grace period (membarrier(MEMBARRIER_CMD_GLOBAL); nohz_full kernels refuse it)".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A shared `mmap` of an array map (`BPF_F_MMAPABLE`).
pub struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
    elems: u32,
    map: MapData,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// atomics or copies, and the single writer is whoever holds `&mut`.
unsafe impl Send for Mapped {}
// SAFETY: see above.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Map the whole array (`max_entries` elements of `elem` bytes, each
    /// rounded up to 8 as the kernel stores them).
    pub fn new(map: MapData, elem: usize) -> Result<Mapped> {
        let n = map
            .info()
            .map_err(|source| Error::Map {
                op: "reading a v2 map's size".into(),
                source,
            })?
            .max_entries();
        Mapped::with_len(map, elem, n)
    }

    /// Map the first `n` elements of `elem` bytes.
    pub fn with_len(map: MapData, elem: usize, n: u32) -> Result<Mapped> {
        let page = 4096;
        let len = (elem.div_ceil(8) * 8 * n as usize).div_ceil(page).max(1) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of a map fd; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Syscall {
                op: "mmap of a v2 map (created without BPF_F_MMAPABLE?)".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| Error::Syscall {
            op: "mmap of a v2 map".into(),
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Mapped {
            ptr,
            len,
            elems: n,
            map,
        })
    }

    /// The map's elements (`max_entries`, or what [`Mapped::with_len`] mapped).
    pub fn elems(&self) -> u32 {
        self.elems
    }

    /// The map (to pin it, or to load another program on it).
    pub fn map(&self) -> &MapData {
        &self.map
    }

    fn check(&self, off: usize, size: usize) {
        assert!(
            off + size <= self.len && off.is_multiple_of(size),
            "store out of the map"
        );
    }

    /// Aligned 8-byte store at byte offset `off`.
    pub fn store64(&self, off: usize, v: u64) {
        self.check(off, 8);
        // SAFETY: in bounds and aligned (checked); shared memory the kernel
        // reads with plain loads.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) }
            .store(v, Ordering::Release);
    }

    /// Aligned 4-byte store at byte offset `off`.
    pub fn store32(&self, off: usize, v: u32) {
        self.check(off, 4);
        // SAFETY: as store64.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) }
            .store(v, Ordering::Release);
    }

    /// Aligned 8-byte load.
    pub fn load64(&self, off: usize) -> u64 {
        self.check(off, 8);
        // SAFETY: as store64.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) }.load(Ordering::Acquire)
    }

    /// Aligned 4-byte load.
    pub fn load32(&self, off: usize) -> u32 {
        self.check(off, 4);
        // SAFETY: as store64.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) }.load(Ordering::Acquire)
    }

    /// Store bytes (memory no reader can reach yet, or before attach) as
    /// 8-byte words.
    pub fn store_bytes(&self, off: usize, bytes: &[u8]) {
        assert!(bytes.len().is_multiple_of(8));
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            self.store64(
                off + 8 * i,
                u64::from_ne_bytes(c.try_into().expect("8 bytes")),
            );
        }
    }

    /// `n` elements of type `T` from the start (plain-old-data only),
    /// copied word by word straight into the vector (no byte buffer in
    /// between: at 1M entries the arrays are tens of MiB).
    fn elements<T: Copy + Default>(&self, n: usize) -> Vec<T> {
        let mut v = vec![T::default(); n];
        let len = n * size_of::<T>();
        // SAFETY: POD types; the vector holds `len` bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) };
        for (i, c) in out.chunks_mut(8).enumerate() {
            let w = self.load64(8 * i).to_ne_bytes();
            c.copy_from_slice(&w[..c.len()]);
        }
        v
    }

    /// Whether the first elements hold exactly `v`, compared word by word
    /// in place (nothing is copied out).
    fn holds<T: Copy>(&self, v: &[T]) -> bool {
        let bytes = bytes_of(v);
        if bytes.len() > self.len {
            return false;
        }
        bytes.chunks(8).enumerate().all(|(i, c)| {
            let w = self.load64(8 * i).to_ne_bytes();
            w[..c.len()] == *c
        })
    }
}

impl Backing for Mapped {
    fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn bytes(&self) -> usize {
        self.len
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Whether `m` holds `a`: compared word by word for a copy; for an array
/// that reads `m` itself ([`Tables::rebase`]), whether what the plans so
/// far stored is still there (its checksum).
fn holds<T: Copy>(m: &Mapped, a: &Arr<T>) -> bool {
    match a.mapped_base() {
        Some(p) => std::ptr::eq(p, m.ptr.as_ptr()) && !a.drifted(),
        None => m.holds(a),
    }
}

fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain-old-data slices (u64, u32, buckets, lines) as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Time spent applying a plan.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyTiming {
    /// Stores (and trie updates).
    pub stores: Duration,
    /// Grace periods.
    pub graces: Duration,
    /// How many grace periods.
    pub grace_count: usize,
}

/// The v2 maps of one program instance, mapped.
pub struct V2Maps {
    config: Arc<Mapped>,
    sum4: Arc<Mapped>,
    exact4: Arc<Mapped>,
    dir4: Arc<Mapped>,
    heap: Arc<Mapped>,
    sum6: Arc<Mapped>,
    exact6: Arc<Mapped>,
    catalog: Arc<Mapped>,
    catalog6: Arc<Mapped>,
    trie4: [LpmTrie<MapData, [u8; 4], u64>; 2],
    trie6: [LpmTrie<MapData, [u8; 16], u64>; 2],
    stats: Arc<Mapped>,
    lasthit: Arc<Mapped>,
    /// Where the next last-hit pass starts ([`V2Maps::note_hits`]).
    hit_cursor: std::sync::atomic::AtomicUsize,
}

/// The most ids one last-hit pass reads: a set up to this many is swept
/// every pass (a last hit precise to about a second); a larger one in
/// turns, `ids / HIT_PASS_IDS` passes a sweep. At 11M ids on 2 CPUs a
/// whole sweep read 350 MB of counters each second, 11.5% of a CPU.
pub const HIT_PASS_IDS: usize = 2 << 20;

/// The ids `start..end` a last-hit pass reads of `n`, at most `max`, from
/// `cursor` (where the last pass stopped; past `n` after a smaller tier:
/// from 0), and where the next one starts.
fn hit_window(cursor: usize, n: usize, max: usize) -> (usize, usize, usize) {
    let start = if cursor < n { cursor } else { 0 };
    let end = n.min(start.saturating_add(max));
    (start, end, if end < n { end } else { 0 })
}

/// Byte offset of `id`'s counter on CPU `cpu` in `V2_STATS`.
fn counter_off(stride: usize, cpu: usize, id: usize) -> usize {
    (cpu * stride + id) * size_of::<EntryCounter>()
}

fn map_err(op: String) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { op, source }
}

impl V2Maps {
    /// Take and map the v2 maps of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<V2Maps> {
        V2Maps::from_fn(|name| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                op: format!("map {name} missing from the object"),
                source: MapError::InvalidName {
                    name: name.to_string(),
                },
            })
        })
    }

    /// Map the v2 maps `open` gives by name (a loaded object's, or pinned
    /// ones); their sizes are the maps' own.
    pub fn from_fn(mut open: impl FnMut(&str) -> Result<Map>) -> Result<V2Maps> {
        let mut array = |name: &str, elem: usize| -> Result<Arc<Mapped>> {
            match open(name)? {
                Map::Array(data) => Mapped::new(data, elem).map(Arc::new),
                _ => Err(Error::Map {
                    op: format!("{name} is not an array map"),
                    source: MapError::InvalidName {
                        name: name.to_string(),
                    },
                }),
            }
        };
        let config = array(MAP_V2_CONFIG, size_of::<ConfigV2>())?;
        let sum4 = array(MAP_V2_SUM4, 8)?;
        let exact4 = array(MAP_V2_EXACT4, 64)?;
        let dir4 = array(MAP_V2_DIR4, 64)?;
        let heap = array(MAP_V2_HEAP, 64)?;
        let sum6 = array(MAP_V2_SUM6, 8)?;
        let exact6 = array(MAP_V2_EXACT6, 64)?;
        let catalog = array(MAP_V2_CATALOG, 8)?;
        let catalog6 = array(MAP_V2_CATADDR6, 16)?;
        let stats = array(MAP_V2_STATS, size_of::<EntryCounter>())?;
        let lasthit = array(MAP_V2_LASTHIT, size_of::<LastHit>())?;
        let mut trie = |name: &str| -> Result<Map> { open(name) };
        let t4a = trie(MAP_V2_TRIE4_A)?;
        let t4b = trie(MAP_V2_TRIE4_B)?;
        let t6a = trie(MAP_V2_TRIE6_A)?;
        let t6b = trie(MAP_V2_TRIE6_B)?;
        let trie4 = [
            LpmTrie::try_from(t4a).map_err(lpm_err(MAP_V2_TRIE4_A))?,
            LpmTrie::try_from(t4b).map_err(lpm_err(MAP_V2_TRIE4_B))?,
        ];
        let trie6 = [
            LpmTrie::try_from(t6a).map_err(lpm_err(MAP_V2_TRIE6_A))?,
            LpmTrie::try_from(t6b).map_err(lpm_err(MAP_V2_TRIE6_B))?,
        ];
        if dir4.elems() != DIR4_LINES {
            return Err(Error::Map {
                op: format!("{MAP_V2_DIR4} has {} lines, not {DIR4_LINES}", dir4.elems()),
                source: MapError::InvalidName {
                    name: MAP_V2_DIR4.into(),
                },
            });
        }
        Ok(V2Maps {
            config,
            sum4,
            exact4,
            dir4,
            heap,
            sum6,
            exact6,
            catalog,
            catalog6,
            trie4,
            trie6,
            stats,
            lasthit,
            hit_cursor: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The maps' sizes.
    pub fn sizes(&self) -> Sizes {
        let t = |m: &LpmTrie<MapData, [u8; 4], u64>| {
            m_info(aya::maps::IterableMap::map(m)).unwrap_or(0)
        };
        let t6 = |m: &LpmTrie<MapData, [u8; 16], u64>| {
            m_info(aya::maps::IterableMap::map(m)).unwrap_or(0)
        };
        Sizes {
            sum4_words: self.sum4.elems(),
            buckets4: self.exact4.elems(),
            heap_lines: self.heap.elems(),
            sum6_words: self.sum6.elems(),
            buckets6: self.exact6.elems(),
            trie4: t(&self.trie4[0]),
            trie6: t6(&self.trie6[0]),
            stats: self.stats.elems(),
            catalog: self.catalog.elems(),
            catalog6: self.catalog6.elems(),
        }
    }

    /// The config word as the map holds it.
    pub fn config(&self) -> ConfigV2 {
        self.config.elements::<ConfigV2>(1)[0]
    }

    /// The id stride of the per-CPU counters (ids a CPU has room for) and
    /// how many CPUs' counters the map holds.
    fn counter_layout(&self) -> (usize, usize) {
        let stride = self
            .config
            .load32(std::mem::offset_of!(ConfigV2, stats_stride)) as usize;
        let cpus = (self.stats.elems() as usize)
            .checked_div(stride)
            .unwrap_or(0);
        (stride, cpus)
    }

    /// Per-entry counters of ids `0..ids`, summed over CPUs: (packets, bytes).
    /// Ids at or beyond the stride read as zero.
    pub fn stats(&self, ids: u32) -> Vec<(u64, u64)> {
        let (stride, cpus) = self.counter_layout();
        (0..ids as usize)
            .map(|id| {
                if id >= stride {
                    return (0, 0);
                }
                (0..cpus).fold((0, 0), |(p, b), c| {
                    let off = counter_off(stride, c, id);
                    (p + self.stats.load64(off), b + self.stats.load64(off + 8))
                })
            })
            .collect()
    }

    /// Zero the counters of `ids` on every CPU, and their last-hit records
    /// (before a new id's entry lands, so it starts from zero).
    pub fn zero_stats(&self, ids: &[u32]) {
        let (stride, cpus) = self.counter_layout();
        for &id in ids {
            let id = id as usize;
            if id >= stride {
                continue;
            }
            for c in 0..cpus {
                let off = counter_off(stride, c, id);
                self.stats.store64(off, 0);
                self.stats.store64(off + 8, 0);
            }
            // A reused id has not been hit as its new entry.
            self.store_last_hit(id as u32, LastHit::default());
        }
    }

    /// Add `(id, packets, bytes)` onto CPU 0's counters (counters carried
    /// over from another instance's maps, before any program runs on these).
    pub fn add_stats_cpu0(&self, add: &[(u32, u64, u64)]) {
        let stride = self
            .config
            .load32(std::mem::offset_of!(ConfigV2, stats_stride)) as usize;
        let per = size_of::<EntryCounter>();
        for &(id, p, b) in add {
            let id = id as usize;
            if id >= stride || (id + 1) * per > self.stats.elems() as usize * per {
                continue;
            }
            let off = id * per;
            self.stats.store64(off, self.stats.load64(off) + p);
            self.stats.store64(off + 8, self.stats.load64(off + 8) + b);
        }
    }

    /// The last-hit records of ids `0..ids` ([`LastHit`]; ids beyond the
    /// map read as never hit).
    pub fn last_hits(&self, ids: u32) -> Vec<LastHit> {
        let n = (ids as usize).min(self.lasthit.elems() as usize);
        let mut v = self.lasthit.elements::<LastHit>(n);
        v.resize(ids as usize, LastHit::default());
        v
    }

    /// The last-hit pass: every id whose total packets (low 32 bits)
    /// moved since its record gets a new record at `now` (jiffies), read
    /// and written in place. Returns how many moved. At 1M entries the
    /// copies of every counter and record this pass made each second
    /// were most of the idle agent's CPU (page faults of 27 MB a pass).
    /// A pass reads at most [`HIT_PASS_IDS`] ids, from where the last one
    /// stopped.
    pub fn note_hits(&self, now: u32) -> usize {
        let (stride, cpus) = self.counter_layout();
        let n = stride.min(self.lasthit.elems() as usize);
        let (start, end, next) = hit_window(
            self.hit_cursor.load(std::sync::atomic::Ordering::Relaxed),
            n,
            HIT_PASS_IDS,
        );
        self.hit_cursor
            .store(next, std::sync::atomic::Ordering::Relaxed);
        let mut moved = 0;
        for id in start..end {
            let packets = (0..cpus).fold(0u64, |p, c| {
                p.wrapping_add(self.stats.load64(counter_off(stride, c, id)))
            }) as u32;
            // The record's low word is its `packets`.
            if self.lasthit.load64(id * size_of::<LastHit>()) as u32 != packets {
                moved += 1;
                // 0 means never; a pass that lands on a multiple of 2^32
                // jiffies says one tick later.
                let jiffies = if packets == 0 { 0 } else { now.max(1) };
                self.store_last_hit(id as u32, LastHit { packets, jiffies });
            }
        }
        moved
    }

    /// Record that the counters of `id` stood at `packets` at `jiffies`
    /// (one writer: the agent's pass; one 8-byte store, so a reader sees
    /// the record whole).
    pub fn store_last_hit(&self, id: u32, hit: LastHit) {
        if id >= self.lasthit.elems() {
            return;
        }
        let off = id as usize * size_of::<LastHit>();
        self.lasthit
            .store64(off, u64::from(hit.jiffies) << 32 | u64::from(hit.packets));
    }

    /// The agent's runtime flags (`CONFIG_*`, the layout's aside).
    pub fn runtime_flags(&self) -> u32 {
        self.config.load32(0) & !LAYOUT_FLAGS
    }

    /// Set the agent's runtime flags (`CONFIG_*`), keeping the layout's.
    pub fn set_runtime_flags(&self, flags: u32) {
        let cur = self.config.load32(0);
        self.config
            .store32(0, (cur & LAYOUT_FLAGS) | (flags & !LAYOUT_FLAGS));
    }

    /// The arrays' memory, for a compiler to read instead of its own copy
    /// ([`Tables::rebase`]); the mappings stay while it does.
    pub fn backings(&self) -> Backings {
        Backings {
            sum4: self.sum4.clone(),
            exact4: self.exact4.clone(),
            dir4: self.dir4.clone(),
            heap: self.heap.clone(),
            sum6: self.sum6.clone(),
            exact6: self.exact6.clone(),
            catalog: self.catalog.clone(),
            catalog6: self.catalog6.clone(),
        }
    }

    /// Write whole tables (a fresh sync, before the program runs on them):
    /// arrays copied through the mappings, both trie generations filled,
    /// the config last (the runtime flags kept). The maps must be at least
    /// as large as the tables.
    pub fn write_image(&mut self, t: &Tables) -> Result<()> {
        self.sum4.store_bytes(0, bytes_of(&t.sum4));
        self.exact4.store_bytes(0, bytes_of(&t.exact4));
        // The directory as pairs of words.
        let dir: Vec<u64> = t
            .dir4
            .chunks(2)
            .map(|c| (c[0] as u64) | ((c[1] as u64) << 32))
            .collect();
        self.dir4.store_bytes(0, bytes_of(&dir));
        self.heap.store_bytes(0, bytes_of(&t.heap));
        self.sum6.store_bytes(0, bytes_of(&t.sum6));
        self.exact6.store_bytes(0, bytes_of(&t.exact6));
        self.catalog.store_bytes(0, bytes_of(&t.catalog));
        self.catalog6.store_bytes(0, bytes_of(&t.catalog6));
        for g in 0..2 {
            for (&(addr, len), &v) in &t.trie[0][g] {
                self.trie_store(false, g, (addr, len), Some(v))?;
            }
            for (&(addr, len), &v) in &t.trie[1][g] {
                self.trie_store(true, g, (addr, len), Some(v))?;
            }
        }
        let runtime = self.runtime_flags();
        let mut c = t.config;
        c.flags = (c.flags & LAYOUT_FLAGS) | runtime;
        self.config
            .store_bytes(0, bytes_of(std::slice::from_ref(&c)));
        Ok(())
    }

    fn trie_store(&mut self, v6: bool, g: usize, net: (u128, u8), v: Option<u64>) -> Result<()> {
        let (addr, len) = net;
        let r = match (v6, v) {
            (false, Some(v)) => {
                self.trie4[g].insert(&Key::new(len as u32, (addr as u32).to_be_bytes()), v, 0)
            }
            (false, None) => {
                self.trie4[g].remove(&Key::new(len as u32, (addr as u32).to_be_bytes()))
            }
            (true, Some(v)) => {
                self.trie6[g].insert(&Key::new(len as u32, addr.to_be_bytes()), v, 0)
            }
            (true, None) => self.trie6[g].remove(&Key::new(len as u32, addr.to_be_bytes())),
        };
        r.map_err(map_err(format!(
            "updating the v2 prefix trie (IPv{}, generation {g})",
            if v6 { 6 } else { 4 }
        )))
    }

    /// One store of a plan.
    pub fn store(&mut self, w: &Write) -> Result<()> {
        match *w {
            Write::Sum4 { word, value } => self.sum4.store64(word as usize * 8, value),
            Write::Slot4 {
                bucket,
                slot,
                value,
            } => self
                .exact4
                .store64(bucket as usize * 64 + slot as usize * 8, value),
            Write::Addr6 { bucket, slot, addr } => self
                .exact6
                .store_bytes(bucket as usize * 64 + slot as usize * 16, &addr),
            Write::Meta6 { bucket, slot, meta } => self
                .exact6
                .store32(bucket as usize * 64 + 48 + slot as usize * 4, meta),
            Write::Hdr6 { bucket, value } => self.exact6.store32(bucket as usize * 64 + 60, value),
            Write::Dir4 { index, value } => self.dir4.store32(index as usize * 4, value),
            Write::Line { line, value } => self
                .heap
                .store_bytes(line as usize * 64, bytes_of(std::slice::from_ref(&value))),
            Write::Sum6 { word, value } => self.sum6.store64(word as usize * 8, value),
            Write::Trie {
                v6,
                generation,
                net,
                value,
            } => self.trie_store(v6, generation as usize & 1, net, value)?,
            Write::Flags(f) => {
                let cur = self.config.load32(0);
                self.config
                    .store32(0, (cur & !LAYOUT_FLAGS) | (f & LAYOUT_FLAGS));
            }
            Write::Generation(g) => self
                .config
                .store32(std::mem::offset_of!(ConfigV2, generation), g),
            Write::Catalog { id, value } => self.catalog.store64(id as usize * 8, value),
            Write::Catalog6 { index, addr } => {
                self.catalog6.store_bytes(index as usize * 16, &addr)
            }
        }
        Ok(())
    }

    /// Apply a plan: its stores in order, a grace period at every
    /// [`Step::Grace`].
    pub fn apply(&mut self, plan: &Plan) -> Result<ApplyTiming> {
        let mut t = ApplyTiming::default();
        for s in &plan.steps {
            let start = Instant::now();
            match s {
                Step::Writes(ws) => {
                    for w in ws {
                        self.store(w)?;
                    }
                    t.stores += start.elapsed();
                }
                Step::Grace => {
                    grace_period()?;
                    t.graces += start.elapsed();
                    t.grace_count += 1;
                }
            }
        }
        Ok(t)
    }

    /// The tables as the maps hold them now (for decode and verify). The
    /// arrays are read whole: the maps' sizes are the tables'.
    pub fn read(&self) -> Result<Tables> {
        let mut trie: [[BTreeMap<(u128, u8), u64>; 2]; 2] = Default::default();
        for (g, (t4, t6)) in self.trie4.iter().zip(&self.trie6).enumerate() {
            for kv in t4.iter() {
                let (k, v) = kv.map_err(map_err("reading a v2 IPv4 trie".into()))?;
                let key = (u32::from_be_bytes(k.data()) as u128, k.prefix_len() as u8);
                trie[0][g].insert(key, v);
            }
            for kv in t6.iter() {
                let (k, v) = kv.map_err(map_err("reading a v2 IPv6 trie".into()))?;
                trie[1][g].insert((u128::from_be_bytes(k.data()), k.prefix_len() as u8), v);
            }
        }
        Ok(Tables {
            config: self.config(),
            sum4: self.sum4.elements(self.sum4.elems() as usize).into(),
            exact4: self
                .exact4
                .elements::<Bucket4>(self.exact4.elems() as usize)
                .into(),
            dir4: self.dir4.elements(DIR4_ENTRIES as usize).into(),
            heap: self
                .heap
                .elements::<Line>(self.heap.elems() as usize)
                .into(),
            sum6: self.sum6.elements(self.sum6.elems() as usize).into(),
            exact6: self
                .exact6
                .elements::<Bucket6>(self.exact6.elems() as usize)
                .into(),
            trie,
            catalog: self.catalog.elements(self.catalog.elems() as usize).into(),
            catalog6: self
                .catalog6
                .elements(self.catalog6.elems() as usize)
                .into(),
        })
    }

    /// Whether the maps hold exactly `t` (the config with its runtime
    /// flags masked), compared in place: the reconcile pass's drift check
    /// without a copy of the kernel's tables (at 1M entries a copy and the
    /// canonical forms of both sides took about 300 MB).
    pub fn holds(&self, t: &Tables) -> Result<bool> {
        let mut config = self.config();
        config.flags &= LAYOUT_FLAGS;
        if config != t.config
            || !holds(&self.sum4, &t.sum4)
            || !holds(&self.exact4, &t.exact4)
            || !holds(&self.dir4, &t.dir4)
            || !holds(&self.heap, &t.heap)
            || !holds(&self.sum6, &t.sum6)
            || !holds(&self.exact6, &t.exact6)
            || !holds(&self.catalog, &t.catalog)
            || !holds(&self.catalog6, &t.catalog6)
            || t.sum4.len() != self.sum4.elems() as usize
            || t.exact4.len() != self.exact4.elems() as usize
            || t.heap.len() != self.heap.elems() as usize
            || t.sum6.len() != self.sum6.elems() as usize
            || t.exact6.len() != self.exact6.elems() as usize
            || t.catalog.len() != self.catalog.elems() as usize
            || t.catalog6.len() != self.catalog6.elems() as usize
        {
            return Ok(false);
        }
        for (g, (t4, t6)) in self.trie4.iter().zip(&self.trie6).enumerate() {
            let mut n = 0;
            for kv in t4.iter() {
                let (k, v) = kv.map_err(map_err("reading a v2 IPv4 trie".into()))?;
                let key = (u32::from_be_bytes(k.data()) as u128, k.prefix_len() as u8);
                if t.trie[0][g].get(&key) != Some(&v) {
                    return Ok(false);
                }
                n += 1;
            }
            if n != t.trie[0][g].len() {
                return Ok(false);
            }
            let mut n = 0;
            for kv in t6.iter() {
                let (k, v) = kv.map_err(map_err("reading a v2 IPv6 trie".into()))?;
                let key = (u128::from_be_bytes(k.data()), k.prefix_len() as u8);
                if t.trie[1][g].get(&key) != Some(&v) {
                    return Ok(false);
                }
                n += 1;
            }
            if n != t.trie[1][g].len() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Pin every v2 map under `dir` (which must exist).
    pub fn pin(&self, dir: &Path) -> Result<()> {
        let tries = [
            aya::maps::IterableMap::map(&self.trie4[0]),
            aya::maps::IterableMap::map(&self.trie4[1]),
            aya::maps::IterableMap::map(&self.trie6[0]),
            aya::maps::IterableMap::map(&self.trie6[1]),
        ];
        let arrays = [
            &self.config,
            &self.sum4,
            &self.exact4,
            &self.dir4,
            &self.heap,
            &self.sum6,
            &self.exact6,
        ];
        let rest = [&self.stats, &self.catalog, &self.catalog6, &self.lasthit];
        let all: Vec<&MapData> = arrays
            .iter()
            .map(|m| m.map())
            .chain(tries)
            .chain(rest.iter().map(|m| m.map()))
            .collect();
        for (name, m) in V2_MAPS.iter().zip(all) {
            let path = dir.join(name);
            m.pin(&path).map_err(|e| Error::Pin {
                op: format!("pinning map {name} at {}", path.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }
}

fn lpm_err(name: &'static str) -> impl FnOnce(MapError) -> Error {
    map_err(format!("{name} is not an LPM trie"))
}

fn m_info(m: &MapData) -> Option<u32> {
    m.info().ok().map(|i| i.max_entries())
}

#[cfg(test)]
mod tests {
    use super::hit_window;

    /// Passes of at most `max` ids sweep every id exactly once in turn,
    /// whatever the set's size, and a cursor past a shrunk set starts
    /// over.
    #[test]
    fn hit_passes_sweep_every_id_once() {
        for (n, max) in [(0, 4), (3, 4), (4, 4), (10, 4), (12, 4), (7, 1)] {
            let mut seen = vec![0u32; n];
            let mut cursor = 0;
            for _ in 0..n.div_ceil(max).max(1) {
                let (start, end, next) = hit_window(cursor, n, max);
                assert!(end - start <= max, "n {n}: {start}..{end}");
                for s in &mut seen[start..end] {
                    *s += 1;
                }
                cursor = next;
            }
            assert!(seen.iter().all(|&s| s == 1), "n {n}, max {max}: {seen:?}");
            assert_eq!(cursor, 0, "n {n}: a sweep ends where the next begins");
        }
        assert_eq!(hit_window(50, 10, 4), (0, 4, 4));
    }
}
