//! `edge-filter replay`: what an entry set (a blocklist, a config's feeds,
//! or feed files) would do to captured traffic, decided by the real XDP
//! program.
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
//! optional provenance function naming the feeds an entry came from;
//! [`input`] builds the three the command line offers.

pub mod capture;
pub mod expect;
pub mod input;
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
use crate::kernel::classifier::{KernelClassifier, MAX_FRAME, MIN_FRAME};
use crate::kernel::maps::SlotKey;
use crate::kernel::program::Capacities;
use crate::reference::{Parsed, Reference, parse};

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

impl ReplayError {
    /// The exit status this error ends `edge-filter replay` with: a capture
    /// argument that names nothing readable is an input problem, the rest
    /// means the replay could not run.
    pub fn exit(&self) -> Exit {
        match self {
            ReplayError::Captures(_) => Exit::Input,
            _ => Exit::Error,
        }
    }
}

/// Result alias.
pub type Result<T, E = ReplayError> = std::result::Result<T, E>;

/// The exit status of `edge-filter replay`, as its `--help` and the README
/// document it: a CI gate must tell "the verdicts changed" from "the input
/// was garbage" from "the tool could not run".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Replayed, and every check passed.
    Ok = 0,
    /// A check failed: the verdicts differ from `--expect`, or the `--live`
    /// counters differ from the in-kernel replay.
    Differences = 1,
    /// Invalid arguments (clap's own status for usage errors).
    Usage = 2,
    /// An input problem: a capture could not be read, or broke part-way
    /// (unless `--allow-unreadable`); no packet was replayed (unless
    /// `--allow-empty`); `--write-expect` refused to write. Takes precedence
    /// over [`Exit::Differences`], which unreadable input may cause.
    Input = 3,
    /// The replay could not run: the entries, the expectations file, the
    /// program (kernel, permissions) or the output failed.
    Error = 4,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

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
        crate::kernel::counters::reason_name(self.reason)
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
        // Maps of a tier for the set, holding it (no tier change later).
        let kernel = KernelClassifier::with_set(&input.set, malformed_drop)?;
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
                crate::kernel::counters::reason_name(kv.reason)
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
    /// Captures that cannot be read (or break part-way) are listed but do
    /// not fail the replay.
    pub allow_unreadable: bool,
    /// A replay of no packet at all does not fail (`--write-expect` still
    /// refuses to write from it).
    pub allow_empty: bool,
}

/// How a replay ended: anything listed makes the command exit non-zero.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One line per failed check (expectations, live comparison):
    /// [`Exit::Differences`].
    pub failures: Vec<String>,
    /// One line per input problem the request does not allow (unreadable
    /// captures, no packet replayed, expectations not written):
    /// [`Exit::Input`].
    pub input_problems: Vec<String>,
}

impl Outcome {
    /// The exit status: input problems first (they may cause differences).
    pub fn exit(&self) -> Exit {
        if !self.input_problems.is_empty() {
            Exit::Input
        } else if !self.failures.is_empty() {
            Exit::Differences
        } else {
            Exit::Ok
        }
    }

    /// Every line, input problems first.
    pub fn messages(&self) -> Vec<String> {
        self.input_problems
            .iter()
            .chain(&self.failures)
            .cloned()
            .collect()
    }
}

/// `n captures` / `1 capture`.
fn captures(n: usize) -> String {
    format!("{n} capture{}", if n == 1 { "" } else { "s" })
}

/// Why nothing was replayed: the captures by what they held.
fn nothing_replayed(files: &[FileReport]) -> String {
    let unreadable = files.iter().filter(|f| f.error.is_some()).count();
    let empty = files
        .iter()
        .filter(|f| f.error.is_none() && f.records == 0)
        .count();
    let unsupported = files.len() - unreadable - empty;
    let parts: Vec<String> = [
        (unreadable, "unreadable"),
        (empty, "without packet records"),
        (unsupported, "with unsupported link types only"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    format!(
        "no packet was replayed from {} ({})",
        captures(files.len()),
        parts.join(", ")
    )
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

    // Input problems. Each unreadable capture by its path (what the
    // operator can open), with control characters escaped.
    let unreadable: Vec<String> = files
        .iter()
        .zip(&stats.files)
        .filter_map(|((_, path), rep)| {
            rep.error
                .as_ref()
                .map(|e| format!("{}: {}", printable(&path.display().to_string()), e))
        })
        .collect();
    let empty = stats.packets == 0;
    if !unreadable.is_empty() && !req.allow_unreadable {
        outcome.input_problems.push(format!(
            "{} of {} could not be read (listed above; --allow-unreadable replays the others without failing)",
            unreadable.len(),
            captures(files.len())
        ));
    }
    if empty && !req.allow_empty {
        outcome.input_problems.push(format!(
            "{}: a replay of nothing checks nothing (--allow-empty accepts it)",
            nothing_replayed(&stats.files)
        ));
    }
    // A gate must not be made from garbage: no expectations from nothing,
    // nor from unreadable captures unless they were allowed.
    if let Some(w) = writer {
        let refuse = if empty {
            Some("no packet was replayed, and expectations of nothing pass on any input".into())
        } else if !unreadable.is_empty() && !req.allow_unreadable {
            Some(format!(
                "{} of {} could not be read (--allow-unreadable writes expectations for the others)",
                unreadable.len(),
                captures(files.len())
            ))
        } else {
            None
        };
        match refuse {
            None => w.finish(&doc)?,
            Some(why) => {
                // Dropping the writer removes its temporary file; a file
                // already at the destination stays as it was.
                drop(w);
                outcome.input_problems.push(format!(
                    "--write-expect: {} not written: {why}",
                    req.write_expect
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string())
                ));
            }
        }
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
    out.flush()?;
    for u in &unreadable {
        writeln!(err, "unreadable capture {u}")?;
    }
    if !unreadable.is_empty() && req.allow_unreadable {
        writeln!(
            err,
            "{} of {} could not be read: allowed by --allow-unreadable",
            unreadable.len(),
            captures(files.len())
        )?;
    }
    if empty && req.allow_empty {
        writeln!(
            err,
            "{}: allowed by --allow-empty",
            nothing_replayed(&stats.files)
        )?;
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

    #[test]
    fn input_problems_win_over_differences() {
        let mut o = Outcome::default();
        assert_eq!(o.exit(), Exit::Ok);
        o.failures.push("2 differences".into());
        assert_eq!(o.exit(), Exit::Differences);
        o.input_problems
            .push("1 of 2 captures could not be read".into());
        assert_eq!(o.exit(), Exit::Input);
        assert_eq!(o.messages()[0], "1 of 2 captures could not be read");
        assert_eq!(
            [
                Exit::Ok,
                Exit::Differences,
                Exit::Usage,
                Exit::Input,
                Exit::Error
            ]
            .map(Exit::code),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(ReplayError::Captures("x".into()).exit(), Exit::Input);
        assert_eq!(ReplayError::Live("x".into()).exit(), Exit::Error);
    }

    #[test]
    fn why_nothing_was_replayed() {
        let f = |error: bool, records: u64| FileReport {
            error: error.then(|| "bad".to_string()),
            records,
            ..Default::default()
        };
        assert_eq!(
            nothing_replayed(&[f(true, 0), f(true, 3), f(false, 0), f(false, 5)]),
            "no packet was replayed from 4 captures (2 unreadable, 1 without packet records, 1 with unsupported link types only)"
        );
        assert_eq!(
            nothing_replayed(&[f(false, 0)]),
            "no packet was replayed from 1 capture (1 without packet records)"
        );
    }
}
