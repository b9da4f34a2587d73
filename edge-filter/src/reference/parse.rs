//! Frame parsing, exactly as the "Parsing" section of `docs/semantics.md`.
//!
//! Each numbered step of the spec is one block below, in the same order, and
//! every check is written as the spec states it ("fits" = `offset + length <=
//! frame length`). All arithmetic is on `usize` from values of at most 16 bits
//! plus a frame length, so nothing can overflow, and every byte access is
//! preceded by the bounds check that makes it valid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edge_filter_common::{
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, MalformedClass, PROTO_TCP, PROTO_UDP,
};
use serde::Serialize;

use crate::entry::Proto;

/// Ethernet header length (two MACs and the ethertype).
const ETH_HLEN: usize = 14;
/// A VLAN tag: TCI (2 bytes) and the next ethertype (2 bytes).
const VLAN_TAG_LEN: usize = 4;
/// 802.1Q customer tag.
const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 ethertype.
const ETH_P_IP: u16 = 0x0800;
/// IPv6 ethertype.
const ETH_P_IPV6: u16 = 0x86dd;
/// Minimum IPv4 header.
const IPV4_MIN_HLEN: usize = 20;
/// Fixed IPv6 header.
const IPV6_HLEN: usize = 40;
/// Base TCP header (ports must lie inside it to be read).
const TCP_HLEN: usize = 20;
/// UDP header.
const UDP_HLEN: usize = 8;
/// IPv6 extension header numbers the walk knows.
const NH_HOPOPTS: u8 = 0;
/// Routing header.
const NH_ROUTING: u8 = 43;
/// Fragment header.
const NH_FRAGMENT: u8 = 44;
/// Authentication header.
const NH_AH: u8 = 51;
/// Destination options header.
const NH_DSTOPTS: u8 = 60;
/// The fragment header's fixed length.
const FRAG_HLEN: usize = 8;

/// What the parser found, per `docs/semantics.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Neither IPv4 nor IPv6 after at most two VLAN tags; always passed.
    NonIp {
        /// The ethertype after the last VLAN tag.
        ethertype: u16,
    },
    /// Failed one of the parsing checks; no lookups are made.
    Malformed(MalformedClass),
    /// A well-formed IP packet.
    Ip(PacketInfo),
}

/// The fields of an IP packet the verdict depends on (plus a few that make
/// `explain` output and test failures readable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PacketInfo {
    /// Source address (what entries match).
    pub src: IpAddr,
    /// Destination address (informational only).
    pub dst: IpAddr,
    /// Final protocol: IPv4's protocol field; for IPv6 the first next-header
    /// value that is not an extension header, or 44 (fragment) when the walk
    /// stopped at a non-first fragment.
    pub proto: u8,
    /// `(source, destination)` ports, only when the TCP/UDP base header fits
    /// per spec step 6.
    pub ports: Option<(u16, u16)>,
    /// VLAN tags skipped (0..=2).
    pub vlan_tags: u8,
    /// IPv4 fragment offset != 0, or an IPv6 fragment header with offset != 0.
    pub non_first_fragment: bool,
}

impl PacketInfo {
    /// The transport tuple entries with a port qualifier are compared with:
    /// `None` unless the packet has ports (which implies TCP or UDP).
    pub fn transport(&self) -> Option<(Proto, u16, u16)> {
        let (sport, dport) = self.ports?;
        let proto = match self.proto {
            PROTO_TCP => Proto::Tcp,
            PROTO_UDP => Proto::Udp,
            // Unreachable by construction (ports are only read for TCP/UDP);
            // answering "no ports" keeps the function total without a panic.
            _ => return None,
        };
        Some((proto, sport, dport))
    }
}

/// Big-endian u16 at `off`. Callers have checked `off + 2 <= frame.len()`.
fn be16(frame: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([frame[off], frame[off + 1]])
}

/// Whether `len` bytes at `off` lie inside the frame (the spec's "fits").
fn fits(frame: &[u8], off: usize, len: usize) -> bool {
    off + len <= frame.len()
}

/// Parse an Ethernet frame per `docs/semantics.md`.
pub fn parse(frame: &[u8]) -> Parsed {
    // 1. Ethernet.
    if !fits(frame, 0, ETH_HLEN) {
        return Parsed::Malformed(MalformedClass::L2Truncated);
    }
    let mut ethertype = be16(frame, 12);
    let mut off = ETH_HLEN;

    // 2. VLAN: the depth check comes before the fit check, so a third tag is
    // `vlan_depth` even when its bytes are missing.
    let mut tags: u8 = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if u32::from(tags) == MAX_VLAN_TAGS {
            return Parsed::Malformed(MalformedClass::VlanDepth);
        }
        if !fits(frame, off, VLAN_TAG_LEN) {
            return Parsed::Malformed(MalformedClass::L2Truncated);
        }
        ethertype = be16(frame, off + 2);
        off += VLAN_TAG_LEN;
        tags += 1;
    }

    // 3. Dispatch.
    let l3 = off;
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3, tags),
        ETH_P_IPV6 => parse_ipv6(frame, l3, tags),
        _ => Parsed::NonIp { ethertype },
    }
}

/// Step 4: IPv4 at `l3`.
fn parse_ipv4(frame: &[u8], l3: usize, vlan_tags: u8) -> Parsed {
    let avail = frame.len() - l3;
    // 4.1
    if avail < IPV4_MIN_HLEN {
        return Parsed::Malformed(MalformedClass::Ipv4Header);
    }
    // 4.2
    if frame[l3] >> 4 != 4 {
        return Parsed::Malformed(MalformedClass::IpVersion);
    }
    // 4.3
    let ihl = usize::from(frame[l3] & 0x0f);
    if ihl < 5 || ihl * 4 > avail {
        return Parsed::Malformed(MalformedClass::Ipv4Header);
    }
    // 4.4
    let total = usize::from(be16(frame, l3 + 2));
    if total < ihl * 4 || total > avail {
        return Parsed::Malformed(MalformedClass::Ipv4Length);
    }
    let l4 = l3 + ihl * 4;
    let ip_end = l3 + total;
    let src = ipv4_at(frame, l3 + 12);
    let dst = ipv4_at(frame, l3 + 16);
    let proto = frame[l3 + 9];
    let non_first_fragment = be16(frame, l3 + 6) & 0x1fff != 0;
    Parsed::Ip(PacketInfo {
        src,
        dst,
        proto,
        ports: ports(frame, l4, ip_end, proto, non_first_fragment),
        vlan_tags,
        non_first_fragment,
    })
}

/// Step 5: IPv6 at `l3`.
fn parse_ipv6(frame: &[u8], l3: usize, vlan_tags: u8) -> Parsed {
    let avail = frame.len() - l3;
    // 5.1
    if avail < IPV6_HLEN {
        return Parsed::Malformed(MalformedClass::Ipv6Header);
    }
    // 5.2
    if frame[l3] >> 4 != 6 {
        return Parsed::Malformed(MalformedClass::IpVersion);
    }
    // 5.3
    let payload_len = usize::from(be16(frame, l3 + 4));
    if IPV6_HLEN + payload_len > avail {
        return Parsed::Malformed(MalformedClass::Ipv6Length);
    }
    let ip_end = if payload_len == 0 {
        frame.len() // jumbogram: the frame is the only bound we have
    } else {
        l3 + IPV6_HLEN + payload_len
    };
    let src = ipv6_at(frame, l3 + 8);
    let dst = ipv6_at(frame, l3 + 24);

    // Extension header walk. Bounds are the frame (not `ip_end`): the spec
    // says "must fit", which is defined against the frame length.
    let mut next = frame[l3 + 6];
    let mut l4 = l3 + IPV6_HLEN;
    let mut taken: u32 = 0;
    let mut non_first_fragment = false;
    while is_ext_header(next) {
        if taken == MAX_IPV6_EXT_HEADERS {
            return Parsed::Malformed(MalformedClass::Ipv6ExtChain);
        }
        if !fits(frame, l4, 2) {
            return Parsed::Malformed(MalformedClass::Ipv6ExtTruncated);
        }
        let len = match next {
            NH_FRAGMENT => FRAG_HLEN,
            NH_AH => (usize::from(frame[l4 + 1]) + 2) * 4,
            // hop-by-hop, routing, destination options
            _ => (usize::from(frame[l4 + 1]) + 1) * 8,
        };
        if !fits(frame, l4, len) {
            return Parsed::Malformed(MalformedClass::Ipv6ExtTruncated);
        }
        taken += 1;
        if next == NH_FRAGMENT && be16(frame, l4 + 2) >> 3 != 0 {
            // The walk stops *at* the fragment header: `next` stays 44.
            non_first_fragment = true;
            break;
        }
        next = frame[l4];
        l4 += len;
    }
    let proto = next;
    Parsed::Ip(PacketInfo {
        src,
        dst,
        proto,
        ports: ports(frame, l4, ip_end, proto, non_first_fragment),
        vlan_tags,
        non_first_fragment,
    })
}

/// The extension headers the spec walks (others, e.g. ESP 50 or "no next
/// header" 59, end the walk as the final protocol).
fn is_ext_header(nh: u8) -> bool {
    matches!(
        nh,
        NH_HOPOPTS | NH_ROUTING | NH_DSTOPTS | NH_FRAGMENT | NH_AH
    )
}

/// Step 6: the ports, when the base TCP/UDP header lies inside both the frame
/// and `ip_end`.
fn ports(
    frame: &[u8],
    l4: usize,
    ip_end: usize,
    proto: u8,
    non_first_fragment: bool,
) -> Option<(u16, u16)> {
    if non_first_fragment {
        return None;
    }
    let hlen = match proto {
        PROTO_TCP => TCP_HLEN,
        PROTO_UDP => UDP_HLEN,
        _ => return None,
    };
    if l4 + hlen > frame.len().min(ip_end) {
        return None;
    }
    Some((be16(frame, l4), be16(frame, l4 + 2)))
}

/// IPv4 address at `off` (caller checked 4 bytes fit).
fn ipv4_at(frame: &[u8], off: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        frame[off],
        frame[off + 1],
        frame[off + 2],
        frame[off + 3],
    ))
}

/// IPv6 address at `off` (caller checked 16 bytes fit).
fn ipv6_at(frame: &[u8], off: usize) -> IpAddr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&frame[off..off + 16]);
    IpAddr::V6(Ipv6Addr::from(octets))
}

#[cfg(test)]
mod tests {
    //! One test per spec check, in spec order, plus the edges between checks
    //! (which check wins when a frame fails two).

    use super::*;
    use crate::reference::testframes::*;

    use MalformedClass::*;

    const A4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

    fn a6() -> Ipv6Addr {
        "2001:db8:aa::7".parse().unwrap()
    }

    fn malformed(f: &Frame) -> MalformedClass {
        match parse(f.bytes()) {
            Parsed::Malformed(c) => c,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    fn ip(f: &Frame) -> PacketInfo {
        match parse(f.bytes()) {
            Parsed::Ip(i) => i,
            other => panic!("expected IP, got {other:?}"),
        }
    }

    /// Concatenate byte slices.
    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    // ---- 1. Ethernet -------------------------------------------------------

    #[test]
    fn ethernet_shorter_than_14_is_l2_truncated() {
        for len in 0..14 {
            let mut f = v4_frame(A4, 6, 0, &tcp(1, 2));
            f.truncate(len);
            assert_eq!(malformed(&f), L2Truncated, "len {len}");
        }
    }

    #[test]
    fn ethernet_only_ipv4_is_ipv4_header_not_l2() {
        // 14 bytes fit; avail = 0 < 20.
        assert_eq!(malformed(&Frame::eth(0x0800)), Ipv4Header);
        assert_eq!(malformed(&Frame::eth(0x86dd)), Ipv6Header);
    }

    // ---- 2. VLAN -----------------------------------------------------------

    #[test]
    fn vlan_tag_must_fit() {
        for tpid in [0x8100, 0x88a8] {
            let mut f = Frame::eth_vlan(&[tpid], 0x0806);
            assert_eq!(parse(f.bytes()), Parsed::NonIp { ethertype: 0x0806 });
            for len in 14..18 {
                f.truncate(len);
                assert_eq!(malformed(&f), L2Truncated, "tpid {tpid:#x} len {len}");
            }
        }
    }

    #[test]
    fn second_tag_must_fit() {
        let mut f = Frame::eth_vlan(&[0x88a8, 0x8100], 0x0806);
        assert_eq!(f.bytes().len(), 22);
        f.truncate(21);
        assert_eq!(malformed(&f), L2Truncated);
    }

    #[test]
    fn one_and_two_tags_any_order() {
        let l4 = tcp(1111, 80);
        let ip4 = cat(&[&ipv4(A4, A4, 6, 0, l4.len()), &l4]);
        for tpids in [
            &[0x8100][..],
            &[0x88a8],
            &[0x88a8, 0x8100],
            &[0x8100, 0x8100],
            &[0x8100, 0x88a8],
            &[0x88a8, 0x88a8],
        ] {
            let mut f = Frame::eth_vlan(tpids, 0x0800);
            f.push(&ip4);
            let i = ip(&f);
            assert_eq!(i.vlan_tags as usize, tpids.len());
            assert_eq!(i.src, IpAddr::V4(A4));
            assert_eq!(i.ports, Some((1111, 80)));
        }
    }

    #[test]
    fn third_tag_is_vlan_depth_even_when_missing() {
        let mut f = Frame::eth_vlan(&[0x88a8, 0x8100], 0x8100);
        // The third tag's bytes are absent: depth is checked first.
        assert_eq!(malformed(&f), VlanDepth);
        f.push(&[0, 100, 0x08, 0x00]).push(&[0; 40]);
        assert_eq!(malformed(&f), VlanDepth);
        let f = Frame::eth_vlan(&[0x8100, 0x8100], 0x88a8);
        assert_eq!(malformed(&f), VlanDepth);
    }

    // ---- 3. Dispatch -------------------------------------------------------

    #[test]
    fn non_ip_ethertypes_pass_through() {
        for et in [0x0806, 0x88cc, 0x8847, 0x8864, 0x0000, 0x86de, 0x0801] {
            let mut f = Frame::eth(et);
            f.pad_to(60);
            assert_eq!(parse(f.bytes()), Parsed::NonIp { ethertype: et });
        }
        // Behind a tag too, and with nothing after the header.
        let f = Frame::eth_vlan(&[0x8100], 0x0806);
        assert_eq!(parse(f.bytes()), Parsed::NonIp { ethertype: 0x0806 });
    }

    // ---- 4. IPv4 -----------------------------------------------------------

    #[test]
    fn ipv4_19_bytes_is_header_even_with_bad_version() {
        let mut f = v4_frame(A4, 17, 0, &[]);
        f.truncate(L3 + 19);
        assert_eq!(malformed(&f), Ipv4Header);
        f.set(L3, 0x65);
        assert_eq!(malformed(&f), Ipv4Header, "4.1 precedes 4.2");
    }

    #[test]
    fn ipv4_version_checked_before_ihl() {
        let mut f = v4_frame(A4, 17, 0, &udp(1, 2));
        f.set(L3, 0x65);
        assert_eq!(malformed(&f), IpVersion);
        f.set(L3, 0x64); // bad version and IHL 4
        assert_eq!(malformed(&f), IpVersion, "4.2 precedes 4.3");
        f.set(L3, 0x05);
        assert_eq!(malformed(&f), IpVersion);
    }

    #[test]
    fn ipv4_ihl_below_5_is_header() {
        for ihl in 0..5u8 {
            let mut f = v4_frame(A4, 17, 0, &udp(1, 2));
            f.set(L3, 0x40 | ihl);
            assert_eq!(malformed(&f), Ipv4Header, "ihl {ihl}");
        }
    }

    #[test]
    fn ipv4_ihl_beyond_frame_is_header_and_precedes_length() {
        // 28 bytes available, IHL 8 = 32 bytes.
        let mut f = v4_frame(A4, 17, 0, &udp(1, 2));
        f.set(L3, 0x48);
        assert_eq!(malformed(&f), Ipv4Header);
        f.set16(L3 + 2, 0); // also a bad total length: 4.3 comes first
        assert_eq!(malformed(&f), Ipv4Header);
        // IHL 7 = 28 bytes fits exactly: now only the total length matters.
        f.set(L3, 0x47);
        assert_eq!(malformed(&f), Ipv4Length);
        f.set16(L3 + 2, 28);
        let i = ip(&f);
        assert_eq!(i.ports, None, "UDP would start at 28 = ip_end");
    }

    #[test]
    fn ipv4_total_length_bounds() {
        let base = v4_frame(A4, 6, 0, &tcp(5, 6)); // total 40, avail 40
        for (total, ok) in [(0, false), (19, false), (20, true), (40, true), (41, false)] {
            let mut f = base.clone();
            f.set16(L3 + 2, total);
            if ok {
                ip(&f);
            } else {
                assert_eq!(malformed(&f), Ipv4Length, "total {total}");
            }
        }
        // With options (IHL 6): 23 < 24 is too short, 24 is fine.
        let mut f = base.clone();
        f.set(L3, 0x46).set16(L3 + 2, 23);
        assert_eq!(malformed(&f), Ipv4Length);
        f.set16(L3 + 2, 24);
        assert_eq!(ip(&f).ports, None);
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let mut f = Frame::eth(0x0800);
        let mut h = ipv4(A4, A4, 6, 0, 4 + 20);
        h[0] = 0x46;
        f.push(&h).push(&[1, 1, 1, 0]).push(&tcp(443, 50000));
        let i = ip(&f);
        assert_eq!(i.ports, Some((443, 50000)));
        assert_eq!(i.proto, 6);
        assert_eq!(i.dst, IpAddr::V4(A4));
    }

    #[test]
    fn ipv4_fields() {
        let f = v4_frame(A4, 17, 0, &udp(53, 3333));
        let i = ip(&f);
        assert_eq!(
            i,
            PacketInfo {
                src: IpAddr::V4(A4),
                dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                proto: 17,
                ports: Some((53, 3333)),
                vlan_tags: 0,
                non_first_fragment: false,
            }
        );
        assert_eq!(i.transport(), Some((Proto::Udp, 53, 3333)));
    }

    #[test]
    fn ipv4_fragments() {
        // Offset != 0: non-first, no ports, whatever the flags.
        for frag in [0x0001, 0x2001, 0x4001, 0x1fff, 0x3fff, 0x0100] {
            let i = ip(&v4_frame(A4, 6, frag, &tcp(1, 2)));
            assert!(i.non_first_fragment, "{frag:#x}");
            assert_eq!(i.ports, None);
            assert_eq!(i.proto, 6);
        }
        // Offset 0: MF (first fragment), DF, reserved bit: ports parsed.
        for frag in [0x0000, 0x2000, 0x4000, 0x8000, 0xe000] {
            let i = ip(&v4_frame(A4, 6, frag, &tcp(1, 2)));
            assert!(!i.non_first_fragment, "{frag:#x}");
            assert_eq!(i.ports, Some((1, 2)));
        }
    }

    // ---- 6. Ports (IPv4) ---------------------------------------------------

    #[test]
    fn truncated_l4_has_no_ports() {
        let t = tcp(1, 2);
        assert_eq!(ip(&v4_frame(A4, 6, 0, &t[..19])).ports, None);
        assert_eq!(ip(&v4_frame(A4, 6, 0, &t)).ports, Some((1, 2)));
        let u = udp(3, 4);
        assert_eq!(ip(&v4_frame(A4, 17, 0, &u[..7])).ports, None);
        assert_eq!(ip(&v4_frame(A4, 17, 0, &u)).ports, Some((3, 4)));
        assert_eq!(ip(&v4_frame(A4, 17, 0, &[])).ports, None);
    }

    #[test]
    fn ports_must_lie_inside_ip_end_not_just_the_frame() {
        // Total length covers 8 bytes of L4; Ethernet padding brings the frame
        // to 60 bytes, so a full TCP header lies in the frame but not in the
        // IP packet.
        let t = tcp(1, 2);
        let mut f = v4_frame(A4, 6, 0, &t[..8]);
        f.push(&t[8..]).pad_to(60);
        assert_eq!(f.bytes().len(), 60);
        let i = ip(&f);
        assert_eq!(i.ports, None);
        assert_eq!(i.proto, 6);
        // UDP's 8 bytes do fit inside ip_end: padding is irrelevant.
        let mut f = v4_frame(A4, 17, 0, &udp(7, 8));
        f.pad_to(60);
        assert_eq!(ip(&f).ports, Some((7, 8)));
    }

    #[test]
    fn other_protocols_have_no_ports() {
        for proto in [1, 47, 50, 132, 58, 0] {
            let i = ip(&v4_frame(A4, proto, 0, &tcp(1, 2)));
            assert_eq!(i.ports, None);
            assert_eq!(i.proto, proto);
            assert_eq!(i.transport(), None);
        }
    }

    // ---- 5. IPv6 -----------------------------------------------------------

    #[test]
    fn ipv6_39_bytes_is_header_even_with_bad_version() {
        let mut f = v6_frame(a6(), 59, &[]);
        f.truncate(L3 + 39);
        assert_eq!(malformed(&f), Ipv6Header);
        f.set(L3, 0x40);
        assert_eq!(malformed(&f), Ipv6Header, "5.1 precedes 5.2");
    }

    #[test]
    fn ipv6_version_checked_before_length() {
        let mut f = v6_frame(a6(), 17, &udp(1, 2));
        f.set(L3, 0x45);
        assert_eq!(malformed(&f), IpVersion);
        f.set16(L3 + 4, 9999);
        assert_eq!(malformed(&f), IpVersion, "5.2 precedes 5.3");
        // An IPv4 header behind the IPv6 ethertype is a version mismatch.
        let mut f = Frame::eth(0x86dd);
        f.push(&ipv4(A4, A4, 17, 0, 28))
            .push(&udp(1, 2))
            .pad_to(L3 + 48);
        assert_eq!(malformed(&f), IpVersion);
        // And the reverse.
        let mut f = Frame::eth(0x0800);
        f.push(&ipv6(a6(), a6(), 59, 0));
        assert_eq!(malformed(&f), IpVersion);
    }

    #[test]
    fn ipv6_payload_length_bounds() {
        let mut f = v6_frame(a6(), 17, &udp(1, 2)); // payload 8, avail 48
        f.set16(L3 + 4, 9);
        assert_eq!(malformed(&f), Ipv6Length);
        f.set16(L3 + 4, 8);
        assert_eq!(ip(&f).ports, Some((1, 2)));
        f.set16(L3 + 4, 7);
        assert_eq!(ip(&f).ports, None, "UDP header crosses ip_end");
    }

    #[test]
    fn ipv6_jumbogram_ip_end_is_frame_end() {
        let mut f = v6_frame(a6(), 6, &tcp(8080, 22));
        f.set16(L3 + 4, 0);
        assert_eq!(ip(&f).ports, Some((8080, 22)));
        // Nothing after the fixed header: well-formed, no ports.
        let mut f = v6_frame(a6(), 6, &[]);
        f.set16(L3 + 4, 0);
        let i = ip(&f);
        assert_eq!(i.ports, None);
        assert_eq!(i.proto, 6);
        // Truncated TCP in a jumbogram.
        let t = tcp(1, 2);
        let mut f = v6_frame(a6(), 6, &t[..19]);
        f.set16(L3 + 4, 0);
        assert_eq!(ip(&f).ports, None);
    }

    #[test]
    fn ipv6_fields() {
        let f = v6_frame(a6(), 17, &udp(500, 4500));
        assert_eq!(
            ip(&f),
            PacketInfo {
                src: IpAddr::V6(a6()),
                dst: "2001:db8::1".parse().unwrap(),
                proto: 17,
                ports: Some((500, 4500)),
                vlan_tags: 0,
                non_first_fragment: false,
            }
        );
    }

    #[test]
    fn ipv6_padding_beyond_ip_end() {
        let t = tcp(1, 2);
        let mut f = v6_frame(a6(), 6, &t[..8]);
        f.push(&t[8..]).pad_to(100);
        assert_eq!(ip(&f).ports, None);
    }

    #[test]
    fn ipv6_ext_chain_of_each_kind_reaches_l4() {
        let payload = cat(&[
            &ext_opts(43, 0),       // hop-by-hop, 8 bytes
            &ext_opts(44, 1),       // routing, 16 bytes
            &ext_frag(51, 0, true), // first fragment: walk continues
            &ext_ah(60, 4),         // AH, 24 bytes
            &ext_opts(6, 2),        // destination options, 24 bytes
            &tcp(179, 40000),
        ]);
        let i = ip(&v6_frame(a6(), 0, &payload));
        assert_eq!(i.proto, 6);
        assert_eq!(i.ports, Some((179, 40000)));
        assert!(!i.non_first_fragment);
    }

    /// `n` hop-by-hop/destination-options headers, the last pointing at `last`.
    fn chain(n: usize, last: u8) -> Vec<u8> {
        let mut v = Vec::new();
        for k in 0..n {
            v.extend(ext_opts(if k + 1 == n { last } else { 60 }, 0));
        }
        v
    }

    #[test]
    fn six_ext_headers_ok_seventh_is_chain() {
        let p = cat(&[&chain(6, 17), &udp(1, 2)]);
        let i = ip(&v6_frame(a6(), 0, &p));
        assert_eq!((i.proto, i.ports), (17, Some((1, 2))));
        let p = cat(&[&chain(6, 59)]);
        assert_eq!(ip(&v6_frame(a6(), 60, &p)).proto, 59);
        let p = cat(&[&chain(7, 17), &udp(1, 2)]);
        assert_eq!(malformed(&v6_frame(a6(), 0, &p)), Ipv6ExtChain);
    }

    #[test]
    fn seventh_ext_header_is_chain_even_when_absent() {
        // Six complete headers, the sixth naming a seventh that is not there:
        // the count check precedes the fit check.
        let p = chain(6, 44);
        assert_eq!(malformed(&v6_frame(a6(), 0, &p)), Ipv6ExtChain);
        let p = chain(6, 0);
        assert_eq!(malformed(&v6_frame(a6(), 0, &p)), Ipv6ExtChain);
    }

    #[test]
    fn ext_header_fit_checks() {
        // No bytes, one byte: the first 2 do not fit.
        for nh in [0, 43, 60, 44, 51] {
            assert_eq!(malformed(&v6_frame(a6(), nh, &[])), Ipv6ExtTruncated);
            assert_eq!(malformed(&v6_frame(a6(), nh, &[6])), Ipv6ExtTruncated);
        }
        // Options header announcing 16 bytes with 15 present.
        let h = ext_opts(6, 1);
        assert_eq!(malformed(&v6_frame(a6(), 0, &h[..15])), Ipv6ExtTruncated);
        assert_eq!(ip(&v6_frame(a6(), 0, &h)).proto, 6);
        // Fragment header: all 8 bytes, 7 are not enough (even for offset 0).
        let h = ext_frag(17, 0, false);
        assert_eq!(malformed(&v6_frame(a6(), 44, &h[..7])), Ipv6ExtTruncated);
        let h = ext_frag(17, 5, false);
        assert_eq!(malformed(&v6_frame(a6(), 44, &h[..7])), Ipv6ExtTruncated);
        // AH: (len + 2) * 4.
        let h = ext_ah(17, 1); // 12 bytes
        assert_eq!(h.len(), 12);
        assert_eq!(malformed(&v6_frame(a6(), 51, &h[..11])), Ipv6ExtTruncated);
        assert_eq!(ip(&v6_frame(a6(), 51, &h)).proto, 17);
        // Truncation of a later header in the chain.
        let p = cat(&[&ext_opts(60, 0), &ext_opts(6, 3)[..20]]);
        assert_eq!(malformed(&v6_frame(a6(), 0, &p)), Ipv6ExtTruncated);
    }

    #[test]
    fn ext_headers_are_bounded_by_the_frame_not_ip_end() {
        // Payload length 8 covers only a hop-by-hop header; the destination
        // options header after it lies in Ethernet padding. "Fits" is defined
        // against the frame, so it is walked, and the TCP header is outside
        // ip_end: no ports.
        let p = cat(&[&ext_opts(60, 0), &ext_opts(6, 0), &tcp(1, 2)]);
        let mut f = v6_frame(a6(), 0, &p);
        f.set16(L3 + 4, 8);
        let i = ip(&f);
        assert_eq!((i.proto, i.ports), (6, None));
        // A truncated extension header inside the padding is still malformed.
        let mut f = v6_frame(a6(), 0, &p[..12]);
        f.set16(L3 + 4, 8);
        assert_eq!(malformed(&f), Ipv6ExtTruncated);
    }

    #[test]
    fn ipv6_non_first_fragment() {
        for (offset, more) in [(1, true), (1, false), (0x1fff, false), (100, true)] {
            let p = cat(&[&ext_frag(6, offset, more), &tcp(1, 2)]);
            let i = ip(&v6_frame(a6(), 44, &p));
            assert!(i.non_first_fragment);
            assert_eq!(i.ports, None);
            assert_eq!(i.proto, 44, "walk stops at the fragment header");
        }
        // After other headers; and the walk stops, so a would-be seventh or a
        // truncated header after the fragment is never examined.
        let p = cat(&[&chain(5, 44), &ext_frag(0, 3, false)]);
        let i = ip(&v6_frame(a6(), 0, &p));
        assert!(i.non_first_fragment);
        assert_eq!(i.proto, 44);
        let p = cat(&[&ext_frag(0, 3, false), &[0, 5]]);
        assert!(ip(&v6_frame(a6(), 44, &p)).non_first_fragment);
    }

    #[test]
    fn ipv6_first_fragment_continues() {
        for more in [true, false] {
            let p = cat(&[&ext_frag(17, 0, more), &udp(9, 10)]);
            let i = ip(&v6_frame(a6(), 44, &p));
            assert!(!i.non_first_fragment);
            assert_eq!((i.proto, i.ports), (17, Some((9, 10))));
        }
        // The 13-bit offset ignores the reserved and M bits.
        let mut h = ext_frag(17, 0, true);
        h[3] |= 0x06;
        let p = cat(&[&h, &udp(9, 10)]);
        assert!(!ip(&v6_frame(a6(), 44, &p)).non_first_fragment);
    }

    #[test]
    fn ipv6_non_ext_next_headers_end_the_walk() {
        for nh in [58, 50, 59, 1, 4, 41, 135, 139, 140, 253] {
            let i = ip(&v6_frame(a6(), nh, &tcp(1, 2)));
            assert_eq!((i.proto, i.ports), (nh, None));
        }
        let i = ip(&v6_frame(a6(), 0, &cat(&[&ext_opts(50, 0), &[0; 16]])));
        assert_eq!((i.proto, i.ports), (50, None));
    }

    #[test]
    fn ipv6_behind_vlan_tags() {
        let mut f = Frame::eth_vlan(&[0x88a8, 0x8100], 0x86dd);
        let l4 = udp(1, 2);
        f.push(&ipv6(a6(), a6(), 17, 8)).push(&l4);
        let i = ip(&f);
        assert_eq!((i.vlan_tags, i.ports), (2, Some((1, 2))));
        // avail is measured from l3 after the tags.
        f.truncate(22 + 39);
        assert_eq!(malformed(&f), Ipv6Header);
    }

    #[test]
    fn ipv4_behind_tag_avail_from_l3() {
        let mut f = Frame::eth_vlan(&[0x8100], 0x0800);
        f.push(&ipv4(A4, A4, 17, 0, 8)).push(&udp(1, 2));
        assert_eq!(ip(&f).vlan_tags, 1);
        f.truncate(18 + 19);
        assert_eq!(malformed(&f), Ipv4Header);
    }
}
