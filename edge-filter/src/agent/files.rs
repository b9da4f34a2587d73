//! The long-running agent: keep one interface's maps equal to the blocklist
//! and allowlist files, reloading on change or SIGHUP, until stopped.
//!
//! Stopping the agent (SIGINT/SIGTERM, or SIGKILL) leaves the filter attached
//! and enforcing; `edge-filter detach` removes it. A restarted agent adopts
//! the pinned link and maps.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use edge_filter_common as abi;

use std::sync::Arc;

use crate::agent::watch::Watch;
use crate::entry::EntrySet;
use crate::error::{Error, Result};
use crate::intel::blocklist::{Loaded, load_files};
use crate::intel::guard::shrink_fraction;
use crate::kernel::attach::{self, Mode};
use crate::kernel::lock::AgentLock;
use crate::kernel::paths::Paths;
use crate::kernel::program::Capacities;
use crate::ops::metrics::{Metrics, Published};
use crate::ops::status::{FeedHealth, Status};

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Interface to filter.
    pub iface: String,
    /// Blocklist file.
    pub blocklist: PathBuf,
    /// Optional allowlist file.
    pub allowlist: Option<PathBuf>,
    /// Attach mode.
    pub mode: Mode,
    /// Map capacities (used when attaching fresh).
    pub caps: Capacities,
    /// Drop malformed packets instead of passing them.
    pub malformed_drop: bool,
    /// Per-entry hit counters.
    pub entry_counters: crate::intel::config::EntryCounters,
    /// Pin root.
    pub paths: Paths,
    /// How often to check the files for changes.
    pub poll: Duration,
    /// The Prometheus endpoint.
    pub metrics: crate::intel::config::MetricsConfig,
    /// A reload that removes more than this fraction of the blocklist's
    /// entries is held until the operator confirms it with SIGHUP (an
    /// emptied or truncated file looks exactly like this). In (0, 1]; 1
    /// never holds.
    pub max_shrink: f64,
    /// A reload where more than this share of the lines are rejected (or
    /// none parses) is refused: the previous entries stay enforced, as for
    /// a feed ([`crate::intel::feeds::Unusable`]). In [0, 1].
    pub max_rejected_share: f64,
}

/// The name the blocklist file goes by in status and metrics (where the
/// config agent names its feeds).
pub const BLOCKLIST_FEED: &str = "blocklist";

/// How often the kernel's maps are read back, repaired and counted against
/// the set.
const CENSUS_EVERY: Duration = Duration::from_secs(30);

fn report(loaded: &Loaded) {
    for e in &loaded.errors {
        log::warn!("{e}");
    }
}

fn stamp(paths: &[&Path]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Run the agent until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a SIGHUP during start-up must not kill the agent (the
    // default action of SIGHUP is to terminate).
    let sig = |k| {
        signal(k).map_err(|source| Error::Pin {
            op: "installing signal handlers".into(),
            source,
        })
    };
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    // One agent per interface: refuse before anything else.
    let lock = AgentLock::acquire(opts.paths.root(), &opts.iface)?;
    let flags = if opts.malformed_drop {
        abi::CONFIG_MALFORMED_DROP
    } else {
        0
    } | opts.entry_counters.flags();
    let files: Vec<PathBuf> = std::iter::once(opts.blocklist.clone())
        .chain(opts.allowlist.clone())
        .collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // Stamp before reading: an edit made while we load and attach then
    // shows up as a change on the first tick instead of being missed.
    let mut last = stamp(&refs);
    let loaded = load_files(&opts.blocklist, opts.allowlist.as_deref())?;
    report(&loaded);
    let mut links = crate::agent::watch::monitor();
    // Bind the metrics port before touching the kernel: an address that is
    // taken stops the agent before it attaches or adopts anything.
    let metrics = crate::ops::metrics::start(
        &opts.metrics,
        opts.paths.root().to_path_buf(),
        vec![opts.iface.clone()],
    )
    .await
    .map_err(|source| Error::Pin {
        op: "starting the metrics endpoint".into(),
        source,
    })?;
    let mut att = attach::attach_or_adopt(
        &opts.paths,
        &opts.iface,
        opts.mode,
        &opts.caps,
        &loaded.set,
        flags,
    )?;
    let s = &att.initial_sync;
    if att.reattached {
        log::error!(
            "{}: enforcement gap: the pinned filter was not attached (the interface was deleted or recreated while no agent ran); traffic passed unfiltered for an unknown time until now; re-attached in {} mode ({} added, {} changed, {} removed)",
            opts.iface,
            att.mode.unwrap_or("?"),
            s.added,
            s.changed,
            s.removed
        );
    } else if att.adopted {
        if let Some(m) = att.differs_message(&opts.paths, &opts.iface) {
            log::warn!("{m}");
        }
        log::info!(
            "adopted the pinned filter on {} ({} added, {} changed, {} removed)",
            opts.iface,
            s.added,
            s.changed,
            s.removed
        );
    } else {
        log::info!(
            "attached to {} in {} mode with {} entries, {} allowlisted ({} lines rejected)",
            opts.iface,
            att.mode.unwrap_or("?"),
            loaded.set.entries.len(),
            loaded.set.allow.len(),
            loaded.errors.len()
        );
    }
    for r in &s.refusals {
        log::error!("{r}");
    }
    // Tell a supervisor (and tests) the filter is in place; one that
    // stopped reading must not stop the agent.
    let _ = writeln!(
        std::io::stdout(),
        "ready: {} {}",
        opts.iface,
        if att.adopted { "adopted" } else { "attached" }
    );
    let mut agent = BlocklistAgent {
        status: Status {
            pid: std::process::id(),
            started: Some(time::OffsetDateTime::now_utc()),
            interfaces: vec![opts.iface.clone()],
            syncs: 1,
            refused: s.refused,
            ..Default::default()
        },
        health: FeedHealth {
            name: BLOCKLIST_FEED.to_string(),
            source: opts.blocklist.display().to_string(),
            entries: distinct(&loaded.set),
            rejected_lines: loaded.errors.len(),
            last_attempt: Some(time::OffsetDateTime::now_utc()),
            last_success: Some(time::OffsetDateTime::now_utc()),
            ..Default::default()
        },
        watch: Watch::new(
            &opts.paths,
            &opts.iface,
            opts.mode,
            &opts.caps,
            att.reattached,
        ),
        set: Arc::new(loaded.set),
        held: None,
        metrics,
        flags,
    };
    agent.census(&att.maps);
    agent.publish();
    let mut tick = tokio::time::interval(opts.poll);
    let mut link_check = tokio::time::interval(crate::agent::watch::CHECK_EVERY);
    link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut census = tokio::time::interval(CENSUS_EVERY);
    census.tick().await;
    let mut hit_pass = tokio::time::interval(crate::agent::watch::HIT_PASS_EVERY);
    hit_pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = hup.recv() => true,
            _ = tick.tick() => false,
            ev = crate::agent::watch::next_event(&mut links) => {
                log::debug!("link event: {ev:?}");
                agent.watch.check();
                agent.publish();
                continue;
            }
            _ = link_check.tick() => {
                agent.watch.check();
                agent.publish();
                continue;
            }
            _ = hit_pass.tick() => {
                if let Err(e) = att.maps.note_hits() {
                    log::debug!("last-hit pass: {e}");
                }
                continue;
            }
            _ = census.tick() => {
                agent.reconcile(&mut att.maps);
                agent.publish();
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let now = stamp(&refs);
        if !forced && now == last {
            continue;
        }
        last = now;
        match load_files(&opts.blocklist, opts.allowlist.as_deref()) {
            Ok(l) => {
                report(&l);
                agent.reload(&mut att.maps, l, forced, &opts);
            }
            Err(e) => {
                agent.health.last_attempt = Some(time::OffsetDateTime::now_utc());
                agent.health.last_error = Some(e.to_string());
                log::error!("reload skipped, previous entries stay enforced: {e}");
            }
        }
        agent.publish();
    }
    if agent.watch.attached() {
        let detach = opts.paths.detach_command(&opts.iface);
        log::info!(
            "stopping; the filter stays attached to {} (remove it with `{detach}`)",
            opts.iface
        );
    } else {
        log::warn!(
            "stopping; {} is not filtered: {}",
            opts.iface,
            agent.watch.health().detail.unwrap_or_default()
        );
    }
    drop(lock);
    Ok(())
}

/// Distinct entries of a set (a file may list one twice).
fn distinct(set: &EntrySet) -> usize {
    set.entries
        .iter()
        .map(|e| (e.net.trunc(), e.port))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// The blocklist agent's state between events.
struct BlocklistAgent {
    status: Status,
    /// The blocklist file, reported like a feed.
    health: FeedHealth,
    watch: Watch,
    /// What the kernel should enforce.
    set: Arc<EntrySet>,
    /// A reload held by the shrink guard: its entry set and the entry
    /// count it would leave.
    held: Option<Loaded>,
    metrics: Option<Arc<Metrics>>,
    flags: u32,
}

impl BlocklistAgent {
    /// Apply a reloaded blocklist, unless it shrinks the enforced set by
    /// more than `max_shrink` and the operator did not confirm (`forced`:
    /// SIGHUP).
    fn reload(
        &mut self,
        maps: &mut crate::kernel::maps::EntryMaps,
        l: Loaded,
        forced: bool,
        opts: &RunOptions,
    ) {
        let at = time::OffsetDateTime::now_utc();
        self.health.last_attempt = Some(at);
        self.health.last_error = None;
        // A file where nothing (or too little) parses is not a blocklist:
        // keep what is enforced.
        let records = l.set.entries.len() + l.set.allow.len();
        if let Err(e) = crate::intel::feeds::Unusable::check(
            records,
            l.errors.len(),
            opts.max_rejected_share,
            "lines",
            || l.errors[0].to_string(),
        ) {
            log::error!("reload refused, previous entries stay enforced: {e}");
            self.health.last_error = Some(e.to_string());
            self.health.consecutive_failures += 1;
            return;
        }
        self.health.consecutive_failures = 0;
        let (prev, new) = (self.set.entries.len(), l.set.entries.len());
        let fraction = shrink_fraction(prev, new);
        if !forced && fraction > opts.max_shrink {
            let what = format!(
                "reload from {prev} to {new} entries ({:.0}% fewer) held: send SIGHUP (`kill -HUP {}`) to apply it, or fix {}",
                fraction * 100.0,
                std::process::id(),
                opts.blocklist.display()
            );
            log::warn!("{what}");
            self.health.held = Some(what);
            self.held = Some(l);
            return;
        }
        if forced && self.held.is_some() {
            log::warn!("SIGHUP: applying the held reload");
        }
        self.held = None;
        self.health.held = None;
        let t = std::time::Instant::now();
        match maps.apply(&l.set, self.flags) {
            Ok(s) => {
                self.status.syncs += 1;
                self.status.refused = s.refused;
                self.status.last_sync_ms = t.elapsed().as_secs_f64() * 1e3;
                if let Some(m) = &self.metrics {
                    m.observe_sync(t.elapsed().as_secs_f64());
                }
                self.health.last_success = Some(at);
                self.health.entries = distinct(&l.set);
                self.health.rejected_lines = l.errors.len();
                log::info!(
                    "reloaded: {} added, {} changed, {} removed, {} lines rejected",
                    s.added,
                    s.changed,
                    s.removed,
                    l.errors.len()
                );
                for r in &s.refusals {
                    log::error!("{r}");
                }
            }
            Err(e) => {
                self.health.last_error = Some(e.to_string());
                log::error!("reload failed, previous entries stay enforced: {e}");
                maps.forget_shadow();
            }
        }
        self.set = Arc::new(l.set);
        self.census(maps);
    }

    /// Count what the kernel's maps hold against the set.
    fn census(&mut self, maps: &crate::kernel::maps::EntryMaps) {
        self.watch.count(maps, &self.set);
    }

    /// Read the kernel's maps back: repair what was changed behind the
    /// agent's back, count what they hold against the set.
    fn reconcile(&mut self, maps: &mut crate::kernel::maps::EntryMaps) {
        match maps.reconcile_with(self.flags, Some(&self.set)) {
            Ok((drift, census)) => {
                if drift > 0 {
                    log::warn!(
                        "{}: {drift} map entries had been changed behind the agent's back; repaired",
                        self.watch.iface()
                    );
                    self.status.drift_repairs += drift as u64;
                }
                if let Some(c) = census {
                    self.watch.set_census(c.entries, c.missing);
                }
            }
            Err(e) => log::error!("{}: reconcile failed: {e}", self.watch.iface()),
        }
    }

    fn publish(&mut self) {
        self.status.updated = Some(time::OffsetDateTime::now_utc());
        self.status.entries = self.set.entries.len();
        self.status.allowlisted = self.set.allow.len();
        self.status.feeds = vec![self.health.clone()];
        self.status.ifaces = vec![self.watch.health()];
        if let Some(m) = &self.metrics {
            m.publish(Published {
                status: self.status.clone(),
                set: Some(Arc::clone(&self.set)),
                desired: None,
            });
        }
    }
}
