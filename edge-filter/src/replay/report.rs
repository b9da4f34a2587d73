//! The replay summary (by verdict, reason, feed, file, top dropped sources,
//! verdict changes against a baseline) and the per-packet lines, for people
//! (tables, tab-separated lines) and machines (`--json`, JSON Lines).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::rc::Rc;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter_common::{self as abi, Counter};
use serde::Serialize;

use super::capture::Timestamp;
use super::live::LiveReport;
use super::{Decider, Decision, Evaluated, FileReport, Packet, Replay, Result, RunStats, Sink};
use crate::kernel::counters::{ReasonCount, Totals, named};
use crate::reference::Parsed;

/// Distinct dropped sources tracked exactly; beyond it the least-dropped
/// half is forgotten (and the top list flagged approximate), so memory stays
/// bounded whatever the capture.
pub const SOURCE_CAP: usize = 50_000;

/// The edge-filter version written into reports and expectations.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use crate::entry::proto_name;

/// Name of a non-IP ethertype.
fn ethertype_name(t: u16) -> String {
    match t {
        0x0806 => "arp".into(),
        0x88cc => "lldp".into(),
        0x8035 => "rarp".into(),
        0x8847 | 0x8848 => "mpls".into(),
        0x8863 | 0x8864 => "pppoe".into(),
        t if t < 0x0600 => format!("llc(len {t})"),
        t => format!("eth:{t:#06x}"),
    }
}

/// `proto` by name: one vocabulary with `events` (`"udp"`, not `17`).
fn proto_as_name<S: serde::Serializer>(p: &Option<u8>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&proto_name(*p)),
        None => s.serialize_none(),
    }
}

/// The fields of one packet line.
#[derive(Clone, Debug, Serialize)]
pub struct PacketLine {
    /// Always `packet` (JSON Lines records are tagged).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Frame number in the capture.
    pub index: u64,
    /// Capture time, RFC 3339.
    pub time: Option<String>,
    /// Capture name.
    pub file: String,
    /// Source address (IP packets).
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// IP protocol number (in JSON its name, as `events` names it:
    /// [`proto_name`]).
    #[serde(serialize_with = "proto_as_name")]
    pub proto: Option<u8>,
    /// Source port.
    #[serde(rename = "src_port")]
    pub sport: Option<u16>,
    /// Destination port.
    #[serde(rename = "dst_port")]
    pub dport: Option<u16>,
    /// Ethertype of a non-IP frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<u16>,
    /// Malformed class, when malformed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malformed: Option<&'static str>,
    /// `pass`, `drop`, `monitor`.
    pub verdict: &'static str,
    /// Reason name.
    pub reason: String,
    /// Deciding entry or allowlist net, in blocklist syntax.
    pub entry: Option<String>,
    /// Feeds of the deciding entry.
    pub feeds: Vec<String>,
    /// `kernel` or `userspace`.
    pub evaluated: Evaluated,
    /// Frame length evaluated.
    pub len: usize,
    /// Cut to the largest linear test-run frame.
    pub truncated: bool,
    /// The verdict under the baseline (`--diff-against-*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Side>,
}

/// A verdict as printed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Side {
    /// `pass`, `drop`, `monitor`.
    pub verdict: &'static str,
    /// Reason name.
    pub reason: String,
    /// Deciding entry.
    pub entry: Option<String>,
    /// Its feeds.
    pub feeds: Vec<String>,
}

impl Side {
    fn of(d: &Decision) -> Side {
        Side {
            verdict: d.verdict(),
            reason: d.reason_name(),
            entry: d.decider.map(|e| e.to_string()),
            feeds: d.feeds.to_vec(),
        }
    }
}

impl PacketLine {
    /// Build the line for a packet.
    pub fn of(p: &Packet<'_>) -> PacketLine {
        let d = p.decision;
        let mut l = PacketLine {
            kind: "packet",
            index: p.index,
            time: p.ts.map(|t| t.rfc3339()),
            file: p.file.to_string(),
            src: None,
            dst: None,
            proto: None,
            sport: None,
            dport: None,
            ethertype: None,
            malformed: None,
            verdict: d.verdict(),
            reason: d.reason_name(),
            entry: d.decider.map(|e| e.to_string()),
            feeds: d.feeds.to_vec(),
            evaluated: d.evaluated,
            len: p.frame.len(),
            truncated: p.truncated,
            baseline: p.baseline.map(Side::of),
        };
        match &p.parsed {
            Parsed::Ip(i) => {
                l.src = Some(i.src);
                l.dst = Some(i.dst);
                l.proto = Some(i.proto);
                if let Some((s, d)) = i.ports {
                    l.sport = Some(s);
                    l.dport = Some(d);
                }
            }
            Parsed::NonIp { ethertype } => l.ethertype = Some(*ethertype),
            Parsed::Malformed(c) => l.malformed = Some(c.name()),
        }
        l
    }

    /// Header of the tab-separated lines.
    pub fn tsv_header(diff: bool) -> String {
        let mut h = String::from(
            "#index\ttime\tfile\tsrc\tdst\tproto\tsrc_port\tdst_port\tverdict\treason\tentry\tfeed",
        );
        if diff {
            h.push_str("\tbaseline_verdict\tbaseline_reason\tbaseline_entry\tbaseline_feed");
        }
        h.push_str("\tnote");
        h
    }

    /// One tab-separated line (`-` for absent fields).
    pub fn tsv(&self) -> String {
        fn opt<T: ToString>(v: &Option<T>) -> String {
            v.as_ref().map_or("-".into(), ToString::to_string)
        }
        fn feeds(f: &[String]) -> String {
            if f.is_empty() {
                "-".into()
            } else {
                f.join(",")
            }
        }
        let proto = match (self.proto, self.ethertype, self.malformed) {
            (Some(p), _, _) => proto_name(p),
            (None, Some(t), _) => ethertype_name(t),
            (None, None, Some(m)) => format!("malformed:{m}"),
            _ => "-".into(),
        };
        let mut s = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.index,
            opt(&self.time),
            self.file,
            opt(&self.src),
            opt(&self.dst),
            proto,
            opt(&self.sport),
            opt(&self.dport),
            self.verdict,
            self.reason,
            opt(&self.entry),
            feeds(&self.feeds)
        );
        if let Some(b) = &self.baseline {
            s.push_str(&format!(
                "\t{}\t{}\t{}\t{}",
                b.verdict,
                b.reason,
                opt(&b.entry),
                feeds(&b.feeds)
            ));
        }
        let mut notes = Vec::new();
        if self.evaluated == Evaluated::Userspace {
            notes.push("userspace".to_string());
        }
        if self.truncated {
            notes.push(format!("cut to {} bytes", self.len));
        }
        s.push('\t');
        s.push_str(&if notes.is_empty() {
            "-".to_string()
        } else {
            notes.join(",")
        });
        s
    }
}

/// `--per-packet`: one line per packet, tab-separated or JSON Lines.
pub struct PacketPrinter<'w> {
    out: BufWriter<&'w mut dyn Write>,
    json: bool,
    header: bool,
}

impl<'w> PacketPrinter<'w> {
    /// Print to `out`.
    pub fn new(out: &'w mut dyn Write, json: bool) -> Self {
        PacketPrinter {
            out: BufWriter::with_capacity(1 << 16, out),
            json,
            header: false,
        }
    }

    /// Flush buffered lines.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

impl Sink for PacketPrinter<'_> {
    fn packet(&mut self, p: &Packet<'_>) -> Result<()> {
        let line = PacketLine::of(p);
        if self.json {
            serde_json::to_writer(&mut self.out, &line).map_err(std::io::Error::other)?;
            self.out.write_all(b"\n")?;
        } else {
            if !self.header {
                writeln!(self.out, "{}", PacketLine::tsv_header(p.baseline.is_some()))?;
                self.header = true;
            }
            writeln!(self.out, "{}", line.tsv())?;
        }
        Ok(())
    }
}

/// Packets decided by one feed's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeedCount {
    /// Feed (or file) name; `-` for entries without provenance.
    pub feed: String,
    /// Packets dropped.
    pub dropped: u64,
    /// Packets monitored.
    pub monitored: u64,
    /// Packets passed by the allowlist.
    pub allowlisted: u64,
}

/// One row of the top dropped sources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceRow {
    /// Source address.
    pub source: IpAddr,
    /// Packets dropped.
    pub packets: u64,
    /// Bytes dropped.
    pub bytes: u64,
    /// First time dropped (capture time).
    pub first_dropped: Option<String>,
    /// Last time dropped.
    pub last_dropped: Option<String>,
    /// The entry that decided its first dropped packet.
    pub entry: Option<String>,
    /// Its feeds.
    pub feeds: Vec<String>,
}

struct SourceStat {
    packets: u64,
    bytes: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    decider: Option<Decider>,
    feeds: Rc<[String]>,
}

/// Verdict transitions (`--diff-against-*`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiffReport {
    /// The baseline's label.
    pub against: String,
    /// Packets whose verdict differs.
    pub changed: u64,
    /// Dropped now, not under the baseline.
    pub newly_dropped: u64,
    /// Dropped under the baseline, not now.
    pub released: u64,
    /// Monitored now, neither monitored nor dropped under the baseline.
    pub newly_monitored: u64,
    /// Monitored under the baseline, passed now.
    pub no_longer_monitored: u64,
    /// Same verdict, different reason (e.g. another entry kind decides).
    pub reason_only: u64,
    /// Packets per `(baseline verdict, verdict)` pair that differ.
    pub transitions: Vec<Transition>,
    /// The first changed packets (up to `--max-changes`).
    pub packets: Vec<PacketLine>,
    /// Sources with the most changed packets.
    pub top_sources: Vec<ChangedSource>,
}

/// Packets moving from one verdict to another.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Transition {
    /// Under the baseline.
    pub from: &'static str,
    /// Under the main set.
    pub to: &'static str,
    /// Packets.
    pub packets: u64,
}

/// A source with changed packets.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ChangedSource {
    /// Source address.
    pub source: IpAddr,
    /// Changed packets from it.
    pub packets: u64,
    /// Under the baseline.
    pub from: &'static str,
    /// Under the main set.
    pub to: &'static str,
}

/// Who was replayed under what.
#[derive(Clone, Debug, Serialize)]
pub struct EntriesInfo {
    /// `main` or `baseline`.
    pub role: &'static str,
    /// The input's label.
    pub label: String,
    /// Entries.
    pub entries: usize,
    /// Allowlist nets.
    pub allowlisted: usize,
}

/// Verdicts by evaluator.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvaluatedCounts {
    /// By the XDP program.
    pub kernel: u64,
    /// By the reference classifier (shorter than an Ethernet header).
    pub userspace: u64,
}

/// The whole summary (`--json` prints it).
#[derive(Clone, Debug, Serialize)]
pub struct SummaryDoc {
    /// edge-filter version.
    pub edge_filter_version: &'static str,
    /// How verdicts were decided.
    pub decided_by: &'static str,
    /// The entry sets.
    pub entries: Vec<EntriesInfo>,
    /// `--drop-malformed`.
    pub malformed_drop: bool,
    /// Packets replayed.
    pub packets: u64,
    /// Wall time.
    pub elapsed_seconds: f64,
    /// Throughput.
    pub packets_per_second: f64,
    /// By verdict.
    pub totals: Totals,
    /// By reason (reasons with packets only).
    pub by_reason: Vec<ReasonCount>,
    /// By evaluator.
    pub evaluated: EvaluatedCounts,
    /// Frames cut to the largest linear test-run frame.
    pub truncated: u64,
    /// By feed.
    pub by_feed: Vec<FeedCount>,
    /// Sources with the most dropped packets.
    pub top_sources_dropped: Vec<SourceRow>,
    /// Whether the top list is approximate (more distinct dropped sources
    /// than [`SOURCE_CAP`]).
    pub top_sources_approximate: bool,
    /// Per capture.
    pub files: Vec<FileReport>,
    /// Verdict changes against the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffReport>,
    /// The live comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveReport>,
}

/// Accumulates the summary as packets stream by.
pub struct Summary {
    top: usize,
    max_changes: usize,
    reasons: Vec<Counter>,
    evaluated: EvaluatedCounts,
    truncated: u64,
    feeds: BTreeMap<String, FeedCount>,
    sources: HashMap<IpAddr, SourceStat>,
    approximate: bool,
    diff: Option<DiffReport>,
    transitions: BTreeMap<(&'static str, &'static str), u64>,
    changed_sources: HashMap<(IpAddr, &'static str, &'static str), u64>,
}

impl Summary {
    /// A summary keeping `top` dropped sources and `max_changes` changed packets.
    pub fn new(top: usize, max_changes: usize) -> Self {
        Summary {
            top,
            max_changes,
            reasons: vec![Counter::default(); abi::REASON_COUNT as usize],
            evaluated: EvaluatedCounts::default(),
            truncated: 0,
            feeds: BTreeMap::new(),
            sources: HashMap::new(),
            approximate: false,
            diff: None,
            transitions: BTreeMap::new(),
            changed_sources: HashMap::new(),
        }
    }

    fn prune_sources(&mut self) {
        let mut counts: Vec<u64> = self.sources.values().map(|s| s.packets).collect();
        let mid = counts.len() / 2;
        let (_, median, _) = counts.select_nth_unstable(mid);
        let median = *median;
        self.sources.retain(|_, s| s.packets > median);
        if self.sources.len() > SOURCE_CAP / 2 {
            // Many ties at the median: keep an arbitrary half.
            let mut n = 0;
            self.sources.retain(|_, _| {
                n += 1;
                n <= SOURCE_CAP / 2
            });
        }
        self.approximate = true;
    }

    /// Build the document once the replay is over.
    pub fn finish(
        &mut self,
        replay: &Replay<'_>,
        stats: &RunStats,
        live: Option<&LiveReport>,
    ) -> SummaryDoc {
        let (rows, totals) = named(&self.reasons);
        let by_reason = rows.into_iter().filter(|r| r.packets > 0).collect();
        let mut by_feed: Vec<FeedCount> = self.feeds.values().cloned().collect();
        by_feed.sort_by(|a, b| {
            (b.dropped + b.monitored + b.allowlisted)
                .cmp(&(a.dropped + a.monitored + a.allowlisted))
                .then(a.feed.cmp(&b.feed))
        });
        let mut top: Vec<(&IpAddr, &SourceStat)> = self.sources.iter().collect();
        top.sort_by(|a, b| b.1.packets.cmp(&a.1.packets).then(a.0.cmp(b.0)));
        let top_sources_dropped = top
            .into_iter()
            .take(self.top)
            .map(|(ip, s)| SourceRow {
                source: *ip,
                packets: s.packets,
                bytes: s.bytes,
                first_dropped: s.first.map(|t| t.rfc3339()),
                last_dropped: s.last.map(|t| t.rfc3339()),
                entry: s.decider.map(|d| d.to_string()),
                feeds: s.feeds.to_vec(),
            })
            .collect();
        let mut entries = vec![EntriesInfo {
            role: "main",
            label: replay.main.label.clone(),
            entries: replay.main.entries,
            allowlisted: replay.main.allowed,
        }];
        if let Some(b) = &replay.baseline {
            entries.push(EntriesInfo {
                role: "baseline",
                label: b.label.clone(),
                entries: b.entries,
                allowlisted: b.allowed,
            });
        }
        let diff = self.diff.take().map(|mut d| {
            d.against = replay
                .baseline
                .as_ref()
                .map_or(String::new(), |b| b.label.clone());
            d.transitions = self
                .transitions
                .iter()
                .map(|(&(from, to), &packets)| Transition { from, to, packets })
                .collect();
            let mut srcs: Vec<_> = self.changed_sources.iter().collect();
            srcs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            d.top_sources = srcs
                .into_iter()
                .take(self.top)
                .map(|(&(source, from, to), &packets)| ChangedSource {
                    source,
                    packets,
                    from,
                    to,
                })
                .collect();
            d
        });
        let secs = stats.elapsed.as_secs_f64();
        SummaryDoc {
            edge_filter_version: VERSION,
            decided_by: "XDP program via BPF_PROG_TEST_RUN (private maps)",
            entries,
            malformed_drop: replay.main.malformed_drop(),
            packets: stats.packets,
            elapsed_seconds: (secs * 1000.0).round() / 1000.0,
            packets_per_second: if secs > 0.0 {
                (stats.packets as f64 / secs).round()
            } else {
                0.0
            },
            totals,
            by_reason,
            evaluated: self.evaluated.clone(),
            truncated: self.truncated,
            by_feed,
            top_sources_dropped,
            top_sources_approximate: self.approximate,
            files: stats.files.clone(),
            diff,
            live: live.cloned(),
        }
    }
}

impl Sink for Summary {
    fn packet(&mut self, p: &Packet<'_>) -> Result<()> {
        let d = p.decision;
        let len = p.frame.len() as u64;
        if let Some(c) = self.reasons.get_mut(d.reason as usize) {
            c.packets += 1;
            c.bytes += len;
        }
        match d.evaluated {
            Evaluated::Kernel => self.evaluated.kernel += 1,
            Evaluated::Userspace => self.evaluated.userspace += 1,
        }
        if p.truncated {
            self.truncated += 1;
        }
        let verdict = d.verdict();
        if d.decider.is_some() {
            let allow = d.reason == abi::REASON_PASS_ALLOWLIST;
            let none = ["-".to_string()];
            let names: &[String] = if d.feeds.is_empty() { &none } else { &d.feeds };
            for f in names {
                let c = self.feeds.entry(f.clone()).or_insert_with(|| FeedCount {
                    feed: f.clone(),
                    ..Default::default()
                });
                match verdict {
                    "drop" => c.dropped += 1,
                    "monitor" => c.monitored += 1,
                    _ if allow => c.allowlisted += 1,
                    _ => {}
                }
            }
        }
        if d.is_drop()
            && let Some(src) = p.src()
        {
            if !self.sources.contains_key(&src) && self.sources.len() >= SOURCE_CAP {
                self.prune_sources();
            }
            let s = self.sources.entry(src).or_insert_with(|| SourceStat {
                packets: 0,
                bytes: 0,
                first: p.ts,
                last: p.ts,
                decider: d.decider,
                feeds: d.feeds.clone(),
            });
            s.packets += 1;
            s.bytes += len;
            if let Some(t) = p.ts {
                if s.first.is_none_or(|f| t < f) {
                    s.first = Some(t);
                }
                if s.last.is_none_or(|l| t > l) {
                    s.last = Some(t);
                }
            }
        }
        if let Some(b) = p.baseline {
            let diff = self.diff.get_or_insert_with(DiffReport::default);
            let (from, to) = (b.verdict(), verdict);
            if from != to {
                diff.changed += 1;
                match (from, to) {
                    (_, "drop") => diff.newly_dropped += 1,
                    ("drop", _) => diff.released += 1,
                    ("pass", "monitor") => diff.newly_monitored += 1,
                    ("monitor", "pass") => diff.no_longer_monitored += 1,
                    _ => {}
                }
                *self.transitions.entry((from, to)).or_default() += 1;
                if let Some(src) = p.src()
                    && (self.changed_sources.len() < SOURCE_CAP
                        || self.changed_sources.contains_key(&(src, from, to)))
                {
                    *self.changed_sources.entry((src, from, to)).or_default() += 1;
                }
                if diff.packets.len() < self.max_changes {
                    diff.packets.push(PacketLine::of(p));
                }
            } else if b.reason != d.reason {
                diff.reason_only += 1;
            }
        }
        Ok(())
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    t
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The human-readable summary.
pub fn print_human(doc: &SummaryDoc, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "replayed {} from {} in {:.2} s ({} packets/s), decided by the {}",
        plural(doc.packets, "packet", "packets"),
        plural(doc.files.len() as u64, "capture", "captures"),
        doc.elapsed_seconds,
        doc.packets_per_second,
        doc.decided_by
    )?;
    for e in &doc.entries {
        writeln!(
            out,
            "  {}: {} ({}, {} allowlisted)",
            e.role,
            e.label,
            plural(e.entries as u64, "entry", "entries"),
            e.allowlisted
        )?;
    }
    writeln!(
        out,
        "  {} passed, {} dropped, {} monitored{}",
        doc.totals.passed,
        doc.totals.dropped,
        doc.totals.monitored,
        if doc.malformed_drop {
            " (malformed packets dropped)"
        } else {
            ""
        }
    )?;
    if doc.evaluated.userspace > 0 || doc.truncated > 0 {
        writeln!(
            out,
            "  {} shorter than an Ethernet header (decided in userspace), {} longer than {} bytes (cut to it)",
            plural(doc.evaluated.userspace, "frame", "frames"),
            plural(doc.truncated, "frame", "frames"),
            crate::kernel::classifier::MAX_FRAME
        )?;
    }
    let mut t = table(&["reason", "verdict", "packets", "bytes"]);
    for r in &doc.by_reason {
        t.add_row([
            r.reason.clone(),
            r.verdict.to_string(),
            r.packets.to_string(),
            r.bytes.to_string(),
        ]);
    }
    writeln!(out, "{t}")?;
    if !doc.by_feed.is_empty() {
        let mut t = table(&["feed", "dropped", "monitored", "allowlisted"]);
        for f in &doc.by_feed {
            t.add_row([
                f.feed.clone(),
                f.dropped.to_string(),
                f.monitored.to_string(),
                f.allowlisted.to_string(),
            ]);
        }
        writeln!(out, "by feed:\n{t}")?;
    }
    if !doc.top_sources_dropped.is_empty() {
        let mut t = table(&[
            "source",
            "packets",
            "bytes",
            "first dropped",
            "last dropped",
            "entry",
            "feed",
        ]);
        for s in &doc.top_sources_dropped {
            t.add_row([
                s.source.to_string(),
                s.packets.to_string(),
                s.bytes.to_string(),
                s.first_dropped.clone().unwrap_or_else(|| "-".into()),
                s.last_dropped.clone().unwrap_or_else(|| "-".into()),
                s.entry.clone().unwrap_or_else(|| "-".into()),
                if s.feeds.is_empty() {
                    "-".into()
                } else {
                    s.feeds.join(",")
                },
            ]);
        }
        writeln!(
            out,
            "top {} dropped{}:\n{t}",
            plural(doc.top_sources_dropped.len() as u64, "source", "sources"),
            if doc.top_sources_approximate {
                " (approximate: too many distinct sources to count exactly)"
            } else {
                ""
            }
        )?;
    }
    let mut t = table(&[
        "capture",
        "format",
        "link types",
        "records",
        "replayed",
        "notes",
    ]);
    for f in &doc.files {
        let links: Vec<String> = f
            .link_types
            .iter()
            .map(|l| {
                if f.link_types.len() > 1 {
                    format!("{} ×{}", l.name, l.packets)
                } else {
                    l.name.clone()
                }
            })
            .collect();
        let mut notes = f.notes.clone();
        if f.truncated > 0 {
            notes.push(format!(
                "{} cut to {} bytes",
                f.truncated,
                crate::kernel::classifier::MAX_FRAME
            ));
        }
        if f.userspace > 0 {
            notes.push(format!("{} shorter than 14 bytes (userspace)", f.userspace));
        }
        if f.short_link_header > 0 {
            notes.push(format!("{} with a cut link header", f.short_link_header));
        }
        if let Some(e) = &f.error {
            notes.push(format!("error: {e}"));
        }
        t.add_row([
            f.file.clone(),
            f.format.clone().unwrap_or_else(|| "-".into()),
            if links.is_empty() {
                "-".into()
            } else {
                links.join(", ")
            },
            f.records.to_string(),
            f.replayed.to_string(),
            if notes.is_empty() {
                String::new()
            } else {
                notes.join("; ")
            },
        ]);
    }
    writeln!(out, "captures:\n{t}")?;
    if let Some(d) = &doc.diff {
        print_diff(d, out)?;
    }
    if let Some(l) = &doc.live {
        super::live::print_human(l, out)?;
    }
    Ok(())
}

fn print_diff(d: &DiffReport, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "against {}: {} change verdict ({} newly dropped, {} released, {} newly monitored, {} no longer monitored); {} change reason only",
        d.against,
        plural(d.changed, "packet", "packets"),
        d.newly_dropped,
        d.released,
        d.newly_monitored,
        d.no_longer_monitored,
        d.reason_only
    )?;
    if d.transitions.is_empty() {
        return Ok(());
    }
    let mut t = table(&["baseline", "now", "packets"]);
    for tr in &d.transitions {
        t.add_row([
            tr.from.to_string(),
            tr.to.to_string(),
            tr.packets.to_string(),
        ]);
    }
    writeln!(out, "{t}")?;
    if !d.top_sources.is_empty() {
        let mut t = table(&["source", "baseline", "now", "packets"]);
        for s in &d.top_sources {
            t.add_row([
                s.source.to_string(),
                s.from.to_string(),
                s.to.to_string(),
                s.packets.to_string(),
            ]);
        }
        writeln!(out, "sources with changed verdicts:\n{t}")?;
    }
    let mut t = table(&[
        "packet",
        "time",
        "src",
        "dst",
        "proto",
        "baseline",
        "now",
        "entry (the baseline's if passed now)",
        "feed",
    ]);
    for p in &d.packets {
        let b = p.baseline.as_ref();
        let proto = match (p.proto, p.sport, p.dport) {
            (Some(pr), Some(s), Some(dp)) => format!("{} {s} > {dp}", proto_name(pr)),
            (Some(pr), _, _) => proto_name(pr),
            _ => "-".into(),
        };
        let (entry, feeds) = if p.verdict == "pass" {
            // Released: show what used to decide.
            (
                b.and_then(|b| b.entry.clone()),
                b.map(|b| b.feeds.clone()).unwrap_or_default(),
            )
        } else {
            (p.entry.clone(), p.feeds.clone())
        };
        t.add_row([
            format!("{}#{}", p.file, p.index),
            p.time.clone().unwrap_or_else(|| "-".into()),
            p.src.map_or("-".into(), |s| s.to_string()),
            p.dst.map_or("-".into(), |s| s.to_string()),
            proto,
            b.map_or("-".into(), |b| format!("{} ({})", b.verdict, b.reason)),
            format!("{} ({})", p.verdict, p.reason),
            entry.unwrap_or_else(|| "-".into()),
            if feeds.is_empty() {
                "-".into()
            } else {
                feeds.join(",")
            },
        ]);
    }
    let shown = d.packets.len() as u64;
    writeln!(
        out,
        "changed packets{}:\n{t}",
        if shown < d.changed {
            format!(
                " (first {shown} of {}; --max-changes N or --per-packet for more)",
                d.changed
            )
        } else {
            String::new()
        }
    )?;
    Ok(())
}

/// Verdict names a summary counts by.
pub const VERDICTS: [&str; 3] = ["pass", "drop", "monitor"];

/// The reason index of a reason name.
pub fn reason_by_name(name: &str) -> Option<abi::Reason> {
    static TABLE: std::sync::OnceLock<HashMap<String, abi::Reason>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            (0..abi::REASON_COUNT)
                .map(|r| (crate::kernel::counters::reason_name(r), r))
                .collect()
        })
        .get(name)
        .copied()
}
