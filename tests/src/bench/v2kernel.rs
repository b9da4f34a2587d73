//! The bench-ebpf object and the sizes of its maps beyond the v2 ones; the
//! v2 writer itself (mmap, plans, grace periods, read back) is the agent's,
//! `edge_filter::kernel::v2maps`.

use anyhow::Result;
use aya::EbpfLoader;
use edge_filter::kernel::layout::Geometry;
pub use edge_filter::kernel::v2maps::{
    ApplyTiming, LAYOUT_FLAGS, Mapped, Sizes, V2Maps, grace_period, possible_cpus,
};

/// The bench-ebpf object built by `tests/build.rs` (empty with
/// `AYA_BUILD_SKIP=1`).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ef-bench-progs"));

/// `max_entries` of the bench object's v2 maps and of the one-load
/// baseline's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchSizes {
    /// The v2 maps.
    pub v2: Sizes,
    /// Lines of `ONE_LOAD`.
    pub one_load_lines: u32,
}

impl BenchSizes {
    /// Tiny maps: enough to load the programs.
    pub fn small() -> BenchSizes {
        BenchSizes {
            v2: Sizes::small(),
            one_load_lines: 1,
        }
    }

    /// The v2 maps of tables of geometry `g`.
    pub fn of(g: &Geometry) -> Result<BenchSizes> {
        Ok(BenchSizes {
            v2: Sizes::of(g)?,
            one_load_lines: 1,
        })
    }

    /// Set them on a loader of the bench object.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        self.v2.apply(loader);
        loader.map_max_entries("ONE_LOAD", self.one_load_lines.max(1));
    }
}
