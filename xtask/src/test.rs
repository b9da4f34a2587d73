//! `cargo xtask test`: the project's one test command.
use std::time::Instant;

use anyhow::{Result, bail};

use crate::util::{self, human};

/// The eBPF crate builds only for bpfel-unknown-none (through
/// `edge-filter/build.rs`, and linted by `cargo xtask check`); host builds of
/// the workspace leave it out.
pub const EBPF_PACKAGE: &str = "edge-filter-ebpf";
/// The benchmark-only XDP programs (built by `cargo xtask bench`); like
/// [`EBPF_PACKAGE`], never built for the host.
pub const BENCH_EBPF_PACKAGE: &str = "edge-filter-bench-ebpf";

const LONG_ABOUT: &str = "\
Run the whole test suite: the unit and integration tests of every crate (all \
targets), then the doc tests.

  cargo test --workspace --exclude edge-filter-ebpf --all-targets
  cargo test --workspace --exclude edge-filter-ebpf --doc

Building the tests builds the XDP program too, so run `cargo xtask setup` \
first on a new machine.

The tests that create network namespaces and attach XDP programs need root; \
as another user they skip themselves and this command warns (with \
--require-root, or CI=true as in CI, it fails instead). Each such test picks its own \
namespace names, so they run in parallel like the others.

Anything after `--` goes to the test binaries, e.g.
  cargo xtask test -- blocklist --nocapture";

#[derive(clap::Args, Debug)]
#[command(
    about = "Run all tests of the workspace, then the doc tests",
    long_about = LONG_ABOUT
)]
pub struct Args {
    /// Fail instead of warning when not running as root, so that no
    /// root-only test skips itself unnoticed.
    #[arg(long)]
    pub require_root: bool,

    /// Arguments for the test binaries: a test name filter, --nocapture,
    /// --test-threads=N, ….
    #[arg(last = true, value_name = "TEST_ARGS")]
    pub test_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    // CI (CI=true) must never let the root-only tests skip unnoticed.
    let require_root = args.require_root || std::env::var("CI").is_ok_and(|v| v == "true");
    if !util::is_root() {
        if require_root {
            bail!(
                "not running as root (--require-root or CI=true): the network namespace and XDP tests \
                 would skip themselves"
            );
        }
        eprintln!(
            "warning: not running as root: the tests that create network namespaces and \
             attach XDP programs will skip themselves; run as root for the full suite"
        );
    }
    let start = Instant::now();
    let mut timings = Vec::new();
    for (name, selector) in [("all targets", "--all-targets"), ("doc tests", "--doc")] {
        let t = Instant::now();
        let mut cmd = util::cargo();
        cmd.args([
            "test",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
            "--exclude",
            BENCH_EBPF_PACKAGE,
            selector,
        ]);
        if !args.test_args.is_empty() {
            cmd.arg("--").args(&args.test_args);
        }
        util::run(&mut cmd)?;
        timings.push(format!("{name} {}", human(t.elapsed())));
    }
    println!(
        "test: passed in {} ({})",
        human(start.elapsed()),
        timings.join(", ")
    );
    Ok(())
}
