//! `ef-soak`: the fault soak of the edge-filter agent, run by `cargo xtask
//! soak` (see `edge_filter_tests::soak` and README "Testing").
//!
//! ```text
//! ef-soak [--seed N] [--steps N] [--duration SECS] [--quick]
//!         [--weight KIND=N]... [--output FILE] [--dry-run N]
//! ```
//!
//! Needs root (network namespaces, XDP, a tmpfs mount). Tests the
//! `edge-filter` binary next to this one (`target/<profile>/edge-filter`)
//! or `$EDGE_FILTER_BIN`. Exit status: 0 without violations, 1 with
//! violations, 2 when the run could not be made (not root, bad options, the
//! lab failed).

use std::process::ExitCode;

use clap::Parser as _;
use edge_filter_tests::soak::{self, Options, plan::Plan, plan::Weights};

fn main() -> ExitCode {
    let opts = Options::parse();
    let weights = match Weights::parse(&opts.weights) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
    });
    if let Some(n) = opts.dry_run {
        let mut plan = Plan::new(seed, weights);
        println!("seed {seed}");
        for _ in 0..n {
            println!("{}", plan.next_step().describe());
        }
        return ExitCode::SUCCESS;
    }
    if !edge_filter_tests::netns::is_root() {
        eprintln!("error: the soak needs root (network namespaces, XDP, a tmpfs mount)");
        return ExitCode::from(2);
    }
    soak::install_signal_handlers();
    let (steps, duration) = opts.limits();
    let report = soak::run(seed, weights, steps, duration, &opts);
    print!("{}", report.summary());
    if let Some(path) = &opts.output {
        let json = serde_json::to_string_pretty(&report).expect("the report serializes");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("soak: report written to {}", path.display());
    }
    println!("soak: rerun with --seed {seed}");
    if report.ended_by.starts_with("aborted") {
        eprintln!("error: the soak {}", report.ended_by);
        ExitCode::from(2)
    } else if report.violations_total > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
