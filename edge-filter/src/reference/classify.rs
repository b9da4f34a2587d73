//! The "Decision" section of `docs/semantics.md`.
//!
//! The kernel program answers with one longest-prefix lookup per trie over
//! *flattened* nodes; this oracle deliberately does not. It collects every
//! matching entry (spec step 2) and ranks them, so the verdict is the head of
//! a list anyone can print and check by eye ([`Reference::matching`]).
//!
//! Indexing: every entry is stored under its normalised [`EntryKey`] (prefix
//! plus optional proto/side/port), and for each address family we keep the
//! prefix lengths that occur. A packet from `S` is matched by truncating `S`
//! to each of those lengths and looking up at most three keys per length (no
//! port, `(proto, src, sport)`, `(proto, dst, dport)`). That finds exactly the
//! entries `e` with `e.net.contains(S)` and a matching port qualifier, in at
//! most 3 × 129 hash lookups, whatever the set size. Full-length prefixes are
//! the exact addresses; they need no separate map.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use edge_filter_common::{
    REASON_PASS_ALLOWLIST, REASON_PASS_NO_MATCH, REASON_PASS_NON_IP, Reason, ReasonInfo,
    reason_entry, reason_malformed,
};
use ipnet::IpNet;
use serde::Serialize;

use super::parse::{PacketInfo, Parsed, parse};
use crate::entry::{Action, Entry, EntryKey, EntrySet, PortMatch, Proto, Side};

/// The verdict on one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The counter index (`REASON_*`), which also encodes pass/drop/monitor.
    pub reason: Reason,
    /// The parsed packet; `None` for non-IP and malformed frames.
    pub info: Option<PacketInfo>,
    /// The deciding entry: one with the deciding action and the reported
    /// kind (see [`Reference::matching`] for which one when several qualify).
    pub entry: Option<Entry>,
    /// The allowlist net that matched (the longest one).
    pub allow: Option<IpNet>,
}

impl Verdict {
    /// Whether the frame is dropped (`XDP_DROP`).
    pub fn is_drop(&self) -> bool {
        ReasonInfo::decode(self.reason).is_some_and(ReasonInfo::is_drop)
    }

    /// A verdict that depends on the parse alone.
    fn bare(reason: Reason) -> Self {
        Verdict {
            reason,
            info: None,
            entry: None,
            allow: None,
        }
    }
}

/// Actions present under one [`EntryKey`]: duplicates of a key merge, and a
/// key may carry both actions (both are matches; drop then wins).
#[derive(Clone, Copy, Debug, Default)]
struct Actions {
    monitor: bool,
    drop: bool,
}

/// Prefix lengths present in one address family, longest first.
#[derive(Clone, Debug, Default)]
struct Lengths {
    v4: Vec<u8>,
    v6: Vec<u8>,
}

impl Lengths {
    /// Record the length of `net`.
    fn add(&mut self, net: &IpNet) {
        let list = match net {
            IpNet::V4(_) => &mut self.v4,
            IpNet::V6(_) => &mut self.v6,
        };
        if !list.contains(&net.prefix_len()) {
            list.push(net.prefix_len());
        }
    }

    /// Sort longest first (call once after all `add`s).
    fn finish(&mut self) {
        self.v4.sort_unstable_by(|a, b| b.cmp(a));
        self.v6.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// The lengths to try for `src`, longest first.
    fn for_addr(&self, src: &IpAddr) -> &[u8] {
        match src {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        }
    }
}

/// `src` truncated to `len` bits. `len` always comes from an existing net of
/// the same family, so it is in range.
fn net_of(src: IpAddr, len: u8) -> IpNet {
    IpNet::new(src, len)
        .expect("prefix length taken from a net of the same family")
        .trunc()
}

/// The reference classifier over an indexed [`EntrySet`].
#[derive(Clone, Debug, Default)]
pub struct Reference {
    /// Allowlist nets, normalised.
    allow: HashSet<IpNet>,
    /// Prefix lengths occurring in `allow`.
    allow_lengths: Lengths,
    /// Entries by normalised key.
    entries: HashMap<EntryKey, Actions>,
    /// Prefix lengths occurring in `entries`.
    entry_lengths: Lengths,
}

impl Reference {
    /// Index `set`. Nets are normalised again here (host bits cleared), so
    /// the spec's "host bits are ignored" holds even for hand-built entries.
    pub fn new(set: &EntrySet) -> Self {
        let mut r = Reference::default();
        for net in &set.allow {
            let net = net.trunc();
            r.allow_lengths.add(&net);
            r.allow.insert(net);
        }
        for e in &set.entries {
            let key = EntryKey {
                net: e.net.trunc(),
                port: e.port,
            };
            r.entry_lengths.add(&key.net);
            let slot = r.entries.entry(key).or_default();
            match e.action {
                Action::Drop => slot.drop = true,
                Action::Monitor => slot.monitor = true,
            }
        }
        r.allow_lengths.finish();
        r.entry_lengths.finish();
        r
    }

    /// Classify one Ethernet frame. `malformed_drop` is the
    /// `CONFIG_MALFORMED_DROP` setting; it only affects malformed frames.
    pub fn classify(&self, frame: &[u8], malformed_drop: bool) -> Verdict {
        match parse(frame) {
            Parsed::NonIp { .. } => Verdict::bare(REASON_PASS_NON_IP),
            Parsed::Malformed(class) => Verdict::bare(reason_malformed(class, malformed_drop)),
            Parsed::Ip(info) => self.decide(&info),
        }
    }

    /// The decision for a parsed IP packet (spec "Decision", steps 1 to 4).
    pub fn decide(&self, info: &PacketInfo) -> Verdict {
        let mut v = Verdict::bare(REASON_PASS_NO_MATCH);
        v.info = Some(*info);
        // 1. Allowlist first: it beats every entry.
        if let Some(net) = self.allowlisted(info.src) {
            v.reason = REASON_PASS_ALLOWLIST;
            v.allow = Some(net);
            return v;
        }
        // 2.-4. The head of the ranking has the deciding action (drop if any
        // match drops) and, among those, the most specific kind.
        if let Some(&head) = self.matching(info.src, info.transport()).first() {
            v.reason = reason_entry(head.kind(), head.action.abi());
            v.entry = Some(head);
        }
        v
    }

    /// The longest allowlist net containing `src`, if any.
    pub fn allowlisted(&self, src: IpAddr) -> Option<IpNet> {
        self.allow_lengths
            .for_addr(&src)
            .iter()
            .map(|&len| net_of(src, len))
            .find(|net| self.allow.contains(net))
    }

    /// All entries that match a packet from `src` with the given transport
    /// (`None` when the packet has no ports), deduplicated and ranked so that
    /// the first one decides the verdict:
    ///
    /// 1. drop before monitor (any drop match makes drop the deciding action);
    /// 2. more specific kind first (`addr_port > prefix_port > addr > prefix`);
    /// 3. longer prefix first, then side `src` before `dst`. The spec leaves
    ///    open *which* entry of the deciding action and kind is reported; these
    ///    two keys make the choice total and deterministic (the net is then
    ///    fixed by its length, and proto and port by the packet and side).
    ///
    /// The allowlist is not consulted here (see [`Reference::allowlisted`]).
    pub fn matching(&self, src: IpAddr, ports: Option<(Proto, u16, u16)>) -> Vec<Entry> {
        let mut out = Vec::new();
        for &len in self.entry_lengths.for_addr(&src) {
            let net = net_of(src, len);
            let mut qualifiers = vec![None];
            if let Some((proto, sport, dport)) = ports {
                qualifiers.push(Some(PortMatch {
                    proto,
                    port: sport,
                    side: Side::Src,
                }));
                qualifiers.push(Some(PortMatch {
                    proto,
                    port: dport,
                    side: Side::Dst,
                }));
            }
            for port in qualifiers {
                if let Some(actions) = self.entries.get(&EntryKey { net, port }) {
                    if actions.drop {
                        out.push(Entry::new(net, port, Action::Drop));
                    }
                    if actions.monitor {
                        out.push(Entry::new(net, port, Action::Monitor));
                    }
                }
            }
        }
        out.sort_by_key(|e| {
            (
                Reverse(e.action),
                Reverse(e.kind()),
                Reverse(e.net.prefix_len()),
                e.port.map(|p| p.side),
                *e,
            )
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use edge_filter_common::{
        EntryKind, MalformedClass, REASON_DROP_BASE, REASON_MALFORMED_DROP_BASE,
        REASON_MALFORMED_PASS_BASE, REASON_MONITOR_BASE,
    };
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::reference::testframes::*;

    const S: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn e(s: &str, action: Action) -> Entry {
        Entry::new(net(s), None, action)
    }

    fn ep(s: &str, proto: Proto, port: u16, side: Side, action: Action) -> Entry {
        Entry::new(net(s), Some(PortMatch { proto, port, side }), action)
    }

    fn set(allow: &[&str], entries: &[Entry]) -> Reference {
        Reference::new(&EntrySet {
            allow: allow.iter().map(|s| net(s)).collect(),
            entries: entries.to_vec(),
        })
    }

    /// TCP from S, sport 4444, dport 80.
    fn tcp_frame() -> Frame {
        v4_frame(S, 6, 0, &tcp(4444, 80))
    }

    use Action::{Drop, Monitor};
    use Proto::{Tcp, Udp};
    use Side::{Dst, Src};

    #[test]
    fn non_ip_and_malformed_make_no_lookups() {
        // Entries that would match everything, to show they are not consulted.
        let r = set(&["0.0.0.0/0"], &[e("0.0.0.0/0", Drop), e("::/0", Drop)]);
        let mut f = Frame::eth(0x0806);
        f.pad_to(60);
        let v = r.classify(f.bytes(), true);
        assert_eq!(v, Verdict::bare(REASON_PASS_NON_IP));
        assert!(!v.is_drop());

        let mut f = tcp_frame();
        f.set(L3, 0x44);
        for (drop, base) in [
            (false, REASON_MALFORMED_PASS_BASE),
            (true, REASON_MALFORMED_DROP_BASE),
        ] {
            let v = r.classify(f.bytes(), drop);
            assert_eq!(v.reason, base + MalformedClass::Ipv4Header as u32);
            assert_eq!((v.info, v.entry, v.allow), (None, None, None));
            assert_eq!(v.is_drop(), drop);
        }
    }

    #[test]
    fn every_malformed_class_maps_to_its_reason() {
        let a6: Ipv6Addr = "2001:db8::9".parse().unwrap();
        let cases: Vec<(MalformedClass, Frame)> = vec![
            (MalformedClass::L2Truncated, {
                let mut f = Frame::eth(0x0800);
                f.truncate(13);
                f
            }),
            (
                MalformedClass::VlanDepth,
                Frame::eth_vlan(&[0x8100, 0x8100], 0x8100),
            ),
            (MalformedClass::IpVersion, {
                let mut f = tcp_frame();
                f.set(L3, 0x55);
                f
            }),
            (MalformedClass::Ipv4Header, {
                let mut f = tcp_frame();
                f.truncate(L3 + 19);
                f
            }),
            (MalformedClass::Ipv4Length, {
                let mut f = tcp_frame();
                f.set16(L3 + 2, 41);
                f
            }),
            (MalformedClass::Ipv6Header, {
                let mut f = v6_frame(a6, 59, &[]);
                f.truncate(L3 + 39);
                f
            }),
            (MalformedClass::Ipv6Length, {
                let mut f = v6_frame(a6, 59, &[]);
                f.set16(L3 + 4, 1);
                f
            }),
            (MalformedClass::Ipv6ExtTruncated, v6_frame(a6, 0, &[17])),
            (MalformedClass::Ipv6ExtChain, {
                let mut p = Vec::new();
                for _ in 0..7 {
                    p.extend(ext_opts(60, 0));
                }
                v6_frame(a6, 60, &p)
            }),
        ];
        let mut seen = Vec::new();
        let r = set(&[], &[]);
        for (class, f) in cases {
            assert_eq!(parse(f.bytes()), Parsed::Malformed(class));
            let pass = r.classify(f.bytes(), false);
            let drop = r.classify(f.bytes(), true);
            assert_eq!(pass.reason, reason_malformed(class, false));
            assert_eq!(drop.reason, reason_malformed(class, true));
            assert_eq!(
                ReasonInfo::decode(drop.reason),
                Some(ReasonInfo::Malformed {
                    class,
                    dropped: true
                })
            );
            assert!(drop.is_drop() && !pass.is_drop());
            seen.push(class);
        }
        assert_eq!(seen, MalformedClass::ALL);
    }

    #[test]
    fn no_match_passes_and_malformed_drop_is_irrelevant_for_ip() {
        let r = set(&[], &[e("10.9.0.0/16", Drop), e("2001:db8::/32", Drop)]);
        for md in [false, true] {
            let v = r.classify(tcp_frame().bytes(), md);
            assert_eq!(v.reason, REASON_PASS_NO_MATCH);
            assert_eq!(v.info.unwrap().src, IpAddr::V4(S));
            assert_eq!((v.entry, v.allow), (None, None));
            assert!(!v.is_drop());
        }
    }

    #[test]
    fn allowlist_beats_drop() {
        let r = set(
            &["10.0.0.0/8", "10.1.2.0/24", "192.0.2.0/24"],
            &[
                e("10.1.2.3/32", Drop),
                ep("10.1.2.3/32", Tcp, 4444, Src, Drop),
            ],
        );
        let v = r.classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_PASS_ALLOWLIST);
        assert_eq!(v.allow, Some(net("10.1.2.0/24")), "the longest allow net");
        assert_eq!(v.entry, None);
        assert!(!v.is_drop());
        // The allowlist is by source only: the destination being allowlisted
        // (192.0.2.1) does not matter.
        let r = set(&["192.0.2.0/24"], &[e("10.1.2.3/32", Drop)]);
        assert_eq!(
            r.classify(tcp_frame().bytes(), false).reason,
            REASON_DROP_BASE + EntryKind::Addr as u32
        );
        // Allowlist host bits are ignored, /32 is exact, /0 allows everything.
        for a in ["10.1.99.99/16", "10.1.2.3/32", "0.0.0.0/0"] {
            let r = set(&[a], &[e("10.1.2.3/32", Drop)]);
            let v = r.classify(tcp_frame().bytes(), false);
            assert_eq!(v.reason, REASON_PASS_ALLOWLIST, "{a}");
            assert_eq!(v.allow, Some(net(a).trunc()));
        }
        // An IPv6 allowlist does not cover IPv4 sources.
        let r = set(&["::/0"], &[e("10.1.2.3/32", Drop)]);
        assert!(r.classify(tcp_frame().bytes(), false).is_drop());
    }

    #[test]
    fn drop_beats_more_specific_monitor() {
        let r = set(
            &[],
            &[
                e("10.0.0.0/8", Drop),
                e("10.1.2.3/32", Monitor),
                ep("10.1.2.3/32", Tcp, 4444, Src, Monitor),
                ep("10.1.0.0/16", Tcp, 80, Dst, Monitor),
            ],
        );
        let v = r.classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_DROP_BASE + EntryKind::Prefix as u32);
        assert_eq!(v.entry, Some(e("10.0.0.0/8", Drop)));
        assert!(v.is_drop());
    }

    #[test]
    fn monitor_only_reports_most_specific_monitor_kind() {
        let r = set(&[], &[e("10.0.0.0/8", Monitor), e("10.1.2.3/32", Monitor)]);
        let v = r.classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_MONITOR_BASE + EntryKind::Addr as u32);
        assert_eq!(v.entry, Some(e("10.1.2.3/32", Monitor)));
        assert!(!v.is_drop());
        assert_eq!(ReasonInfo::decode(v.reason).unwrap().verdict(), "monitor");
    }

    #[test]
    fn kind_ranking_among_deciding_action() {
        let all = [
            e("10.1.0.0/16", Drop),
            e("10.1.2.3/32", Drop),
            ep("10.1.2.0/24", Tcp, 80, Dst, Drop),
            ep("10.1.2.3/32", Tcp, 4444, Src, Drop),
            // A more specific monitor must never raise the drop kind.
            ep("10.1.2.3/32", Tcp, 80, Dst, Monitor),
        ];
        let expect = [
            EntryKind::AddrPort,
            EntryKind::PrefixPort,
            EntryKind::Addr,
            EntryKind::Prefix,
        ];
        // Remove the most specific drop entry one at a time.
        for (i, kind) in expect.iter().enumerate() {
            let mut entries: Vec<Entry> = all[..4 - i].to_vec();
            entries.push(all[4]);
            let v = set(&[], &entries).classify(tcp_frame().bytes(), false);
            assert_eq!(v.reason, REASON_DROP_BASE + *kind as u32, "{kind:?}");
            let d = v.entry.unwrap();
            assert_eq!((d.kind(), d.action), (*kind, Drop));
        }
        // Only the monitor left.
        let v = set(&[], &all[4..]).classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_MONITOR_BASE + EntryKind::AddrPort as u32);
    }

    #[test]
    fn side_src_vs_dst() {
        // Packet: sport 4444, dport 80.
        let cases = [
            (ep("10.1.2.3/32", Tcp, 4444, Src, Drop), true),
            (ep("10.1.2.3/32", Tcp, 4444, Dst, Drop), false),
            (ep("10.1.2.3/32", Tcp, 80, Dst, Drop), true),
            (ep("10.1.2.3/32", Tcp, 80, Src, Drop), false),
            (ep("10.1.0.0/16", Tcp, 80, Dst, Drop), true),
            (ep("10.1.0.0/16", Tcp, 80, Src, Drop), false),
            (ep("10.1.0.0/16", Tcp, 4444, Src, Drop), true),
            // Protocol must be equal.
            (ep("10.1.2.3/32", Udp, 4444, Src, Drop), false),
            (ep("10.1.2.3/32", Udp, 80, Dst, Drop), false),
            // Address must match.
            (ep("10.1.2.4/32", Tcp, 4444, Src, Drop), false),
        ];
        for (entry, hit) in cases {
            let v = set(&[], &[entry]).classify(tcp_frame().bytes(), false);
            assert_eq!(v.is_drop(), hit, "{entry}");
            if hit {
                assert_eq!(v.reason, REASON_DROP_BASE + entry.kind() as u32);
                assert_eq!(v.entry, Some(entry));
            }
        }
        // UDP packet with the same ports.
        let f = v4_frame(S, 17, 0, &udp(4444, 80));
        let r = set(&[], &[ep("10.1.2.3/32", Udp, 80, Dst, Drop)]);
        assert!(r.classify(f.bytes(), false).is_drop());
        let r = set(&[], &[ep("10.1.2.3/32", Tcp, 80, Dst, Drop)]);
        assert!(!r.classify(f.bytes(), false).is_drop());
    }

    #[test]
    fn same_port_both_sides() {
        // sport == dport: both a src and a dst entry match; src is reported.
        let f = v4_frame(S, 17, 0, &udp(53, 53));
        let src = ep("10.1.2.3/32", Udp, 53, Src, Drop);
        let dst = ep("10.1.2.3/32", Udp, 53, Dst, Drop);
        let r = set(&[], &[dst, src]);
        assert_eq!(r.classify(f.bytes(), false).entry, Some(src));
        assert_eq!(r.matching(IpAddr::V4(S), Some((Udp, 53, 53))), [src, dst]);
    }

    #[test]
    fn port_entries_need_ports() {
        let r = set(
            &[],
            &[
                ep("10.1.2.3/32", Tcp, 4444, Src, Drop),
                ep("10.0.0.0/8", Tcp, 80, Dst, Drop),
                e("10.1.0.0/16", Monitor),
            ],
        );
        let monitored = REASON_MONITOR_BASE + EntryKind::Prefix as u32;
        // Non-first fragment.
        let f = v4_frame(S, 6, 0x0001, &tcp(4444, 80));
        assert_eq!(r.classify(f.bytes(), false).reason, monitored);
        // Truncated TCP.
        let f = v4_frame(S, 6, 0, &tcp(4444, 80)[..19]);
        assert_eq!(r.classify(f.bytes(), false).reason, monitored);
        // Another protocol carrying the same bytes.
        let f = v4_frame(S, 132, 0, &tcp(4444, 80));
        assert_eq!(r.classify(f.bytes(), false).reason, monitored);
        // The complete packet does match.
        let v = r.classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_DROP_BASE + EntryKind::AddrPort as u32);
    }

    #[test]
    fn host_bits_ignored_and_full_length_is_exact() {
        // Hand-built (not normalised) entry.
        let raw = Entry {
            net: net("10.200.3.4/8"),
            port: None,
            action: Drop,
        };
        let v = set(&[], &[raw]).classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_DROP_BASE + EntryKind::Prefix as u32);
        assert_eq!(v.entry.unwrap().net, net("10.0.0.0/8"));
        // /32 is an exact address, /31 is a prefix.
        let v = set(&[], &[e("10.1.2.3/32", Drop)]).classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_DROP_BASE + EntryKind::Addr as u32);
        let v = set(&[], &[e("10.1.2.2/31", Drop)]).classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_DROP_BASE + EntryKind::Prefix as u32);
        let v = set(&[], &[e("10.1.2.4/31", Drop)]).classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_PASS_NO_MATCH);
        // /0 matches every IPv4 source.
        let v = set(&[], &[e("0.0.0.0/0", Monitor)]).classify(tcp_frame().bytes(), false);
        assert_eq!(v.reason, REASON_MONITOR_BASE + EntryKind::Prefix as u32);
    }

    #[test]
    fn duplicate_keys_drop_wins() {
        let m = e("10.1.2.3/32", Monitor);
        let d = e("10.1.2.3/32", Drop);
        for entries in [[m, d, m], [d, m, d]] {
            let r = set(&[], &entries);
            let v = r.classify(tcp_frame().bytes(), false);
            assert_eq!(v.entry, Some(d));
            assert_eq!(r.matching(IpAddr::V4(S), None), [d, m], "deduplicated");
        }
    }

    #[test]
    fn ipv6_entries_and_families_do_not_mix() {
        let src: Ipv6Addr = "2001:db8:1:2::3".parse().unwrap();
        let f = v6_frame(src, 0, &[&ext_opts(6, 0)[..], &tcp(4444, 443)[..]].concat());
        let r = set(
            &[],
            &[
                e("2001:db8::/32", Monitor),
                ep("2001:db8:1::/48", Tcp, 443, Dst, Drop),
                e("2001:db8:1:2::3/128", Monitor),
                e("0.0.0.0/0", Drop),
            ],
        );
        let v = r.classify(f.bytes(), false);
        assert_eq!(v.reason, REASON_DROP_BASE + EntryKind::PrefixPort as u32);
        // An IPv4-mapped source is an IPv6 address: IPv4 entries do not match.
        let mapped = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped();
        let f = v6_frame(mapped, 59, &[]);
        let r = set(&[], &[e("10.1.2.3/32", Drop)]);
        assert_eq!(r.classify(f.bytes(), false).reason, REASON_PASS_NO_MATCH);
        // IPv6 /128 is an exact address.
        let f = v6_frame(src, 59, &[]);
        let r = set(&[], &[e("2001:db8:1:2::3/128", Drop)]);
        assert_eq!(
            r.classify(f.bytes(), false).reason,
            REASON_DROP_BASE + EntryKind::Addr as u32
        );
    }

    #[test]
    fn vlan_tagged_packets_are_classified() {
        let mut f = Frame::eth_vlan(&[0x88a8, 0x8100], 0x0800);
        f.push(&ipv4(S, S, 6, 0, 20)).push(&tcp(4444, 80));
        let r = set(&[], &[ep("10.1.2.3/32", Tcp, 80, Dst, Drop)]);
        let v = r.classify(f.bytes(), false);
        assert!(v.is_drop());
        assert_eq!(v.info.unwrap().vlan_tags, 2);
    }

    #[test]
    fn matching_lists_everything_ranked() {
        let entries = [
            e("10.0.0.0/8", Monitor),
            e("10.1.0.0/16", Drop),
            e("10.1.2.3/32", Monitor),
            ep("10.1.2.0/24", Tcp, 80, Dst, Monitor),
            ep("10.1.2.3/32", Tcp, 4444, Src, Monitor),
            ep("10.1.2.3/32", Udp, 4444, Src, Drop), // wrong proto
            e("10.2.0.0/16", Drop),                  // wrong net
        ];
        let r = set(&["10.0.0.0/8"], &entries);
        let got = r.matching(IpAddr::V4(S), Some((Tcp, 4444, 80)));
        assert_eq!(
            got,
            [entries[1], entries[4], entries[3], entries[2], entries[0]]
        );
        // Without ports only the port-less entries.
        let got = r.matching(IpAddr::V4(S), None);
        assert_eq!(got, [entries[1], entries[2], entries[0]]);
    }

    #[test]
    fn longer_prefix_reported_among_equal_kind() {
        let r = set(
            &[],
            &[
                e("10.0.0.0/8", Drop),
                e("10.1.2.0/24", Drop),
                e("10.1.0.0/16", Drop),
            ],
        );
        let v = r.classify(tcp_frame().bytes(), false);
        assert_eq!(v.entry, Some(e("10.1.2.0/24", Drop)));
    }

    /// The spec's decision written as directly as possible over a plain list,
    /// for the randomised comparison below.
    fn brute(set: &EntrySet, info: &PacketInfo) -> (Reason, Vec<Entry>) {
        if set.allow.iter().any(|n| n.contains(&info.src)) {
            return (REASON_PASS_ALLOWLIST, Vec::new());
        }
        let mut matches: Vec<Entry> = set
            .entries
            .iter()
            .filter(|e| e.matches(info.src, info.transport()))
            .map(|e| Entry::new(e.net, e.port, e.action))
            .collect();
        matches.sort();
        matches.dedup();
        if matches.is_empty() {
            return (REASON_PASS_NO_MATCH, matches);
        }
        let action = if matches.iter().any(|e| e.action == Drop) {
            Drop
        } else {
            Monitor
        };
        let kind = matches
            .iter()
            .filter(|e| e.action == action)
            .map(|e| e.kind())
            .max()
            .unwrap();
        (reason_entry(kind, action.abi()), matches)
    }

    #[test]
    fn randomised_against_brute_force() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let ports = [53u16, 80, 443, 4444];
        let v4_len = [0u8, 8, 16, 24, 28, 30, 31, 32, 32, 32];
        let v6_len = [0u8, 16, 32, 48, 64, 120, 127, 128, 128, 128];
        let v4_addr = |rng: &mut StdRng| {
            IpAddr::V4(Ipv4Addr::new(
                10,
                1,
                rng.random_range(0..2),
                rng.random_range(0..8),
            ))
        };
        let v6_addr = |rng: &mut StdRng| {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                rng.random_range(0..2),
                0,
                0,
                0,
                0,
                rng.random_range(0..8),
            ))
        };
        for _round in 0..200 {
            let mut s = EntrySet::default();
            for _ in 0..rng.random_range(0..12) {
                let v6 = rng.random_bool(0.5);
                let (addr, len) = if v6 {
                    (v6_addr(&mut rng), v6_len[rng.random_range(0..v6_len.len())])
                } else {
                    (v4_addr(&mut rng), v4_len[rng.random_range(0..v4_len.len())])
                };
                let n = IpNet::new(addr, len).unwrap();
                if rng.random_bool(0.1) {
                    s.allow.push(n);
                    continue;
                }
                let port = rng.random_bool(0.5).then(|| PortMatch {
                    proto: if rng.random_bool(0.5) { Tcp } else { Udp },
                    port: ports[rng.random_range(0..ports.len())],
                    side: if rng.random_bool(0.5) { Src } else { Dst },
                });
                let action = if rng.random_bool(0.4) { Drop } else { Monitor };
                // Sometimes leave host bits set, as a hand-built entry might.
                let n = if rng.random_bool(0.5) { n } else { n.trunc() };
                s.entries.push(Entry {
                    net: n,
                    port,
                    action,
                });
            }
            let r = Reference::new(&s);
            for _ in 0..50 {
                let v6 = rng.random_bool(0.5);
                let proto = [6u8, 17, 1][rng.random_range(0..3)];
                let sport = ports[rng.random_range(0..ports.len())];
                let dport = ports[rng.random_range(0..ports.len())];
                let l4 = match proto {
                    6 => tcp(sport, dport),
                    17 => udp(sport, dport),
                    _ => vec![8, 0, 0, 0, 0, 0, 0, 0],
                };
                let frame = match (v6, v6_addr(&mut rng), v4_addr(&mut rng)) {
                    (true, IpAddr::V6(a), _) => v6_frame(a, proto, &l4),
                    (false, _, IpAddr::V4(a)) => {
                        let frag = if rng.random_bool(0.1) { 0x0010 } else { 0 };
                        v4_frame(a, proto, frag, &l4)
                    }
                    _ => unreachable!(),
                };
                let v = r.classify(frame.bytes(), false);
                let info = v.info.unwrap();
                let (want, matches) = brute(&s, &info);
                assert_eq!(v.reason, want, "{s:?} {info:?}");
                let mut got = r.matching(info.src, info.transport());
                got.sort();
                if want != REASON_PASS_ALLOWLIST {
                    assert_eq!(got, matches, "{s:?} {info:?}");
                }
                match ReasonInfo::decode(want).unwrap() {
                    ReasonInfo::Entry { kind, action } => {
                        let d = v.entry.unwrap();
                        assert_eq!((d.kind(), d.action.abi()), (kind, action));
                        assert!(matches.contains(&d));
                        assert_eq!(v.allow, None);
                    }
                    ReasonInfo::Allowlisted => {
                        let a = v.allow.unwrap();
                        assert!(a.contains(&info.src));
                        assert!(s.allow.iter().all(|n| !n.contains(&info.src)
                            || n.prefix_len() <= a.prefix_len()));
                        assert_eq!(v.entry, None);
                    }
                    _ => assert_eq!((v.entry, v.allow), (None, None)),
                }
            }
        }
    }

    #[test]
    fn large_set_is_indexed() {
        // 1M exact addresses plus prefixes: builds and classifies quickly
        // (a linear scan per packet would make this test crawl).
        let mut s = EntrySet::default();
        for i in 0..1_000_000u32 {
            s.entries.push(Entry::new(
                IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), 32).unwrap(),
                None,
                Drop,
            ));
        }
        s.entries.push(e("10.0.0.0/8", Monitor));
        let r = Reference::new(&s);
        let f = tcp_frame();
        for _ in 0..10_000 {
            assert_eq!(
                r.classify(f.bytes(), false).reason,
                REASON_MONITOR_BASE + EntryKind::Prefix as u32
            );
        }
        let f = v4_frame(Ipv4Addr::new(11, 0, 0, 7), 6, 0, &tcp(1, 2));
        assert_eq!(
            r.classify(f.bytes(), false).reason,
            REASON_DROP_BASE + EntryKind::Addr as u32
        );
    }
}
