//! The agent's error type: one variant per thing an operator can fix, each
//! rendered as a one-line explanation.

use std::path::PathBuf;

use crate::trust::TrustError;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary was built with `AYA_BUILD_SKIP=1` and embeds no program.
    #[error(
        "this binary was built without the eBPF object (AYA_BUILD_SKIP=1); rebuild it normally"
    )]
    NoObject,
    /// Missing privileges for a BPF or netlink operation.
    #[error(
        "{op}: permission denied: run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8)"
    )]
    Permission {
        /// What was being done.
        op: String,
    },
    /// The process lacks capabilities a command needs (checked before it
    /// creates or changes anything).
    #[error(
        "{command} needs {missing_list}, which this process does not have: run it as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (see deploy/edge-filter.service); nothing was changed",
        missing_list = .missing.join(", ")
    )]
    Capabilities {
        /// The command that refused.
        command: &'static str,
        /// The capabilities missing.
        missing: Vec<&'static str>,
    },
    /// The kernel's verifier rejected the program.
    #[error(
        "the kernel verifier rejected the XDP program ({errno}); end of the verifier log:\n{tail}"
    )]
    Verifier {
        /// The syscall error.
        errno: std::io::Error,
        /// The last lines of the verifier log.
        tail: String,
    },
    /// The kernel lacks a feature a command needs (found by the kernel
    /// feature probes before anything was changed).
    #[error(
        "{command} needs {feature} (Linux {since}+), which this kernel does not offer ({detail}); it is used for {why}. `edge-filter features` lists what this kernel has"
    )]
    KernelFeature {
        /// The command that refused.
        command: &'static str,
        /// The feature, in the kernel's terms.
        feature: &'static str,
        /// The upstream release that added it.
        since: &'static str,
        /// What edge-filter uses it for.
        why: &'static str,
        /// The kernel's answer to the probe.
        detail: String,
    },
    /// Event sampling is already on for the interface.
    #[error(
        "event sampling is already on for {0} (another `edge-filter events` is reading it, or one was killed: pass --takeover to take it over)"
    )]
    SamplingBusy(String),
    /// The network interface does not exist.
    #[error("interface {0:?} does not exist (see `ip link`)")]
    NoInterface(String),
    /// bpffs is not mounted and could not be mounted.
    #[error("cannot mount bpffs at {path}: {source} (mount it with `mount -t bpf bpf {path}`)")]
    BpffsMount {
        /// Where it should be.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Nothing is pinned for that interface.
    #[error("no edge-filter is attached to {iface} (nothing pinned under {path})")]
    NotAttached {
        /// Interface name.
        iface: String,
        /// The pin directory looked at.
        path: PathBuf,
    },
    /// Some of the attachment's map pins exist and others do not: it was
    /// pinned by an edge-filter build with another set of maps (an older
    /// one, before `ENTRY_STATS`, `EVENTS` and the like existed), which
    /// this build cannot adopt or read.
    #[error(
        "the filter pinned on {iface} (under {dir}) was attached by an older (or different) edge-filter build: it lacks the map{plural} {missing_list} that this build uses, so it cannot be adopted or read; detach it with `{detach}` (traffic passes unfiltered until a filter is attached again), then re-run this command (for the agent, `edge-filter run` then attaches this build's filter)",
        missing_list = .missing.join(", "),
        plural = if .missing.len() == 1 { "" } else { "s" },
    )]
    IncompatiblePins {
        /// Interface name.
        iface: String,
        /// The interface's pin directory.
        dir: PathBuf,
        /// The map names this build expects and found no pin of.
        missing: Vec<String>,
        /// The command that removes the old attachment.
        detach: String,
    },
    /// A map is full: the overflow was refused, the rest applied.
    #[error(
        "map {map} is full ({capacity} entries): {refused} entries refused; raise its capacity"
    )]
    MapFull {
        /// Map name.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
        /// Entries that did not fit.
        refused: usize,
    },
    /// Reading an input file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Any other BPF map operation failure.
    #[error("{op}: {source}")]
    Map {
        /// What was being done.
        op: String,
        /// The aya error.
        source: aya::maps::MapError,
    },
    /// Any other program operation failure.
    #[error("{op}: {source}")]
    Program {
        /// What was being done.
        op: String,
        /// The aya error.
        source: aya::programs::ProgramError,
    },
    /// Loading the object failed for a reason other than the verifier.
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    /// Another XDP program is attached to the interface.
    #[error(
        "{iface} already runs another XDP program ({holders}); edge-filter cannot attach beside it. Remove it first (an edge-filter attachment: `edge-filter detach --iface {iface}` with its --bpffs; one attached with ip: `ip link set dev {iface} xdp off`)"
    )]
    XdpBusy {
        /// Interface name.
        iface: String,
        /// The programs found, with their modes.
        holders: String,
    },
    /// Another agent manages the interface's pins (it holds the lock).
    #[error(
        "{iface} is already managed by {holder} (lock {lock}); one agent per interface: stop that one first (or use `edge-filter status` to see what it does)",
        holder = match .pid { Some(p) => format!("edge-filter agent pid {p}"), None => "another edge-filter agent".to_string() },
        lock = .lock.display(),
    )]
    AlreadyManaged {
        /// Interface name.
        iface: String,
        /// The holder's pid, when the kernel says.
        pid: Option<u32>,
        /// The lock file.
        lock: PathBuf,
    },
    /// Taking the one-agent-per-interface lock failed.
    #[error("{op}: {source}")]
    Lock {
        /// What was being done.
        op: String,
        /// The error.
        source: std::io::Error,
    },
    /// A pin directory or pin that another user could write (see
    /// [`crate::trust`]): refused, with the command that fixes it.
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    /// The state directory could not be opened, or another user could
    /// write it: an `intel::state::StateError`, boxed (the foundation does
    /// not know the layers above it). Shown as the state error's own
    /// message, which names the path (and, when untrusted, the fix), and
    /// not chained again.
    #[error("{0}")]
    State(Box<dyn std::error::Error + Send + Sync>),
    /// The v2 layout compiler refused a set (`kernel::layout::LayoutError`,
    /// boxed: the foundation does not know the kernel layer).
    #[error("compiling the entry set into the datapath tables: {0}")]
    Layout(Box<dyn std::error::Error + Send + Sync>),
    /// A system call on the v2 maps failed (`mmap`, `membarrier`).
    #[error("{op}: {source}")]
    Syscall {
        /// What was being done.
        op: String,
        /// The error.
        source: std::io::Error,
    },
    /// Pinning or unpinning failed.
    #[error("{op}: {source}")]
    Pin {
        /// What was being done.
        op: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
