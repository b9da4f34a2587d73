//! The invariant checker: pure functions from what was observed (the
//! kernel's maps and XDP attachment, `status --json`, `/metrics`, one
//! traffic window) and what the [`Expected`] model says, to violations. No
//! I/O here, so the unit tests below feed it fake kernel states with
//! planted violations.
//!
//! The invariant after every step:
//! 1. the kernel enforces exactly the desired set: the program is attached
//!    to the interface, the pinned maps hold every expected drop entry and
//!    allowlisted net and nothing else;
//! 2. in a traffic window, no packet from a listed source passes (unless
//!    the agent reports the interface unfiltered: a gap) and no packet
//!    from an unlisted source is dropped; the kernel's per-reason counters
//!    account for every datagram (dropped = sent − arrived);
//! 3. status and metrics agree with the kernel: attached or not, entries
//!    the kernel holds, entries missing against the desired set, the
//!    desired count, the agent's liveness and pid. The surfaces issue #13
//!    asks for (`kernel_entries`, `missing_entries`, the gap counters) are
//!    looked up by name; an absent one is a `reporting-missing` violation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use edge_filter::entry::{Action, EntrySet};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use super::model::{Expected, SOURCES, source_addr};

/// The interface the soak filters.
pub const IFACE: &str = crate::netns::RECEIVER_IF;

/// Kinds of violations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// Expected entries the kernel maps do not hold.
    KernelMissing,
    /// Entries the kernel maps hold that are not expected.
    KernelExtra,
    /// The interface exists but no XDP program is attached to it.
    NotAttached,
    /// The pinned maps could not be read.
    KernelUnreadable,
    /// A packet from a listed source passed outside a reported gap.
    ListedPassed,
    /// A packet from an unlisted source was dropped.
    UnlistedDropped,
    /// The kernel's per-reason counters do not account for the window's
    /// datagrams (dropped = sent − arrived, passed = arrived).
    CountersDisagree,
    /// `status --json` disagrees with the kernel or the desired set.
    StatusDisagrees,
    /// `/metrics` disagrees with the kernel or the desired set.
    MetricsDisagree,
    /// A reporting surface issue #13 names is absent.
    ReportingMissing,
    /// `status` does not find the running agent.
    StatusAgentDown,
    /// The agent exited on its own, or did not start.
    AgentDied,
    /// The agent did not exit after SIGTERM.
    AgentStuck,
    /// The agent did not fetch a changed feed within the bound.
    AgentStalled,
    /// A second agent on the same interface was not refused.
    SecondAgentNotRefused,
    /// A second agent changed what the kernel enforces.
    SecondAgentChangedKernel,
    /// A shrink beyond `max_shrink` was applied at once.
    ShrinkNotHeld,
    /// An interface recreate was not reported as an enforcement gap.
    GapUnreported,
    /// A failed save (disk full) is not reported in status or metrics.
    PersistenceUnreported,
    /// Once the disk had room again, the agent did not save what it could
    /// not save before (a restart would then enforce older copies).
    PersistenceNotRecovered,
}

impl ViolationKind {
    /// Name in reports.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{self:?}"))
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One violation (the report adds the step and seed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Kind.
    pub kind: ViolationKind,
    /// What differed.
    pub detail: String,
}

impl Violation {
    /// A violation.
    pub fn new(kind: ViolationKind, detail: impl Into<String>) -> Violation {
        Violation {
            kind,
            detail: detail.into(),
        }
    }
}

/// What the kernel shows.
#[derive(Clone, Debug)]
pub struct KernelState {
    /// Whether the interface exists in the receiver's namespace.
    pub iface_exists: bool,
    /// The id of the XDP program attached to it (None: none).
    pub xdp_prog: Option<u32>,
    /// The pinned maps read back, or why they could not be.
    pub set: Result<EntrySet, String>,
}

impl KernelState {
    /// Whether the filter runs on the interface.
    pub fn attached(&self) -> bool {
        self.iface_exists && self.xdp_prog.is_some()
    }
}

/// The kernel's contents against the expected set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetDiff {
    /// Expected drop entries absent.
    pub missing_block: Vec<Ipv4Net>,
    /// Expected allowlisted nets absent.
    pub missing_allow: Vec<Ipv4Net>,
    /// Entries present but not expected (blocklist syntax).
    pub extra_block: Vec<String>,
    /// Allowlisted nets present but not expected.
    pub extra_allow: Vec<IpNet>,
    /// Block and monitor entries the kernel holds.
    pub kernel_entries: usize,
    /// Allowlisted nets the kernel holds.
    pub kernel_allow: usize,
}

impl SetDiff {
    /// Compare `kernel` with `exp`.
    pub fn of(exp: &Expected, kernel: &EntrySet) -> SetDiff {
        let mut drop_nets: BTreeSet<Ipv4Net> = BTreeSet::new();
        let mut extra_block = Vec::new();
        for e in &kernel.entries {
            match (e.net, e.port, e.action) {
                (IpNet::V4(n), None, Action::Drop) if exp.block.contains(&n) => {
                    drop_nets.insert(n);
                }
                _ => extra_block.push(e.to_string()),
            }
        }
        let allow: BTreeSet<IpNet> = kernel.allow.iter().copied().collect();
        SetDiff {
            missing_block: exp.block.difference(&drop_nets).copied().collect(),
            missing_allow: exp
                .allow
                .iter()
                .filter(|n| !allow.contains(&IpNet::V4(**n)))
                .copied()
                .collect(),
            extra_block,
            extra_allow: allow
                .iter()
                .filter(|n| match n {
                    IpNet::V4(v) => !exp.allow.contains(v),
                    IpNet::V6(_) => true,
                })
                .copied()
                .collect(),
            kernel_entries: kernel.entries.len(),
            kernel_allow: kernel.allow.len(),
        }
    }

    /// Expected entries and nets the kernel lacks.
    pub fn missing(&self) -> usize {
        self.missing_block.len() + self.missing_allow.len()
    }

    /// Whether the kernel holds exactly the expected set.
    pub fn exact(&self) -> bool {
        self.missing() == 0 && self.extra_block.is_empty() && self.extra_allow.is_empty()
    }
}

fn few<T: fmt::Display>(v: &[T]) -> String {
    let shown: Vec<String> = v.iter().take(5).map(|x| x.to_string()).collect();
    if v.len() > 5 {
        format!("{}, … ({} more)", shown.join(", "), v.len() - 5)
    } else {
        shown.join(", ")
    }
}

/// Invariant 1: the program is attached and the maps hold exactly `exp`.
pub fn check_kernel(exp: &Expected, k: &KernelState) -> Vec<Violation> {
    let mut v = Vec::new();
    if !k.iface_exists {
        v.push(Violation::new(
            ViolationKind::NotAttached,
            format!("interface {IFACE} does not exist"),
        ));
    } else if k.xdp_prog.is_none() {
        v.push(Violation::new(
            ViolationKind::NotAttached,
            format!("no XDP program on {IFACE} (ip link shows none)"),
        ));
    }
    match &k.set {
        Err(e) => v.push(Violation::new(ViolationKind::KernelUnreadable, e.clone())),
        Ok(set) => {
            let d = SetDiff::of(exp, set);
            if d.missing() > 0 {
                v.push(Violation::new(
                    ViolationKind::KernelMissing,
                    format!(
                        "{} of {} expected drop entries and {} of {} allowlisted nets missing from the kernel: {}{}",
                        d.missing_block.len(),
                        exp.block.len(),
                        d.missing_allow.len(),
                        exp.allow.len(),
                        few(&d.missing_block),
                        if d.missing_allow.is_empty() {
                            String::new()
                        } else {
                            format!("; allow {}", few(&d.missing_allow))
                        }
                    ),
                ));
            }
            if !d.extra_block.is_empty() || !d.extra_allow.is_empty() {
                v.push(Violation::new(
                    ViolationKind::KernelExtra,
                    format!(
                        "{} unexpected entries and {} unexpected allowlisted nets in the kernel: {}{}",
                        d.extra_block.len(),
                        d.extra_allow.len(),
                        few(&d.extra_block),
                        if d.extra_allow.is_empty() {
                            String::new()
                        } else {
                            format!("; allow {}", few(&d.extra_allow))
                        }
                    ),
                ));
            }
        }
    }
    v
}

/// One sample's labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// Samples of an OpenMetrics exposition: name → samples.
#[derive(Clone, Debug, Default)]
pub struct MetricsText(pub BTreeMap<String, Vec<Sample>>);

impl MetricsText {
    /// Parse `name{k="v",…} value` lines (comments skipped).
    pub fn parse(text: &str) -> MetricsText {
        let mut m: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, value) = match line.rfind('}') {
                Some(i) => (&line[..=i], line[i + 1..].trim()),
                None => match line.split_once(' ') {
                    Some((h, v)) => (h, v.trim()),
                    None => continue,
                },
            };
            let value = value.split_whitespace().next().unwrap_or("");
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            m.entry(name.to_string()).or_default().push((labels, value));
        }
        MetricsText(m)
    }

    /// The value of `name` whose labels include `iface` (when given).
    pub fn get(&self, name: &str, iface: Option<&str>) -> Option<f64> {
        self.0.get(name)?.iter().find_map(|(l, v)| match iface {
            Some(i) if l.get("iface").map(String::as_str) != Some(i) => None,
            _ => Some(*v),
        })
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = r.char_indices();
        let mut end = r.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            x => x,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                x => val.push(x),
            }
        }
        out.insert(k.trim().trim_start_matches(',').trim().to_string(), val);
        rest = &r[end..];
    }
    out
}

/// What the agent reports about itself.
#[derive(Clone, Debug)]
pub struct Reported {
    /// `edge-filter status --config F --json`, or why it failed.
    pub status: Result<serde_json::Value, String>,
    /// `GET /metrics`, or why it failed.
    pub metrics: Result<MetricsText, String>,
    /// The pid of the agent the harness runs.
    pub agent_pid: Option<u32>,
}

/// Metric names issue #13 asks for (besides `edge_filter_attached` and
/// `edge_filter_desired_entries`, which exist already).
pub const NEW_METRICS: [&str; 4] = [
    "edge_filter_kernel_entries",
    "edge_filter_missing_entries",
    "edge_filter_enforcement_gaps_total",
    "edge_filter_enforcement_gap_seconds_total",
];

/// Invariant 3: status and metrics agree with the kernel (`k`) and the
/// desired set (`exp`).
pub fn check_reporting(exp: &Expected, k: &KernelState, r: &Reported) -> Vec<Violation> {
    let mut v = Vec::new();
    let attached = k.attached();
    let diff = k.set.as_ref().ok().map(|s| SetDiff::of(exp, s));
    let mut absent: Vec<String> = Vec::new();
    // A count the agent reports as the kernel's: entries, or entries plus
    // allowlisted nets (either reading of "entries the kernel holds").
    let kernel_count_ok = |n: f64, d: &SetDiff| {
        n == d.kernel_entries as f64 || n == (d.kernel_entries + d.kernel_allow) as f64
    };

    match &r.status {
        Err(e) => v.push(Violation::new(
            ViolationKind::StatusDisagrees,
            format!("status --json failed: {e}"),
        )),
        Ok(s) => {
            let iface = s["interfaces"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["iface"] == IFACE));
            match iface {
                None => v.push(Violation::new(
                    ViolationKind::StatusDisagrees,
                    format!("status --json lists no interface {IFACE}"),
                )),
                Some(i) => {
                    let mut bad = Vec::new();
                    match i["attached"].as_bool() {
                        Some(a) if a != attached => bad.push(format!(
                            "attached {a} but the kernel {}",
                            if attached {
                                "runs the filter on it"
                            } else {
                                "has no XDP program on it"
                            }
                        )),
                        Some(_) => {}
                        None => absent.push("status interfaces[].attached".into()),
                    }
                    match (i["kernel_entries"].as_f64(), &diff) {
                        (None, _) => absent.push("status interfaces[].kernel_entries".into()),
                        (Some(n), Some(d)) if !kernel_count_ok(n, d) => bad.push(format!(
                            "kernel_entries {n} but the kernel holds {} entries (+{} allowlisted)",
                            d.kernel_entries, d.kernel_allow
                        )),
                        _ => {}
                    }
                    match (i["missing_entries"].as_f64(), &diff) {
                        (None, _) => absent.push("status interfaces[].missing_entries".into()),
                        (Some(n), Some(d)) if n != d.missing() as f64 => bad.push(format!(
                            "missing_entries {n} but {} desired entries are not in the kernel",
                            d.missing()
                        )),
                        _ => {}
                    }
                    if !bad.is_empty() {
                        v.push(Violation::new(
                            ViolationKind::StatusDisagrees,
                            format!("status {IFACE}: {}", bad.join("; ")),
                        ));
                    }
                }
            }
            let agent = &s["agent"];
            let up = agent["up"].as_bool();
            let pid = agent["pid"].as_u64().map(|p| p as u32);
            if up != Some(true) || pid != r.agent_pid {
                v.push(Violation::new(
                    ViolationKind::StatusAgentDown,
                    format!(
                        "status says agent state {} pid {:?} while agent pid {:?} runs ({})",
                        agent["state"],
                        pid,
                        r.agent_pid,
                        agent["detail"].as_str().unwrap_or("")
                    ),
                ));
            }
            if let Some(n) = agent["entries"].as_u64()
                && n as usize != exp.block.len()
            {
                v.push(Violation::new(
                    ViolationKind::StatusDisagrees,
                    format!(
                        "status: the agent's desired set has {n} entries, the feeds' documented merge gives {}",
                        exp.block.len()
                    ),
                ));
            }
        }
    }

    match &r.metrics {
        Err(e) => v.push(Violation::new(
            ViolationKind::MetricsDisagree,
            format!("GET /metrics failed: {e}"),
        )),
        Ok(m) => {
            let mut bad = Vec::new();
            match m.get("edge_filter_attached", Some(IFACE)) {
                None => absent.push("edge_filter_attached".into()),
                Some(a) if (a == 1.0) != attached => bad.push(format!(
                    "edge_filter_attached {a} but the kernel {}",
                    if attached {
                        "runs the filter"
                    } else {
                        "has no XDP program on the interface"
                    }
                )),
                _ => {}
            }
            match m.get("edge_filter_desired_entries", None) {
                None => absent.push("edge_filter_desired_entries".into()),
                Some(n) if n != exp.block.len() as f64 => bad.push(format!(
                    "edge_filter_desired_entries {n}, the feeds' documented merge gives {}",
                    exp.block.len()
                )),
                _ => {}
            }
            match (m.get("edge_filter_kernel_entries", Some(IFACE)), &diff) {
                (None, _) => absent.push("edge_filter_kernel_entries".into()),
                (Some(n), Some(d)) if !kernel_count_ok(n, d) => bad.push(format!(
                    "edge_filter_kernel_entries {n} but the kernel holds {} (+{} allowlisted)",
                    d.kernel_entries, d.kernel_allow
                )),
                _ => {}
            }
            match (m.get("edge_filter_missing_entries", Some(IFACE)), &diff) {
                (None, _) => absent.push("edge_filter_missing_entries".into()),
                (Some(n), Some(d)) if n != d.missing() as f64 => bad.push(format!(
                    "edge_filter_missing_entries {n} but {} desired entries are not in the kernel",
                    d.missing()
                )),
                _ => {}
            }
            for name in &NEW_METRICS[2..] {
                if m.get(name, Some(IFACE)).is_none() {
                    absent.push((*name).into());
                }
            }
            if !bad.is_empty() {
                v.push(Violation::new(
                    ViolationKind::MetricsDisagree,
                    bad.join("; "),
                ));
            }
        }
    }
    if !absent.is_empty() {
        v.push(Violation::new(
            ViolationKind::ReportingMissing,
            format!("absent: {}", absent.join(", ")),
        ));
    }
    v
}

/// One traffic window: what every source sent and what arrived.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    /// Datagrams sent per source (index: [`source_addr`]).
    pub sent: Vec<u64>,
    /// Datagrams received per source.
    pub received: Vec<u64>,
    /// Packets the kernel counted as dropped in the window (all reasons).
    pub kernel_dropped: u64,
    /// Packets the kernel counted as passed or monitored in the window.
    pub kernel_passed: u64,
    /// Receive-buffer overflows of the sink's namespace in the window (a
    /// noisy window: lost datagrams are not judged).
    pub rcvbuf_errors: u64,
    /// Whether the filter was attached (the kernel's counters only count
    /// then).
    pub attached: bool,
    /// Whether the agent reported the interface unfiltered (a gap).
    pub gap_reported: bool,
}

/// Invariant 2 over one window; `drops[i]`: source i must be dropped.
pub fn check_traffic(drops: &[bool], w: &Window) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut listed_passed = Vec::new();
    let mut unlisted_dropped = Vec::new();
    let (mut want_dropped, mut want_passed) = (0u64, 0u64);
    for (i, &drop) in drops.iter().enumerate().take(SOURCES.min(w.sent.len())) {
        let (s, r) = (w.sent[i], w.received[i]);
        if drop {
            want_dropped += s;
            if r > 0 {
                listed_passed.push(format!("{} {r}/{s}", source_addr(i)));
            }
        } else {
            want_passed += s;
            if r < s {
                unlisted_dropped.push(format!("{} {}/{s} lost", source_addr(i), s - r));
            }
        }
    }
    if !listed_passed.is_empty() && !w.gap_reported {
        v.push(Violation::new(
            ViolationKind::ListedPassed,
            format!(
                "{} listed sources got packets through{}: {}",
                listed_passed.len(),
                if w.attached {
                    ""
                } else {
                    " (no XDP program on the interface, no gap reported)"
                },
                few(&listed_passed)
            ),
        ));
    }
    if !unlisted_dropped.is_empty() && w.rcvbuf_errors == 0 {
        v.push(Violation::new(
            ViolationKind::UnlistedDropped,
            format!(
                "{} unlisted sources lost packets: {}",
                unlisted_dropped.len(),
                few(&unlisted_dropped)
            ),
        ));
    }
    // The counters must account for every datagram of the window: what
    // arrived passed, what was sent and did not arrive was dropped (by
    // whatever entries the kernel held; the expected set is judged above).
    let sent: u64 = w.sent.iter().sum();
    let received: u64 = w.received.iter().sum();
    if w.attached
        && w.rcvbuf_errors == 0
        && (w.kernel_dropped != sent - received.min(sent) || w.kernel_passed != received)
    {
        v.push(Violation::new(
            ViolationKind::CountersDisagree,
            format!(
                "kernel counted {} dropped / {} passed; {sent} sent, {received} arrived (want {want_dropped} dropped / {want_passed} passed by the desired set)",
                w.kernel_dropped, w.kernel_passed
            ),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::model::{host, inline_allow};
    use edge_filter::entry::Entry;

    fn expected() -> Expected {
        Expected {
            block: [
                host(source_addr(0)),
                host(source_addr(1)),
                "10.97.0.0/24".parse().unwrap(),
            ]
            .into_iter()
            .collect(),
            allow: inline_allow().into_iter().collect(),
        }
    }

    /// The kernel state of a correct agent for `exp`.
    fn kernel_of(exp: &Expected) -> KernelState {
        KernelState {
            iface_exists: true,
            xdp_prog: Some(7),
            set: Ok(EntrySet {
                allow: exp.allow.iter().map(|n| IpNet::V4(*n)).collect(),
                entries: exp
                    .block
                    .iter()
                    .map(|n| Entry::new(IpNet::V4(*n), None, Action::Drop))
                    .collect(),
            }),
        }
    }

    fn kinds(v: &[Violation]) -> Vec<ViolationKind> {
        v.iter().map(|x| x.kind).collect()
    }

    #[test]
    fn kernel_check_passes_exact_state_and_finds_planted_differences() {
        let exp = expected();
        assert!(check_kernel(&exp, &kernel_of(&exp)).is_empty());

        // Planted: one entry missing (a rotation that hit capacity).
        let mut k = kernel_of(&exp);
        k.set.as_mut().unwrap().entries.remove(0);
        let v = check_kernel(&exp, &k);
        assert_eq!(kinds(&v), [ViolationKind::KernelMissing]);
        assert!(v[0].detail.contains("1 of 3"), "{}", v[0].detail);

        // Planted: an extra entry (a truncated line applied) and a monitor
        // where a drop is expected.
        let mut k = kernel_of(&exp);
        let set = k.set.as_mut().unwrap();
        set.entries.push(Entry::new(
            IpNet::V4(host(source_addr(9))),
            None,
            Action::Drop,
        ));
        set.entries[0].action = Action::Monitor;
        let v = check_kernel(&exp, &k);
        assert_eq!(
            kinds(&v),
            [ViolationKind::KernelMissing, ViolationKind::KernelExtra]
        );
        assert!(v[1].detail.contains("10.99.0.10"), "{}", v[1].detail);

        // Planted: the filter gone from a recreated interface.
        let mut k = kernel_of(&exp);
        k.xdp_prog = None;
        assert_eq!(kinds(&check_kernel(&exp, &k)), [ViolationKind::NotAttached]);
        // Planted: an allowlisted net missing.
        let mut k = kernel_of(&exp);
        k.set.as_mut().unwrap().allow.clear();
        assert_eq!(
            kinds(&check_kernel(&exp, &k)),
            [ViolationKind::KernelMissing]
        );
    }

    fn status(
        attached: bool,
        kernel: usize,
        missing: usize,
        pid: u32,
        desired: usize,
    ) -> serde_json::Value {
        serde_json::json!({
            "interfaces": [{"iface": IFACE, "attached": attached, "kernel_entries": kernel, "missing_entries": missing}],
            "agent": {"state": "up", "up": true, "pid": pid, "entries": desired}
        })
    }

    fn metrics(attached: u8, kernel: usize, missing: usize, desired: usize) -> MetricsText {
        MetricsText::parse(&format!(
            "# TYPE edge_filter_attached gauge\n\
             edge_filter_attached{{iface=\"{IFACE}\"}} {attached}\n\
             edge_filter_desired_entries {desired}\n\
             edge_filter_kernel_entries{{iface=\"{IFACE}\"}} {kernel}\n\
             edge_filter_missing_entries{{iface=\"{IFACE}\"}} {missing}\n\
             edge_filter_enforcement_gaps_total{{iface=\"{IFACE}\"}} 0\n\
             edge_filter_enforcement_gap_seconds_total{{iface=\"{IFACE}\"}} 0.0\n\
             # EOF\n"
        ))
    }

    #[test]
    fn reporting_check_finds_a_status_that_lies() {
        let exp = expected();
        let k = kernel_of(&exp);
        let ok = Reported {
            status: Ok(status(true, 3, 0, 42, 3)),
            metrics: Ok(metrics(1, 3, 0, 3)),
            agent_pid: Some(42),
        };
        assert_eq!(check_reporting(&exp, &k, &ok), []);

        // Planted: the filter is gone but both surfaces say attached.
        let mut gone = k.clone();
        gone.xdp_prog = None;
        let v = check_reporting(&exp, &gone, &ok);
        assert_eq!(
            kinds(&v),
            [
                ViolationKind::StatusDisagrees,
                ViolationKind::MetricsDisagree
            ]
        );

        // Planted: the kernel lost an entry; the agent reports none missing.
        let mut lost = k.clone();
        lost.set.as_mut().unwrap().entries.pop();
        let v = check_reporting(&exp, &lost, &ok);
        assert_eq!(
            kinds(&v),
            [
                ViolationKind::StatusDisagrees,
                ViolationKind::MetricsDisagree
            ]
        );
        assert!(
            v[0].detail.contains("missing_entries 0 but 1"),
            "{}",
            v[0].detail
        );

        // Planted: the surfaces of issue #13 absent, a stale agent pid.
        let old = Reported {
            status: Ok(serde_json::json!({
                "interfaces": [{"iface": IFACE, "attached": true}],
                "agent": {"state": "down", "up": false, "pid": 41, "entries": 3}
            })),
            metrics: Ok(MetricsText::parse(&format!(
                "edge_filter_attached{{iface=\"{IFACE}\"}} 1\nedge_filter_desired_entries 3\n"
            ))),
            agent_pid: Some(42),
        };
        let v = check_reporting(&exp, &k, &old);
        assert_eq!(
            kinds(&v),
            [
                ViolationKind::StatusAgentDown,
                ViolationKind::ReportingMissing
            ]
        );
        assert!(v[1].detail.contains("edge_filter_enforcement_gaps_total"));
    }

    #[test]
    fn traffic_check_finds_leaks_and_false_drops() {
        let drops: Vec<bool> = (0..SOURCES).map(|i| i < 2).collect();
        let sent = vec![10u64; SOURCES];
        let mut received = sent.clone();
        received[0] = 0;
        received[1] = 0;
        let good = Window {
            sent: sent.clone(),
            received: received.clone(),
            kernel_dropped: 20,
            kernel_passed: 10 * (SOURCES as u64 - 2),
            rcvbuf_errors: 0,
            attached: true,
            gap_reported: false,
        };
        assert_eq!(check_traffic(&drops, &good), []);

        // Planted: a listed source leaks, an unlisted one is dropped.
        let mut bad = good.clone();
        bad.received[1] = 3;
        bad.received[5] = 9;
        // (the counters saw what the sink saw: 18 dropped)
        bad.kernel_dropped = 18;
        bad.kernel_passed += 2;
        let v = check_traffic(&drops, &bad);
        assert_eq!(
            kinds(&v),
            [ViolationKind::ListedPassed, ViolationKind::UnlistedDropped]
        );
        // Planted: the counters do not add up (a packet lost but not
        // counted as dropped).
        let mut c = good.clone();
        c.kernel_dropped = 19;
        assert_eq!(
            kinds(&check_traffic(&drops, &c)),
            [ViolationKind::CountersDisagree]
        );
        let mut c = good.clone();
        c.received[7] = 9;
        c.kernel_passed -= 1;
        c.kernel_dropped += 1;
        assert_eq!(
            kinds(&check_traffic(&drops, &c)),
            [ViolationKind::UnlistedDropped]
        );
        // A gap the agent reported excuses the leak; an overflowing
        // socket excuses the loss.
        let mut gap = bad.clone();
        gap.gap_reported = true;
        gap.attached = false;
        gap.rcvbuf_errors = 1;
        assert_eq!(check_traffic(&drops, &gap), []);
    }

    #[test]
    fn metrics_parser_reads_labels_and_values() {
        let m = MetricsText::parse(
            "edge_filter_packets_total{iface=\"ef-rcv\",reason=\"drop_addr\",verdict=\"drop\"} 12\n\
             edge_filter_syncs_total 3\n# EOF\n",
        );
        assert_eq!(
            m.get("edge_filter_packets_total", Some("ef-rcv")),
            Some(12.0)
        );
        assert_eq!(m.get("edge_filter_packets_total", Some("eth0")), None);
        assert_eq!(m.get("edge_filter_syncs_total", None), Some(3.0));
    }
}
