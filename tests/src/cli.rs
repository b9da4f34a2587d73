//! Running the `edge-filter` commands in a [`Lab`]'s receiving namespace
//! and taking their output: the one way every test reads `status`, `top`,
//! `explain` and the like.

use std::process::Command;

use serde_json::Value;

use crate::netns::{Lab, run_ok};

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

    /// Run `edge-filter ARGS...` (no `--bpffs`: for commands that take the
    /// pin root from a config, or need none) in the receiving namespace;
    /// panics unless it succeeds; returns stdout.
    pub fn ef_ok_unpinned(&self, args: &[&str]) -> String {
        stdout_of(self.edge_filter_cmd().args(args))
    }
}
