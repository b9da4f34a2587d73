//! The soak's record: steps by kind with their time, invariant checks,
//! violations by kind (and by step kind) with the first few described, as
//! a summary on stdout and a JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::check::{Violation, ViolationKind};
use super::plan::StepKind;

/// Violations of each kind kept in full in the JSON report (all are
/// counted).
const KEPT_PER_KIND: usize = 50;
/// Violations described per kind in the summary.
const SHOWN_PER_KIND: usize = 3;

/// One violation, placed.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    /// Step number (0: the agent's start).
    pub step: usize,
    /// The step's kind (`start` for step 0).
    pub step_kind: String,
    /// The step, described.
    pub step_desc: String,
    /// Seconds since the run started.
    pub at_s: f64,
    /// What.
    #[serde(flatten)]
    pub violation: Violation,
}

/// One step's line in the report.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    /// Number.
    pub step: usize,
    /// Kind.
    pub kind: String,
    /// Described.
    pub desc: String,
    /// Seconds it took (with its checks).
    pub secs: f64,
    /// Violations found after it.
    pub violations: usize,
}

/// The whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Step weights used.
    pub weights: String,
    /// The binary under test.
    pub binary: String,
    /// Why the run ended: `steps`, `duration`, `signal` or `aborted: …`.
    pub ended_by: String,
    /// Seconds the run took (setup and cleanup excluded).
    pub duration_s: f64,
    /// Steps completed (a step cut short by the deadline is not counted).
    pub steps_run: usize,
    /// Completed steps by kind.
    pub steps_by_kind: BTreeMap<String, usize>,
    /// Seconds spent in steps of each kind.
    pub step_secs_by_kind: BTreeMap<String, f64>,
    /// Invariant checks made.
    pub checks: usize,
    /// Traffic windows judged.
    pub windows: usize,
    /// Windows where the sink's socket overflowed (losses not judged).
    pub noisy_windows: usize,
    /// Datagrams sent and received over the run.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Agents started.
    pub agent_starts: usize,
    /// All violations.
    pub violations_total: usize,
    /// By kind.
    pub violations_by_kind: BTreeMap<String, usize>,
    /// Steps with at least one violation of the kind, by kind.
    pub steps_with_violation_by_kind: BTreeMap<String, usize>,
    /// By step kind, then kind.
    pub violations_by_step_kind: BTreeMap<String, BTreeMap<String, usize>>,
    /// The first violations of each kind in full.
    pub violations: Vec<Found>,
    /// Every step.
    pub steps: Vec<StepRecord>,
}

impl Report {
    /// Record a completed step (number 0: the agent's start).
    pub fn record(
        &mut self,
        number: usize,
        kind: &str,
        desc: &str,
        took: Duration,
        at: Duration,
        violations: &[Violation],
    ) {
        if number > 0 {
            self.steps_run += 1;
            *self.steps_by_kind.entry(kind.to_string()).or_default() += 1;
            *self.step_secs_by_kind.entry(kind.to_string()).or_default() += took.as_secs_f64();
        }
        self.steps.push(StepRecord {
            step: number,
            kind: kind.to_string(),
            desc: desc.to_string(),
            secs: took.as_secs_f64(),
            violations: violations.len(),
        });
        let mut kinds_here: Vec<ViolationKind> = Vec::new();
        for v in violations {
            self.violations_total += 1;
            *self.violations_by_kind.entry(v.kind.name()).or_default() += 1;
            *self
                .violations_by_step_kind
                .entry(kind.to_string())
                .or_default()
                .entry(v.kind.name())
                .or_default() += 1;
            if !kinds_here.contains(&v.kind) {
                kinds_here.push(v.kind);
                *self
                    .steps_with_violation_by_kind
                    .entry(v.kind.name())
                    .or_default() += 1;
            }
            let kept = self
                .violations
                .iter()
                .filter(|f| f.violation.kind == v.kind)
                .count();
            if kept < KEPT_PER_KIND {
                self.violations.push(Found {
                    step: number,
                    step_kind: kind.to_string(),
                    step_desc: desc.to_string(),
                    at_s: at.as_secs_f64(),
                    violation: v.clone(),
                });
            }
        }
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "soak: seed {} — {} steps in {:.0} s ({}), {} invariant checks, {} traffic windows ({} noisy), {} agent starts",
            self.seed,
            self.steps_run,
            self.duration_s,
            self.ended_by,
            self.checks,
            self.windows,
            self.noisy_windows,
            self.agent_starts
        );
        let _ = writeln!(
            s,
            "soak: datagrams sent {}, received {}",
            self.datagrams_sent, self.datagrams_received
        );
        let _ = writeln!(s, "steps by kind (count, mean seconds):");
        for k in StepKind::ALL {
            let n = self.steps_by_kind.get(k.name()).copied().unwrap_or(0);
            let secs = self.step_secs_by_kind.get(k.name()).copied().unwrap_or(0.0);
            let _ = writeln!(
                s,
                "  {:<13} {:>5}  {:>6.1}",
                k.name(),
                n,
                if n > 0 { secs / n as f64 } else { 0.0 }
            );
        }
        if self.violations_total == 0 {
            let _ = writeln!(s, "violations: 0");
            return s;
        }
        let _ = writeln!(
            s,
            "violations: {} (kind: count, steps with it; first {SHOWN_PER_KIND} described)",
            self.violations_total
        );
        for (kind, n) in &self.violations_by_kind {
            let steps = self
                .steps_with_violation_by_kind
                .get(kind)
                .copied()
                .unwrap_or(0);
            let by_step: Vec<String> = self
                .violations_by_step_kind
                .iter()
                .filter_map(|(sk, m)| m.get(kind).map(|c| format!("{sk} {c}")))
                .collect();
            let _ = writeln!(
                s,
                "  {kind}: {n} in {steps} steps (after: {})",
                by_step.join(", ")
            );
            for f in self
                .violations
                .iter()
                .filter(|f| f.violation.kind.name() == *kind)
                .take(SHOWN_PER_KIND)
            {
                let _ = writeln!(
                    s,
                    "    step {} (seed {}, {}): {}",
                    f.step, self.seed, f.step_desc, f.violation.detail
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_step_kind() {
        let mut r = Report::default();
        let v = |k| Violation::new(k, "x");
        r.record(0, "start", "start", Duration::ZERO, Duration::ZERO, &[]);
        r.record(
            1,
            "rotation",
            "rotation: …",
            Duration::from_secs(2),
            Duration::from_secs(2),
            &[
                v(ViolationKind::KernelMissing),
                v(ViolationKind::KernelMissing),
            ],
        );
        r.record(
            2,
            "hup",
            "hup",
            Duration::from_secs(1),
            Duration::from_secs(3),
            &[],
        );
        assert_eq!(r.steps_run, 2);
        assert_eq!(r.violations_total, 2);
        assert_eq!(r.violations_by_kind["kernel-missing"], 2);
        assert_eq!(r.steps_with_violation_by_kind["kernel-missing"], 1);
        assert_eq!(r.violations_by_step_kind["rotation"]["kernel-missing"], 2);
        assert!(r.summary().contains("kernel-missing: 2 in 1 steps"));
    }
}
