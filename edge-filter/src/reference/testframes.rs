//! Hand-rolled frame builders for the reference tests.
//!
//! Deliberately byte-level and dumb (no packet crate): each builder writes
//! exactly the fields the spec reads and leaves everything else zero, so a
//! test can corrupt any single field afterwards with [`Frame::set`] /
//! [`Frame::set16`] and know nothing else changed.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Offset of the L3 header in an untagged frame.
pub const L3: usize = 14;

/// A frame under construction.
#[derive(Clone, Debug, Default)]
pub struct Frame(pub Vec<u8>);

impl Frame {
    /// Ethernet header with `ethertype` (MACs zero).
    pub fn eth(ethertype: u16) -> Self {
        let mut f = Frame(vec![0; 12]);
        f.push16(ethertype);
        f
    }

    /// Ethernet with VLAN tags: `tpids[0]` is the outer ethertype, each tag
    /// then carries the next TPID, and the last tag carries `inner`.
    pub fn eth_vlan(tpids: &[u16], inner: u16) -> Self {
        let mut f = Frame::eth(tpids[0]);
        for (i, _) in tpids.iter().enumerate() {
            f.push16(0x0064); // TCI: VID 100
            f.push16(tpids.get(i + 1).copied().unwrap_or(inner));
        }
        f
    }

    /// Append a big-endian u16.
    pub fn push16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Append bytes.
    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Overwrite one byte.
    pub fn set(&mut self, off: usize, v: u8) -> &mut Self {
        self.0[off] = v;
        self
    }

    /// Overwrite a big-endian u16.
    pub fn set16(&mut self, off: usize, v: u16) -> &mut Self {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
        self
    }

    /// Cut the frame to `len` bytes.
    pub fn truncate(&mut self, len: usize) -> &mut Self {
        self.0.truncate(len);
        self
    }

    /// Pad with zero bytes to `len` (Ethernet minimum-size padding).
    pub fn pad_to(&mut self, len: usize) -> &mut Self {
        self.0.resize(len.max(self.0.len()), 0);
        self
    }

    /// The frame bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A 20-byte IPv4 header (IHL 5) with total length `20 + payload_len`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, frag: u16, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h
}

/// A 40-byte IPv6 header.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: u16) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// A 20-byte TCP header.
pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 0x50;
    h
}

/// An 8-byte UDP header (length field covers just the header).
pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h
}

/// An IPv6 options-style extension header (hop-by-hop 0, routing 43,
/// destination options 60) of `(hdr_ext_len + 1) * 8` bytes.
pub fn ext_opts(next: u8, hdr_ext_len: u8) -> Vec<u8> {
    let mut h = vec![0u8; (usize::from(hdr_ext_len) + 1) * 8];
    h[0] = next;
    h[1] = hdr_ext_len;
    h
}

/// An IPv6 authentication header of `(payload_len + 2) * 4` bytes.
pub fn ext_ah(next: u8, payload_len: u8) -> Vec<u8> {
    let mut h = vec![0u8; (usize::from(payload_len) + 2) * 4];
    h[0] = next;
    h[1] = payload_len;
    h
}

/// An IPv6 fragment header with fragment offset `offset` (in 8-byte units)
/// and the M flag `more`.
pub fn ext_frag(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0] = next;
    h[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    h
}

/// A complete untagged IPv4 frame around `l4` (payload bytes after the IP
/// header), total length exact.
pub fn v4_frame(src: Ipv4Addr, proto: u8, frag: u16, l4: &[u8]) -> Frame {
    let mut f = Frame::eth(0x0800);
    f.push(&ipv4(
        src,
        Ipv4Addr::new(192, 0, 2, 1),
        proto,
        frag,
        l4.len(),
    ))
    .push(l4);
    f
}

/// A complete untagged IPv6 frame whose payload is `payload` (extension
/// headers and L4), payload length exact.
pub fn v6_frame(src: Ipv6Addr, next: u8, payload: &[u8]) -> Frame {
    let mut f = Frame::eth(0x86dd);
    f.push(&ipv6(
        src,
        "2001:db8::1".parse().unwrap(),
        next,
        payload.len() as u16,
    ))
    .push(payload);
    f
}
