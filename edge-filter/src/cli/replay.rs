//! `edge-filter replay`.

use std::path::PathBuf;

use clap::Args;
use edge_filter::intel::config::Config;
use edge_filter::intel::intake::Copies;
use edge_filter::replay::{self, EntryInput, Request, input};

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
bytes are cut to it (what XDP without fragments sees) and counted. Records
of any length the formats allow (up to 4 GiB) are read in bounded memory.

Unreadable input fails the replay: every capture that cannot be read, or
breaks part-way, is listed on stderr with its path and the reason, and the
exit status is 3; so it is when no packet at all was replayed.
--allow-unreadable replays the readable captures without failing (the others
still listed); --allow-empty accepts a replay of no packet. --write-expect
never writes expectations from no packet, nor, without --allow-unreadable,
when a capture could not be read.

CI gate:
  edge-filter replay caps/ --blocklist new.txt --write-expect expect.json
  edge-filter replay caps/ --blocklist new.txt --expect expect.json
  (exit 1 and the differences on stderr when the verdicts change)

Exit status:
  0  replayed, and every check passed
  1  the verdicts differ from --expect, or the --live counters differ
  2  usage error (invalid arguments)
  3  input problem: a capture could not be read or broke part-way, no packet
     was replayed, or --write-expect refused to write (wins over 1)
  4  the replay could not run (entries, expectations file, kernel program,
     permissions, output)

Entries: --blocklist FILE (the `run` syntax), --feed FILE (feed formats,
repeatable), or --config FILE (the agent's config: every feed read or fetched
once and merged exactly as the agent merges them). A feed of the config that
cannot be read, fetched or used is replayed from its last-known-good copy in
the config's state_dir (a warning on stderr says so), so a feed outage does
not fail a CI gate; a feed with neither is an error naming it. --offline
replays from the state_dir copies alone, fetching nothing.

What a new blocklist or config would change:
  edge-filter replay caps/ --blocklist new.txt --diff-against-blocklist old.txt
  edge-filter replay caps/ --config new.toml --diff-against current.toml

The same, sent through a veth pair in private network namespaces, checked
against the in-kernel replay:
  edge-filter replay caps/ --blocklist new.txt --live";

/// Replay captures through the real XDP program (see [`LONG_ABOUT`]).
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Capture files (pcap, pcapng) or directories.
    #[arg(required = true, value_name = "CAPTURE")]
    pub captures: Vec<PathBuf>,
    /// Agent config file: replay under what its feeds assert now (file
    /// feeds are read, HTTP feeds fetched once), merged exactly as the agent
    /// merges them (allowlist, confidence thresholds, TTLs, breadth limits).
    #[arg(long, short, conflicts_with_all = ["blocklist", "feed"])]
    pub config: Option<PathBuf>,
    /// With --config (and --diff-against): replay under the last-known-good
    /// copies in the config's state_dir alone: no feed is fetched or read.
    /// A feed without a copy there is an error naming it.
    #[arg(long, requires = "config")]
    pub offline: bool,
    /// A feed file to replay under (format detected; repeatable); its name
    /// is the file name.
    #[arg(long, value_name = "FILE", conflicts_with = "blocklist")]
    pub feed: Vec<PathBuf>,
    /// Blocklist file (the `run` syntax) to replay under.
    #[arg(long, short, required_unless_present_any = ["config", "feed"])]
    pub blocklist: Option<PathBuf>,
    /// Allowlist file: addresses or prefixes that always pass (applies to
    /// the --diff-against-blocklist side too). With --config, the config's
    /// [allowlist] applies instead.
    #[arg(long, short, conflicts_with = "config")]
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
    /// Also replay under this agent config (the baseline) and report packets
    /// whose verdict changes.
    #[arg(long, value_name = "CONFIG", conflicts_with = "diff_against_blocklist")]
    pub diff_against: Option<PathBuf>,
    /// Changed packets listed in the --diff-against-blocklist summary.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_changes: usize,
    /// Also send the frames through a veth pair in private network
    /// namespaces with the filter attached, and fail unless its counters
    /// equal the in-kernel replay's (root only).
    #[arg(long, conflicts_with_all = ["diff_against_blocklist", "diff_against"])]
    pub live: bool,
    /// Captures that cannot be read, or break part-way, are still listed on
    /// stderr but do not fail the replay (exit 0 instead of 3); the packets
    /// before a break are replayed. With --write-expect, expectations cover
    /// the readable captures only.
    #[arg(long)]
    pub allow_unreadable: bool,
    /// A replay of no packet at all (empty or unreadable captures, only
    /// unsupported link types) does not fail (exit 0 instead of 3);
    /// --write-expect still refuses to write expectations of nothing.
    #[arg(long)]
    pub allow_empty: bool,
}

/// Where the feeds of a `--config` come from.
fn copies(a: &ReplayArgs) -> Copies {
    if a.offline {
        Copies::Offline
    } else {
        Copies::Fetch
    }
}

fn input_for(a: &ReplayArgs) -> anyhow::Result<EntryInput<'static>> {
    if let Some(c) = &a.config {
        let cfg = Config::load(c)?;
        return Ok(input::config(
            &cfg,
            format!("config {}", c.display()),
            copies(a),
        )?);
    }
    if !a.feed.is_empty() {
        let cfg = input::feed_files(&a.feed, a.allowlist.as_deref())?;
        return Ok(input::config(&cfg, "feeds".to_string(), Copies::FetchOnly)?);
    }
    let b = a.blocklist.as_ref().expect("clap requires one input");
    Ok(input::blocklist(b, a.allowlist.as_deref())?)
}

/// Run `edge-filter replay` and end the process with its documented exit
/// status ([`replay::Exit`]): the generic error path of `main` knows only
/// 0 and 1, and a CI gate must tell differences (1) from unreadable input
/// (3) from a replay that could not run (4). Messages keep `main`'s
/// `edge-filter: error: ` form.
pub fn run(a: ReplayArgs) -> anyhow::Result<()> {
    let exit = match replay_args(a) {
        Ok(outcome) => {
            let messages = outcome.messages();
            if !messages.is_empty() {
                eprintln!("edge-filter: error: {}", messages.join("; "));
            }
            outcome.exit()
        }
        Err(e) => {
            // Each cause once, escaped, as `main` prints errors.
            eprintln!(
                "edge-filter: error: {}",
                edge_filter::escape::Escaped(&crate::one_line(&e))
            );
            e.downcast_ref::<replay::ReplayError>()
                .map_or(replay::Exit::Error, replay::ReplayError::exit)
        }
    };
    if exit != replay::Exit::Ok {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Everything replay set up (namespaces, links, temporary files) was
        // dropped when `replay_args` returned.
        std::process::exit(i32::from(exit.code()));
    }
    Ok(())
}

fn replay_args(a: ReplayArgs) -> anyhow::Result<replay::Outcome> {
    let main = input_for(&a)?;
    let malformed_drop = a.drop_malformed
        || match &a.config {
            Some(c) => Config::load(c)?.malformed_drop(),
            None => false,
        };
    let baseline = match (&a.diff_against_blocklist, &a.diff_against) {
        (Some(p), _) => Some(input::blocklist(p, a.allowlist.as_deref())?),
        (None, Some(c)) => {
            let cfg = Config::load(c)?;
            Some(input::config(
                &cfg,
                format!("config {}", c.display()),
                copies(&a),
            )?)
        }
        (None, None) => None,
    };
    edge_filter::kernel::features::require(if a.live {
        edge_filter::kernel::features::Use::ReplayLive
    } else {
        edge_filter::kernel::features::Use::Replay
    })?;
    let req = Request {
        captures: a.captures,
        main,
        baseline,
        malformed_drop,
        per_packet: a.per_packet,
        json: a.json,
        top: a.top,
        max_changes: a.max_changes,
        write_expect: a.write_expect,
        totals_only: a.totals_only,
        expect: a.expect,
        live: a.live,
        allow_unreadable: a.allow_unreadable,
        allow_empty: a.allow_empty,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    match replay::execute(req, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(o) => Ok(o),
        // The reader went away (`| head`): nothing left to tell it.
        Err(replay::ReplayError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(replay::Outcome::default())
        }
        Err(e) => Err(e.into()),
    }
}
