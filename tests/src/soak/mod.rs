//! The fault soak of issue #13 (`cargo xtask soak`, binary `ef-soak`).
//!
//! A seeded random sequence of faults against the real `edge-filter` agent
//! (`run --config`) in a network-namespace lab, with continuous UDP
//! traffic from listed and unlisted sources, and the invariant checked
//! after every step:
//!
//! - the kernel enforces exactly the desired set, computed here from what
//!   the feeds serve and the documented rules ([`model`]);
//! - no listed packet passes outside a gap the agent reported, no unlisted
//!   packet is dropped, and the kernel's counters agree ([`check`]);
//! - status and metrics agree with the kernel.
//!
//! Modules: [`plan`] draws the steps (deterministic for a seed), [`model`]
//! is the expected state, [`check`] the pure invariant checker, [`traffic`]
//! the sender and sink, [`rig`] the lab and the execution of each step,
//! [`report`] the summary and JSON.

pub mod check;
pub mod model;
pub mod plan;
pub mod report;
pub mod rig;
pub mod traffic;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use plan::{Plan, Weights};
use report::Report;
use rig::{Rig, Stopper, Timing};

/// `ef-soak`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "ef-soak",
    about = "Fault soak of the edge-filter agent: seeded faults, traffic, and the invariant after every step (needs root)"
)]
pub struct Options {
    /// Seed of the step sequence (printed; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many steps [default: 1000; 100 with --quick].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Stop after this many seconds, even in the middle of a step
    /// [default: 3600; 180 with --quick].
    #[arg(long)]
    pub duration: Option<u64>,
    /// The CI run: at most 100 steps or 180 seconds (unless --steps or
    /// --duration say otherwise).
    #[arg(long)]
    pub quick: bool,
    /// Weight of a step kind, KIND=N (repeatable; 0 disables a kind).
    /// Kinds: feed-change, rotation, shrink, garbage, truncated,
    /// feed-error, kill, hup, term, recreate, second-agent, disk-full.
    #[arg(long = "weight", value_name = "KIND=N")]
    pub weights: Vec<String>,
    /// Bound on the kernel converging after a step, seconds.
    #[arg(long, default_value_t = 6.0)]
    pub settle: f64,
    /// Length of each judged traffic window, milliseconds.
    #[arg(long, default_value_t = 400)]
    pub window_ms: u64,
    /// Datagrams per second from each of the 48 sources.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Write the JSON report here (and every agent's output next to it,
    /// FILE with the extension `agents.log`).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the plan's first N steps and exit (no lab, no root needed).
    #[arg(long, value_name = "N")]
    pub dry_run: Option<usize>,
}

impl Options {
    /// Steps and duration, after `--quick`.
    pub fn limits(&self) -> (usize, Duration) {
        let steps = self.steps.unwrap_or(if self.quick { 100 } else { 1000 });
        let secs = self.duration.unwrap_or(if self.quick { 180 } else { 3600 });
        (steps, Duration::from_secs(secs))
    }
}

/// Set by SIGINT/SIGTERM: the run stops and cleans up.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Stop (and clean up) on SIGINT and SIGTERM instead of dying.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Run the soak: `steps` steps or until `duration` passes (the deadline
/// counts from the first step; setup is extra).
pub fn run(
    seed: u64,
    weights: Weights,
    steps: usize,
    duration: Duration,
    opts: &Options,
) -> Report {
    let mut report = Report {
        seed,
        weights: weights.describe(),
        binary: crate::netns::edge_filter_bin().display().to_string(),
        ..Report::default()
    };
    let mut plan = Plan::new(seed, weights);
    let timing = Timing {
        settle: Duration::from_secs_f64(opts.settle),
        window: Duration::from_millis(opts.window_ms),
        rate: opts.rate,
    };
    println!(
        "soak: seed {seed}, up to {steps} steps or {} s; building the lab",
        duration.as_secs()
    );
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let log = opts.output.as_ref().map(|o| o.with_extension("agents.log"));
        let mut rig = Rig::create(plan.model(), timing, log.as_deref());
        println!(
            "soak: lab {} ready, config {}",
            rig.lab.tag,
            rig.config().display()
        );
        let start = Instant::now();
        let stop = Stopper {
            deadline: start + duration,
            flag: &STOP,
        };
        let ended = drive(&mut rig, &mut plan, &stop, steps, start, &mut report);
        report.duration_s = start.elapsed().as_secs_f64();
        let (sent, received) = rig.traffic_totals();
        report.datagrams_sent = sent;
        report.datagrams_received = received;
        report.agent_starts = rig.agent_starts;
        println!("soak: cleaning up");
        drop(rig);
        ended
    }));
    report.ended_by = match outcome {
        Ok(e) => e,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            format!("aborted: {msg}")
        }
    };
    report
}

fn drive(
    rig: &mut Rig,
    plan: &mut Plan,
    stop: &Stopper,
    steps: usize,
    start: Instant,
    report: &mut Report,
) -> String {
    let ended = |stop: &Stopper| {
        if STOP.load(Ordering::SeqCst) {
            "signal".to_string()
        } else if stop.stopped() {
            "duration".to_string()
        } else {
            "steps".to_string()
        }
    };
    // Step 0: the agent starts with every feed's initial copy.
    let t = Instant::now();
    let exp = plan.model().expected();
    let first = (|| -> rig::Res<Vec<check::Violation>> {
        let mut v = rig.start_agent(stop)?;
        let mut out = rig.verify(stop, &exp, rig::REFRESH * 3)?;
        v.append(&mut out.violations);
        report.checks += out.checks;
        report.windows += out.windows;
        Ok(v)
    })();
    let Ok(v) = first else {
        return ended(stop);
    };
    print_step(
        0,
        "start: agent attached with every feed's initial copy",
        t.elapsed(),
        &v,
    );
    report.record(0, "start", "start", t.elapsed(), start.elapsed(), &v);
    for _ in 0..steps {
        if stop.stopped() {
            break;
        }
        let t = Instant::now();
        let Ok(mut v) = rig.ensure_agent(stop) else {
            break;
        };
        let before = plan.model().clone();
        let step = plan.next_step();
        let desc = step.describe();
        let res = rig.run_step(stop, &step, &before, plan.model());
        let Ok(mut out) = res else {
            println!(
                "step {:>4}: {desc}: cut short by the {}",
                step.number,
                ended(stop)
            );
            break;
        };
        v.append(&mut out.violations);
        report.checks += out.checks;
        report.windows += out.windows;
        report.noisy_windows += out.noisy_windows;
        print_step(step.number, &desc, t.elapsed(), &v);
        report.record(
            step.number,
            step.kind.name(),
            &desc,
            t.elapsed(),
            start.elapsed(),
            &v,
        );
    }
    ended(stop)
}

fn print_step(n: usize, desc: &str, took: Duration, v: &[check::Violation]) {
    if v.is_empty() {
        println!("step {n:>4}: {desc} ({:.1} s): ok", took.as_secs_f64());
    } else {
        println!(
            "step {n:>4}: {desc} ({:.1} s): {} violations",
            took.as_secs_f64(),
            v.len()
        );
        for x in v {
            println!("           {}: {}", x.kind, x.detail);
        }
    }
}
