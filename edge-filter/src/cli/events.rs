//! `edge-filter events`.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use edge_filter::escape::{self, Escaped};
use edge_filter::kernel::clock::Clock;
use edge_filter::kernel::events::{self, EventRecord, Sampling};
use edge_filter::kernel::maps::SlotKey;
use edge_filter::kernel::paths::Paths;
use edge_filter::ops::knowledge::{Knowledge, key_text};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use super::pins::Pins;

/// `events --help`.
pub const LONG_ABOUT: &str = "\
Stream sampled dropped and monitored packets from the filter's ring buffer:
time, interface, source and destination address and ports, protocol,
verdict, reason, the deciding entry and (with --config) its feeds and
indicator ids. --json prints JSON Lines.

Sampling costs nothing while nobody reads events: `events` switches it on
for its own lifetime (one in --sample drop/monitor verdicts per CPU, at
most --cap per second per CPU, so an attack cannot flood the ring or this
reader) and off again when it ends: after --count events, after
--duration, or on Ctrl-C/SIGTERM. Samples the ring buffer had no room for
are counted as lost, samples over the cap as capped; both are reported on
stderr at the end. One reader per interface: a second one is refused
(--takeover takes over after a reader was killed and left sampling on).

Examples:
  edge-filter events
  edge-filter events --iface eth1 --sample 100 --cap 50 --json
  edge-filter events --config /etc/edge-filter/edge-filter.toml --count 20 --json
  edge-filter events --duration 60 --json > drops.jsonl";

/// Options of `edge-filter events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this interface (default: every attached interface).
    #[arg(long, short)]
    pub iface: Option<String>,
    /// Emit one in N drop/monitor verdicts per CPU.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: u32,
    /// At most N events per second per CPU (0: no cap).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub cap: u32,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Take over sampling that is already on (a reader was killed).
    #[arg(long)]
    pub takeover: bool,
    /// The agent's configuration: adds feeds and indicator ids (and takes
    /// the pin root from it).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A blocklist file: adds each entry's FILE:LINE.
    #[arg(long, short, value_name = "FILE", conflicts_with = "config")]
    pub blocklist: Option<PathBuf>,
    /// Root of the pins (overrides the config's bpffs; default /sys/fs/bpf/edge-filter).
    #[arg(long, env = "EDGE_FILTER_BPFFS", value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Print JSON Lines instead of text lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
struct EntryInfo {
    entry: Option<String>,
    feeds: Vec<String>,
    indicators: Vec<String>,
    sources: Vec<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    event: &'a EventRecord,
    #[serde(flatten)]
    entry: &'a EntryInfo,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Entry ids of an interface's maps, with provenance.
fn index(
    paths: &Paths,
    iface: &str,
    k: Option<&Knowledge>,
) -> anyhow::Result<HashMap<u32, EntryInfo>> {
    let maps = edge_filter::kernel::attach::open_pinned(paths, iface)?;
    let mut out = HashMap::new();
    for (key, v) in maps.read()?.entries() {
        let mut info = EntryInfo::default();
        match key {
            SlotKey::Entry(ek) => {
                info.entry = Some(key_text(&ek));
                for p in k.and_then(|k| k.provenance.get(&ek)).into_iter().flatten() {
                    if let Some(f) = &p.feed
                        && !info.feeds.contains(f)
                    {
                        info.feeds.push(f.clone());
                    }
                    if let Some(i) = &p.indicator
                        && !info.indicators.contains(i)
                    {
                        info.indicators.push(i.clone());
                    }
                    if let Some(l) = &p.location {
                        info.sources.push(l.clone());
                    }
                }
            }
            SlotKey::Allow(net) => info.entry = Some(net.to_string()),
        }
        out.insert(v.id, info);
    }
    Ok(out)
}

pub fn run(a: EventsArgs) -> anyhow::Result<()> {
    let pins = Pins::resolve(a.config.as_deref(), a.bpffs.as_deref())?;
    edge_filter::kernel::features::require(edge_filter::kernel::features::Use::Events)?;
    let ifaces = pins.ifaces_required(a.iface.as_deref())?;
    if let Some(d) = a.duration
        && !(d.is_finite() && d > 0.0)
    {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let mut notes = Vec::new();
    let knowledge = Knowledge::from_sources(
        pins.config.as_ref(),
        a.blocklist.as_deref(),
        None,
        &mut notes,
    )?;
    let paths = pins.paths;
    for n in &notes {
        eprintln!("note: {}", Escaped(n));
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut rings = Vec::new();
    let mut samplers = Vec::new();
    let mut indexes = Vec::new();
    for i in &ifaces {
        rings.push(events::open_ring(&paths, i)?);
        indexes.push(index(&paths, i, knowledge.as_ref())?);
        samplers.push(Sampling::start(&paths, i, a.sample, a.cap, a.takeover)?);
    }
    eprintln!(
        "events: sampling 1 in {} drop/monitor verdicts per CPU on {} ({}); Ctrl-C to stop",
        a.sample,
        ifaces.join(", "),
        if a.cap == 0 {
            "no cap".to_string()
        } else {
            format!("at most {} per second per CPU", a.cap)
        }
    );
    let started = Instant::now();
    let deadline = a.duration.map(|d| started + Duration::from_secs_f64(d));
    let mut printed: u64 = 0;
    let mut refreshed = vec![Instant::now(); ifaces.len()];
    let result = (|| -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        use std::io::Write as _;
        loop {
            if STOP.load(Ordering::SeqCst)
                || a.count.is_some_and(|c| printed >= c)
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Ok(());
            }
            let mut fds: Vec<libc::pollfd> = rings
                .iter()
                .map(|r| libc::pollfd {
                    fd: r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: fds is a valid array of pollfd for the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            let clock = Clock::now();
            for (n, ring) in rings.iter_mut().enumerate() {
                while let Some(item) = ring.next() {
                    let Some(ev) = events::decode(&item, &ifaces[n], &clock) else {
                        continue;
                    };
                    drop(item);
                    if !indexes[n].contains_key(&ev.entry_id)
                        && refreshed[n].elapsed() > Duration::from_secs(1)
                    {
                        indexes[n] = index(&paths, &ifaces[n], knowledge.as_ref())?;
                        refreshed[n] = Instant::now();
                    }
                    let info = indexes[n].get(&ev.entry_id).cloned().unwrap_or_default();
                    if a.json {
                        let line = serde_json::to_string(&Line {
                            event: &ev,
                            entry: &info,
                        })?;
                        writeln!(stdout, "{}", escape::json(line))?;
                    } else {
                        // Indicator ids come from feeds.
                        writeln!(stdout, "{}", Escaped(&text_line(&ev, &info)))?;
                    }
                    stdout.flush()?;
                    printed += 1;
                    if a.count.is_some_and(|c| printed >= c) {
                        return Ok(());
                    }
                }
            }
        }
    })();
    for s in &mut samplers {
        let t = s.totals();
        let stopped = s.stop();
        match t {
            Ok(t) => eprintln!(
                "events: {}: {} emitted, {} lost (ring buffer full), {} capped (over --cap)",
                s.iface(),
                t.emitted,
                t.lost,
                t.capped
            ),
            Err(e) => eprintln!("events: {}: counters unreadable: {e}", s.iface()),
        }
        stopped?;
    }
    eprintln!("events: {printed} printed");
    result
}

fn text_line(e: &EventRecord, info: &EntryInfo) -> String {
    let t = e
        .time
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "?".into());
    let ep = |a: std::net::IpAddr, p: Option<u16>| match (a, p) {
        (std::net::IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let mut s = format!(
        "{t} {} {} {} {}{} -> {} {} bytes entry {} {}",
        e.iface,
        e.verdict.to_uppercase(),
        e.reason,
        e.proto
            .as_ref()
            .map(|p| format!("{p} "))
            .unwrap_or_default(),
        ep(e.src, e.src_port),
        ep(e.dst, e.dst_port),
        e.len,
        e.entry_id,
        info.entry.as_deref().unwrap_or("(unknown)")
    );
    let mut why: Vec<String> = info.feeds.iter().map(|f| format!("feed {f}")).collect();
    why.extend(info.indicators.iter().map(|i| format!("indicator {i}")));
    why.extend(info.sources.iter().cloned());
    if !why.is_empty() {
        s.push_str(&format!(" ({})", why.join(", ")));
    }
    s
}
