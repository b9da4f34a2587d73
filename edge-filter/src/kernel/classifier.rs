//! Classify frames with the real XDP program through BPF_PROG_TEST_RUN,
//! with private maps (never the pinned ones): used by the differential tests
//! and by replay.

use aya::programs::{TestRun, TestRunOptions};
use edge_filter_common::{self as abi, LastVerdict};

use crate::entry::EntrySet;
use crate::error::{Error, Result};
use crate::kernel::maps::{EntryMaps, SyncStats};
use crate::kernel::program::Capacities;

/// Smallest frame BPF_PROG_TEST_RUN accepts for XDP (an Ethernet header).
pub const MIN_FRAME: usize = 14;

/// Largest frame BPF_PROG_TEST_RUN runs in one linear buffer on x86-64
/// (4096 minus XDP headroom and the skb_shared_info tailroom); larger input
/// would be split into fragments this program does not see.
pub const MAX_FRAME: usize = 3520;

/// The kernel's verdict on one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelVerdict {
    /// XDP return code (`XDP_PASS` = 2, `XDP_DROP` = 1).
    pub action: u32,
    /// Counter index the program chose.
    pub reason: abi::Reason,
    /// Deciding entry id, or [`abi::NO_ENTRY`].
    pub entry_id: u32,
}

const SENTINEL: LastVerdict = LastVerdict {
    reason: u32::MAX,
    entry_id: u32::MAX,
};

/// The XDP program loaded with private maps, ready to classify frames. Its
/// maps are a capacity tier for the entries set; a larger set loads a
/// new instance of the next tier (as the agent does on a live link).
pub struct KernelClassifier {
    maps: EntryMaps,
    /// What the last [`KernelClassifier::set_entries`] did.
    pub last_sync: SyncStats,
}

impl KernelClassifier {
    /// Load the program with private maps of the smallest tier. `caps`
    /// is ignored (datapath v2 sizes its maps from the set; kept for
    /// callers of the v1 API).
    pub fn new(_caps: &Capacities) -> Result<Self> {
        let maps = EntryMaps::private(&EntrySet::default(), abi::CONFIG_RECORD_LAST)?;
        Ok(KernelClassifier {
            maps,
            last_sync: SyncStats::default(),
        })
    }

    /// Load the program with private maps of a tier for `set`, holding it.
    pub fn with_set(set: &EntrySet, malformed_drop: bool) -> Result<Self> {
        let maps = EntryMaps::private(set, flags(malformed_drop))?;
        Ok(KernelClassifier {
            maps,
            last_sync: SyncStats::default(),
        })
    }

    /// Replace the entries (a diff against what is loaded).
    pub fn set_entries(&mut self, set: &EntrySet, malformed_drop: bool) -> Result<()> {
        self.last_sync = self.maps.apply(set, flags(malformed_drop))?;
        Ok(())
    }

    /// The maps (for reading counters or contents).
    pub fn maps(&self) -> &EntryMaps {
        &self.maps
    }

    /// The maps, writable (tests of the sync engine).
    pub fn maps_mut(&mut self) -> &mut EntryMaps {
        &mut self.maps
    }

    /// Run one frame through the program.
    pub fn classify(&mut self, frame: &[u8]) -> Result<KernelVerdict> {
        self.maps.set_last(SENTINEL)?;
        let prog = self.maps.xdp_mut()?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        let res = prog.test_run(opts).map_err(|source| Error::Program {
            op: format!("BPF_PROG_TEST_RUN of a {}-byte frame", frame.len()),
            source,
        })?;
        let last = self
            .maps
            .last()?
            .into_iter()
            .find(|l| *l != SENTINEL)
            .ok_or_else(|| Error::Pin {
                op: "reading the recorded verdict".into(),
                source: std::io::Error::other("the program recorded no verdict"),
            })?;
        Ok(KernelVerdict {
            action: res.return_value,
            reason: last.reason,
            entry_id: last.entry_id,
        })
    }

    /// Time `repeat` runs of one frame in the kernel; mean ns per run.
    pub fn bench(&mut self, frame: &[u8], repeat: u32) -> Result<f64> {
        let prog = self.maps.xdp_mut()?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let res = prog.test_run(opts).map_err(|source| Error::Program {
            op: "BPF_PROG_TEST_RUN".into(),
            source,
        })?;
        Ok(res.duration.as_nanos() as f64)
    }
}

/// The runtime flags of a classifier: every verdict recorded in `LAST`.
fn flags(malformed_drop: bool) -> u32 {
    abi::CONFIG_RECORD_LAST
        | if malformed_drop {
            abi::CONFIG_MALFORMED_DROP
        } else {
            0
        }
}
