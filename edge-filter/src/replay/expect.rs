//! Expectations files: the CI gate.
//!
//! `--write-expect FILE` records what a replay decided; `--expect FILE`
//! replays again and fails (exit code 1, differences on stderr) when the
//! verdicts differ. The file is JSON:
//!
//! ```json
//! {
//!   "edge_filter_version": "0.1.0",
//!   "malformed_drop": false,
//!   "packets": {
//!     "captures/gateway.pcap": [
//!       {"index": 1, "verdict": "pass", "reason": "pass_no_match"},
//!       {"index": 2, "verdict": "drop", "reason": "drop_addr"}
//!     ]
//!   },
//!   "totals": {
//!     "packets": 2,
//!     "by_verdict": {"pass": 1, "drop": 1, "monitor": 0},
//!     "by_reason": {"pass_no_match": 1, "drop_addr": 1}
//!   }
//! }
//! ```
//!
//! Every part is optional, so a hand-written file may hold only totals, only
//! `by_verdict`, or only the few packets that matter; a packet may give only
//! its `verdict` or only its `reason`. What is present is checked exactly:
//! `by_reason` lists every reason with packets (a reason it leaves out is
//! expected to have none), and every listed packet must be replayed.
//! Captures are matched by name: exactly, or else when one name is a
//! path-suffix of the other (so a file written in one directory checks from
//! another).
//!
//! Writing streams (one line per packet, totals at the end); the file is
//! written next to its destination and renamed into place when complete.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use edge_filter_common::{self as abi, Reason};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::report::{SummaryDoc, VERDICTS, VERSION, reason_by_name};
use super::{FileReport, Packet, ReplayError, Result, Sink, verdict_of};
use crate::kernel::counters::reason_name;

/// Per-packet differences listed before the rest are only counted.
pub const MAX_LISTED: usize = 20;

/// A reason, read from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReasonCode(Reason);

impl<'de> Deserialize<'de> for ReasonCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ReasonCode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a reason name such as drop_addr or pass_no_match")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<ReasonCode, E> {
                reason_by_name(s)
                    .map(ReasonCode)
                    .ok_or_else(|| E::custom(format!("unknown reason {s:?}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// A verdict word, read from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VerdictWord(&'static str);

impl<'de> Deserialize<'de> for VerdictWord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VerdictWord;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("pass, drop or monitor")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<VerdictWord, E> {
                VERDICTS
                    .iter()
                    .find(|v| **v == s)
                    .map(|v| VerdictWord(v))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "unknown verdict {s:?} (expected pass, drop or monitor)"
                        ))
                    })
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PacketExpect {
    index: u64,
    verdict: Option<VerdictWord>,
    reason: Option<ReasonCode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TotalsExpect {
    packets: Option<u64>,
    by_verdict: Option<BTreeMap<String, u64>>,
    by_reason: Option<BTreeMap<String, u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    edge_filter_version: Option<String>,
    malformed_drop: Option<bool>,
    #[serde(default)]
    packets: BTreeMap<String, Vec<PacketExpect>>,
    totals: Option<TotalsExpect>,
}

/// What one packet is expected to get: a verdict, a reason, or both.
type Want = (Option<&'static str>, Option<Reason>);
/// Expected packets of one capture, by index.
type FileWants = HashMap<u64, Want>;

/// A loaded expectations file.
pub struct Expectations {
    path: PathBuf,
    version: Option<String>,
    malformed_drop: Option<bool>,
    /// Per capture name: index → (verdict, reason).
    packets: BTreeMap<String, FileWants>,
    totals: Option<TotalsExpect>,
}

impl Expectations {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<Expectations> {
        let err = |msg: String| ReplayError::Expect {
            path: path.to_path_buf(),
            msg,
        };
        let f = File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let doc: ExpectFile = serde_json::from_reader(BufReader::new(f))
            .map_err(|e| err(format!("not a valid expectations file: {e}")))?;
        if let Some(t) = &doc.totals {
            for k in t.by_verdict.iter().flat_map(|m| m.keys()) {
                if !VERDICTS.contains(&k.as_str()) {
                    return Err(err(format!(
                        "totals.by_verdict: unknown verdict {k:?} (expected pass, drop or monitor)"
                    )));
                }
            }
            for k in t.by_reason.iter().flat_map(|m| m.keys()) {
                if reason_by_name(k).is_none() {
                    return Err(err(format!("totals.by_reason: unknown reason {k:?}")));
                }
            }
        }
        let mut packets = BTreeMap::new();
        for (file, list) in doc.packets {
            let mut m = HashMap::with_capacity(list.len());
            for p in list {
                if m.insert(p.index, (p.verdict.map(|v| v.0), p.reason.map(|r| r.0)))
                    .is_some()
                {
                    return Err(err(format!("{file}: packet {} listed twice", p.index)));
                }
            }
            packets.insert(file, m);
        }
        if packets.is_empty() && doc.totals.is_none() {
            return Err(err(
                "expects nothing: it has neither \"packets\" nor \"totals\"".into(),
            ));
        }
        Ok(Expectations {
            path: path.to_path_buf(),
            version: doc.edge_filter_version,
            malformed_drop: doc.malformed_drop,
            packets,
            totals: doc.totals,
        })
    }
}

/// Differences found by a [`Checker`].
#[derive(Debug, Default)]
pub struct Differences {
    /// Totals (all listed).
    pub totals: Vec<String>,
    /// Per-packet (the first [`MAX_LISTED`]).
    pub packets: Vec<String>,
    /// Per-packet differences in all.
    pub packet_count: u64,
    /// Captures expected but not replayed.
    pub files: Vec<String>,
    /// Informational notes (version or setting mismatch), not failures.
    pub notes: Vec<String>,
}

impl Differences {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.totals.is_empty() && self.packet_count == 0 && self.files.is_empty()
    }

    /// Differences in all.
    pub fn count(&self) -> u64 {
        self.totals.len() as u64 + self.packet_count + self.files.len() as u64
    }

    fn packet(&mut self, msg: String) {
        self.packet_count += 1;
        if self.packets.len() < MAX_LISTED {
            self.packets.push(msg);
        }
    }
}

/// Checks the replay against [`Expectations`] as it streams.
pub struct Checker {
    exp: Expectations,
    /// Expectations of the capture being replayed, and its key.
    current: Option<(String, FileWants)>,
    matched: Vec<String>,
    diffs: Differences,
}

fn show(v: Option<&str>, r: Option<Reason>) -> String {
    match (v, r) {
        (Some(v), Some(r)) => format!("{v} ({})", reason_name(r)),
        (Some(v), None) => v.to_string(),
        (None, Some(r)) => reason_name(r),
        (None, None) => "anything".into(),
    }
}

/// Whether `a` is `b` or a path-suffix of it (component-wise).
fn suffix_of(a: &str, b: &str) -> bool {
    b == a || b.ends_with(&format!("/{a}"))
}

impl Checker {
    /// Check against `exp`.
    pub fn new(exp: Expectations) -> Self {
        Checker {
            exp,
            current: None,
            matched: Vec::new(),
            diffs: Differences::default(),
        }
    }

    fn key_for(&self, name: &str) -> Option<String> {
        if self.exp.packets.contains_key(name) {
            return Some(name.to_string());
        }
        let found: Vec<&String> = self
            .exp
            .packets
            .keys()
            .filter(|k| suffix_of(k, name) || suffix_of(name, k))
            .collect();
        match found.as_slice() {
            [one] => Some((*one).clone()),
            _ => None,
        }
    }

    fn close_current(&mut self) {
        if let Some((key, left)) = self.current.take() {
            let mut left: Vec<_> = left.into_iter().collect();
            left.sort_by_key(|(i, _)| *i);
            for (index, (v, r)) in left {
                self.diffs.packet(format!(
                    "{key}#{index}: expected {}, but the capture has no such replayed packet",
                    show(v, r)
                ));
            }
        }
    }

    /// Compare the totals and list what was expected but never seen.
    pub fn finish(&mut self, doc: &SummaryDoc) -> Differences {
        self.close_current();
        for key in self.exp.packets.keys() {
            if !self.matched.contains(key) {
                self.diffs.files.push(format!(
                    "{key}: {} packets expected, but no capture of that name was replayed",
                    self.exp.packets[key].len()
                ));
            }
        }
        if let Some(t) = &self.exp.totals {
            if let Some(n) = t.packets
                && n != doc.packets
            {
                self.diffs.totals.push(format!(
                    "totals: {n} packets expected, {} replayed",
                    doc.packets
                ));
            }
            if let Some(bv) = &t.by_verdict {
                for v in VERDICTS {
                    let got = match v {
                        "pass" => doc.totals.passed,
                        "drop" => doc.totals.dropped,
                        _ => doc.totals.monitored,
                    };
                    let want = bv.get(v).copied().unwrap_or(0);
                    if want != got {
                        self.diffs
                            .totals
                            .push(format!("totals: {v}: expected {want}, got {got}"));
                    }
                }
            }
            if let Some(br) = &t.by_reason {
                for r in 0..abi::REASON_COUNT {
                    let name = reason_name(r);
                    let want = br.get(&name).copied().unwrap_or(0);
                    let got = doc
                        .by_reason
                        .iter()
                        .find(|c| c.reason == name)
                        .map_or(0, |c| c.packets);
                    if want != got {
                        self.diffs
                            .totals
                            .push(format!("totals: {name}: expected {want}, got {got}"));
                    }
                }
            }
        }
        if let Some(v) = &self.exp.version
            && v != VERSION
        {
            self.diffs.notes.push(format!(
                "note: the expectations were written by edge-filter {v}, this is {VERSION}"
            ));
        }
        if let Some(m) = self.exp.malformed_drop
            && m != doc.malformed_drop
        {
            self.diffs.notes.push(format!(
                "note: the expectations were written {} --drop-malformed, this replay ran {} it",
                if m { "with" } else { "without" },
                if doc.malformed_drop {
                    "with"
                } else {
                    "without"
                }
            ));
        }
        std::mem::take(&mut self.diffs)
    }

    /// Print the differences (at most [`MAX_LISTED`] per-packet ones).
    pub fn print(&self, d: &Differences, err: &mut dyn Write) -> Result<()> {
        writeln!(
            err,
            "replay differs from the expectations in {}:",
            self.exp.path.display()
        )?;
        for l in d.files.iter().chain(&d.totals).chain(&d.packets) {
            writeln!(err, "  {l}")?;
        }
        if d.packet_count > d.packets.len() as u64 {
            writeln!(
                err,
                "  ... and {} more per-packet differences",
                d.packet_count - d.packets.len() as u64
            )?;
        }
        for n in &d.notes {
            writeln!(err, "  {n}")?;
        }
        Ok(())
    }
}

impl Sink for Checker {
    fn begin_file(&mut self, _file_no: usize, name: &str) -> Result<()> {
        self.close_current();
        if let Some(key) = self.key_for(name)
            && !self.matched.contains(&key)
        {
            let m = self.exp.packets.get(&key).cloned().unwrap_or_default();
            self.matched.push(key.clone());
            self.current = Some((key, m));
        }
        Ok(())
    }

    fn packet(&mut self, p: &Packet<'_>) -> Result<()> {
        let Some((key, m)) = self.current.as_mut() else {
            return Ok(());
        };
        let Some((v, r)) = m.remove(&p.index) else {
            return Ok(());
        };
        let got_v = verdict_of(p.decision.reason);
        let got_r = p.decision.reason;
        let want_v = v.or(r.map(verdict_of));
        if want_v.is_some_and(|w| w != got_v) || r.is_some_and(|w| w != got_r) {
            let msg = format!(
                "{key}#{}: expected {}, got {}{}",
                p.index,
                show(v, r),
                show(Some(got_v), Some(got_r)),
                match (&p.decision.decider, p.src()) {
                    (Some(e), _) => format!(" by entry {e}"),
                    (None, Some(s)) => format!(" (from {s})"),
                    (None, None) => String::new(),
                }
            );
            self.diffs.packet(msg);
        }
        Ok(())
    }

    fn end_file(&mut self, _report: &FileReport) -> Result<()> {
        self.close_current();
        Ok(())
    }
}

/// Streams an expectations file as the replay runs (`--write-expect`).
pub struct ExpectWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    totals_only: bool,
    current: Option<usize>,
    first_file: bool,
}

impl ExpectWriter {
    /// Start writing `path` (through a temporary file next to it).
    pub fn create(path: &Path, totals_only: bool, malformed_drop: bool) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "expect.json".into());
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let err = |e: std::io::Error| ReplayError::Expect {
            path: path.to_path_buf(),
            msg: format!("cannot write: {e}"),
        };
        let f = File::create(&tmp).map_err(err)?;
        let mut out = BufWriter::with_capacity(1 << 16, f);
        write!(
            out,
            "{{\n  \"edge_filter_version\": {},\n  \"malformed_drop\": {malformed_drop}",
            serde_json::to_string(VERSION)
                .map_err(std::io::Error::other)
                .map_err(err)?
        )
        .map_err(err)?;
        if !totals_only {
            write!(out, ",\n  \"packets\": {{").map_err(err)?;
        }
        Ok(ExpectWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            totals_only,
            current: None,
            first_file: true,
        })
    }

    fn io(&self, e: std::io::Error) -> ReplayError {
        ReplayError::Expect {
            path: self.path.clone(),
            msg: format!("cannot write: {e}"),
        }
    }

    /// Write the totals and move the file into place.
    pub fn finish(mut self, doc: &SummaryDoc) -> Result<()> {
        let r = (|| -> std::io::Result<()> {
            if !self.totals_only {
                if self.current.is_some() {
                    write!(self.out, "\n    ]")?;
                }
                write!(self.out, "\n  }}")?;
            }
            let by_verdict: BTreeMap<&str, u64> = [
                ("pass", doc.totals.passed),
                ("drop", doc.totals.dropped),
                ("monitor", doc.totals.monitored),
            ]
            .into_iter()
            .collect();
            let by_reason: BTreeMap<&str, u64> = doc
                .by_reason
                .iter()
                .map(|r| (r.reason.as_str(), r.packets))
                .collect();
            let totals = serde_json::json!({
                "packets": doc.packets,
                "by_verdict": by_verdict,
                "by_reason": by_reason,
            });
            let text = serde_json::to_string_pretty(&totals).map_err(std::io::Error::other)?;
            write!(
                self.out,
                ",\n  \"totals\": {}\n}}\n",
                text.replace('\n', "\n  ")
            )?;
            self.out.flush()?;
            self.out.get_ref().sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(self.io(e));
        }
        Ok(())
    }
}

impl Drop for ExpectWriter {
    fn drop(&mut self) {
        // Left behind only when the replay failed before `finish`.
        if self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Sink for ExpectWriter {
    fn packet(&mut self, p: &Packet<'_>) -> Result<()> {
        if self.totals_only {
            return Ok(());
        }
        let r = (|| -> std::io::Result<()> {
            if self.current != Some(p.file_no) {
                if self.current.is_some() {
                    write!(self.out, "\n    ]")?;
                }
                let sep = if self.first_file { "" } else { "," };
                self.first_file = false;
                write!(
                    self.out,
                    "{sep}\n    {}: [",
                    serde_json::to_string(p.file).map_err(std::io::Error::other)?
                )?;
                self.current = Some(p.file_no);
            } else {
                write!(self.out, ",")?;
            }
            write!(
                self.out,
                "\n      {{\"index\": {}, \"verdict\": \"{}\", \"reason\": \"{}\"}}",
                p.index,
                p.decision.verdict(),
                p.decision.reason_name()
            )
        })();
        r.map_err(|e| self.io(e))
    }
}
