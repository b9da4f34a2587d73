//! `edge-filter status`.
//!
//! Interfaces come from the pins (`<bpffs>/<iface>/link`). For each: the
//! bpf_link's id and program id (`BPF_OBJ_GET_INFO_BY_FD` through aya), the
//! attach mode as the kernel reports it over rtnetlink (`RTM_GETLINK`,
//! `IFLA_XDP`: which of the driver/generic/offload slots runs our program;
//! a few dozen lines of netlink below rather than parsing `ip` output), and
//! every entry map's occupancy (entries read back from the map) against its
//! capacity (`max_entries` from the kernel's map info). With `--config`, the
//! agent's `state_dir/status.json` adds each feed's health and whether the
//! agent is up.

use std::path::PathBuf;
use std::time::Duration;

use aya::maps::MapInfo;
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::escape::{self, escape};
use edge_filter::intel::config::Config;
use edge_filter::kernel::attach::{self, LinkHealth};
use edge_filter::kernel::maps::Desired;
use edge_filter::kernel::paths::Paths;
use edge_filter::ops::status::{FeedHealth, IfaceHealth, Status};
use edge_filter_common as abi;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Pins;

/// `status --help`.
pub const LONG_ABOUT: &str = "\
Show what is attached where, map occupancy, feed health and the agent.

For every interface with pins: attach mode (native, skb or hw, as the
kernel reports it over netlink in this network namespace), program and
link ids, how malformed packets are handled, and each entry map's
occupancy against its capacity.

With --config: each feed's health from the agent's state_dir/status.json
(last success and its age, entries, rejected lines, held updates, last
error), the packets its entries dropped and monitored on the attached
interfaces (per-entry kernel counters; a packet counts for every feed
asserting the entry that decided it; `edge-filter top` has the detail) and whether the agent is up: its pid is alive and it updated the
status within 2 x reconcile_interval + 10s (it writes it at least once per
reconcile_interval). Configured interfaces without pins are listed as not
attached.

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

#[derive(Serialize)]
struct MapOccupancy {
    map: &'static str,
    entries: usize,
    capacity: Option<u32>,
}

#[derive(Serialize, Default)]
struct IfaceStatus {
    iface: String,
    /// The filter is in force: its pinned link is attached to the interface
    /// of this name in this network namespace (the kernel's word).
    attached: bool,
    /// A link is pinned (it may filter nothing: see `attached`).
    pinned: bool,
    /// Why `attached` could not be determined (then it is false).
    #[serde(skip_serializing_if = "Option::is_none")]
    link_error: Option<String>,
    /// Block and monitor entries the kernel's maps hold (read now).
    kernel_entries: usize,
    /// Desired entries the kernel lacks, as the agent last counted them
    /// (with --config; `agent_checked` says when).
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_entries: Option<usize>,
    /// When the agent last counted the kernel's maps against the set.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    agent_checked: Option<OffsetDateTime>,
    /// Enforcement gaps the agent saw since it started, and their seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    gaps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gap_seconds: Option<f64>,
    /// Listed in the config (only with --config).
    #[serde(skip_serializing_if = "Option::is_none")]
    configured: Option<bool>,
    link_id: Option<u32>,
    program_id: Option<u32>,
    /// `native`, `skb` or `hw`; `None` when the kernel does not say.
    mode: Option<&'static str>,
    /// Why the mode is unknown, or what else is attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    mode_note: Option<String>,
    /// `pass` or `drop`.
    malformed: Option<&'static str>,
    /// Whether drop/monitor events are being sampled (`edge-filter events`).
    events_sampling: Option<bool>,
    /// Block and monitor entries, all maps.
    entries: usize,
    /// Allowlist nets.
    allowlisted: usize,
    maps: Vec<MapOccupancy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct AgentStatus {
    status_file: PathBuf,
    /// `up`, `down`, `stale` or `unknown` (no status file).
    state: &'static str,
    up: bool,
    detail: String,
    pid: Option<u32>,
    pid_alive: Option<bool>,
    #[serde(with = "time::serde::rfc3339::option")]
    started: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    updated: Option<OffsetDateTime>,
    updated_age_s: Option<f64>,
    stale_after_s: f64,
    syncs: Option<u64>,
    last_sync_ms: Option<f64>,
    drift_repairs: Option<u64>,
    entries: Option<usize>,
    allowlisted: Option<usize>,
    rejected_entries: Option<usize>,
    refused: Option<usize>,
    /// The pid holding the interface lock (`/run/edge-filter/locks`), from
    /// the kernel's lock table.
    lock_holder: Option<u32>,
    /// Writes to the state directory are failing: the latest error.
    persist_error: Option<String>,
}

#[derive(Serialize)]
struct FeedStatus {
    /// `ok`, `failing` (serving its last-known-good copy), `held` (a
    /// suspicious shrink waits) or `pending` (no successful fetch yet).
    state: &'static str,
    /// Seconds since the last success.
    age_s: Option<f64>,
    #[serde(flatten)]
    health: FeedHealth,
    /// Packets dropped / monitored by entries this feed asserts, summed
    /// over the attached interfaces (from the per-entry counters; a packet
    /// counts for every feed asserting its deciding entry).
    hits: Option<edge_filter::ops::hits::Verdicts>,
    /// This feed's entries that decided at least one packet.
    entries_hit: Option<usize>,
}

#[derive(Serialize)]
struct Out {
    bpffs: PathBuf,
    interfaces: Vec<IfaceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<AgentStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feeds: Option<Vec<FeedStatus>>,
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let pins = Pins::resolve(a.config.as_deref(), a.bpffs.as_deref())?;
    // Every attached interface, then the configured ones without pins.
    let mut names = pins.ifaces(None);
    let Pins { config: cfg, paths } = pins;
    if let Some(c) = &cfg {
        for i in &c.interfaces {
            if !names.contains(&i.name) {
                names.push(i.name.clone());
            }
        }
    }
    let mut interfaces: Vec<IfaceStatus> = names
        .iter()
        .map(|n| {
            let mut s = iface_status(&paths, n);
            if let Some(c) = &cfg {
                s.configured = Some(c.interfaces.iter().any(|i| &i.name == n));
            }
            s
        })
        .collect();
    let now = OffsetDateTime::now_utc();
    let (agent, feeds) = match &cfg {
        Some(c) => {
            let (a, f, ifaces) = agent_and_feeds(c, &paths, now);
            for i in &mut interfaces {
                if let Some(h) = ifaces.iter().find(|h| h.name == i.iface) {
                    i.missing_entries = h.missing_entries;
                    i.agent_checked = h.kernel_checked;
                    i.gaps = Some(h.gaps);
                    i.gap_seconds = Some(h.gap_seconds);
                }
            }
            (Some(a), Some(f))
        }
        None => (None, None),
    };
    let out = Out {
        bpffs: paths.root().to_path_buf(),
        interfaces,
        config: a.config.clone(),
        agent,
        feeds,
    };
    if a.json {
        println!("{}", escape::json(serde_json::to_string_pretty(&out)?));
    } else {
        print_text(&out);
    }
    Ok(())
}

fn iface_status(paths: &Paths, iface: &str) -> IfaceStatus {
    let mut s = IfaceStatus {
        iface: iface.to_string(),
        pinned: paths.link(iface).exists(),
        ..Default::default()
    };
    if !s.pinned {
        s.mode_note = Some("not attached (no pinned link)".into());
        return s;
    }
    match attach::link_health(paths, iface) {
        Ok(h) => {
            s.attached = h.is_attached();
            if let LinkHealth::Attached {
                link_id, prog_id, ..
            } = h
            {
                s.link_id = Some(link_id);
                s.program_id = Some(prog_id);
            } else {
                s.error = Some(h.describe(iface));
            }
        }
        Err(e) => s.link_error = Some(format!("cannot tell whether the filter is in force: {e}")),
    }
    match attach::ifindex(iface) {
        Ok(_) if s.program_id.is_none() => {
            s.mode_note = Some(
                s.link_error
                    .clone()
                    .unwrap_or_else(|| "unknown: the filter is not in force (see below)".into()),
            )
        }
        Ok(idx) => match edge_filter::kernel::netlink::xdp_info(idx) {
            Ok(x) => {
                let (mode, note) = x.mode_of(s.program_id);
                s.mode = mode;
                s.mode_note = note;
            }
            Err(e) => s.mode_note = Some(format!("netlink query failed: {e}")),
        },
        Err(_) => {
            s.mode_note = Some(format!(
                "interface {iface} is not in this network namespace (run status where it lives)"
            ))
        }
    }
    match attach::open_pinned(paths, iface) {
        Ok(maps) => {
            if let Ok(c) = maps.config() {
                s.events_sampling = Some(c.flags & abi::CONFIG_SAMPLE_EVENTS != 0);
                s.malformed = Some(if c.flags & abi::CONFIG_MALFORMED_DROP != 0 {
                    "drop"
                } else {
                    "pass"
                });
            }
            match maps.read() {
                Ok(d) => fill_maps(&mut s, paths, iface, &d),
                Err(e) => s.error = Some(format!("reading the maps: {e}")),
            }
        }
        Err(e) => s.error = Some(e.to_string()),
    }
    s
}

fn fill_maps(s: &mut IfaceStatus, paths: &Paths, iface: &str, d: &Desired) {
    for (name, n) in d.counts() {
        let capacity = MapInfo::from_pin(paths.map(iface, name))
            .ok()
            .map(|i| i.max_entries());
        if name == abi::MAP_ALLOW_V4 || name == abi::MAP_ALLOW_V6 {
            s.allowlisted += n;
        } else {
            s.entries += n;
            s.kernel_entries += n;
        }
        s.maps.push(MapOccupancy {
            map: name,
            entries: n,
            capacity,
        });
    }
}

// ---------------------------------------------------------------------------
// The agent and its feeds.

/// Whether `pid` is a live edge-filter process: `(alive, what it is
/// otherwise)`. A zombie (exited, not yet reaped by its parent) is not alive.
fn pid_is_edge_filter(pid: u32) -> (bool, Option<String>) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (false, None);
    };
    // `PID (COMM) STATE ...`; COMM may contain spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return (false, None);
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    if matches!(state, Some('Z' | 'X' | 'x')) {
        return (false, Some(format!("{comm}, exited but not reaped")));
    }
    (comm.starts_with("edge-filter"), Some(comm.to_string()))
}

fn age_s(now: OffsetDateTime, t: Option<OffsetDateTime>) -> Option<f64> {
    t.map(|t| ((now - t).as_seconds_f64() * 10.0).round() / 10.0)
}

fn agent_and_feeds(
    cfg: &Config,
    paths: &Paths,
    now: OffsetDateTime,
) -> (AgentStatus, Vec<FeedStatus>, Vec<IfaceHealth>) {
    let file = Status::path(&cfg.state_dir);
    let stale_after = 2.0 * cfg.reconcile_interval.as_secs_f64() + 10.0;
    let status = Status::read(&cfg.state_dir);
    let mut agent = AgentStatus {
        status_file: file.clone(),
        state: "unknown",
        up: false,
        detail: String::new(),
        pid: None,
        pid_alive: None,
        started: None,
        updated: None,
        updated_age_s: None,
        stale_after_s: stale_after,
        syncs: None,
        last_sync_ms: None,
        drift_repairs: None,
        entries: None,
        allowlisted: None,
        rejected_entries: None,
        refused: None,
        lock_holder: None,
        persist_error: None,
    };
    // The agent's lock, from the kernel's lock table: found even when the
    // agent cannot write its status (a full state directory).
    agent.lock_holder = cfg
        .interfaces
        .iter()
        .find_map(|i| edge_filter::kernel::lock::holder(paths.root(), &i.name));
    let ifaces = status
        .as_ref()
        .map(|s| s.ifaces.clone())
        .unwrap_or_default();
    let health: Vec<FeedHealth> = match &status {
        Err(e) => {
            agent.detail = format!("no agent status at {}: {e}", file.display());
            Vec::new()
        }
        Ok(st) => {
            let (alive, comm) = pid_is_edge_filter(st.pid);
            let age = age_s(now, st.updated);
            agent.pid = Some(st.pid);
            agent.pid_alive = Some(alive);
            agent.started = st.started;
            agent.updated = st.updated;
            agent.updated_age_s = age;
            agent.syncs = Some(st.syncs);
            agent.last_sync_ms = Some(st.last_sync_ms);
            agent.drift_repairs = Some(st.drift_repairs);
            agent.entries = Some(st.entries);
            agent.allowlisted = Some(st.allowlisted);
            agent.rejected_entries = Some(st.rejected_entries);
            agent.refused = Some(st.refused);
            agent.persist_error = st.persist_error.clone();
            let fresh = age.is_some_and(|a| a <= stale_after);
            let ago = age.map_or("never".to_string(), |a| format!("{a:.0}s ago"));
            (agent.state, agent.detail) = match (alive, fresh, comm) {
                (true, true, _) => ("up", format!("pid {}, status updated {ago}", st.pid)),
                (true, false, _) => (
                    "stale",
                    format!(
                        "pid {} runs but last updated its status {ago} (more than {stale_after:.0}s)",
                        st.pid
                    ),
                ),
                (false, _, Some(c)) => (
                    "down",
                    format!(
                        "pid {} is not running edge-filter ({c}); status last updated {ago}",
                        st.pid
                    ),
                ),
                (false, _, None) => (
                    "down",
                    format!("pid {} is not running; status last updated {ago}", st.pid),
                ),
            };
            agent.up = agent.state == "up";
            st.feeds.clone()
        }
    };
    // The lock says who runs, whatever the status file says.
    if let Some(pid) = agent.lock_holder
        && !agent.up
    {
        let why = match (&status, agent.updated_age_s) {
            (Err(_), _) => "it has written no status file".to_string(),
            (Ok(_), Some(a)) if agent.pid == Some(pid) => format!(
                "its status file is {a:.0}s old: it cannot write to {} (full or read-only?)",
                cfg.state_dir.display()
            ),
            (Ok(_), _) => "the status file is another agent's".to_string(),
        };
        agent.state = "up";
        agent.up = true;
        agent.pid = Some(pid);
        agent.pid_alive = Some(true);
        agent.detail = format!("pid {pid} holds the interface lock; {why}");
    }
    // Per-feed drops: the kernel's per-entry counters of every attached
    // interface joined with the feeds' provenance.
    let feed_hits = {
        let attached = paths.attached();
        edge_filter::ops::knowledge::Knowledge::from_config(cfg, &mut Vec::new())
            .ok()
            .and_then(|k| edge_filter::ops::hits::Report::read(paths, &attached, Some(&k)).ok())
    };
    let feeds = cfg
        .feeds
        .iter()
        .map(|f| {
            let h = health
                .iter()
                .find(|h| h.name == f.name)
                .cloned()
                .unwrap_or_else(|| FeedHealth {
                    name: f.name.clone(),
                    ..Default::default()
                });
            let state = if h.held.is_some() {
                "held"
            } else if h.last_error.is_some() {
                "failing"
            } else if h.last_success.is_some() {
                "ok"
            } else {
                "pending"
            };
            let fh = feed_hits.as_ref().map(|r| {
                r.feeds
                    .iter()
                    .find(|x| x.feed == f.name)
                    .map(|x| (x.verdicts, x.entries_hit))
                    .unwrap_or_default()
            });
            FeedStatus {
                state,
                age_s: age_s(now, h.last_success),
                health: h,
                hits: fh.map(|x| x.0),
                entries_hit: fh.map(|x| x.1),
            }
        })
        .collect();
    (agent, feeds, ifaces)
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

fn print_text(out: &Out) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_missing_pid_is_not() {
        // This test binary's comm is not edge-filter.
        let (alive, what) = pid_is_edge_filter(std::process::id());
        assert!(!alive);
        assert!(what.is_some_and(|c| !c.contains("exited")));
        assert_eq!(pid_is_edge_filter(u32::MAX), (false, None));
        // A zombie: a child that exited and is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (alive, what) = pid_is_edge_filter(pid);
        assert!(!alive);
        assert!(what.unwrap().contains("exited but not reaped"));
        child.wait().unwrap();
    }
}
