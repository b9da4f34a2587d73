//! Generated frames: fixed protocol stacks, every truncation of each, and
//! seeded random header mutations.
//!
//! Headers are serialised with etherparse (so the well-formed stacks really
//! are well formed); malformations are then made by editing bytes at the
//! offsets recorded while building ([`Built`]), which lets a mutation hit
//! exactly the field it names even after earlier ones broke the packet.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IcmpEchoHeader,
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpAuthHeader, IpFragOffset, IpNumber,
    Ipv4Header, Ipv6FlowLabel, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader,
    UdpHeader, VlanId, VlanPcp,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{MAX_FRAME, Packet};

/// Source addresses of the generated IPv4 packets (entry sets target these).
/// Pairs share prefixes of various lengths: .7 and .200 share a /24, the
/// 198.51 pair a /16, and so on.
pub const GEN_V4_SOURCES: [Ipv4Addr; 8] = [
    Ipv4Addr::new(203, 0, 113, 7),
    Ipv4Addr::new(203, 0, 113, 200),
    Ipv4Addr::new(198, 51, 100, 23),
    Ipv4Addr::new(198, 51, 7, 1),
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(10, 20, 30, 40),
    Ipv4Addr::new(100, 64, 1, 2),
    Ipv4Addr::new(185, 220, 101, 9),
];

/// Source addresses of the generated IPv6 packets. `2001:db8::7` and
/// `2001:db8::c8` share a /120; the `2001:db8:1::/48` pair a /48.
pub const GEN_V6_SOURCES: [Ipv6Addr; 8] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x7),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xc8),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0x17),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0xff, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 1, 2, 3, 0, 0, 0, 4),
    Ipv6Addr::new(0x2a00, 0x1450, 0x4001, 0, 0, 0, 0, 5),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
];

/// Destination addresses of the generated IPv4 packets (never matched on).
pub const GEN_V4_DESTS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 100), Ipv4Addr::new(10, 0, 0, 1)];

/// Destination addresses of the generated IPv6 packets (never matched on).
pub const GEN_V6_DESTS: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
];

/// Source and destination ports of the generated TCP and UDP packets
/// (including the edge values 0 and 65535).
pub const GEN_PORTS: [u16; 8] = [0, 22, 53, 80, 443, 4444, 8443, 65535];

/// Random packets [`generated_corpus`] adds after the fixed stacks.
pub const RANDOM_PACKETS: usize = 20_000;

// ---------------------------------------------------------------------------
// Stack descriptions.

/// A frame to build: link layer, network layer, transport, payload size.
#[derive(Clone, Debug)]
struct Spec {
    name: String,
    /// TPIDs of the VLAN tags, outermost first.
    tags: Vec<u16>,
    /// Ethertype after the tags instead of the natural one (mismatched IP
    /// version stacks).
    ethertype_override: Option<u16>,
    net: Net,
    /// Bytes after the L4 header.
    payload: usize,
}

#[derive(Clone, Debug)]
enum Net {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        /// Option bytes (multiple of 4, at most 40): IHL = 5 + options/4.
        options: usize,
        frag: Frag,
        l4: L4,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        exts: Vec<Ext>,
        l4: L4,
    },
    Arp {
        sender: Ipv4Addr,
    },
    /// A non-IP ethertype; the body is `payload` bytes.
    Other {
        ethertype: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    None,
    /// Offset 0, more fragments.
    First,
    /// Offset in 8-byte units (non-zero).
    NonFirst(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    /// Hop-by-hop options, length `(units + 1) * 8`.
    HopByHop(u8),
    /// Routing, length `(units + 1) * 8`.
    Routing(u8),
    /// Destination options, length `(units + 1) * 8`.
    DestOpts(u8),
    /// Fragment header (8 bytes).
    Fragment { offset: u16, more: bool },
    /// Authentication header with `icv_words` 4-byte ICV words.
    Auth(u8),
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::DestOpts(_) => 60,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
        }
    }

    fn label(self) -> String {
        match self {
            Ext::HopByHop(0) => "hbh".into(),
            Ext::HopByHop(n) => format!("hbh{n}"),
            Ext::Routing(0) => "rt".into(),
            Ext::Routing(n) => format!("rt{n}"),
            Ext::DestOpts(0) => "dst".into(),
            Ext::DestOpts(n) => format!("dst{n}"),
            Ext::Fragment { offset: 0, .. } => "frag".into(),
            Ext::Fragment { offset: 185, .. } => "frag-nonfirst".into(),
            Ext::Fragment { offset, .. } => format!("frag-nonfirst{offset}"),
            Ext::Auth(1) => "ah".into(),
            Ext::Auth(n) => format!("ah{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        /// TCP option words (data offset = 5 + this).
        opt_words: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP echo request (ICMPv6 under IPv6).
    Icmp,
    /// Another protocol number with an 8-byte opaque "header".
    Other(u8),
}

impl L4 {
    fn number(self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp if v6 => 58,
            L4::Icmp => 1,
            L4::Other(p) => p,
        }
    }

    fn label(self) -> String {
        match self {
            L4::Tcp { opt_words: 0, .. } => "tcp".into(),
            L4::Tcp { opt_words, .. } => format!("tcp-opts{opt_words}"),
            L4::Udp { .. } => "udp".into(),
            L4::Icmp => "icmp".into(),
            L4::Other(59) => "nonext".into(),
            L4::Other(p) => format!("proto{p}"),
        }
    }
}

fn tag_label(tags: &[u16]) -> String {
    let parts: Vec<String> = tags
        .iter()
        .map(|t| match t {
            0x8100 => "vlan".to_string(),
            0x88a8 => "svlan".to_string(),
            other => format!("tpid{other:04x}"),
        })
        .collect();
    parts.join("+")
}

/// A readable name for a spec, e.g. `vlan+svlan+ipv6-hbh-frag+udp`.
fn spec_label(spec: &Spec) -> String {
    let mut name = tag_label(&spec.tags);
    if !name.is_empty() {
        name.push('+');
    }
    match &spec.net {
        Net::V4 {
            options, frag, l4, ..
        } => {
            name.push_str("ipv4");
            if *options > 0 {
                name.push_str(&format!("-ihl{}", 5 + options / 4));
            }
            match frag {
                Frag::None => {}
                Frag::First => name.push_str("-frag"),
                Frag::NonFirst(185) => name.push_str("-frag-nonfirst"),
                Frag::NonFirst(off) => name.push_str(&format!("-frag-nonfirst{off}")),
            }
            name.push('+');
            name.push_str(&l4.label());
        }
        Net::V6 { exts, l4, .. } => {
            name.push_str("ipv6");
            for e in exts {
                name.push('-');
                name.push_str(&e.label());
            }
            name.push('+');
            name.push_str(&l4.label());
        }
        Net::Arp { .. } => name.push_str("arp"),
        Net::Other { ethertype } => name.push_str(&format!("ethertype{ethertype:04x}")),
    }
    if let Some(et) = spec.ethertype_override {
        name.push_str(&format!("@ethertype{et:04x}"));
    }
    name
}

// ---------------------------------------------------------------------------
// Building.

/// Which IP header a built frame carries (whatever its ethertype says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IpKind {
    None,
    V4,
    V6,
}

/// A serialised frame and where its fields are.
#[derive(Clone, Debug)]
struct Built {
    data: Vec<u8>,
    /// Offsets of the ethertype fields: 12, then the inner ethertype of each
    /// VLAN tag.
    ethertypes: Vec<usize>,
    /// Start of the network header.
    l3: usize,
    ip: IpKind,
    /// End of the IPv4 header with options, or of the IPv6 fixed header.
    ip_hdr_end: usize,
    /// Offsets of the IPv6 extension headers.
    exts: Vec<usize>,
    /// Which of `exts` are fragment headers.
    frag_exts: Vec<usize>,
    /// Start of the L4 header.
    l4: usize,
    /// End of the L4 header (for ARP and other ethertypes: of the body's
    /// first bytes).
    l4_end: usize,
    /// L4 is TCP or UDP.
    ported: bool,
}

fn payload_bytes(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn l4_bytes(l4: L4, v6: bool, payload: usize) -> Vec<u8> {
    let mut out = match l4 {
        L4::Tcp {
            sport,
            dport,
            opt_words,
        } => {
            let mut tcp = TcpHeader::new(sport, dport, 0x1234_5678, 64240);
            tcp.syn = true;
            if opt_words > 0 {
                // NOPs then an end-of-options byte.
                let mut opts = vec![1u8; usize::from(opt_words) * 4];
                if let Some(last) = opts.last_mut() {
                    *last = 0;
                }
                tcp.set_options_raw(&opts).expect("TCP options fit");
            }
            tcp.to_bytes().to_vec()
        }
        L4::Udp { sport, dport } => UdpHeader {
            source_port: sport,
            destination_port: dport,
            length: (8 + payload).min(usize::from(u16::MAX)) as u16,
            checksum: 0,
        }
        .to_bytes()
        .to_vec(),
        L4::Icmp if v6 => {
            Icmpv6Header::new(Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }))
                .to_bytes()
                .to_vec()
        }
        L4::Icmp => Icmpv4Header::new(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }))
            .to_bytes()
            .to_vec(),
        L4::Other(p) => payload_bytes(8, p),
    };
    out.extend(payload_bytes(payload, 0x5a));
    out
}

/// Extension header bytes with `next` as their next header.
fn ext_bytes(ext: Ext, next: u8) -> Vec<u8> {
    let next = IpNumber(next);
    let options = |units: u8| {
        // One PadN option filling the header: type 1, length, zeros.
        let len = usize::from(units) * 8 + 6;
        let mut p = vec![0u8; len];
        p[0] = 1;
        p[1] = (len - 2) as u8;
        p
    };
    match ext {
        Ext::HopByHop(u) | Ext::DestOpts(u) => Ipv6RawExtHeader::new_raw(next, &options(u))
            .expect("ext header length")
            .to_bytes()
            .to_vec(),
        Ext::Routing(u) => {
            // Routing type 0 with segments left 0: a receiver ignores it.
            let body = vec![0u8; usize::from(u) * 8 + 6];
            Ipv6RawExtHeader::new_raw(next, &body)
                .expect("ext header length")
                .to_bytes()
                .to_vec()
        }
        Ext::Fragment { offset, more } => {
            // Written by hand: etherparse 0.18's Ipv6FragmentHeader encodes
            // (and decodes) the offset's low 5 bits and the M flag at the
            // wrong bit positions (JulianSchmid/etherparse#150, fixed in
            // 0.20). RFC 8200: bytes 2..4 = offset << 3 | M.
            let word = ((offset & 0x1fff) << 3) | u16::from(more);
            let mut b = vec![next.0, 0];
            b.extend_from_slice(&word.to_be_bytes());
            b.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
            b
        }
        Ext::Auth(words) => {
            let icv = vec![0xa5u8; usize::from(words) * 4];
            IpAuthHeader::new(next, 0x1000, 1, &icv)
                .expect("ICV length")
                .to_bytes()
                .to_vec()
        }
    }
}

fn build(spec: &Spec) -> Built {
    // Network layer and everything after it.
    let mut net = Vec::new();
    let mut exts = Vec::new();
    let mut frag_exts = Vec::new();
    let (ip, ip_hdr_len, l4_rel, l4_hdr_len, ported, natural_et) = match &spec.net {
        Net::V4 {
            src,
            dst,
            options,
            frag,
            l4,
        } => {
            let body = l4_bytes(*l4, false, spec.payload);
            let mut h = Ipv4Header::new(
                0,
                64,
                IpNumber(l4.number(false)),
                src.octets(),
                dst.octets(),
            )
            .expect("IPv4 header");
            let opts = {
                let mut o = vec![1u8; *options];
                if let Some(last) = o.last_mut() {
                    *last = 0;
                }
                o
            };
            h.options = opts.as_slice().try_into().expect("IPv4 options length");
            h.set_payload_len(body.len()).expect("IPv4 payload fits");
            h.identification = 0x4242;
            match frag {
                Frag::None => {}
                Frag::First => h.more_fragments = true,
                Frag::NonFirst(off) => {
                    h.more_fragments = true;
                    h.fragment_offset = IpFragOffset::try_new(*off & 0x1fff).expect("offset");
                }
            }
            h.header_checksum = h.calc_header_checksum();
            let hdr = h.to_bytes();
            let hl = hdr.len();
            net.extend_from_slice(&hdr);
            net.extend_from_slice(&body);
            (
                IpKind::V4,
                hl,
                hl,
                body.len() - spec.payload,
                matches!(l4, L4::Tcp { .. } | L4::Udp { .. }),
                0x0800,
            )
        }
        Net::V6 {
            src,
            dst,
            exts: e,
            l4,
        } => {
            let body = l4_bytes(*l4, true, spec.payload);
            let mut ext_data = Vec::new();
            for (i, ext) in e.iter().enumerate() {
                let next = e.get(i + 1).map_or(l4.number(true), |n| n.number());
                exts.push(40 + ext_data.len());
                if matches!(ext, Ext::Fragment { .. }) {
                    frag_exts.push(40 + ext_data.len());
                }
                ext_data.extend(ext_bytes(*ext, next));
            }
            let plen = ext_data.len() + body.len();
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::try_new(0x12345).expect("flow label"),
                payload_length: plen.min(usize::from(u16::MAX)) as u16,
                next_header: IpNumber(e.first().map_or(l4.number(true), |x| x.number())),
                hop_limit: 64,
                source: src.octets(),
                destination: dst.octets(),
            };
            net.extend_from_slice(&h.to_bytes());
            net.extend_from_slice(&ext_data);
            let l4_rel = net.len();
            net.extend_from_slice(&body);
            (
                IpKind::V6,
                40,
                l4_rel,
                body.len() - spec.payload,
                matches!(l4, L4::Tcp { .. } | L4::Udp { .. }),
                0x86dd,
            )
        }
        Net::Arp { sender } => {
            let arp = ArpPacket::new(
                ArpHardwareId::ETHERNET,
                EtherType::IPV4,
                ArpOperation::REQUEST,
                &[0x02, 0, 0, 0, 0, 1],
                &sender.octets(),
                &[0; 6],
                &GEN_V4_DESTS[0].octets(),
            )
            .expect("ARP packet");
            net.extend_from_slice(&arp.to_bytes());
            let len = net.len();
            net.extend(payload_bytes(spec.payload, 0));
            (IpKind::None, 0, 0, len, false, 0x0806)
        }
        Net::Other { ethertype } => {
            net.extend(payload_bytes(spec.payload.max(8), 3));
            (IpKind::None, 0, 0, 8, false, *ethertype)
        }
    };

    // Link layer.
    let final_et = spec.ethertype_override.unwrap_or(natural_et);
    let mut data = Vec::with_capacity(14 + 4 * spec.tags.len() + net.len());
    let first_et = spec.tags.first().copied().unwrap_or(final_et);
    data.extend_from_slice(
        &Ethernet2Header {
            source: [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30],
            destination: [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01],
            ether_type: EtherType(first_et),
        }
        .to_bytes(),
    );
    let mut ethertypes = vec![12];
    for (i, _) in spec.tags.iter().enumerate() {
        let inner = spec.tags.get(i + 1).copied().unwrap_or(final_et);
        ethertypes.push(data.len() + 2);
        data.extend_from_slice(
            &SingleVlanHeader {
                pcp: VlanPcp::try_new((i % 8) as u8).expect("pcp"),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(100 + i as u16).expect("vlan id"),
                ether_type: EtherType(inner),
            }
            .to_bytes(),
        );
    }
    let l3 = data.len();
    data.extend_from_slice(&net);
    Built {
        data,
        ethertypes,
        l3,
        ip,
        ip_hdr_end: l3 + ip_hdr_len,
        exts: exts.iter().map(|o| l3 + o).collect(),
        frag_exts: frag_exts.iter().map(|o| l3 + o).collect(),
        l4: l3 + l4_rel,
        l4_end: l3 + l4_rel + l4_hdr_len,
        ported,
    }
}

// ---------------------------------------------------------------------------
// The fixed stacks.

fn v4(i: usize, options: usize, frag: Frag, l4: L4) -> Net {
    Net::V4 {
        src: GEN_V4_SOURCES[i % GEN_V4_SOURCES.len()],
        dst: GEN_V4_DESTS[i % GEN_V4_DESTS.len()],
        options,
        frag,
        l4,
    }
}

fn v6(i: usize, exts: Vec<Ext>, l4: L4) -> Net {
    Net::V6 {
        src: GEN_V6_SOURCES[i % GEN_V6_SOURCES.len()],
        dst: GEN_V6_DESTS[i % GEN_V6_DESTS.len()],
        exts,
        l4,
    }
}

fn tcp(i: usize) -> L4 {
    L4::Tcp {
        sport: GEN_PORTS[i % GEN_PORTS.len()],
        dport: GEN_PORTS[(i + 3) % GEN_PORTS.len()],
        opt_words: 0,
    }
}

fn udp(i: usize) -> L4 {
    L4::Udp {
        sport: GEN_PORTS[(i + 1) % GEN_PORTS.len()],
        dport: GEN_PORTS[(i + 5) % GEN_PORTS.len()],
    }
}

/// The fixed stacks, before truncation.
fn base_specs() -> Vec<Spec> {
    use Ext::*;
    let first = Fragment {
        offset: 0,
        more: true,
    };
    let nonfirst = Fragment {
        offset: 185,
        more: true,
    };
    // (tags, ethertype override, net) per stack; the index picks sources
    // and ports round-robin from the fixed sets.
    type Mk = fn(usize) -> (Vec<u16>, Option<u16>, Net);
    let mut makers: Vec<Mk> = vec![
        |i| (vec![], None, v4(i, 0, Frag::None, tcp(i))),
        |i| (vec![], None, v4(i, 0, Frag::None, udp(i))),
        |i| (vec![], None, v4(i, 0, Frag::None, L4::Icmp)),
        |i| (vec![], None, v4(i, 0, Frag::None, L4::Other(47))),
        |i| (vec![], None, v4(i, 0, Frag::None, L4::Other(132))),
        |i| {
            let l4 = L4::Tcp {
                sport: GEN_PORTS[i % 8],
                dport: 443,
                opt_words: 10,
            };
            (vec![], None, v4(i, 0, Frag::None, l4))
        },
        |i| (vec![], None, v4(i, 4, Frag::None, udp(i))),
        |i| (vec![], None, v4(i, 0, Frag::First, udp(i))),
        |i| (vec![], None, v4(i, 0, Frag::First, tcp(i))),
        |i| (vec![], None, v4(i, 0, Frag::NonFirst(185), udp(i))),
        |i| (vec![], None, v4(i, 0, Frag::NonFirst(1), tcp(i))),
        |i| (vec![], None, v4(i, 0, Frag::NonFirst(0x1fff), udp(i))),
        |i| (vec![], None, v4(i, 12, Frag::NonFirst(3), tcp(i))),
        |i| (vec![0x8100], None, v4(i, 0, Frag::None, tcp(i))),
        |i| (vec![0x8100], None, v4(i, 8, Frag::None, udp(i))),
        |i| (vec![0x8100], None, v6(i, vec![], udp(i))),
        |i| (vec![0x88a8, 0x8100], None, v4(i, 0, Frag::None, udp(i))),
        |i| (vec![0x88a8, 0x8100], None, v6(i, vec![], tcp(i))),
        |i| (vec![0x8100, 0x8100], None, v4(i, 0, Frag::None, tcp(i))),
        |i| (vec![0x8100, 0x88a8], None, v6(i, vec![HopByHop(0)], udp(i))),
        |i| {
            (
                vec![0x88a8, 0x88a8],
                None,
                v4(i, 0, Frag::NonFirst(2), udp(i)),
            )
        },
        |i| {
            (
                vec![0x8100, 0x8100, 0x8100],
                None,
                v4(i, 0, Frag::None, udp(i)),
            )
        },
        |i| (vec![0x88a8, 0x8100, 0x8100], None, v6(i, vec![], tcp(i))),
        |i| (vec![0x9100], None, v4(i, 0, Frag::None, tcp(i))),
        |i| (vec![], None, v6(i, vec![], tcp(i))),
        |i| (vec![], None, v6(i, vec![], udp(i))),
        |i| (vec![], None, v6(i, vec![], L4::Icmp)),
        |i| (vec![], None, v6(i, vec![], L4::Other(59))),
        |i| (vec![], None, v6(i, vec![HopByHop(0)], udp(i))),
        |i| (vec![], None, v6(i, vec![HopByHop(2)], tcp(i))),
        |i| (vec![], None, v6(i, vec![Routing(0)], udp(i))),
        |i| (vec![], None, v6(i, vec![Routing(2)], tcp(i))),
        |i| {
            let f = Fragment {
                offset: 0,
                more: true,
            };
            (vec![], None, v6(i, vec![f], udp(i)))
        },
        |i| {
            let f = Fragment {
                offset: 0,
                more: false,
            };
            (vec![], None, v6(i, vec![f], tcp(i)))
        },
        |i| {
            let f = Fragment {
                offset: 185,
                more: true,
            };
            (vec![], None, v6(i, vec![f], udp(i)))
        },
        |i| {
            let f = Fragment {
                offset: 1,
                more: false,
            };
            (vec![], None, v6(i, vec![f], tcp(i)))
        },
        |i| (vec![], None, v6(i, vec![DestOpts(0)], udp(i))),
        |i| (vec![], None, v6(i, vec![DestOpts(1)], tcp(i))),
        |i| (vec![], None, v6(i, vec![Auth(1)], udp(i))),
        |i| (vec![], None, v6(i, vec![Auth(3)], tcp(i))),
        |i| (vec![], None, v6(i, vec![HopByHop(0)], L4::Icmp)),
    ];
    // Chains (need the fragment constants, so written out below).
    let mut specs: Vec<Spec> = makers
        .drain(..)
        .enumerate()
        .map(|(i, mk)| {
            let (tags, ethertype_override, net) = mk(i);
            Spec {
                name: String::new(),
                tags,
                ethertype_override,
                net,
                payload: 16,
            }
        })
        .collect();
    // (tags, extension headers, transport) per chain.
    type Chain = (Vec<u16>, Vec<Ext>, fn(usize) -> L4);
    let chains: Vec<Chain> = vec![
        // Six: the most the walk takes.
        (
            vec![],
            vec![
                HopByHop(0),
                DestOpts(0),
                Routing(0),
                first,
                Auth(1),
                DestOpts(0),
            ],
            tcp,
        ),
        (
            vec![],
            vec![
                HopByHop(1),
                Routing(0),
                DestOpts(0),
                DestOpts(0),
                Auth(3),
                first,
            ],
            udp,
        ),
        (
            vec![0x8100],
            vec![
                HopByHop(0),
                DestOpts(0),
                Routing(0),
                DestOpts(0),
                Auth(1),
                DestOpts(0),
            ],
            udp,
        ),
        // Seven: malformed (ipv6_ext_chain).
        (
            vec![],
            vec![
                HopByHop(0),
                DestOpts(0),
                Routing(0),
                DestOpts(0),
                first,
                Auth(1),
                DestOpts(0),
            ],
            udp,
        ),
        (vec![0x88a8, 0x8100], vec![HopByHop(0); 7], tcp),
        // A non-first fragment as the sixth header: the walk stops there,
        // before it could see the seventh.
        (
            vec![],
            vec![
                HopByHop(0),
                DestOpts(0),
                Routing(0),
                DestOpts(0),
                Auth(1),
                nonfirst,
                DestOpts(0),
            ],
            udp,
        ),
        // A non-first fragment early in the chain.
        (vec![], vec![HopByHop(0), nonfirst, DestOpts(0)], tcp),
        // Fragment first then non-first (nested fragments).
        (vec![], vec![first, nonfirst], udp),
        // Eight headers.
        (vec![], vec![DestOpts(0); 8], udp),
    ];
    let base = specs.len();
    for (k, (tags, exts, l4)) in chains.into_iter().enumerate() {
        let i = base + k;
        specs.push(Spec {
            name: String::new(),
            tags,
            ethertype_override: None,
            net: v6(i, exts, l4(i)),
            payload: 16,
        });
    }
    // IPv4 options at every IHL from 6 to 15.
    for ihl in 6..=15usize {
        let i = specs.len();
        let l4 = if ihl % 2 == 0 { tcp(i) } else { udp(i) };
        specs.push(Spec {
            name: String::new(),
            tags: vec![],
            ethertype_override: None,
            net: v4(i, (ihl - 5) * 4, Frag::None, l4),
            payload: 16,
        });
    }
    // Mismatched versions, ARP and other ethertypes.
    let mut push = |tags: Vec<u16>, et: Option<u16>, net: Net, payload: usize| {
        specs.push(Spec {
            name: String::new(),
            tags,
            ethertype_override: et,
            net,
            payload,
        })
    };
    push(vec![], Some(0x0800), v6(1, vec![], udp(1)), 16);
    push(vec![], Some(0x0800), v6(2, vec![], tcp(2)), 16);
    push(vec![], Some(0x86dd), v4(3, 0, Frag::None, tcp(3)), 40);
    push(vec![], Some(0x86dd), v4(4, 0, Frag::None, udp(4)), 40);
    push(vec![0x8100], Some(0x0800), v6(5, vec![], udp(5)), 16);
    push(
        vec![],
        None,
        Net::Arp {
            sender: GEN_V4_SOURCES[0],
        },
        0,
    );
    push(
        vec![0x8100],
        None,
        Net::Arp {
            sender: GEN_V4_SOURCES[1],
        },
        0,
    );
    push(
        vec![0x88a8, 0x8100],
        None,
        Net::Arp {
            sender: GEN_V4_SOURCES[2],
        },
        0,
    );
    push(vec![], None, Net::Other { ethertype: 0x88cc }, 32);
    push(vec![], None, Net::Other { ethertype: 0x8847 }, 32);
    push(vec![], None, Net::Other { ethertype: 0x8864 }, 32);
    push(vec![0x8100], None, Net::Other { ethertype: 0x88cc }, 32);

    for s in &mut specs {
        s.name = spec_label(s);
    }
    // Make names unique (two stacks may only differ in their addresses).
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for s in &mut specs {
        let n = seen.entry(s.name.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            s.name = format!("{}~{}", s.name, n);
        }
    }
    specs
}

/// Names of the fixed stacks (`gen:<name>/...`), each of which
/// [`generated_corpus`] emits in full and truncated at every offset.
pub fn stack_names() -> Vec<String> {
    base_specs().into_iter().map(|s| s.name).collect()
}

/// Rewrite the IP length field so the datagram ends exactly at the frame end.
fn fix_ip_length(b: &mut Built) {
    let len = b.data.len();
    match b.ip {
        IpKind::V4 if len >= b.l3 + 4 => {
            let tl = (len - b.l3) as u16;
            b.data[b.l3 + 2..b.l3 + 4].copy_from_slice(&tl.to_be_bytes());
        }
        IpKind::V6 if len >= b.l3 + 6 => {
            let pl = len.saturating_sub(b.l3 + 40) as u16;
            b.data[b.l3 + 4..b.l3 + 6].copy_from_slice(&pl.to_be_bytes());
        }
        _ => {}
    }
}

fn set_ip_end(b: &mut Built, ip_end: usize) {
    match b.ip {
        IpKind::V4 => {
            let tl = (ip_end - b.l3) as u16;
            b.data[b.l3 + 2..b.l3 + 4].copy_from_slice(&tl.to_be_bytes());
        }
        IpKind::V6 => {
            let pl = (ip_end - b.l3 - 40) as u16;
            b.data[b.l3 + 4..b.l3 + 6].copy_from_slice(&pl.to_be_bytes());
        }
        IpKind::None => {}
    }
}

/// Every fixed stack: in full, with Ethernet padding / a trailer, truncated
/// at every offset up to the end of its L4 header, cut with the IP length
/// fixed up to the cut, and with an IP length ending inside the L4 header.
fn fixed_packets(out: &mut Vec<Packet>) {
    for spec in base_specs() {
        let b = build(&spec);
        let name = &spec.name;
        let full = b.data.len();
        let mut push = |variant: String, data: Vec<u8>| {
            out.push(Packet {
                name: format!("gen:{name}/{variant}"),
                data,
            })
        };
        push("full".into(), b.data.clone());
        if full < 60 {
            let mut d = b.data.clone();
            d.resize(60, 0);
            push("pad60".into(), d);
        }
        let mut d = b.data.clone();
        d.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        push("trailer4".into(), d);
        // Every prefix up to the end of the L4 header (raw cut: the IP
        // length fields still describe the whole packet).
        for n in 0..=b.l4_end.min(full) {
            if n < full {
                push(format!("trunc@{n}"), b.data[..n].to_vec());
            }
        }
        if b.ip != IpKind::None && spec.ethertype_override.is_none() {
            // Cut with the IP length fixed to the cut: well-formed IP, then
            // truncated extension headers or L4 header.
            for n in b.ip_hdr_end..=b.l4_end.min(full) {
                let mut c = b.clone();
                c.data.truncate(n);
                fix_ip_length(&mut c);
                push(format!("cutfix@{n}"), c.data);
            }
            // Full frame, IP datagram ending inside (or right at the end of)
            // the L4 header: ports must not be read from the bytes past it.
            if b.ported {
                let hdr = b.l4_end - b.l4;
                for k in [0, 1, hdr - 1, hdr] {
                    let ip_end = b.l4 + k;
                    // IPv6 payload length 0 means jumbogram: skip it.
                    if b.ip == IpKind::V6 && ip_end == b.l3 + 40 {
                        continue;
                    }
                    let mut c = b.clone();
                    set_ip_end(&mut c, ip_end);
                    push(format!("iplen-l4+{k}"), c.data);
                }
            }
            if b.ip == IpKind::V6 {
                // Payload length 0 (jumbogram without a jumbo option).
                let mut c = b.clone();
                set_ip_end(&mut c, b.l3 + 40);
                push("plen0".into(), c.data);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Random packets.

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

fn random_port(rng: &mut StdRng) -> u16 {
    if rng.random_bool(0.85) {
        pick(rng, &GEN_PORTS)
    } else {
        rng.random()
    }
}

fn random_l4(rng: &mut StdRng) -> L4 {
    match rng.random_range(0..100) {
        0..35 => L4::Tcp {
            sport: random_port(rng),
            dport: random_port(rng),
            opt_words: if rng.random_bool(0.2) {
                rng.random_range(1..=10)
            } else {
                0
            },
        },
        35..75 => L4::Udp {
            sport: random_port(rng),
            dport: random_port(rng),
        },
        75..88 => L4::Icmp,
        _ => L4::Other(pick(rng, &[0, 2, 4, 41, 47, 50, 59, 103, 132, 255])),
    }
}

fn random_ext(rng: &mut StdRng) -> Ext {
    let units = |rng: &mut StdRng| {
        if rng.random_bool(0.7) {
            0
        } else {
            rng.random_range(1..=4)
        }
    };
    match rng.random_range(0..6) {
        0 => Ext::HopByHop(units(rng)),
        1 => Ext::Routing(units(rng)),
        2 => Ext::DestOpts(units(rng)),
        3 => Ext::Fragment {
            offset: 0,
            more: rng.random(),
        },
        4 => Ext::Fragment {
            offset: if rng.random_bool(0.5) {
                1
            } else {
                rng.random_range(1..0x2000)
            },
            more: rng.random(),
        },
        _ => Ext::Auth(pick(rng, &[1, 1, 3, 5, 2])),
    }
}

fn random_spec(rng: &mut StdRng) -> Spec {
    let ntags = match rng.random_range(0..100) {
        0..60 => 0,
        60..75 => 1,
        75..90 => 2,
        90..97 => 3,
        _ => 4,
    };
    let tags = (0..ntags)
        .map(|_| {
            if rng.random_bool(0.05) {
                0x9100
            } else {
                pick(rng, &[0x8100, 0x88a8])
            }
        })
        .collect();
    let v4src = |rng: &mut StdRng| {
        if rng.random_bool(0.85) {
            pick(rng, &GEN_V4_SOURCES)
        } else {
            Ipv4Addr::from(rng.random::<u32>())
        }
    };
    let v6src = |rng: &mut StdRng| {
        if rng.random_bool(0.85) {
            pick(rng, &GEN_V6_SOURCES)
        } else {
            Ipv6Addr::from(rng.random::<u128>())
        }
    };
    let mut ethertype_override = None;
    let net = match rng.random_range(0..100) {
        0..45 => Net::V4 {
            src: v4src(rng),
            dst: pick(rng, &GEN_V4_DESTS),
            options: if rng.random_bool(0.6) {
                0
            } else {
                rng.random_range(1..=10) * 4
            },
            frag: match rng.random_range(0..100) {
                0..75 => Frag::None,
                75..87 => Frag::First,
                _ => Frag::NonFirst(if rng.random_bool(0.3) {
                    1
                } else {
                    rng.random_range(1..0x2000)
                }),
            },
            l4: random_l4(rng),
        },
        45..92 => {
            let n = match rng.random_range(0..100) {
                0..40 => 0,
                40..60 => 1,
                60..85 => rng.random_range(2..=5),
                85..93 => 6,
                _ => rng.random_range(7..=9),
            };
            Net::V6 {
                src: v6src(rng),
                dst: pick(rng, &GEN_V6_DESTS),
                exts: (0..n).map(|_| random_ext(rng)).collect(),
                l4: random_l4(rng),
            }
        }
        92..95 => Net::Arp { sender: v4src(rng) },
        95..97 => Net::Other {
            ethertype: pick(
                rng,
                &[0x88cc, 0x8847, 0x8864, 0x0842, 0x9100, 0x0000, 0xffff],
            ),
        },
        _ => {
            // Mismatched version: the other IP header under this ethertype.
            if rng.random_bool(0.5) {
                ethertype_override = Some(0x0800);
                Net::V6 {
                    src: v6src(rng),
                    dst: GEN_V6_DESTS[0],
                    exts: vec![],
                    l4: random_l4(rng),
                }
            } else {
                ethertype_override = Some(0x86dd);
                Net::V4 {
                    src: v4src(rng),
                    dst: GEN_V4_DESTS[0],
                    options: 0,
                    frag: Frag::None,
                    l4: random_l4(rng),
                }
            }
        }
    };
    let payload = match rng.random_range(0..100) {
        0..20 => 0,
        20..85 => rng.random_range(1..=64),
        _ => rng.random_range(65..=1400),
    };
    let mut spec = Spec {
        name: String::new(),
        tags,
        ethertype_override,
        net,
        payload,
    };
    spec.name = spec_label(&spec);
    spec
}

/// Interesting next-header / protocol values: extension headers, TCP, UDP,
/// ICMP, no-next-header, tunnels, and anything.
fn random_next_header(rng: &mut StdRng) -> u8 {
    if rng.random_bool(0.85) {
        pick(
            rng,
            &[
                0, 43, 44, 51, 60, 6, 17, 1, 58, 59, 4, 41, 50, 135, 139, 140,
            ],
        )
    } else {
        rng.random()
    }
}

/// A length field value near the interesting boundaries around `exact`
/// (the correct value) and `max` (what fits the frame), or anything.
fn random_len(rng: &mut StdRng, exact: usize, max: usize, floor: usize) -> u16 {
    let v = match rng.random_range(0..12) {
        0 => 0,
        1 => floor.saturating_sub(1),
        2 => floor,
        3 => exact.saturating_sub(1),
        4 => exact + 1,
        5 => max,
        6 => max + 1,
        7 => max.saturating_sub(1),
        8 => rng.random_range(0..=max + 8),
        9 => usize::from(u16::MAX),
        10 => exact,
        _ => usize::from(rng.random::<u16>()),
    };
    v.min(usize::from(u16::MAX)) as u16
}

fn be16_at(d: &[u8], off: usize) -> usize {
    usize::from(u16::from_be_bytes([d[off], d[off + 1]]))
}

/// Apply one random mutation; returns its label, or `None` when the chosen
/// one does not apply to this frame.
fn mutate(rng: &mut StdRng, b: &mut Built) -> Option<String> {
    let len = b.data.len();
    let has = |off: usize, n: usize| off + n <= len;
    match rng.random_range(0..15) {
        // IHL.
        0 if b.ip == IpKind::V4 && has(b.l3, 1) => {
            let ihl = if rng.random_bool(0.5) {
                rng.random_range(0..=5)
            } else {
                rng.random_range(0..16)
            };
            b.data[b.l3] = (b.data[b.l3] & 0xf0) | ihl;
            Some(format!("ihl={ihl}"))
        }
        // IPv4 total length.
        1 if b.ip == IpKind::V4 && has(b.l3, 4) => {
            let ihl4 = usize::from(b.data[b.l3] & 0x0f) * 4;
            let exact = be16_at(&b.data, b.l3 + 2);
            let v = random_len(rng, exact, len - b.l3, ihl4);
            b.data[b.l3 + 2..b.l3 + 4].copy_from_slice(&v.to_be_bytes());
            Some(format!("tl={v}"))
        }
        // IPv6 payload length.
        2 if b.ip == IpKind::V6 && has(b.l3, 6) => {
            let exact = be16_at(&b.data, b.l3 + 4);
            let v = random_len(rng, exact, len.saturating_sub(b.l3 + 40), 0);
            b.data[b.l3 + 4..b.l3 + 6].copy_from_slice(&v.to_be_bytes());
            Some(format!("plen={v}"))
        }
        // Version nibble.
        3 if b.ip != IpKind::None && has(b.l3, 1) => {
            let v = if rng.random_bool(0.6) {
                pick(rng, &[4u8, 6])
            } else {
                rng.random_range(0..16)
            };
            b.data[b.l3] = (b.data[b.l3] & 0x0f) | (v << 4);
            Some(format!("ver={v}"))
        }
        // Protocol / first next header.
        4 if b.ip != IpKind::None => {
            let off = if b.ip == IpKind::V4 {
                b.l3 + 9
            } else {
                b.l3 + 6
            };
            if !has(off, 1) {
                return None;
            }
            let v = random_next_header(rng);
            b.data[off] = v;
            Some(format!("proto={v}"))
        }
        // An extension header's next header.
        5 if !b.exts.is_empty() => {
            let i = rng.random_range(0..b.exts.len());
            if !has(b.exts[i], 1) {
                return None;
            }
            let v = random_next_header(rng);
            b.data[b.exts[i]] = v;
            Some(format!("ext{i}.nh={v}"))
        }
        // An extension header's length byte.
        6 if !b.exts.is_empty() => {
            let i = rng.random_range(0..b.exts.len());
            if !has(b.exts[i], 2) {
                return None;
            }
            let v = if rng.random_bool(0.6) {
                rng.random_range(0..=8)
            } else {
                rng.random()
            };
            b.data[b.exts[i] + 1] = v;
            Some(format!("ext{i}.len={v}"))
        }
        // IPv4 flags and fragment offset.
        7 if b.ip == IpKind::V4 && has(b.l3 + 6, 2) => {
            let v: u16 = match rng.random_range(0..6) {
                0 => 0,
                1 => 0x2000,
                2 => 0x0001,
                3 => 0x4000,
                4 => 0x1fff,
                _ => rng.random(),
            };
            b.data[b.l3 + 6..b.l3 + 8].copy_from_slice(&v.to_be_bytes());
            Some(format!("frag4={v:#06x}"))
        }
        // IPv6 fragment header offset and M flag.
        8 if !b.frag_exts.is_empty() => {
            let off = pick(rng, &b.frag_exts);
            if !has(off + 2, 2) {
                return None;
            }
            let v: u16 = match rng.random_range(0..5) {
                0 => 0,
                1 => 1,
                2 => 8,
                3 => 9,
                _ => rng.random(),
            };
            b.data[off + 2..off + 4].copy_from_slice(&v.to_be_bytes());
            Some(format!("frag6@{off}={v:#06x}"))
        }
        // An ethertype field (outer or a tag's inner).
        9 => {
            let i = rng.random_range(0..b.ethertypes.len());
            let off = b.ethertypes[i];
            if !has(off, 2) {
                return None;
            }
            let v: u16 = if rng.random_bool(0.85) {
                pick(
                    rng,
                    &[
                        0x8100, 0x88a8, 0x0800, 0x86dd, 0x0806, 0x9100, 0x88cc, 0x8847,
                    ],
                )
            } else {
                rng.random()
            };
            b.data[off..off + 2].copy_from_slice(&v.to_be_bytes());
            Some(format!("et{i}={v:#06x}"))
        }
        // Truncation, biased to the header region.
        10 | 11 => {
            let hi = if rng.random_bool(0.8) {
                (b.l4_end + 8).min(len)
            } else {
                len
            };
            let n = rng.random_range(0..=hi);
            b.data.truncate(n);
            Some(format!("cut={n}"))
        }
        // Trailer bytes (Ethernet padding, FCS, junk).
        12 => {
            let n = rng.random_range(1..=64);
            let fill: u8 = rng.random();
            b.data.extend(std::iter::repeat_n(fill, n));
            Some(format!("trailer={n}"))
        }
        // A random byte in the headers.
        13 if len > 0 => {
            let off = rng.random_range(0..b.l4_end.clamp(1, len));
            let v: u8 = rng.random();
            b.data[off] = v;
            Some(format!("b{off}={v}"))
        }
        // Ports, when the frame has an L4 header.
        14 if b.ported && has(b.l4, 4) => {
            let s = random_port(rng);
            let d = random_port(rng);
            b.data[b.l4..b.l4 + 2].copy_from_slice(&s.to_be_bytes());
            b.data[b.l4 + 2..b.l4 + 4].copy_from_slice(&d.to_be_bytes());
            Some(format!("ports={s}>{d}"))
        }
        _ => None,
    }
}

fn random_packets(seed: u64, n: usize, out: &mut Vec<Packet>) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..n {
        let spec = random_spec(&mut rng);
        let mut b = build(&spec);
        let wanted = match rng.random_range(0..100) {
            0..25 => 0,
            25..65 => 1,
            65..85 => 2,
            _ => rng.random_range(3..=5),
        };
        let mut labels = Vec::new();
        let mut tries = 0;
        while labels.len() < wanted && tries < 40 {
            tries += 1;
            if let Some(l) = mutate(&mut rng, &mut b) {
                labels.push(l);
            }
        }
        if b.data.len() > MAX_FRAME {
            b.data.truncate(MAX_FRAME);
            labels.push(format!("cut={MAX_FRAME}"));
        }
        let muts = if labels.is_empty() {
            "clean".to_string()
        } else {
            labels.join(",")
        };
        out.push(Packet {
            name: format!("gen:rand@{seed:#x}#{i}/{}/{muts}", spec.name),
            data: b.data,
        });
    }
}

/// The generated corpus: every fixed stack (full, padded, with a trailer,
/// truncated at every byte offset through the end of its L4 header, cut
/// with the IP length fixed up, IP length ending inside the L4 header), then
/// [`RANDOM_PACKETS`] random packets from `StdRng::seed_from_u64(seed)`.
/// Deterministic in `seed`; every frame is at most [`MAX_FRAME`] bytes.
pub fn generated_corpus(seed: u64) -> Vec<Packet> {
    generated_corpus_with(seed, RANDOM_PACKETS)
}

/// [`generated_corpus`] with `random` random packets instead of
/// [`RANDOM_PACKETS`].
pub fn generated_corpus_with(seed: u64, random: usize) -> Vec<Packet> {
    let mut out = Vec::new();
    fixed_packets(&mut out);
    random_packets(seed, random, &mut out);
    out
}
