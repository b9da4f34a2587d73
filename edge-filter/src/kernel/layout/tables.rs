//! The compiled tables as plain memory (what the kernel maps hold), the
//! geometry that sizes them, and the single writes an update is made of.

use std::collections::BTreeMap;

use edge_filter_common::v2::{
    Bucket4, Bucket6, ConfigV2, DIR4_ENTRIES, Line, SLOTS4, Slot4, exact_buckets_for,
    summary_bits_for, summary_words,
};

use super::image::{Arr, Backings, ImageError};
use super::model::Net;

/// Sizes and seeds of one capacity tier. Every table is sized here at
/// build time; an update that would exceed a capacity fails with
/// [`LayoutError::Capacity`](super::LayoutError::Capacity), and the agent
/// builds the next tier and switches to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// IPv4 summary: `2^sum4_bits` blocks (`/sum4_bits`).
    pub sum4_bits: u32,
    /// Buckets of the IPv4 exact table (a power of two).
    pub buckets4: u32,
    /// Seed of the IPv4 hashes.
    pub seed4: u32,
    /// IPv6 summary: `2^sum6_bits` hashed blocks.
    pub sum6_bits: u32,
    /// Buckets of the IPv6 exact table (a power of two).
    pub buckets6: u32,
    /// Seed of the IPv6 hashes.
    pub seed6: u32,
    /// Heap lines (B-tree nodes, port lists).
    pub heap_lines: u32,
    /// Ids covered by the per-entry counters and the catalog.
    pub ids: u32,
    /// IPv6 addresses the catalog holds.
    pub catalog6: u32,
    /// Nodes each folded trie of a family may hold (LPM `max_entries`).
    pub trie_nodes4: u32,
    /// See [`Geometry::trie_nodes4`].
    pub trie_nodes6: u32,
    /// Also keep the folded IPv4 tries (the measured alternative to the
    /// `/16` directory; the benchmark's `edge_filter_v2_trie` reads them).
    pub trie4: bool,
}

/// How many of each thing a set needs (what the tier policy sizes for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// IPv4 addresses with records (exact or address+port entries).
    pub records4: u64,
    /// IPv6 addresses with records.
    pub records6: u64,
    /// IPv4 nets of the prefix structure (allowlist, prefixes, prefix+port).
    pub nets4: u64,
    /// IPv6 nets of the prefix structure.
    pub nets6: u64,
    /// Port entries (address+port and prefix+port), both families.
    pub ported: u64,
    /// One more than the largest id.
    pub ids: u64,
    /// IPv6 entries and allowlist nets (catalog addresses).
    pub ids6: u64,
}

impl Counts {
    /// Each count the larger of the two: room for either set (a geometry
    /// that every set of a sequence fits).
    pub fn at_least(self, o: &Counts) -> Counts {
        Counts {
            records4: self.records4.max(o.records4),
            records6: self.records6.max(o.records6),
            nets4: self.nets4.max(o.nets4),
            nets6: self.nets6.max(o.nets6),
            ported: self.ported.max(o.ported),
            ids: self.ids.max(o.ids),
            ids6: self.ids6.max(o.ids6),
        }
    }
}

fn pow2(n: u64, min: u64) -> u32 {
    n.max(min).next_power_of_two().min(1 << 31) as u32
}

impl Geometry {
    /// The tier for `c` with `headroom` (>= 1.0) times the room the set
    /// needs now, so growth of that much needs no rebuild. Exact tables
    /// run at load <= 1/2 at capacity; the summary has about 16 blocks
    /// per record or net (`summary_bits_for`), between 16 KiB and 4 MiB.
    pub fn for_counts(c: &Counts, headroom: f64, seed: u64) -> Geometry {
        let grow = |n: u64| (n as f64 * headroom.max(1.0)).ceil() as u64;
        // One rounding only: the buckets (a power of two) for load <= 1/2.
        let cap4 = grow(c.records4).max(64);
        let cap6 = grow(c.records6).max(64);
        Geometry {
            sum4_bits: summary_bits_for(cap4 + grow(c.nets4)),
            buckets4: exact_buckets_for(cap4, SLOTS4 as u64),
            seed4: (seed >> 32) as u32 ^ 0x6a09_e667,
            sum6_bits: summary_bits_for(cap6 + grow(c.nets6)),
            buckets6: exact_buckets_for(cap6, 3),
            seed6: seed as u32 ^ 0xbb67_ae85,
            heap_lines: pow2(grow(4 * (c.nets4 + c.nets6) + 2 * c.ported) + 64, 1024),
            // Arrays need no power of two: room for the ids, in pages.
            ids: grow(c.ids)
                .max(1024)
                .div_ceil(4096)
                .saturating_mul(4096)
                .min(1 << 24) as u32,
            catalog6: pow2(grow(c.ids6), 64),
            trie_nodes4: pow2(grow(c.nets4), 64),
            trie_nodes6: pow2(grow(c.nets6), 64),
            trie4: false,
        }
    }

    /// Records the IPv4 exact table takes at load 1/2.
    pub fn capacity4(&self) -> u64 {
        self.buckets4 as u64 * SLOTS4 as u64 / 2
    }

    /// Records the IPv6 exact table takes at load 1/2.
    pub fn capacity6(&self) -> u64 {
        self.buckets6 as u64 * 3 / 2
    }

    /// The config word of these tables (generation 0, no flags).
    pub fn config(&self) -> ConfigV2 {
        ConfigV2 {
            flags: 0,
            seed4: self.seed4,
            mask4: self.buckets4 - 1,
            shift4: 32 - self.sum4_bits,
            seed6: self.seed6,
            mask6: self.buckets6 - 1,
            shift6: 32 - self.sum6_bits,
            generation: 0,
            stats_stride: self.ids,
            _pad: 0,
        }
    }
}

/// The tables as the kernel maps hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// `V2_CONFIG[0]`.
    pub config: ConfigV2,
    /// `V2_SUM4`.
    pub sum4: Arr<u64>,
    /// `V2_EXACT4`.
    pub exact4: Arr<Bucket4>,
    /// `V2_DIR4`.
    pub dir4: Arr<u32>,
    /// `V2_HEAP`.
    pub heap: Arr<Line>,
    /// `V2_SUM6`.
    pub sum6: Arr<u64>,
    /// `V2_EXACT6`.
    pub exact6: Arr<Bucket6>,
    /// The folded tries: `trie[v6][generation]`, keyed by net.
    pub trie: [[BTreeMap<(u128, u8), u64>; 2]; 2],
    /// `V2_CATALOG`.
    pub catalog: Arr<u64>,
    /// `V2_CATADDR6`.
    pub catalog6: Arr<[u8; 16]>,
}

impl Tables {
    /// Empty tables of `g`.
    pub fn new(g: &Geometry) -> Tables {
        Tables {
            config: g.config(),
            sum4: vec![0; summary_words(g.sum4_bits) as usize].into(),
            exact4: vec![Bucket4::default(); g.buckets4 as usize].into(),
            dir4: vec![0; DIR4_ENTRIES as usize].into(),
            heap: vec![[0; 8]; g.heap_lines as usize].into(),
            sum6: vec![0; summary_words(g.sum6_bits) as usize].into(),
            exact6: vec![Bucket6::default(); g.buckets6 as usize].into(),
            trie: Default::default(),
            catalog: vec![0; g.ids as usize].into(),
            catalog6: vec![[0; 16]; g.catalog6 as usize].into(),
        }
    }

    /// Apply one write.
    pub fn apply(&mut self, w: &Write) {
        match *w {
            Write::Sum4 { word, value } => self.sum4[word as usize] = value,
            Write::Slot4 {
                bucket,
                slot,
                value,
            } => self.exact4[bucket as usize].slots[slot as usize] = Slot4::from_word(value),
            Write::Addr6 { bucket, slot, addr } => {
                self.exact6[bucket as usize].addrs[slot as usize] = addr
            }
            Write::Meta6 { bucket, slot, meta } => {
                self.exact6[bucket as usize].metas[slot as usize] = meta
            }
            Write::Hdr6 { bucket, value } => self.exact6[bucket as usize].hdr = value,
            Write::Dir4 { index, value } => self.dir4[index as usize] = value,
            Write::Line { line, value } => self.heap[line as usize] = value,
            Write::Sum6 { word, value } => self.sum6[word as usize] = value,
            Write::Trie {
                v6,
                generation,
                net,
                value,
            } => {
                let t = &mut self.trie[v6 as usize][generation as usize & 1];
                match value {
                    Some(v) => {
                        t.insert(net, v);
                    }
                    None => {
                        t.remove(&net);
                    }
                }
            }
            Write::Flags(f) => self.config.flags = f,
            Write::Generation(g) => self.config.generation = g,
            Write::Catalog { id, value } => self.catalog[id as usize] = value,
            Write::Catalog6 { index, addr } => self.catalog6[index as usize] = addr,
        }
    }

    /// The folded trie lookup: the value of the longest net of the active
    /// generation containing `addr` (`width` 32 or 128).
    pub fn trie_lookup(
        t: &BTreeMap<(u128, u8), u64>,
        lens: &[u8],
        addr: u128,
        width: u8,
    ) -> Option<u64> {
        lens.iter()
            .find_map(|&l| t.get(&(super::model::mask(addr, l, width), l)).copied())
    }

    /// Read the kernel's maps instead of a copy: each array is dropped
    /// and `b`'s memory read in its place (which must hold the same
    /// bytes: checked). From then on stores go to an overlay until
    /// [`Tables::settle`]. On an error the arrays rebased so far stay
    /// rebased and the others owned: either way the tables read the same.
    pub fn rebase(&mut self, b: &Backings) -> Result<(), ImageError> {
        self.sum4.rebase(b.sum4.clone())?;
        self.exact4.rebase(b.exact4.clone())?;
        self.dir4.rebase(b.dir4.clone())?;
        self.heap.rebase(b.heap.clone())?;
        self.sum6.rebase(b.sum6.clone())?;
        self.exact6.rebase(b.exact6.clone())?;
        self.catalog.rebase(b.catalog.clone())?;
        self.catalog6.rebase(b.catalog6.clone())
    }

    /// Whether the arrays read the kernel's maps ([`Tables::rebase`]).
    pub fn is_mapped(&self) -> bool {
        self.exact4.is_mapped()
    }

    /// Elements a pending plan stores in the arrays (the overlay).
    pub fn pending(&self) -> usize {
        self.sum4.pending()
            + self.exact4.pending()
            + self.dir4.pending()
            + self.heap.pending()
            + self.sum6.pending()
            + self.exact6.pending()
            + self.catalog.pending()
            + self.catalog6.pending()
    }

    /// The pending plan has been applied: check the kernel holds what it
    /// stored and drop the overlay (see [`Arr::settle`]). Every array is
    /// settled even when one differs.
    pub fn settle(&mut self) -> Result<(), ImageError> {
        let r = [
            self.sum4.settle(),
            self.exact4.settle(),
            self.dir4.settle(),
            self.heap.settle(),
            self.sum6.settle(),
            self.exact6.settle(),
            self.catalog.settle(),
            self.catalog6.settle(),
        ];
        r.into_iter().collect()
    }

    /// Whether a mapped array's memory differs from what the plans so far
    /// stored (see [`Arr::drifted`]; `false` for owned arrays).
    pub fn arrays_drifted(&self) -> bool {
        self.sum4.drifted()
            || self.exact4.drifted()
            || self.dir4.drifted()
            || self.heap.drifted()
            || self.sum6.drifted()
            || self.exact6.drifted()
            || self.catalog.drifted()
            || self.catalog6.drifted()
    }

    /// Bytes of every array (what the kernel's maps of this geometry take,
    /// tries and per-CPU counters aside).
    pub fn array_bytes(&self) -> u64 {
        (self.sum4.len() * 8
            + self.exact4.len() * 64
            + self.dir4.len() * 4
            + self.heap.len() * 64
            + self.sum6.len() * 8
            + self.exact6.len() * 64
            + self.catalog.len() * 8
            + self.catalog6.len() * 16
            + 32) as u64
    }
}

/// One store the agent makes into the kernel's maps: every one is a
/// naturally aligned word of at most 8 bytes (an atomic store), except
/// [`Write::Line`], [`Write::Addr6`] and [`Write::Catalog6`], which only
/// ever target memory no reader can reach at that point, and
/// [`Write::Trie`], an LPM trie update (atomic in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// `V2_SUM4[word] = value`.
    Sum4 { word: u32, value: u64 },
    /// `V2_EXACT4[bucket].slots[slot]`, as [`Slot4::word`].
    Slot4 { bucket: u32, slot: u32, value: u64 },
    /// `V2_EXACT6[bucket].addrs[slot]` (while the slot's meta is 0).
    Addr6 {
        bucket: u32,
        slot: u32,
        addr: [u8; 16],
    },
    /// `V2_EXACT6[bucket].metas[slot]`.
    Meta6 { bucket: u32, slot: u32, meta: u32 },
    /// `V2_EXACT6[bucket].hdr`.
    Hdr6 { bucket: u32, value: u32 },
    /// `V2_DIR4[index]`.
    Dir4 { index: u32, value: u32 },
    /// `V2_HEAP[line]`, a line nothing points to yet.
    Line { line: u32, value: Line },
    /// `V2_SUM6[word] = value`.
    Sum6 { word: u32, value: u64 },
    /// A folded trie node of `generation` (`None` deletes it).
    Trie {
        v6: bool,
        generation: u32,
        net: (u128, u8),
        value: Option<u64>,
    },
    /// `V2_CONFIG.flags`.
    Flags(u32),
    /// `V2_CONFIG.generation`.
    Generation(u32),
    /// `V2_CATALOG[id]`.
    Catalog { id: u32, value: u64 },
    /// `V2_CATADDR6[index]`.
    Catalog6 { index: u32, addr: [u8; 16] },
}

/// A step of an update plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Stores, in this order.
    Writes(Vec<Write>),
    /// Wait for a grace period: every reader that started before it has
    /// finished (`membarrier(MEMBARRIER_CMD_GLOBAL)`, i.e.
    /// `synchronize_rcu()`; XDP runs inside an RCU read-side section).
    Grace,
}

/// The ordered stores and grace periods that take the tables from one set
/// to the next so that a concurrent reader sees either verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Number of stores.
    pub fn writes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Writes(w) => w.len(),
                Step::Grace => 0,
            })
            .sum()
    }

    /// Number of grace periods.
    pub fn graces(&self) -> usize {
        self.steps.iter().filter(|s| **s == Step::Grace).count()
    }

    /// Apply every store to `t` (what the kernel holds afterwards).
    pub fn apply_to(&self, t: &mut Tables) {
        for s in &self.steps {
            if let Step::Writes(ws) = s {
                for w in ws {
                    t.apply(w);
                }
            }
        }
    }
}

/// A net as the trie key tuple.
pub(crate) fn key_of(n: Net) -> (u128, u8) {
    (n.addr, n.len)
}
