//! The kernel side of the v2 tables for the benchmarks and tests: map
//! sizes for a loader, `mmap`s of the array maps, and writing compiled
//! tables and update plans into them (phase 2 moves this into the agent).

use aya::EbpfLoader;
use edge_filter_common::v2::{
    DIR4_ENTRIES, MAP_V2_CATADDR6, MAP_V2_CATALOG, MAP_V2_DIR4, MAP_V2_EXACT4, MAP_V2_EXACT6,
    MAP_V2_HEAP, MAP_V2_STATS, MAP_V2_SUM4, MAP_V2_SUM6, MAP_V2_TRIE4_A, MAP_V2_TRIE4_B,
    MAP_V2_TRIE6_A, MAP_V2_TRIE6_B, summary_words,
};

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

    /// Set them on a loader of an object with the v2 maps.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        for (name, n) in [
            (MAP_V2_SUM4, self.sum4_words),
            (MAP_V2_EXACT4, self.buckets4),
            (MAP_V2_DIR4, DIR4_ENTRIES),
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
