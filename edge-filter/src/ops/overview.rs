//! What `edge-filter status` shows, gathered: every interface with pins
//! (and, with a config, every configured one), the agent and its feeds.
//!
//! Interfaces come from the pins (`<bpffs>/<iface>/link`). For each: the
//! bpf_link's id and program id (`BPF_OBJ_GET_INFO_BY_FD` through aya), the
//! attach mode as the kernel reports it over rtnetlink (`RTM_GETLINK`,
//! `IFLA_XDP`: which of the driver/generic/offload slots runs our program,
//! see [`crate::kernel::netlink`]), and every entry map's occupancy (entries
//! read back through the catalog) against the capacity of the current tier
//! (datapath v2 grows its maps with the set: not a limit). With a config, the agent's `state_dir/status.json`
//! ([`Status`]) adds each feed's health, the per-entry counters joined with
//! the feeds' provenance add each feed's drops, and the agent is up when
//! its pid is alive and its status fresh, or when it holds an interface's
//! lock.

use std::path::PathBuf;

use edge_filter_common as abi;
use serde::Serialize;
use time::OffsetDateTime;

use crate::intel::config::{Config, EntryCounters};
use crate::kernel::attach::{self, LinkHealth};
use crate::kernel::maps::Desired;
use crate::kernel::paths::Paths;
use crate::ops::hits::{Report, Verdicts};
use crate::ops::knowledge::Knowledge;
use crate::ops::status::{FeedHealth, IfaceHealth, Status};

#[derive(Serialize)]
pub struct MapOccupancy {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: Option<u32>,
}

#[derive(Serialize, Default)]
pub struct IfaceStatus {
    pub iface: String,
    /// The filter is in force: its pinned link is attached to the interface
    /// of this name in this network namespace (the kernel's word).
    pub attached: bool,
    /// A link is pinned (it may filter nothing: see `attached`).
    pub pinned: bool,
    /// Why `attached` could not be determined (then it is false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_error: Option<String>,
    /// Block and monitor entries the kernel's maps hold (read now).
    pub kernel_entries: usize,
    /// Desired entries the kernel lacks, as the agent last counted them
    /// (with --config; `agent_checked` says when).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_entries: Option<usize>,
    /// When the agent last counted the kernel's maps against the set.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_checked: Option<OffsetDateTime>,
    /// Enforcement gaps the agent saw since it started, and their seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gaps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_seconds: Option<f64>,
    /// Listed in the config (only with --config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configured: Option<bool>,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// `native`, `skb` or `hw`; `None` when the kernel does not say.
    pub mode: Option<&'static str>,
    /// Why the mode is unknown, or what else is attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_note: Option<String>,
    /// `pass` or `drop`.
    pub malformed: Option<&'static str>,
    /// Whether drop/monitor events are being sampled (`edge-filter events`).
    pub events_sampling: Option<bool>,
    /// Per-entry hit counters: `exact`, `sampled` or `off`.
    pub entry_counters: Option<&'static str>,
    /// Block and monitor entries, all maps.
    pub entries: usize,
    /// Allowlist nets.
    pub allowlisted: usize,
    pub maps: Vec<MapOccupancy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct AgentStatus {
    pub status_file: PathBuf,
    /// `up`, `down`, `stale` or `unknown` (no status file).
    pub state: &'static str,
    pub up: bool,
    pub detail: String,
    pub pid: Option<u32>,
    pub pid_alive: Option<bool>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated: Option<OffsetDateTime>,
    pub updated_age_s: Option<f64>,
    pub stale_after_s: f64,
    pub syncs: Option<u64>,
    pub last_sync_ms: Option<f64>,
    pub drift_repairs: Option<u64>,
    pub entries: Option<usize>,
    pub allowlisted: Option<usize>,
    pub rejected_entries: Option<usize>,
    pub refused: Option<usize>,
    /// The pid holding the interface lock (`/run/edge-filter/locks`), from
    /// the kernel's lock table.
    pub lock_holder: Option<u32>,
    /// Writes to the state directory are failing: the latest error.
    pub persist_error: Option<String>,
}

#[derive(Serialize)]
pub struct FeedStatus {
    /// `ok`, `failing` (serving its last-known-good copy), `held` (a
    /// suspicious shrink waits) or `pending` (no successful fetch yet).
    pub state: &'static str,
    /// Seconds since the last success.
    pub age_s: Option<f64>,
    #[serde(flatten)]
    pub health: FeedHealth,
    /// Packets dropped / monitored by entries this feed asserts, summed
    /// over the attached interfaces (from the per-entry counters; a packet
    /// counts for every feed asserting its deciding entry).
    pub hits: Option<Verdicts>,
    /// This feed's entries that decided at least one packet.
    pub entries_hit: Option<usize>,
}

/// `status`'s verdict for scripts: its exit status and why.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Health {
    /// The exit status of `status`: [`Health::OK`], [`Health::DEGRADED`]
    /// or [`Health::NOT_ENFORCING`] (1 and 2 are the usual error and usage
    /// error).
    pub code: u8,
    /// `ok`, `degraded` or `not enforcing`.
    pub state: &'static str,
    /// What is wrong, one line each (empty when `ok`).
    pub problems: Vec<String>,
}

impl Health {
    /// Every interface listed filters with the whole set; with a config,
    /// the agent is up and every feed's last attempt succeeded.
    pub const OK: u8 = 0;
    /// The filter is in force with the whole set, but something needs
    /// attention: a feed failing (its last-known-good copy is enforced),
    /// held or without a copy yet, the agent down or stale, or the state
    /// directory failing writes.
    pub const DEGRADED: u8 = 3;
    /// Traffic is not filtered as configured: an interface not attached
    /// (or nothing attached at all), or desired entries missing from the
    /// kernel's maps.
    pub const NOT_ENFORCING: u8 = 4;

    fn assess(o: &Overview) -> Health {
        let mut worst = Health::OK;
        let mut problems = Vec::new();
        let mut note = |code: u8, what: String| {
            worst = worst.max(code);
            problems.push(what);
        };
        if o.interfaces.is_empty() {
            note(
                Health::NOT_ENFORCING,
                format!("no interface attached under {}", o.bpffs.display()),
            );
        }
        for i in &o.interfaces {
            if !i.attached {
                let why = i
                    .error
                    .as_deref()
                    .or(i.link_error.as_deref())
                    .or(i.mode_note.as_deref())
                    .unwrap_or("not attached");
                note(
                    Health::NOT_ENFORCING,
                    format!("{}: not filtered: {why}", i.iface),
                );
            }
            if let Some(m) = i.missing_entries.filter(|m| *m > 0) {
                note(
                    Health::NOT_ENFORCING,
                    format!("{}: the kernel lacks {m} desired entries", i.iface),
                );
            }
        }
        if let Some(a) = &o.agent {
            if !a.up {
                note(Health::DEGRADED, format!("agent {}: {}", a.state, a.detail));
            }
            if let Some(e) = &a.persist_error {
                note(Health::DEGRADED, format!("state directory: {e}"));
            }
        }
        for f in o.feeds.iter().flatten() {
            let name = &f.health.name;
            match f.state {
                "ok" => {}
                "failing" => note(
                    Health::DEGRADED,
                    format!(
                        "feed {name} failing ({} consecutive failures; its last-known-good copy stays enforced)",
                        f.health.consecutive_failures,
                    ),
                ),
                "held" => note(
                    Health::DEGRADED,
                    format!(
                        "feed {name}: {}",
                        f.health.held.as_deref().unwrap_or("update held")
                    ),
                ),
                other => note(
                    Health::DEGRADED,
                    format!("feed {name}: {other}, no copy yet"),
                ),
            }
            if let Some(e) = &f.health.persist_error {
                note(Health::DEGRADED, format!("feed {name}: {e}"));
            }
        }
        Health {
            code: worst,
            state: match worst {
                Health::OK => "ok",
                Health::DEGRADED => "degraded",
                _ => "not enforcing",
            },
            problems,
        }
    }
}

#[derive(Serialize)]
pub struct Overview {
    /// The verdict for scripts (`status`'s exit status).
    pub health: Health,
    pub bpffs: PathBuf,
    pub interfaces: Vec<IfaceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feeds: Option<Vec<FeedStatus>>,
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
        Ok(idx) => match crate::kernel::netlink::xdp_info(idx) {
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
                s.entry_counters = Some(EntryCounters::of_flags(c.flags).name());
                s.malformed = Some(if c.flags & abi::CONFIG_MALFORMED_DROP != 0 {
                    "drop"
                } else {
                    "pass"
                });
            }
            match maps.read() {
                Ok(d) => fill_maps(&mut s, &d, &maps.capacities()),
                Err(e) => s.error = Some(format!("reading the maps: {e}")),
            }
        }
        Err(e) => s.error = Some(e.to_string()),
    }
    s
}

/// Entries per logical map against the current tier's capacity
/// (`EntryMaps::capacities`: where the next tier starts, not a limit).
fn fill_maps(s: &mut IfaceStatus, d: &Desired, caps: &[u32; 10]) {
    for ((name, n), &cap) in d.counts().into_iter().zip(caps) {
        let capacity = Some(cap);
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
        .find_map(|i| crate::kernel::lock::holder(paths.root(), &i.name));
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
        Knowledge::from_config(cfg, &mut Vec::new())
            .ok()
            .and_then(|k| Report::read(paths, &attached, Some(&k)).ok())
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

impl Overview {
    /// Everything `status` shows about the pins under `paths`: every
    /// attached interface, then those `config` (loaded from `config_file`)
    /// names without pins, and with a config the agent and its feeds.
    pub fn gather(
        config: Option<&Config>,
        config_file: Option<PathBuf>,
        paths: &Paths,
    ) -> Overview {
        let mut names = paths.attached();
        if let Some(c) = config {
            for i in &c.interfaces {
                if !names.contains(&i.name) {
                    names.push(i.name.clone());
                }
            }
        }
        let mut interfaces: Vec<IfaceStatus> = names
            .iter()
            .map(|n| {
                let mut s = iface_status(paths, n);
                if let Some(c) = config {
                    s.configured = Some(c.interfaces.iter().any(|i| &i.name == n));
                }
                s
            })
            .collect();
        let now = OffsetDateTime::now_utc();
        let (agent, feeds) = match config {
            Some(c) => {
                let (a, f, ifaces) = agent_and_feeds(c, paths, now);
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
        let mut o = Overview {
            health: Health {
                code: Health::OK,
                state: "ok",
                problems: Vec::new(),
            },
            bpffs: paths.root().to_path_buf(),
            interfaces,
            config: config_file,
            agent,
            feeds,
        };
        o.health = Health::assess(&o);
        o
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
