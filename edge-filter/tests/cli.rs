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

/// A private directory (mode 0755) for one check-config test, removed on
/// drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        use std::os::unix::fs::PermissionsExt;
        // Files written here must not be writable by others whatever the
        // umask the tests started with: check-config would (rightly) flag
        // them.
        // SAFETY: umask cannot fail; it only sets the process's mask.
        unsafe { libc::umask(0o022) };
        let d = std::env::temp_dir().join(format!("ef-cli-cc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `check-config ARGS` run from `/` (so that nothing resolves against the
/// test's working directory by accident).
fn check_config(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .args(args)
        .current_dir("/")
        .env("RUST_LOG", "warn")
        .output()
        .expect("spawn edge-filter")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A config in `d` with relative state_dir, bpffs and feed, plus `extra`.
fn relative_config(d: &Dir, feed_text: Option<&str>, extra: &str) -> std::path::PathBuf {
    if let Some(t) = feed_text {
        std::fs::create_dir_all(d.0.join("feeds")).unwrap();
        d.write("feeds/list.txt", t);
    }
    d.write(
        "edge-filter.toml",
        &format!(
            "state_dir = \"state\"\nbpffs = \"pins\"\n{extra}\n[[interface]]\nname = \"lo\"\n\n[[feed]]\nname = \"list\"\nsource = \"file:feeds/list.txt\"\n"
        ),
    )
}

#[test]
fn check_config_verdict_comes_last_and_only_when_valid() {
    let d = Dir::new("verdict");
    let cfg = relative_config(&d, Some("203.0.113.7\n"), "");
    let cfg_s = cfg.to_str().unwrap();
    let o = check_config(&[cfg_s]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert_eq!(
        out.lines().last(),
        Some(format!("{cfg_s}: configuration is valid").as_str()),
        "{out}"
    );
    assert_eq!(out.matches("configuration is valid").count(), 1, "{out}");
    // Relative state_dir and bpffs resolve against the config's directory
    // (run from /), like the file: feed.
    let state = d.0.join("state");
    let pins = d.0.join("pins");
    assert!(
        out.contains(&format!(
            "state_dir {}, bpffs {},",
            state.display(),
            pins.display()
        )),
        "{out}"
    );
    assert!(out.contains("1 entries parsed"), "{out}");
    assert!(
        !state.exists() && !pins.exists(),
        "check-config created paths"
    );

    // A feed that cannot be loaded: FAILED in the body, no "valid"
    // anywhere, and one error line (the verdict) listing the problem.
    std::fs::remove_file(d.0.join("feeds/list.txt")).unwrap();
    let o = check_config(&[cfg_s]);
    let out = stdout(&o);
    assert!(out.contains("FAILED: cannot read"), "{out}");
    assert!(!out.contains("valid"), "{out}");
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "edge-filter: error: {cfg_s}: configuration has 1 problem: 1 feed(s) could not be loaded: list"
        )
    );
    // The same verdict in JSON.
    let o = check_config(&[cfg_s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["valid"], false, "{v:#}");
    assert_eq!(
        v["problems"][0], "1 feed(s) could not be loaded: list",
        "{v:#}"
    );
    assert!(!o.status.success());
}

#[test]
fn check_config_safety_values() {
    let d = Dir::new("safety");
    // 0 turns the breadth check off: refused.
    let cfg = relative_config(&d, Some("203.0.113.7\n"), "[safety]\nbroadest_v4 = 0\n");
    let o = check_config(&[cfg.to_str().unwrap()]);
    let line = one_error_line(&o);
    assert!(
        line.contains("[safety] broadest_v4 = 0 turns the breadth check off")
            && line.contains("allow_broad"),
        "{line}"
    );
    // Weak but valid: warned about, then the verdict.
    let cfg = relative_config(&d, None, "[safety]\nbroadest_v4 = 4\nmax_shrink = 1.0\n");
    let o = check_config(&[cfg.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let warnings = out
        .split("\nwarnings:\n")
        .nth(1)
        .expect("a warnings section");
    assert!(
        warnings.contains("[safety] broadest_v4 = 4 lets any feed block a /4"),
        "{out}"
    );
    assert!(
        warnings.contains("[safety] max_shrink = 1 turns the shrink guard off"),
        "{out}"
    );
    assert!(
        out.trim_end()
            .ends_with(": configuration is valid, with 2 warnings above"),
        "{out}"
    );
}

#[test]
fn check_config_refuses_paths_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new("trust");
    let cfg = relative_config(&d, Some("203.0.113.7\n"), "");
    let cfg_s = cfg.to_str().unwrap();
    let state = d.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = check_config(&[cfg_s]);
    assert!(!stdout(&o).contains("valid"), "{}", stdout(&o));
    let line = one_error_line(&o);
    assert!(
        line.contains(&format!(
            "state directory {}: it is writable by group and others (mode 0777)",
            state.display()
        )) && line.contains(&format!("chmod 0700 {}", state.display())),
        "{line}"
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A configuration file others can write: `run` would refuse it.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let line = one_error_line(&check_config(&[cfg_s]));
    assert!(
        line.contains(&format!(
            "configuration file {cfg_s}: it is writable by group and others (mode 0666)"
        )),
        "{line}"
    );
    let o = run(&["run", "--config", cfg_s]);
    let line = one_error_line(&o);
    assert!(
        line.contains("configuration file") && line.contains(&format!("chmod go-w {cfg_s}")),
        "{line}"
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A feed file others can write is data: a warning, the check passes.
    let feed = d.0.join("feeds/list.txt");
    std::fs::set_permissions(&feed, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = check_config(&[cfg_s]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!(
            "feed list: feed file {}: it is writable by group and others (mode 0666)",
            feed.display()
        )),
        "{out}"
    );
}
