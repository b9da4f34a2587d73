//! `edge-filter replay`: what an entry set (a blocklist, and later a config
//! or feeds) would do to captured traffic, decided by the real XDP program.
//!
//! Every frame of every capture goes through the program with
//! `BPF_PROG_TEST_RUN`, loaded with *private* maps ([`KernelClassifier`]):
//! nothing pinned is read or written, so replay is safe on a production
//! gateway. The kernel answers with the action, the reason and the deciding
//! entry's id; the id is mapped back to the entry (and to the feeds that
//! provided it) through the maps' own contents.
//!
//! - [`capture`] reads pcap and pcapng one record at a time and rewraps
//!   Linux cooked (SLL, SLL2) and raw IP link layers into Ethernet;
//!   [`reader`] parses the two formats in bounded memory, whatever lengths
//!   a file claims;
//! - [`report`] accumulates the summary (by verdict, reason, feed, file, top
//!   dropped sources) and prints it and the per-packet lines;
//! - [`expect`] writes and checks expectations files (the CI gate);
//! - [`live`] sends the frames through a veth pair in private network
//!   namespaces and compares the counters with the in-kernel replay.
//!
//! Frames shorter than an Ethernet header cannot go through
//! `BPF_PROG_TEST_RUN`: they get the verdict the semantics define
//! (malformed `l2_truncated`) from the reference classifier and are marked
//! `evaluated: userspace`. Frames longer than [`MAX_FRAME`] are cut to it
//! (XDP without fragments sees only the linear part) and counted.
//!
//! Entry inputs plug in through [`EntryInput`]: an [`EntrySet`] plus an
//! optional provenance function naming the feeds an entry came from.

pub mod capture;
pub mod expect;
pub mod live;
pub mod reader;
pub mod report;

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use edge_filter_common::{self as abi, Reason, ReasonInfo};
use ipnet::IpNet;
use serde::Serialize;

use crate::entry::{Action, Entry, EntryKey, EntrySet};
use crate::maps::SlotKey;
use crate::program::Capacities;
use crate::reference::{Parsed, Reference, parse};
use crate::testrun::{KernelClassifier, MAX_FRAME, MIN_FRAME};

use capture::{Capture, Timestamp};

/// Why a replay failed (as opposed to finding differences, which is an
/// [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Loading the program, filling its maps, or running it.
    #[error(transparent)]
    Filter(#[from] crate::error::Error),
    /// The captures named on the command line.
    #[error("{0}")]
    Captures(String),
    /// An entry set does not fit the maps.
    #[error("{label}: {msg}")]
    Entries {
        /// Which entry input.
        label: String,
        /// What went wrong.
        msg: String,
    },
    /// Reading or writing an expectations file.
    #[error("expectations file {path}: {msg}")]
    Expect {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// Setting up or running `--live`.
    #[error("--live: {0}")]
    Live(String),
    /// Writing the output.
    #[error("writing the output")]
    Output(#[from] std::io::Error),
    /// The kernel contradicted itself.
    #[error("internal inconsistency: {0}")]
    Inconsistent(String),
}

/// Result alias.
pub type Result<T, E = ReplayError> = std::result::Result<T, E>;

/// `s` with control characters escaped (`\r`, `\u{1b}`), so that text taken
/// from a file or its name cannot forge lines or terminal output.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Feed names of an entry (for `--feed` / `--config` inputs; a plain
/// blocklist names itself).
pub type Provenance<'a> = dyn Fn(&EntryKey) -> Vec<String> + 'a;

/// Sources of an allowlist net (the allowlist file, or allowlist feeds).
pub type AllowProvenance<'a> = dyn Fn(&IpNet) -> Vec<String> + 'a;

/// One entry set to replay under.
pub struct EntryInput<'a> {
    /// How it is named in messages and the summary (e.g. the blocklist path).
    pub label: String,
    /// The entries and the allowlist.
    pub set: EntrySet,
    /// The feeds each entry came from; `None` shows `-`.
    pub provenance: Option<Box<Provenance<'a>>>,
    /// The sources of each allowlist net (shown as the feed of allowlisted
    /// packets); `None` shows `-`.
    pub allow_provenance: Option<Box<AllowProvenance<'a>>>,
}

/// How a verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Evaluated {
    /// By the XDP program through `BPF_PROG_TEST_RUN`.
    Kernel,
    /// By the reference classifier (frames shorter than an Ethernet header).
    Userspace,
}

/// What decided a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decider {
    /// A block or monitor entry.
    Entry(Entry),
    /// An allowlist net.
    Allow(IpNet),
}

impl std::fmt::Display for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decider::Entry(e) => write!(f, "{e}"),
            Decider::Allow(n) => {
                if n.prefix_len() == n.max_prefix_len() {
                    write!(f, "allow {}", n.addr())
                } else {
                    write!(f, "allow {n}")
                }
            }
        }
    }
}

/// The verdict on one frame under one entry set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The counter index (`REASON_*`).
    pub reason: Reason,
    /// The deciding entry or allowlist net.
    pub decider: Option<Decider>,
    /// Feeds of the decider (empty when none or unknown).
    pub feeds: Rc<[String]>,
    /// Kernel or userspace.
    pub evaluated: Evaluated,
}

/// `pass`, `drop` or `monitor` for a reason.
pub fn verdict_of(reason: Reason) -> &'static str {
    ReasonInfo::decode(reason).map_or("pass", ReasonInfo::verdict)
}

impl Decision {
    /// `pass`, `drop` or `monitor`.
    pub fn verdict(&self) -> &'static str {
        verdict_of(self.reason)
    }

    /// Whether the frame is dropped.
    pub fn is_drop(&self) -> bool {
        ReasonInfo::decode(self.reason).is_some_and(ReasonInfo::is_drop)
    }

    /// The reason's stable name.
    pub fn reason_name(&self) -> String {
        crate::counters::reason_name(self.reason)
    }
}

/// Map capacities large enough for `set` (upper bounds: duplicate keys
/// merge), at least 16 each.
pub fn capacities_for(set: &EntrySet) -> Capacities {
    use edge_filter_common::EntryKind as K;
    let mut c = [0u32; 6]; // addr4 addr6 prefix4 prefix6 port4 port6
    let mut pp = [0u32; 2];
    for e in &set.entries {
        let v6 = usize::from(matches!(e.net, IpNet::V6(_)));
        match e.kind() {
            K::Addr => c[v6] += 1,
            K::Prefix => c[2 + v6] += 1,
            K::AddrPort => c[4 + v6] += 1,
            K::PrefixPort => pp[v6] += 1,
        }
    }
    let (mut a4, mut a6) = (0u32, 0u32);
    for n in &set.allow {
        match n {
            IpNet::V4(_) => a4 += 1,
            IpNet::V6(_) => a6 += 1,
        }
    }
    let at_least = |n: u32| n.max(16);
    Capacities {
        addr_v4: at_least(c[0]),
        addr_v6: at_least(c[1]),
        prefix_v4: at_least(c[2]),
        prefix_v6: at_least(c[3]),
        port_v4: at_least(c[4].max(pp[0])),
        port_v6: at_least(c[5].max(pp[1])),
        allow: at_least(a4.max(a6)),
        // Every id of the set gets its own counter (ids are dense).
        entry_stats: at_least((set.entries.len() + set.allow.len()) as u32),
    }
}

/// The XDP program loaded with private maps holding one entry set, plus
/// what is needed to name the entry behind an id.
pub struct Evaluator<'a> {
    kernel: KernelClassifier,
    by_id: HashMap<u32, Decider>,
    provenance: Option<Box<Provenance<'a>>>,
    allow_provenance: Option<Box<AllowProvenance<'a>>>,
    /// Feeds by decider id, computed once per id.
    feeds: HashMap<u32, Rc<[String]>>,
    none: Rc<[String]>,
    malformed_drop: bool,
    /// The input's label.
    pub label: String,
    /// Entries in the input (before merging duplicates).
    pub entries: usize,
    /// Allowlist nets in the input.
    pub allowed: usize,
}

impl<'a> Evaluator<'a> {
    /// Load the program and fill its private maps with `input`.
    pub fn new(input: EntryInput<'a>, malformed_drop: bool) -> Result<Self> {
        let caps = capacities_for(&input.set);
        let mut kernel = KernelClassifier::new(&caps)?;
        kernel.set_entries(&input.set, malformed_drop)?;
        if kernel.last_sync.refused > 0 {
            return Err(ReplayError::Entries {
                label: input.label,
                msg: kernel.last_sync.refusals.join("; "),
            });
        }
        let by_id = kernel
            .maps()
            .read()?
            .entries()
            .into_iter()
            .map(|(k, v)| {
                let d = match k {
                    SlotKey::Allow(n) => Decider::Allow(n),
                    SlotKey::Entry(key) => Decider::Entry(Entry {
                        net: key.net,
                        port: key.port,
                        action: if v.own_action == abi::ACTION_DROP {
                            Action::Drop
                        } else {
                            Action::Monitor
                        },
                    }),
                };
                (v.id, d)
            })
            .collect();
        Ok(Evaluator {
            kernel,
            by_id,
            provenance: input.provenance,
            allow_provenance: input.allow_provenance,
            feeds: HashMap::new(),
            none: Rc::from(Vec::new()),
            malformed_drop,
            label: input.label,
            entries: input.set.entries.len(),
            allowed: input.set.allow.len(),
        })
    }

    /// Whether malformed frames are dropped.
    pub fn malformed_drop(&self) -> bool {
        self.malformed_drop
    }

    /// Decide one Ethernet frame (at most [`MAX_FRAME`] bytes).
    pub fn evaluate(&mut self, frame: &[u8]) -> Result<Decision> {
        if frame.len() < MIN_FRAME {
            let v = Reference::default().classify(frame, self.malformed_drop);
            return Ok(Decision {
                reason: v.reason,
                decider: None,
                feeds: self.none.clone(),
                evaluated: Evaluated::Userspace,
            });
        }
        let kv = self.kernel.classify(frame)?;
        let dropped = ReasonInfo::decode(kv.reason).is_some_and(ReasonInfo::is_drop);
        let xdp_drop = 1;
        if dropped != (kv.action == xdp_drop) {
            return Err(ReplayError::Inconsistent(format!(
                "the XDP program returned action {} but recorded reason {}",
                kv.action,
                crate::counters::reason_name(kv.reason)
            )));
        }
        let (decider, feeds) = if kv.entry_id == abi::NO_ENTRY {
            (None, self.none.clone())
        } else {
            let d = self.by_id.get(&kv.entry_id).copied();
            let feeds = match (d, self.feeds.get(&kv.entry_id)) {
                (None, _) => self.none.clone(),
                (Some(_), Some(f)) => f.clone(),
                (Some(d), None) => {
                    let f: Rc<[String]> = match (d, &self.provenance, &self.allow_provenance) {
                        (Decider::Entry(e), Some(p), _) => p(&e.key()).into(),
                        (Decider::Allow(n), _, Some(p)) => p(&n).into(),
                        _ => self.none.clone(),
                    };
                    self.feeds.insert(kv.entry_id, f.clone());
                    f
                }
            };
            (d, feeds)
        };
        Ok(Decision {
            reason: kv.reason,
            decider,
            feeds,
            evaluated: Evaluated::Kernel,
        })
    }
}

/// One replayed packet, as the sinks see it.
pub struct Packet<'r> {
    /// The capture's display name.
    pub file: &'r str,
    /// Position of the capture in the replay (from 0).
    pub file_no: usize,
    /// Frame number in the capture (from 1).
    pub index: u64,
    /// Capture timestamp.
    pub ts: Option<Timestamp>,
    /// The frame evaluated (cut to [`MAX_FRAME`]).
    pub frame: &'r [u8],
    /// Its length before the cut.
    pub wire_len: usize,
    /// Cut to [`MAX_FRAME`].
    pub truncated: bool,
    /// The reference parse of `frame` (addresses and ports for display).
    pub parsed: Parsed,
    /// The verdict under the main entry set.
    pub decision: &'r Decision,
    /// The verdict under the baseline (`--diff-against-*`).
    pub baseline: Option<&'r Decision>,
}

impl Packet<'_> {
    /// The source address of an IP packet.
    pub fn src(&self) -> Option<IpAddr> {
        match &self.parsed {
            Parsed::Ip(i) => Some(i.src),
            _ => None,
        }
    }
}

/// Link-type count of a capture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkCount {
    /// Link type number.
    pub linktype: u32,
    /// Its name.
    pub name: String,
    /// Packet records on it.
    pub packets: u64,
    /// Whether they were replayed.
    pub supported: bool,
}

/// What happened to one capture.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileReport {
    /// Display name.
    pub file: String,
    /// `pcap/LE`, `pcap-nsec/BE`, `pcapng`; `None` when unreadable.
    pub format: Option<String>,
    /// Packet records read.
    pub records: u64,
    /// Packets replayed (records on supported link types).
    pub replayed: u64,
    /// Records on unsupported link types (counted, not replayed).
    pub skipped: u64,
    /// Records per link type.
    pub link_types: Vec<LinkCount>,
    /// Frames cut to the largest frame `BPF_PROG_TEST_RUN` runs linearly.
    pub truncated: u64,
    /// Frames decided in userspace (shorter than an Ethernet header).
    pub userspace: u64,
    /// Records whose link-layer header (SLL/SLL2) was cut short.
    pub short_link_header: u64,
    /// Open failure, or where the file broke (packets before it count).
    pub error: Option<String>,
    /// Human-readable notes (unsupported link types).
    pub notes: Vec<String>,
}

impl FileReport {
    fn count_link(&mut self, linktype: u32, supported: bool, n: u64) {
        match self.link_types.iter_mut().find(|l| l.linktype == linktype) {
            Some(l) => l.packets += n,
            None => self.link_types.push(LinkCount {
                linktype,
                name: capture::linktype_name(linktype),
                packets: n,
                supported,
            }),
        }
    }
}

/// Something that consumes the replay as it streams.
pub trait Sink {
    /// A capture is about to be read.
    fn begin_file(&mut self, _file_no: usize, _name: &str) -> Result<()> {
        Ok(())
    }
    /// One packet was decided.
    fn packet(&mut self, p: &Packet<'_>) -> Result<()>;
    /// A capture is done (or could not be read).
    fn end_file(&mut self, _report: &FileReport) -> Result<()> {
        Ok(())
    }
}

/// Several sinks in order.
pub struct Fanout<'s>(pub Vec<&'s mut dyn Sink>);

impl Sink for Fanout<'_> {
    fn begin_file(&mut self, file_no: usize, name: &str) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|s| s.begin_file(file_no, name))
    }
    fn packet(&mut self, p: &Packet<'_>) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.packet(p))
    }
    fn end_file(&mut self, report: &FileReport) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.end_file(report))
    }
}

/// The whole replay: the main entry set and an optional baseline.
pub struct Replay<'a> {
    /// The entry set under test.
    pub main: Evaluator<'a>,
    /// The entry set to compare with (`--diff-against-*`).
    pub baseline: Option<Evaluator<'a>>,
}

/// Totals of a run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Per capture.
    pub files: Vec<FileReport>,
    /// Packets replayed.
    pub packets: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl<'a> Replay<'a> {
    /// Replay every capture in order, streaming each packet to `sink`.
    /// Unreadable or broken captures are reported in their [`FileReport`];
    /// only a failure of the program itself (or of a sink) is an error.
    pub fn run(&mut self, files: &[(String, PathBuf)], sink: &mut dyn Sink) -> Result<RunStats> {
        let start = Instant::now();
        let mut stats = RunStats::default();
        for (file_no, (name, path)) in files.iter().enumerate() {
            sink.begin_file(file_no, name)?;
            let mut rep = FileReport {
                file: name.clone(),
                ..Default::default()
            };
            let mut cap = match Capture::open(path) {
                Ok(c) => c,
                Err(e) => {
                    rep.error = Some(printable(&e));
                    sink.end_file(&rep)?;
                    stats.files.push(rep);
                    continue;
                }
            };
            rep.format = Some(cap.format().name());
            if let Some(lt) = cap.pcap_linktype() {
                rep.count_link(lt, capture::Link::from_linktype(lt).is_some(), 0);
            }
            while let Some(rec) = cap.next_record() {
                let rec = match rec {
                    Ok(r) => r,
                    Err(e) => {
                        rep.error = Some(printable(&e));
                        break;
                    }
                };
                rep.records += 1;
                rep.count_link(rec.linktype, rec.frame.is_some(), 1);
                let Some(frame) = rec.frame.as_deref() else {
                    rep.skipped += 1;
                    continue;
                };
                rep.replayed += 1;
                if rec.short_link_header {
                    rep.short_link_header += 1;
                }
                // The capture hands out at most MAX_FRAME bytes of a frame.
                let truncated = rec.frame_len > MAX_FRAME;
                if truncated {
                    rep.truncated += 1;
                }
                let decision = self.main.evaluate(frame)?;
                if decision.evaluated == Evaluated::Userspace {
                    rep.userspace += 1;
                }
                let baseline = match &mut self.baseline {
                    Some(b) => Some(b.evaluate(frame)?),
                    None => None,
                };
                let p = Packet {
                    file: name,
                    file_no,
                    index: rec.index,
                    ts: rec.ts,
                    frame,
                    wire_len: rec.frame_len,
                    truncated,
                    parsed: parse(frame),
                    decision: &decision,
                    baseline: baseline.as_ref(),
                };
                sink.packet(&p)?;
                stats.packets += 1;
            }
            for l in rep.link_types.clone() {
                if !l.supported {
                    rep.notes.push(format!(
                        "{} ({} packets not replayed)",
                        capture::unsupported_message(l.linktype),
                        l.packets
                    ));
                }
            }
            sink.end_file(&rep)?;
            stats.files.push(rep);
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    }
}

/// Everything `edge-filter replay` was asked to do.
pub struct Request<'a> {
    /// Captures as given (files or directories).
    pub captures: Vec<PathBuf>,
    /// The entry set under test.
    pub main: EntryInput<'a>,
    /// The entry set to compare with.
    pub baseline: Option<EntryInput<'a>>,
    /// Drop malformed packets.
    pub malformed_drop: bool,
    /// One line per packet.
    pub per_packet: bool,
    /// JSON output.
    pub json: bool,
    /// Rows of the top dropped sources table.
    pub top: usize,
    /// Changed packets listed by `--diff-against-*` in the summary.
    pub max_changes: usize,
    /// Write an expectations file.
    pub write_expect: Option<PathBuf>,
    /// Only totals in the written expectations.
    pub totals_only: bool,
    /// Check an expectations file.
    pub expect: Option<PathBuf>,
    /// Also send the frames through a veth pair.
    pub live: bool,
}

/// How a replay ended: the failures make the command exit non-zero.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One line per failed check (expectations, live comparison).
    pub failures: Vec<String>,
}

/// Run a [`Request`], writing the report to `out` and diagnostics to `err`.
pub fn execute(req: Request<'_>, out: &mut dyn Write, err: &mut dyn Write) -> Result<Outcome> {
    let files = capture::expand(&req.captures).map_err(ReplayError::Captures)?;
    let expectations = match &req.expect {
        Some(p) => Some(expect::Expectations::load(p)?),
        None => None,
    };
    let mut live = if req.live {
        Some(live::Live::start(&req.main.set, req.malformed_drop)?)
    } else {
        None
    };
    let main = Evaluator::new(req.main, req.malformed_drop)?;
    let baseline = match req.baseline {
        Some(b) => Some(Evaluator::new(b, req.malformed_drop)?),
        None => None,
    };
    let mut replay = Replay { main, baseline };

    let mut summary = report::Summary::new(req.top, req.max_changes);
    let mut printer = report::PacketPrinter::new(&mut *out, req.json);
    let mut writer = match &req.write_expect {
        Some(p) => Some(expect::ExpectWriter::create(
            p,
            req.totals_only,
            req.malformed_drop,
        )?),
        None => None,
    };
    let mut checker = expectations.map(expect::Checker::new);
    let stats = {
        let mut sinks: Vec<&mut dyn Sink> = vec![&mut summary];
        if req.per_packet {
            sinks.push(&mut printer);
        }
        if let Some(w) = writer.as_mut() {
            sinks.push(w);
        }
        if let Some(c) = checker.as_mut() {
            sinks.push(c);
        }
        if let Some(l) = live.as_mut() {
            sinks.push(l);
        }
        replay.run(&files, &mut Fanout(sinks))?
    };
    printer.flush()?;
    drop(printer);

    let mut outcome = Outcome::default();
    let live_report = match live.take() {
        Some(l) => Some(l.finish()?),
        None => None,
    };
    let doc = summary.finish(&replay, &stats, live_report.as_ref());
    if let Some(w) = writer {
        w.finish(&doc)?;
    }
    if req.json {
        if req.per_packet {
            let line = serde_json::json!({"type": "summary", "summary": &doc});
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?
            )?;
        }
    } else {
        report::print_human(&doc, &mut *out)?;
    }
    if let Some(l) = &live_report
        && !l.equal
    {
        outcome.failures.push(format!(
            "--live: the counters of the veth replay differ from the in-kernel replay ({})",
            l.differences.join("; ")
        ));
    }
    if let Some(mut c) = checker {
        let diffs = c.finish(&doc);
        if !diffs.is_empty() {
            c.print(&diffs, &mut *err)?;
            outcome.failures.push(format!(
                "{} difference{} from the expectations in {}",
                diffs.count(),
                if diffs.count() == 1 { "" } else { "s" },
                req.expect
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            ));
        } else {
            writeln!(
                err,
                "expectations met: {}",
                req.expect
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            )?;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("caps/ok é.pcap"), "caps/ok é.pcap");
        assert_eq!(printable("a\rb\x1b[2J\tc\n"), "a\\rb\\u{1b}[2J\\tc\\n");
    }
}
