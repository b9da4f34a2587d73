//! Why a packet gets the verdict it gets: the logic of `edge-filter explain`.
//!
//! [`Knowledge::explain`] answers for one [`Query`]: the verdict and counter
//! reason, the deciding entry or allowlist net, and every entry that matches
//! (ranked: the first decides) or that *would* match depending on a port the
//! query leaves open. The verdict itself comes from the reference
//! classifier ([`Reference`]), the oracle the XDP program is tested against,
//! so `explain` and the kernel cannot disagree on the rules.
//!
//! [`cross_check`] compares an explanation with the kernel's own contents
//! (the same query over the entry set read back from the pinned maps) and
//! names every difference (`kernel does not hold ...`).
//!
//! Everything here is pure: no kernel, no files, no clock ([`Knowledge`]
//! is built by the caller, from files or the state directory).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use edge_filter_common::{REASON_PASS_ALLOWLIST, REASON_PASS_NO_MATCH, reason_entry};
use ipnet::IpNet;
use serde::Serialize;

use crate::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use crate::kernel::counters::reason_name;
use crate::ops::knowledge::{Assertion, Knowledge, key_text};
use crate::reference::Reference;

/// The packet to explain. Ports the query leaves open (`None`) match no
/// port entry; entries that depend on them are reported as conditional.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Query {
    /// Source address.
    pub address: IpAddr,
    /// Transport protocol; `None`: a packet without ports (ICMP and the like).
    pub proto: Option<Proto>,
    /// Source port (with `proto`).
    pub src_port: Option<u16>,
    /// Destination port (with `proto`).
    pub dst_port: Option<u16>,
}

impl Query {
    /// A packet from `address` without ports.
    pub fn addr(address: IpAddr) -> Self {
        Query {
            address,
            proto: None,
            src_port: None,
            dst_port: None,
        }
    }

    /// A `proto` packet from `address` with the given (or open) ports.
    pub fn with_ports(
        address: IpAddr,
        proto: Proto,
        src_port: Option<u16>,
        dst_port: Option<u16>,
    ) -> Self {
        Query {
            address,
            proto: Some(proto),
            src_port,
            dst_port,
        }
    }

    /// The packet's port for `side`, if the query says.
    fn port(&self, side: Side) -> Option<u16> {
        match side {
            Side::Src => self.src_port,
            Side::Dst => self.dst_port,
        }
    }

    /// `192.0.2.1`, `tcp 192.0.2.1 port 443 -> port 22`, `udp [2001:db8::1] port any -> port 53`.
    pub fn describe(&self) -> String {
        let port = |p: Option<u16>| p.map_or("any".to_string(), |p| p.to_string());
        match self.proto {
            None => format!("{} (no ports: ICMP or other)", self.address),
            Some(proto) => format!(
                "{} from {} port {} to port {}",
                proto.name(),
                self.address,
                port(self.src_port),
                port(self.dst_port)
            ),
        }
    }
}

impl Knowledge {
    /// Explain `q` against this knowledge.
    pub fn explain(&self, q: &Query) -> Explanation {
        let src = q.address;
        // Only entries and nets covering the source can ever match: index
        // just those (cheap even for a million-entry set).
        let covering: Vec<Entry> = self
            .set
            .entries
            .iter()
            .filter(|e| e.net.contains(&src))
            .copied()
            .collect();
        let allow_nets: Vec<IpNet> = self
            .set
            .allow
            .iter()
            .filter(|n| n.contains(&src))
            .copied()
            .collect();
        let reference = Reference::new(&EntrySet {
            allow: allow_nets.clone(),
            entries: covering.clone(),
        });
        // The reference needs concrete ports; an open one is given any
        // value and the entries on that side are filtered out again (they
        // match only by the chance of the value chosen).
        let ports = q
            .proto
            .map(|p| (p, q.src_port.unwrap_or(0), q.dst_port.unwrap_or(0)));
        let matching: Vec<Entry> = reference
            .matching(src, ports)
            .into_iter()
            .filter(|e| e.port.is_none_or(|pm| q.port(pm.side).is_some()))
            .collect();
        let mut conditional: Vec<Entry> = covering
            .iter()
            .filter(|e| match (e.port, q.proto) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(pm), Some(p)) => pm.proto == p && q.port(pm.side).is_none(),
            })
            .copied()
            .collect();
        conditional.sort_by_key(|e| {
            (
                std::cmp::Reverse(e.action),
                std::cmp::Reverse(e.kind()),
                std::cmp::Reverse(e.net.prefix_len()),
                e.port.map(|p| p.side),
                *e,
            )
        });
        let mut allowlist: Vec<AllowReport> = allow_nets
            .iter()
            .map(|n| AllowReport {
                net: *n,
                sources: self.allow_sources.get(n).cloned().unwrap_or_default(),
            })
            .collect();
        // Longest (deciding) first.
        allowlist.sort_by_key(|a| std::cmp::Reverse(a.net.prefix_len()));
        let allowlisted_by = reference
            .allowlisted(src)
            .and_then(|n| allowlist.iter().find(|a| a.net == n).cloned());
        let head = matching.first().copied();
        let (decision, reason) = match (&allowlisted_by, head) {
            (Some(_), _) => (Decision::Allowlisted, REASON_PASS_ALLOWLIST),
            (None, Some(e)) => (Decision::Entry, reason_entry(e.kind(), e.action.abi())),
            (None, None) => (Decision::NoMatch, REASON_PASS_NO_MATCH),
        };
        let verdict = match (decision, head) {
            (Decision::Entry, Some(e)) => e.action.name(),
            _ => "pass",
        };
        let report = |e: &Entry, deciding: bool, condition: Option<String>| EntryReport {
            entry: key_text(&e.key()),
            net: e.net,
            kind: e.kind().name(),
            proto: e.port.map(|p| p.proto),
            port: e.port.map(|p| p.port),
            side: e.port.map(|p| p.side),
            action: e.action,
            deciding,
            condition,
            provenance: self.provenance.get(&e.key()).cloned().unwrap_or_default(),
        };
        let matching: Vec<EntryReport> = matching
            .iter()
            .enumerate()
            .map(|(i, e)| report(e, i == 0 && decision == Decision::Entry, None))
            .collect();
        let conditional: Vec<EntryReport> = conditional
            .iter()
            .map(|e| report(e, false, Some(condition_text(e.port.expect("port entry")))))
            .collect();
        let deciding = matching.iter().find(|m| m.deciding).cloned();
        let mut ex = Explanation {
            query: *q,
            verdict,
            reason: reason_name(reason),
            decision,
            deciding,
            allowlisted_by,
            allowlist,
            matching,
            conditional,
            summary: String::new(),
        };
        ex.summary = summary(&ex);
        ex
    }
}

fn condition_text(pm: PortMatch) -> String {
    let side = match pm.side {
        Side::Src => "source",
        Side::Dst => "destination",
    };
    format!("if it is {} with {side} port {}", pm.proto.name(), pm.port)
}

/// How the verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The source is allowlisted: it passes whatever matches.
    Allowlisted,
    /// A matching entry decides (drop beats monitor; most specific kind).
    Entry,
    /// Nothing matches: it passes.
    NoMatch,
}

/// An allowlisted net containing the source, and who allowlists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AllowReport {
    /// The net.
    pub net: IpNet,
    /// `inline` (config `[allowlist] entries`), feed names, or `FILE:LINE`.
    pub sources: Vec<String>,
}

/// One entry behind (or possibly behind) the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryReport {
    /// The entry's key in blocklist syntax (without the action).
    pub entry: String,
    /// Its address or prefix.
    pub net: IpNet,
    /// `addr`, `prefix`, `addr_port` or `prefix_port`.
    pub kind: &'static str,
    /// Protocol of a port entry.
    pub proto: Option<Proto>,
    /// Port of a port entry.
    pub port: Option<u16>,
    /// Which packet port a port entry matches.
    pub side: Option<Side>,
    /// The entry's action (the strongest its sources assert).
    pub action: Action,
    /// Whether this entry decides the verdict.
    pub deciding: bool,
    /// For conditional entries: what the packet would need.
    pub condition: Option<String>,
    /// Who asserts it.
    pub provenance: Vec<Assertion>,
}

/// The answer for one query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The packet.
    pub query: Query,
    /// `pass`, `drop` or `monitor`.
    pub verdict: &'static str,
    /// The counter the kernel counts it under (`drop_addr`, `pass_allowlist`, ...).
    pub reason: String,
    /// How the verdict was reached.
    pub decision: Decision,
    /// The deciding entry ([`Decision::Entry`]).
    pub deciding: Option<EntryReport>,
    /// The deciding (longest) allowlist net ([`Decision::Allowlisted`]).
    pub allowlisted_by: Option<AllowReport>,
    /// Every allowlist net containing the source, longest first.
    pub allowlist: Vec<AllowReport>,
    /// Every entry matching the packet, ranked: drop before monitor, then
    /// the most specific kind, then the longest prefix; the first decides
    /// unless the source is allowlisted.
    pub matching: Vec<EntryReport>,
    /// Port entries covering the source that match or not depending on a
    /// port (or protocol) the query leaves open.
    pub conditional: Vec<EntryReport>,
    /// One line for people.
    pub summary: String,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn summary(ex: &Explanation) -> String {
    let src = ex.query.address;
    let mut s = match ex.decision {
        Decision::Allowlisted => {
            let a = ex.allowlisted_by.as_ref().expect("allowlisted");
            let mut s = format!(
                "PASS ({}): {src} is allowlisted by {} ({})",
                ex.reason,
                a.net,
                if a.sources.is_empty() {
                    "source unknown".to_string()
                } else {
                    a.sources.join(", ")
                }
            );
            if !ex.matching.is_empty() {
                s.push_str(&format!(
                    "; the allowlist beats the {} that would otherwise apply (first: {} {})",
                    plural(ex.matching.len(), "matching entry", "matching entries"),
                    ex.matching[0].action.name(),
                    ex.matching[0].entry
                ));
            }
            s
        }
        Decision::Entry => {
            let d = ex.deciding.as_ref().expect("deciding entry");
            let mut s = format!(
                "{} ({}): decided by {} ({}, {})",
                ex.verdict.to_uppercase(),
                ex.reason,
                d.entry,
                d.kind,
                d.action.name()
            );
            if !d.provenance.is_empty() {
                let who: Vec<String> = d.provenance.iter().map(Assertion::describe).collect();
                s.push_str(&format!(" from {}", who.join(", ")));
            }
            if ex.matching.len() > 1 {
                let n = ex.matching.len() - 1;
                s.push_str(&format!(
                    "; {n} more matching {}",
                    if n == 1 { "entry" } else { "entries" }
                ));
            }
            s
        }
        Decision::NoMatch => format!("PASS ({}): no entry matches {src}", ex.reason),
    };
    if !ex.conditional.is_empty() {
        let strongest = &ex.conditional[0];
        s.push_str(&format!(
            "; {} on ports the query leaves open (strongest: {} {} {})",
            plural(ex.conditional.len(), "entry depends", "entries depend"),
            strongest.action.name(),
            strongest.entry,
            strongest.condition.as_deref().unwrap_or_default()
        ));
    }
    s
}

/// The kernel's answer for the same query, and every difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelCheck {
    /// The interface whose maps were read.
    pub iface: String,
    /// The kernel's verdict.
    pub verdict: &'static str,
    /// The kernel's counter reason.
    pub reason: String,
    /// The entry deciding in the kernel.
    pub deciding: Option<String>,
    /// The allowlist net deciding in the kernel.
    pub allowlisted_by: Option<IpNet>,
    /// Whether the kernel holds every entry and allowlist net behind the
    /// explanation, nothing else relevant, and reaches the same verdict.
    pub agrees: bool,
    /// Every difference, one sentence each (`kernel does not hold ...`).
    pub mismatches: Vec<String>,
}

/// Compare `ex` (from [`Knowledge::explain`]) with what the kernel maps of
/// `iface` hold (`kernel`, read back from the pins) for the same query.
pub fn cross_check(ex: &Explanation, kernel: &EntrySet, iface: &str) -> KernelCheck {
    let k = Knowledge::from_entry_set(kernel).explain(&ex.query);
    let mut mismatches = Vec::new();
    let want: BTreeMap<&str, (Action, bool)> = ex
        .matching
        .iter()
        .chain(&ex.conditional)
        .map(|e| (e.entry.as_str(), (e.action, e.deciding)))
        .collect();
    let have: BTreeMap<&str, Action> = k
        .matching
        .iter()
        .chain(&k.conditional)
        .map(|e| (e.entry.as_str(), e.action))
        .collect();
    for (entry, (action, deciding)) in &want {
        let what = if *deciding {
            "the deciding entry"
        } else {
            "the entry"
        };
        match have.get(entry) {
            None => mismatches.push(format!(
                "kernel does not hold {what} {entry} ({})",
                action.name()
            )),
            Some(a) if a != action => mismatches.push(format!(
                "kernel holds {what} {entry} as {}, not {}",
                a.name(),
                action.name()
            )),
            Some(_) => {}
        }
    }
    for (entry, action) in &have {
        if !want.contains_key(entry) {
            mismatches.push(format!(
                "kernel holds {entry} ({}), which the given lists do not",
                action.name()
            ));
        }
    }
    let want_allow: BTreeSet<IpNet> = ex.allowlist.iter().map(|a| a.net).collect();
    let have_allow: BTreeSet<IpNet> = k.allowlist.iter().map(|a| a.net).collect();
    for n in want_allow.difference(&have_allow) {
        let what = if ex.allowlisted_by.as_ref().is_some_and(|a| a.net == *n) {
            "the deciding allowlist net"
        } else {
            "the allowlist net"
        };
        mismatches.push(format!("kernel does not hold {what} {n}"));
    }
    for n in have_allow.difference(&want_allow) {
        mismatches.push(format!(
            "kernel allowlists {n}, which the given lists do not"
        ));
    }
    let k_deciding = k.deciding.as_ref().map(|d| d.entry.clone());
    let ex_deciding = ex.deciding.as_ref().map(|d| d.entry.clone());
    if k.reason != ex.reason || k_deciding != ex_deciding {
        let by = |d: &Option<String>, a: &Option<AllowReport>| match (d, a) {
            (Some(e), _) => format!(" by {e}"),
            (None, Some(a)) => format!(" by allowlist net {}", a.net),
            _ => String::new(),
        };
        mismatches.push(format!(
            "kernel verdict differs: {}{} in the kernel, {}{} expected",
            k.reason,
            by(&k_deciding, &k.allowlisted_by),
            ex.reason,
            by(&ex_deciding, &ex.allowlisted_by)
        ));
    }
    KernelCheck {
        iface: iface.to_string(),
        verdict: k.verdict,
        reason: k.reason,
        deciding: k_deciding,
        allowlisted_by: k.allowlisted_by.map(|a| a.net),
        agrees: mismatches.is_empty(),
        mismatches,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use time::OffsetDateTime;
    use time::macros::datetime;

    use super::*;
    use crate::intel::config::Config;
    use crate::intel::desired::{DesiredState, FeedSnapshot, merge};
    use crate::intel::feeds::FeedEntry;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn files(block: &str, allow: Option<&str>) -> Knowledge {
        Knowledge::from_files(("bl.txt", block), allow.map(|a| ("al.txt", a)))
    }

    const BLOCK: &str = "\
# test blocklist
192.0.2.0/24 monitor
192.0.2.11
tcp 192.0.2.11:443
tcp 192.0.2.12:22 dst
udp 192.0.2.13:53
192.0.2.11/32 monitor   # same key as line 3, weaker
2001:db8:bad::/48
";

    #[test]
    fn deciding_entry_is_drop_then_most_specific() {
        let k = files(BLOCK, None);
        // TCP from 192.0.2.11:443: addr_port drop beats addr drop beats prefix monitor.
        let ex = k.explain(&Query::with_ports(
            ip("192.0.2.11"),
            Proto::Tcp,
            Some(443),
            Some(80),
        ));
        assert_eq!(ex.verdict, "drop");
        assert_eq!(ex.reason, "drop_addr_port");
        assert_eq!(ex.decision, Decision::Entry);
        let entries: Vec<&str> = ex.matching.iter().map(|e| e.entry.as_str()).collect();
        assert_eq!(
            entries,
            ["tcp 192.0.2.11:443", "192.0.2.11", "192.0.2.0/24"]
        );
        assert!(ex.matching[0].deciding && !ex.matching[1].deciding);
        assert_eq!(ex.deciding.as_ref().unwrap().entry, "tcp 192.0.2.11:443");
        // The exact address is asserted twice (drop on line 3, monitor on
        // line 7): the strongest action, both sources.
        let addr = &ex.matching[1];
        assert_eq!(addr.action, Action::Drop);
        let locs: Vec<_> = addr
            .provenance
            .iter()
            .map(|p| (p.location.clone().unwrap(), p.action))
            .collect();
        assert_eq!(
            locs,
            [
                ("bl.txt:3".to_string(), Action::Drop),
                ("bl.txt:7".to_string(), Action::Monitor)
            ]
        );
        assert!(ex.conditional.is_empty());
        assert!(
            ex.summary
                .starts_with("DROP (drop_addr_port): decided by tcp 192.0.2.11:443")
        );
    }

    #[test]
    fn drop_beats_a_more_specific_monitor() {
        let k = files("192.0.2.0/24\n192.0.2.5 monitor\n", None);
        let ex = k.explain(&Query::addr(ip("192.0.2.5")));
        assert_eq!(ex.reason, "drop_prefix");
        assert_eq!(ex.deciding.unwrap().entry, "192.0.2.0/24");
        assert_eq!(ex.matching.len(), 2);
    }

    #[test]
    fn monitor_only() {
        let k = files(BLOCK, None);
        let ex = k.explain(&Query::addr(ip("192.0.2.200")));
        assert_eq!(
            (ex.verdict, ex.reason.as_str()),
            ("monitor", "monitor_prefix")
        );
        assert_eq!(ex.matching.len(), 1);
    }

    #[test]
    fn open_ports_make_port_entries_conditional() {
        let k = files(BLOCK, None);
        // No destination port given: the `dst` entry is conditional.
        let q = Query::with_ports(ip("192.0.2.12"), Proto::Tcp, Some(40000), None);
        let ex = k.explain(&q);
        assert_eq!(ex.reason, "monitor_prefix");
        assert_eq!(ex.conditional.len(), 1);
        assert_eq!(ex.conditional[0].entry, "tcp 192.0.2.12:22 dst");
        assert_eq!(
            ex.conditional[0].condition.as_deref(),
            Some("if it is tcp with destination port 22")
        );
        assert!(
            ex.summary.contains("; 1 entry depends on ports"),
            "{}",
            ex.summary
        );
        // With the destination port it decides.
        let ex = k.explain(&Query::with_ports(
            ip("192.0.2.12"),
            Proto::Tcp,
            Some(40000),
            Some(22),
        ));
        assert_eq!(ex.reason, "drop_addr_port");
        assert!(ex.conditional.is_empty());
        // Port 0 given explicitly is a real port, not "open".
        let ex = k.explain(&Query::with_ports(
            ip("192.0.2.12"),
            Proto::Tcp,
            Some(0),
            Some(0),
        ));
        assert_eq!(ex.reason, "monitor_prefix");
        assert!(ex.conditional.is_empty());
        // No protocol: every port entry of the address is conditional; a
        // UDP query does not list TCP entries.
        let ex = k.explain(&Query::addr(ip("192.0.2.11")));
        assert_eq!(ex.reason, "drop_addr");
        assert_eq!(ex.conditional.len(), 1);
        let ex = k.explain(&Query::with_ports(ip("192.0.2.11"), Proto::Udp, None, None));
        assert!(ex.conditional.is_empty());
        // An open destination port never matches a dst entry by accident
        // (the reference is asked with port 0).
        let k = files("tcp 192.0.2.12:0 dst\n", None);
        let ex = k.explain(&Query::with_ports(
            ip("192.0.2.12"),
            Proto::Tcp,
            Some(1),
            None,
        ));
        assert_eq!(ex.decision, Decision::NoMatch);
        assert_eq!(ex.conditional.len(), 1);
    }

    #[test]
    fn allowlisted_names_net_and_sources() {
        let k = files(BLOCK, Some("192.0.2.0/28\n192.0.2.11  # ops\n"));
        let ex = k.explain(&Query::addr(ip("192.0.2.11")));
        assert_eq!((ex.verdict, ex.reason.as_str()), ("pass", "pass_allowlist"));
        assert_eq!(ex.decision, Decision::Allowlisted);
        let by = ex.allowlisted_by.clone().unwrap();
        assert_eq!(by.net.to_string(), "192.0.2.11/32");
        assert_eq!(by.sources, ["al.txt:2"]);
        assert_eq!(ex.allowlist.len(), 2);
        assert_eq!(ex.allowlist[1].sources, ["al.txt:1"]);
        // The entries still match and are listed, none deciding.
        assert_eq!(ex.matching.len(), 2);
        assert!(ex.matching.iter().all(|m| !m.deciding));
        assert!(ex.deciding.is_none());
        assert!(
            ex.summary
                .contains("allowlisted by 192.0.2.11/32 (al.txt:2)")
        );
    }

    #[test]
    fn no_match() {
        let k = files(BLOCK, None);
        let ex = k.explain(&Query::addr(ip("198.51.100.1")));
        assert_eq!(ex.decision, Decision::NoMatch);
        assert_eq!((ex.verdict, ex.reason.as_str()), ("pass", "pass_no_match"));
        assert!(ex.matching.is_empty() && ex.conditional.is_empty());
        assert_eq!(
            ex.summary,
            "PASS (pass_no_match): no entry matches 198.51.100.1"
        );
        // IPv6 entries never match IPv4 sources and vice versa.
        let ex = k.explain(&Query::addr(ip("2001:db8:bad::1")));
        assert_eq!(ex.reason, "drop_prefix");
        let ex = k.explain(&Query::addr(ip("2001:db8:bae::1")));
        assert_eq!(ex.decision, Decision::NoMatch);
    }

    #[test]
    fn agrees_with_the_reference_classifier_on_random_queries() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let mut text = String::new();
        for _ in 0..300 {
            let a = format!("10.0.{}.{}", rng.random_range(0..4), rng.random_range(0..8));
            let len = [8, 16, 24, 30, 32][rng.random_range(0..5)];
            let net = format!("{a}/{len}");
            let action = if rng.random_bool(0.3) { " monitor" } else { "" };
            let line = match rng.random_range(0..3) {
                0 => format!("{net}{action}"),
                1 => format!("tcp {net}:{}{action}", rng.random_range(1..4)),
                _ => format!("udp {net}:{} dst{action}", rng.random_range(1..4)),
            };
            text.push_str(&line);
            text.push('\n');
        }
        let allow = "10.0.3.0/24\n10.0.1.7\n";
        let k = files(&text, Some(allow));
        let reference = Reference::new(&k.set);
        for _ in 0..2000 {
            let src = ip(&format!(
                "10.0.{}.{}",
                rng.random_range(0..5),
                rng.random_range(0..9)
            ));
            let proto = if rng.random_bool(0.5) {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            let (sp, dp) = (rng.random_range(0..4), rng.random_range(0..4));
            let q = Query::with_ports(src, proto, Some(sp), Some(dp));
            let ex = k.explain(&q);
            let r = reference.decide(&packet(src, proto, sp, dp));
            assert_eq!(ex.reason, reason_name(r.reason), "{q:?}");
            assert_eq!(
                ex.deciding.as_ref().map(|d| d.entry.clone()),
                r.entry.map(|e| key_text(&e.key())),
                "{q:?}"
            );
            assert_eq!(ex.allowlisted_by.map(|a| a.net), r.allow, "{q:?}");
            // Every matching entry really matches; every entry that matches
            // is listed.
            let listed: BTreeSet<String> = ex.matching.iter().map(|m| m.entry.clone()).collect();
            let all: BTreeSet<String> = k
                .set
                .entries
                .iter()
                .filter(|e| e.matches(src, Some((proto, sp, dp))))
                .map(|e| key_text(&e.key()))
                .collect();
            assert_eq!(listed, all, "{q:?}");
        }
    }

    fn packet(src: IpAddr, proto: Proto, sp: u16, dp: u16) -> crate::reference::PacketInfo {
        crate::reference::PacketInfo {
            src,
            dst: ip("192.0.2.1"),
            proto: proto.number(),
            ports: Some((sp, dp)),
            vlan_tags: 0,
            non_first_fragment: false,
        }
    }

    fn config(text: &str) -> Config {
        Config::from_str_named(&format!("[[interface]]\nname = \"eth0\"\n{text}"), "t")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const NOW: OffsetDateTime = datetime!(2025-06-01 12:00 UTC);

    fn fe(text: &str, f: impl FnOnce(&mut FeedEntry)) -> FeedEntry {
        let mut e = FeedEntry::new(crate::intel::blocklist::parse_entry(text).unwrap());
        f(&mut e);
        e
    }

    fn desired() -> DesiredState {
        let cfg = config(
            "[allowlist]\nentries = [\"198.51.100.0/24\"]\nfeeds = [\"partners\"]\n\
             [[feed]]\nname = \"soc\"\nsource = \"file:/f/soc\"\n\
             [[feed]]\nname = \"drop-list\"\nsource = \"file:/f/drop\"\n\
             [[feed]]\nname = \"partners\"\nsource = \"file:/f/p\"\nrole = \"allow\"\n",
        );
        let soc = FeedSnapshot {
            feed: "soc".into(),
            entries: std::sync::Arc::new(crate::intel::feed_entries::FeedEntries::from(vec![
                fe("192.0.2.20", |e| {
                    e.indicator = Some("SOC-20".into());
                    e.confidence = Some(70);
                    e.description = Some("scanner".into());
                    e.expires = Some(datetime!(2025-07-01 00:00 UTC));
                }),
                fe("198.51.100.7", |e| e.indicator = Some("SOC-7".into())),
            ])),
            asserted_at: NOW,
        };
        let drop = FeedSnapshot {
            feed: "drop-list".into(),
            entries: std::sync::Arc::new(crate::intel::feed_entries::FeedEntries::from(vec![
                fe("192.0.2.20/32", |e| e.indicator = Some("SBL1".into())),
                fe("192.0.2.0/24 monitor", |_| {}),
            ])),
            asserted_at: NOW,
        };
        let partners = FeedSnapshot {
            feed: "partners".into(),
            entries: std::sync::Arc::new(crate::intel::feed_entries::FeedEntries::from(vec![
                fe("203.0.113.0/24", |_| {}),
                fe("198.51.100.0/25", |_| {}),
            ])),
            asserted_at: NOW,
        };
        merge(&cfg, &[soc, drop, partners], NOW)
    }

    #[test]
    fn config_provenance_names_every_feed_and_indicator() {
        let k = Knowledge::from_desired(&desired());
        let ex = k.explain(&Query::addr(ip("192.0.2.20")));
        assert_eq!(ex.reason, "drop_addr");
        let d = ex.deciding.clone().unwrap();
        assert_eq!(d.entry, "192.0.2.20");
        let who: Vec<(Option<String>, Option<String>)> = d
            .provenance
            .iter()
            .map(|p| (p.feed.clone(), p.indicator.clone()))
            .collect();
        assert!(who.contains(&(Some("soc".into()), Some("SOC-20".into()))));
        assert!(who.contains(&(Some("drop-list".into()), Some("SBL1".into()))));
        let soc = d
            .provenance
            .iter()
            .find(|p| p.feed.as_deref() == Some("soc"))
            .unwrap();
        assert_eq!(soc.confidence, Some(70));
        assert_eq!(soc.description.as_deref(), Some("scanner"));
        assert_eq!(soc.expires, Some(datetime!(2025-07-01 00:00 UTC)));
        // The prefix monitor entry is listed second.
        assert_eq!(ex.matching[1].entry, "192.0.2.0/24");
        assert_eq!(
            ex.matching[1].provenance[0].feed.as_deref(),
            Some("drop-list")
        );
        assert!(
            ex.summary.contains("feed soc (indicator SOC-20)"),
            "{}",
            ex.summary
        );
        let json = serde_json::to_value(&ex).unwrap();
        assert_eq!(
            json["deciding"]["provenance"][0]["expires"],
            "2025-07-01T00:00:00Z"
        );
        assert_eq!(json["decision"], "entry");
    }

    #[test]
    fn config_allowlist_sources_inline_and_feed() {
        let k = Knowledge::from_desired(&desired());
        // 198.51.100.7: inline /24 and partners' /25 both contain it; soc
        // blocks it.
        let ex = k.explain(&Query::addr(ip("198.51.100.7")));
        assert_eq!(ex.decision, Decision::Allowlisted);
        let by = ex.allowlisted_by.unwrap();
        assert_eq!(by.net.to_string(), "198.51.100.0/25");
        assert_eq!(by.sources, ["partners"]);
        assert_eq!(ex.allowlist[1].sources, ["inline"]);
        assert_eq!(
            ex.matching[0].provenance[0].indicator.as_deref(),
            Some("SOC-7")
        );
        // The feed-only allowlisted net.
        let ex = k.explain(&Query::addr(ip("203.0.113.9")));
        assert_eq!(ex.allowlisted_by.unwrap().sources, ["partners"]);
    }

    #[test]
    fn cross_check_agrees_with_itself_and_names_differences() {
        let k = Knowledge::from_desired(&desired());
        let q = Query::addr(ip("192.0.2.20"));
        let ex = k.explain(&q);
        let c = cross_check(&ex, &k.set, "eth1");
        assert!(c.agrees, "{:?}", c.mismatches);
        assert_eq!(c.reason, "drop_addr");
        // The kernel lacks the deciding entry.
        let mut missing = k.set.clone();
        missing
            .entries
            .retain(|e| e.net.to_string() != "192.0.2.20/32");
        let c = cross_check(&ex, &missing, "eth1");
        assert!(!c.agrees);
        assert!(
            c.mismatches
                .contains(&"kernel does not hold the deciding entry 192.0.2.20 (drop)".to_string()),
            "{:?}",
            c.mismatches
        );
        assert!(
            c.mismatches.iter().any(|m| m.starts_with(
                "kernel verdict differs: monitor_prefix by 192.0.2.0/24 in the kernel, drop_addr by 192.0.2.20 expected"
            )),
            "{:?}",
            c.mismatches
        );
        // The kernel holds the entry with a weaker action.
        let mut weaker = k.set.clone();
        for e in &mut weaker.entries {
            if e.net.to_string() == "192.0.2.20/32" {
                e.action = Action::Monitor;
            }
        }
        let c = cross_check(&ex, &weaker, "eth1");
        assert!(
            c.mismatches.contains(
                &"kernel holds the deciding entry 192.0.2.20 as monitor, not drop".to_string()
            ),
            "{:?}",
            c.mismatches
        );
        // An extra entry in the kernel.
        let mut extra = k.set.clone();
        extra
            .entries
            .push(crate::intel::blocklist::parse_entry("tcp 192.0.2.20:443").unwrap());
        let c = cross_check(&ex, &extra, "eth1");
        assert_eq!(
            c.mismatches,
            ["kernel holds tcp 192.0.2.20:443 (drop), which the given lists do not"]
        );
        // A missing allowlist net.
        let ex = k.explain(&Query::addr(ip("203.0.113.9")));
        let mut no_allow = k.set.clone();
        no_allow.allow.retain(|n| n.to_string() != "203.0.113.0/24");
        let c = cross_check(&ex, &no_allow, "eth1");
        assert!(
            c.mismatches.contains(
                &"kernel does not hold the deciding allowlist net 203.0.113.0/24".to_string()
            ),
            "{:?}",
            c.mismatches
        );
        assert!(c.mismatches.iter().any(|m| m.contains("kernel verdict differs: pass_no_match in the kernel, pass_allowlist by allowlist net 203.0.113.0/24 expected")), "{:?}", c.mismatches);
    }

    #[test]
    fn from_files_skips_bad_lines_and_keeps_line_numbers() {
        let k = files("\u{feff}192.0.2.1\nnot an address\n\n192.0.2.2 # c\n", None);
        assert_eq!(k.set.entries.len(), 2);
        let ex = k.explain(&Query::addr(IpAddr::from_str("192.0.2.2").unwrap()));
        assert_eq!(
            ex.deciding.unwrap().provenance[0].location.as_deref(),
            Some("bl.txt:4")
        );
        let ex = k.explain(&Query::addr(ip("192.0.2.1")));
        assert_eq!(
            ex.deciding.unwrap().provenance[0].location.as_deref(),
            Some("bl.txt:1")
        );
    }
}
