//! `edge-filter explain`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::entry::Proto;
use edge_filter::escape::{self, Escaped, escape};
use edge_filter::intel::config::EntryCounters;
use edge_filter::kernel::attach;
use edge_filter::ops::explain::EntryReport;
use edge_filter::ops::explain::{Explanation, KernelCheck, Query, cross_check};
use edge_filter::ops::knowledge::Knowledge;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::pins::Pins;

/// `explain --help`.
pub const LONG_ABOUT: &str = "\
Explain the verdict a packet from ADDRESS would get now, and every entry,
feed and indicator behind it, or why it passes (allowlisted: by which net and
source; or no match).

With --config the last-known-good copy of every configured feed (the agent's
state_dir) is merged with the config exactly as the agent merges it; with
--blocklist the files are read as `run --blocklist` reads them, and each
entry's source is FILE:LINE.

Matching entries are ranked as the filter decides: drop beats monitor, then
the most specific kind (addr_port, prefix_port, addr, prefix), then the
longest prefix; the first decides unless the source is allowlisted. Port
entries that depend on a port the query leaves open are listed as
conditional (give --dst-port, or PORT, to decide them). PORT and --dst-port
imply --proto tcp unless --proto says udp; without any of them the packet
has no ports (ICMP and the like).

When the filter is attached (--iface, else every attached interface), the
pinned maps are read back and compared: every difference is reported
(\"kernel does not hold ...\"), and `kernel[].agrees` in --json is false.

Examples:
  edge-filter explain 203.0.113.7 --config /etc/edge-filter/edge-filter.toml
  edge-filter explain 192.0.2.1 443 --proto tcp --blocklist blocklist.txt
  edge-filter explain 198.51.100.9 40000 --dst-port 22 -c edge-filter.toml --json";

/// Transport protocol of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Options of `edge-filter explain`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("entries").required(true).args(["config", "blocklist"])))]
pub struct ExplainArgs {
    /// Source address of the packet (IPv4 or IPv6).
    pub address: IpAddr,
    /// Source port of the packet (implies --proto tcp unless --proto udp).
    pub port: Option<u16>,
    /// Transport protocol of the packet.
    #[arg(long, value_enum)]
    pub proto: Option<ProtoArg>,
    /// Destination port of the packet (the local service).
    #[arg(long, visible_alias = "side-port", value_name = "PORT")]
    pub dst_port: Option<u16>,
    /// The agent's configuration: explain with every feed's last-known-good copy.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A blocklist file (the `run --blocklist` format).
    #[arg(long, short, value_name = "FILE", conflicts_with = "config")]
    pub blocklist: Option<PathBuf>,
    /// An allowlist file (with --blocklist).
    #[arg(long, short, value_name = "FILE", requires = "blocklist")]
    pub allowlist: Option<PathBuf>,
    /// Compare with the kernel maps of this interface only (default: every
    /// attached interface).
    #[arg(long, short)]
    pub iface: Option<String>,
    /// Root of the pins (default: the config's bpffs, else /sys/fs/bpf/edge-filter).
    #[arg(long, env = "EDGE_FILTER_BPFFS", value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The kernel comparison of one interface ([`KernelCheck`] plus whether
/// the maps could be read at all).
#[derive(Serialize)]
struct KernelOut {
    iface: String,
    /// Whether the maps could be read.
    checked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    verdict: Option<&'static str>,
    reason: Option<String>,
    deciding: Option<String>,
    allowlisted_by: Option<ipnet::IpNet>,
    agrees: Option<bool>,
    mismatches: Vec<String>,
    /// Per-entry counters of the matching (and conditional) entries and
    /// the allowlist net, as this interface's kernel counts them.
    hits: Vec<edge_filter::ops::hits::EntryHits>,
    /// How those counters count (`exact`, `sampled`: estimates, `off`).
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_counters: Option<EntryCounters>,
}

impl KernelOut {
    fn checked(c: KernelCheck) -> Self {
        KernelOut {
            iface: c.iface,
            checked: true,
            error: None,
            verdict: Some(c.verdict),
            reason: Some(c.reason),
            deciding: c.deciding,
            allowlisted_by: c.allowlisted_by,
            agrees: Some(c.agrees),
            mismatches: c.mismatches,
            hits: Vec::new(),
            entry_counters: None,
        }
    }

    fn failed(iface: String, error: String) -> Self {
        KernelOut {
            iface,
            checked: false,
            error: Some(error),
            verdict: None,
            reason: None,
            deciding: None,
            allowlisted_by: None,
            agrees: None,
            mismatches: Vec::new(),
            hits: Vec::new(),
            entry_counters: None,
        }
    }
}

#[derive(Serialize)]
struct Out<'a> {
    #[serde(flatten)]
    explanation: &'a Explanation,
    /// `config` or `files`.
    source: &'static str,
    /// Feeds without a usable last-known-good copy and the like.
    notes: Vec<String>,
    /// One per interface compared (empty when nothing is attached).
    kernel: Vec<KernelOut>,
}

pub fn run(a: ExplainArgs) -> anyhow::Result<()> {
    let proto = match (a.proto, a.port.is_some() || a.dst_port.is_some()) {
        (Some(ProtoArg::Udp), _) => Some(Proto::Udp),
        (Some(ProtoArg::Tcp), _) | (None, true) => Some(Proto::Tcp),
        (None, false) => None,
    };
    let query = match proto {
        Some(p) => Query::with_ports(a.address, p, a.port, a.dst_port),
        None => Query::addr(a.address),
    };
    let mut notes = Vec::new();
    let pins = Pins::resolve(a.config.as_deref(), a.bpffs.as_deref())?;
    let knowledge = Knowledge::from_sources(
        pins.config.as_ref(),
        a.blocklist.as_deref(),
        a.allowlist.as_deref(),
        &mut notes,
    )?
    .expect("clap requires --config or --blocklist");
    let source = if pins.config.is_some() {
        "config"
    } else {
        "files"
    };
    let ex = knowledge.explain(&query);
    let kernel = kernel_checks(&ex, &pins, a.iface.as_deref())?;
    let out = Out {
        explanation: &ex,
        source,
        notes,
        kernel,
    };
    if a.json {
        println!("{}", escape::json(serde_json::to_string_pretty(&out)?));
    } else {
        print_text(&out);
    }
    Ok(())
}

fn kernel_checks(
    ex: &Explanation,
    pins: &Pins,
    iface: Option<&str>,
) -> anyhow::Result<Vec<KernelOut>> {
    // An interface named on the command line must be readable; with none
    // attached there is nothing to compare (not an error).
    let named = iface.is_some();
    let paths = &pins.paths;
    let mut out = Vec::new();
    for iface in pins.ifaces(iface) {
        let read = attach::open_pinned(paths, &iface).and_then(|m| m.read());
        match read {
            Ok(d) => {
                let mut k = KernelOut::checked(cross_check(ex, &d.to_entry_set(), &iface));
                let wanted: Vec<String> = ex
                    .matching
                    .iter()
                    .chain(&ex.conditional)
                    .map(|e| e.entry.clone())
                    .chain(ex.allowlisted_by.as_ref().map(|a| a.net.to_string()))
                    .collect();
                let clock = edge_filter::kernel::clock::Clock::now();
                match edge_filter::ops::hits::read_iface(paths, &iface, &clock) {
                    Ok(h) => {
                        k.entry_counters = Some(h.entry_counters);
                        k.hits = h
                            .entries
                            .into_iter()
                            .filter(|e| wanted.contains(&e.entry))
                            .collect();
                    }
                    Err(e) => k.error = Some(format!("reading the per-entry counters: {e}")),
                }
                out.push(k);
            }
            Err(e) if named => return Err(e.into()),
            Err(e) => out.push(KernelOut::failed(iface, e.to_string())),
        }
    }
    Ok(out)
}

fn ts(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "never".into())
}

fn entry_table(rows: &[EntryReport], with_condition: bool) -> Table {
    // Provenance columns that no row fills are left out.
    let provs = || rows.iter().flat_map(|e| &e.provenance);
    let show = [
        provs().any(|p| p.indicator.is_some()),
        provs().any(|p| p.confidence.is_some()),
        provs().any(|p| p.expires.is_some()),
        provs().any(|p| p.description.is_some()),
    ];
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let mut header = vec!["entry", "kind", "action"];
    if with_condition {
        header.push("condition");
    }
    header.push("source");
    for (name, on) in ["indicator", "confidence", "expires", "description"]
        .into_iter()
        .zip(show)
    {
        if on {
            header.push(name);
        }
    }
    t.set_header(header);
    for e in rows {
        let mut first = vec![
            format!(
                "{}{}",
                e.entry,
                if e.deciding { "  <- decides" } else { "" }
            ),
            e.kind.to_string(),
            e.action.name().to_string(),
        ];
        if with_condition {
            first.push(e.condition.clone().unwrap_or_default());
        }
        let blank = first.len();
        if e.provenance.is_empty() {
            first.push("(unknown)".to_string());
            t.add_row(first);
            continue;
        }
        for (i, p) in e.provenance.iter().enumerate() {
            let mut row = if i == 0 {
                first.clone()
            } else {
                vec![String::new(); blank]
            };
            let mut who = p
                .feed
                .clone()
                .or_else(|| p.location.clone())
                .unwrap_or_default();
            if p.action != e.action {
                who.push_str(&format!(" (asks {})", p.action.name()));
            }
            row.push(who);
            // Indicator ids and descriptions come from feeds.
            let feed_text =
                |t: &Option<String>| escape(t.as_deref().unwrap_or_default()).into_owned();
            let cells = [
                feed_text(&p.indicator),
                p.confidence.map(|c| c.to_string()).unwrap_or_default(),
                if p.expires.is_some() {
                    ts(p.expires)
                } else {
                    String::new()
                },
                feed_text(&p.description),
            ];
            row.extend(
                cells
                    .into_iter()
                    .zip(show)
                    .filter(|(_, on)| *on)
                    .map(|(c, _)| c),
            );
            t.add_row(row);
        }
    }
    t
}

fn print_text(out: &Out) {
    let ex = out.explanation;
    println!("packet: {}", ex.query.describe());
    // The summary names indicator ids, which come from feeds.
    println!("{}", Escaped(&ex.summary));
    if !ex.allowlist.is_empty() {
        println!();
        println!(
            "allowlist nets containing {} (longest first):",
            ex.query.address
        );
        for a in &ex.allowlist {
            println!(
                "  {} from {}{}",
                a.net,
                if a.sources.is_empty() {
                    "(unknown)".to_string()
                } else {
                    a.sources.join(", ")
                },
                if ex.allowlisted_by.as_ref().is_some_and(|b| b.net == a.net) {
                    "  <- decides"
                } else {
                    ""
                }
            );
        }
    }
    if !ex.matching.is_empty() {
        println!();
        println!(
            "matching entries ({}, ranked: drop before monitor, most specific first):",
            ex.matching.len()
        );
        println!("{}", entry_table(&ex.matching, false));
    }
    if !ex.conditional.is_empty() {
        println!();
        println!(
            "entries that depend on a port the query leaves open ({}):",
            ex.conditional.len()
        );
        println!("{}", entry_table(&ex.conditional, true));
    }
    println!();
    if out.kernel.is_empty() {
        println!("kernel: not compared (no edge-filter attachment found)");
    }
    for k in &out.kernel {
        match (k.agrees, &k.error) {
            (Some(true), _) => println!(
                "kernel {}: agrees ({}{})",
                k.iface,
                k.reason.as_deref().unwrap_or_default(),
                k.deciding
                    .as_ref()
                    .map(|d| format!(" by {d}"))
                    .or_else(|| k.allowlisted_by.map(|n| format!(" by allowlist net {n}")))
                    .unwrap_or_default()
            ),
            (Some(false), _) => {
                println!("kernel {}: MISMATCH", k.iface);
                for m in &k.mismatches {
                    println!("  - {}", Escaped(m));
                }
            }
            (None, e) => println!(
                "kernel {}: not compared: {}",
                k.iface,
                e.as_deref().unwrap_or("unknown error")
            ),
        }
        let now = time::OffsetDateTime::now_utc();
        for h in &k.hits {
            println!(
                "  hits on {}: {} (id {}, {}): {}",
                k.iface,
                h.entry,
                h.id,
                h.action,
                if h.counted {
                    format!(
                        "{} packets, {} bytes, last hit {}{}",
                        h.hits.packets,
                        h.hits.bytes,
                        super::top::last_hit_text(h.hits.last_hit, now),
                        match k.entry_counters {
                            Some(EntryCounters::Sampled) => {
                                " (estimates: entry_counters = \"sampled\")"
                            }
                            Some(EntryCounters::Off) => {
                                " (as of when entry_counters was set to \"off\")"
                            }
                            Some(EntryCounters::Exact) | None => "",
                        }
                    )
                } else {
                    "not counted (id beyond the counter capacity)".into()
                }
            );
        }
    }
    for n in &out.notes {
        println!("note: {}", Escaped(n));
    }
}
