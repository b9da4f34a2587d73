//! Named entry sets for the differential tests: hits and misses of every
//! entry kind and action, for IPv4 and IPv6, overlapping entries, and
//! allowlists overlapping blocked entries. Sources are sampled from the
//! packets themselves (so real captures get hits too) and from the fixed
//! generated sources.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::Packet;
use super::generate::{GEN_PORTS, GEN_V4_SOURCES, GEN_V6_SOURCES};

/// Fixed seed of the sampling and of the bulk set: the sets depend only on
/// the packets.
const SAMPLE_SEED: u64 = 0x00ed_9e5e_7c0f_fee5;

/// Sources sampled per family.
const SAMPLED_SOURCES: usize = 12;
/// Flows sampled per family and protocol.
const SAMPLED_FLOWS: usize = 6;

/// Entries in the `bulk` set besides the sampled ones.
const BULK_RANDOM: usize = 3000;

/// A source address and its ports as etherparse's lax slicer sees them
/// (close to, but not necessarily exactly, what the filter parses: good
/// enough to aim entries at packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    src: IpAddr,
    proto: Proto,
    sport: u16,
    dport: u16,
}

#[derive(Debug, Default)]
struct Samples {
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
    /// TCP and UDP flows of IPv4 sources.
    flows4: Vec<Flow>,
    /// TCP and UDP flows of IPv6 sources.
    flows6: Vec<Flow>,
}

/// A packet's source and, for TCP and UDP, `(protocol, sport, dport)`.
type Sliced = (IpAddr, Option<(Proto, u16, u16)>);

fn slice_packet(data: &[u8]) -> Option<Sliced> {
    let p = LaxSlicedPacket::from_ethernet(data).ok()?;
    let src = match p.net.as_ref()? {
        LaxNetSlice::Ipv4(s) => IpAddr::V4(s.header().source_addr()),
        LaxNetSlice::Ipv6(s) => IpAddr::V6(s.header().source_addr()),
        LaxNetSlice::Arp(_) => return None,
    };
    let ports = match p.transport.as_ref() {
        Some(TransportSlice::Tcp(t)) => Some((Proto::Tcp, t.source_port(), t.destination_port())),
        Some(TransportSlice::Udp(u)) => Some((Proto::Udp, u.source_port(), u.destination_port())),
        _ => None,
    };
    Some((src, ports))
}

/// Most frequent first, ties by value; then `extra` more picked at random
/// (fixed seed) from the rest.
fn choose<T: Ord + Copy>(
    counts: &BTreeMap<T, usize>,
    top: usize,
    extra: usize,
    rng: &mut StdRng,
) -> Vec<T> {
    let mut ranked: Vec<(usize, T)> = counts.iter().map(|(k, n)| (*n, *k)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<T> = ranked.iter().take(top).map(|(_, k)| *k).collect();
    let mut rest: Vec<T> = ranked.iter().skip(top).map(|(_, k)| *k).collect();
    rest.shuffle(rng);
    out.extend(rest.into_iter().take(extra));
    out
}

fn sample(packets: &[Packet]) -> Samples {
    let mut srcs4 = BTreeMap::new();
    let mut srcs6 = BTreeMap::new();
    let mut flows: [BTreeMap<Flow, usize>; 4] = Default::default();
    for p in packets {
        let Some((src, ports)) = slice_packet(&p.data) else {
            continue;
        };
        let v6 = src.is_ipv6();
        *(if v6 { &mut srcs6 } else { &mut srcs4 })
            .entry(src)
            .or_insert(0) += 1;
        if let Some((proto, sport, dport)) = ports {
            let i = usize::from(v6) * 2 + usize::from(proto == Proto::Udp);
            *flows[i]
                .entry(Flow {
                    src,
                    proto,
                    sport,
                    dport,
                })
                .or_insert(0) += 1;
        }
    }
    let mut rng = StdRng::seed_from_u64(SAMPLE_SEED);
    let half = SAMPLED_SOURCES / 2;
    let mut s = Samples {
        v4: choose(&srcs4, half, half, &mut rng),
        v6: choose(&srcs6, half, half, &mut rng),
        ..Samples::default()
    };
    let fhalf = SAMPLED_FLOWS / 2;
    for (i, f) in flows.iter().enumerate() {
        let chosen = choose(f, fhalf, fhalf, &mut rng);
        if i < 2 {
            s.flows4.extend(chosen);
        } else {
            s.flows6.extend(chosen);
        }
    }
    // Pad from the fixed generated sources so every set is complete even
    // for a tiny packet list.
    let mut k = 0;
    while s.v4.len() < SAMPLED_SOURCES {
        let a = IpAddr::V4(GEN_V4_SOURCES[k % GEN_V4_SOURCES.len()]);
        if !s.v4.contains(&a) || k >= GEN_V4_SOURCES.len() {
            s.v4.push(a);
        }
        k += 1;
    }
    k = 0;
    while s.v6.len() < SAMPLED_SOURCES {
        let a = IpAddr::V6(GEN_V6_SOURCES[k % GEN_V6_SOURCES.len()]);
        if !s.v6.contains(&a) || k >= GEN_V6_SOURCES.len() {
            s.v6.push(a);
        }
        k += 1;
    }
    let gen_flow = |src: IpAddr, i: usize| Flow {
        src,
        proto: if i.is_multiple_of(2) {
            Proto::Tcp
        } else {
            Proto::Udp
        },
        sport: GEN_PORTS[i % GEN_PORTS.len()],
        dport: GEN_PORTS[(i + 3) % GEN_PORTS.len()],
    };
    k = 0;
    while s.flows4.len() < 2 * SAMPLED_FLOWS {
        s.flows4
            .push(gen_flow(IpAddr::V4(GEN_V4_SOURCES[k % 8]), k));
        k += 1;
    }
    k = 0;
    while s.flows6.len() < 2 * SAMPLED_FLOWS {
        s.flows6
            .push(gen_flow(IpAddr::V6(GEN_V6_SOURCES[k % 8]), k));
        k += 1;
    }
    s
}

// ---------------------------------------------------------------------------
// Small constructors.

fn net(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len).expect("prefix length").trunc()
}

fn host(addr: IpAddr) -> IpNet {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    net(addr, len)
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

fn pm(proto: Proto, port: u16, side: Side) -> Option<PortMatch> {
    Some(PortMatch { proto, port, side })
}

fn other(p: Proto) -> Proto {
    match p {
        Proto::Tcp => Proto::Udp,
        Proto::Udp => Proto::Tcp,
    }
}

fn act(i: usize) -> Action {
    if i.is_multiple_of(2) {
        Action::Drop
    } else {
        Action::Monitor
    }
}

/// The prefix length used for the `i`-th sampled source in prefix entries.
fn prefix_len(addr: IpAddr, i: usize) -> u8 {
    const V4: [u8; 8] = [8, 12, 16, 20, 24, 28, 30, 31];
    const V6: [u8; 8] = [16, 32, 48, 56, 64, 96, 112, 127];
    if addr.is_ipv4() { V4[i % 8] } else { V6[i % 8] }
}

/// A /24 (v4) or /64 (v6) around `addr`.
fn subnet(addr: IpAddr) -> IpNet {
    net(addr, if addr.is_ipv4() { 24 } else { 64 })
}

/// A /16 (v4) or /32 (v6) around `addr`.
fn wide(addr: IpAddr) -> IpNet {
    net(addr, if addr.is_ipv4() { 16 } else { 32 })
}

/// Addresses and prefixes no packet should come from (documentation and
/// benchmarking space not used by the generator).
fn miss_v4() -> [Ipv4Addr; 3] {
    [
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(192, 0, 2, 254),
        Ipv4Addr::new(203, 0, 113, 8),
    ]
}

fn miss_v6() -> [Ipv6Addr; 3] {
    [
        Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0xbeef, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 6),
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 1),
    ]
}

fn misses(entries: &mut Vec<Entry>) {
    for (i, a) in miss_v4().into_iter().enumerate() {
        entries.push(Entry::new(host(v4(a)), None, act(i)));
        entries.push(Entry::new(
            host(v4(a)),
            pm(Proto::Tcp, 80, Side::Src),
            act(i + 1),
        ));
    }
    entries.push(Entry::new(
        net(v4(Ipv4Addr::new(198, 18, 0, 0)), 15),
        None,
        Action::Drop,
    ));
    entries.push(Entry::new(
        net(v4(Ipv4Addr::new(198, 18, 0, 0)), 15),
        pm(Proto::Udp, 53, Side::Dst),
        Action::Monitor,
    ));
    for (i, a) in miss_v6().into_iter().enumerate() {
        entries.push(Entry::new(host(v6(a)), None, act(i)));
        entries.push(Entry::new(
            host(v6(a)),
            pm(Proto::Udp, 443, Side::Dst),
            act(i + 1),
        ));
    }
    let dead = v6(Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, 0));
    entries.push(Entry::new(net(dead, 48), None, Action::Monitor));
    entries.push(Entry::new(
        net(dead, 48),
        pm(Proto::Tcp, 22, Side::Src),
        Action::Drop,
    ));
}

// ---------------------------------------------------------------------------
// The sets.

fn set_addr(s: &Samples) -> EntrySet {
    let mut entries = Vec::new();
    for (i, a) in s.v4.iter().chain(&s.v6).enumerate() {
        entries.push(Entry::new(host(*a), None, act(i)));
    }
    for (i, a) in GEN_V4_SOURCES.iter().enumerate().step_by(2) {
        entries.push(Entry::new(host(v4(*a)), None, act(i / 2)));
    }
    for (i, a) in GEN_V6_SOURCES.iter().enumerate().step_by(2) {
        entries.push(Entry::new(host(v6(*a)), None, act(i / 2 + 1)));
    }
    misses(&mut entries);
    EntrySet {
        allow: vec![],
        entries,
    }
}

fn set_prefix(s: &Samples) -> EntrySet {
    let mut entries = Vec::new();
    for (i, a) in s.v4.iter().chain(&s.v6).enumerate() {
        // Host bits left in on purpose: Entry::new must clear them.
        let n = IpNet::new(*a, prefix_len(*a, i)).expect("prefix length");
        entries.push(Entry::new(n, None, act(i / 3)));
    }
    let g4 = |i: usize| v4(GEN_V4_SOURCES[i]);
    let g6 = |i: usize| v6(GEN_V6_SOURCES[i]);
    entries.push(Entry::new(net(g4(0), 24), None, Action::Drop));
    entries.push(Entry::new(net(g4(2), 16), None, Action::Monitor));
    entries.push(Entry::new(net(g4(5), 8), None, Action::Drop));
    entries.push(Entry::new(net(g4(6), 10), None, Action::Monitor));
    entries.push(Entry::new(net(g6(0), 120), None, Action::Drop));
    entries.push(Entry::new(net(g6(2), 48), None, Action::Monitor));
    entries.push(Entry::new(net(g6(5), 16), None, Action::Drop));
    entries.push(Entry::new(net(g6(7), 16), None, Action::Monitor));
    misses(&mut entries);
    EntrySet {
        allow: vec![],
        entries,
    }
}

fn set_port(s: &Samples) -> EntrySet {
    let mut entries = Vec::new();
    for flows in [&s.flows4, &s.flows6] {
        for (i, f) in flows.iter().enumerate() {
            let e = match i % 8 {
                // Hits of every kind, side and action.
                0 => Entry::new(host(f.src), pm(f.proto, f.sport, Side::Src), Action::Drop),
                1 => Entry::new(
                    host(f.src),
                    pm(f.proto, f.dport, Side::Dst),
                    Action::Monitor,
                ),
                2 => Entry::new(
                    subnet(f.src),
                    pm(f.proto, f.sport, Side::Src),
                    Action::Monitor,
                ),
                3 => Entry::new(wide(f.src), pm(f.proto, f.dport, Side::Dst), Action::Drop),
                // Misses: other protocol, other port, the other side's port.
                4 => Entry::new(
                    host(f.src),
                    pm(other(f.proto), f.sport, Side::Src),
                    Action::Drop,
                ),
                5 => Entry::new(
                    host(f.src),
                    pm(f.proto, f.sport.wrapping_add(1), Side::Src),
                    Action::Drop,
                ),
                6 if f.sport != f.dport => {
                    Entry::new(subnet(f.src), pm(f.proto, f.dport, Side::Src), Action::Drop)
                }
                _ => Entry::new(
                    subnet(f.src),
                    pm(other(f.proto), f.dport, Side::Dst),
                    Action::Monitor,
                ),
            };
            entries.push(e);
        }
    }
    for (i, a) in GEN_V4_SOURCES
        .iter()
        .map(|a| v4(*a))
        .chain(GEN_V6_SOURCES.iter().map(|a| v6(*a)))
        .enumerate()
    {
        let proto = if i.is_multiple_of(2) {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        let side = if i % 4 < 2 { Side::Src } else { Side::Dst };
        let port = GEN_PORTS[(i * 3) % GEN_PORTS.len()];
        entries.push(Entry::new(host(a), pm(proto, port, side), act(i / 2)));
        let port = GEN_PORTS[(i * 5 + 1) % GEN_PORTS.len()];
        entries.push(Entry::new(
            subnet(a),
            pm(other(proto), port, side),
            act(i / 2 + 1),
        ));
    }
    // Port 0 and 65535, wide prefixes with ports.
    entries.push(Entry::new(
        net(v4(GEN_V4_SOURCES[5]), 8),
        pm(Proto::Tcp, 0, Side::Src),
        Action::Drop,
    ));
    entries.push(Entry::new(
        net(v4(GEN_V4_SOURCES[5]), 8),
        pm(Proto::Udp, 65535, Side::Dst),
        Action::Monitor,
    ));
    entries.push(Entry::new(
        net(v6(GEN_V6_SOURCES[0]), 32),
        pm(Proto::Udp, 0, Side::Dst),
        Action::Drop,
    ));
    entries.push(Entry::new(
        net(v6(GEN_V6_SOURCES[0]), 32),
        pm(Proto::Tcp, 65535, Side::Src),
        Action::Monitor,
    ));
    misses(&mut entries);
    EntrySet {
        allow: vec![],
        entries,
    }
}

fn set_overlap(s: &Samples) -> EntrySet {
    let mut entries = Vec::new();
    let mut overlaps = |a: IpAddr, f: Option<Flow>, k: usize| {
        // A drop /16 (/32) covering a monitor address.
        entries.push(Entry::new(wide(a), None, Action::Drop));
        entries.push(Entry::new(host(a), None, Action::Monitor));
        if let Some(f) = f {
            // A monitor prefix covering a drop address+port (and a monitor
            // address+port under a drop prefix+port).
            entries.push(Entry::new(subnet(f.src), None, Action::Monitor));
            entries.push(Entry::new(
                host(f.src),
                pm(f.proto, f.sport, Side::Src),
                Action::Drop,
            ));
            entries.push(Entry::new(
                wide(f.src),
                pm(f.proto, f.dport, Side::Dst),
                Action::Drop,
            ));
            entries.push(Entry::new(
                host(f.src),
                pm(f.proto, f.dport, Side::Dst),
                Action::Monitor,
            ));
            // The same key twice, with both actions.
            let key_port = pm(f.proto, f.sport, Side::Src);
            entries.push(Entry::new(subnet(f.src), key_port, Action::Monitor));
            entries.push(Entry::new(subnet(f.src), key_port, Action::Drop));
        }
        // The same address twice with both actions, in both orders.
        let b = host(a);
        let (first, second) = if k.is_multiple_of(2) {
            (Action::Drop, Action::Monitor)
        } else {
            (Action::Monitor, Action::Drop)
        };
        entries.push(Entry::new(b, None, first));
        entries.push(Entry::new(b, None, second));
    };
    for k in 0..3 {
        overlaps(s.v4[k], s.flows4.get(k).copied(), k);
        overlaps(s.v6[k], s.flows6.get(k).copied(), k);
    }
    let g4 = |i: usize| v4(GEN_V4_SOURCES[i]);
    let g6 = |i: usize| v6(GEN_V6_SOURCES[i]);
    // Monitors only, of several kinds: the most specific kind is reported.
    entries.push(Entry::new(net(g4(0), 24), None, Action::Monitor));
    entries.push(Entry::new(host(g4(0)), None, Action::Monitor));
    entries.push(Entry::new(
        host(g4(0)),
        pm(Proto::Tcp, GEN_PORTS[0], Side::Src),
        Action::Monitor,
    ));
    // Drops of several kinds: prefix+port outranks address.
    entries.push(Entry::new(
        net(g4(4), 24),
        pm(Proto::Udp, 53, Side::Src),
        Action::Drop,
    ));
    entries.push(Entry::new(
        net(g4(4), 24),
        pm(Proto::Udp, 53, Side::Dst),
        Action::Drop,
    ));
    entries.push(Entry::new(host(g4(4)), None, Action::Drop));
    // A monitor address+port under a drop prefix: drop (prefix) decides.
    entries.push(Entry::new(net(g4(2), 16), None, Action::Drop));
    for p in GEN_PORTS {
        entries.push(Entry::new(
            host(g4(2)),
            pm(Proto::Tcp, p, Side::Src),
            Action::Monitor,
        ));
        entries.push(Entry::new(
            host(g4(2)),
            pm(Proto::Udp, p, Side::Dst),
            Action::Monitor,
        ));
    }
    // Nested prefixes alternating actions.
    for (i, len) in [8u8, 16, 24, 32].into_iter().enumerate() {
        entries.push(Entry::new(net(g4(7), len), None, act(i + 1)));
    }
    for (i, len) in [16u8, 32, 48, 64, 96, 128].into_iter().enumerate() {
        entries.push(Entry::new(net(g6(2), len), None, act(i + 1)));
    }
    // IPv6: drop /32 over a monitor /128 and a monitor prefix over a drop
    // address+port.
    entries.push(Entry::new(net(g6(0), 32), None, Action::Drop));
    entries.push(Entry::new(host(g6(1)), None, Action::Monitor));
    entries.push(Entry::new(net(g6(6), 48), None, Action::Monitor));
    entries.push(Entry::new(
        host(g6(6)),
        pm(Proto::Udp, GEN_PORTS[3], Side::Dst),
        Action::Drop,
    ));
    entries.push(Entry::new(
        host(g6(6)),
        pm(Proto::Tcp, GEN_PORTS[4], Side::Src),
        Action::Drop,
    ));
    misses(&mut entries);
    EntrySet {
        allow: vec![],
        entries,
    }
}

fn set_allow(s: &Samples) -> EntrySet {
    let mut allow = Vec::new();
    let mut entries = Vec::new();
    // Allowlisted exact sources with blocking entries of every kind on them.
    for a in [
        s.v4[0],
        s.v6[0],
        v4(GEN_V4_SOURCES[0]),
        v6(GEN_V6_SOURCES[0]),
    ] {
        allow.push(host(a));
        entries.push(Entry::new(wide(a), None, Action::Drop));
        entries.push(Entry::new(host(a), None, Action::Drop));
    }
    // Allowlisted subnets covering blocked addresses and address+ports.
    for f in [
        s.flows4[0],
        s.flows6[0],
        s.flows4[SAMPLED_FLOWS],
        s.flows6[SAMPLED_FLOWS],
    ] {
        allow.push(subnet(f.src));
        entries.push(Entry::new(
            host(f.src),
            pm(f.proto, f.sport, Side::Src),
            Action::Drop,
        ));
        entries.push(Entry::new(
            host(f.src),
            pm(f.proto, f.dport, Side::Dst),
            Action::Monitor,
        ));
    }
    allow.push(net(v4(GEN_V4_SOURCES[2]), 24));
    allow.push(net(v6(GEN_V6_SOURCES[2]), 64));
    // Blocked entries outside the allowlist still decide.
    for (i, a) in s.v4[1..6].iter().chain(&s.v6[1..6]).enumerate() {
        entries.push(Entry::new(host(*a), None, act(i)));
    }
    for (i, a) in GEN_V4_SOURCES[3..].iter().enumerate() {
        entries.push(Entry::new(net(v4(*a), 24), None, act(i)));
    }
    for (i, a) in GEN_V6_SOURCES[3..].iter().enumerate() {
        entries.push(Entry::new(net(v6(*a), 64), None, act(i + 1)));
    }
    // Covering blocks over the allowed GEN /24 and /64.
    entries.push(Entry::new(
        net(v4(GEN_V4_SOURCES[2]), 8),
        None,
        Action::Drop,
    ));
    entries.push(Entry::new(
        net(v6(GEN_V6_SOURCES[2]), 16),
        None,
        Action::Drop,
    ));
    // Allow entries that match nothing.
    allow.push(net(v4(Ipv4Addr::new(198, 18, 0, 0)), 15));
    allow.push(net(
        v6(Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, 0)),
        48,
    ));
    misses(&mut entries);
    EntrySet { allow, entries }
}

/// The one set with /1 prefixes.
fn set_wide(s: &Samples) -> EntrySet {
    let mut entries = vec![
        Entry::new(net(v4(Ipv4Addr::new(128, 0, 0, 0)), 1), None, Action::Drop),
        Entry::new(
            net(v4(Ipv4Addr::new(0, 0, 0, 0)), 1),
            pm(Proto::Udp, 53, Side::Src),
            Action::Monitor,
        ),
        Entry::new(
            net(v6(Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0)), 1),
            None,
            Action::Monitor,
        ),
        Entry::new(net(v6(Ipv6Addr::UNSPECIFIED), 1), None, Action::Drop),
        Entry::new(host(v4(GEN_V4_SOURCES[0])), None, Action::Monitor),
        Entry::new(
            host(v6(GEN_V6_SOURCES[7])),
            pm(Proto::Udp, GEN_PORTS[2], Side::Dst),
            Action::Drop,
        ),
    ];
    for (i, f) in s.flows4.iter().chain(&s.flows6).enumerate().step_by(3) {
        entries.push(Entry::new(
            host(f.src),
            pm(f.proto, f.sport, Side::Src),
            act(i + 1),
        ));
    }
    let allow = vec![net(v4(GEN_V4_SOURCES[4]), 24), host(s.v6[1])];
    EntrySet { allow, entries }
}

/// Every fixed generated source gets entries of every kind, so each decision
/// path is reachable from the generated packets.
fn set_generated() -> EntrySet {
    let mut entries = Vec::new();
    let srcs: Vec<IpAddr> = GEN_V4_SOURCES
        .iter()
        .map(|a| v4(*a))
        .chain(GEN_V6_SOURCES.iter().map(|a| v6(*a)))
        .collect();
    for (i, a) in srcs.iter().enumerate() {
        let kind = i % 4;
        let action = act(i / 4);
        let proto = if i % 3 == 0 { Proto::Udp } else { Proto::Tcp };
        let port = GEN_PORTS[(i * 7 + 2) % GEN_PORTS.len()];
        let side = if i.is_multiple_of(2) {
            Side::Src
        } else {
            Side::Dst
        };
        let n = if a.is_ipv4() { 20 } else { 60 };
        let e = match kind {
            0 => Entry::new(host(*a), None, action),
            1 => Entry::new(net(*a, n), None, action),
            2 => Entry::new(host(*a), pm(proto, port, side), action),
            _ => Entry::new(net(*a, n), pm(proto, port, side), action),
        };
        entries.push(e);
        // A second entry of another kind with the other action.
        let other_action = if action == Action::Drop {
            Action::Monitor
        } else {
            Action::Drop
        };
        let port2 = GEN_PORTS[(i + 5) % GEN_PORTS.len()];
        let e2 = match kind {
            0 => Entry::new(net(*a, n), pm(proto, port2, Side::Src), other_action),
            1 => Entry::new(host(*a), pm(other(proto), port2, Side::Dst), other_action),
            2 => Entry::new(net(*a, n), None, other_action),
            _ => Entry::new(host(*a), None, other_action),
        };
        entries.push(e2);
    }
    misses(&mut entries);
    EntrySet {
        allow: vec![net(v4(GEN_V4_SOURCES[6]), 16)],
        entries,
    }
}

/// Many entries: every sampled source and flow with a random kind, plus
/// random addresses and prefixes (mostly misses), to fill the maps.
fn set_bulk(s: &Samples) -> EntrySet {
    let mut rng = StdRng::seed_from_u64(SAMPLE_SEED ^ 0xb01c);
    let mut entries = Vec::new();
    let random_action = |rng: &mut StdRng| {
        if rng.random_bool(0.5) {
            Action::Drop
        } else {
            Action::Monitor
        }
    };
    let random_port = |rng: &mut StdRng, f: Option<&Flow>| {
        let proto = f.map_or_else(
            || if rng.random() { Proto::Tcp } else { Proto::Udp },
            |f| f.proto,
        );
        let side = if rng.random() { Side::Src } else { Side::Dst };
        let port = match (f, side) {
            (Some(f), Side::Src) => f.sport,
            (Some(f), Side::Dst) => f.dport,
            (None, _) => rng.random(),
        };
        pm(proto, port, side)
    };
    let random_len = |rng: &mut StdRng, a: IpAddr| {
        if a.is_ipv4() {
            rng.random_range(8..=32)
        } else {
            rng.random_range(16..=128)
        }
    };
    for a in s.v4.iter().chain(&s.v6) {
        let len = random_len(&mut rng, *a);
        entries.push(Entry::new(net(*a, len), None, random_action(&mut rng)));
    }
    for f in s.flows4.iter().chain(&s.flows6) {
        let len = random_len(&mut rng, f.src);
        let port = random_port(&mut rng, Some(f));
        entries.push(Entry::new(net(f.src, len), port, random_action(&mut rng)));
    }
    for _ in 0..BULK_RANDOM {
        let a = if rng.random_bool(0.7) {
            v4(Ipv4Addr::from(rng.random::<u32>()))
        } else {
            v6(Ipv6Addr::from(rng.random::<u128>()))
        };
        let len = if rng.random_bool(0.6) {
            if a.is_ipv4() { 32 } else { 128 }
        } else {
            random_len(&mut rng, a)
        };
        let port = if rng.random_bool(0.3) {
            random_port(&mut rng, None)
        } else {
            None
        };
        entries.push(Entry::new(net(a, len), port, random_action(&mut rng)));
    }
    let mut allow = Vec::new();
    for _ in 0..64 {
        let a = v4(Ipv4Addr::from(rng.random::<u32>()));
        let len = random_len(&mut rng, a).max(16);
        allow.push(net(a, len));
    }
    allow.push(host(s.v4[SAMPLED_SOURCES - 1]));
    allow.push(host(s.v6[SAMPLED_SOURCES - 1]));
    EntrySet { allow, entries }
}

/// The union of every set but `wide` and `bulk`.
fn union(sets: &[(String, EntrySet)]) -> EntrySet {
    let mut allow = BTreeSet::new();
    let mut entries = Vec::new();
    for (name, set) in sets {
        if name == "wide" || name == "bulk" || name == "none" {
            continue;
        }
        allow.extend(set.allow.iter().copied());
        entries.extend(set.entries.iter().copied());
    }
    EntrySet {
        allow: allow.into_iter().collect(),
        entries,
    }
}

/// Named entry sets aimed at `packets`, deterministic given the packets:
///
/// - `none`: empty (every IP packet passes with no match);
/// - `addr`: exact addresses, drop and monitor;
/// - `prefix`: prefixes /8../31 (v4) and /16../127 (v6), host bits set;
/// - `port`: address+port and prefix+port, TCP and UDP, side src and dst,
///   hits and near misses (other protocol, port+1, the other side's port);
/// - `overlap`: drop /16 over monitor /32, monitor prefix over drop
///   address+port, the same key twice with both actions, nested prefixes;
/// - `allow`: allowlist entries over blocked addresses, prefixes and ports;
/// - `wide`: the only set with /1 prefixes (v4 and v6);
/// - `generated`: every entry kind and action on the fixed generated sources;
/// - `all`: the union of addr, prefix, port, overlap, allow and generated;
/// - `bulk`: a few thousand random entries plus the sampled ones.
///
/// Every set (but `none`) also holds entries that match nothing.
pub fn entry_sets(packets: &[Packet]) -> Vec<(String, EntrySet)> {
    let s = sample(packets);
    let mut sets = vec![
        ("none".to_string(), EntrySet::default()),
        ("addr".to_string(), set_addr(&s)),
        ("prefix".to_string(), set_prefix(&s)),
        ("port".to_string(), set_port(&s)),
        ("overlap".to_string(), set_overlap(&s)),
        ("allow".to_string(), set_allow(&s)),
        ("wide".to_string(), set_wide(&s)),
        ("generated".to_string(), set_generated()),
    ];
    let all = union(&sets);
    sets.push(("all".to_string(), all));
    sets.push(("bulk".to_string(), set_bulk(&s)));
    sets
}
