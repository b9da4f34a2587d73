//! `edge-filter stats`.

use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::{attach, counters, paths::Paths};
use serde::Serialize;

use super::PinArgs;

/// Show packets and bytes by verdict reason, read from the pinned maps.
///
/// Reasons: pass_no_match, pass_allowlist, pass_non_ip,
/// malformed_{pass,drop}_<class>, {drop,monitor}_{addr_port,prefix_port,addr,prefix}.
/// Rows with zero packets are hidden unless --all.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Interface (default: every attached interface).
    #[arg(long, short)]
    pub iface: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show reasons with zero packets too.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub pins: PinArgs,
}

#[derive(Serialize)]
struct IfaceStats {
    iface: String,
    totals: counters::Totals,
    counters: Vec<counters::ReasonCount>,
}

pub fn run(a: StatsArgs) -> anyhow::Result<()> {
    let paths = Paths::new(&a.pins.bpffs);
    let ifaces = match a.iface {
        Some(i) => vec![i],
        None => {
            let v = paths.attached();
            if v.is_empty() {
                anyhow::bail!(
                    "no edge-filter attachment found under {} (start one with `edge-filter run`)",
                    paths.root().display()
                );
            }
            v
        }
    };
    let mut out = Vec::new();
    for iface in ifaces {
        let maps = attach::open_pinned(&paths, &iface)?;
        let (rows, totals) = counters::named(&maps.counters()?);
        out.push(IfaceStats {
            iface,
            totals,
            counters: rows,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for s in out {
        println!(
            "{}: {} passed, {} dropped, {} monitored",
            s.iface, s.totals.passed, s.totals.dropped, s.totals.monitored
        );
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY);
        t.set_header(["reason", "verdict", "packets", "bytes"]);
        for r in s.counters.iter().filter(|r| a.all || r.packets > 0) {
            t.add_row([
                r.reason.clone(),
                r.verdict.to_string(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}
