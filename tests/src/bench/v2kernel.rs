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

/// The bench object loaded for BPF_PROG_TEST_RUN: `programs` loaded, the v2
/// maps taken (mmapped) for the caller, `LAST` kept to read each run's
/// verdict. The kernel tests of v2 (`v2_datapath`, `v2_sync`) classify
/// through it.
pub struct TestRunner {
    /// The loaded object (its programs stay reachable, e.g. to attach one).
    pub ebpf: aya::Ebpf,
    last: aya::maps::PerCpuArray<aya::maps::MapData, edge_filter_common::LastVerdict>,
}

/// What `LAST` holds before a run: no verdict recorded.
const SENTINEL: edge_filter_common::LastVerdict = edge_filter_common::LastVerdict {
    reason: u32::MAX,
    entry_id: u32::MAX,
};

impl TestRunner {
    /// Load [`BENCH_OBJECT`] with the v2 maps of `sizes` (every other map
    /// small) and load `programs`. Panics with context: a test helper.
    pub fn load(sizes: BenchSizes, programs: &[&str]) -> (TestRunner, V2Maps) {
        use aya::programs::Xdp;
        assert!(
            !BENCH_OBJECT.is_empty(),
            "the bench-ebpf object was not built (AYA_BUILD_SKIP?)"
        );
        let mut loader = EbpfLoader::new();
        for (name, n) in edge_filter::kernel::program::Capacities::small().per_map() {
            loader.map_max_entries(name, n);
        }
        sizes.apply(&mut loader);
        let mut ebpf = loader.load(BENCH_OBJECT).expect("loading the bench object");
        for name in programs {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .try_into()
                .unwrap();
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        let maps = V2Maps::take(&mut ebpf).expect("mapping the v2 maps");
        let last = aya::maps::PerCpuArray::try_from(ebpf.take_map("LAST").expect("LAST")).unwrap();
        (TestRunner { ebpf, last }, maps)
    }

    /// (XDP action, reason, deciding id) of one frame through `prog`
    /// (the maps' runtime flags must include `CONFIG_RECORD_LAST`).
    pub fn classify(&mut self, prog: &str, frame: &[u8]) -> (u32, u32, u32) {
        use aya::programs::{TestRun as _, TestRunOptions, Xdp};
        let cpus = aya::util::nr_cpus().unwrap();
        let vals = aya::maps::PerCpuValues::try_from(vec![SENTINEL; cpus]).unwrap();
        self.last.set(0, vals, 0).unwrap();
        let p: &Xdp = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let res = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("test run of {prog}: {e}"));
        let l = self
            .last
            .get(&0, 0)
            .unwrap()
            .iter()
            .copied()
            .find(|l| *l != SENTINEL)
            .expect("the program recorded no verdict");
        (res.return_value, l.reason, l.entry_id)
    }
}

/// The reference's verdict as [`TestRunner::classify`] reports one: (XDP
/// action, reason, deciding id under `ids`).
pub fn expected(
    v: &edge_filter::reference::Verdict,
    ids: &edge_filter::kernel::layout::Ids,
) -> (u32, u32, u32) {
    use edge_filter::entry::EntryKey;
    use edge_filter::kernel::layout::IdKey;
    let id = if let Some(e) = v.entry {
        ids[&IdKey::Entry(EntryKey {
            net: e.net,
            port: e.port,
        })]
    } else if let Some(a) = v.allow {
        ids[&IdKey::Allow(a)]
    } else {
        edge_filter_common::NO_ENTRY
    };
    let action = if v.is_drop() {
        crate::differential::XDP_DROP
    } else {
        crate::differential::XDP_PASS
    };
    (action, v.reason, id)
}
