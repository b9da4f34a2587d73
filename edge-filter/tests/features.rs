//! Kernel feature probes and the refusals they drive.
//!
//! The development kernel has every feature, so the refusal paths are
//! exercised by making the kernel answer one `bpf(2)` command with `EINVAL`
//! through a seccomp filter installed in the child before `exec`: exactly
//! what a kernel without that command answers. The probes themselves run
//! unmodified on older kernels in `cargo xtask vm-test` (ef-vmcheck checks
//! the report against the guest's version there).

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

const BIN: &str = env!("CARGO_BIN_EXE_edge-filter");
const BPF_MAP_UPDATE_BATCH: u64 = 26;
const BPF_LINK_CREATE: u64 = 28;

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A filter that fails `bpf(cmd, ...)` with EINVAL and allows the rest.
fn deny_bpf_cmd(cmd: u64) -> BpfProgram {
    let rule = SeccompRule::new(vec![
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cmd).unwrap(),
    ])
    .unwrap();
    SeccompFilter::new(
        [(libc::SYS_bpf, vec![rule])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EINVAL as u32),
        TargetArch::x86_64,
    )
    .unwrap()
    .try_into()
    .unwrap()
}

/// Run the binary with `args`, optionally under a filter denying `cmd`.
fn run(args: &[&str], deny: Option<u64>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env("RUST_LOG", "warn");
    if let Some(cmd) = deny {
        let prog = deny_bpf_cmd(cmd);
        // SAFETY: apply_filter only calls prctl(2) and seccomp(2), which are
        // async-signal-safe; the program was built before the fork.
        unsafe {
            c.pre_exec(move || seccompiler::apply_filter(&prog).map_err(std::io::Error::other));
        }
    }
    c.output().expect("spawn edge-filter")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "features --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn status_of(report: &serde_json::Value, id: &str) -> String {
    report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no feature {id} in {report}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn features_reports_everything_present_here() {
    if !is_root() {
        println!("skipping: needs root");
        return;
    }
    let o = run(&["features", "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json(&o);
    for id in [
        "hash-map",
        "percpu-array-map",
        "xdp-program",
        "lpm-trie-map",
        "ringbuf-map",
        "xdp-test-run",
        "batch-map-ops",
        "xdp-link",
        "verified-insns",
    ] {
        assert_eq!(status_of(&r, id), "present", "{id} on {}", r["kernel"]);
    }
    // Optional, and refused to root by some hosts' kernels (6.18.44-fc-v1300
    // answers live-frames test runs with EPERM): then reported as missing,
    // with the reason, never as a privilege problem.
    let live = r["features"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["id"] == "xdp-live-frames"))
        .expect("xdp-live-frames in the report");
    let detail = live["detail"].as_str().unwrap_or("");
    assert!(
        live["status"] == "present"
            || (live["status"] == "missing"
                && detail.starts_with(edge_filter::kernel::features::REFUSED_TO_ROOT)),
        "xdp-live-frames on {}: {live}",
        r["kernel"]
    );
    let o = run(&["features"], None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("xdp-link") && out.contains("5.9+"), "{out}");
}

/// A kernel without bpf_link for XDP (before 5.9): `run` refuses before it
/// pins or attaches anything, and names the feature and the version.
#[test]
fn run_refuses_without_xdp_link() {
    if !is_root() {
        println!("skipping: needs root");
        return;
    }
    let root = format!("/sys/fs/bpf/ef-features-{}", std::process::id());
    let list = std::env::temp_dir().join(format!("ef-features-{}.txt", std::process::id()));
    std::fs::write(&list, "192.0.2.1\n").unwrap();
    let o = run(
        &[
            "run",
            "--iface",
            "ef-nonexistent0",
            "--blocklist",
            list.to_str().unwrap(),
            "--bpffs",
            &root,
        ],
        Some(BPF_LINK_CREATE),
    );
    let _ = std::fs::remove_file(&list);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "run should refuse: {err}");
    assert!(
        err.contains("edge-filter run needs bpf_link for XDP")
            && err.contains("Linux 5.9+")
            && err.contains("edge-filter features"),
        "the refusal should name the feature, its version and the command to list them:\n{err}"
    );
    // Refused before the interface lookup and before anything was pinned.
    assert!(!err.contains("does not exist"), "{err}");
    assert!(!std::path::Path::new(&root).exists(), "{root} was created");

    let o = run(&["features", "--json"], Some(BPF_LINK_CREATE));
    assert!(
        !o.status.success(),
        "features exits 1 when run would refuse"
    );
    let r = json(&o);
    assert_eq!(status_of(&r, "xdp-link"), "missing");
    assert_eq!(status_of(&r, "hash-map"), "present");
}

/// A kernel without batch map operations (before 5.6) is reported with the
/// fallback, and does not make `features` fail.
#[test]
fn missing_batch_ops_is_a_fallback() {
    if !is_root() {
        println!("skipping: needs root");
        return;
    }
    let o = run(&["features", "--json"], Some(BPF_MAP_UPDATE_BATCH));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json(&o);
    assert_eq!(status_of(&r, "batch-map-ops"), "missing");
    let o = run(&["features"], Some(BPF_MAP_UPDATE_BATCH));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("MISSING") && out.contains("one element per syscall"),
        "{out}"
    );
}
