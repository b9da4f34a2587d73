//! Per-entry hits joined with provenance, and per-feed / per-interface
//! aggregates: the data behind `edge-filter top`, the per-feed drops of
//! `status` and the hits `explain` shows, and a library API for exporters.
//!
//! The kernel counts every verdict an entry decided on that entry's id
//! (`ENTRY_STATS`: packets, bytes, last hit), per CPU and per attachment
//! (every interface has its own maps, so its own counters). The maps say
//! which key holds which id; [`Knowledge`] (the agent's merged feeds, or
//! blocklist files) says which feeds and indicators assert each key.
//!
//! A packet is counted on the entry that *decided* it: the strongest
//! matching entry (drop beats monitor, then the most specific kind), which
//! for a trie node may be a covering shorter prefix. Per feed, a hit counts
//! for every feed asserting the deciding entry, so feed totals can add up to
//! more than the interface's. Hits on ids beyond the `ENTRY_STATS` capacity
//! are only counted together ([`IfaceHits::overflow`]).
//!
//! ```no_run
//! use edge_filter::ops::hits;
//! use edge_filter::kernel::paths::Paths;
//! let paths = Paths::new(edge_filter::kernel::paths::DEFAULT_ROOT);
//! let report = hits::Report::read(&paths, &paths.attached(), None).unwrap();
//! for f in &report.feeds {
//!     println!("{} dropped {} packets", f.feed, f.verdicts.drops.packets);
//! }
//! ```

use std::collections::BTreeMap;

use edge_filter_common::{self as abi, EntryStat};
use serde::Serialize;
use time::OffsetDateTime;

use crate::entry::EntryKey;
use crate::error::Result;
use crate::intel::config::EntryCounters;
use crate::kernel::attach;
use crate::kernel::clock::Clock;
use crate::kernel::maps::{Desired, SlotKey};
use crate::kernel::paths::Paths;
use crate::ops::knowledge::{Assertion, Knowledge, key_text};

/// Packets, bytes and the last hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Hits {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as seen by XDP).
    pub bytes: u64,
    /// Wall-clock time of the last hit (`None`: never).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_hit: Option<OffsetDateTime>,
}

impl Hits {
    /// From a kernel counter, `last_jiffies` converted with `clock`.
    pub fn from_stat(s: &EntryStat, clock: &Clock) -> Hits {
        Hits {
            packets: s.packets,
            bytes: s.bytes,
            last_hit: clock.wall_of_jiffies(s.last_jiffies),
        }
    }

    /// Add another's counts (the later last hit wins).
    pub fn add(&mut self, o: &Hits) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.last_hit = self.last_hit.max(o.last_hit);
    }
}

/// One entry of one interface with its hits and provenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryHits {
    /// The interface (attachment) counting.
    pub iface: String,
    /// The entry's id in that attachment's maps.
    pub id: u32,
    /// The entry in blocklist syntax (without the action), or the allowlist net.
    pub entry: String,
    /// `addr`, `prefix`, `addr_port`, `prefix_port`, or `allow`.
    pub kind: &'static str,
    /// `drop`, `monitor` or `allow`: what a packet this entry decides gets.
    pub action: &'static str,
    /// Hits counted on this entry (zero when `counted` is false).
    #[serde(flatten)]
    pub hits: Hits,
    /// Whether the id has its own counter (below the `ENTRY_STATS` capacity).
    pub counted: bool,
    /// Feeds asserting the entry (empty without provenance).
    pub feeds: Vec<String>,
    /// Indicator ids the feeds give for it.
    pub indicators: Vec<String>,
    /// Other sources (`FILE:LINE` in blocklist mode, `inline` allowlist).
    pub sources: Vec<String>,
    /// The map key (for joining; not printed).
    #[serde(skip)]
    pub key: SlotKey,
}

/// Drop and monitor hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdicts {
    /// Packets dropped by entries.
    pub drops: Hits,
    /// Packets monitored by entries.
    pub monitors: Hits,
}

impl Verdicts {
    fn add(&mut self, e: &EntryHits) {
        match e.action {
            "drop" => self.drops.add(&e.hits),
            "monitor" => self.monitors.add(&e.hits),
            _ => {}
        }
    }
}

/// One interface's per-entry hits and totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IfaceHits {
    /// The interface.
    pub iface: String,
    /// Drops and monitors summed over its counted entries.
    #[serde(flatten)]
    pub verdicts: Verdicts,
    /// Passes decided by allowlist nets.
    pub allowed: Hits,
    /// Hits on ids beyond the `ENTRY_STATS` capacity (any verdict).
    pub overflow: Hits,
    /// Capacity of `ENTRY_STATS`.
    pub capacity: u32,
    /// Entries whose id is beyond the capacity.
    pub uncounted_entries: usize,
    /// How the datapath counts per-entry hits (`exact`, `sampled`: one in
    /// `ENTRY_SAMPLE_EVERY` counted as that many, so estimates; `off`).
    pub entry_counters: EntryCounters,
    /// Every entry and allowlist net, by id.
    pub entries: Vec<EntryHits>,
}

/// One feed's hits on one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeedIfaceHits {
    /// The interface.
    pub iface: String,
    /// Its drops and monitors decided by this feed's entries.
    #[serde(flatten)]
    pub verdicts: Verdicts,
}

/// One feed's hits, over every interface and per interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeedHits {
    /// The feed.
    pub feed: String,
    /// Drops and monitors decided by entries this feed asserts.
    #[serde(flatten)]
    pub verdicts: Verdicts,
    /// Its entries (over every interface) that decided at least one packet.
    pub entries_hit: usize,
    /// Per interface.
    pub interfaces: Vec<FeedIfaceHits>,
}

/// Hits of several interfaces joined with provenance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Per interface.
    pub interfaces: Vec<IfaceHits>,
    /// Per feed (only with provenance from a config), sorted by name.
    pub feeds: Vec<FeedHits>,
}

/// The kernel's per-entry hits of one attachment, without provenance.
pub fn read_iface(paths: &Paths, iface: &str, clock: &Clock) -> Result<IfaceHits> {
    let maps = attach::open_pinned(paths, iface)?;
    let contents = maps.read()?;
    let stats = maps.entry_stats()?;
    let overflow = maps.stats_overflow()?;
    let mut out = join(
        iface,
        &contents,
        &stats,
        &overflow,
        maps.entry_stats_capacity(),
        clock,
    );
    out.entry_counters = EntryCounters::of_flags(maps.config()?.flags);
    Ok(out)
}

/// Join map contents with per-id counters (`stats[id]`).
pub fn join(
    iface: &str,
    contents: &Desired,
    stats: &[EntryStat],
    overflow: &EntryStat,
    capacity: u32,
    clock: &Clock,
) -> IfaceHits {
    let mut out = IfaceHits {
        iface: iface.to_string(),
        verdicts: Verdicts::default(),
        allowed: Hits::default(),
        overflow: Hits::from_stat(overflow, clock),
        capacity,
        uncounted_entries: 0,
        entry_counters: EntryCounters::Exact,
        entries: Vec::new(),
    };
    for (key, v) in contents.entries() {
        let stat = stats.get(v.id as usize);
        let (entry, kind, action) = match &key {
            SlotKey::Allow(net) => (net.to_string(), "allow", "allow"),
            SlotKey::Entry(k) => (
                key_text(k),
                crate::entry::Entry {
                    net: k.net,
                    port: k.port,
                    action: crate::entry::Action::Drop,
                }
                .kind()
                .name(),
                if v.own_action == abi::ACTION_DROP {
                    "drop"
                } else {
                    "monitor"
                },
            ),
        };
        let e = EntryHits {
            iface: iface.to_string(),
            id: v.id,
            entry,
            kind,
            action,
            hits: stat.map(|s| Hits::from_stat(s, clock)).unwrap_or_default(),
            counted: stat.is_some(),
            feeds: Vec::new(),
            indicators: Vec::new(),
            sources: Vec::new(),
            key,
        };
        if !e.counted {
            out.uncounted_entries += 1;
        }
        if e.action == "allow" {
            out.allowed.add(&e.hits);
        }
        out.verdicts.add(&e);
        out.entries.push(e);
    }
    out.entries.sort_by_key(|e| e.id);
    out
}

impl IfaceHits {
    /// Fill every entry's feeds, indicators and other sources.
    pub fn attach_provenance(&mut self, k: &Knowledge) {
        for e in &mut self.entries {
            match e.key {
                SlotKey::Entry(key) => {
                    let provs: &[Assertion] = k.provenance.get(&key).map_or(&[], Vec::as_slice);
                    for p in provs {
                        if let Some(f) = &p.feed
                            && !e.feeds.contains(f)
                        {
                            e.feeds.push(f.clone());
                        }
                        if let Some(i) = &p.indicator
                            && !e.indicators.contains(i)
                        {
                            e.indicators.push(i.clone());
                        }
                        if let Some(l) = &p.location {
                            e.sources.push(l.clone());
                        }
                    }
                }
                SlotKey::Allow(net) => {
                    if let Some(srcs) = k.allow_sources.get(&net) {
                        e.sources = srcs.clone();
                    }
                }
            }
        }
    }

    /// The entry of `key`, if the maps hold it.
    pub fn entry(&self, key: &EntryKey) -> Option<&EntryHits> {
        self.entries.iter().find(|e| e.key == SlotKey::Entry(*key))
    }
}

impl Report {
    /// Read every interface in `ifaces` and, with `knowledge`, join
    /// provenance and aggregate per feed.
    pub fn read(paths: &Paths, ifaces: &[String], knowledge: Option<&Knowledge>) -> Result<Report> {
        let clock = Clock::now();
        let mut interfaces = Vec::new();
        for i in ifaces {
            interfaces.push(read_iface(paths, i, &clock)?);
        }
        Ok(Report::from_interfaces(interfaces, knowledge))
    }

    /// Join and aggregate already-read interfaces.
    pub fn from_interfaces(
        mut interfaces: Vec<IfaceHits>,
        knowledge: Option<&Knowledge>,
    ) -> Report {
        let Some(k) = knowledge else {
            return Report {
                interfaces,
                feeds: Vec::new(),
            };
        };
        let mut feeds: BTreeMap<String, FeedHits> = BTreeMap::new();
        // Every feed that asserts anything is listed, hit or not.
        for provs in k.provenance.values() {
            for f in provs.iter().filter_map(|p| p.feed.as_ref()) {
                feeds.entry(f.clone()).or_insert_with(|| FeedHits {
                    feed: f.clone(),
                    ..Default::default()
                });
            }
        }
        for i in &mut interfaces {
            i.attach_provenance(k);
            for e in &i.entries {
                for f in &e.feeds {
                    let fh = feeds.entry(f.clone()).or_insert_with(|| FeedHits {
                        feed: f.clone(),
                        ..Default::default()
                    });
                    fh.verdicts.add(e);
                    if e.hits.packets > 0 {
                        fh.entries_hit += 1;
                    }
                    if fh.interfaces.last().is_none_or(|x| x.iface != i.iface) {
                        fh.interfaces.push(FeedIfaceHits {
                            iface: i.iface.clone(),
                            ..Default::default()
                        });
                    }
                    let last = fh.interfaces.last_mut().expect("pushed above");
                    last.verdicts.add(e);
                }
            }
        }
        Report {
            interfaces,
            feeds: feeds.into_values().collect(),
        }
    }

    /// Every entry of every interface, most dropping first: the `top` order
    /// (by packets or bytes, then id).
    pub fn ranked(&self, by_bytes: bool) -> Vec<&EntryHits> {
        let mut all: Vec<&EntryHits> = self.interfaces.iter().flat_map(|i| &i.entries).collect();
        all.sort_by(|a, b| {
            let k = |e: &EntryHits| {
                if by_bytes {
                    (e.hits.bytes, e.hits.packets)
                } else {
                    (e.hits.packets, e.hits.bytes)
                }
            };
            k(b).cmp(&k(a))
                .then(a.iface.cmp(&b.iface))
                .then(a.id.cmp(&b.id))
        });
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Action, Entry, EntrySet};
    use crate::kernel::clock::JiffiesRef;

    fn stat(p: u64, b: u64, t: u64) -> EntryStat {
        EntryStat {
            packets: p,
            bytes: b,
            last_jiffies: t,
        }
    }

    #[test]
    fn join_counts_on_own_action_and_aggregates_per_feed() {
        let set = EntrySet {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            entries: vec![
                Entry::new("192.0.2.1/32".parse().unwrap(), None, Action::Drop),
                Entry::new("198.51.100.0/24".parse().unwrap(), None, Action::Monitor),
            ],
        };
        let d = Desired::build_from(&set, &Desired::default());
        let id = |s: &str| {
            d.entries()
                .into_iter()
                .find(|(k, _)| match k {
                    SlotKey::Allow(n) => n.to_string() == s,
                    SlotKey::Entry(e) => e.net.to_string() == s,
                })
                .unwrap()
                .1
                .id as usize
        };
        let mut stats = vec![EntryStat::default(); 4];
        stats[id("192.0.2.1/32")] = stat(5, 500, 750);
        stats[id("198.51.100.0/24")] = stat(2, 120, 900);
        stats[id("10.0.0.0/8")] = stat(7, 700, 1_000);
        // 250 Hz; jiffies 1,000 at monotonic 10 s.
        let wall = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(100);
        let clock = Clock::at(
            10_000_000_000,
            wall,
            Some(JiffiesRef {
                mono_ns: 10_000_000_000,
                jiffies: 1_000,
                hz: 250,
            }),
        );
        let i = join("eth1", &d, &stats, &stat(1, 60, 0), 4, &clock);
        assert_eq!(i.verdicts.drops.packets, 5);
        assert_eq!(i.verdicts.drops.bytes, 500);
        assert_eq!(i.verdicts.monitors.packets, 2);
        assert_eq!(i.allowed.packets, 7);
        assert_eq!(i.overflow.packets, 1);
        assert_eq!(i.overflow.last_hit, None);
        let e = i.entries.iter().find(|e| e.entry == "192.0.2.1").unwrap();
        assert_eq!(e.kind, "addr");
        assert_eq!(e.action, "drop");
        // 250 jiffies (one second) before the reference.
        assert_eq!(e.hits.last_hit, Some(wall - time::Duration::seconds(1)));

        let k = Knowledge::from_files(("bl.txt", "192.0.2.1\n198.51.100.0/24 monitor\n"), None);
        let r = Report::from_interfaces(vec![i], Some(&k));
        let e = r.interfaces[0]
            .entries
            .iter()
            .find(|e| e.entry == "192.0.2.1")
            .unwrap();
        assert_eq!(e.sources, vec!["bl.txt:1".to_string()]);
        assert!(r.feeds.is_empty(), "blocklist files are not feeds");
        let ranked = r.ranked(false);
        assert_eq!(ranked[0].entry, "10.0.0.0/8");
        assert_eq!(ranked[1].entry, "192.0.2.1");
    }
}
