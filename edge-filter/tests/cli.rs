//! The CLI's error paths: every failure an operator can cause is one clear
//! line on stderr and a non-zero exit, never a panic. (Being an integration
//! test of this package also makes `cargo test` build the binary, which the
//! end-to-end tests in `tests/` drive.)

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_edge-filter");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("spawn edge-filter")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ef-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The error line, checked to be a single `edge-filter: error:` line.
fn one_error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure, got {:?}", o.status);
    assert_ne!(o.status.code(), Some(101), "panicked: {}", stderr(o));
    let err = stderr(o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("edge-filter: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "want exactly one error line, got:\n{err}");
    lines[0].to_string()
}

#[test]
fn help_teaches_the_subcommands() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for sub in ["run", "stats", "detach"] {
        assert!(out.contains(sub), "--help does not mention {sub}:\n{out}");
    }
    let o = run(&["run", "--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("tcp 192.0.2.1:443") && out.contains("monitor"),
        "run --help should show the blocklist format:\n{out}"
    );
}

#[test]
fn missing_interface_is_one_line() {
    let bl = tmp("bl-iface.txt", "192.0.2.1\n");
    let o = run(&[
        "run",
        "--iface",
        "ef-no-such0",
        "--blocklist",
        bl.to_str().unwrap(),
        "--bpffs",
        "/sys/fs/bpf/ef-cli-unused",
    ]);
    let line = one_error_line(&o);
    assert!(line.contains("\"ef-no-such0\" does not exist"), "{line}");
}

#[test]
fn missing_blocklist_file_is_one_line() {
    let o = run(&[
        "run",
        "--iface",
        "lo",
        "--blocklist",
        "/nonexistent/ef-blocklist.txt",
    ]);
    let line = one_error_line(&o);
    assert!(
        line.contains("/nonexistent/ef-blocklist.txt") && line.contains("No such file"),
        "{line}"
    );
}

#[test]
fn stats_without_attachment_says_how_to_start() {
    let o = run(&["stats", "--bpffs", "/tmp/ef-cli-no-pins"]);
    let line = one_error_line(&o);
    assert!(line.contains("edge-filter run"), "{line}");
    let o = run(&["detach", "--iface", "lo", "--bpffs", "/tmp/ef-cli-no-pins"]);
    let line = one_error_line(&o);
    assert!(line.contains("no edge-filter is attached to lo"), "{line}");
}

#[test]
fn missing_privileges_name_the_capabilities() {
    if !is_root() {
        eprintln!("skipping: needs root to drop privileges with setpriv");
        return;
    }
    let bl = tmp("bl-priv.txt", "192.0.2.1\n");
    let dir = bl.parent().unwrap();
    // Let the unprivileged user read the file.
    Command::new("chmod")
        .args(["-R", "a+rX", dir.to_str().unwrap()])
        .status()
        .unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            BIN,
            "run",
            "--iface",
            "lo",
            "--blocklist",
            bl.to_str().unwrap(),
            "--bpffs",
            "/sys/fs/bpf/ef-cli-priv",
        ])
        .output()
        .expect("setpriv (util-linux) must be installed");
    // bpffs's root is world-writable here, yet the refusal comes before
    // anything is created (issue #13: `run` as a user left its directory).
    let left = std::path::Path::new("/sys/fs/bpf/ef-cli-priv").exists();
    let _ = std::fs::remove_dir("/sys/fs/bpf/ef-cli-priv");
    let line = one_error_line(&o);
    assert!(
        line.contains("edge-filter run needs CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON")
            && line.contains("nothing was changed"),
        "{line}"
    );
    assert!(!left, "the refused run created its pin directory");
}
