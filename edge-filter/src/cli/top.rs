//! `edge-filter top`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use comfy_table::{CellAlignment, Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::escape;
use edge_filter::intel::config::EntryCounters;
use edge_filter::ops::hits::{EntryHits, Hits, Report, Verdicts};
use edge_filter::ops::knowledge::Knowledge;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::pins::Pins;

/// `top --help`.
pub const LONG_ABOUT: &str = "\
The entries deciding the most packets, from the kernel's per-entry
counters: entry, kind, action, feeds, indicator ids, packets, bytes and the
last hit, plus per-interface totals and, with --config, per-feed drops.

Every attachment (interface) has its own counters; a packet counts on the
entry that decided its verdict (drop beats monitor, then the most specific
kind), so a broad drop prefix collects the hits of the narrower monitor
entries it covers. Counters start at zero when an entry first gets its id
and survive agent restarts; a removed entry's id (and counters) is reused
by the next new entry, zeroed first. Every entry has its own counter. The
last hit is derived by the agent from the counters once a second (the
datapath keeps no timestamp); counters it has not seen yet read as hit at
the time of this read.

By default drop and monitor entries with at least one hit are listed;
--action allow lists the allowlist nets, --zero includes entries never hit.
Feeds and indicator ids need --config (the agent's last-known-good feed
copies, merged as the agent merges them); --blocklist names each entry's
FILE:LINE instead.

Examples:
  edge-filter top
  edge-filter top -n 20 --by bytes --iface eth1 --blocklist blocklist.txt
  edge-filter top --config /etc/edge-filter/edge-filter.toml --feed feodo
  edge-filter top --config /etc/edge-filter/edge-filter.toml --json";

/// Sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// Packets (then bytes).
    Packets,
    /// Bytes (then packets).
    Bytes,
}

/// Which entries to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActionFilter {
    /// Drop entries.
    Drop,
    /// Monitor entries.
    Monitor,
    /// Drop and monitor entries (the default).
    Hits,
    /// Allowlist nets.
    Allow,
    /// Everything.
    Any,
}

/// Options of `edge-filter top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// How many entries to list.
    #[arg(short = 'n', long, default_value_t = 10, value_name = "N")]
    pub count: usize,
    /// Rank by packets or bytes.
    #[arg(long, value_enum, default_value_t = By::Packets)]
    pub by: By,
    /// Only entries this feed asserts (needs --config).
    #[arg(long, value_name = "NAME", requires = "config")]
    pub feed: Option<String>,
    /// Only this interface (default: every attached interface).
    #[arg(long, short)]
    pub iface: Option<String>,
    /// Which entries to list.
    #[arg(long, value_enum, default_value_t = ActionFilter::Hits)]
    pub action: ActionFilter,
    /// Include entries that were never hit.
    #[arg(long)]
    pub zero: bool,
    /// The agent's configuration: adds feeds and indicator ids (and takes
    /// the pin root from it).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A blocklist file (the `run --blocklist` format): adds each entry's
    /// FILE:LINE.
    #[arg(long, short, value_name = "FILE", conflicts_with = "config")]
    pub blocklist: Option<PathBuf>,
    /// Root of the pins (overrides the config's bpffs; default /sys/fs/bpf/edge-filter).
    #[arg(long, env = "EDGE_FILTER_BPFFS", value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct IfaceOut<'a> {
    iface: &'a str,
    #[serde(flatten)]
    verdicts: &'a Verdicts,
    allowed: &'a Hits,
    overflow: &'a Hits,
    capacity: u32,
    /// Drop and monitor entries (`status`'s `entries`).
    entries: usize,
    /// Allowlist nets (`status`'s `allowlisted`).
    allowlisted: usize,
    uncounted_entries: usize,
    entry_counters: EntryCounters,
}

#[derive(Serialize)]
struct Out<'a> {
    by: &'static str,
    interfaces: Vec<IfaceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feeds: Option<&'a [edge_filter::ops::hits::FeedHits]>,
    top: Vec<&'a EntryHits>,
    notes: &'a [String],
}

pub fn run(a: TopArgs) -> anyhow::Result<()> {
    let pins = Pins::resolve(a.config.as_deref(), a.bpffs.as_deref())?;
    let ifaces = pins.ifaces_required(a.iface.as_deref())?;
    let mut notes = Vec::new();
    let knowledge = Knowledge::from_sources(
        pins.config.as_ref(),
        a.blocklist.as_deref(),
        None,
        &mut notes,
    )?;
    let Pins { config: cfg, paths } = pins;
    if let (Some(f), Some(c)) = (&a.feed, &cfg)
        && c.feed(f).is_none()
    {
        anyhow::bail!(
            "feed {f:?} is not in {}",
            a.config.as_ref().expect("requires").display()
        );
    }
    let report = Report::read(&paths, &ifaces, knowledge.as_ref())?;
    for i in &report.interfaces {
        match i.entry_counters {
            EntryCounters::Sampled => notes.push(format!(
                "{}: per-entry counters are sampled (entry_counters = \"sampled\": one hit in {} per CPU counted as {}): packets, bytes and last hit are estimates",
                i.iface,
                edge_filter_common::ENTRY_SAMPLE_EVERY,
                edge_filter_common::ENTRY_SAMPLE_EVERY
            )),
            EntryCounters::Off => notes.push(format!(
                "{}: per-entry counters are off (entry_counters = \"off\"): no entry is counted; `edge-filter stats` has the verdict counters",
                i.iface
            )),
            EntryCounters::Exact => {}
        }
    }
    let top: Vec<&EntryHits> = report
        .ranked(a.by == By::Bytes)
        .into_iter()
        .filter(|e| match a.action {
            ActionFilter::Drop => e.action == "drop",
            ActionFilter::Monitor => e.action == "monitor",
            ActionFilter::Hits => e.action != "allow",
            ActionFilter::Allow => e.action == "allow",
            ActionFilter::Any => true,
        })
        .filter(|e| a.zero || e.hits.packets > 0)
        .filter(|e| a.feed.as_ref().is_none_or(|f| e.feeds.contains(f)))
        .take(a.count)
        .collect();
    let out = Out {
        by: match a.by {
            By::Packets => "packets",
            By::Bytes => "bytes",
        },
        interfaces: report
            .interfaces
            .iter()
            .map(|i| IfaceOut {
                iface: &i.iface,
                verdicts: &i.verdicts,
                allowed: &i.allowed,
                overflow: &i.overflow,
                capacity: i.capacity,
                entries: i.entries.iter().filter(|e| e.action != "allow").count(),
                allowlisted: i.entries.iter().filter(|e| e.action == "allow").count(),
                uncounted_entries: i.uncounted_entries,
                entry_counters: i.entry_counters,
            })
            .collect(),
        feeds: cfg.as_ref().map(|_| report.feeds.as_slice()),
        top,
        notes: &notes,
    };
    if a.json {
        println!("{}", escape::json(serde_json::to_string_pretty(&out)?));
    } else {
        print_text(&out, cfg.is_some(), a.blocklist.is_some());
    }
    Ok(())
}

/// `2026-11-27T18:02:11Z (4s ago)`, or `never`.
pub fn last_hit_text(t: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let ago = (now - t).whole_seconds().max(0);
            let t = t
                .replace_nanosecond(0)
                .unwrap_or(t)
                .format(&Rfc3339)
                .unwrap_or_default();
            format!("{t} ({ago}s ago)")
        }
    }
}

fn print_text(out: &Out, with_feeds: bool, with_sources: bool) {
    let now = OffsetDateTime::now_utc();
    if out.top.is_empty() {
        println!("no entry matches (no hits yet; --zero lists entries never hit)");
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY);
        let mut header = vec!["iface", "id", "entry", "kind", "action"];
        if with_feeds {
            header.extend(["feeds", "indicator"]);
        } else if with_sources {
            header.push("source");
        }
        header.extend(["packets", "bytes", "last hit"]);
        t.set_header(header.clone());
        for e in &out.top {
            let mut row = vec![
                e.iface.clone(),
                e.id.to_string(),
                e.entry.clone(),
                e.kind.to_string(),
                e.action.to_string(),
            ];
            if with_feeds {
                row.push(if e.feeds.is_empty() {
                    e.sources.join(", ")
                } else {
                    e.feeds.join(", ")
                });
                // Indicator ids come from feeds.
                row.push(escape::escape(&e.indicators.join(", ")).into_owned());
            } else if with_sources {
                row.push(e.sources.join(", "));
            }
            row.push(e.hits.packets.to_string());
            row.push(e.hits.bytes.to_string());
            row.push(if e.counted {
                last_hit_text(e.hits.last_hit, now)
            } else {
                "(not counted: id beyond capacity)".into()
            });
            t.add_row(row);
        }
        let n = header.len();
        for c in [n - 3, n - 2] {
            if let Some(col) = t.column_mut(c) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        println!("{t}");
    }
    for i in &out.interfaces {
        println!(
            "{}: dropped {} packets ({} bytes), monitored {} ({} bytes), passed {} by the allowlist; {} entries, {} allowlisted{}",
            i.iface,
            i.verdicts.drops.packets,
            i.verdicts.drops.bytes,
            i.verdicts.monitors.packets,
            i.verdicts.monitors.bytes,
            i.allowed.packets,
            i.entries,
            i.allowlisted,
            if i.uncounted_entries > 0 || i.overflow.packets > 0 {
                format!(
                    "; {} beyond the counter capacity {} share {} packets (overflow)",
                    i.uncounted_entries, i.capacity, i.overflow.packets
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(feeds) = out.feeds {
        for f in feeds {
            println!(
                "feed {}: dropped {} packets ({} bytes), monitored {}; {} entries hit",
                f.feed,
                f.verdicts.drops.packets,
                f.verdicts.drops.bytes,
                f.verdicts.monitors.packets,
                f.entries_hit
            );
        }
    }
    for n in out.notes {
        println!("note: {}", escape::Escaped(n));
    }
}
