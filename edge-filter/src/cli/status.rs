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

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use aya::maps::MapInfo;
use aya::programs::links::{FdLink, PinnedLink};
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::config::Config;
use edge_filter::escape::{self, escape};
use edge_filter::feed_agent::{FeedHealth, STATUS_FILE, Status};
use edge_filter::paths::Paths;
use edge_filter::{attach, maps::Desired};
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
    /// A pinned link exists.
    attached: bool,
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
    hits: Option<edge_filter::hits::Verdicts>,
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
    let interfaces = names
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
            let (a, f) = agent_and_feeds(c, &paths, now);
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
        attached: paths.link(iface).exists(),
        ..Default::default()
    };
    if !s.attached {
        s.mode_note = Some("not attached (no pinned link)".into());
        return s;
    }
    match PinnedLink::from_pin(paths.link(iface)) {
        Ok(pinned) => {
            // Dropping the FdLink closes our fd only: the pin keeps it attached.
            let link: FdLink = pinned.into();
            match link.info() {
                Ok(info) => {
                    s.link_id = Some(info.id());
                    s.program_id = Some(info.program_id());
                }
                Err(e) => s.error = Some(format!("reading the link info: {e}")),
            }
        }
        Err(e) => s.error = Some(format!("opening {}: {e}", paths.link(iface).display())),
    }
    match attach::ifindex(iface) {
        Ok(idx) => match xdp_info(idx) {
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
        }
        s.maps.push(MapOccupancy {
            map: name,
            entries: n,
            capacity,
        });
    }
}

// ---------------------------------------------------------------------------
// The attach mode, from the kernel (rtnetlink).

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_XDP: u16 = 43;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What `IFLA_XDP` of an interface says.
#[derive(Debug, Default)]
struct XdpInfo {
    /// `XDP_ATTACHED_*`: 0 none, 1 driver, 2 generic, 3 offload, 4 several.
    attached: u8,
    prog_id: Option<u32>,
    drv: Option<u32>,
    skb: Option<u32>,
    hw: Option<u32>,
}

impl XdpInfo {
    /// The mode our program (`ours`) runs in, or why that is unknown.
    fn mode_of(&self, ours: Option<u32>) -> (Option<&'static str>, Option<String>) {
        let slots = [(self.drv, "native"), (self.skb, "skb"), (self.hw, "hw")];
        // Older kernels report only IFLA_XDP_PROG_ID and the mode.
        let single = match self.attached {
            1 => Some("native"),
            2 => Some("skb"),
            3 => Some("hw"),
            _ => None,
        };
        if let Some(ours) = ours {
            if let Some((_, m)) = slots.iter().find(|(id, _)| *id == Some(ours)) {
                return (Some(m), None);
            }
            if self.prog_id == Some(ours) && single.is_some() {
                return (single, None);
            }
        }
        let others: Vec<String> = slots
            .iter()
            .filter_map(|(id, m)| id.map(|id| format!("program {id} in {m} mode")))
            .collect();
        let note = match (self.attached, others.is_empty(), self.prog_id) {
            (0, _, _) => "no XDP program on this interface in this network namespace (the pinned link may belong to an interface elsewhere, or the interface was recreated)".to_string(),
            (_, false, _) => format!("not our program: {}", others.join(", ")),
            (_, true, Some(id)) => format!("not our program: program {id}"),
            _ => "the kernel does not report the XDP program".to_string(),
        };
        (None, Some(note))
    }
}

fn nl_err(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Ask the kernel (`RTM_GETLINK` for one interface) about its XDP programs.
fn xdp_info(ifindex: u32) -> std::io::Result<XdpInfo> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(nl_err("netlink socket"));
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // nlmsghdr (16) + ifinfomsg (16) + IFLA_EXT_MASK attribute (8).
    const SEQ: u32 = 0x6566_0001;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&SEQ.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.push(libc::AF_UNSPEC as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&8u16.to_ne_bytes());
    req.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    req.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    // SAFETY: zeroed sockaddr_nl is valid; nl_pid 0 addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: buffer and address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(nl_err("netlink send"));
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(nl_err("netlink receive"));
        }
        if let Some(r) = parse_reply(&buf[..n as usize], SEQ)? {
            return Ok(r);
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Attributes `(type, payload)` in `b` (rtattr: len u16, type u16, payload,
/// padded to 4 bytes).
fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while let (Some(len), Some(ty)) = (u16_at(b, off), u16_at(b, off + 2)) {
        let len = len as usize;
        if len < 4 || off + len > b.len() {
            break;
        }
        out.push((ty & NLA_TYPE_MASK, &b[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// The answer in one datagram of replies, if it holds ours.
fn parse_reply(b: &[u8], seq: u32) -> std::io::Result<Option<XdpInfo>> {
    let mut off = 0;
    while let (Some(len), Some(ty), Some(s)) =
        (u32_at(b, off), u16_at(b, off + 4), u32_at(b, off + 8))
    {
        let len = len as usize;
        if len < 16 || off + len > b.len() {
            break;
        }
        let msg = &b[off..off + len];
        if s == seq {
            match ty {
                NLMSG_ERROR => {
                    let code = u32_at(msg, 16).map_or(0, |c| c as i32);
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                }
                RTM_NEWLINK => {
                    let mut x = XdpInfo::default();
                    for (t, p) in attrs(msg.get(32..).unwrap_or_default()) {
                        if t != IFLA_XDP {
                            continue;
                        }
                        for (t, v) in attrs(p) {
                            match t {
                                IFLA_XDP_ATTACHED => x.attached = v.first().copied().unwrap_or(0),
                                IFLA_XDP_PROG_ID => x.prog_id = u32_at(v, 0),
                                IFLA_XDP_DRV_PROG_ID => x.drv = u32_at(v, 0),
                                IFLA_XDP_SKB_PROG_ID => x.skb = u32_at(v, 0),
                                IFLA_XDP_HW_PROG_ID => x.hw = u32_at(v, 0),
                                _ => {}
                            }
                        }
                    }
                    return Ok(Some(x));
                }
                _ => {}
            }
        }
        off += (len + 3) & !3;
    }
    Ok(None)
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
) -> (AgentStatus, Vec<FeedStatus>) {
    let file = cfg.state_dir.join(format!("{STATUS_FILE}.json"));
    let stale_after = 2.0 * cfg.reconcile_interval.as_secs_f64() + 10.0;
    let status: Result<Status, String> = std::fs::read(&file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("not valid: {e}")));
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
    };
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
    // Per-feed drops: the kernel's per-entry counters of every attached
    // interface joined with the feeds' provenance.
    let feed_hits = {
        let attached = paths.attached();
        edge_filter::explain::Knowledge::from_config(cfg, &mut Vec::new())
            .ok()
            .and_then(|k| edge_filter::hits::Report::read(paths, &attached, Some(&k)).ok())
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
    (agent, feeds)
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
                if i.attached { "yes" } else { "no" }.to_string(),
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
                    .map_or("-".into(), |s| clip(&escape(s), 60)),
            ]);
        }
        println!("{t}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn reply(seq: u32, xdp: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body.extend(attr(3, b"ef-rcv\0"));
        body.extend(attr(IFLA_XDP | 0x8000, xdp));
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend(body);
        m
    }

    #[test]
    fn parses_ifla_xdp_and_names_the_mode() {
        let mut xdp = attr(IFLA_XDP_ATTACHED, &[2]);
        xdp.extend(attr(IFLA_XDP_SKB_PROG_ID, &77u32.to_ne_bytes()));
        xdp.extend(attr(IFLA_XDP_PROG_ID, &77u32.to_ne_bytes()));
        let x = parse_reply(&reply(9, &xdp), 9).unwrap().unwrap();
        assert_eq!((x.attached, x.skb, x.prog_id), (2, Some(77), Some(77)));
        assert_eq!(x.mode_of(Some(77)), (Some("skb"), None));
        let (m, note) = x.mode_of(Some(78));
        assert_eq!(m, None);
        assert_eq!(note.unwrap(), "not our program: program 77 in skb mode");
        // Another sequence number: not ours.
        assert!(parse_reply(&reply(8, &xdp), 9).unwrap().is_none());
        // Older kernels: only the mode and the program id.
        let mut old = attr(IFLA_XDP_ATTACHED, &[1]);
        old.extend(attr(IFLA_XDP_PROG_ID, &5u32.to_ne_bytes()));
        let x = parse_reply(&reply(1, &old), 1).unwrap().unwrap();
        assert_eq!(x.mode_of(Some(5)), (Some("native"), None));
        // Nothing attached.
        let none = attr(IFLA_XDP_ATTACHED, &[0]);
        let x = parse_reply(&reply(1, &none), 1).unwrap().unwrap();
        assert!(x.mode_of(Some(5)).1.unwrap().starts_with("no XDP program"));
    }

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

    #[test]
    fn netlink_errors_are_reported() {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&4u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        let e = parse_reply(&m, 4).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }
}
