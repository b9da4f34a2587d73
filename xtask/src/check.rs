//! `cargo xtask check`: formatting and lints, as CI runs them.
use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{
    test::{BENCH_EBPF_PACKAGE, EBPF_PACKAGE},
    util::{self, human},
};

const LONG_ABOUT: &str = "\
Check formatting and lints the way CI does; fails on any finding.

  cargo fmt --all -- --check
  cargo clippy --workspace --exclude edge-filter-ebpf --exclude edge-filter-bench-ebpf \\
      --all-targets -- -D warnings
  cargo +nightly clippy --package edge-filter-ebpf --package edge-filter-bench-ebpf \\
      --target bpfel-unknown-none \\
      -Z build-std=core --release -- -D warnings

The host clippy builds the XDP program through edge-filter's build script, and \
the last command lints the XDP program for the target it runs on, so this \
needs what `cargo xtask setup` installs. All three run even when one fails, \
so one run shows every finding. Fix formatting with `cargo fmt --all`.";

#[derive(clap::Args, Debug)]
#[command(
    about = "Check formatting and lints: rustfmt, clippy on host and eBPF",
    long_about = LONG_ABOUT
)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    let start = Instant::now();
    let mut fmt = util::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    let mut clippy = util::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--exclude",
        BENCH_EBPF_PACKAGE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    let mut ebpf_clippy = util::nightly_cargo();
    ebpf_clippy.args([
        "clippy",
        "--package",
        EBPF_PACKAGE,
        "--package",
        BENCH_EBPF_PACKAGE,
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    let checks: [(&str, Command); 3] = [
        ("rustfmt", fmt),
        ("clippy", clippy),
        ("clippy (eBPF, bpfel-unknown-none)", ebpf_clippy),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in checks {
        if let Err(e) = util::run(&mut cmd) {
            eprintln!("check: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("check failed: {}", failed.join(", "));
    }
    println!("check: clean in {}", human(start.elapsed()));
    Ok(())
}
