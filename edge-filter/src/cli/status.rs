//! `edge-filter status`: what [`Overview::gather`] finds, as JSON or
//! tables.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::escape::{self, escape};
use edge_filter::ops::overview::Overview;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::pins::Pins;

/// `status --help`.
pub const LONG_ABOUT: &str = "\
Show what is attached where, map occupancy, feed health and the agent.

For every interface with pins: attach mode (native, skb or hw, as the
kernel reports it over netlink in this network namespace), program and
link ids, how malformed packets are handled, how hits are counted per
entry (exact, sampled or off: `entry_counters`), and each entry map's
occupancy against its capacity.

With --config: each feed's health from the agent's state_dir/status.json
(last success and its age, entries, rejected lines, held updates, last
error), the packets its entries dropped and monitored on the attached
interfaces (per-entry kernel counters; a packet counts for every feed
asserting the entry that decided it; `edge-filter top` has the detail) and whether the agent is up: its pid is alive and it updated the
status within 2 x reconcile_interval + 10s (it writes it at least once per
reconcile_interval). Configured interfaces without pins are listed as not
attached. Below the tables: each failing feed's last error in full, with its
consecutive failures and when the agent tries next, and each held update in
full (with the command that forces it).

Exit status (the last line says it, and `health` in --json):
  0  ok: every interface listed filters with the whole set; with --config,
     the agent is up and every feed's last attempt succeeded
  1  status itself failed (an unreadable config, ...)
  2  usage error
  3  degraded: the filter is in force with the whole set, but a feed is
     failing (its last-known-good copy stays enforced), held or has no copy
     yet, the agent is down or stale, or the state directory fails writes
  4  not enforcing: an interface is not attached (or nothing is), or the
     kernel lacks desired entries

Examples:
  edge-filter status
  edge-filter status --config /etc/edge-filter/edge-filter.toml --json";

/// Options of `edge-filter status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's configuration: adds feed health and agent liveness (and
    /// takes the pin root from it).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Root of the pins (overrides the config's bpffs; default /sys/fs/bpf/edge-filter).
    #[arg(long, env = "EDGE_FILTER_BPFFS", value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let pins = Pins::resolve(a.config.as_deref(), a.bpffs.as_deref())?;
    let out = Overview::gather(pins.config.as_ref(), a.config.clone(), &pins.paths);
    if a.json {
        println!("{}", escape::json(serde_json::to_string_pretty(&out)?));
    } else {
        print_text(&out);
        print_health(&out);
    }
    if out.health.code != 0 {
        use std::io::Write;
        std::io::stdout().flush()?;
        std::process::exit(i32::from(out.health.code));
    }
    Ok(())
}

/// The last line: the verdict and its exit status.
fn print_health(out: &Overview) {
    let h = &out.health;
    println!();
    if h.problems.is_empty() {
        println!("health: {} (exit {})", h.state, h.code);
    } else {
        println!(
            "health: {} (exit {}): {} problem(s) above",
            h.state,
            h.code,
            h.problems.len()
        );
        for p in &h.problems {
            // Problems quote feed errors.
            println!("  - {}", escape(p));
        }
    }
}

// ---------------------------------------------------------------------------
// Text.

fn ts(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "never".into())
}

fn human_age(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 0.0 => "in the future".into(),
        Some(s) => {
            humantime_serde::re::humantime::format_duration(Duration::from_secs(s.round() as u64))
                .to_string()
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

fn print_text(out: &Overview) {
    println!("pins under {}", out.bpffs.display());
    if out.interfaces.is_empty() {
        println!("no interface attached");
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY);
        t.set_header([
            "iface",
            "attached",
            "mode",
            "program",
            "link",
            "entries",
            "allowlisted",
            "malformed",
            "entry counters",
        ]);
        let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        for i in &out.interfaces {
            t.add_row([
                i.iface.clone(),
                match (i.attached, &i.link_error) {
                    (true, _) => "yes",
                    (false, None) => "no",
                    (false, Some(_)) => "?",
                }
                .to_string(),
                i.mode.unwrap_or("?").to_string(),
                id(i.program_id),
                id(i.link_id),
                i.entries.to_string(),
                i.allowlisted.to_string(),
                i.malformed.unwrap_or("-").to_string(),
                i.entry_counters.unwrap_or("-").to_string(),
            ]);
        }
        println!("{t}");
        for i in &out.interfaces {
            if let Some(n) = &i.mode_note {
                println!("{}: {n}", i.iface);
            }
            if let Some(e) = &i.error {
                println!("{}: error: {e}", i.iface);
            }
            match i.missing_entries {
                Some(0) | None => {}
                Some(m) => println!(
                    "{}: NOT ENFORCING THE WHOLE SET: the kernel lacks {m} desired entries (counted by the agent at {}); see the agent's log",
                    i.iface,
                    ts(i.agent_checked)
                ),
            }
            if let (Some(g), Some(secs)) = (i.gaps, i.gap_seconds)
                && g > 0
            {
                println!(
                    "{}: {g} enforcement gap(s) since the agent started, {secs:.1} s unfiltered in all",
                    i.iface
                );
            }
        }
        for i in out.interfaces.iter().filter(|i| !i.maps.is_empty()) {
            println!();
            println!("{}: map occupancy", i.iface);
            let mut t = Table::new();
            t.load_preset(UTF8_BORDERS_ONLY);
            t.set_header(["map", "entries", "capacity", "used"]);
            for m in &i.maps {
                t.add_row([
                    m.map.to_string(),
                    m.entries.to_string(),
                    m.capacity.map_or("?".into(), |c| c.to_string()),
                    m.capacity.filter(|c| *c > 0).map_or("?".into(), |c| {
                        format!("{:.2}%", m.entries as f64 * 100.0 / f64::from(c))
                    }),
                ]);
            }
            println!("{t}");
        }
    }
    if let Some(a) = &out.agent {
        println!();
        println!("agent: {} ({})", a.state, a.detail);
        if let Some(e) = &a.persist_error {
            println!("  state directory: {e}");
        }
        if let (Some(syncs), Some(ms), Some(drift)) = (a.syncs, a.last_sync_ms, a.drift_repairs) {
            println!(
                "  started {}, {} entries, {} allowlisted, {} rejected as too broad; {syncs} syncs (last {ms:.1} ms), {drift} drift repairs, {} refused (map full)",
                ts(a.started),
                a.entries.unwrap_or(0),
                a.allowlisted.unwrap_or(0),
                a.rejected_entries.unwrap_or(0),
                a.refused.unwrap_or(0)
            );
        }
    }
    if let Some(feeds) = &out.feeds {
        println!();
        if feeds.is_empty() {
            println!("no feeds configured");
            return;
        }
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY);
        t.set_header([
            "feed",
            "state",
            "last success",
            "age",
            "entries",
            "rejected lines",
            "dropped",
            "monitored",
            "held",
            "last error",
        ]);
        for f in feeds {
            let h = &f.health;
            t.add_row([
                h.name.clone(),
                f.state.to_string(),
                ts(h.last_success),
                human_age(f.age_s),
                h.entries.to_string(),
                h.rejected_lines.to_string(),
                f.hits.map_or("-".into(), |v| v.drops.packets.to_string()),
                f.hits
                    .map_or("-".into(), |v| v.monitors.packets.to_string()),
                // Errors can quote the feed (a rejected line).
                h.held
                    .as_deref()
                    .map_or("-".into(), |s| clip(&escape(s), 60)),
                h.last_error
                    .as_deref()
                    .or(h.persist_error.as_deref())
                    .map_or("-".into(), |s| clip(&escape(s), 60)),
            ]);
        }
        println!("{t}");
        // The table clips; the errors and held updates in full.
        for f in feeds {
            let h = &f.health;
            if let Some(e) = &h.last_error {
                println!(
                    "feed {}: last error at {} ({} consecutive failures; next attempt {}): {}",
                    h.name,
                    ts(h.last_attempt),
                    h.consecutive_failures,
                    next_attempt(h.next_attempt),
                    escape(e)
                );
            }
            if let Some(held) = &h.held {
                println!("feed {}: {}", h.name, escape(held));
            }
            if h.partial > 0 {
                println!(
                    "feed {}: {} indicators enforced in part (OR alternatives that cannot be expressed left out; check-config lists them)",
                    h.name, h.partial
                );
            }
        }
    }
}

/// When the next attempt is due: its time and how far off.
fn next_attempt(t: Option<OffsetDateTime>) -> String {
    match t {
        None => "unknown".into(),
        Some(t) => {
            let secs = (t - OffsetDateTime::now_utc()).as_seconds_f64();
            if secs <= 0.0 {
                format!("due since {}", ts(Some(t)))
            } else {
                format!("at {}, in {}", ts(Some(t)), human_age(Some(secs)))
            }
        }
    }
}
