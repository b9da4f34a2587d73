//! Bounded header parsing, exactly as `docs/semantics.md` specifies.
//!
//! Offsets are scalars checked against the frame length; every packet read
//! goes through [`load`], which bounds the offset (so the verifier can track
//! it) and checks the read against `data_end`. `MAX_OFFSET` is larger than
//! any frame XDP can see without multi-buffer (a page), so bounding by it
//! never changes a verdict: an offset beyond it "does not fit" either way.

use aya_ebpf::programs::XdpContext;
use edge_filter_common::{
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, MalformedClass, PROTO_TCP, PROTO_UDP,
};

const MAX_OFFSET: usize = 8192;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Transport of a packet that has ports (ports in network byte order, as
/// the map keys store them).
#[derive(Clone, Copy)]
pub struct Source {
    pub proto: u8,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// Parser result.
pub enum Parsed {
    NonIp,
    Malformed(MalformedClass),
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        ports: Option<Source>,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        ports: Option<Source>,
    },
}

/// Read a `T` at `off` bytes into the frame, or `None` if it does not fit.
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parse one frame.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let frame_len = ctx.data_end() - ctx.data();
    let Some(eth_type) = load::<[u8; 2]>(ctx, 12) else {
        return Parsed::Malformed(MalformedClass::L2Truncated);
    };
    let mut eth_type = be16(eth_type);
    let mut l3 = 14usize;
    // One iteration more than the tags accepted, to see a third tag. Every
    // iteration that does not leave takes one tag, so `tags` counts them.
    for tags in 0..=MAX_VLAN_TAGS {
        if eth_type != ETH_P_8021Q && eth_type != ETH_P_8021AD {
            break;
        }
        if tags == MAX_VLAN_TAGS {
            return Parsed::Malformed(MalformedClass::VlanDepth);
        }
        let Some(tag) = load::<[u8; 4]>(ctx, l3) else {
            return Parsed::Malformed(MalformedClass::L2Truncated);
        };
        eth_type = be16([tag[2], tag[3]]);
        l3 += 4;
    }
    match eth_type {
        ETH_P_IP => parse_v4(ctx, l3, frame_len),
        ETH_P_IPV6 => parse_v6(ctx, l3, frame_len),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize, frame_len: usize) -> Parsed {
    let avail = frame_len - l3;
    let Some(h) = load::<[u8; 20]>(ctx, l3) else {
        return Parsed::Malformed(MalformedClass::Ipv4Header);
    };
    if h[0] >> 4 != 4 {
        return Parsed::Malformed(MalformedClass::IpVersion);
    }
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    if hlen < 20 || hlen > avail {
        return Parsed::Malformed(MalformedClass::Ipv4Header);
    }
    let total = be16([h[2], h[3]]) as usize;
    if total < hlen || total > avail {
        return Parsed::Malformed(MalformedClass::Ipv4Length);
    }
    let src = [h[12], h[13], h[14], h[15]];
    let dst = [h[16], h[17], h[18], h[19]];
    let frag_off = be16([h[6], h[7]]) & 0x1fff;
    let ports = if frag_off != 0 {
        None
    } else {
        ports(ctx, h[9], l3 + hlen, l3 + total)
    };
    Parsed::V4 { src, dst, ports }
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize, frame_len: usize) -> Parsed {
    let avail = frame_len - l3;
    let Some(h) = load::<[u8; 40]>(ctx, l3) else {
        return Parsed::Malformed(MalformedClass::Ipv6Header);
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed(MalformedClass::IpVersion);
    }
    let plen = be16([h[4], h[5]]) as usize;
    if 40 + plen > avail {
        return Parsed::Malformed(MalformedClass::Ipv6Length);
    }
    let ip_end = if plen == 0 { frame_len } else { l3 + 40 + plen };
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);

    let mut next = h[6];
    let mut off = l3 + 40;
    let mut non_first = false;
    // One iteration more than the headers accepted, to see a seventh. Every
    // iteration that does not leave takes one header, so `taken` counts them.
    for taken in 0..=MAX_IPV6_EXT_HEADERS {
        let is_ext = matches!(
            next,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
        );
        if !is_ext {
            break;
        }
        if taken == MAX_IPV6_EXT_HEADERS {
            return Parsed::Malformed(MalformedClass::Ipv6ExtChain);
        }
        let Some(e) = load::<[u8; 2]>(ctx, off) else {
            return Parsed::Malformed(MalformedClass::Ipv6ExtTruncated);
        };
        let len = match next {
            NEXTHDR_FRAGMENT => 8,
            NEXTHDR_AUTH => (e[1] as usize + 2) * 4,
            _ => (e[1] as usize + 1) * 8,
        };
        if off + len > frame_len {
            return Parsed::Malformed(MalformedClass::Ipv6ExtTruncated);
        }
        if next == NEXTHDR_FRAGMENT {
            let Some(f) = load::<[u8; 4]>(ctx, off) else {
                return Parsed::Malformed(MalformedClass::Ipv6ExtTruncated);
            };
            if be16([f[2], f[3]]) >> 3 != 0 {
                non_first = true;
                next = e[0];
                break;
            }
        }
        next = e[0];
        off += len;
    }
    let ports = if non_first {
        None
    } else {
        ports(ctx, next, off, ip_end)
    };
    Parsed::V6 { src, dst, ports }
}

/// Ports of a TCP/UDP header at `l4`, if its base header fits in the frame
/// and before `ip_end`.
#[inline(always)]
fn ports(ctx: &XdpContext, proto: u8, l4: usize, ip_end: usize) -> Option<Source> {
    let need = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return None,
    };
    if l4 + need > ip_end {
        return None;
    }
    // Checks the frame bound for the base header, then reads the ports.
    load::<[u8; 1]>(ctx, l4 + need - 1)?;
    let p = load::<[u8; 4]>(ctx, l4)?;
    Some(Source {
        proto,
        sport: [p[0], p[1]],
        dport: [p[2], p[3]],
    })
}
