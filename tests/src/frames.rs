//! Test frames: one Ethernet frame per (source, protocol, ports), built with
//! etherparse so the headers and checksums are what a real stack would send.
//! The generated corpora (`corpus::generate`) cover the odd shapes; this is
//! the plain packet a test aims at one entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

/// The destination of every frame built here (TEST-NET-1 and the
/// documentation prefix): the filter classifies on the source, so one
/// destination serves every test.
pub const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// See [`DST_V4`].
pub const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// Ethernet frames shorter than this (without the FCS) are padded on a wire.
pub const MIN_FRAME: usize = 60;

/// A frame from `src` to [`DST_V4`]/[`DST_V6`]: TCP (proto 6, a SYN), UDP
/// (17) with those ports, or an ICMP echo request for any other `proto`
/// (ICMPv6 for an IPv6 source; the ports are then unused). With `vlan`, one
/// 802.1Q tag. Not padded: see [`padded`].
pub fn l4_frame(src: IpAddr, proto: u8, sport: u16, dport: u16, vlan: Option<u16>) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]);
    let ip = match (vlan, src) {
        (None, IpAddr::V4(s)) => eth.ipv4(s.octets(), DST_V4.octets(), 64),
        (None, IpAddr::V6(s)) => eth.ipv6(s.octets(), DST_V6.octets(), 64),
        (Some(id), src) => {
            let tagged = eth.single_vlan(id.try_into().expect("a 12-bit VLAN id"));
            match src {
                IpAddr::V4(s) => tagged.ipv4(s.octets(), DST_V4.octets(), 64),
                IpAddr::V6(s) => tagged.ipv6(s.octets(), DST_V6.octets(), 64),
            }
        }
    };
    let mut out = Vec::with_capacity(MIN_FRAME + 20);
    let written = match (proto, src) {
        (6, _) => ip.tcp(sport, dport, 1, 0xffff).syn().write(&mut out, &[]),
        (17, _) => ip.udp(sport, dport).write(&mut out, &[]),
        (_, IpAddr::V4(_)) => ip.icmpv4_echo_request(1, 1).write(&mut out, &[]),
        (_, IpAddr::V6(_)) => ip.icmpv6_echo_request(1, 1).write(&mut out, &[]),
    };
    written.expect("a frame of fixed-size headers serialises");
    out
}

/// `frame` padded with zeros to [`MIN_FRAME`] bytes, as a NIC delivers it.
pub fn padded(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < MIN_FRAME {
        frame.resize(MIN_FRAME, 0);
    }
    frame
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    /// What etherparse reads back: source, protocol and ports, VLAN id.
    fn read(f: &[u8]) -> (IpAddr, Option<(u16, u16)>, bool, Option<u16>) {
        let p = SlicedPacket::from_ethernet(f).expect("a well-formed frame");
        let vlan = p.vlan_ids().first().map(|v| v.value());
        let src = match p.net.as_ref().expect("an IP layer") {
            NetSlice::Ipv4(v4) => IpAddr::V4(v4.header().source_addr()),
            NetSlice::Ipv6(v6) => IpAddr::V6(v6.header().source_addr()),
            NetSlice::Arp(_) => panic!("not IP"),
        };
        let (ports, tcp) = match p.transport {
            Some(TransportSlice::Tcp(t)) => (Some((t.source_port(), t.destination_port())), true),
            Some(TransportSlice::Udp(u)) => (Some((u.source_port(), u.destination_port())), false),
            _ => (None, false),
        };
        (src, ports, tcp, vlan)
    }

    #[test]
    fn frames_carry_what_was_asked() {
        let a4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let a6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9));
        assert_eq!(
            read(&l4_frame(a4, 6, 1234, 80, None)),
            (a4, Some((1234, 80)), true, None)
        );
        assert_eq!(
            read(&l4_frame(a6, 17, 53, 5353, None)),
            (a6, Some((53, 5353)), false, None)
        );
        assert_eq!(
            read(&l4_frame(a4, 17, 1, 2, Some(100))),
            (a4, Some((1, 2)), false, Some(100))
        );
        assert_eq!(read(&l4_frame(a6, 1, 1, 2, None)).1, None);
        assert_eq!(padded(l4_frame(a4, 17, 1, 2, None)).len(), MIN_FRAME);
    }
}
