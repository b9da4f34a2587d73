//! Reading pcap and pcapng records in bounded memory, whatever lengths the
//! file claims.
//!
//! Both formats state a record's length in 32 bits: a pcap record may
//! capture up to 4 GiB, a pcapng block may be up to 4 GiB long, and an
//! interface snap length of 0 means "no limit", so a 9 MB packet in an
//! Enhanced Packet Block is legal. Replay evaluates only the first
//! [`crate::kernel::classifier::MAX_FRAME`] bytes of a frame (what XDP without
//! fragments sees), so a record is read as a prefix of at most `keep` bytes
//! and the rest is read past, never held. Memory is one read buffer and one
//! prefix per open file; no length field is ever an allocation size. A
//! length that claims more than the file holds ends the file with an error
//! that names the record, where it starts, what it claims and how much is
//! there.
//!
//! The formats are parsed here rather than with pcap-file 2, whose readers
//! parse each block inside one fixed 8 MB buffer: a larger record failed as
//! "unexpected end of file".
//!
//! pcapng blocks understood: Section Header (byte order; the version is not
//! checked), Interface Description (link type, snap length, `if_tsresol`,
//! `if_tsoffset`), Enhanced Packet, Simple Packet and the obsolete Packet
//! block; every other block is read past. A block's trailing length must
//! equal its leading one. The options of Section Header and Interface
//! Description blocks are walked and must stay inside their block (an
//! option list without `opt_endofopt` is accepted, as the format asks);
//! options of packet blocks are read past.

use std::io::{self, BufRead};

/// Why a capture cannot be read (any further).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The operating system failed a read.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The file ends before what its headers announce: what was being
    /// read, where it starts, what it claims and how much of it is there.
    #[error("file ends inside {0}")]
    Truncated(String),
    /// A field breaks the format (a length that cannot be, a trailer that
    /// differs from its header, an option that overruns its block).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T, E = ReadError> = std::result::Result<T, E>;

/// A reader that counts the bytes it consumed (for error messages).
struct Src<R> {
    r: R,
    pos: u64,
}

impl<R: BufRead> Src<R> {
    /// Fill `buf` as far as the file goes; fewer bytes only at its end.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Usually the read buffer holds it all (this runs once per packet).
        if let Some(b) = self.r.fill_buf()?.get(..buf.len()) {
            buf.copy_from_slice(b);
            self.r.consume(buf.len());
            self.pos += buf.len() as u64;
            return Ok(buf.len());
        }
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    /// Fill `buf` completely, or fail naming `span`.
    fn exact(&mut self, buf: &mut [u8], span: &Span) -> Result<()> {
        if self.fill(buf)? < buf.len() {
            return Err(span.truncated(self.pos));
        }
        Ok(())
    }

    /// Read past `n` bytes without keeping them, or fail naming `span`.
    fn skip(&mut self, mut n: u64, span: &Span) -> Result<()> {
        while n > 0 {
            let avail = match self.r.fill_buf() {
                Ok(b) => b.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if avail == 0 {
                return Err(span.truncated(self.pos));
            }
            let k = avail.min(usize::try_from(n).unwrap_or(usize::MAX));
            self.r.consume(k);
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// Read a record's data: its first `keep` bytes of `caplen` into
    /// `data`, then past the rest of `total` (data and padding).
    fn data(
        &mut self,
        caplen: u64,
        total: u64,
        keep: usize,
        data: &mut Vec<u8>,
        span: &Span,
    ) -> Result<()> {
        let k = usize::try_from(caplen).unwrap_or(usize::MAX).min(keep);
        data.clear();
        // Copied out of the read buffer (no zero-filling first: this runs
        // once per packet).
        while data.len() < k {
            let avail = match self.r.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if avail.is_empty() {
                return Err(span.truncated(self.pos));
            }
            let n = avail.len().min(k - data.len());
            data.extend_from_slice(&avail[..n]);
            self.r.consume(n);
            self.pos += n as u64;
        }
        self.skip(total - k as u64, span)
    }
}

/// What is being read, named only when an error needs it (this is built
/// once per packet).
#[derive(Clone, Copy)]
enum What {
    /// pcap record `n`.
    Record(u64),
    /// pcapng block `n` of a type.
    Block(u64, u32),
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Record(n) => write!(f, "record {n}"),
            What::Block(n, ty) => write!(f, "block {n} ({})", block_name(*ty)),
        }
    }
}

/// A record or block being read: `what` at byte `start`, `claims` bytes
/// long.
struct Span {
    what: What,
    start: u64,
    claims: u64,
}

impl Span {
    fn truncated(&self, pos: u64) -> ReadError {
        ReadError::Truncated(format!(
            "{} at byte {}, which claims {} bytes: {} are present",
            self.what,
            self.start,
            self.claims,
            pos - self.start
        ))
    }

    fn invalid(&self, msg: impl std::fmt::Display) -> ReadError {
        ReadError::Invalid(format!("{} at byte {}: {msg}", self.what, self.start))
    }
}

/// `n` rounded up to a multiple of 4 (pcapng pads data and options).
fn pad4(n: u64) -> u64 {
    (n + 3) & !3
}

fn u16_of(b: &[u8], big_endian: bool) -> u16 {
    let a = [b[0], b[1]];
    if big_endian {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    }
}

fn u32_of(b: &[u8], big_endian: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if big_endian {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

// ------------------------------------------------------------------ pcap

/// The magics of classic pcap, in file byte order:
/// (bytes, big-endian, nanosecond timestamps).
pub const PCAP_MAGICS: [([u8; 4], bool, bool); 4] = [
    ([0xd4, 0xc3, 0xb2, 0xa1], false, false),
    ([0xa1, 0xb2, 0xc3, 0xd4], true, false),
    ([0x4d, 0x3c, 0xb2, 0xa1], false, true),
    ([0xa1, 0xb2, 0x3c, 0x4d], true, true),
];

/// The fields of a classic pcap file header replay uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapHeader {
    /// Big-endian file.
    pub big_endian: bool,
    /// Nanosecond timestamps.
    pub nsec: bool,
    /// The link type field as written (FCS bits included).
    pub linktype: u32,
}

/// One record of a classic pcap (its data is handed out separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapRecord {
    /// Seconds.
    pub ts_sec: u32,
    /// Micro- or nanoseconds.
    pub ts_frac: u32,
    /// Bytes captured (all of them, also when only a prefix was kept).
    pub caplen: u32,
    /// Length on the wire.
    pub orig_len: u32,
}

/// A classic pcap file, read one record at a time.
pub struct PcapReader<R> {
    src: Src<R>,
    header: PcapHeader,
    records: u64,
}

impl<R: BufRead> PcapReader<R> {
    /// Read the rest of the 24-byte file header; `magic` is its first four
    /// bytes, already read.
    pub fn after_magic(magic: [u8; 4], r: R) -> Result<Self> {
        let Some(&(_, big_endian, nsec)) = PCAP_MAGICS.iter().find(|(m, _, _)| *m == magic) else {
            return Err(ReadError::Invalid(format!(
                "magic {:02x}{:02x}{:02x}{:02x} is not a pcap magic",
                magic[0], magic[1], magic[2], magic[3]
            )));
        };
        let mut src = Src { r, pos: 4 };
        let mut rest = [0u8; 20];
        let got = src.fill(&mut rest)?;
        if got < rest.len() {
            return Err(ReadError::Truncated(format!(
                "the 24-byte file header: {} bytes are present",
                4 + got
            )));
        }
        // version (4), thiszone (4), sigfigs (4), snaplen (4), linktype (4)
        let header = PcapHeader {
            big_endian,
            nsec,
            linktype: u32_of(&rest[16..20], big_endian),
        };
        Ok(PcapReader {
            src,
            header,
            records: 0,
        })
    }

    /// The file header.
    pub fn header(&self) -> PcapHeader {
        self.header
    }

    /// The next record, its first `keep` captured bytes in `data`; `None`
    /// at the clean end of the file.
    pub fn next_record(&mut self, keep: usize, data: &mut Vec<u8>) -> Option<Result<PcapRecord>> {
        let start = self.src.pos;
        let n = self.records + 1;
        let mut h = [0u8; 16];
        let got = match self.src.fill(&mut h) {
            Ok(g) => g,
            Err(e) => return Some(Err(e.into())),
        };
        if got == 0 {
            return None;
        }
        if got < h.len() {
            return Some(Err(ReadError::Truncated(format!(
                "the 16-byte header of record {n} at byte {start}: {got} bytes are present"
            ))));
        }
        let be = self.header.big_endian;
        let rec = PcapRecord {
            ts_sec: u32_of(&h[0..4], be),
            ts_frac: u32_of(&h[4..8], be),
            caplen: u32_of(&h[8..12], be),
            orig_len: u32_of(&h[12..16], be),
        };
        let span = Span {
            what: What::Record(n),
            start,
            claims: 16 + u64::from(rec.caplen),
        };
        let caplen = u64::from(rec.caplen);
        if let Err(e) = self.src.data(caplen, caplen, keep, data, &span) {
            return Some(Err(e));
        }
        self.records = n;
        Some(Ok(rec))
    }
}

// ---------------------------------------------------------------- pcapng

/// Section Header Block type, also the first four bytes of a pcapng file
/// (the same in both byte orders).
pub const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

const SHB: u32 = 0x0a0d_0d0a;
const IDB: u32 = 1;
const PB: u32 = 2;
const SPB: u32 = 3;
const EPB: u32 = 6;
const OPT_ENDOFOPT: u16 = 0;
const IF_TSRESOL: u16 = 9;
const IF_TSOFFSET: u16 = 14;

fn block_name(ty: u32) -> &'static str {
    match ty {
        SHB => "Section Header Block",
        IDB => "Interface Description Block",
        PB => "Packet Block",
        SPB => "Simple Packet Block",
        4 => "Name Resolution Block",
        5 => "Interface Statistics Block",
        EPB => "Enhanced Packet Block",
        9 => "systemd Journal Export Block",
        10 => "Decryption Secrets Block",
        0x0000_0bad | 0x4000_0bad => "Custom Block",
        _ => "unknown block",
    }
}

/// What an Interface Description Block says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Link type (16 bits in pcapng).
    pub linktype: u32,
    /// Snap length; 0 means no limit.
    pub snaplen: u32,
    /// `if_tsresol` (default 6: microseconds).
    pub tsresol: u8,
    /// `if_tsoffset` in seconds (default 0).
    pub tsoffset: i64,
}

/// One packet of a pcapng file (its data is handed out separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcapNgPacket {
    /// The interface it names (0 for a Simple Packet Block).
    pub iface: u32,
    /// Raw timestamp in the interface's units; `None` for a Simple Packet
    /// Block, which has none.
    pub ts: Option<u64>,
    /// Bytes captured (all of them, also when only a prefix was kept).
    pub caplen: u32,
    /// Length on the wire.
    pub orig_len: u32,
}

/// A pcapng file, read one packet at a time.
pub struct PcapNgReader<R> {
    src: Src<R>,
    big_endian: bool,
    interfaces: Vec<Interface>,
    blocks: u64,
}

impl<R: BufRead> PcapNgReader<R> {
    /// Read the rest of the first Section Header Block; its type (the
    /// file's magic, [`PCAPNG_MAGIC`]) was already read.
    pub fn after_magic(r: R) -> Result<Self> {
        let mut rd = PcapNgReader {
            src: Src { r, pos: 4 },
            big_endian: false,
            interfaces: Vec::new(),
            blocks: 1,
        };
        let mut len = [0u8; 4];
        let got = rd.src.fill(&mut len)?;
        if got < len.len() {
            return Err(ReadError::Truncated(format!(
                "the header of block 1 at byte 0: {} of 8 bytes are present",
                4 + got
            )));
        }
        rd.section(1, 0, len)?;
        Ok(rd)
    }

    /// The interfaces of the current section, by id.
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The next packet, its first `keep` captured bytes in `data`; `None`
    /// at the clean end of the file. Other blocks are read on the way.
    pub fn next_packet(&mut self, keep: usize, data: &mut Vec<u8>) -> Option<Result<PcapNgPacket>> {
        loop {
            match self.block(keep, data) {
                Ok(Some(Some(p))) => return Some(Ok(p)),
                Ok(Some(None)) => {}
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn u16(&self, b: &[u8]) -> u16 {
        u16_of(b, self.big_endian)
    }

    fn u32(&self, b: &[u8]) -> u32 {
        u32_of(b, self.big_endian)
    }

    /// One block: `None` at the clean end, `Some(None)` for a block that is
    /// not a packet.
    fn block(&mut self, keep: usize, data: &mut Vec<u8>) -> Result<Option<Option<PcapNgPacket>>> {
        let start = self.src.pos;
        let n = self.blocks + 1;
        let mut head = [0u8; 8];
        let got = self.src.fill(&mut head)?;
        if got == 0 {
            return Ok(None);
        }
        if got < head.len() {
            return Err(ReadError::Truncated(format!(
                "the header of block {n} at byte {start}: {got} of 8 bytes are present"
            )));
        }
        self.blocks = n;
        if head[..4] == PCAPNG_MAGIC {
            self.section(n, start, [head[4], head[5], head[6], head[7]])?;
            return Ok(Some(None));
        }
        let ty = self.u32(&head[0..4]);
        let len = self.u32(&head[4..8]);
        let span = Span {
            what: What::Block(n, ty),
            start,
            claims: u64::from(len),
        };
        check_len(len, 12, &span)?;
        let body = u64::from(len) - 12;
        let packet = match ty {
            IDB => {
                self.idb(body, &span)?;
                None
            }
            EPB | PB => Some(self.packet_block(ty, body, keep, data, &span)?),
            SPB => Some(self.spb(body, keep, data, &span)?),
            _ => {
                self.src.skip(body, &span)?;
                None
            }
        };
        self.trailer(len, &span)?;
        Ok(Some(packet))
    }

    /// A Section Header Block whose type was read: its length as written
    /// (`raw_len`, byte order unknown until the byte-order magic is read),
    /// then the rest. Starts a new section: no interfaces yet.
    fn section(&mut self, n: u64, start: u64, raw_len: [u8; 4]) -> Result<()> {
        let mut bom = [0u8; 4];
        let got = self.src.fill(&mut bom)?;
        if got < bom.len() {
            return Err(ReadError::Truncated(format!(
                "the header of block {n} (Section Header Block) at byte {start}: {} of 12 bytes are present",
                8 + got
            )));
        }
        self.big_endian = match bom {
            [0x1a, 0x2b, 0x3c, 0x4d] => true,
            [0x4d, 0x3c, 0x2b, 0x1a] => false,
            _ => {
                return Err(ReadError::Invalid(format!(
                    "block {n} (Section Header Block) at byte {start}: byte-order magic {:02x}{:02x}{:02x}{:02x} is neither 1a2b3c4d nor 4d3c2b1a",
                    bom[0], bom[1], bom[2], bom[3]
                )));
            }
        };
        let len = self.u32(&raw_len);
        let span = Span {
            what: What::Block(n, SHB),
            start,
            claims: u64::from(len),
        };
        // type, length, byte-order magic, version (4), section length (8),
        // trailer.
        check_len(len, 28, &span)?;
        let mut fixed = [0u8; 12];
        self.src.exact(&mut fixed, &span)?;
        self.options(u64::from(len) - 28, &span, None)?;
        self.trailer(len, &span)?;
        self.interfaces.clear();
        Ok(())
    }

    fn idb(&mut self, body: u64, span: &Span) -> Result<()> {
        if body < 8 {
            return Err(span.invalid(format_args!(
                "a body of {body} bytes, an Interface Description Block needs at least 8"
            )));
        }
        let mut f = [0u8; 8];
        self.src.exact(&mut f, span)?;
        let mut iface = Interface {
            linktype: u32::from(self.u16(&f[0..2])),
            snaplen: self.u32(&f[4..8]),
            tsresol: 6,
            tsoffset: 0,
        };
        self.options(body - 8, span, Some(&mut iface))?;
        self.interfaces.push(iface);
        Ok(())
    }

    /// Walk the options that fill the last `left` bytes of a body; the
    /// timestamp options go into `iface` (an Interface Description Block).
    fn options(
        &mut self,
        mut left: u64,
        span: &Span,
        mut iface: Option<&mut Interface>,
    ) -> Result<()> {
        while left > 0 {
            if left < 4 {
                return Err(span.invalid(format_args!(
                    "{left} bytes after the last option, too few for another"
                )));
            }
            let mut h = [0u8; 4];
            self.src.exact(&mut h, span)?;
            left -= 4;
            let code = self.u16(&h[0..2]);
            let olen = self.u16(&h[2..4]);
            if code == OPT_ENDOFOPT {
                return self.src.skip(left, span);
            }
            let padded = pad4(u64::from(olen));
            if padded > left {
                return Err(span.invalid(format_args!(
                    "option {code} of {olen} bytes overruns the block ({left} bytes left)"
                )));
            }
            let mut value = [0u8; 8];
            match (code, iface.as_deref_mut()) {
                (IF_TSRESOL, Some(i)) => {
                    if olen != 1 {
                        return Err(
                            span.invalid(format_args!("if_tsresol has {olen} bytes, not 1"))
                        );
                    }
                    self.src.exact(&mut value[..1], span)?;
                    self.src.skip(padded - 1, span)?;
                    i.tsresol = value[0];
                }
                (IF_TSOFFSET, Some(i)) => {
                    if olen != 8 {
                        return Err(
                            span.invalid(format_args!("if_tsoffset has {olen} bytes, not 8"))
                        );
                    }
                    self.src.exact(&mut value, span)?;
                    i.tsoffset = if self.big_endian {
                        i64::from_be_bytes(value)
                    } else {
                        i64::from_le_bytes(value)
                    };
                }
                _ => self.src.skip(padded, span)?,
            }
            left -= padded;
        }
        Ok(())
    }

    /// An Enhanced Packet Block or the obsolete Packet Block (the same
    /// layout but for a 16-bit interface id and a drop count).
    fn packet_block(
        &mut self,
        ty: u32,
        body: u64,
        keep: usize,
        data: &mut Vec<u8>,
        span: &Span,
    ) -> Result<PcapNgPacket> {
        if body < 20 {
            return Err(span.invalid(format_args!(
                "a body of {body} bytes, a packet block needs at least 20"
            )));
        }
        let mut f = [0u8; 20];
        self.src.exact(&mut f, span)?;
        let iface = if ty == EPB {
            self.u32(&f[0..4])
        } else {
            u32::from(self.u16(&f[0..2]))
        };
        let ts = (u64::from(self.u32(&f[4..8])) << 32) | u64::from(self.u32(&f[8..12]));
        let caplen = self.u32(&f[12..16]);
        let orig_len = self.u32(&f[16..20]);
        let padded = pad4(u64::from(caplen));
        if padded > body - 20 {
            return Err(span.invalid(format_args!(
                "captured length {caplen} does not fit in the {} bytes after the packet header",
                body - 20
            )));
        }
        self.src.data(u64::from(caplen), padded, keep, data, span)?;
        // Options (epb_flags, comments, hashes): not needed.
        self.src.skip(body - 20 - padded, span)?;
        Ok(PcapNgPacket {
            iface,
            ts: Some(ts),
            caplen,
            orig_len,
        })
    }

    /// A Simple Packet Block: interface 0, no timestamp; the packet is the
    /// original length cut to the interface's snap length and to the block.
    fn spb(
        &mut self,
        body: u64,
        keep: usize,
        data: &mut Vec<u8>,
        span: &Span,
    ) -> Result<PcapNgPacket> {
        if body < 4 {
            return Err(span.invalid(format_args!(
                "a body of {body} bytes, a Simple Packet Block needs at least 4"
            )));
        }
        let mut f = [0u8; 4];
        self.src.exact(&mut f, span)?;
        let orig_len = self.u32(&f);
        let room = body - 4;
        let mut caplen = room.min(u64::from(orig_len));
        if let Some(i) = self.interfaces.first()
            && i.snaplen != 0
        {
            caplen = caplen.min(u64::from(i.snaplen));
        }
        self.src.data(caplen, room, keep, data, span)?;
        Ok(PcapNgPacket {
            iface: 0,
            ts: None,
            // caplen <= orig_len, a u32.
            caplen: caplen as u32,
            orig_len,
        })
    }

    fn trailer(&mut self, len: u32, span: &Span) -> Result<()> {
        let mut t = [0u8; 4];
        self.src.exact(&mut t, span)?;
        let t = self.u32(&t);
        if t != len {
            return Err(span.invalid(format_args!(
                "trailing length {t} differs from the leading length {len}"
            )));
        }
        Ok(())
    }
}

/// A block length must be a multiple of 4 and at least `min`.
fn check_len(len: u32, min: u32, span: &Span) -> Result<()> {
    if !len.is_multiple_of(4) {
        return Err(span.invalid(format_args!("length {len} is not a multiple of 4")));
    }
    if len < min {
        return Err(span.invalid(format_args!(
            "length {len} is less than the {min} bytes of the smallest such block"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A pcapng block in little-endian: type, length, body (padded), length.
    fn block(ty: u32, body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        let len = (b.len() + 12) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&b);
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    fn shb() -> Vec<u8> {
        let mut body = vec![0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0];
        body.extend_from_slice(&(-1i64).to_le_bytes());
        block(0x0a0d_0d0a, &body)
    }

    fn idb(linktype: u16, snaplen: u32, options: &[u8]) -> Vec<u8> {
        let mut body = linktype.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&snaplen.to_le_bytes());
        body.extend_from_slice(options);
        block(IDB, &body)
    }

    fn epb_header(iface: u32, ts: u64, caplen: u32, orig: u32) -> Vec<u8> {
        let mut b = iface.to_le_bytes().to_vec();
        b.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        b.extend_from_slice(&(ts as u32).to_le_bytes());
        b.extend_from_slice(&caplen.to_le_bytes());
        b.extend_from_slice(&orig.to_le_bytes());
        b
    }

    fn epb(iface: u32, ts: u64, data: &[u8]) -> Vec<u8> {
        let mut b = epb_header(iface, ts, data.len() as u32, data.len() as u32);
        b.extend_from_slice(data);
        block(EPB, &b)
    }

    fn open_ng(bytes: Vec<u8>) -> Result<PcapNgReader<Cursor<Vec<u8>>>> {
        let mut c = Cursor::new(bytes);
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut c, &mut magic).unwrap();
        assert_eq!(magic, PCAPNG_MAGIC);
        PcapNgReader::after_magic(c)
    }

    #[test]
    fn a_nine_megabyte_packet_is_read_as_a_prefix() {
        let big: Vec<u8> = (0..9_000_000u32).map(|i| i as u8).collect();
        let mut f = shb();
        f.extend(idb(1, 0, &[]));
        f.extend(epb(0, 7, &big));
        f.extend(epb(0, 8, &[1, 2, 3]));
        let mut r = open_ng(f).unwrap();
        let mut data = Vec::new();
        let p = r.next_packet(3540, &mut data).unwrap().unwrap();
        assert_eq!(p.caplen, 9_000_000);
        assert_eq!(p.ts, Some(7));
        assert_eq!(data, &big[..3540]);
        assert!(data.capacity() < 1 << 20, "{}", data.capacity());
        let p = r.next_packet(3540, &mut data).unwrap().unwrap();
        assert_eq!((p.caplen, p.ts), (3, Some(8)));
        assert_eq!(data, [1, 2, 3]);
        assert!(r.next_packet(3540, &mut data).is_none());
    }

    #[test]
    fn a_block_claiming_four_gib_is_a_clear_error() {
        let mut f = shb();
        f.extend(idb(1, 0, &[]));
        let at = f.len();
        // An EPB whose length field says 4 GiB - 4, in a file of 1 KB.
        let mut b = EPB.to_le_bytes().to_vec();
        b.extend_from_slice(&0xffff_fffcu32.to_le_bytes());
        b.extend(epb_header(0, 1, 0xffff_ffdc, 0xffff_ffdc));
        b.extend_from_slice(&[0xab; 1000]);
        f.extend(b);
        let mut r = open_ng(f).unwrap();
        let mut data = Vec::new();
        let e = r.next_packet(3540, &mut data).unwrap().unwrap_err();
        let msg = e.to_string();
        assert_eq!(
            msg,
            format!(
                "file ends inside block 3 (Enhanced Packet Block) at byte {at}, which claims 4294967292 bytes: 1028 are present"
            )
        );
        assert!(data.capacity() < 1 << 20);
    }

    #[test]
    fn lengths_and_trailers_are_checked() {
        let mut f = shb();
        let mut bad = idb(1, 0, &[]);
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&99u32.to_le_bytes());
        f.extend(bad);
        let mut r = open_ng(f).unwrap();
        let e = r.next_packet(100, &mut Vec::new()).unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "block 2 (Interface Description Block) at byte 28: trailing length 99 differs from the leading length 20"
        );

        let mut f = shb();
        let mut b = EPB.to_le_bytes().to_vec();
        b.extend_from_slice(&30u32.to_le_bytes());
        f.extend(b);
        let e = open_ng(f).unwrap().next_packet(100, &mut Vec::new());
        assert!(
            e.unwrap()
                .unwrap_err()
                .to_string()
                .contains("length 30 is not a multiple of 4"),
        );

        // Captured length beyond the block.
        let mut f = shb();
        f.extend(idb(1, 0, &[]));
        let mut b = epb_header(0, 1, 64, 64);
        b.extend_from_slice(&[0; 8]);
        f.extend(block(EPB, &b));
        let e = open_ng(f).unwrap().next_packet(100, &mut Vec::new());
        assert!(
            e.unwrap()
                .unwrap_err()
                .to_string()
                .contains("captured length 64 does not fit in the 8 bytes after the packet header"),
        );

        // An option that overruns its block.
        let mut f = shb();
        f.extend(idb(1, 0, &[9, 0, 200, 0, 6, 0, 0, 0]));
        let e = open_ng(f).unwrap().next_packet(100, &mut Vec::new());
        assert!(
            e.unwrap()
                .unwrap_err()
                .to_string()
                .contains("option 9 of 200 bytes overruns the block (4 bytes left)"),
        );

        // Cut inside a block header.
        let mut f = shb();
        f.extend_from_slice(&[1, 0, 0]);
        let e = open_ng(f).unwrap().next_packet(100, &mut Vec::new());
        assert_eq!(
            e.unwrap().unwrap_err().to_string(),
            "file ends inside the header of block 2 at byte 28: 3 of 8 bytes are present"
        );
    }

    #[test]
    fn interfaces_options_and_other_packet_blocks() {
        let mut f = shb();
        // if_tsresol 9 and if_tsoffset 100 s, then end of options.
        let mut opts = vec![9, 0, 1, 0, 9, 0, 0, 0, 14, 0, 8, 0];
        opts.extend_from_slice(&100i64.to_le_bytes());
        opts.extend_from_slice(&[0, 0, 0, 0]);
        f.extend(idb(113, 0, &opts));
        f.extend(idb(1, 64, &[]));
        // A Name Resolution Block is read past.
        f.extend(block(4, &[0, 0, 0, 0]));
        f.extend(epb(1, 5, &[0xee; 10]));
        // Obsolete Packet Block on interface 0.
        let mut pb = vec![0, 0, 0, 0];
        pb.extend_from_slice(&0u32.to_le_bytes());
        pb.extend_from_slice(&9u32.to_le_bytes());
        pb.extend_from_slice(&2u32.to_le_bytes());
        pb.extend_from_slice(&4u32.to_le_bytes());
        pb.extend_from_slice(&[1, 2]);
        f.extend(block(PB, &pb));
        let mut r = open_ng(f).unwrap();
        let mut data = Vec::new();
        let p = r.next_packet(100, &mut data).unwrap().unwrap();
        assert_eq!((p.iface, p.caplen, p.ts), (1, 10, Some(5)));
        assert_eq!(
            r.interfaces()[0],
            Interface {
                linktype: 113,
                snaplen: 0,
                tsresol: 9,
                tsoffset: 100
            }
        );
        let p = r.next_packet(100, &mut data).unwrap().unwrap();
        assert_eq!((p.iface, p.caplen, p.orig_len, p.ts), (0, 2, 4, Some(9)));
        assert_eq!(data, [1, 2]);
        assert!(r.next_packet(100, &mut data).is_none());
    }

    #[test]
    fn simple_packets_and_a_big_endian_section() {
        // Section 1 (little-endian): SPB cut to the snap length of 4.
        let mut f = shb();
        f.extend(idb(1, 4, &[]));
        let mut spb = 10u32.to_le_bytes().to_vec();
        spb.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        f.extend(block(SPB, &spb));
        // Section 2 (big-endian): its interfaces replace the first's.
        let mut body = vec![0x1a, 0x2b, 0x3c, 0x4d, 0, 1, 0, 0];
        body.extend_from_slice(&(-1i64).to_be_bytes());
        let be = |ty: u32, body: &[u8]| {
            let len = (body.len() + 12) as u32;
            let mut out = ty.to_be_bytes().to_vec();
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(&len.to_be_bytes());
            out
        };
        f.extend(be(0x0a0d_0d0a, &body));
        f.extend(be(IDB, &[0, 101, 0, 0, 0, 0, 0, 0]));
        let mut e = 0u32.to_be_bytes().to_vec();
        e.extend_from_slice(&0u32.to_be_bytes());
        e.extend_from_slice(&3u32.to_be_bytes());
        e.extend_from_slice(&4u32.to_be_bytes());
        e.extend_from_slice(&4u32.to_be_bytes());
        e.extend_from_slice(&[0x45, 0, 0, 1]);
        f.extend(be(EPB, &e));
        let mut r = open_ng(f).unwrap();
        let mut data = Vec::new();
        let p = r.next_packet(100, &mut data).unwrap().unwrap();
        assert_eq!((p.iface, p.caplen, p.orig_len, p.ts), (0, 4, 10, None));
        assert_eq!(data, [1, 2, 3, 4]);
        let p = r.next_packet(100, &mut data).unwrap().unwrap();
        assert_eq!((p.caplen, p.ts), (4, Some(3)));
        assert_eq!(r.interfaces().len(), 1);
        assert_eq!(r.interfaces()[0].linktype, 101);
        assert_eq!(data, [0x45, 0, 0, 1]);
        assert!(r.next_packet(100, &mut data).is_none());
    }

    fn pcap(records: &[(u32, &[u8])]) -> Vec<u8> {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        for (caplen, data) in records {
            f.extend_from_slice(&1u32.to_le_bytes());
            f.extend_from_slice(&2u32.to_le_bytes());
            f.extend_from_slice(&caplen.to_le_bytes());
            f.extend_from_slice(&caplen.to_le_bytes());
            f.extend_from_slice(data);
        }
        f
    }

    fn open_pcap(bytes: Vec<u8>) -> Result<PcapReader<Cursor<Vec<u8>>>> {
        let mut c = Cursor::new(bytes);
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut c, &mut magic).unwrap();
        PcapReader::after_magic(magic, c)
    }

    #[test]
    fn pcap_records_large_and_cut() {
        let big = vec![7u8; 5_000_000];
        let f = pcap(&[(3, &[1, 2, 3]), (big.len() as u32, &big)]);
        let mut r = open_pcap(f).unwrap();
        assert_eq!(r.header().linktype, 1);
        let mut data = Vec::new();
        let rec = r.next_record(16, &mut data).unwrap().unwrap();
        assert_eq!((rec.ts_sec, rec.ts_frac, rec.caplen), (1, 2, 3));
        assert_eq!(data, [1, 2, 3]);
        let rec = r.next_record(16, &mut data).unwrap().unwrap();
        assert_eq!(rec.caplen, 5_000_000);
        assert_eq!(data, [7; 16]);
        assert!(r.next_record(16, &mut data).is_none());

        // A record claiming 4 GiB in a small file.
        let f = pcap(&[(3, &[1, 2, 3]), (u32::MAX, &[9; 100])]);
        let mut r = open_pcap(f).unwrap();
        r.next_record(16, &mut data).unwrap().unwrap();
        let e = r.next_record(16, &mut data).unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "file ends inside record 2 at byte 43, which claims 4294967311 bytes: 116 are present"
        );
        // Cut inside a record header, and inside the file header.
        let mut f = pcap(&[]);
        f.extend_from_slice(&[0; 5]);
        let e = open_pcap(f).unwrap().next_record(16, &mut data);
        assert_eq!(
            e.unwrap().unwrap_err().to_string(),
            "file ends inside the 16-byte header of record 1 at byte 24: 5 bytes are present"
        );
        let e = open_pcap(pcap(&[])[..10].to_vec()).err().unwrap();
        assert_eq!(
            e.to_string(),
            "file ends inside the 24-byte file header: 10 bytes are present"
        );
    }
}
