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
use crate::kernel::attach;
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

/// Converts kernel timestamps to wall-clock time, from one reading of the
/// clocks: `bpf_ktime_get_ns()` values (CLOCK_MONOTONIC, events) and
/// `bpf_jiffies64()` values (per-entry last hits).
///
/// Jiffies: the kernel's tick counter, `HZ` per second. Its relation to
/// CLOCK_MONOTONIC is read once per process from `/proc/timer_list`
/// (`now at N nsecs` and `jiffies: J`, root only), twice 60 ms apart to
/// learn `HZ` (the nearest of the values Linux can be built with). Without
/// that file last hits are unknown (`None`); counts are unaffected.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    mono_ns: u64,
    wall: OffsetDateTime,
    jiffies: Option<JiffiesRef>,
}

/// A (CLOCK_MONOTONIC ns, jiffies) pair and the tick rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JiffiesRef {
    /// CLOCK_MONOTONIC at `jiffies`.
    pub mono_ns: u64,
    /// The jiffies value then.
    pub jiffies: u64,
    /// Ticks per second.
    pub hz: u32,
}

/// `(now at, jiffies)` from the text of `/proc/timer_list`.
pub fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .parse()
            .ok()
    })?;
    let j = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: ")?.trim().parse().ok())?;
    Some((now, j))
}

/// The `HZ` Linux can be built with nearest to `ticks` per `ns`.
pub fn nearest_hz(ticks: u64, ns: u64) -> Option<u32> {
    if ns == 0 {
        return None;
    }
    let rate = ticks as f64 * 1e9 / ns as f64;
    [24u32, 48, 100, 250, 300, 1000, 1024, 1200]
        .into_iter()
        .min_by(|a, b| {
            (f64::from(*a) - rate)
                .abs()
                .total_cmp(&(f64::from(*b) - rate).abs())
        })
}

fn jiffies_ref() -> Option<JiffiesRef> {
    static REF: std::sync::OnceLock<Option<JiffiesRef>> = std::sync::OnceLock::new();
    *REF.get_or_init(|| {
        let read = || parse_timer_list(&std::fs::read_to_string("/proc/timer_list").ok()?);
        let (m0, j0) = read()?;
        std::thread::sleep(std::time::Duration::from_millis(60));
        let (m1, j1) = read()?;
        let hz = nearest_hz(j1.checked_sub(j0)?, m1.checked_sub(m0)?)?;
        Some(JiffiesRef {
            mono_ns: m1,
            jiffies: j1,
            hz,
        })
    })
}

impl Clock {
    /// Read both clocks now.
    pub fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into a timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock {
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            wall: OffsetDateTime::now_utc(),
            jiffies: jiffies_ref(),
        }
    }

    /// A clock from explicit readings (tests, or callers with their own).
    pub fn at(mono_ns: u64, wall: OffsetDateTime, jiffies: Option<JiffiesRef>) -> Clock {
        Clock {
            mono_ns,
            wall,
            jiffies,
        }
    }

    /// Wall-clock time of a `bpf_jiffies64()` value; `None` for 0 (never)
    /// or when the jiffies reference is unknown.
    pub fn wall_of_jiffies(&self, j: u64) -> Option<OffsetDateTime> {
        let r = self.jiffies?;
        if j == 0 {
            return None;
        }
        let delta_ns = (j as i128 - r.jiffies as i128) * 1_000_000_000 / i128::from(r.hz);
        let mono = (r.mono_ns as i128 + delta_ns).clamp(1, i128::from(u64::MAX)) as u64;
        self.wall(mono)
    }

    /// Wall-clock time of a monotonic timestamp; `None` for 0 (never).
    pub fn wall(&self, mono_ns: u64) -> Option<OffsetDateTime> {
        if mono_ns == 0 {
            return None;
        }
        let ago = self.mono_ns.saturating_sub(mono_ns);
        Some(self.wall - time::Duration::nanoseconds(ago.min(i64::MAX as u64) as i64))
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
    Ok(join(
        iface,
        &contents,
        &stats,
        &overflow,
        maps.entry_stats_capacity(),
        clock,
    ))
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

    fn stat(p: u64, b: u64, t: u64) -> EntryStat {
        EntryStat {
            packets: p,
            bytes: b,
            last_jiffies: t,
        }
    }

    #[test]
    fn timer_list_and_hz() {
        let text = "Timer List Version: v0.9\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 13646505282728 nsecs\n\ncpu: 0\n jiffies: 4298303868\n";
        assert_eq!(
            parse_timer_list(text),
            Some((13_646_505_282_728, 4_298_303_868))
        );
        // 15 ticks in 60 ms: 250 Hz; 16 in 60.4 ms too; 18 in 60 ms: 300 Hz.
        assert_eq!(nearest_hz(15, 60_000_000), Some(250));
        assert_eq!(nearest_hz(16, 60_400_000), Some(250));
        assert_eq!(nearest_hz(18, 60_000_000), Some(300));
        assert_eq!(nearest_hz(60, 60_000_000), Some(1000));
        assert_eq!(nearest_hz(6, 60_000_000), Some(100));
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
        let clock = Clock::at(
            10_000_000_000,
            OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(100),
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
        assert_eq!(
            e.hits.last_hit,
            Some(clock.wall - time::Duration::seconds(1))
        );

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
