//! Running the `edge-filter` commands in a [`Lab`]'s receiving namespace
//! and taking their output: the one way every test reads `status`, `top`,
//! `explain` and the like.

use std::process::Command;

use serde_json::Value;

use crate::netns::{Lab, run_ok};

/// The exit statuses by which `edge-filter status` reports health: ok,
/// degraded, not enforcing (see `status --help`).
pub const STATUS_HEALTH_CODES: [i32; 3] = [0, 3, 4];

/// Run `edge-filter status ...` (`cmd`); panics with both streams unless it
/// exits with one of [`STATUS_HEALTH_CODES`]; returns stdout and the code.
pub fn status_of(cmd: &mut Command) -> (String, i32) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        STATUS_HEALTH_CODES.contains(&code),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), code)
}

/// Run `cmd`; panics with both streams unless it succeeds; returns stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout).into_owned()
}

impl Lab {
    /// Run `edge-filter ARGS... --bpffs ROOT` in the receiving namespace;
    /// panics unless it succeeds; returns stdout.
    pub fn ef_ok(&self, args: &[&str]) -> String {
        stdout_of(
            self.edge_filter_cmd()
                .args(args)
                .arg("--bpffs")
                .arg(&self.bpffs),
        )
    }

    /// [`Lab::ef_ok`] with `--json`, parsed.
    pub fn ef_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ef_ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} --json: {e}:\n{text}"))
    }

    /// `edge-filter status ARGS... --bpffs ROOT` in the receiving
    /// namespace: stdout and the health exit status (0 ok, 3 degraded, 4
    /// not enforcing); panics on any other status.
    pub fn status(&self, args: &[&str]) -> (String, i32) {
        status_of(
            self.edge_filter_cmd()
                .arg("status")
                .args(args)
                .arg("--bpffs")
                .arg(&self.bpffs),
        )
    }

    /// [`Lab::status`] with `--json`, parsed.
    pub fn status_json(&self, args: &[&str]) -> (Value, i32) {
        let mut a = args.to_vec();
        a.push("--json");
        let (text, code) = self.status(&a);
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status {args:?} --json: {e}:\n{text}"));
        (v, code)
    }

    /// [`Lab::status`] without `--bpffs` (the root from `--config`).
    pub fn status_unpinned(&self, args: &[&str]) -> (String, i32) {
        status_of(self.edge_filter_cmd().arg("status").args(args))
    }

    /// Run `edge-filter ARGS...` (no `--bpffs`: for commands that take the
    /// pin root from a config, or need none) in the receiving namespace;
    /// panics unless it succeeds; returns stdout.
    pub fn ef_ok_unpinned(&self, args: &[&str]) -> String {
        stdout_of(self.edge_filter_cmd().args(args))
    }
}
