//! Kernel feature probes: what this kernel can do for edge-filter, found by
//! asking it, not by reading its version number.
//!
//! Distributions backport BPF features, and vendors ship kernels whose
//! version says little about their BPF. So every probe makes the real
//! syscall with a tiny map or program and reads the kernel's answer. The
//! version is only used to say which upstream release added a feature, and
//! as a last resort when a probe cannot run (see [`Status::Unknown`]).
//!
//! `edge-filter features` prints the table; the commands call [`require`]
//! before they touch anything, so a kernel that lacks a feature gets one
//! line naming it instead of a failure halfway through an attach.
//! docs/kernels.md lists the same table and which kernels were tested.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernel::sys::bpf as sys_bpf;
use crate::trust::is_permission;

/// A command that needs kernel features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Use {
    /// `edge-filter run`: load, pin, attach through a bpf_link, sync maps.
    Run,
    /// `edge-filter replay` (and the differential tests): the program run
    /// on captured packets with `BPF_PROG_TEST_RUN`.
    Replay,
    /// `edge-filter replay --live`: real frames through a veth pair.
    ReplayLive,
    /// `cargo xtask bench`, live section: the traffic generator.
    LiveTraffic,
    /// `edge-filter events`: sampled packets from the ring buffer.
    Events,
}

impl Use {
    /// A short name for tables.
    pub fn short(self) -> &'static str {
        match self {
            Use::Run => "run",
            Use::Replay => "replay",
            Use::ReplayLive => "replay --live",
            Use::LiveTraffic => "bench (live)",
            Use::Events => "events",
        }
    }

    /// How the command is spelled for the user.
    pub fn command(self) -> &'static str {
        match self {
            Use::Run => "edge-filter run",
            Use::Replay => "edge-filter replay",
            Use::ReplayLive => "edge-filter replay --live",
            Use::LiveTraffic => "the live traffic generator of `cargo xtask bench`",
            Use::Events => "edge-filter events",
        }
    }
}

/// What a command does when a feature is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// The commands in `required_by` refuse to start without it.
    Required,
    /// Used when present; the text says what happens instead.
    Fallback(&'static str),
    /// Only reporting or tooling uses it.
    Optional(&'static str),
}

/// One kernel feature.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Feature {
    /// Stable identifier (`--json`, tests).
    pub id: &'static str,
    /// What it is, in the kernel's terms.
    pub title: &'static str,
    /// The upstream release that added it.
    pub since: &'static str,
    /// Why edge-filter needs it.
    pub why: &'static str,
    /// How much it is needed.
    pub need: Need,
    /// Commands that refuse to start without it.
    pub required_by: &'static [Use],
}

/// Every feature edge-filter probes, oldest first.
pub const FEATURES: &[Feature] = &[
    Feature {
        id: "hash-map",
        title: "BPF hash maps",
        since: "3.19",
        why: "exact addresses and address+port entries",
        need: Need::Required,
        required_by: &[Use::Run, Use::Replay, Use::ReplayLive],
    },
    Feature {
        id: "percpu-array-map",
        title: "per-CPU array maps",
        since: "4.6",
        why: "the counters by reason",
        need: Need::Required,
        required_by: &[Use::Run, Use::Replay, Use::ReplayLive],
    },
    Feature {
        id: "xdp-program",
        title: "XDP programs",
        since: "4.8",
        why: "the filter itself",
        need: Need::Required,
        required_by: &[Use::Run, Use::Replay, Use::ReplayLive, Use::LiveTraffic],
    },
    Feature {
        id: "lpm-trie-map",
        title: "LPM trie maps",
        since: "4.11",
        why: "prefixes and the allowlist",
        need: Need::Required,
        required_by: &[Use::Run, Use::Replay, Use::ReplayLive],
    },
    Feature {
        id: "xdp-test-run",
        title: "BPF_PROG_TEST_RUN for XDP",
        since: "4.12",
        why: "replaying captures through the real program",
        need: Need::Required,
        required_by: &[Use::Replay],
    },
    Feature {
        id: "batch-map-ops",
        title: "batch map operations (BPF_MAP_UPDATE_BATCH)",
        since: "5.6",
        why: "writing a million entries in a few hundred syscalls",
        need: Need::Fallback("map sync writes one element per syscall"),
        required_by: &[],
    },
    Feature {
        id: "ringbuf-map",
        title: "BPF ring buffer maps",
        since: "5.8",
        why: "the sampled packet events (the program declares the map, so loading needs it)",
        need: Need::Required,
        required_by: &[Use::Run, Use::Replay, Use::ReplayLive, Use::Events],
    },
    Feature {
        id: "xdp-link",
        title: "bpf_link for XDP (BPF_LINK_CREATE, BPF_XDP)",
        since: "5.9",
        why: "a pinned link keeps the filter attached across agent restarts and lets a new agent adopt it",
        need: Need::Required,
        required_by: &[Use::Run, Use::ReplayLive],
    },
    Feature {
        id: "verified-insns",
        title: "verified_insns in the program info",
        since: "5.16",
        why: "reporting the verifier's instruction count (`cargo xtask vm-test`)",
        need: Need::Optional("count shown as n/a"),
        required_by: &[],
    },
    Feature {
        id: "xdp-live-frames",
        title: "BPF_PROG_TEST_RUN live frames (BPF_F_TEST_XDP_LIVE_FRAMES)",
        since: "5.18",
        why: "generating line-rate traffic without a NIC (benchmarks)",
        need: Need::Optional("the bench's live section is skipped, and says why"),
        required_by: &[Use::LiveTraffic],
    },
    Feature {
        id: "kernel-btf",
        title: "kernel BTF (/sys/kernel/btf/vmlinux)",
        since: "5.4",
        why: "not needed: the program uses no CO-RE relocations; reported for bug reports",
        need: Need::Optional("nothing changes"),
        required_by: &[],
    },
];

/// The answer of one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "kebab-case")]
pub enum Status {
    /// The kernel did it.
    Present,
    /// The kernel refused it; the detail is its answer.
    Missing(String),
    /// The probe could not run (for example no privileges); the detail
    /// says why and what the kernel version suggests.
    Unknown(String),
}

/// One probed feature.
#[derive(Clone, Debug, Serialize)]
pub struct Probed {
    /// The feature.
    #[serde(flatten)]
    pub feature: Feature,
    /// What the kernel answered.
    #[serde(flatten)]
    pub status: Status,
}

/// The result of probing every feature.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// Every feature of [`FEATURES`], in order.
    pub features: Vec<Probed>,
}

impl Report {
    /// The status of the feature `id`.
    pub fn status(&self, id: &str) -> Option<&Status> {
        self.features
            .iter()
            .find(|p| p.feature.id == id)
            .map(|p| &p.status)
    }

    /// The first required feature of `use_` that is missing, if any.
    pub fn missing_for(&self, use_: Use) -> Option<&Probed> {
        self.features.iter().find(|p| {
            p.feature.required_by.contains(&use_) && matches!(p.status, Status::Missing(_))
        })
    }
}

/// Probe every feature. Never fails: each probe reports its own outcome.
pub fn probe_all() -> Report {
    Report {
        kernel: kernel_release(),
        features: FEATURES
            .iter()
            .map(|f| Probed {
                feature: *f,
                status: probe(f.id),
            })
            .collect(),
    }
}

/// Probe only what `use_` requires and fail with [`Error::KernelFeature`]
/// naming the first missing one. Probes that cannot run (no privileges) do
/// not refuse here: the command's own first BPF call reports the
/// permission problem with the capabilities it needs.
pub fn require(use_: Use) -> Result<()> {
    if matches!(use_, Use::Run | Use::ReplayLive) {
        let missing = missing_capabilities(capabilities());
        if !missing.is_empty() {
            return Err(Error::Capabilities {
                command: use_.command(),
                missing,
            });
        }
    }
    for f in FEATURES.iter().filter(|f| f.required_by.contains(&use_)) {
        if let Status::Missing(detail) = probe(f.id) {
            return Err(Error::KernelFeature {
                command: use_.command(),
                feature: f.title,
                since: f.since,
                why: f.why,
                detail,
            });
        }
    }
    Ok(())
}

/// How the detail of a [`Status::Missing`] starts when the kernel answered
/// root with `EPERM`: the host's kernel or policy refuses it, whatever its
/// version says.
pub const REFUSED_TO_ROOT: &str = "refused to root";

/// Probe one feature by id. Unknown ids are a programming error.
pub fn probe(id: &str) -> Status {
    let r = match id {
        "hash-map" => map_create(BPF_MAP_TYPE_HASH, 4, 8, 16, 0).map(drop),
        "percpu-array-map" => map_create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, 0).map(drop),
        "lpm-trie-map" => map_create(BPF_MAP_TYPE_LPM_TRIE, 8, 8, 16, BPF_F_NO_PREALLOC).map(drop),
        "xdp-program" => load_xdp(XDP_PASS).map(drop),
        "ringbuf-map" => map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, page_size(), 0).map(drop),
        "xdp-test-run" => probe_test_run(),
        "batch-map-ops" => probe_batch(),
        "xdp-link" => return probe_xdp_link(),
        "verified-insns" => probe_verified_insns(),
        "xdp-live-frames" => probe_live_frames(),
        "kernel-btf" => {
            return if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
                Status::Present
            } else {
                Status::Missing("/sys/kernel/btf/vmlinux does not exist".into())
            };
        }
        other => panic!("no probe for kernel feature {other:?}"),
    };
    match r {
        Ok(()) => Status::Present,
        Err(Outcome::Missing(d)) => Status::Missing(d),
        // Root refused: not a lack of privilege but this host's kernel or
        // security policy (seen on 6.18 hosts whose live-frames test runs
        // answer EPERM to root while every other probe succeeds).
        Err(Outcome::Io(e)) if is_permission(&e) && is_root() => Status::Missing(format!(
            "{REFUSED_TO_ROOT} ({e}): this host's kernel or security policy blocks it"
        )),
        Err(Outcome::Io(e)) if is_permission(&e) => Status::Unknown(format!(
            "cannot probe: {e} (run as root or with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)"
        )),
        // Any other refusal of a well-formed request is the kernel saying
        // it does not know the map type, program type or command.
        Err(Outcome::Io(e)) => Status::Missing(format!("the kernel answered: {e}")),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The running kernel's release string.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// `(major, minor)` of a release string like `6.1.0-56-cloud-amd64`.
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

// ------------------------------------------------------------- the probes

/// Why a probe did not succeed.
enum Outcome {
    /// The kernel behaved like one without the feature (beyond an errno).
    Missing(String),
    /// A syscall failed.
    Io(io::Error),
}

impl From<io::Error> for Outcome {
    fn from(e: io::Error) -> Self {
        Outcome::Io(e)
    }
}

type Probe = std::result::Result<(), Outcome>;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
/// `offsetof(struct bpf_prog_info, verified_insns)` (Linux 5.16 uapi).
const VERIFIED_INSNS_OFFSET: u32 = 216;

/// A ring buffer's size must be a power-of-two multiple of the page size.
fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u32 } else { 4096 }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> std::result::Result<OwnedFd, Outcome> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
    };
    Ok(owned(sys_bpf(BPF_MAP_CREATE, &mut attr)?))
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Load `r0 = ret; exit` as an XDP program.
fn load_xdp(ret: i32) -> std::result::Result<OwnedFd, Outcome> {
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }
    let insns: [u64; 2] = [
        0xb7 | ((ret as u32 as u64) << 32), // BPF_ALU64 | BPF_MOV | BPF_K, r0
        0x95,                               // BPF_JMP | BPF_EXIT
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"ef_probe\0");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    Ok(owned(sys_bpf(BPF_PROG_LOAD, &mut attr)?))
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// A minimal Ethernet + IPv4 frame (64 bytes) for test runs.
fn probe_frame() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[192, 0, 2, 1]);
    f[30..34].copy_from_slice(&[192, 0, 2, 2]);
    f
}

fn probe_test_run() -> Probe {
    let prog = load_xdp(XDP_DROP)?;
    let frame = probe_frame();
    let mut attr = TestRunAttr {
        prog_fd: raw(&prog),
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    if attr.retval as i32 != XDP_DROP {
        return Err(Outcome::Missing(format!(
            "the test run returned {} instead of XDP_DROP",
            attr.retval
        )));
    }
    Ok(())
}

/// In live-frames mode the kernel reports a return value of 0 (the frames
/// went to the device, there is no single verdict), while kernels that
/// ignore the flag (5.10 does) run the program once and report XDP_DROP.
fn probe_live_frames() -> Probe {
    let prog = load_xdp(XDP_DROP)?;
    let frame = probe_frame();
    let mut attr = TestRunAttr {
        prog_fd: raw(&prog),
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_TEST_RUN, &mut attr) {
        Ok(_) if attr.retval == 0 => Ok(()),
        Ok(_) => Err(Outcome::Missing(
            "the kernel ignored BPF_F_TEST_XDP_LIVE_FRAMES and ran the program once".into(),
        )),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(Outcome::Missing(format!(
            "the kernel refused BPF_F_TEST_XDP_LIVE_FRAMES: {e}"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn probe_batch() -> Probe {
    let map = map_create(BPF_MAP_TYPE_HASH, 4, 8, 16, 0)?;
    let p = crate::kernel::sys::update(map.as_fd(), &[1u32, 2, 3], &[10u64, 20, 30]);
    match p.error {
        None if p.done == 3 => Ok(()),
        None => Err(Outcome::Missing(format!(
            "only {} of 3 elements written",
            p.done
        ))),
        Some(e) if crate::kernel::sys::unsupported(&e) => Err(Outcome::Missing(format!(
            "BPF_MAP_UPDATE_BATCH refused: {e}"
        ))),
        Some(e) => Err(e.into()),
    }
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel copies out `min(our size, its size)` of `bpf_prog_info`, so
/// the length it reports shows whether it knows the field.
fn probe_verified_insns() -> Probe {
    let prog = load_xdp(XDP_PASS)?;
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: raw(&prog),
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if attr.info_len < VERIFIED_INSNS_OFFSET + 4 {
        return Err(Outcome::Missing(format!(
            "bpf_prog_info is {} bytes here; verified_insns is at offset {VERIFIED_INSNS_OFFSET}",
            attr.info_len
        )));
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attach a pass-everything program through a bpf_link to the loopback
/// device of a private network namespace, made on a thread of its own, so
/// no interface anyone uses ever sees it. The link is closed (detached) at
/// once and the namespace disappears with the thread.
fn probe_xdp_link() -> Status {
    let r = std::thread::spawn(|| -> std::result::Result<(), Outcome> {
        // SAFETY: unshare on this thread only (CLONE_NEWNET is per thread).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(Outcome::Io(io::Error::last_os_error()));
        }
        let prog = load_xdp(XDP_PASS)?;
        let mut attr = LinkCreateAttr {
            prog_fd: raw(&prog),
            target_ifindex: 1, // loopback is ifindex 1 in every namespace
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_SKB_MODE,
        };
        let link = owned(sys_bpf(BPF_LINK_CREATE, &mut attr)?);
        drop(link);
        Ok(())
    })
    .join();
    match r {
        Ok(Ok(())) => Status::Present,
        Ok(Err(Outcome::Missing(d))) => Status::Missing(d),
        Ok(Err(Outcome::Io(e))) if is_permission(&e) => {
            // unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN, which an agent
            // running with only CAP_BPF/CAP_NET_ADMIN lacks: fall back to
            // the version, and let the attach itself report a refusal.
            let release = kernel_release();
            let guess = match parse_version(&release) {
                Some(v) if v >= (5, 9) => "so it should be there",
                Some(_) => "so it is probably missing",
                None => "which says nothing",
            };
            Status::Unknown(format!(
                "cannot probe without CAP_SYS_ADMIN ({e}); the kernel is {release}, {guess}"
            ))
        }
        Ok(Err(Outcome::Io(e))) => Status::Missing(format!("BPF_LINK_CREATE refused: {e}")),
        Err(_) => Status::Unknown("the probe thread panicked".into()),
    }
}

fn raw(fd: &OwnedFd) -> u32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("5.10.262-1"), Some((5, 10)));
        assert_eq!(parse_version("6.18.44"), Some((6, 18)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn feature_table_is_consistent() {
        let mut ids: Vec<_> = FEATURES.iter().map(|f| f.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), FEATURES.len(), "duplicate feature ids");
        for f in FEATURES {
            assert!(parse_version(f.since).is_some(), "{}: bad since", f.id);
            if !f.required_by.is_empty() {
                // Optional features may gate a tool (the bench), never the agent.
                assert!(
                    f.need == Need::Required || !f.required_by.contains(&Use::Run),
                    "{} gates `run` but is not required",
                    f.id
                );
            }
        }
    }

    /// As root on the development kernel (6.18), every feature is there.
    #[test]
    fn every_feature_present_on_this_kernel() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipping: needs root");
            return;
        }
        let report = probe_all();
        let v = parse_version(&report.kernel).expect("kernel version");
        let mut refused = Vec::new();
        for p in &report.features {
            let since = parse_version(p.feature.since).unwrap();
            // An optional feature this host's policy refuses to root
            // (live frames on some 6.18 hosts) is reported as such; a
            // required one must be there.
            let policy = matches!(&p.status, Status::Missing(d) if d.starts_with(REFUSED_TO_ROOT));
            if policy && p.feature.need != Need::Required {
                println!("{}: {:?}", p.feature.id, p.status);
                refused.push(p.feature.id);
                continue;
            }
            if v >= since && p.feature.id != "kernel-btf" {
                assert_eq!(
                    p.status,
                    Status::Present,
                    "{} (since {}) on {}",
                    p.feature.id,
                    p.feature.since,
                    report.kernel
                );
            }
        }
        for u in [
            Use::Run,
            Use::Replay,
            Use::ReplayLive,
            Use::LiveTraffic,
            Use::Events,
        ] {
            // A use that needs a refused feature is refused, naming it.
            let blocked = FEATURES
                .iter()
                .find(|f| f.required_by.contains(&u) && refused.contains(&f.id));
            match (require(u), blocked) {
                (Ok(()), None) => {}
                (Err(e), Some(f)) => assert!(e.to_string().contains(f.title), "{u:?}: {e}"),
                (Err(e), None) => panic!("{u:?}: {e}"),
                (Ok(()), Some(f)) => panic!("{u:?} allowed without {}", f.id),
            }
        }
    }
}

/// Capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// This process's effective capability set (`CapEff` of
/// `/proc/self/status`); all bits when it cannot be read, so that the
/// kernel's own refusal speaks then.
pub fn capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
        })
        .unwrap_or(u64::MAX)
}

/// The capabilities attaching and running the filter needs that `caps`
/// lacks: CAP_NET_ADMIN, and CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN,
/// which covers both on every kernel).
pub fn missing_capabilities(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut out = Vec::new();
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            out.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            out.push("CAP_PERFMON");
        }
    }
    out
}

#[cfg(test)]
mod capability_tests {
    use super::*;

    #[test]
    fn capability_sets() {
        let bit = |c: u32| 1u64 << c;
        assert!(missing_capabilities(u64::MAX).is_empty());
        assert_eq!(
            missing_capabilities(0),
            vec!["CAP_NET_ADMIN", "CAP_BPF", "CAP_PERFMON"]
        );
        // The systemd unit's set.
        assert!(
            missing_capabilities(bit(CAP_NET_ADMIN) | bit(CAP_BPF) | bit(CAP_PERFMON)).is_empty()
        );
        // Older kernels: CAP_SYS_ADMIN instead of CAP_BPF and CAP_PERFMON.
        assert!(missing_capabilities(bit(CAP_NET_ADMIN) | bit(CAP_SYS_ADMIN)).is_empty());
        assert_eq!(
            missing_capabilities(bit(CAP_BPF) | bit(CAP_NET_ADMIN)),
            vec!["CAP_PERFMON"]
        );
    }
}
