//! Reading captures one record at a time (classic pcap in both byte orders
//! with micro- or nanosecond timestamps, and pcapng), and rewrapping the link
//! layers the filter can reason about into the Ethernet frames the XDP
//! program expects.
//!
//! Memory stays bounded whatever the file claims: [`super::reader`] keeps
//! one read buffer per open file and, of each record, only the bytes that
//! make the first [`MAX_FRAME`] bytes of its frame (what XDP without
//! fragments sees); the rest is read past. Records up to the formats' own
//! limit (32-bit lengths: 4 GiB) are read; a length that claims more than
//! the file holds ends the file with an error saying so.
//!
//! Link types:
//!
//! | link type | rewrap |
//! |---|---|
//! | Ethernet (1) | as is |
//! | Linux cooked SLL (113) | 14-byte Ethernet header with SLL's protocol field as the ethertype (an 802.1Q protocol keeps the tag, which follows in the payload) |
//! | Linux cooked SLL2 (276) | the same with SLL2's protocol field |
//! | raw IP (101, and 12 / 14 as some platforms number it) | ethertype from the version nibble: 6 is IPv6, anything else IPv4 (as libpcap reads it) |
//! | IPv4 (228), IPv6 (229) | ethertype 0x0800 / 0x86dd whatever the payload |
//!
//! Every other link type is reported per file ("BSD loopback (NULL, 0): not
//! supported") and its packets are counted, not replayed. A file that breaks
//! mid-way ends with an error after the records before the break.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_file::DataLink;

use super::reader::{PCAP_MAGICS, PCAPNG_MAGIC, PcapNgReader, PcapReader};
use crate::kernel::classifier::MAX_FRAME;

/// libpcap's `LT_LINKTYPE`: the link type bits of the pcap header's link
/// type field (the upper bits may carry FCS length information).
pub const LINKTYPE_MASK: u32 = 0x03ff_ffff;

/// Linux cooked capture v1 header length.
const SLL_HLEN: usize = 16;
/// Linux cooked capture v2 header length.
const SLL2_HLEN: usize = 20;
/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 ethertype.
const ETH_P_IP: u16 = 0x0800;
/// IPv6 ethertype.
const ETH_P_IPV6: u16 = 0x86dd;
/// ARPHRD_ETHER: an SLL address that is a MAC.
const ARPHRD_ETHER: u16 = 1;

/// Source MAC of synthesized headers (locally administered).
pub const SYNTH_SRC_MAC: [u8; 6] = [0x02, 0xef, 0x00, 0x00, 0x00, 0x01];
/// Destination MAC of synthesized headers (locally administered).
pub const SYNTH_DST_MAC: [u8; 6] = [0x02, 0xef, 0x00, 0x00, 0x00, 0x02];

/// A link layer replay understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// Ethernet, replayed as is.
    Ethernet,
    /// Linux cooked capture (SLL, 113).
    Sll,
    /// Linux cooked capture v2 (SLL2, 276).
    Sll2,
    /// Raw IP, version told by the first nibble (101; 12 and 14 on some platforms).
    RawIp,
    /// Raw IPv4 (228).
    Ipv4,
    /// Raw IPv6 (229).
    Ipv6,
}

impl Link {
    /// The link for a (masked) link type number, `None` when unsupported.
    pub fn from_linktype(linktype: u32) -> Option<Link> {
        Some(match linktype {
            1 => Link::Ethernet,
            113 => Link::Sll,
            276 => Link::Sll2,
            12 | 14 | 101 => Link::RawIp,
            228 => Link::Ipv4,
            229 => Link::Ipv6,
            _ => return None,
        })
    }
}

/// A human name for a link type number: `Ethernet (EN10MB, 1)`,
/// `BSD loopback (NULL, 0)`, or the registry name.
pub fn linktype_name(linktype: u32) -> String {
    let known = match linktype {
        0 => Some("BSD loopback (NULL"),
        1 => Some("Ethernet (EN10MB"),
        9 => Some("PPP (PPP"),
        12 | 14 | 101 => Some("raw IP (RAW"),
        50 => Some("PPP in HDLC framing (PPP_HDLC"),
        104 => Some("Cisco HDLC (C_HDLC"),
        105 => Some("IEEE 802.11 (IEEE802_11"),
        108 => Some("OpenBSD loopback (LOOP"),
        113 => Some("Linux cooked capture (LINUX_SLL"),
        127 => Some("IEEE 802.11 radiotap (IEEE802_11_RADIOTAP"),
        195 => Some("IEEE 802.15.4 (IEEE802_15_4_WITHFCS"),
        220 => Some("USB Linux (USB_LINUX_MMAPPED"),
        228 => Some("raw IPv4 (IPV4"),
        229 => Some("raw IPv6 (IPV6"),
        239 => Some("Netlink (NETLINK"),
        276 => Some("Linux cooked capture v2 (LINUX_SLL2"),
        _ => None,
    };
    match known {
        Some(k) => format!("{k}, {linktype})"),
        None => format!("{:?} ({linktype})", DataLink::from(linktype)),
    }
}

/// The message for a link type replay does not handle.
pub fn unsupported_message(linktype: u32) -> String {
    format!("{}: not supported", linktype_name(linktype))
}

/// Rewrap one record of `link` into an Ethernet frame in `out` (cleared
/// first). A link header cut short gives an empty frame (which the
/// semantics call `l2_truncated`); returns whether that happened.
pub fn to_ethernet(link: Link, data: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let (src_mac, ethertype, payload) = match link {
        Link::Ethernet => {
            out.extend_from_slice(data);
            return false;
        }
        Link::Sll => {
            if data.len() < SLL_HLEN {
                return true;
            }
            let hatype = u16::from_be_bytes([data[2], data[3]]);
            let halen = u16::from_be_bytes([data[4], data[5]]);
            let mac = (hatype == ARPHRD_ETHER && halen == 6).then(|| mac_at(data, 6));
            (
                mac,
                u16::from_be_bytes([data[14], data[15]]),
                &data[SLL_HLEN..],
            )
        }
        Link::Sll2 => {
            if data.len() < SLL2_HLEN {
                return true;
            }
            let hatype = u16::from_be_bytes([data[8], data[9]]);
            let halen = data[11];
            let mac = (hatype == ARPHRD_ETHER && halen == 6).then(|| mac_at(data, 12));
            (
                mac,
                u16::from_be_bytes([data[0], data[1]]),
                &data[SLL2_HLEN..],
            )
        }
        Link::RawIp => {
            let et = match data.first() {
                Some(b) if b >> 4 == 6 => ETH_P_IPV6,
                _ => ETH_P_IP,
            };
            (None, et, data)
        }
        Link::Ipv4 => (None, ETH_P_IP, data),
        Link::Ipv6 => (None, ETH_P_IPV6, data),
    };
    out.reserve(ETH_HLEN + payload.len());
    out.extend_from_slice(&SYNTH_DST_MAC);
    out.extend_from_slice(&src_mac.unwrap_or(SYNTH_SRC_MAC));
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
    false
}

fn mac_at(data: &[u8], off: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&data[off..off + 6]);
    m
}

/// A capture timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Nanoseconds since 1970-01-01T00:00:00Z (saturating: years beyond
    /// 1677..2262 clamp).
    pub nanos: i64,
    /// Fraction digits the capture resolves (6 for microseconds, 9 for
    /// nanoseconds), used when printing.
    pub digits: u8,
}

impl Timestamp {
    /// RFC 3339 in UTC with the capture's precision, e.g.
    /// `2024-05-01T12:00:00.123456Z`.
    pub fn rfc3339(&self) -> String {
        let secs = self.nanos.div_euclid(1_000_000_000);
        let frac = self.nanos.rem_euclid(1_000_000_000) as u32;
        let base = time::OffsetDateTime::from_unix_timestamp(secs).ok();
        let Some(t) = base else {
            return format!("{}.{:09}s", secs, frac);
        };
        let mut s = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let digits = usize::from(self.digits.min(9));
        if digits > 0 {
            let f = format!("{frac:09}");
            s.push('.');
            s.push_str(&f[..digits]);
        }
        s.push('Z');
        s
    }
}

/// Bytes of a record's data kept: enough for the first [`MAX_FRAME`] bytes
/// of its frame after the longest link header replay strips (SLL2).
const KEEP: usize = MAX_FRAME + SLL2_HLEN;

/// How much buffered reading runs ahead of the record being read.
const READ_BUFFER: usize = 128 * 1024;

/// One packet record of a capture.
#[derive(Clone, Debug)]
pub struct Record {
    /// Frame number in the file, from 1, counting every packet record (as
    /// Wireshark numbers them), replayed or not.
    pub index: u64,
    /// When it was captured (`None` for pcapng Simple Packet Blocks).
    pub ts: Option<Timestamp>,
    /// The record's link type (masked).
    pub linktype: u32,
    /// Length on the wire, from the record header.
    pub orig_len: u32,
    /// Bytes captured (before any rewrap), all of them: the record may be
    /// far longer than what [`Record::frame`] holds.
    pub caplen: usize,
    /// The Ethernet frame to replay, cut to [`MAX_FRAME`] bytes (the rest
    /// of the record was read past); `None` when the link type is not
    /// supported.
    pub frame: Option<Vec<u8>>,
    /// The length of the whole rewrapped frame (more than `frame` holds
    /// when it was cut); 0 when `frame` is `None`.
    pub frame_len: usize,
    /// The link-layer header was shorter than its fixed size (the frame is
    /// then empty).
    pub short_link_header: bool,
}

/// File format, as detected from the magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap.
    Pcap {
        /// Nanosecond timestamps (magic `a1b23c4d`).
        nsec: bool,
        /// Big-endian file.
        big_endian: bool,
    },
    /// pcapng.
    PcapNg,
}

impl Format {
    /// `pcap/LE`, `pcap-nsec/BE`, `pcapng`.
    pub fn name(&self) -> String {
        match self {
            Format::Pcap { nsec, big_endian } => format!(
                "pcap{}/{}",
                if *nsec { "-nsec" } else { "" },
                if *big_endian { "BE" } else { "LE" }
            ),
            Format::PcapNg => "pcapng".into(),
        }
    }
}

enum Inner {
    Pcap {
        reader: PcapReader<BufReader<File>>,
        linktype: u32,
        link: Option<Link>,
        nsec: bool,
    },
    PcapNg {
        reader: PcapNgReader<BufReader<File>>,
    },
}

/// An open capture, read one record at a time.
pub struct Capture {
    inner: Inner,
    format: Format,
    frames: u64,
    done: bool,
    /// The kept prefix of the record being read (at most [`KEEP`] bytes).
    data: Vec<u8>,
}

impl Capture {
    /// Open `path`, telling pcap from pcapng by the magic (not the name).
    pub fn open(path: &Path) -> Result<Capture, String> {
        let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
        let mut r = BufReader::with_capacity(READ_BUFFER, file);
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "too short to be a capture (less than 4 bytes)".to_string()
            }
            _ => format!("cannot read: {e}"),
        })?;
        let data = Vec::with_capacity(KEEP);
        if magic == PCAPNG_MAGIC {
            let reader = PcapNgReader::after_magic(r)
                .map_err(|e| format!("invalid pcapng section header: {e}"))?;
            return Ok(Capture {
                inner: Inner::PcapNg { reader },
                format: Format::PcapNg,
                frames: 0,
                done: false,
                data,
            });
        }
        if !PCAP_MAGICS.iter().any(|(m, _, _)| *m == magic) {
            return Err(format!(
                "not a pcap or pcapng file (magic {:02x}{:02x}{:02x}{:02x})",
                magic[0], magic[1], magic[2], magic[3]
            ));
        }
        let reader =
            PcapReader::after_magic(magic, r).map_err(|e| format!("invalid pcap header: {e}"))?;
        let h = reader.header();
        let linktype = h.linktype & LINKTYPE_MASK;
        Ok(Capture {
            inner: Inner::Pcap {
                reader,
                linktype,
                link: Link::from_linktype(linktype),
                nsec: h.nsec,
            },
            format: Format::Pcap {
                nsec: h.nsec,
                big_endian: h.big_endian,
            },
            frames: 0,
            done: false,
            data,
        })
    }

    /// The detected format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The file-level link type of a classic pcap (`None` for pcapng, where
    /// each interface has its own).
    pub fn pcap_linktype(&self) -> Option<u32> {
        match &self.inner {
            Inner::Pcap { linktype, .. } => Some(*linktype),
            Inner::PcapNg { .. } => None,
        }
    }

    /// The next record; `Some(Err)` ends the file (the reader cannot resync
    /// after a broken record), `None` is the clean end.
    pub fn next_record(&mut self) -> Option<Result<Record, String>> {
        if self.done {
            return None;
        }
        let r = match &mut self.inner {
            Inner::Pcap {
                reader,
                linktype,
                link,
                nsec,
            } => next_pcap(reader, *linktype, *link, *nsec, self.frames, &mut self.data),
            Inner::PcapNg { reader } => next_pcapng(reader, self.frames, &mut self.data),
        };
        match &r {
            Some(Ok(_)) => self.frames += 1,
            Some(Err(_)) | None => self.done = true,
        }
        r
    }
}

fn next_pcap(
    reader: &mut PcapReader<BufReader<File>>,
    linktype: u32,
    link: Option<Link>,
    nsec: bool,
    frames: u64,
    data: &mut Vec<u8>,
) -> Option<Result<Record, String>> {
    // Neither orig_len > snaplen (every capture taken with a short snap
    // length) nor odd timestamps matter for replay: not checked.
    let raw = match reader.next_record(KEEP, data)? {
        Ok(raw) => raw,
        Err(e) => return Some(Err(format!("broken after {frames} records: {e}"))),
    };
    let frac = if nsec {
        i128::from(raw.ts_frac)
    } else {
        i128::from(raw.ts_frac) * 1000
    };
    let ts = Timestamp {
        nanos: clamp_nanos(i128::from(raw.ts_sec) * 1_000_000_000 + frac),
        digits: if nsec { 9 } else { 6 },
    };
    Some(Ok(make_record(
        frames + 1,
        Some(ts),
        linktype,
        link,
        raw.orig_len,
        raw.caplen as usize,
        data,
    )))
}

/// A record from its kept `prefix` of `caplen` captured bytes.
fn make_record(
    index: u64,
    ts: Option<Timestamp>,
    linktype: u32,
    link: Option<Link>,
    orig_len: u32,
    caplen: usize,
    prefix: &[u8],
) -> Record {
    let mut short = false;
    let mut frame_len = 0;
    let frame = link.map(|l| {
        let mut out = Vec::new();
        short = to_ethernet(l, prefix, &mut out);
        // Bytes past the prefix are payload, one frame byte each.
        frame_len = out.len() + (caplen - prefix.len());
        out.truncate(MAX_FRAME);
        out
    });
    Record {
        index,
        ts,
        linktype,
        orig_len,
        caplen,
        frame,
        frame_len,
        short_link_header: short,
    }
}

/// Timestamp of a pcapng packet in its interface's units: `if_tsresol`
/// (`resol`, 6 when absent: microseconds) and `if_tsoffset` (`offset`
/// seconds).
fn pcapng_ts(resol: u8, offset: i64, raw: u64) -> Timestamp {
    let offset = i128::from(offset);
    let raw = i128::from(raw);
    let (nanos, digits) = if resol & 0x80 == 0 {
        let e = u32::from(resol);
        if e <= 9 {
            (raw * 10i128.pow(9 - e), resol)
        } else {
            (raw / 10i128.pow((e - 9).min(30)), 9)
        }
    } else {
        let e = u32::from(resol & 0x7f).min(100);
        let n = (raw * 1_000_000_000) >> e;
        (n, 9)
    };
    Timestamp {
        nanos: clamp_nanos(nanos + offset * 1_000_000_000),
        digits,
    }
}

fn clamp_nanos(n: i128) -> i64 {
    n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn next_pcapng(
    reader: &mut PcapNgReader<BufReader<File>>,
    frames: u64,
    data: &mut Vec<u8>,
) -> Option<Result<Record, String>> {
    let p = match reader.next_packet(KEEP, data)? {
        Ok(p) => p,
        Err(e) => {
            return Some(Err(format!("broken after {frames} packet blocks: {e}")));
        }
    };
    let index = frames + 1;
    let Some(idb) = reader.interfaces().get(p.iface as usize) else {
        return Some(Err(format!(
            "packet {index} names interface {}, which is not described",
            p.iface
        )));
    };
    let linktype = idb.linktype & LINKTYPE_MASK;
    let ts = p.ts.map(|raw| pcapng_ts(idb.tsresol, idb.tsoffset, raw));
    Some(Ok(make_record(
        index,
        ts,
        linktype,
        Link::from_linktype(linktype),
        p.orig_len,
        p.caplen as usize,
        data,
    )))
}

/// Expand the command line's capture arguments: files as given, directories
/// searched recursively for `*.pcap`, `*.pcapng` and `*.cap` (sorted).
/// Returns `(display name, path)` pairs. A file's name is its path as given;
/// a file found in a directory is named by its path relative to that
/// directory (`tcpdump/dns.pcap`), so names (and expectations keyed by
/// them) do not depend on where the captures live, unless two arguments
/// yield the same relative name: those keep their full paths. Control
/// characters in names are escaped (`\r`): names reach terminals, tab-separated
/// lines and logs.
pub fn expand(args: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    for a in args {
        let meta = std::fs::metadata(a).map_err(|e| format!("{}: {e}", a.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            collect(a, &mut found);
            found.sort();
            if found.is_empty() {
                return Err(format!(
                    "{}: no *.pcap, *.pcapng or *.cap files in this directory",
                    a.display()
                ));
            }
            for p in found {
                let rel = p
                    .strip_prefix(a)
                    .map(|r| r.display().to_string())
                    .unwrap_or_else(|_| p.display().to_string());
                out.push((super::printable(&rel), p));
            }
        } else {
            out.push((super::printable(&a.display().to_string()), a.clone()));
        }
    }
    let mut seen = std::collections::HashMap::new();
    for (name, _) in &out {
        *seen.entry(name.clone()).or_insert(0usize) += 1;
    }
    for (name, path) in &mut out {
        if seen[name.as_str()] > 1 {
            *name = super::printable(&path.display().to_string());
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pcap" | "pcapng" | "cap")
        ) {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sll_keeps_protocol_and_vlan() {
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x81, 0x00];
        sll.extend_from_slice(&[0x00, 0x05, 0x08, 0x00, 0x45]);
        let mut out = Vec::new();
        assert!(!to_ethernet(Link::Sll, &sll, &mut out));
        assert_eq!(&out[6..12], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&out[12..14], &[0x81, 0x00]);
        assert_eq!(&out[14..], &[0x00, 0x05, 0x08, 0x00, 0x45]);
        assert!(to_ethernet(Link::Sll, &sll[..15], &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn sll2_protocol_first() {
        let mut sll2 = vec![
            0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 9, 9, 9, 9, 9, 9, 0, 0,
        ];
        sll2.push(0x60);
        let mut out = Vec::new();
        to_ethernet(Link::Sll2, &sll2, &mut out);
        assert_eq!(&out[6..12], &[9; 6]);
        assert_eq!(&out[12..], &[0x86, 0xdd, 0x60]);
    }

    #[test]
    fn raw_ip_by_nibble() {
        let mut out = Vec::new();
        to_ethernet(Link::RawIp, &[0x60, 0], &mut out);
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
        to_ethernet(Link::RawIp, &[0x45, 0], &mut out);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        to_ethernet(Link::RawIp, &[], &mut out);
        assert_eq!(out.len(), 14);
        to_ethernet(Link::Ipv4, &[0x60], &mut out);
        assert_eq!(&out[12..14], &[0x08, 0x00]);
    }

    #[test]
    fn long_records_keep_a_cut_frame_and_their_length() {
        let prefix: Vec<u8> = (0..KEEP).map(|i| i as u8).collect();
        let r = make_record(1, None, 1, Some(Link::Ethernet), 9, 9_000_000, &prefix);
        assert_eq!(r.frame.as_deref(), Some(&prefix[..MAX_FRAME]));
        assert_eq!((r.caplen, r.frame_len), (9_000_000, 9_000_000));
        // SLL: 16 bytes of link header become 14 of Ethernet.
        let r = make_record(1, None, 113, Some(Link::Sll), 9, 10_000, &prefix);
        assert_eq!(r.frame.as_ref().map(Vec::len), Some(MAX_FRAME));
        assert_eq!(r.frame_len, 10_000 - 2);
        assert_eq!(r.frame.unwrap()[14..20], prefix[16..22]);
        let r = make_record(1, None, 276, Some(Link::Sll2), 9, 10_000, &prefix);
        assert_eq!(r.frame_len, 10_000 - 6);
        assert_eq!(r.frame.unwrap().len(), MAX_FRAME);
        let r = make_record(1, None, 101, Some(Link::RawIp), 9, 10_000, &prefix);
        assert_eq!(r.frame_len, 10_014);
        // Short records are whole; unsupported link types have no frame.
        let r = make_record(1, None, 1, Some(Link::Ethernet), 9, 60, &prefix[..60]);
        assert_eq!((r.frame.unwrap().len(), r.frame_len), (60, 60));
        let r = make_record(1, None, 0, None, 9, 60, &prefix[..60]);
        assert_eq!((r.frame, r.frame_len, r.caplen), (None, 0, 60));
    }

    #[test]
    fn names() {
        assert_eq!(
            unsupported_message(0),
            "BSD loopback (NULL, 0): not supported"
        );
        assert_eq!(
            linktype_name(276),
            "Linux cooked capture v2 (LINUX_SLL2, 276)"
        );
    }

    #[test]
    fn timestamps() {
        let t = Timestamp {
            nanos: 1_700_000_000_123_456_000,
            digits: 6,
        };
        assert_eq!(t.rfc3339(), "2023-11-14T22:13:20.123456Z");
        let ts = pcapng_ts(9, 0, 5);
        assert_eq!(ts.nanos, 5);
        let ts = pcapng_ts(6, 0, 5);
        assert_eq!(ts.nanos, 5000);
        let ts = pcapng_ts(0x80 | 1, 0, 3);
        assert_eq!(ts.nanos, 1_500_000_000);
        let ts = pcapng_ts(9, -2, 5);
        assert_eq!(ts.nanos, 5 - 2_000_000_000);
    }
}
