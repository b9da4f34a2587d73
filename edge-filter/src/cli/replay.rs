//! `edge-filter replay`.

use std::path::{Path, PathBuf};

use clap::Args;
use edge_filter::agent;
use edge_filter::entry::EntryKey;
use edge_filter::replay::{self, EntryInput, Request};

/// The long help of `edge-filter replay`.
pub const LONG_ABOUT: &str = "\
Replay captures through the real XDP program and report what an entry set would do.

Every frame of every capture (pcap or pcapng; directories are searched for
*.pcap, *.pcapng and *.cap) runs through the XDP program with
BPF_PROG_TEST_RUN, loaded with private maps: the pinned maps of a running
filter are never touched, so it is safe on a production gateway. Needs root
(CAP_BPF); --live needs root.

Link types: Ethernet; Linux cooked capture (SLL, SLL2) and raw IP are
rewrapped into Ethernet; other link types are reported per capture and
skipped. Frames shorter than 14 bytes get the malformed l2_truncated verdict
from the reference classifier (marked userspace); frames longer than 3520
bytes are cut to it (what XDP without fragments sees).

CI gate:
  edge-filter replay caps/ --blocklist new.txt --write-expect expect.json
  edge-filter replay caps/ --blocklist new.txt --expect expect.json
  (exit 1 and the differences on stderr when the verdicts change)

What a new blocklist would change:
  edge-filter replay caps/ --blocklist new.txt --diff-against-blocklist old.txt

The same, sent through a veth pair in private network namespaces, checked
against the in-kernel replay:
  edge-filter replay caps/ --blocklist new.txt --live";

/// Replay captures through the real XDP program (see [`LONG_ABOUT`]).
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Capture files (pcap, pcapng) or directories.
    #[arg(required = true, value_name = "CAPTURE")]
    pub captures: Vec<PathBuf>,
    /// Blocklist file (the `run` syntax) to replay under.
    #[arg(long, short)]
    pub blocklist: PathBuf,
    /// Allowlist file: addresses or prefixes that always pass (applies to
    /// the --diff-against-blocklist side too).
    #[arg(long, short)]
    pub allowlist: Option<PathBuf>,
    /// Drop malformed IP packets instead of passing them.
    #[arg(long)]
    pub drop_malformed: bool,
    /// One line per packet (tab-separated; JSON Lines with --json).
    #[arg(long)]
    pub per_packet: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Rows in the "top sources dropped" table.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Write an expectations file (per-packet verdicts and totals).
    #[arg(long, value_name = "FILE")]
    pub write_expect: Option<PathBuf>,
    /// With --write-expect: write only the totals (by verdict and reason).
    #[arg(long, requires = "write_expect")]
    pub totals_only: bool,
    /// Check against an expectations file; exit 1 listing the differences.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// Also replay under this blocklist (the baseline) and report packets
    /// whose verdict changes: newly dropped, released.
    #[arg(long, value_name = "FILE")]
    pub diff_against_blocklist: Option<PathBuf>,
    /// Changed packets listed in the --diff-against-blocklist summary.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_changes: usize,
    /// Also send the frames through a veth pair in private network
    /// namespaces with the filter attached, and fail unless its counters
    /// equal the in-kernel replay's (root only).
    #[arg(long, conflicts_with = "diff_against_blocklist")]
    pub live: bool,
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// A blocklist (plus the shared allowlist) as an entry input: every entry's
/// feed is the blocklist's file name.
fn blocklist_input(
    blocklist: &Path,
    allowlist: Option<&Path>,
) -> anyhow::Result<EntryInput<'static>> {
    let loaded = agent::load_files(blocklist, allowlist)?;
    for e in &loaded.errors {
        log::warn!("{e}");
    }
    let feed = file_name(blocklist);
    Ok(EntryInput {
        label: format!("blocklist {}", blocklist.display()),
        set: loaded.set,
        provenance: Some(Box::new(move |_: &EntryKey| vec![feed.clone()])),
        allow_feed: allowlist.map(file_name),
    })
}

pub fn run(a: ReplayArgs) -> anyhow::Result<()> {
    let main = blocklist_input(&a.blocklist, a.allowlist.as_deref())?;
    let baseline = match &a.diff_against_blocklist {
        Some(p) => Some(blocklist_input(p, a.allowlist.as_deref())?),
        None => None,
    };
    let req = Request {
        captures: a.captures,
        main,
        baseline,
        malformed_drop: a.drop_malformed,
        per_packet: a.per_packet,
        json: a.json,
        top: a.top,
        max_changes: a.max_changes,
        write_expect: a.write_expect,
        totals_only: a.totals_only,
        expect: a.expect,
        live: a.live,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let outcome = match replay::execute(req, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(o) => o,
        // The reader went away (`| head`): nothing left to tell it.
        Err(replay::ReplayError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if !outcome.failures.is_empty() {
        anyhow::bail!("{}", outcome.failures.join("; "));
    }
    Ok(())
}
