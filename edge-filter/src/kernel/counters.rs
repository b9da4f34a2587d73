//! Counters by reason, named for people and machines.

use edge_filter_common::{self as abi, Counter, ReasonInfo};
use serde::Serialize;

/// Stable name of a reason, e.g. `drop_addr_port`, `malformed_pass_ipv4_length`.
pub fn reason_name(reason: abi::Reason) -> String {
    match ReasonInfo::decode(reason) {
        Some(ReasonInfo::NoMatch) => "pass_no_match".into(),
        Some(ReasonInfo::Allowlisted) => "pass_allowlist".into(),
        Some(ReasonInfo::NonIp) => "pass_non_ip".into(),
        Some(ReasonInfo::Malformed { class, dropped }) => format!(
            "malformed_{}_{}",
            if dropped { "drop" } else { "pass" },
            class.name()
        ),
        Some(ReasonInfo::Entry { kind, action }) => format!(
            "{}_{}",
            if action == abi::ACTION_DROP {
                "drop"
            } else {
                "monitor"
            },
            kind.name()
        ),
        None => format!("unknown_{reason}"),
    }
}

/// One reason's totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// Stable name ([`reason_name`]).
    pub reason: String,
    /// `pass`, `drop` or `monitor`.
    pub verdict: &'static str,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Totals by verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Passed packets (monitored ones excluded).
    pub passed: u64,
    /// Dropped packets.
    pub dropped: u64,
    /// Monitored packets (passed, but matched a monitor entry).
    pub monitored: u64,
}

/// Name every counter and total them.
pub fn named(counters: &[Counter]) -> (Vec<ReasonCount>, Totals) {
    let mut t = Totals::default();
    let rows = counters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let verdict = ReasonInfo::decode(i as u32).map_or("pass", |r| r.verdict());
            match verdict {
                "drop" => t.dropped += c.packets,
                "monitor" => t.monitored += c.packets,
                _ => t.passed += c.packets,
            }
            ReasonCount {
                reason: reason_name(i as u32),
                verdict,
                packets: c.packets,
                bytes: c.bytes,
            }
        })
        .collect();
    (rows, t)
}
