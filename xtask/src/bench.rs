//! `cargo xtask bench`: runs the benchmarks and writes `docs/bench/REPORT.md`.
//!
//! The measuring is done by the `ef-bench` binary of the `edge-filter-tests`
//! package (xtask must not depend on the edge-filter crate: `cargo xtask
//! setup` runs before the eBPF toolchain exists). Each report section is one
//! [`Section`]: a variant, an entry in [`SECTIONS`] with the `ef-bench`
//! arguments that print its Markdown, and nothing else to change here. The
//! report is a machine header followed by the sections in [`SECTIONS`] order.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::util::{self, human, workspace_root};

/// The package and binary that measure.
const PACKAGE: &str = "edge-filter-tests";
const BIN: &str = "ef-bench";

/// Where the report goes, relative to the workspace root.
const REPORT_DIR: &str = "docs/bench";
const REPORT_FILE: &str = "REPORT.md";

/// One section of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// Agent: full sync and 1% delta of 1M /32 + 100k prefixes, batch vs
    /// per-element, peak RSS.
    Sync,
    /// XDP program in the kernel (BPF_PROG_TEST_RUN): ns/packet against
    /// bare drop, parse-only and single lookups; writes the plot.
    Datapath,
    /// Live frames on a veth pair: pps dropped by XDP_DROP, edge-filter,
    /// nftables and iptables+ipset.
    Live,
    /// Kernel map memory per entry at 1M entries against the formulas,
    /// and the old layout against v2 at 1K/100K/1M.
    Memory,
    /// The real agent process with one HTTP feed of 100k and 1M entries
    /// (`--agent-sizes` for others, e.g. 10M): RSS per entry, peak, CPU of
    /// refreshes, last-known-good bytes, start from it.
    Agent,
}

/// How a section is produced: `ef-bench <subcommand> --rounds N
/// --json-out docs/bench/<json>` prints its Markdown on stdout.
struct SectionSpec {
    section: Section,
    subcommand: &'static str,
    /// Machine-readable figures, next to the report.
    json: &'static str,
}

/// Every section, in report order. A new section is a [`Section`] variant,
/// an entry here and an `ef-bench` subcommand.
const SECTIONS: &[SectionSpec] = &[
    SectionSpec {
        section: Section::Sync,
        subcommand: "sync",
        json: "sync.json",
    },
    SectionSpec {
        section: Section::Datapath,
        subcommand: "datapath",
        json: "datapath.json",
    },
    SectionSpec {
        section: Section::Live,
        subcommand: "live",
        json: "live.json",
    },
    SectionSpec {
        section: Section::Memory,
        subcommand: "memory",
        json: "memory.json",
    },
    SectionSpec {
        section: Section::Agent,
        subcommand: "agent",
        json: "agent.json",
    },
];

/// The plot the datapath section draws, next to the report.
const PLOT_FILE: &str = "datapath.svg";

/// Tools of the live section and their Debian packages (installed by
/// `cargo xtask setup`).
const LIVE_TOOLS: [(&str, &str); 4] = [
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("ipset", "ipset"),
    ("ethtool", "ethtool"),
];

const LONG_ABOUT: &str = "\
Run the benchmarks and write docs/bench/REPORT.md (also printed): the machine \
and kernel it ran on, then one section per benchmark.

  cargo build --release -p edge-filter-tests --bin ef-bench
  target/release/ef-bench <section> --rounds N --json-out docs/bench/<section>.json

Sections (--only):
  sync      the agent: full sync of 1M IPv4 /32 + 100k prefixes, 1% delta, peak RSS
  datapath  the XDP program in the kernel (BPF_PROG_TEST_RUN behind a source
            rewriter): ns/packet against bare XDP_DROP, parse-only and single
            lookups, 1K..1M entries, IPv4/IPv6, plain/VLAN, with and without
            per-entry stats; then today's layout against the v2 classifier
            (docs/datapath-v2.md) and the one-load baseline over the edge,
            flood and worst mixes at 1K, 1M and all; draws
            docs/bench/datapath.svg
  live      a live-frames XDP generator into a veth pair: pps dropped by
            XDP_DROP, edge-filter (old layout and v2, native), nftables set,
            iptables raw + ipset, each with the same 1M-address set, flood and
            worst mixes (needs nftables, iptables, ipset, ethtool:
            `sudo -E cargo xtask setup`)
  memory    kernel map memory (fdinfo memlock) per entry at 1M entries against
            each map type's formula; old layout against v2 at 1K, 100K, 1M
  agent     the real agent (release `edge-filter run`) in a private netns
            with one HTTP feed of N /32 + N/10 prefixes, N = 100k and 1M
            (--agent-sizes 100000,1000000,10000000 adds 10M): steady and
            peak RSS per entry, CPU of an unchanged and a 1% refresh against
            the first sync, last-known-good bytes per entry, start from it
            with the feed down (at most 3 rounds: each is a whole agent life)

The datapath and live sections also build bench-only eBPF objects (bench-ebpf, \
and edge-filter with --features no-entry-stats) with the nightly toolchain, as \
edge-filter/build.rs does. --quick runs smaller sets and fewer cases (a smoke \
run: combine with --rounds 3).

The sync section times a full sync into empty maps (batch and per-element \
paths), a 1% churn delta on top of it, the read-back of the full maps, and \
the agent's peak RSS. Targets: full sync <= 1.0 s, delta <= 3% of it.

Every figure is the median of N rounds run interleaved with its baseline in \
the same run (this machine is noisy); targets are reported, never asserted. \
Needs root (it loads BPF programs and maps). Close other heavy work first: \
the load average at the start is recorded in the report.";

#[derive(clap::Args, Debug)]
#[command(
    about = "Run the benchmarks and write docs/bench/REPORT.md (needs root)",
    long_about = LONG_ABOUT
)]
pub struct Args {
    /// Rounds per measurement (medians over these).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub rounds: usize,

    /// Run only these sections (comma-separated); the report then holds
    /// only them.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
    pub only: Vec<Section>,

    /// Smaller sets and fewer cases in the datapath, live and memory
    /// sections (a smoke run; the sync section is unchanged).
    #[arg(long)]
    pub quick: bool,

    /// Feed sizes of the agent section (IPv4 /32s, each plus a tenth in
    /// prefixes), comma-separated; default 100000,1000000.
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    pub agent_sizes: Vec<usize>,

    /// Write the report here instead of docs/bench/REPORT.md (the JSON
    /// figures still go to docs/bench).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the benchmarks load BPF programs and maps: run as root \
             (e.g. `sudo -E cargo xtask bench`)"
        );
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let start = Instant::now();
    let root = workspace_root();
    let dir = root.join(REPORT_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let header = machine_header(&args)?;
    let wanted = |s: Section| args.only.is_empty() || args.only.contains(&s);
    if wanted(Section::Live) {
        let missing: Vec<&str> = LIVE_TOOLS
            .iter()
            .filter(|(t, _)| util::find_on_path(t).is_none())
            .map(|(_, p)| *p)
            .collect();
        if !missing.is_empty() {
            bail!(
                "the live section needs the Debian packages {}: run \
                 `sudo -E cargo xtask setup` (or skip it with --only)",
                missing.join(", ")
            );
        }
    }
    let objects = if wanted(Section::Datapath) || wanted(Section::Live) || wanted(Section::Memory) {
        Some(crate::bench_build::build(&target_dir(&root))?)
    } else {
        None
    };

    let mut build = util::cargo();
    build.args(["build", "--release", "-p", PACKAGE, "--bin", BIN]);
    util::run(&mut build)?;
    if wanted(Section::Agent) {
        // The section runs the agent users run, next to ef-bench.
        let mut agent = util::cargo();
        agent.args([
            "build",
            "--release",
            "-p",
            "edge-filter",
            "--bin",
            "edge-filter",
        ]);
        util::run(&mut agent)?;
    }
    let exe = target_dir(&root).join("release").join(BIN);
    if !exe.is_file() {
        bail!("{} was not built", exe.display());
    }

    let mut report = header;
    for spec in SECTIONS {
        if !args.only.is_empty() && !args.only.contains(&spec.section) {
            continue;
        }
        let t = Instant::now();
        let mut extra: Vec<std::ffi::OsString> = Vec::new();
        if spec.section == Section::Agent {
            if args.quick {
                extra.push("--quick".into());
            }
            if !args.agent_sizes.is_empty() {
                let list: Vec<String> = args.agent_sizes.iter().map(|n| n.to_string()).collect();
                extra.extend(["--sizes".into(), list.join(",").into()]);
            }
        } else if spec.section != Section::Sync {
            if args.quick {
                extra.push("--quick".into());
            }
            if let Some(o) = &objects {
                extra.extend(["--bench-object".into(), o.bench.clone().into()]);
                extra.extend(["--nostats-object".into(), o.nostats.clone().into()]);
            }
            if spec.section == Section::Datapath {
                extra.extend(["--svg-out".into(), dir.join(PLOT_FILE).into()]);
            }
        }
        let md = run_section(&exe, spec, args.rounds, &dir.join(spec.json), &extra)?;
        report.push('\n');
        report.push_str(md.trim_end());
        report.push('\n');
        eprintln!(
            "bench: section {} done in {}",
            spec.subcommand,
            human(t.elapsed())
        );
    }
    let out = args.output.unwrap_or_else(|| dir.join(REPORT_FILE));
    fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    print!("{report}");
    println!(
        "\nbench: report written to {} in {}",
        out.display(),
        human(start.elapsed())
    );
    Ok(())
}

/// Runs one section's `ef-bench` subcommand; its progress goes to the
/// terminal, its Markdown (stdout) is returned.
fn run_section(
    exe: &Path,
    spec: &SectionSpec,
    rounds: usize,
    json: &Path,
    extra: &[std::ffi::OsString],
) -> Result<String> {
    let mut cmd = Command::new(exe);
    cmd.arg(spec.subcommand)
        .args(extra)
        .args(["--rounds", &rounds.to_string()])
        .arg("--json-out")
        .arg(json)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let shown = util::display(&cmd);
    eprintln!("$ {shown}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` or `<workspace>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

/// The report's title and the machine it ran on.
fn machine_header(args: &Args) -> Result<String> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_string();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("unknown".to_string(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let load = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let date = command_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]));
    let commit = command_line(
        Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(workspace_root()),
    );
    let mut rerun = String::from("sudo -E cargo xtask bench");
    if args.rounds != 10 {
        rerun.push_str(&format!(" --rounds {}", args.rounds));
    }
    if args.quick {
        rerun.push_str(" --quick");
    }
    if !args.only.is_empty() {
        let names: Vec<String> = args
            .only
            .iter()
            .filter_map(|s| s.to_possible_value().map(|v| v.get_name().to_string()))
            .collect();
        rerun.push_str(&format!(" --only {}", names.join(",")));
    }
    Ok(format!(
        "# edge-filter benchmark report\n\n\
         | | |\n|---|---|\n\
         | Date | {date} |\n\
         | Kernel | {kernel} |\n\
         | CPU | {cpu} |\n\
         | CPUs (nproc) | {nproc} |\n\
         | Memory | {mem_gib} |\n\
         | Load average at start | {load} |\n\
         | Commit | {commit} |\n\n\
         Reproduce with `{rerun}`. Medians of {} rounds; every measurement and \
         its baseline run interleaved in the same run. Targets are reported, \
         never asserted.\n",
        args.rounds
    ))
}

/// The first line of a small command's stdout, or `unknown`.
fn command_line(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string())
}
