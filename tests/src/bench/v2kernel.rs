//! The kernel side of the v2 tables for the benchmarks and tests (phase 2
//! moves this into the agent): map sizes for a loader, `mmap`s of the
//! array maps, writing compiled tables and update plans into them with
//! aligned atomic stores, grace periods (`membarrier`), and reading the
//! tables back.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, lpm_trie::Key, lpm_trie::LpmTrie},
};
use edge_filter::kernel::layout::{Geometry, Plan, Step, Tables, Write};
use edge_filter_common::v2::{
    Bucket4, Bucket6, ConfigV2, DIR4_ENTRIES, DIR4_LINES, EntryCounter, Line, MAP_V2_CATADDR6,
    MAP_V2_CATALOG, MAP_V2_CONFIG, MAP_V2_DIR4, MAP_V2_EXACT4, MAP_V2_EXACT6, MAP_V2_HEAP,
    MAP_V2_STATS, MAP_V2_SUM4, MAP_V2_SUM6, MAP_V2_TRIE4_A, MAP_V2_TRIE4_B, MAP_V2_TRIE6_A,
    MAP_V2_TRIE6_B, V2_SHORT6, summary_words,
};

/// The bench-ebpf object built by `tests/build.rs` (empty with
/// `AYA_BUILD_SKIP=1`).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ef-bench-progs"));

/// The flags of `V2_CONFIG` the compiler owns; the others (record last,
/// malformed drop, sampling) are the agent's and survive its stores.
pub const LAYOUT_FLAGS: u32 = V2_SHORT6;

/// `max_entries` of every v2 map (and of the one-load baseline's array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub sum4_words: u32,
    pub buckets4: u32,
    pub heap_lines: u32,
    pub sum6_words: u32,
    pub buckets6: u32,
    pub trie4: u32,
    pub trie6: u32,
    pub stats: u32,
    pub catalog: u32,
    pub catalog6: u32,
    pub one_load_lines: u32,
}

impl Sizes {
    /// Tiny maps: enough to load the programs.
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
            one_load_lines: 1,
        }
    }

    /// The maps of tables of geometry `g`.
    pub fn of(g: &Geometry) -> Sizes {
        Sizes {
            sum4_words: summary_words(g.sum4_bits),
            buckets4: g.buckets4,
            heap_lines: g.heap_lines,
            sum6_words: summary_words(g.sum6_bits),
            buckets6: g.buckets6,
            trie4: g.trie_nodes4,
            trie6: g.trie_nodes6,
            stats: g.ids * possible_cpus(),
            catalog: g.ids,
            catalog6: g.catalog6,
            one_load_lines: 1,
        }
    }

    /// Set them on a loader of an object with the v2 maps.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        for (name, n) in [
            (MAP_V2_SUM4, self.sum4_words),
            (MAP_V2_EXACT4, self.buckets4),
            (MAP_V2_DIR4, DIR4_LINES),
            (MAP_V2_HEAP, self.heap_lines),
            (MAP_V2_SUM6, self.sum6_words),
            (MAP_V2_EXACT6, self.buckets6),
            (MAP_V2_TRIE4_A, self.trie4),
            (MAP_V2_TRIE4_B, self.trie4),
            (MAP_V2_TRIE6_A, self.trie6),
            (MAP_V2_TRIE6_B, self.trie6),
            (MAP_V2_STATS, self.stats),
            (MAP_V2_CATALOG, self.catalog),
            (MAP_V2_CATADDR6, self.catalog6),
            ("ONE_LOAD", self.one_load_lines),
        ] {
            loader.map_max_entries(name, n.max(1));
        }
    }
}

/// Possible CPUs (`/sys/devices/system/cpu/possible`): the per-entry
/// counters hold a stride of ids for each.
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n as u32)
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
        bail!(
            "membarrier(MEMBARRIER_CMD_GLOBAL): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A shared `mmap` of an array map (`BPF_F_MMAPABLE`).
pub struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// atomics or copies, and the single writer is whoever holds `&mut`.
unsafe impl Send for Mapped {}
// SAFETY: see above.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Map `n` elements of `elem` bytes (rounded up to 8 as the kernel does).
    pub fn new(map: MapData, elem: usize, n: usize) -> Result<Mapped> {
        let page = 4096;
        let len = (elem.div_ceil(8) * 8 * n).div_ceil(page) * page;
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
            bail!("mmap of a v2 map: {}", std::io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr: NonNull::new(p.cast()).context("mmap returned null")?,
            len,
            _map: map,
        })
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

    /// Copy out `len` bytes from `off`.
    pub fn load_bytes(&self, off: usize, len: usize) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|i| self.load64(off + 8 * i).to_ne_bytes())
            .collect()
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
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

/// The v2 maps of a loaded object, mapped.
pub struct V2Maps {
    config: Mapped,
    sum4: Mapped,
    exact4: Mapped,
    dir4: Mapped,
    heap: Mapped,
    sum6: Mapped,
    exact6: Mapped,
    catalog: Mapped,
    catalog6: Mapped,
    trie4: [LpmTrie<MapData, [u8; 4], u64>; 2],
    trie6: [LpmTrie<MapData, [u8; 16], u64>; 2],
    stats: Mapped,
    sizes: Sizes,
}

fn array(ebpf: &mut Ebpf, name: &str, elem: usize, n: u32) -> Result<Mapped> {
    let m = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing"))?;
    let Map::Array(data) = m else {
        bail!("{name} is not an array map")
    };
    Mapped::new(data, elem, n as usize)
}

impl V2Maps {
    /// Take and map the v2 maps of a loaded object created with `sizes`.
    pub fn take(ebpf: &mut Ebpf, sizes: Sizes) -> Result<V2Maps> {
        let mut trie = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        let trie4 = [
            LpmTrie::try_from(trie(MAP_V2_TRIE4_A)?)?,
            LpmTrie::try_from(trie(MAP_V2_TRIE4_B)?)?,
        ];
        let trie6 = [
            LpmTrie::try_from(trie(MAP_V2_TRIE6_A)?)?,
            LpmTrie::try_from(trie(MAP_V2_TRIE6_B)?)?,
        ];
        Ok(V2Maps {
            config: array(ebpf, MAP_V2_CONFIG, size_of::<ConfigV2>(), 1)?,
            sum4: array(ebpf, MAP_V2_SUM4, 8, sizes.sum4_words)?,
            exact4: array(ebpf, MAP_V2_EXACT4, 64, sizes.buckets4)?,
            dir4: array(ebpf, MAP_V2_DIR4, 64, DIR4_LINES)?,
            heap: array(ebpf, MAP_V2_HEAP, 64, sizes.heap_lines)?,
            sum6: array(ebpf, MAP_V2_SUM6, 8, sizes.sum6_words)?,
            exact6: array(ebpf, MAP_V2_EXACT6, 64, sizes.buckets6)?,
            catalog: array(ebpf, MAP_V2_CATALOG, 8, sizes.catalog)?,
            catalog6: array(ebpf, MAP_V2_CATADDR6, 16, sizes.catalog6)?,
            trie4,
            trie6,
            stats: array(ebpf, MAP_V2_STATS, size_of::<EntryCounter>(), sizes.stats)?,
            sizes,
        })
    }

    /// Per-entry counters of ids `0..ids`, summed over CPUs: (packets, bytes).
    pub fn stats(&self, ids: u32) -> Vec<(u64, u64)> {
        let stride = self
            .config
            .load32(std::mem::offset_of!(ConfigV2, stats_stride)) as usize;
        let cpus = (self.sizes.stats as usize).checked_div(stride).unwrap_or(0);
        (0..ids as usize)
            .map(|id| {
                (0..cpus).fold((0, 0), |(p, b), c| {
                    let off = (c * stride + id) * size_of::<EntryCounter>();
                    (p + self.stats.load64(off), b + self.stats.load64(off + 8))
                })
            })
            .collect()
    }

    /// Set the agent's runtime flags (`CONFIG_*`), keeping the layout's.
    pub fn set_runtime_flags(&self, flags: u32) {
        let cur = self.config.load32(0);
        self.config
            .store32(0, (cur & LAYOUT_FLAGS) | (flags & !LAYOUT_FLAGS));
    }

    /// Write whole tables (a fresh sync, before the program runs on them):
    /// arrays copied through the mappings, both trie generations filled,
    /// the config last.
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
                self.trie4[g].insert(&Key::new(len as u32, (addr as u32).to_be_bytes()), v, 0)?;
            }
            for (&(addr, len), &v) in &t.trie[1][g] {
                self.trie6[g].insert(&Key::new(len as u32, addr.to_be_bytes()), v, 0)?;
            }
        }
        let runtime = self.config.load32(0) & !LAYOUT_FLAGS;
        let mut c = t.config;
        c.flags = (c.flags & LAYOUT_FLAGS) | runtime;
        self.config
            .store_bytes(0, bytes_of(std::slice::from_ref(&c)));
        Ok(())
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
                net: (addr, len),
                value,
            } => {
                let g = generation as usize & 1;
                match (v6, value) {
                    (false, Some(v)) => self.trie4[g].insert(
                        &Key::new(len as u32, (addr as u32).to_be_bytes()),
                        v,
                        0,
                    )?,
                    (false, None) => {
                        self.trie4[g].remove(&Key::new(len as u32, (addr as u32).to_be_bytes()))?
                    }
                    (true, Some(v)) => {
                        self.trie6[g].insert(&Key::new(len as u32, addr.to_be_bytes()), v, 0)?
                    }
                    (true, None) => {
                        self.trie6[g].remove(&Key::new(len as u32, addr.to_be_bytes()))?
                    }
                }
            }
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

    /// The tables as the maps hold them now (for decode and verify).
    pub fn read(&self) -> Result<Tables> {
        fn words<T: Copy + Default>(m: &Mapped, n: usize) -> Vec<T> {
            let bytes = m.load_bytes(0, (n * size_of::<T>()).div_ceil(8) * 8);
            let mut v = vec![T::default(); n];
            // SAFETY: POD types; `bytes` holds at least n elements.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    v.as_mut_ptr().cast::<u8>(),
                    n * size_of::<T>(),
                )
            };
            v
        }
        let s = &self.sizes;
        let cfg: Vec<ConfigV2> = words(&self.config, 1);
        let mut trie: [[std::collections::BTreeMap<(u128, u8), u64>; 2]; 2] = Default::default();
        for (g, (t4, t6)) in self.trie4.iter().zip(&self.trie6).enumerate() {
            for kv in t4.iter() {
                let (k, v) = kv?;
                let key = (u32::from_be_bytes(k.data()) as u128, k.prefix_len() as u8);
                trie[0][g].insert(key, v);
            }
            for kv in t6.iter() {
                let (k, v) = kv?;
                trie[1][g].insert((u128::from_be_bytes(k.data()), k.prefix_len() as u8), v);
            }
        }
        Ok(Tables {
            config: cfg[0],
            sum4: words(&self.sum4, s.sum4_words as usize),
            exact4: words::<Bucket4>(&self.exact4, s.buckets4 as usize),
            dir4: words(&self.dir4, DIR4_ENTRIES as usize),
            heap: words::<Line>(&self.heap, s.heap_lines as usize),
            sum6: words(&self.sum6, s.sum6_words as usize),
            exact6: words::<Bucket6>(&self.exact6, s.buckets6 as usize),
            trie,
            catalog: words(&self.catalog, s.catalog as usize),
            catalog6: words(&self.catalog6, s.catalog6 as usize),
        })
    }
}
