//! The desired state: every feed's current entries merged into the one
//! [`EntrySet`] the kernel should enforce, remembering who asserted what.
//!
//! Rules, in the order they are applied to each assertion (one
//! `FeedEntry` of one feed):
//! 1. not yet valid (`valid_from > now`): left out, counted as pending;
//! 2. expired: its own `expires`, else the feed's `ttl` after the feed last
//!    asserted it (its last successful fetch), is `<= now`: left out,
//!    counted as expired;
//! 3. broader than `[safety]` allows and the feed lacks `allow_broad`:
//!    rejected and reported (one bad line must not block a /4);
//! 4. allow feeds: the address or prefix joins the allowlist (a port is
//!    rejected: the allowlist matches addresses only);
//! 5. block feeds: the action is the entry's own (the parser's feed default
//!    or the jsonl record), downgraded to monitor when its confidence is
//!    below the feed's `confidence_threshold`.
//!
//! Entries are deduplicated by [`EntryKey`]; each key keeps every
//! (feed, indicator) asserting it, and its action is the strongest of them.
//! Allowlisted entries stay in the set (the kernel consults the allowlist
//! first, so they never block); [`DesiredState::shadowed_by_allow`] counts
//! them for reports.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use serde::Serialize;
use time::OffsetDateTime;

use crate::entry::{Action, Entry, EntryKey, EntrySet};
use crate::intel::config::{Config, FeedConfig};
use crate::intel::feed_entries::{BareEntry, FeedEntries, FeedEntryRef};
#[cfg(test)]
use crate::intel::feeds::FeedEntry;
use crate::intel::provenance::{Assertion, Builder, Provenances};

/// The allowlist source label of `[allowlist] entries`.
pub const INLINE: &str = "inline";

/// A feed's current contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSnapshot {
    /// The feed's configured name.
    pub feed: String,
    /// Its entries as parsed (shared with the last-known-good copy).
    pub entries: std::sync::Arc<FeedEntries>,
    /// Its last successful fetch: the moment the feed last asserted these
    /// entries, from which `ttl` counts.
    pub asserted_at: OffsetDateTime,
}

/// One feed's assertion of an entry (defined with the compact store of
/// them, [`super::provenance`]).
pub use super::provenance::Provenance;

/// An entry left out because it is unsafe or impossible to enforce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedEntry {
    /// Feed name.
    pub feed: String,
    /// The entry, in blocklist syntax.
    pub entry: String,
    /// Why.
    pub reason: String,
}

/// What one feed contributes.
///
/// `entries`, `drop` and `monitor` count distinct keys (a feed listing an
/// address twice contributes it once); `expired`, `pending` and `rejected`
/// count the feed's entries (assertions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeedCounts {
    /// Distinct keys (allow feeds: distinct nets) contributed.
    pub entries: usize,
    /// Of those, keys the feed wants dropped.
    pub drop: usize,
    /// Of those, keys the feed wants only monitored.
    pub monitor: usize,
    /// Assertions left out because they expired.
    pub expired: usize,
    /// Assertions left out because they are not valid yet.
    pub pending: usize,
    /// Assertions rejected (too broad, port on an allow feed).
    pub rejected: usize,
}

/// Entries per kernel map kind and family (what `[capacities]` bounds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    /// Exact IPv4 addresses.
    pub addr_v4: usize,
    /// Exact IPv6 addresses.
    pub addr_v6: usize,
    /// IPv4 prefixes.
    pub prefix_v4: usize,
    /// IPv6 prefixes.
    pub prefix_v6: usize,
    /// IPv4 address+port entries.
    pub addr_port_v4: usize,
    /// IPv6 address+port entries.
    pub addr_port_v6: usize,
    /// IPv4 prefix+port entries.
    pub prefix_port_v4: usize,
    /// IPv6 prefix+port entries.
    pub prefix_port_v6: usize,
    /// IPv4 allowlist entries.
    pub allow_v4: usize,
    /// IPv6 allowlist entries.
    pub allow_v6: usize,
}

impl KindCounts {
    /// `(map name, entries, capacity)` for every entry map, in
    /// [`edge_filter_common::ENTRY_MAPS`] order.
    pub fn per_map(
        &self,
        caps: &crate::kernel::program::Capacities,
    ) -> Vec<(&'static str, usize, u32)> {
        let counts = [
            self.allow_v4,
            self.allow_v6,
            self.addr_v4,
            self.addr_v6,
            self.prefix_v4,
            self.prefix_v6,
            self.addr_port_v4,
            self.addr_port_v6,
            self.prefix_port_v4,
            self.prefix_port_v6,
        ];
        caps.per_map()
            .into_iter()
            .zip(counts)
            .map(|((name, cap), n)| (name, n, cap))
            .collect()
    }
}

/// Everything that should be enforced, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// What the maps should hold: the allowlist (sorted, unique) and one
    /// entry per key with the strongest asserted action (sorted by key).
    pub set: EntrySet,
    /// Every assertion of every entry of `set`, parallel to
    /// `set.entries` (see [`DesiredState::provenance`]).
    assertions: Provenances,
    /// Every allowlisted net with its sources: [`INLINE`] or feed names.
    pub allow_sources: BTreeMap<IpNet, Vec<String>>,
    /// Entries left out as unsafe or impossible, in feed order.
    pub rejected: Vec<RejectedEntry>,
    /// Counts by feed (only feeds that had a snapshot).
    pub per_feed: BTreeMap<String, FeedCounts>,
    /// The earliest future expiry of an included assertion: the desired
    /// state changes then (an entry leaves or its action weakens).
    pub next_expiry: Option<OffsetDateTime>,
    /// The earliest `valid_from` of a pending assertion: the desired state
    /// changes then too.
    pub next_activation: Option<OffsetDateTime>,
}

/// The set, for whoever shares the state rather than copying the set (the
/// sync engine: `EntryMaps::offer`).
impl AsRef<EntrySet> for DesiredState {
    fn as_ref(&self) -> &EntrySet {
        &self.set
    }
}

impl DesiredState {
    /// The position of `key` in `set.entries`.
    fn position(&self, key: &EntryKey) -> Option<usize> {
        self.set.entries.binary_search_by(|e| e.key().cmp(key)).ok()
    }

    /// Every assertion of `key`, in feed order; `None` when the set does
    /// not hold it.
    pub fn provenance(&self, key: &EntryKey) -> Option<Vec<Provenance>> {
        self.position(key).map(|i| self.assertions.of(i))
    }

    /// The feeds asserting `key`, each once, in feed order (empty when the
    /// set does not hold it).
    pub fn feeds_of(&self, key: &EntryKey) -> Vec<&str> {
        self.position(key)
            .map_or_else(Vec::new, |i| self.assertions.feeds(i))
    }

    /// Every entry's key with its assertions, in key order.
    pub fn provenances(&self) -> impl Iterator<Item = (EntryKey, Vec<Provenance>)> + '_ {
        (self.set.entries.iter().enumerate()).map(|(i, e)| (e.key(), self.assertions.of(i)))
    }

    /// Bytes the provenance holds (for memory reports).
    pub fn provenance_bytes(&self) -> usize {
        self.assertions.heap_bytes()
    }

    /// When the agent must recompute even if no feed changes: the earlier
    /// of [`Self::next_expiry`] and [`Self::next_activation`].
    pub fn next_change(&self) -> Option<OffsetDateTime> {
        match (self.next_expiry, self.next_activation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Entries whose every packet is allowlisted (their net lies inside an
    /// allowlisted net), so they can never drop or monitor anything.
    pub fn shadowed(&self) -> impl Iterator<Item = &Entry> {
        let allow: HashSet<IpNet> = self.set.allow.iter().copied().collect();
        let mut lens_v4: Vec<u8> = Vec::new();
        let mut lens_v6: Vec<u8> = Vec::new();
        for n in &self.set.allow {
            match n {
                IpNet::V4(_) => lens_v4.push(n.prefix_len()),
                IpNet::V6(_) => lens_v6.push(n.prefix_len()),
            }
        }
        for l in [&mut lens_v4, &mut lens_v6] {
            l.sort_unstable();
            l.dedup();
        }
        self.set.entries.iter().filter(move |e| {
            let lens = match e.net {
                IpNet::V4(_) => &lens_v4,
                IpNet::V6(_) => &lens_v6,
            };
            lens.iter()
                .take_while(|&&l| l <= e.net.prefix_len())
                .any(|&l| IpNet::new(e.net.addr(), l).is_ok_and(|n| allow.contains(&n.trunc())))
        })
    }

    /// How many entries the allowlist shadows (see [`Self::shadowed`]).
    pub fn shadowed_by_allow(&self) -> usize {
        self.shadowed().count()
    }

    /// Entries per map kind and family.
    pub fn kind_counts(&self) -> KindCounts {
        use edge_filter_common::EntryKind;
        let mut k = KindCounts::default();
        for e in &self.set.entries {
            let v4 = matches!(e.net, IpNet::V4(_));
            let slot = match (e.kind(), v4) {
                (EntryKind::Addr, true) => &mut k.addr_v4,
                (EntryKind::Addr, false) => &mut k.addr_v6,
                (EntryKind::Prefix, true) => &mut k.prefix_v4,
                (EntryKind::Prefix, false) => &mut k.prefix_v6,
                (EntryKind::AddrPort, true) => &mut k.addr_port_v4,
                (EntryKind::AddrPort, false) => &mut k.addr_port_v6,
                (EntryKind::PrefixPort, true) => &mut k.prefix_port_v4,
                (EntryKind::PrefixPort, false) => &mut k.prefix_port_v6,
            };
            *slot += 1;
        }
        for n in &self.set.allow {
            match n {
                IpNet::V4(_) => k.allow_v4 += 1,
                IpNet::V6(_) => k.allow_v6 += 1,
            }
        }
        k
    }

    /// Entries by strongest action: `(drop, monitor)`.
    pub fn action_counts(&self) -> (usize, usize) {
        let drop = self
            .set
            .entries
            .iter()
            .filter(|e| e.action == Action::Drop)
            .count();
        (drop, self.set.entries.len() - drop)
    }
}

/// Merge `snapshots` under `cfg` at `now` (see the module documentation);
/// they are borrowed, never copied.
/// Snapshots of feeds not in `cfg` are ignored: a feed removed from the
/// configuration stops contributing at once.
pub fn merge<'a>(
    cfg: &Config,
    snapshots: impl IntoIterator<Item = &'a FeedSnapshot>,
    now: OffsetDateTime,
) -> DesiredState {
    merge_with(cfg, snapshots, now, true)
}

/// [`merge`]; `bare` takes the path for entries without provenance
/// ([`FeedMerge::bare`]) where it applies (tests compare the two).
fn merge_with<'a>(
    cfg: &Config,
    snapshots: impl IntoIterator<Item = &'a FeedSnapshot>,
    now: OffsetDateTime,
    bare: bool,
) -> DesiredState {
    let mut st = DesiredState::default();
    for net in &cfg.allowlist.entries {
        add_source(&mut st.allow_sources, net.trunc(), INLINE);
    }
    let mut b = Builder::default();
    let mut block_feeds: Vec<(String, u32)> = Vec::new();
    for snap in snapshots {
        let Some(feed) = cfg.feed(&snap.feed) else {
            continue;
        };
        let number = b.feed(&feed.name);
        if !feed.is_allow() && !block_feeds.iter().any(|(_, n)| *n == number) {
            block_feeds.push((feed.name.clone(), number));
        }
        let mut m = FeedMerge {
            st: &mut st,
            b: &mut b,
            number,
            cfg,
            feed,
            ttl: feed.ttl.and_then(|t| time::Duration::try_from(t).ok()),
            asserted_at: snap.asserted_at,
            now,
            counts: FeedCounts::default(),
            allow_nets: HashSet::new(),
        };
        if !feed.is_allow() {
            m.b.reserve(snap.entries.len());
        }
        match snap.entries.bare().filter(|_| bare && !feed.is_allow()) {
            Some(entries) => m.bare(entries),
            None => snap.entries.iter().for_each(|fe| m.one(fe)),
        }
        let counts = m.counts();
        // Two snapshots of one feed (should not happen) add up.
        let c = st.per_feed.entry(feed.name.clone()).or_default();
        c.entries += counts.entries;
        c.drop += counts.drop;
        c.monitor += counts.monitor;
        c.expired += counts.expired;
        c.pending += counts.pending;
        c.rejected += counts.rejected;
    }
    st.set.allow = st.allow_sources.keys().copied().collect();
    let (entries, assertions, keys) = b.finish();
    st.set.entries = entries;
    st.assertions = assertions;
    for (name, number) in block_feeds {
        let k = keys.get(&number).copied().unwrap_or_default();
        let c = st.per_feed.entry(name).or_default();
        c.entries += k.entries;
        c.drop += k.drop;
        c.monitor += k.entries - k.drop;
    }
    st
}

/// One feed's assertions on their way into the desired state.
struct FeedMerge<'a> {
    st: &'a mut DesiredState,
    b: &'a mut Builder,
    /// The feed, as the builder numbered it.
    number: u32,
    cfg: &'a Config,
    feed: &'a FeedConfig,
    ttl: Option<time::Duration>,
    asserted_at: OffsetDateTime,
    now: OffsetDateTime,
    counts: FeedCounts,
    allow_nets: HashSet<IpNet>,
}

impl FeedMerge<'_> {
    /// The feed's counts (a block feed's distinct keys are counted by
    /// `merge`, from the builder's sorted assertions).
    fn counts(self) -> FeedCounts {
        let mut counts = self.counts;
        if self.feed.is_allow() {
            counts.entries = self.allow_nets.len();
        }
        counts
    }

    /// One assertion, by the rules of the module documentation.
    fn one(&mut self, fe: FeedEntryRef<'_>) {
        let (st, counts, feed) = (&mut *self.st, &mut self.counts, self.feed);
        if let Some(from) = fe.valid_from
            && from > self.now
        {
            counts.pending += 1;
            st.next_activation = earliest(st.next_activation, Some(from));
            return;
        }
        let expires = fe
            .expires
            .or_else(|| self.ttl.and_then(|t| self.asserted_at.checked_add(t)));
        if expires.is_some_and(|t| t <= self.now) {
            counts.expired += 1;
            return;
        }
        let entry = Entry::new(fe.entry.net, fe.entry.port, fe.entry.action);
        if !feed.allow_broad && self.cfg.safety.too_broad(&entry.net) {
            counts.rejected += 1;
            let (family, limit) = match entry.net {
                IpNet::V4(_) => ("IPv4", self.cfg.safety.broadest_v4),
                IpNet::V6(_) => ("IPv6", self.cfg.safety.broadest_v6),
            };
            st.rejected.push(RejectedEntry {
                feed: feed.name.clone(),
                entry: entry.to_string(),
                reason: format!(
                    "/{} is broader than the {family} limit /{limit} ([safety] broadest_{}; set allow_broad = true on the feed to accept it)",
                    entry.net.prefix_len(),
                    if family == "IPv4" { "v4" } else { "v6" }
                ),
            });
            return;
        }
        st.next_expiry = earliest(st.next_expiry, expires);
        if feed.is_allow() {
            if entry.port.is_some() {
                counts.rejected += 1;
                st.rejected.push(RejectedEntry {
                    feed: feed.name.clone(),
                    entry: entry.to_string(),
                    reason: "an allowlist entry cannot have a port (the allowlist matches addresses only)".into(),
                });
                return;
            }
            self.allow_nets.insert(entry.net);
            add_source(&mut st.allow_sources, entry.net, &feed.name);
            return;
        }
        let action = match (feed.confidence_threshold, fe.confidence) {
            (Some(t), Some(c)) if c < t => Action::Monitor,
            _ => entry.action,
        };
        // The same indicator twice in one feed is one assertion (merged by
        // `Builder::finish`: the strongest action, the latest expiry).
        self.b.push(
            entry.key(),
            Assertion {
                feed: self.number,
                indicator: fe.indicator,
                action,
                confidence: fe.confidence,
                expires,
                description: fe.description,
            },
        );
    }

    /// A block feed's entries without provenance, as [`FeedMerge::one`]
    /// takes them: none is pending, all expire together (the `ttl`), the
    /// threshold never applies (no confidence) and the assertion records
    /// are two, by action. So each IPv4 net without a port the `[safety]`
    /// limit accepts (a plain list's every line) is its key and one of two
    /// records; the rest go through [`FeedMerge::one`]. Building a
    /// `FeedEntryRef`, an `Entry`, a key and a record each was most of a
    /// 1.1M-line list's merge.
    fn bare(&mut self, entries: impl ExactSizeIterator<Item = BareEntry>) {
        let expires = self.ttl.and_then(|t| self.asserted_at.checked_add(t));
        if expires.is_some_and(|t| t <= self.now) {
            self.counts.expired += entries.len();
            return;
        }
        let broadest = if self.feed.allow_broad {
            0
        } else {
            self.cfg.safety.broadest_v4
        };
        // Each record is made where `one` would first make it, so the
        // records are numbered as `one` numbers them.
        let mut recs: [Option<u32>; 2] = [None, None];
        for e in entries {
            match e {
                BareEntry::V4 { addr, len, drop } if len >= broadest => {
                    let r = match recs[usize::from(drop)] {
                        Some(r) => r,
                        None => {
                            self.st.next_expiry = earliest(self.st.next_expiry, expires);
                            let r = self.b.record_of(Assertion {
                                feed: self.number,
                                indicator: None,
                                action: e.entry().action,
                                confidence: None,
                                expires,
                                description: None,
                            });
                            *recs[usize::from(drop)].insert(r)
                        }
                    };
                    self.b.push_v4(addr, len, r);
                }
                _ => self.one(FeedEntryRef::bare(e.entry())),
            }
        }
    }
}

fn add_source(map: &mut BTreeMap<IpNet, Vec<String>>, net: IpNet, source: &str) {
    let v = map.entry(net).or_default();
    if !v.iter().any(|s| s == source) {
        v.push(source.to_string());
    }
}

fn earliest(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use time::macros::datetime;

    use super::*;
    use crate::entry::{PortMatch, Proto, Side};

    const NOW: OffsetDateTime = datetime!(2025-06-01 12:00 UTC);

    fn config(feeds: &str) -> Config {
        Config::from_str_named(&format!("[[interface]]\nname = \"eth0\"\n{feeds}"), "t")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn feed(name: &str, extra: &str) -> String {
        format!("[[feed]]\nname = \"{name}\"\nsource = \"file:/f/{name}\"\n{extra}\n")
    }

    fn net(s: &str) -> IpNet {
        crate::intel::blocklist::parse_net(s).unwrap().trunc()
    }

    fn fe(text: &str) -> FeedEntry {
        FeedEntry::new(crate::intel::blocklist::parse_entry(text).unwrap())
    }

    fn with(mut e: FeedEntry, f: impl FnOnce(&mut FeedEntry)) -> FeedEntry {
        f(&mut e);
        e
    }

    fn snap(feed: &str, entries: Vec<FeedEntry>) -> FeedSnapshot {
        FeedSnapshot {
            feed: feed.into(),
            entries: std::sync::Arc::new(entries.into()),
            asserted_at: NOW,
        }
    }

    fn key(s: &str) -> EntryKey {
        crate::intel::blocklist::parse_entry(s).unwrap().key()
    }

    fn action_of(st: &DesiredState, s: &str) -> Option<Action> {
        let k = key(s);
        st.set
            .entries
            .iter()
            .find(|e| e.key() == k)
            .map(|e| e.action)
    }

    #[test]
    fn dedup_with_provenance_from_two_feeds() {
        let cfg = config(&format!("{}{}", feed("a", ""), feed("b", "")));
        let a = snap(
            "a",
            vec![
                with(fe("203.0.113.7"), |e| e.indicator = Some("SBL1".into())),
                fe("198.51.100.0/24"),
                // The same assertion twice in one feed is one provenance.
                with(fe("203.0.113.7"), |e| e.indicator = Some("SBL1".into())),
            ],
        );
        let b = snap(
            "b",
            vec![
                with(fe("203.0.113.7/32"), |e| {
                    e.indicator = Some("x-1".into());
                    e.confidence = Some(90);
                    e.description = Some("scanner".into());
                }),
                fe("tcp 203.0.113.7:443"),
            ],
        );
        let st = merge(&cfg, &[a, b], NOW);
        assert_eq!(st.set.entries.len(), 3);
        let provs = &st.provenance(&key("203.0.113.7")).unwrap();
        assert_eq!(
            provs,
            &vec![
                Provenance {
                    feed: "a".into(),
                    indicator: Some("SBL1".into()),
                    action: Action::Drop,
                    confidence: None,
                    expires: None,
                    description: None,
                },
                Provenance {
                    feed: "b".into(),
                    indicator: Some("x-1".into()),
                    action: Action::Drop,
                    confidence: Some(90),
                    expires: None,
                    description: Some("scanner".into()),
                },
            ]
        );
        assert_eq!(st.provenance(&key("tcp 203.0.113.7:443")).unwrap().len(), 1);
        assert_eq!(
            st.per_feed["a"],
            FeedCounts {
                entries: 2,
                drop: 2,
                ..FeedCounts::default()
            }
        );
        assert_eq!(st.per_feed["b"].entries, 2);
        // Sorted by key, duplicates gone.
        let mut sorted = st.set.entries.clone();
        sorted.sort_by_key(|e| e.key());
        assert_eq!(sorted, st.set.entries);
        assert_eq!(st.next_change(), None);
        let json = serde_json::to_string(&provs[1]).unwrap();
        assert_eq!(
            json,
            r#"{"feed":"b","indicator":"x-1","action":"drop","confidence":90,"expires":null,"description":"scanner"}"#
        );
    }

    #[test]
    fn strongest_action_wins_and_threshold_downgrades() {
        let cfg = config(&format!(
            "{}{}{}",
            feed("mon", "action = \"monitor\""),
            feed("intel", "confidence_threshold = 70"),
            feed("low", "confidence_threshold = 70"),
        ));
        // Parsers set the action from the feed default: monitor here.
        let mon = snap(
            "mon",
            vec![fe("192.0.2.1 monitor"), fe("192.0.2.2 monitor")],
        );
        let intel = snap(
            "intel",
            vec![
                with(fe("192.0.2.1"), |e| e.confidence = Some(90)),
                with(fe("192.0.2.3"), |e| e.confidence = Some(69)),
                with(fe("192.0.2.4"), |e| e.confidence = Some(70)),
                // No confidence: the threshold does not apply.
                fe("192.0.2.5"),
            ],
        );
        let low = snap(
            "low",
            vec![with(fe("192.0.2.2"), |e| e.confidence = Some(10))],
        );
        let st = merge(&cfg, &[mon, intel, low], NOW);
        assert_eq!(action_of(&st, "192.0.2.1"), Some(Action::Drop));
        assert_eq!(action_of(&st, "192.0.2.2"), Some(Action::Monitor));
        assert_eq!(action_of(&st, "192.0.2.3"), Some(Action::Monitor));
        assert_eq!(action_of(&st, "192.0.2.4"), Some(Action::Drop));
        assert_eq!(action_of(&st, "192.0.2.5"), Some(Action::Drop));
        assert_eq!(
            st.provenance(&key("192.0.2.3")).unwrap()[0].action,
            Action::Monitor
        );
        assert_eq!(
            st.per_feed["intel"],
            FeedCounts {
                entries: 4,
                drop: 3,
                monitor: 1,
                ..FeedCounts::default()
            }
        );
        assert_eq!(st.action_counts(), (3, 2));
        // A jsonl record's own action is kept (drop in a monitor feed).
        let st = merge(&cfg, &[snap("mon", vec![fe("192.0.2.9")])], NOW);
        assert_eq!(action_of(&st, "192.0.2.9"), Some(Action::Drop));
    }

    #[test]
    fn ttl_and_own_expiry() {
        let cfg = config(&format!(
            "{}{}",
            feed("ttl", "ttl = \"1d\""),
            feed("plain", "")
        ));
        let hour = time::Duration::hours(1);
        let stale = FeedSnapshot {
            // Last fetched 25 hours ago: TTL entries lapsed an hour ago.
            asserted_at: NOW - time::Duration::hours(25),
            ..snap(
                "ttl",
                vec![
                    fe("192.0.2.1"),
                    // Its own expiry beats the TTL, both ways.
                    with(fe("192.0.2.2"), |e| e.expires = Some(NOW + hour)),
                    with(fe("192.0.2.3"), |e| e.expires = Some(NOW - 30 * hour)),
                ],
            )
        };
        let fresh = FeedSnapshot {
            asserted_at: NOW - time::Duration::hours(2),
            ..snap("ttl", vec![])
        };
        let plain = snap(
            "plain",
            vec![
                fe("192.0.2.10"),
                with(fe("192.0.2.11"), |e| e.expires = Some(NOW)),
                with(fe("192.0.2.12"), |e| e.expires = Some(NOW + 5 * hour)),
            ],
        );
        let st = merge(&cfg, &[stale, plain.clone()], NOW);
        let keys: Vec<String> = st.set.entries.iter().map(|e| e.to_string()).collect();
        assert_eq!(keys, ["192.0.2.2", "192.0.2.10", "192.0.2.12"]);
        assert_eq!(st.per_feed["ttl"].expired, 2);
        assert_eq!(st.per_feed["plain"].expired, 1);
        assert_eq!(st.next_expiry, Some(NOW + hour));
        assert_eq!(
            st.provenance(&key("192.0.2.2")).unwrap()[0].expires,
            Some(NOW + hour)
        );
        // A fresh fetch re-asserts: the TTL counts from it.
        let st = merge(
            &cfg,
            &[
                FeedSnapshot {
                    entries: std::sync::Arc::new(crate::intel::feed_entries::FeedEntries::from(
                        vec![fe("192.0.2.1")],
                    )),
                    ..fresh
                },
                plain,
            ],
            NOW,
        );
        assert_eq!(
            st.provenance(&key("192.0.2.1")).unwrap()[0].expires,
            Some(NOW + 22 * hour)
        );
        assert_eq!(st.next_expiry, Some(NOW + 5 * hour));
    }

    #[test]
    fn expiry_of_the_stronger_assertion_is_a_change() {
        let cfg = config(&format!(
            "{}{}",
            feed("a", ""),
            feed("b", "action = \"monitor\"")
        ));
        let hour = time::Duration::hours(1);
        let a = snap(
            "a",
            vec![with(fe("192.0.2.1"), |e| e.expires = Some(NOW + hour))],
        );
        let b = snap("b", vec![fe("192.0.2.1 monitor")]);
        let st = merge(&cfg, &[a.clone(), b.clone()], NOW);
        assert_eq!(action_of(&st, "192.0.2.1"), Some(Action::Drop));
        assert_eq!(st.next_expiry, Some(NOW + hour));
        let later = merge(&cfg, &[a, b], NOW + hour);
        assert_eq!(action_of(&later, "192.0.2.1"), Some(Action::Monitor));
        assert_eq!(later.next_expiry, None);
    }

    #[test]
    fn not_yet_valid_is_left_out_until_then() {
        let cfg = config(&feed("a", ""));
        let day = time::Duration::days(1);
        let s = snap(
            "a",
            vec![
                with(fe("192.0.2.1"), |e| e.valid_from = Some(NOW + day)),
                with(fe("192.0.2.2"), |e| e.valid_from = Some(NOW + 2 * day)),
                with(fe("192.0.2.3"), |e| e.valid_from = Some(NOW)),
            ],
        );
        let st = merge(&cfg, std::slice::from_ref(&s), NOW);
        assert_eq!(st.set.entries.len(), 1);
        assert_eq!(st.per_feed["a"].pending, 2);
        assert_eq!(st.next_activation, Some(NOW + day));
        assert_eq!(st.next_change(), Some(NOW + day));
        let st = merge(&cfg, &[s], NOW + day);
        assert_eq!(st.set.entries.len(), 2);
        assert_eq!(st.next_change(), Some(NOW + 2 * day));
    }

    #[test]
    fn broad_prefixes_are_rejected_unless_allowed() {
        let cfg = config(&format!(
            "[safety]\nbroadest_v6 = 29\n{}{}",
            feed("strict", ""),
            feed("bogons", "allow_broad = true")
        ));
        let strict = snap(
            "strict",
            vec![
                fe("0.0.0.0/0"),
                fe("10.0.0.0/7"),
                fe("10.0.0.0/8"),
                fe("2000::/28"),
                fe("2001:db8::/29"),
                fe("tcp 64.0.0.0/2:443"),
            ],
        );
        let bogons = snap("bogons", vec![fe("224.0.0.0/3")]);
        let st = merge(&cfg, &[strict, bogons], NOW);
        let kept: Vec<String> = st.set.entries.iter().map(|e| e.to_string()).collect();
        assert_eq!(kept, ["10.0.0.0/8", "224.0.0.0/3", "2001:db8::/29"]);
        let rejected: Vec<(&str, &str)> = st
            .rejected
            .iter()
            .map(|r| (r.feed.as_str(), r.entry.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                ("strict", "0.0.0.0/0"),
                ("strict", "10.0.0.0/7"),
                ("strict", "2000::/28"),
                ("strict", "tcp 64.0.0.0/2:443"),
            ]
        );
        assert_eq!(
            st.rejected[1].reason,
            "/7 is broader than the IPv4 limit /8 ([safety] broadest_v4; set allow_broad = true on the feed to accept it)"
        );
        assert_eq!(
            st.rejected[2].reason,
            "/28 is broader than the IPv6 limit /29 ([safety] broadest_v6; set allow_broad = true on the feed to accept it)"
        );
        assert_eq!(st.per_feed["strict"].rejected, 4);
        assert_eq!(st.per_feed["strict"].entries, 2);
    }

    #[test]
    fn allowlist_from_inline_and_allow_feed() {
        let cfg = config(&format!(
            "[allowlist]\nentries = [\"192.0.2.0/24\", \"2001:db8::1\"]\nfeeds = [\"ok\"]\n{}{}",
            feed("ok", "role = \"allow\""),
            feed("bad", "")
        ));
        let ok = snap(
            "ok",
            vec![
                fe("198.51.100.53"),
                fe("192.0.2.0/24"),
                fe("198.51.100.53"),
                fe("tcp 198.51.100.54:53"),
                fe("0.0.0.0/1"),
            ],
        );
        let bad = snap(
            "bad",
            vec![
                fe("192.0.2.7"),     // inside the inline /24: shadowed
                fe("192.0.0.0/16"),  // contains the /24 but is not inside it
                fe("198.51.100.53"), // exactly the allow feed's address
                fe("udp [2001:db8::1]:53"),
                fe("203.0.113.1"),
            ],
        );
        let st = merge(&cfg, &[ok, bad], NOW);
        let allow: Vec<(String, Vec<String>)> = st
            .allow_sources
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect();
        assert_eq!(
            allow,
            [
                (
                    "192.0.2.0/24".to_string(),
                    vec!["inline".to_string(), "ok".to_string()]
                ),
                ("198.51.100.53/32".to_string(), vec!["ok".to_string()]),
                ("2001:db8::1/128".to_string(), vec!["inline".to_string()]),
            ]
        );
        assert_eq!(
            st.set.allow,
            vec![
                net("192.0.2.0/24"),
                net("198.51.100.53"),
                net("2001:db8::1")
            ]
        );
        // Allowlisted entries stay in the set; the kernel checks allow first.
        assert_eq!(st.set.entries.len(), 5);
        let shadowed: Vec<String> = st.shadowed().map(|e| e.to_string()).collect();
        assert_eq!(
            shadowed,
            ["192.0.2.7", "198.51.100.53", "udp [2001:db8::1]:53"]
        );
        assert_eq!(st.shadowed_by_allow(), 3);
        assert_eq!(
            st.per_feed["ok"],
            FeedCounts {
                entries: 2,
                rejected: 2,
                ..FeedCounts::default()
            }
        );
        assert_eq!(
            st.rejected[0].reason,
            "an allowlist entry cannot have a port (the allowlist matches addresses only)"
        );
        assert!(st.rejected[1].reason.starts_with("/1 is broader"));
        let k = st.kind_counts();
        assert_eq!(
            (
                k.addr_v4,
                k.prefix_v4,
                k.addr_port_v6,
                k.allow_v4,
                k.allow_v6
            ),
            (3, 1, 1, 2, 1)
        );
        let per_map = k.per_map(&cfg.capacities);
        assert_eq!(
            per_map[0],
            (edge_filter_common::MAP_ALLOW_V4, 2, cfg.capacities.allow)
        );
        assert_eq!(per_map[7].1, 1);
    }

    #[test]
    fn unknown_feeds_are_ignored_and_ports_keep_their_identity() {
        let cfg = config(&feed("a", ""));
        let st = merge(
            &cfg,
            &[
                snap("gone", vec![fe("192.0.2.1")]),
                snap(
                    "a",
                    vec![
                        fe("tcp 192.0.2.1:22 dst"),
                        fe("tcp 192.0.2.1:22"),
                        fe("udp 192.0.2.1:22"),
                        fe("192.0.2.1/32"),
                    ],
                ),
            ],
            NOW,
        );
        assert!(!st.per_feed.contains_key("gone"));
        assert_eq!(st.set.entries.len(), 4);
        assert!(
            st.provenance(&EntryKey {
                net: IpNet::from_str("192.0.2.1/32").unwrap(),
                port: Some(PortMatch {
                    proto: Proto::Tcp,
                    port: 22,
                    side: Side::Dst
                })
            })
            .is_some()
        );
        // Host bits in a hand-made entry are cleared.
        let raw = FeedEntry::new(Entry {
            net: IpNet::from_str("198.51.100.77/24").unwrap(),
            port: None,
            action: Action::Drop,
        });
        let st = merge(&cfg, &[snap("a", vec![raw])], NOW);
        assert_eq!(st.set.entries[0].net, net("198.51.100.0/24"));
    }

    /// The path for entries without provenance gives the state the
    /// general path gives, over random feeds: IPv4 nets of every length
    /// (some broader than the limit), host bits set, IPv6, ports,
    /// duplicates within and across feeds, both actions, TTLs lapsed and
    /// not, `allow_broad`, a threshold, an allow feed and a feed with
    /// provenance next to them.
    #[test]
    fn bare_entries_merge_as_the_general_path_merges_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d65_7267);
        let cfg = config(&format!(
            "[safety]\nbroadest_v4 = 12\n[allowlist]\nfeeds = [\"ok\"]\n{}{}{}{}{}{}",
            feed("a", ""),
            feed("b", "ttl = \"1d\""),
            feed("c", "allow_broad = true\nconfidence_threshold = 50"),
            feed("d", "action = \"monitor\""),
            feed("ok", "role = \"allow\""),
            feed("meta", ""),
        ));
        let mut bare_feeds = 0;
        for round in 0..200 {
            let pool: Vec<u32> = (0..rng.random_range(1..40))
                .map(|_| rng.random::<u32>() & 0xffff_00ff)
                .collect();
            let entry = |rng: &mut rand::rngs::StdRng| -> FeedEntry {
                let addr = std::net::Ipv4Addr::from(pool[rng.random_range(0..pool.len())]);
                let text = match rng.random_range(0..10) {
                    0 => format!("{addr}/{}", rng.random_range(0..=32)),
                    1 => format!(
                        "2001:db8::{:x}/{}",
                        rng.random::<u16>(),
                        rng.random_range(16..=128)
                    ),
                    2 => format!("tcp {addr}:{}", rng.random_range(1..4)),
                    3 => format!("{addr}/{}", rng.random_range(20..=31)),
                    _ => format!("{addr}"),
                };
                let mut e = fe(&text);
                if let IpNet::V4(n) = e.entry.net {
                    // Host bits as a raw entry may carry them.
                    e.entry.net = IpNet::V4(ipnet::Ipv4Net::new(addr, n.prefix_len()).unwrap());
                }
                if rng.random_bool(0.4) {
                    e.entry.action = Action::Monitor;
                }
                e
            };
            let mut snaps: Vec<FeedSnapshot> = Vec::new();
            for name in ["a", "b", "c", "d", "ok", "meta", "a"] {
                if rng.random_bool(0.2) {
                    continue;
                }
                let n = rng.random_range(0..60);
                let mut entries: Vec<FeedEntry> = (0..n).map(|_| entry(&mut rng)).collect();
                if name == "meta"
                    && let Some(e) = entries.first_mut()
                {
                    e.indicator = Some("x".into());
                }
                let days = if rng.random_bool(0.3) { 2 } else { 0 };
                snaps.push(FeedSnapshot {
                    asserted_at: NOW - time::Duration::days(days),
                    ..snap(name, entries)
                });
            }
            // Block feeds whose entries take the bare path.
            bare_feeds += (snaps.iter())
                .filter(|s| s.feed != "ok" && s.entries.bare().is_some())
                .count();
            let fast = merge_with(&cfg, &snaps, NOW, true);
            let general = merge_with(&cfg, &snaps, NOW, false);
            assert_eq!(fast, general, "round {round}");
            assert_eq!(
                fast.provenances().collect::<Vec<_>>(),
                general.provenances().collect::<Vec<_>>()
            );
        }
        assert!(bare_feeds > 500, "the bare path ran for {bare_feeds} feeds");
    }
}
