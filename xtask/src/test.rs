//! `cargo xtask test`: the project's one test command.
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser as _;

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
targets), then the doc tests, then a short fault soak, then the kernel \
matrix in VMs.

  cargo test --workspace --exclude edge-filter-ebpf --all-targets
  cargo test --workspace --exclude edge-filter-ebpf --doc
  cargo xtask soak --quick --seed 1
  cargo xtask vm-test --kernel bookworm --kernel bullseye

The soak (about 3 minutes) runs the real agent through random faults \
(feed changes and failures, SIGKILL, interface recreate, a second agent, a \
full disk) and checks after every step that the kernel enforces exactly \
what it should; its seed is fixed here so that CI is repeatable (`cargo \
xtask soak` explores others). --no-soak skips it (a warning says so; \
CI=true refuses --no-soak).

The first two test this machine's own kernel. The VM step boots Debian 12's \
6.1 and Debian 11's 5.10 (the minimum supported kernel) under QEMU and runs \
the verifier load, the kernel feature probes, the differential replay and \
`edge-filter replay --expect` in each (see `cargo xtask vm-test --help`; about \
7 minutes plus a release build). It needs `cargo xtask setup` (qemu) and root; \
--vm-kernel picks other kernels, --no-vm skips it (a warning says so; CI=true \
refuses --no-vm).

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

    /// Skip the VM step (the kernel matrix under QEMU).
    #[arg(long)]
    pub no_vm: bool,

    /// Skip the short fault soak (`cargo xtask soak --quick`).
    #[arg(long)]
    pub no_soak: bool,

    /// Kernels of the VM step (as `cargo xtask vm-test --kernel`).
    /// Repeatable. [default: bookworm, bullseye]
    #[arg(long = "vm-kernel", value_name = "NAME")]
    pub vm_kernels: Vec<String>,

    /// Arguments for the test binaries: a test name filter, --nocapture,
    /// --test-threads=N, ….
    #[arg(last = true, value_name = "TEST_ARGS")]
    pub test_args: Vec<String>,
}

/// Kernels the VM step boots unless --vm-kernel says otherwise: the oldest
/// supported one and the oldest one most gateways still run.
pub const VM_KERNELS: &[&str] = &["bookworm", "bullseye"];

pub fn run(args: Args) -> Result<()> {
    // CI (CI=true) must never let the root-only tests skip unnoticed.
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let require_root = args.require_root || ci;
    if args.no_vm && ci {
        bail!("--no-vm with CI=true: CI must run the kernel matrix");
    }
    if args.no_soak && ci {
        bail!("--no-soak with CI=true: CI must run the fault soak");
    }
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
    if args.no_soak {
        eprintln!("warning: --no-soak: the fault soak (cargo xtask soak --quick) did not run");
    } else if !args.test_args.is_empty() {
        eprintln!("note: test arguments given: the fault soak is skipped");
    } else if !util::is_root() {
        eprintln!("warning: not root: the fault soak (cargo xtask soak --quick) is skipped");
    } else {
        let t = Instant::now();
        println!("test: fault soak: cargo xtask soak --quick --seed {SOAK_SEED}");
        crate::soak::run(
            SoakCli::parse_from(["soak", "--quick", "--seed", &SOAK_SEED.to_string()]).args,
        )?;
        timings.push(format!("fault soak {}", human(t.elapsed())));
    }
    if args.no_vm {
        eprintln!("warning: --no-vm: the kernel matrix (cargo xtask vm-test) did not run");
    } else if !args.test_args.is_empty() {
        eprintln!("note: test arguments given: the VM step is skipped (it runs everything)");
    } else if !util::is_root() {
        eprintln!("warning: not root: the VM step (cargo xtask vm-test) is skipped");
    } else {
        let t = Instant::now();
        let kernels: Vec<String> = if args.vm_kernels.is_empty() {
            VM_KERNELS.iter().map(|s| s.to_string()).collect()
        } else {
            args.vm_kernels.clone()
        };
        let mut argv = vec!["vm-test".to_string()];
        for k in &kernels {
            argv.push("--kernel".into());
            argv.push(k.clone());
        }
        println!("test: kernel matrix: cargo xtask {}", argv.join(" "));
        crate::vm::run(VmCli::parse_from(argv).args)?;
        timings.push(format!("kernel matrix {}", human(t.elapsed())));
    }
    println!(
        "test: passed in {} ({})",
        human(start.elapsed()),
        timings.join(", ")
    );
    Ok(())
}

/// The seed of the soak in the test suite: fixed, so a failure replays.
const SOAK_SEED: u64 = 1;

/// `soak`'s options, parsed the way its command line would be.
#[derive(clap::Parser)]
struct SoakCli {
    #[command(flatten)]
    args: crate::soak::Args,
}

/// `vm-test`'s options, parsed the way its command line would be.
#[derive(clap::Parser)]
struct VmCli {
    #[command(flatten)]
    args: crate::vm::Args,
}
