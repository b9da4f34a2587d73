//! Who asserted each entry of the desired state, held compactly.
//!
//! The agent keeps the merged state for as long as it runs (the metrics
//! exporter shares it), so its size is paid per entry for good. A map from
//! key to a vector of owned [`Provenance`]s cost about 190 bytes a `/32`
//! (a tree node share, a vector, a heap block and a copy of the feed name
//! per entry). Here the assertions of the set's `i`-th entry are one run of
//! references to distinct assertion records (`Item`s), parallel to the
//! sorted entries, and every feed name, indicator and description is
//! stored once however many entries carry it. Where every entry has one
//! assertion (most sets) the runs need no starts: 4 bytes an entry; where
//! those are all the same record (a plain list's), nothing per entry.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::Serialize;
use time::OffsetDateTime;

use crate::entry::{Action, Entry, EntryKey};

/// One feed's assertion of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// Feed name.
    pub feed: String,
    /// The feed's identifier for it (SBL id, STIX id, malware family, ...).
    pub indicator: Option<String>,
    /// The action this assertion asks for (after the confidence threshold).
    pub action: Action,
    /// Confidence 0-100, when the feed says.
    pub confidence: Option<u8>,
    /// When this assertion lapses: its own expiry, else `ttl` after the
    /// feed's last successful fetch; `None`: never.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires: Option<OffsetDateTime>,
    /// Free text.
    pub description: Option<String>,
}

/// "No string" in an [`Item`].
const NONE: u32 = u32::MAX;

/// One assertion, its strings as indices into [`Provenances::strings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Item {
    feed: u32,
    indicator: u32,
    description: u32,
    action: Action,
    confidence: Option<u8>,
    expires: Option<OffsetDateTime>,
}

/// The assertions of every entry of a sorted entry list (see the module
/// documentation); built by [`Builder`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenances {
    /// The references (indices into `records`) of each entry.
    refs: Refs,
    /// Every distinct assertion.
    records: Vec<Item>,
    /// Every distinct feed name, indicator and description.
    strings: Vec<Box<str>>,
}

/// The references of each entry, in the smallest of three shapes
/// ([`Builder::finish`] picks it).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refs {
    /// The `i`-th entry's references are `refs[starts[i]..starts[i + 1]]`.
    Runs { starts: Vec<u32>, refs: Vec<u32> },
    /// One reference an entry: the `i`-th entry's is `[i]`.
    One(Vec<u32>),
    /// One reference an entry, `r` for each of the `n` entries.
    Same { n: usize, r: u32 },
}

impl Default for Refs {
    fn default() -> Self {
        Refs::One(Vec::new())
    }
}

impl Refs {
    /// Of runs as [`Builder::finish`] collects them (every entry has at
    /// least one reference).
    fn of_runs(starts: Vec<u32>, refs: Vec<u32>) -> Refs {
        let n = starts.len().saturating_sub(1);
        if refs.len() != n {
            return Refs::Runs { starts, refs };
        }
        match refs.first() {
            Some(&r) if refs.iter().all(|&x| x == r) => Refs::Same { n, r },
            _ => Refs::One(refs),
        }
    }

    /// The references of the `i`-th entry.
    fn of(&self, i: usize) -> &[u32] {
        match self {
            Refs::Runs { starts, refs } => match (starts.get(i), starts.get(i + 1)) {
                (Some(&a), Some(&b)) => &refs[a as usize..b as usize],
                _ => &[],
            },
            Refs::One(refs) => refs.get(i..i + 1).unwrap_or(&[]),
            Refs::Same { n, r } if i < *n => std::slice::from_ref(r),
            Refs::Same { .. } => &[],
        }
    }

    /// Bytes held by the vectors.
    fn heap_bytes(&self) -> usize {
        match self {
            Refs::Runs { starts, refs } => (starts.capacity() + refs.capacity()) * size_of::<u32>(),
            Refs::One(refs) => refs.capacity() * size_of::<u32>(),
            Refs::Same { .. } => 0,
        }
    }
}

impl Provenances {
    fn text(&self, i: u32) -> Option<&str> {
        (i != NONE).then(|| &*self.strings[i as usize])
    }

    fn range(&self, i: usize) -> impl Iterator<Item = &Item> + '_ {
        self.refs.of(i).iter().map(|&r| &self.records[r as usize])
    }

    /// The assertions of the `i`-th entry, in feed order.
    pub fn of(&self, i: usize) -> Vec<Provenance> {
        self.range(i)
            .map(|it| Provenance {
                feed: self.text(it.feed).unwrap_or_default().to_string(),
                indicator: self.text(it.indicator).map(str::to_string),
                action: it.action,
                confidence: it.confidence,
                expires: it.expires,
                description: self.text(it.description).map(str::to_string),
            })
            .collect()
    }

    /// The feeds asserting the `i`-th entry, each once, in feed order.
    pub fn feeds(&self, i: usize) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for it in self.range(i) {
            let f = self.text(it.feed).unwrap_or_default();
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// Bytes held (vectors at capacity and the strings), for reports.
    pub fn heap_bytes(&self) -> usize {
        self.refs.heap_bytes()
            + self.records.capacity() * size_of::<Item>()
            + self.strings.capacity() * size_of::<Box<str>>()
            + self.strings.iter().map(|s| s.len()).sum::<usize>()
    }
}

/// One feed's assertion as [`Builder::push`] takes it.
pub struct Assertion<'a> {
    /// The feed, as [`Builder::feed`] numbered it.
    pub feed: u32,
    /// The feed's identifier.
    pub indicator: Option<&'a str>,
    /// The action asked for (after the confidence threshold).
    pub action: Action,
    /// Confidence 0-100.
    pub confidence: Option<u8>,
    /// When it lapses.
    pub expires: Option<OffsetDateTime>,
    /// Free text.
    pub description: Option<&'a str>,
}

/// What one block feed contributes, by distinct key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCounts {
    /// Distinct keys.
    pub entries: usize,
    /// Of those, keys the feed wants dropped.
    pub drop: usize,
}

/// Collects assertions in feed order, then sorts them into entries and
/// [`Provenances`] ([`Builder::finish`]).
#[derive(Default)]
pub struct Builder {
    /// The assertions of IPv4 keys without a port (most of a big set),
    /// each its [`packed_v4`] key above its push number: 8 bytes where an
    /// `items` element is 36, and already the radix sort's input.
    v4: Vec<u64>,
    /// The other assertions (and any past 2^[`INDEX_BITS`] pushes): key,
    /// record and push number.
    items: Vec<(EntryKey, u32, u32)>,
    /// Each assertion's record, by push number.
    recs: Vec<u32>,
    /// Distinct assertion records, and their numbers.
    records: Vec<Item>,
    record_index: rustc_hash::FxHashMap<Item, u32>,
    /// The record found last, and its number.
    last: Option<(Item, u32)>,
    /// Interned strings (moved into [`Provenances::strings`] at the end).
    index: HashMap<Box<str>, u32>,
}

/// The sort key of an IPv4 key without a port, in [`EntryKey`]'s order
/// among such keys (address, then prefix length), in 38 bits.
fn packed_v4(k: &EntryKey) -> Option<u64> {
    match (k.net, k.port) {
        (IpNet::V4(n), None) => Some(pack_v4(u32::from(n.addr()), n.prefix_len())),
        _ => None,
    }
}

/// [`packed_v4`] of the net `addr`/`len`.
fn pack_v4(addr: u32, len: u8) -> u64 {
    u64::from(addr) << 6 | u64::from(len)
}

/// The key of a [`packed_v4`] sort key.
fn unpack_v4(k: u64) -> EntryKey {
    let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from((k >> 6) as u32), (k & 63) as u8)
        .expect("a packed prefix length");
    EntryKey {
        net: IpNet::V4(net),
        port: None,
    }
}

/// The key and push number of a [`Builder::v4`] element.
fn split_v4(p: u64) -> (EntryKey, u32) {
    (
        unpack_v4(p >> INDEX_BITS),
        (p & ((1 << INDEX_BITS) - 1)) as u32,
    )
}

/// Bits of an assertion's index next to its [`packed_v4`] key.
const INDEX_BITS: u32 = 64 - 38;

/// The assertions in order of key, then push number, as (key, record,
/// push number): `v4` ([`Builder::v4`]) radix-sorted, `rest` sorted by
/// comparison, the two runs merged as they are read. Comparing
/// `EntryKey`s (nested enums) was a tenth of a 1M-entry start, and the
/// merged list written out whole another 40 bytes an assertion.
fn merged(
    mut v4: Vec<u64>,
    mut rest: Vec<(EntryKey, u32, u32)>,
    recs: &[u32],
) -> impl Iterator<Item = (EntryKey, u32, u32)> + '_ {
    // The push order survives within a key: it breaks ties, so an
    // unstable sort (ipnsort) gives the stable order.
    let by_key =
        |a: &(EntryKey, u32, u32), b: &(EntryKey, u32, u32)| a.0.cmp(&b.0).then(a.2.cmp(&b.2));
    // Stable by key; the low bits are push numbers, so ties keep their
    // push order.
    crate::radix::sort_by_bits(&mut v4, INDEX_BITS, 64);
    rest.sort_unstable_by(by_key);
    let mut r = rest.into_iter().peekable();
    let mut p = v4.into_iter().map(move |p| {
        let (key, seq) = split_v4(p);
        (key, recs[seq as usize], seq)
    });
    let mut next_p = p.next();
    std::iter::from_fn(move || match (&next_p, r.peek()) {
        (Some(a), Some(b)) if by_key(b, a).is_lt() => r.next(),
        (Some(_), _) => std::mem::replace(&mut next_p, p.next()),
        (None, _) => r.next(),
    })
}

#[cfg(test)]
impl Builder {
    /// Every assertion as (key, record, push number), in push order.
    fn pushed(&self) -> Vec<(EntryKey, u32, u32)> {
        let mut all: Vec<(EntryKey, u32, u32)> = self.items.clone();
        for &p in &self.v4 {
            let (key, seq) = split_v4(p);
            all.push((key, self.recs[seq as usize], seq));
        }
        all.sort_by_key(|it| it.2);
        all
    }
}

/// Sort assertions (key, record, push number; in push order) by key, then
/// push number, the way [`Builder::finish`] reads them.
#[cfg(test)]
fn sort_items(items: &mut Vec<(EntryKey, u32, u32)>) {
    let recs: Vec<u32> = items.iter().map(|it| it.1).collect();
    let (mut v4, mut rest) = (Vec::new(), Vec::new());
    for (i, it) in items.iter().enumerate() {
        assert_eq!(it.2 as usize, i, "assertions come in push order");
        match packed_v4(&it.0) {
            Some(k) => v4.push(k << INDEX_BITS | i as u64),
            None => rest.push(*it),
        }
    }
    *items = merged(v4, rest, &recs).collect();
}

impl Builder {
    /// Room for `n` more assertions.
    pub fn reserve(&mut self, n: usize) {
        self.v4.reserve(n);
        self.recs.reserve(n);
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u32::try_from(self.index.len()).expect("fewer than 2^32 strings");
        self.index.insert(s.into(), i);
        i
    }

    fn record(&mut self, it: Item) -> u32 {
        // A list without provenance repeats one record: compared, not
        // hashed, a million times.
        if let Some((last, r)) = self.last
            && last == it
        {
            return r;
        }
        let r = match self.record_index.get(&it) {
            Some(&r) => r,
            None => {
                let r = u32::try_from(self.records.len()).expect("fewer than 2^32 records");
                self.records.push(it);
                self.record_index.insert(it, r);
                r
            }
        };
        self.last = Some((it, r));
        r
    }

    /// Number a feed.
    pub fn feed(&mut self, name: &str) -> u32 {
        self.intern(name)
    }

    /// The number of assertion `a`'s record, for [`Builder::push_v4`].
    pub fn record_of(&mut self, a: Assertion<'_>) -> u32 {
        let item = Item {
            feed: a.feed,
            indicator: a.indicator.map_or(NONE, |s| self.intern(s)),
            description: a.description.map_or(NONE, |s| self.intern(s)),
            action: a.action,
            confidence: a.confidence,
            expires: a.expires,
        };
        self.record(item)
    }

    /// Record one assertion of `key`.
    pub fn push(&mut self, key: EntryKey, a: Assertion<'_>) {
        let r = self.record_of(a);
        self.push_record(packed_v4(&key), r, || key);
    }

    /// Record one assertion, of record `r` ([`Builder::record_of`]), of
    /// the IPv4 net `addr`/`len` without a port (`len` at most 32; host
    /// bits are cleared here): what [`Builder::push`] does with such a
    /// key, without the key or the record built again for each of a plain
    /// list's million lines.
    pub fn push_v4(&mut self, addr: u32, len: u8, r: u32) {
        let addr = addr & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let k = pack_v4(addr, len);
        self.push_record(Some(k), r, || unpack_v4(k));
    }

    /// One assertion of record `r`: into `v4` when its key packs (`packed`)
    /// and its push number fits beside it, else with its key (`key`).
    fn push_record(&mut self, packed: Option<u64>, r: u32, key: impl FnOnce() -> EntryKey) {
        let seq = u32::try_from(self.recs.len()).expect("fewer than 2^32 assertions");
        self.recs.push(r);
        match packed {
            Some(k) if u64::from(seq) < 1 << INDEX_BITS => {
                self.v4.push(k << INDEX_BITS | u64::from(seq))
            }
            _ => self.items.push((key(), r, seq)),
        }
    }

    /// The entries (sorted by key, one per key, the strongest asserted
    /// action), their provenance, and per feed (by [`Builder::feed`]
    /// number) its distinct keys. Within a key the assertions keep their
    /// push order; the same (feed, indicator) twice is one assertion with
    /// the strongest action, the latest expiry (none if either has none),
    /// the highest confidence and the first description.
    pub fn finish(
        mut self,
    ) -> (
        Vec<Entry>,
        Provenances,
        rustc_hash::FxHashMap<u32, KeyCounts>,
    ) {
        let n = self.recs.len();
        let mut entries = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n + 1);
        let mut refs: Vec<u32> = Vec::with_capacity(n);
        // Per feed number, its distinct keys: feeds are few, so a list
        // searched from the feed found last (a hash lookup a key was a
        // fifth of this pass).
        let mut counts: Vec<(u32, KeyCounts)> = Vec::new();
        let mut last_feed = 0usize;
        let mut count = |feed: u32, drop: bool| {
            if counts.get(last_feed).is_none_or(|c| c.0 != feed) {
                last_feed = match counts.iter().position(|c| c.0 == feed) {
                    Some(p) => p,
                    None => {
                        counts.push((feed, KeyCounts::default()));
                        counts.len() - 1
                    }
                };
            }
            let c = &mut counts[last_feed].1;
            c.entries += 1;
            c.drop += usize::from(drop);
        };
        // One key's assertions, merged.
        let mut group: Vec<Item> = Vec::new();
        let recs = std::mem::take(&mut self.recs);
        let (v4, rest) = (
            std::mem::take(&mut self.v4),
            std::mem::take(&mut self.items),
        );
        let mut all = merged(v4, rest, &recs).peekable();
        while let Some((key, r, _)) = all.next() {
            starts.push(u32::try_from(refs.len()).expect("fewer than 2^32 assertions"));
            if all.peek().is_none_or(|next| next.0 != key) {
                // One assertion (most keys): its record as pushed, its
                // action, no grouping.
                let it = &self.records[r as usize];
                refs.push(r);
                entries.push(Entry {
                    net: key.net,
                    port: key.port,
                    action: it.action,
                });
                count(it.feed, it.action == Action::Drop);
                continue;
            }
            group.clear();
            let mut next = Some(r);
            while let Some(r) = next {
                next = all.next_if(|x| x.0 == key).map(|x| x.1);
                let it = self.records[r as usize];
                match group
                    .iter_mut()
                    .find(|p| p.feed == it.feed && p.indicator == it.indicator)
                {
                    Some(p) => {
                        p.action = p.action.max(it.action);
                        p.expires = match (p.expires, it.expires) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        };
                        p.confidence = p.confidence.max(it.confidence);
                        if p.description == NONE {
                            p.description = it.description;
                        }
                    }
                    None => group.push(it),
                }
            }
            for &it in &group {
                refs.push(self.record(it));
            }
            let action = group.iter().map(|p| p.action).max().unwrap_or(Action::Drop);
            entries.push(Entry {
                net: key.net,
                port: key.port,
                action,
            });
            for (n, p) in group.iter().enumerate() {
                if group[..n].iter().any(|q| q.feed == p.feed) {
                    continue;
                }
                let strongest = group
                    .iter()
                    .filter(|q| q.feed == p.feed)
                    .map(|q| q.action)
                    .max()
                    .unwrap_or(p.action);
                count(p.feed, strongest == Action::Drop);
            }
        }
        let counts: rustc_hash::FxHashMap<u32, KeyCounts> = counts.into_iter().collect();
        drop(all);
        entries.shrink_to_fit();
        (entries, self.provenances(starts, refs), counts)
    }

    /// The provenance of finished entries: each entry's run of `refs`
    /// (from `starts`, one a key), the records and the strings.
    fn provenances(mut self, mut starts: Vec<u32>, mut refs: Vec<u32>) -> Provenances {
        starts.push(u32::try_from(refs.len()).expect("fewer than 2^32 assertions"));
        starts.shrink_to_fit();
        refs.shrink_to_fit();
        // Records only a merge replaced stay: they are few, and
        // renumbering would cost a pass over every reference.
        let mut records = std::mem::take(&mut self.records);
        records.shrink_to_fit();
        let mut strings: Vec<Box<str>> = vec![Box::from(""); self.index.len()];
        for (s, i) in self.index {
            strings[i as usize] = s;
        }
        Provenances {
            refs: Refs::of_runs(starts, refs),
            records,
            strings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The previous `Builder::finish`, before single-assertion keys got
    /// their own path and the per-feed counts a list: the reference the
    /// randomized test below compares with.
    fn finish_reference(
        mut b: Builder,
    ) -> (
        Vec<Entry>,
        Provenances,
        rustc_hash::FxHashMap<u32, KeyCounts>,
    ) {
        b.items = b.pushed();
        sort_items(&mut b.items);
        let mut entries = Vec::with_capacity(b.items.len());
        let mut starts = Vec::with_capacity(b.items.len() + 1);
        let mut refs: Vec<u32> = Vec::with_capacity(b.items.len());
        let mut counts: rustc_hash::FxHashMap<u32, KeyCounts> = Default::default();
        // One key's assertions, merged.
        let mut group: Vec<Item> = Vec::new();
        let mut i = 0;
        let all = std::mem::take(&mut b.items);
        while i < all.len() {
            let key = all[i].0;
            let first = i;
            group.clear();
            while i < all.len() && all[i].0 == key {
                let it = b.records[all[i].1 as usize];
                match group
                    .iter_mut()
                    .find(|p| p.feed == it.feed && p.indicator == it.indicator)
                {
                    Some(p) => {
                        p.action = p.action.max(it.action);
                        p.expires = match (p.expires, it.expires) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        };
                        p.confidence = p.confidence.max(it.confidence);
                        if p.description == NONE {
                            p.description = it.description;
                        }
                    }
                    None => group.push(it),
                }
                i += 1;
            }
            starts.push(u32::try_from(refs.len()).expect("fewer than 2^32 assertions"));
            if i - first == 1 {
                // One assertion (most keys): its record as pushed, no lookup.
                refs.push(all[first].1);
            } else {
                for &it in &group {
                    refs.push(b.record(it));
                }
            }
            let action = group.iter().map(|p| p.action).max().unwrap_or(Action::Drop);
            entries.push(Entry {
                net: key.net,
                port: key.port,
                action,
            });
            for (n, p) in group.iter().enumerate() {
                if group[..n].iter().any(|q| q.feed == p.feed) {
                    continue;
                }
                let strongest = group
                    .iter()
                    .filter(|q| q.feed == p.feed)
                    .map(|q| q.action)
                    .max()
                    .unwrap_or(p.action);
                let c = counts.entry(p.feed).or_default();
                c.entries += 1;
                c.drop += usize::from(strongest == Action::Drop);
            }
        }
        drop(all);
        entries.shrink_to_fit();
        (entries, b.provenances(starts, refs), counts)
    }

    /// `finish` gives what the reference gives (entries, provenance and
    /// per-feed counts) over random assertions: keys asserted once (most)
    /// and many times, by one to four feeds, with and without indicators,
    /// repeated (feed, indicator) pairs, every action, confidences,
    /// expiries and descriptions.
    #[test]
    fn finish_equals_the_reference() {
        use rand::{Rng, SeedableRng};
        let seed = crate::testing::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let texts = ["i1", "i2", "i3", "d1", "d2"];
        for round in 0..200 {
            let n = rng.random_range(0..400);
            let keys = rng.random_range(1..300);
            let feeds = rng.random_range(1..5);
            let pushes: Vec<(EntryKey, Assertion<'static>)> = (0..n)
                .map(|_| {
                    let k = rng.random_range(0..keys);
                    let net = if k % 7 == 0 {
                        format!("2001:db8::{k:x}/128")
                    } else {
                        format!("10.{}.{}.0/{}", k / 256, k % 256, [24, 32][k as usize % 2])
                    };
                    let key = Entry::new(net.parse().unwrap(), None, Action::Drop).key();
                    let a = Assertion {
                        feed: rng.random_range(0..feeds),
                        indicator: rng.random_bool(0.5).then(|| texts[rng.random_range(0..3)]),
                        action: if rng.random() {
                            Action::Drop
                        } else {
                            Action::Monitor
                        },
                        confidence: rng.random_bool(0.3).then(|| rng.random_range(0..=100)),
                        expires: rng.random_bool(0.3).then(|| {
                            OffsetDateTime::UNIX_EPOCH
                                + time::Duration::seconds(rng.random_range(0..5))
                        }),
                        description: rng.random_bool(0.5).then(|| texts[rng.random_range(3..5)]),
                    };
                    (key, a)
                })
                .collect();
            let build = || {
                let mut b = Builder::default();
                for f in 0..feeds {
                    b.feed(&format!("feed{f}"));
                }
                for (key, a) in &pushes {
                    b.push(
                        *key,
                        Assertion {
                            feed: a.feed,
                            indicator: a.indicator,
                            action: a.action,
                            confidence: a.confidence,
                            expires: a.expires,
                            description: a.description,
                        },
                    );
                }
                b
            };
            assert_eq!(
                build().finish(),
                finish_reference(build()),
                "seed {seed} round {round}"
            );
        }
    }

    /// The radix-and-merge sort of assertions is the comparison sort by
    /// key and push number, over IPv4 keys with and without ports, IPv6
    /// keys, many repeated keys and short prefixes.
    #[test]
    fn sort_items_is_the_sort_by_key_and_push_number() {
        use crate::entry::{PortMatch, Proto, Side};
        use rand::{Rng, SeedableRng};
        let seed = crate::testing::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for n in [0usize, 1, 7, 300, 20_000] {
            for v4_share in [0.0, 0.5, 0.97, 1.0] {
                let mut items: Vec<(EntryKey, u32, u32)> = (0..n)
                    .map(|i| {
                        let len = [32u8, 32, 24, 16, 8, 0][rng.random_range(0..6)];
                        let net: IpNet = if rng.random_bool(v4_share) {
                            let a = std::net::Ipv4Addr::from(rng.random_range(0..64u32) << 20);
                            ipnet::Ipv4Net::new(a, len).unwrap().trunc().into()
                        } else {
                            let a = std::net::Ipv6Addr::from((rng.random_range(0..64u128)) << 100);
                            ipnet::Ipv6Net::new(a, len * 4).unwrap().trunc().into()
                        };
                        let port = rng.random_bool(0.3).then(|| PortMatch {
                            proto: if rng.random() { Proto::Tcp } else { Proto::Udp },
                            port: rng.random_range(0..3),
                            side: if rng.random() { Side::Src } else { Side::Dst },
                        });
                        (EntryKey { net, port }, rng.random_range(0..5), i as u32)
                    })
                    .collect();
                let mut want = items.clone();
                want.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
                sort_items(&mut items);
                assert!(items == want, "n {n}, IPv4 share {v4_share} (seed {seed})");
            }
        }
    }

    /// Past 2^26 pushes IPv4 keys go to the comparison-sorted run too (the
    /// push number no longer fits beside the packed key): the merge still
    /// yields key order, then push order, when both runs hold the same
    /// keys.
    #[test]
    fn merged_orders_ipv4_keys_split_between_the_runs() {
        use rand::{Rng, SeedableRng};
        let seed = crate::testing::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..50 {
            let n = rng.random_range(0..400u32);
            let split = rng.random_range(0..=n);
            let items: Vec<(EntryKey, u32, u32)> = (0..n)
                .map(|i| {
                    let a = std::net::Ipv4Addr::from(rng.random_range(0..16u32) << 8);
                    let len = [32u8, 24, 16][rng.random_range(0..3)];
                    let net = ipnet::Ipv4Net::new(a, len).unwrap().trunc();
                    let key = EntryKey {
                        net: IpNet::V4(net),
                        port: None,
                    };
                    (key, rng.random_range(0..5), i)
                })
                .collect();
            let recs: Vec<u32> = items.iter().map(|it| it.1).collect();
            let v4 = items[..split as usize]
                .iter()
                .map(|it| packed_v4(&it.0).unwrap() << INDEX_BITS | u64::from(it.2))
                .collect();
            let rest = items[split as usize..].to_vec();
            let got: Vec<_> = merged(v4, rest, &recs).collect();
            let mut want = items.clone();
            want.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
            assert!(
                got == want,
                "seed {seed} round {round}, split {split} of {n}"
            );
        }
    }

    fn key(s: &str) -> EntryKey {
        Entry::new(s.parse().unwrap(), None, Action::Drop).key()
    }

    fn assertion(feed: u32, indicator: Option<&str>, action: Action) -> Assertion<'_> {
        Assertion {
            feed,
            indicator,
            action,
            confidence: None,
            expires: None,
            description: Some("shared text"),
        }
    }

    /// An assertion costs one reference to a shared record, and a string
    /// carried by many entries is stored once.
    #[test]
    fn items_are_small_and_strings_are_stored_once() {
        assert!(size_of::<Item>() <= 32, "{} bytes", size_of::<Item>());
        let mut b = Builder::default();
        let f = b.feed("feed-a");
        for i in 0..100u8 {
            b.push(
                key(&format!("192.0.2.{i}/32")),
                assertion(f, None, Action::Drop),
            );
        }
        let (entries, p, counts) = b.finish();
        assert_eq!(entries.len(), 100);
        assert_eq!(p.strings.len(), 2, "{:?}", p.strings);
        // One record shared by the hundred entries.
        assert_eq!(p.records.len(), 1, "{:?}", p.records);
        // One assertion an entry, all of one record: nothing per entry.
        assert_eq!(p.refs, Refs::Same { n: 100, r: 0 });
        assert_eq!(p.refs.heap_bytes(), 0);
        assert!(p.of(100).is_empty());
        assert_eq!(p.of(7)[0].description.as_deref(), Some("shared text"));
        assert_eq!(
            counts[&f],
            KeyCounts {
                entries: 100,
                drop: 100
            }
        );
    }

    /// One assertion an entry from different records: one reference each.
    #[test]
    fn one_assertion_each_needs_no_runs() {
        let mut b = Builder::default();
        let (fa, fb) = (b.feed("a"), b.feed("b"));
        b.push(key("10.0.0.2/32"), assertion(fb, None, Action::Drop));
        b.push(
            key("10.0.0.1/32"),
            assertion(fa, Some("i"), Action::Monitor),
        );
        b.push(
            key("10.0.0.3/32"),
            assertion(fa, Some("i"), Action::Monitor),
        );
        let (entries, p, _) = b.finish();
        assert_eq!(entries.len(), 3);
        assert!(
            matches!(&p.refs, Refs::One(r) if r.len() == 3),
            "{:?}",
            p.refs
        );
        let feeds: Vec<Vec<&str>> = (0..3).map(|i| p.feeds(i)).collect();
        assert_eq!(feeds, [["a"], ["b"], ["a"]]);
        assert_eq!(p.of(0)[0].indicator.as_deref(), Some("i"));
        assert!(p.of(3).is_empty());
    }

    /// Assertions of one key keep their push order across feeds; the same
    /// (feed, indicator) merges; a key's action is the strongest.
    #[test]
    fn a_key_keeps_feed_order_and_merges_repeats() {
        let mut b = Builder::default();
        let (fa, fb) = (b.feed("a"), b.feed("b"));
        b.push(
            key("10.0.0.1/32"),
            assertion(fb, Some("x"), Action::Monitor),
        );
        b.push(key("10.0.0.0/8"), assertion(fa, None, Action::Monitor));
        b.push(
            key("10.0.0.1/32"),
            assertion(fa, Some("y"), Action::Monitor),
        );
        b.push(key("10.0.0.1/32"), assertion(fb, Some("x"), Action::Drop));
        let (entries, p, counts) = b.finish();
        assert_eq!(entries[0].net.to_string(), "10.0.0.0/8");
        assert_eq!(entries[1].action, Action::Drop);
        let who: Vec<(String, Action)> = p.of(1).into_iter().map(|a| (a.feed, a.action)).collect();
        assert_eq!(
            who,
            [
                ("b".to_string(), Action::Drop),
                ("a".to_string(), Action::Monitor)
            ]
        );
        assert_eq!(p.feeds(1), ["b", "a"]);
        // Two assertions on one key: runs.
        assert!(matches!(p.refs, Refs::Runs { .. }), "{:?}", p.refs);
        assert_eq!(p.of(0).len(), 1);
        assert!(p.of(2).is_empty());
        assert_eq!(
            counts[&fa],
            KeyCounts {
                entries: 2,
                drop: 0
            }
        );
        assert_eq!(
            counts[&fb],
            KeyCounts {
                entries: 1,
                drop: 1
            }
        );
    }
}
