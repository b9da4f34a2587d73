//! A feed's parsed entries, held compactly for as long as the feed's
//! snapshot lives.
//!
//! The agent keeps every feed's entries between refreshes (a change of one
//! feed merges all of them again) and saves the same entries as the feed's
//! last-known-good copy. As a vector of [`FeedEntry`] a `/32` took 112
//! bytes, almost all of it room for provenance a plain list never has.
//! Here an IPv4 entry without a port (what big lists hold) is packed into
//! 8 bytes, any other entry is its 24-byte [`Entry`] on the side, plus,
//! only once some entry of the feed carries provenance, a 4-byte index
//! into the feed's distinct
//! provenance records (`Meta`): entries that share an indicator, a
//! confidence, validity and a description share one record. The copy is
//! shared ([`std::sync::Arc`]) between the snapshot and the last-known-good
//! file being written, never duplicated.

use std::collections::HashMap;
use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::entry::{Action, Entry};

/// An [`Entry`] with its provenance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedEntry {
    /// What the filter matches and does.
    pub entry: Entry,
    /// The feed's identifier for it (SBL id, STIX id, malware family, Tor
    /// relay fingerprint, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicator: Option<String>,
    /// Confidence 0-100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<u8>,
    /// Not to be enforced before this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub valid_from: Option<OffsetDateTime>,
    /// Not to be enforced after this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires: Option<OffsetDateTime>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl FeedEntry {
    /// An entry without provenance.
    pub fn new(entry: Entry) -> Self {
        FeedEntry {
            entry,
            indicator: None,
            confidence: None,
            valid_from: None,
            expires: None,
            description: None,
        }
    }
}

/// No provenance record.
const NONE: u32 = u32::MAX;

/// A packed word that indexes [`FeedEntries::wide`] in its low bits
/// rather than holding an entry.
const WIDE: u64 = 1 << 63;

/// `e` in one word when it is an IPv4 net without a port: address << 8,
/// prefix length << 1, drop in bit 0 (bit 63 clear).
fn pack(e: &Entry) -> Option<u64> {
    match (e.net, e.port) {
        (ipnet::IpNet::V4(n), None) => Some(
            u64::from(u32::from(n.addr())) << 8
                | u64::from(n.prefix_len()) << 1
                | u64::from(e.action == Action::Drop),
        ),
        _ => None,
    }
}

/// The entry of a packed word (not [`WIDE`]).
fn unpack(w: u64) -> Entry {
    BareEntry::of_word(w).entry()
}

/// The provenance fields of a [`FeedEntry`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Meta {
    indicator: Option<Box<str>>,
    confidence: Option<u8>,
    valid_from: Option<OffsetDateTime>,
    expires: Option<OffsetDateTime>,
    description: Option<Box<str>>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        *self == Meta::default()
    }
}

/// One entry of [`FeedEntries`], borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedEntryRef<'a> {
    /// What the filter matches and does.
    pub entry: Entry,
    /// The feed's identifier for it.
    pub indicator: Option<&'a str>,
    /// Confidence 0-100.
    pub confidence: Option<u8>,
    /// Not to be enforced before this time.
    pub valid_from: Option<OffsetDateTime>,
    /// Not to be enforced after this time.
    pub expires: Option<OffsetDateTime>,
    /// Free text.
    pub description: Option<&'a str>,
}

impl<'a> FeedEntryRef<'a> {
    /// `entry` with the provenance `m`, if any.
    fn with(entry: Entry, m: Option<&'a Meta>) -> Self {
        FeedEntryRef {
            entry,
            indicator: m.and_then(|m| m.indicator.as_deref()),
            confidence: m.and_then(|m| m.confidence),
            valid_from: m.and_then(|m| m.valid_from),
            expires: m.and_then(|m| m.expires),
            description: m.and_then(|m| m.description.as_deref()),
        }
    }

    /// `entry` without provenance.
    pub fn bare(entry: Entry) -> Self {
        FeedEntryRef::with(entry, None)
    }

    /// As an owned [`FeedEntry`].
    pub fn to_owned(&self) -> FeedEntry {
        FeedEntry {
            entry: self.entry,
            indicator: self.indicator.map(str::to_string),
            confidence: self.confidence,
            valid_from: self.valid_from,
            expires: self.expires,
            description: self.description.map(str::to_string),
        }
    }
}

/// A feed's entries in order (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedEntries {
    /// Each entry in order: packed ([`pack`]), or [`WIDE`] | its index in
    /// `wide`.
    packed: Vec<u64>,
    /// The entries that do not pack (IPv6, ports), in order.
    wide: Vec<Entry>,
    /// Empty when no entry has provenance; else one index per entry into
    /// `metas` ([`NONE`]: none).
    meta: Vec<u32>,
    metas: Vec<Meta>,
}

impl FeedEntries {
    /// How many entries (as listed: duplicates count).
    pub fn len(&self) -> usize {
        self.packed.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// The `i`-th entry without its provenance.
    fn entry(&self, i: usize) -> Option<Entry> {
        let w = *self.packed.get(i)?;
        Some(if w & WIDE != 0 {
            self.wide[(w & !WIDE) as usize]
        } else {
            unpack(w)
        })
    }

    /// Append `e` (no provenance).
    fn push_entry(&mut self, e: Entry) {
        match pack(&e) {
            Some(w) => self.packed.push(w),
            None => {
                self.packed.push(WIDE | self.wide.len() as u64);
                self.wide.push(e);
            }
        }
    }

    /// The `i`-th entry.
    pub fn get(&self, i: usize) -> Option<FeedEntryRef<'_>> {
        let entry = self.entry(i)?;
        let m = match self.meta.get(i) {
            Some(&m) if m != NONE => Some(&self.metas[m as usize]),
            _ => None,
        };
        Some(FeedEntryRef::with(entry, m))
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = FeedEntryRef<'_>> + '_ {
        (0..self.packed.len()).map(|i| self.get(i).expect("in range"))
    }

    /// Every entry in order, when none has provenance (a plain list's):
    /// the packed ones as [`BareEntry::V4`], without building an
    /// [`Entry`] each (the merge reads a million of them a refresh).
    /// `None` when some entry has provenance: [`FeedEntries::iter`] then.
    pub fn bare(&self) -> Option<impl ExactSizeIterator<Item = BareEntry> + '_> {
        if !self.meta.is_empty() {
            return None;
        }
        Some(self.packed.iter().map(|&w| {
            if w & WIDE != 0 {
                BareEntry::Other(self.wide[(w & !WIDE) as usize])
            } else {
                BareEntry::of_word(w)
            }
        }))
    }

    /// Every entry as an owned [`FeedEntry`].
    pub fn to_vec(&self) -> Vec<FeedEntry> {
        self.iter().map(|e| e.to_owned()).collect()
    }

    /// Bytes held (vectors at capacity, provenance strings), for reports.
    pub fn heap_bytes(&self) -> usize {
        self.packed.capacity() * size_of::<u64>()
            + self.wide.capacity() * size_of::<Entry>()
            + self.meta.capacity() * size_of::<u32>()
            + self.metas.capacity() * size_of::<Meta>()
            + (self.metas.iter())
                .map(|m| {
                    m.indicator.as_deref().map_or(0, str::len)
                        + m.description.as_deref().map_or(0, str::len)
                })
                .sum::<usize>()
    }
}

/// One entry of a [`FeedEntries`] without provenance
/// ([`FeedEntries::bare`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareEntry {
    /// An IPv4 net without a port: its address as stored, its prefix
    /// length (at most 32) and whether it drops (else it monitors).
    V4 { addr: u32, len: u8, drop: bool },
    /// Any other entry.
    Other(Entry),
}

impl BareEntry {
    /// The entry of a packed word (not [`WIDE`]).
    fn of_word(w: u64) -> BareEntry {
        let len = ((w >> 1) & 0x3f) as u8;
        // The length was a valid one when packed; `pack` writes no other.
        assert!(len <= 32, "a packed length");
        BareEntry::V4 {
            addr: (w >> 8) as u32,
            len,
            drop: w & 1 == 1,
        }
    }

    /// As an [`Entry`].
    pub fn entry(self) -> Entry {
        match self {
            BareEntry::V4 { addr, len, drop } => Entry {
                net: ipnet::IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(addr), len)
                        .expect("a length of at most 32"),
                ),
                port: None,
                action: if drop { Action::Drop } else { Action::Monitor },
            },
            BareEntry::Other(e) => e,
        }
    }
}

/// Builds [`FeedEntries`] one entry at a time (a parse's vector, or a
/// last-known-good copy as it is decoded).
#[derive(Default)]
pub struct FeedEntriesBuilder {
    out: FeedEntries,
    index: HashMap<Meta, u32>,
}

impl FeedEntriesBuilder {
    /// Room for `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        self.out.packed.reserve(n);
    }

    /// Append one entry.
    pub fn push(&mut self, e: FeedEntry) {
        let meta = Meta {
            indicator: e.indicator.map(String::into_boxed_str),
            confidence: e.confidence,
            valid_from: e.valid_from,
            expires: e.expires,
            description: e.description.map(String::into_boxed_str),
        };
        if meta.is_empty() {
            if !self.out.meta.is_empty() {
                self.out.meta.push(NONE);
            }
        } else {
            if self.out.meta.is_empty() {
                self.out.meta = vec![NONE; self.out.packed.len()];
            }
            let next = u32::try_from(self.index.len()).expect("fewer than 2^32 records");
            let i = *self.index.entry(meta).or_insert(next);
            self.out.meta.push(i);
        }
        self.out.push_entry(e.entry);
    }

    /// Append an IPv4 net without a port or provenance (what a plain
    /// list's bare address is): the word [`FeedEntriesBuilder::push`]
    /// would store, without building a [`FeedEntry`] first.
    pub fn push_v4(&mut self, net: ipnet::Ipv4Net, action: Action) {
        if !self.out.meta.is_empty() {
            self.out.meta.push(NONE);
        }
        let e = Entry::new(ipnet::IpNet::V4(net), None, action);
        self.out
            .packed
            .push(pack(&e).expect("an IPv4 net without a port packs"));
    }

    /// How many entries so far.
    pub fn len(&self) -> usize {
        self.out.packed.len()
    }

    /// Whether there are none yet.
    pub fn is_empty(&self) -> bool {
        self.out.packed.is_empty()
    }

    /// The entries.
    pub fn finish(mut self) -> FeedEntries {
        let mut metas = vec![Meta::default(); self.index.len()];
        for (m, i) in self.index {
            metas[i as usize] = m;
        }
        self.out.metas = metas;
        self.out.packed.shrink_to_fit();
        self.out.wide.shrink_to_fit();
        self.out.meta.shrink_to_fit();
        self.out
    }
}

impl From<Vec<FeedEntry>> for FeedEntries {
    fn from(v: Vec<FeedEntry>) -> Self {
        let mut b = FeedEntriesBuilder::default();
        b.reserve(v.len());
        for e in v {
            b.push(e);
        }
        b.finish()
    }
}

impl FromIterator<FeedEntry> for FeedEntries {
    fn from_iter<I: IntoIterator<Item = FeedEntry>>(iter: I) -> Self {
        let mut b = FeedEntriesBuilder::default();
        for e in iter {
            b.push(e);
        }
        b.finish()
    }
}

/// As a sequence of [`FeedEntry`] (the last-known-good format is
/// unchanged).
impl Serialize for FeedEntries {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for e in self.iter() {
            seq.serialize_element(&e.to_owned())?;
        }
        seq.end()
    }
}

/// From a sequence of [`FeedEntry`], one element at a time (a 1M-entry
/// copy is never held as a vector of [`FeedEntry`]).
impl<'de> Deserialize<'de> for FeedEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FeedEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of feed entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FeedEntries, A::Error> {
                let mut b = FeedEntriesBuilder::default();
                if let Some(n) = seq.size_hint() {
                    b.reserve(n.min(1 << 20));
                }
                while let Some(e) = seq.next_element::<FeedEntry>()? {
                    b.push(e);
                }
                Ok(b.finish())
            }
        }
        d.deserialize_seq(V)
    }
}

/// The provenance record of the binary form: every field present (a
/// positional format has no "absent"), times as Unix nanoseconds.
#[derive(Serialize, Deserialize)]
struct BinaryMeta<S> {
    indicator: Option<S>,
    confidence: Option<u8>,
    valid_from: Option<i128>,
    expires: Option<i128>,
    description: Option<S>,
}

/// The provenance part of the binary form, after the entries: each
/// entry's record index (empty when none has one) and the records.
type BinaryProvenance = (Vec<u32>, Vec<BinaryMeta<String>>);

/// [`FeedEntries`] as it is written in binary (borrowed: nothing is
/// copied but the few provenance records).
#[derive(Serialize)]
struct BinaryOut<'a> {
    entries: EntrySeq<'a>,
    meta: &'a [u32],
    metas: Vec<BinaryMeta<&'a str>>,
}

/// The entries of [`FeedEntries`] as a sequence of [`Entry`] (what the
/// binary form has held since it was a vector of them).
struct EntrySeq<'a>(&'a FeedEntries);

impl Serialize for EntrySeq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for i in 0..self.0.len() {
            seq.serialize_element(&self.0.entry(i).expect("in range"))?;
        }
        seq.end()
    }
}

/// A sequence of [`Entry`] decoded straight into the packed form (host
/// bits cleared, as [`Entry::new`] does: the input is untrusted); the
/// reference decoder of the tests.
#[cfg(test)]
struct Packed(FeedEntries);

#[cfg(test)]
impl<'de> Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Packed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Packed, A::Error> {
                let mut out = FeedEntries::default();
                if let Some(n) = seq.size_hint() {
                    // A hint, from a file: grown as entries arrive beyond it.
                    out.packed.reserve(n.min(1 << 20));
                }
                while let Some(mut e) = seq.next_element::<Entry>()? {
                    e.net = e.net.trunc();
                    out.push_entry(e);
                }
                out.packed.shrink_to_fit();
                out.wide.shrink_to_fit();
                Ok(Packed(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// [`FeedEntries`] as it is read back from binary (the tests' reference).
#[cfg(test)]
#[derive(Deserialize)]
struct BinaryIn {
    entries: Packed,
    meta: Vec<u32>,
    metas: Vec<BinaryMeta<String>>,
}

impl FeedEntries {
    /// Write the entries in postcard, the last-known-good copy's binary
    /// form: each entry is its fixed fields (a `/32` is 8 bytes), the
    /// provenance index and records as held. Read back by
    /// [`FeedEntries::read_binary`].
    pub fn write_binary<W: std::io::Write>(&self, mut w: W) -> postcard::Result<W> {
        // The same bytes as `postcard::to_io(&self.binary_out(), w)` (a
        // struct is its fields one after the other, a sequence its varint
        // length and its elements), with each packed entry's 8 bytes
        // written by hand: through serde they cost a call per byte, most
        // of the CPU of saving a 1M-entry copy before deflate. A test
        // checks the two agree.
        let full = |_| postcard::Error::SerializeBufferFull;
        let mut buf = postcard::to_extend(&self.len(), Vec::with_capacity(1 << 16))?;
        for &p in &self.packed {
            if p & WIDE == 0 {
                let a = ((p >> 8) as u32).to_be_bytes();
                // IpNet::V4 (variant 0), the octets, the length, no port
                // (None), the action (Monitor 0, Drop 1).
                let len = ((p >> 1) & 0x3f) as u8;
                buf.extend_from_slice(&[0, a[0], a[1], a[2], a[3], len, 0, (p & 1) as u8]);
            } else {
                buf = postcard::to_extend(&self.wide[(p & !WIDE) as usize], buf)?;
            }
            if buf.len() >= 1 << 16 {
                w.write_all(&buf).map_err(full)?;
                buf.clear();
            }
        }
        self.write_provenance(w, &buf)
    }

    /// Write the entries in the last-known-good copy's form from format 3
    /// on, read back by [`FeedEntries::read_delta`]: the count, then per
    /// entry one LEB128 varint. A packed entry is `zigzag(address - the
    /// previous packed entry's address) << 2 | new << 1` where `new` says a
    /// byte with its length and action (`len << 1 | drop`) follows (else
    /// they are the previous packed entry's); a wide entry is `1`, then
    /// the entry in postcard. Then the provenance as
    /// [`FeedEntries::write_binary`] writes it. A sorted list's neighbours
    /// are close, so a `/32` costs about three bytes (random order five),
    /// without a compressor: deflating the 8-byte form was most of the
    /// cost of saving a copy, and got 5.1 bytes.
    pub fn write_delta<W: std::io::Write>(&self, mut w: W) -> postcard::Result<W> {
        let full = |_| postcard::Error::SerializeBufferFull;
        let mut buf = Vec::with_capacity(1 << 16);
        put_varint(&mut buf, self.len() as u64);
        // The previous packed entry's address and length-and-action byte.
        let (mut addr, mut low) = (0i64, None);
        for &p in &self.packed {
            if p & WIDE == 0 {
                let (a, l) = ((p >> 8) as i64, p as u8);
                let new = low != Some(l);
                put_varint(&mut buf, zigzag(a - addr) << 2 | u64::from(new) << 1);
                if new {
                    buf.push(l);
                }
                (addr, low) = (a, Some(l));
            } else {
                put_varint(&mut buf, 1);
                buf = postcard::to_extend(&self.wide[(p & !WIDE) as usize], buf)?;
            }
            if buf.len() >= 1 << 16 {
                w.write_all(&buf).map_err(full)?;
                buf.clear();
            }
        }
        self.write_provenance(w, &buf)
    }

    /// The entries written by [`FeedEntries::write_delta`] at the start of
    /// `bytes`, and the bytes after them. Checked as untrusted input, as
    /// [`FeedEntries::read_binary`] is: a varint too long, a packed entry
    /// out of range (a length over 32, bits above the address), a provenance
    /// index out of range or a time out of range is an error, and every net
    /// has its host bits cleared.
    pub fn read_delta(bytes: &[u8]) -> Result<(FeedEntries, &[u8]), String> {
        let err = |e: postcard::Error| format!("entries: {e}");
        let (n, mut rest) = take_varint(bytes).ok_or("entries: bad count")?;
        let mut entries = FeedEntries::default();
        // A hint, from a file: grown as entries arrive beyond it.
        entries.packed.reserve(n.min(1 << 20) as usize);
        let (mut addr, mut low) = (0i64, None);
        for i in 0..n {
            let (v, tail) = take_varint(rest).ok_or_else(|| format!("entry {i}: bad varint"))?;
            rest = tail;
            if v & 1 == 0 {
                addr = addr.wrapping_add(unzigzag(v >> 2));
                if v & 2 != 0 {
                    let (&l, tail) = rest
                        .split_first()
                        .ok_or_else(|| format!("entry {i}: cut short"))?;
                    rest = tail;
                    low = Some(l);
                }
                let l = low.ok_or_else(|| format!("entry {i}: no length"))?;
                let len = u32::from(l >> 1);
                if !(0..=i64::from(u32::MAX)).contains(&addr) || len > 32 {
                    return Err(format!("entry {i}: not an IPv4 net ({addr:#x}/{len})"));
                }
                // Host bits cleared, as `Entry::new` does.
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                let a = addr as u32 & mask;
                entries
                    .packed
                    .push(u64::from(a) << 8 | u64::from(len) << 1 | u64::from(l & 1));
            } else if v == 1 {
                let (mut e, tail) = postcard::take_from_bytes::<Entry>(rest).map_err(err)?;
                e.net = e.net.trunc();
                entries.push_entry(e);
                rest = tail;
            } else {
                return Err(format!("entry {i}: unknown tag {v}"));
            }
        }
        entries.packed.shrink_to_fit();
        entries.wide.shrink_to_fit();
        let ((meta, metas), rest) =
            postcard::take_from_bytes::<BinaryProvenance>(rest).map_err(err)?;
        Ok((Self::checked(entries, meta, metas)?, rest))
    }

    /// Write the rest of `buf`, then the provenance: how both binary
    /// forms end.
    fn write_provenance<W: std::io::Write>(&self, mut w: W, buf: &[u8]) -> postcard::Result<W> {
        w.write_all(buf)
            .map_err(|_| postcard::Error::SerializeBufferFull)?;
        let out = self.binary_out();
        postcard::to_io(&(out.meta, out.metas), w)
    }

    /// What [`FeedEntries::write_binary`] writes, as serde sees it.
    fn binary_out(&self) -> BinaryOut<'_> {
        BinaryOut {
            entries: EntrySeq(self),
            meta: &self.meta,
            metas: (self.metas.iter())
                .map(|m| BinaryMeta {
                    indicator: m.indicator.as_deref(),
                    confidence: m.confidence,
                    valid_from: m.valid_from.map(OffsetDateTime::unix_timestamp_nanos),
                    expires: m.expires.map(OffsetDateTime::unix_timestamp_nanos),
                    description: m.description.as_deref(),
                })
                .collect(),
        }
    }

    /// The entries written by [`FeedEntries::write_binary`] at the start of
    /// `bytes`, and the bytes after them. Checked as untrusted input: a
    /// provenance index out of range, an index of the wrong length or a
    /// time out of range is an error, and every net has its host bits
    /// cleared (as [`Entry::new`] does).
    pub fn read_binary(bytes: &[u8]) -> Result<(FeedEntries, &[u8]), String> {
        let err = |e: postcard::Error| format!("entries: {e}");
        // What `postcard::take_from_bytes::<BinaryIn>` reads (a test
        // checks the two agree on good and damaged input), with a packed
        // entry's 8 bytes recognised by hand: through serde they were
        // most of the decoding of a 1M-entry copy. Anything else, or a
        // field out of range, goes through serde, which reads it or
        // fails as before.
        let (n, mut rest) = postcard::take_from_bytes::<usize>(bytes).map_err(err)?;
        let mut entries = FeedEntries::default();
        // A hint, from a file: grown as entries arrive beyond it.
        entries.packed.reserve(n.min(1 << 20));
        for _ in 0..n {
            match rest {
                [0, a, b, c, d, len @ 0..=32, 0, act @ 0..=1, tail @ ..] => {
                    let addr = u32::from_be_bytes([*a, *b, *c, *d]);
                    // Host bits cleared, as `Entry::new` does.
                    let addr = addr & u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                    entries
                        .packed
                        .push(u64::from(addr) << 8 | u64::from(*len) << 1 | u64::from(*act));
                    rest = tail;
                }
                _ => {
                    let (mut e, tail) = postcard::take_from_bytes::<Entry>(rest).map_err(err)?;
                    e.net = e.net.trunc();
                    entries.push_entry(e);
                    rest = tail;
                }
            }
        }
        entries.packed.shrink_to_fit();
        entries.wide.shrink_to_fit();
        let ((meta, metas), rest) =
            postcard::take_from_bytes::<BinaryProvenance>(rest).map_err(err)?;
        Ok((Self::checked(entries, meta, metas)?, rest))
    }

    /// Decoded entries with their provenance, checked.
    fn checked(
        mut entries: FeedEntries,
        meta: Vec<u32>,
        metas: Vec<BinaryMeta<String>>,
    ) -> Result<FeedEntries, String> {
        if !meta.is_empty() && meta.len() != entries.len() {
            return Err(format!(
                "{} provenance indexes for {} entries",
                meta.len(),
                entries.len()
            ));
        }
        if let Some(i) = meta
            .iter()
            .find(|&&i| i != NONE && i as usize >= metas.len())
        {
            return Err(format!("provenance index {i} of {} records", metas.len()));
        }
        let time = |t: Option<i128>| -> Result<Option<OffsetDateTime>, String> {
            t.map(|n| {
                OffsetDateTime::from_unix_timestamp_nanos(n)
                    .map_err(|e| format!("provenance time {n}: {e}"))
            })
            .transpose()
        };
        let metas = (metas.into_iter())
            .map(|m| {
                Ok(Meta {
                    indicator: m.indicator.map(String::into_boxed_str),
                    confidence: m.confidence,
                    valid_from: time(m.valid_from)?,
                    expires: time(m.expires)?,
                    description: m.description.map(String::into_boxed_str),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        entries.meta = meta;
        entries.metas = metas;
        Ok(entries)
    }

    /// [`FeedEntries::read_binary`] through serde alone: the reference
    /// its hand-written decoding is tested against.
    #[cfg(test)]
    fn read_binary_serde(bytes: &[u8]) -> Result<(FeedEntries, &[u8]), String> {
        let (b, rest): (BinaryIn, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| format!("entries: {e}"))?;
        let BinaryIn {
            entries: Packed(entries),
            meta,
            metas,
        } = b;
        Ok((Self::checked(entries, meta, metas)?, rest))
    }
}

/// Append `v` as an LEB128 varint (postcard's, at most ten bytes).
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// An LEB128 varint at the start of `bytes` and the bytes after it;
/// `None` when cut short or longer than a `u64` takes.
fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

/// A signed difference as an unsigned number, small when it is small.
fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Action;

    /// The hand-written binary form is byte for byte what serde writes,
    /// for packed entries of every length and action, wide ones (IPv6,
    /// ports) and provenance; and it reads back.
    #[test]
    fn write_binary_is_the_serde_encoding() {
        use rand::SeedableRng;
        let seed = crate::testing::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for n in [0usize, 1, 5, 3000, 20_000] {
            for wide_share in [0.0, 0.2, 1.0] {
                let c = FeedEntries::from(random_entries(&mut rng, n, wide_share));
                let want = postcard::to_stdvec(&c.binary_out()).unwrap();
                let got = c.write_binary(Vec::new()).unwrap();
                assert!(got == want, "n {n}, wide {wide_share} (seed {seed})");
                let (back, rest) = FeedEntries::read_binary(&got).unwrap();
                assert!(
                    rest.is_empty() && back == c,
                    "n {n}, wide {wide_share} (seed {seed})"
                );
                // Damaged copies read as serde reads them: the same
                // entries, or an error from both (host bits set, lengths
                // out of range, other variants and truncation included).
                for _ in 0..40 {
                    let bad = damage(&mut rng, &got, 30..36);
                    let fast = FeedEntries::read_binary(&bad).ok();
                    let reference = FeedEntries::read_binary_serde(&bad).ok();
                    assert!(
                        fast == reference,
                        "n {n}, wide {wide_share}, damaged (seed {seed})"
                    );
                }
            }
        }
    }

    /// `bytes` with one to three bytes replaced (by a random byte, a small
    /// one or one from `near`) and at times cut short.
    fn damage(rng: &mut rand::rngs::StdRng, bytes: &[u8], near: std::ops::Range<u8>) -> Vec<u8> {
        use rand::Rng;
        let mut bad = bytes.to_vec();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..bad.len());
            bad[i] = match rng.random_range(0..3) {
                0 => rng.random(),
                1 => rng.random_range(0..3),
                _ => rng.random_range(near.clone()),
            };
        }
        if rng.random_bool(0.2) {
            bad.truncate(rng.random_range(0..bad.len()));
        }
        bad
    }

    /// `n` random entries: IPv4 nets of every length and action, and at
    /// `wide_share` IPv6 nets, ports and provenance.
    fn random_entries(rng: &mut rand::rngs::StdRng, n: usize, wide_share: f64) -> Vec<FeedEntry> {
        use crate::entry::{PortMatch, Proto, Side};
        use rand::Rng;
        (0..n)
            .map(|_| {
                let action = if rng.random() {
                    Action::Drop
                } else {
                    Action::Monitor
                };
                let len = rng.random_range(0..=32u8);
                let net: ipnet::IpNet = if rng.random_bool(wide_share) {
                    ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(rng.random::<u128>()), len * 4)
                        .unwrap()
                        .into()
                } else {
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(rng.random::<u32>()), len)
                        .unwrap()
                        .into()
                };
                let port = (rng.random_bool(wide_share)).then(|| PortMatch {
                    proto: Proto::Udp,
                    port: rng.random(),
                    side: Side::Src,
                });
                let mut e = FeedEntry::new(Entry::new(net, port, action));
                if rng.random_bool(wide_share / 2.0) {
                    e.indicator = Some(format!("ind-{}", rng.random_range(0..9)));
                    e.confidence = Some(rng.random_range(0..=100));
                }
                e
            })
            .collect()
    }

    /// The delta form reads back as written (every kind of entry, with
    /// provenance, and what follows it left alone); damaged copies read
    /// as an error or as well-formed entries (host bits clear), never a
    /// panic; a sorted list of /32s takes about two bytes an entry.
    #[test]
    fn write_delta_reads_back() {
        use rand::{Rng, SeedableRng};
        let seed = crate::testing::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for n in [0usize, 1, 5, 3000, 20_000] {
            for wide_share in [0.0, 0.2, 1.0] {
                let c = FeedEntries::from(random_entries(&mut rng, n, wide_share));
                let mut got = c.write_delta(Vec::new()).unwrap();
                let (back, rest) = FeedEntries::read_delta(&got).unwrap();
                assert!(
                    rest.is_empty() && back == c,
                    "n {n}, wide {wide_share} (seed {seed})"
                );
                for _ in 0..40 {
                    let bad = damage(&mut rng, &got, 0x7e..0x82);
                    if let Ok((x, _)) = FeedEntries::read_delta(&bad) {
                        assert!(
                            x.iter().all(|e| e.entry.net == e.entry.net.trunc()),
                            "n {n}, wide {wide_share}, damaged (seed {seed})"
                        );
                    }
                }
                got.extend_from_slice(b"tail");
                assert_eq!(FeedEntries::read_delta(&got).unwrap().1, b"tail");
            }
        }
        // Host bits set by hand are cleared, as `Entry::new` clears them.
        let mut hand = Vec::new();
        put_varint(&mut hand, 1);
        put_varint(&mut hand, zigzag(0x0a00_0001) << 2 | 2);
        hand.push(24 << 1 | 1);
        hand.extend_from_slice(
            &postcard::to_stdvec(&(Vec::<u32>::new(), Vec::<BinaryMeta<String>>::new())).unwrap(),
        );
        let (x, _) = FeedEntries::read_delta(&hand).unwrap();
        assert_eq!(x.get(0).unwrap().entry.net.to_string(), "10.0.0.0/24");
        // A sorted list of /32s, as most published lists are.
        let mut addrs: Vec<u32> = (0..100_000).map(|_| rng.random()).collect();
        addrs.sort_unstable();
        let sorted: FeedEntries = addrs
            .iter()
            .map(|&a| {
                FeedEntry::new(Entry::new(
                    ipnet::IpNet::from(std::net::IpAddr::from(a.to_be_bytes())),
                    None,
                    Action::Drop,
                ))
            })
            .collect();
        let len = sorted.write_delta(Vec::new()).unwrap().len();
        assert!(len < 300_000, "{len} bytes for 100k sorted /32s");
    }

    /// The varints are postcard's: the same bytes for a spread of values,
    /// read back by postcard, and postcard's read back here.
    #[test]
    fn varints_are_postcards() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            1 << 21,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            put_varint(&mut ours, v);
            assert_eq!(ours, postcard::to_stdvec(&v).unwrap(), "{v}");
            assert_eq!(postcard::from_bytes::<u64>(&ours).unwrap(), v);
            assert_eq!(take_varint(&ours), Some((v, &[][..])), "{v}");
            assert_eq!(take_varint(&ours[..ours.len() - 1]), None, "{v} cut");
        }
        // Eleven bytes, or a tenth byte above one bit, is no u64.
        assert_eq!(take_varint(&[0xff; 11]), None);
        assert_eq!(
            take_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
        for d in [
            0i64,
            1,
            -1,
            255,
            -256,
            i64::from(u32::MAX),
            -i64::from(u32::MAX),
        ] {
            assert_eq!(unzigzag(zigzag(d)), d);
        }
    }

    fn fe(s: &str) -> FeedEntry {
        FeedEntry::new(Entry::new(s.parse().unwrap(), None, Action::Drop))
    }

    /// Entries come back as they went in, in order, with their provenance;
    /// a plain list holds no index at all, and shared provenance is one
    /// record.
    #[test]
    fn entries_round_trip_and_share_provenance() {
        let plain: FeedEntries = (0..50u8).map(|i| fe(&format!("192.0.2.{i}/32"))).collect();
        assert!(plain.meta.is_empty() && plain.metas.is_empty());
        assert_eq!(plain.get(49).unwrap().to_owned(), fe("192.0.2.49/32"));

        let mut v = vec![fe("10.0.0.1/32"), fe("10.0.0.2/32")];
        for i in 0..10u8 {
            let mut e = fe(&format!("10.1.0.{i}/32"));
            e.indicator = Some("SBL7".into());
            e.confidence = Some(60);
            e.description = Some("spam".into());
            v.push(e);
        }
        let mut odd = fe("10.2.0.0/16");
        odd.expires = Some(time::macros::datetime!(2030-01-01 00:00 UTC));
        v.push(odd);
        let c = FeedEntries::from(v.clone());
        assert_eq!(c.metas.len(), 2, "{:?}", c.metas);
        assert_eq!(c.to_vec(), v);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, serde_json::to_string(&v).unwrap());
        let back: FeedEntries = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);

        // The binary form: the same entries and provenance, and what
        // follows it left alone.
        for x in [&plain, &c] {
            let mut bin = x.write_binary(Vec::new()).unwrap();
            bin.extend_from_slice(b"tail");
            let (back, rest) = FeedEntries::read_binary(&bin).unwrap();
            assert_eq!(&back, x);
            assert_eq!(rest, b"tail");
        }
        // A plain /32 is 8 bytes.
        let bin = plain.write_binary(Vec::new()).unwrap();
        assert!(bin.len() <= 50 * 8 + 4, "{} bytes", bin.len());
    }

    /// IPv4 nets without a port pack into a word, everything else keeps
    /// its [`Entry`]: every kind comes back as it went in, in order, and
    /// the binary form is the sequence of entries it always was (files
    /// written before the packing read back, and the other way round).
    #[test]
    fn packed_and_wide_entries_keep_their_order() {
        use crate::entry::{PortMatch, Proto, Side};
        let mut v: Vec<FeedEntry> = Vec::new();
        for len in 0..=32u8 {
            let mut e = fe(&format!("203.0.113.77/{len}"));
            if len % 3 == 0 {
                e.entry.action = Action::Monitor;
            }
            v.push(e);
            if len % 8 == 0 {
                v.push(fe(&format!("2001:db8::{len:x}/128")));
            }
        }
        let port = PortMatch {
            proto: Proto::Udp,
            port: 53,
            side: Side::Dst,
        };
        v.push(FeedEntry::new(Entry::new(
            "192.0.2.1/32".parse().unwrap(),
            Some(port),
            Action::Drop,
        )));
        v.push(fe("255.255.255.255/32"));
        v.push(fe("0.0.0.0/32"));
        let c = FeedEntries::from(v.clone());
        assert_eq!(c.to_vec(), v);
        assert_eq!(c.wide.len(), 6, "IPv6 and the ported entry are wide");
        let plain: Vec<Entry> = v.iter().map(|e| e.entry).collect();
        let bin = c.write_binary(Vec::new()).unwrap();
        let old = postcard::to_allocvec(&plain).unwrap();
        assert!(bin.starts_with(&old), "the entries are written as before");
        let (back, _) = FeedEntries::read_binary(&bin).unwrap();
        assert_eq!(back, c);
        // 1,000 /32s: 8 bytes each.
        let many: FeedEntries = (0..1000u32)
            .map(|i| fe(&format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + i))))
            .collect();
        assert_eq!(many.heap_bytes(), 8 * 1000);
    }

    /// Bad binary input is an error that says what is wrong, never a panic
    /// or an index out of range later.
    #[test]
    fn binary_input_is_checked() {
        let mut e = fe("10.1.0.1/32");
        e.indicator = Some("x".into());
        let c = FeedEntries::from(vec![fe("10.0.0.1/32"), e]);
        let bin = c.write_binary(Vec::new()).unwrap();
        // Every cut is an error.
        for n in 0..bin.len() {
            assert!(FeedEntries::read_binary(&bin[..n]).is_err(), "cut at {n}");
        }
        // An index past the records.
        let bad = FeedEntries {
            metas: Vec::new(),
            ..c.clone()
        };
        let err = FeedEntries::read_binary(&bad.write_binary(Vec::new()).unwrap()).unwrap_err();
        assert!(err.contains("provenance index 0 of 0"), "{err}");
        // An index of the wrong length.
        let bad = FeedEntries {
            meta: vec![NONE],
            ..c.clone()
        };
        let err = FeedEntries::read_binary(&bad.write_binary(Vec::new()).unwrap()).unwrap_err();
        assert!(err.contains("1 provenance indexes for 2 entries"), "{err}");
        // Host bits are cleared as `Entry::new` clears them.
        let mut raw = FeedEntries::default();
        raw.push_entry(Entry {
            net: "10.9.8.7/16".parse().unwrap(),
            port: None,
            action: Action::Drop,
        });
        let (back, _) = FeedEntries::read_binary(&raw.write_binary(Vec::new()).unwrap()).unwrap();
        assert_eq!(back.get(0).unwrap().entry.net.to_string(), "10.9.0.0/16");
    }
}
