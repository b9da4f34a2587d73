//! `cargo xtask soak`: the fault soak of the agent (issue #13).
//!
//! Builds the `edge-filter` binary and the `ef-soak` harness (package
//! `edge-filter-tests`) in one profile and runs the harness, which tests
//! the binary next to it. The harness does the work; see
//! `tests/src/soak/mod.rs`.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::util::{self, human, workspace_root};

const LONG_ABOUT: &str = "\
Fault soak of the edge-filter agent: a seeded random sequence of faults \
against the real binary run as the config agent (`run --config`) in a \
network-namespace lab, with continuous UDP traffic from 48 listed and \
unlisted sources, and the invariant checked after every step.

Step kinds (--weight KIND=N; 0 disables one): feed-change, rotation (a feed \
near the addr_v4 capacity replaced by a same-size different set), shrink \
(beyond max_shrink: held, then applied after hold_refreshes or force-feed), \
garbage (a 200 with an HTML page or unparsable lines), truncated (a \
close-delimited body cut inside a line), feed-error (HTTP 500, a reply \
slower than the timeout, a deleted file), kill (SIGKILL, sometimes during a \
rotation, and restart), hup, term (SIGTERM and restart), recreate (the \
interface deleted and recreated with the same name), second-agent (a second \
`run` on the interface: must be refused), disk-full (the state directory's \
tmpfs filled during a feed change).

After every step: the kernel's pinned maps hold exactly the set computed \
from what the feeds serve and the documented rules, and the program is \
attached; in a traffic window no listed source gets through (outside a gap \
the agent reports) and no unlisted one loses a datagram, and the kernel's \
counters account for every datagram; `status --json` and /metrics agree \
with the kernel (attached, kernel_entries, missing_entries, the desired \
count, the agent's pid, the enforcement-gap counters).

Prints the seed (the same seed gives the same steps), steps by kind, checks \
and violations by kind with the first few described; writes a JSON report \
(--output, default target/soak/report.json) and every agent's output next \
to it (report.agents.log). Exits non-zero when there are violations. Stops \
at --duration even in the middle of a step, and cleans up (namespaces, \
pins, the tmpfs) also on Ctrl-C. Needs root.

  cargo xtask soak                  1000 steps or 1 hour
  cargo xtask soak --quick          the CI run: 100 steps or 3 minutes
  cargo xtask soak --seed 42 --steps 200 --weight recreate=20";

#[derive(clap::Args, Debug)]
#[command(
    about = "Fault soak of the agent: seeded faults, traffic, the invariant after every step (needs root)",
    long_about = LONG_ABOUT
)]
pub struct Args {
    /// Seed of the step sequence [default: from the clock; printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many steps [default: 1000; 100 with --quick].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Stop after this many seconds [default: 3600; 180 with --quick].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// The CI run: 100 steps or 3 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Weight of a step kind, KIND=N (repeatable).
    #[arg(long = "weight", value_name = "KIND=N")]
    pub weights: Vec<String>,
    /// Test a release build (default: debug).
    #[arg(long)]
    pub release: bool,
    /// The JSON report [default: target/soak/report.json].
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// More options for ef-soak (`--settle SECS`, `--window-ms N`,
    /// `--rate N`; see `ef-soak --help`).
    #[arg(last = true, value_name = "EF_SOAK_ARGS")]
    pub extra: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the soak creates network namespaces, attaches XDP programs and mounts a tmpfs: \
             run as root (e.g. `sudo -E cargo xtask soak`)"
        );
    }
    let start = Instant::now();
    let root = workspace_root();
    let mut build = util::cargo();
    build.arg("build");
    if args.release {
        build.arg("--release");
    }
    build.args([
        "-p",
        "edge-filter",
        "-p",
        "edge-filter-tests",
        "--bin",
        "edge-filter",
        "--bin",
        "ef-soak",
    ]);
    util::run(&mut build)?;
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    };
    let exe = target
        .join(if args.release { "release" } else { "debug" })
        .join("ef-soak");
    let output = args
        .output
        .unwrap_or_else(|| target.join("soak").join("report.json"));
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut cmd = Command::new(&exe);
    if let Some(s) = args.seed {
        cmd.args(["--seed", &s.to_string()]);
    }
    if let Some(n) = args.steps {
        cmd.args(["--steps", &n.to_string()]);
    }
    if let Some(d) = args.duration {
        cmd.args(["--duration", &d.to_string()]);
    }
    if args.quick {
        cmd.arg("--quick");
    }
    for w in &args.weights {
        cmd.args(["--weight", w]);
    }
    cmd.arg("--output").arg(&output).args(&args.extra);
    let shown = util::display(&cmd);
    eprintln!("$ {shown}");
    let status = cmd.current_dir(&root).status()?;
    println!("soak: finished in {}", human(start.elapsed()));
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => bail!("the soak found violations (report: {})", output.display()),
        _ => bail!("`{shown}` failed ({status})"),
    }
}
