//! The feed-driven agent (`edge-filter run --config FILE`).
//!
//! One task per feed fetches it on its own schedule (HTTP: conditional GET
//! every `refresh`; files: a cheap stat every second, read on change) and
//! parses it off the async threads, so a slow or hanging feed never delays
//! another. The main loop owns all state: it runs each new copy through the
//! shrink guard, keeps last-known-good copies in the state directory, merges
//! every feed into the desired state and applies it to each interface's
//! maps as a diff. A feed that fails to fetch or parse changes nothing: its
//! last-known-good entries stay enforced. The maps are reconciled with the
//! desired state every `reconcile_interval`, repairing (and counting) drift,
//! and the merge is redone when the next entry expires.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc};

use crate::agent::watch::Watch;
use crate::error::{Error, Result};
use crate::intel::config::{Config, FeedConfig, Source};
use crate::intel::crowdsec::{Polled, Poller};
use crate::intel::desired::{DesiredState, FeedSnapshot, merge};
use crate::intel::feeds::FeedParse;
use crate::intel::fetch::{BodyPrint, Fetched, Fetcher, Location, Probed, Validators};
use crate::intel::guard::{GuardDecision, ShrinkGuard};
use crate::intel::intake;
use crate::intel::misp::MispPoller;
use crate::intel::state::{LastKnownGood, StateDir};
use crate::intel::taxii;
use crate::kernel::attach;
use crate::kernel::lock::AgentLock;
use crate::kernel::maps::{EntryMaps, SetChanges};
use crate::kernel::paths::Paths;
use crate::kernel::v2sync::SharedSet;
use crate::ops::status::{FeedHealth, STATUS_FILE, Status};

/// Name of the shrink-guard blob in the state directory.
const GUARD_FILE: &str = "guard";

/// What a feed task reports.
enum Msg {
    /// A new copy, parsed.
    Parsed {
        feed: String,
        /// Boxed: a parse is a few hundred bytes, the other messages a
        /// few dozen.
        parse: Box<FeedParse>,
        validators: Validators,
        /// Digest of the body, kept with the last-known-good copy.
        digest: String,
        at: OffsetDateTime,
        /// A copy made of explicit deletions (a CrowdSec delta), not a
        /// whole download: the shrink guard does not hold it.
        delta: bool,
        /// Fetched a second time: a probe of the first response found the
        /// body changed (counted in `edge_filter_feed_refetches_total`).
        refetched: bool,
    },
    /// The copy in hand is still current: the server or the file said so
    /// (`unchanged_body` false), or it sent a body whose digest equals the
    /// last one parsed (true: not parsed again).
    NotModified {
        feed: String,
        at: OffsetDateTime,
        unchanged_body: bool,
    },
    /// Fetching or parsing failed.
    Failed {
        feed: String,
        error: String,
        at: OffsetDateTime,
    },
}

impl Msg {
    /// The feed it is about.
    fn feed(&self) -> &str {
        match self {
            Msg::Parsed { feed, .. } | Msg::NotModified { feed, .. } | Msg::Failed { feed, .. } => {
                feed
            }
        }
    }
}

/// What one refresh of a fetched feed got.
enum Got {
    /// The server said "not modified".
    NotModified,
    /// A probe found the body parsed last time: new validators.
    Same(Validators),
    /// A body to compare and parse.
    Body {
        bytes: Vec<u8>,
        validators: Validators,
        framing: crate::intel::fetch::Framing,
    },
}

impl From<Fetched> for Got {
    fn from(f: Fetched) -> Self {
        match f {
            Fetched::NotModified => Got::NotModified,
            Fetched::Body {
                bytes,
                validators,
                framing,
            } => Got::Body {
                bytes,
                validators,
                framing,
            },
        }
    }
}

/// One feed's fetch loop.
///
/// A body whose digest and framing equal those of the last body this task
/// parsed is not parsed again (the framing too: the same bytes with an
/// unproven end parse differently): many servers send neither `ETag` nor `Last-Modified`,
/// and parsing a million-line list costs seconds of CPU at every refresh.
/// It counts as "not modified", which is what it is. The first body after
/// a start is always parsed (the last-known-good entries may come from
/// another configuration of the feed).
///
/// After the first parse, an HTTP refresh of a server that sends neither
/// validator *probes* ([`Fetcher::probe`]):
/// the body is hashed piece by piece as it streams in and compared with
/// the last one's print, not kept, so an unchanged body costs no buffer
/// as large as itself. A changed one is fetched again to be kept (counted
/// in `edge_filter_feed_refetches_total`), which costs the bytes read up
/// to the first difference. A feed whose changes show late (past a quarter
/// of the body: an appended tail) is fetched whole instead, until a body
/// turns out unchanged again.
async fn feed_task(
    f: FeedConfig,
    cfg: Config,
    fetcher: std::sync::Arc<Fetcher>,
    mut validators: Validators,
    mut poller: Option<FeedPoller>,
    tx: mpsc::Sender<(Msg, OffsetDateTime)>,
    mut refetch: broadcast::Receiver<()>,
) {
    let policy = intake::policy(&cfg.limits);
    let interval = match f.source {
        // Files are watched: a stat per second, a read only on change.
        Source::File(_) => f.refresh.min(Duration::from_secs(1)),
        Source::Http(_) => f.refresh,
    };
    // Failed refreshes in a row (HTTP feeds): the next attempt comes after
    // a bounded exponential backoff, not a whole refresh later.
    let mut failures = 0u32;
    let mut last_parsed: Option<BodyPrint> = None;
    // Whether the next refresh of an HTTP feed probes the body against
    // `last_parsed` before fetching it to keep (see `Fetcher::probe`).
    let mut probe = true;
    loop {
        if let Some(p) = poller.as_mut() {
            let res = p.poll(&f, &cfg, &fetcher, &policy).await;
            let at = OffsetDateTime::now_utc();
            let msg = crowdsec_msg(&f.name, res, at);
            let delay = match &msg {
                Msg::Failed { .. } => {
                    failures += 1;
                    cfg.limits.retry_delay(failures, None, f.refresh)
                }
                _ => {
                    failures = 0;
                    interval
                }
            };
            if tx.send((msg, at + delay)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                r = refetch.recv() => if matches!(r, Err(broadcast::error::RecvError::Closed)) { return },
            }
            continue;
        }
        let (res, refetched) = match (&f.source, &last_parsed) {
            // A server with validators answers an unchanged body with a
            // 304 and a changed one with the body: nothing to probe.
            (Source::Http(url), Some(print)) if probe && validators.is_empty() => {
                match fetcher.probe(url, &validators, print, &policy).await {
                    Ok(Probed::NotModified) => (Ok(Got::NotModified), false),
                    Ok(Probed::Same { validators }) => (Ok(Got::Same(validators)), false),
                    Ok(Probed::Changed { read }) => {
                        // A difference found late (an appended tail) would
                        // cost most of a second download at every change:
                        // such a feed is fetched whole until a body turns
                        // out unchanged again.
                        probe = read <= print.body_len() / 4;
                        log::debug!(
                            "feed {}: body changed (seen after {read} bytes): fetching it",
                            f.name
                        );
                        let got = fetcher
                            .fetch(intake::location(&f), &validators, &policy)
                            .await;
                        (got.map(Got::from), true)
                    }
                    Err(e) => (Err(e), false),
                }
            }
            _ => {
                let got = fetcher
                    .fetch(intake::location(&f), &validators, &policy)
                    .await;
                (got.map(Got::from), false)
            }
        };
        let at = OffsetDateTime::now_utc();
        let retry_after = res.as_ref().err().and_then(|e| e.retry_after());
        let msg = match res {
            Ok(Got::NotModified) => Msg::NotModified {
                feed: f.name.clone(),
                at,
                unchanged_body: false,
            },
            Ok(Got::Same(v)) => {
                log::debug!("feed {}: body unchanged (probed): not parsed again", f.name);
                validators = v;
                Msg::NotModified {
                    feed: f.name.clone(),
                    at,
                    unchanged_body: true,
                }
            }
            Ok(Got::Body {
                bytes,
                validators: v,
                framing,
            }) if last_parsed
                .as_ref()
                .is_some_and(|p| p.matches(&bytes, framing)) =>
            {
                log::debug!(
                    "feed {}: body unchanged (same digest): not parsed again",
                    f.name
                );
                validators = v;
                probe = true;
                Msg::NotModified {
                    feed: f.name.clone(),
                    at,
                    unchanged_body: true,
                }
            }
            Ok(Got::Body {
                bytes,
                validators: v,
                framing,
            }) => {
                let print = BodyPrint::of(&bytes, framing);
                let digest = print.digest();
                let (fc, c) = (f.clone(), cfg.clone());
                let parsed = tokio::task::spawn_blocking(move || {
                    intake::parse_body(&fc, &c, &bytes, framing)
                })
                .await
                .unwrap_or_else(|e| Err(format!("parser task failed: {e}")));
                match parsed {
                    Ok(parse) => {
                        validators = v.clone();
                        last_parsed = Some(print);
                        Msg::Parsed {
                            feed: f.name.clone(),
                            parse: Box::new(parse),
                            validators: v,
                            digest,
                            at,
                            delta: false,
                            refetched,
                        }
                    }
                    Err(error) => Msg::Failed {
                        feed: f.name.clone(),
                        error,
                        at,
                    },
                }
            }
            Err(e) => Msg::Failed {
                feed: f.name.clone(),
                error: e.to_string(),
                at,
            },
        };
        let delay = match (&msg, &f.source) {
            (Msg::Failed { .. }, Source::Http(_)) => {
                failures += 1;
                let d = cfg.limits.retry_delay(failures, retry_after, f.refresh);
                log::info!(
                    "feed {}: next attempt in {} (failure {failures} in a row{})",
                    f.name,
                    humantime_serde::re::humantime::format_duration(Duration::from_secs(
                        d.as_secs()
                    )),
                    retry_after.map_or(String::new(), |r| format!(
                        "; the server asked for {}s",
                        r.as_secs()
                    ))
                );
                d
            }
            _ => {
                failures = 0;
                interval
            }
        };
        let next = at + delay;
        if tx.send((msg, next)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            r = refetch.recv() => if matches!(r, Err(broadcast::error::RecvError::Closed)) { return },
        }
    }
}

/// A feed polled through its own protocol rather than fetched whole.
enum FeedPoller {
    /// A CrowdSec LAPI's bouncer.
    Crowdsec(Poller),
    /// A TAXII 2.1 collection.
    Taxii(Box<taxii::Poller>),
    /// A MISP feed (manifest and events) or server (restSearch).
    Misp(MispPoller),
}

impl FeedPoller {
    async fn poll(
        &mut self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &crate::intel::fetch::FetchPolicy,
    ) -> std::result::Result<Polled, String> {
        match self {
            FeedPoller::Crowdsec(p) => p.poll(f, cfg, fetcher, policy).await,
            FeedPoller::Taxii(p) => p.poll(f, cfg, fetcher, policy).await,
            FeedPoller::Misp(p) => p.poll(f, cfg, fetcher, policy).await,
        }
    }
}

/// What one poll of a CrowdSec or TAXII feed tells the main loop.
fn crowdsec_msg(feed: &str, res: std::result::Result<Polled, String>, at: OffsetDateTime) -> Msg {
    let feed = feed.to_string();
    match res {
        Ok(Polled::Changed {
            parse,
            digest,
            resync,
        }) => Msg::Parsed {
            feed,
            parse: Box::new(parse),
            validators: Validators::default(),
            digest,
            at,
            delta: !resync,
            refetched: false,
        },
        Ok(Polled::Unchanged) => Msg::NotModified {
            feed,
            at,
            unchanged_body: false,
        },
        Err(error) => Msg::Failed { feed, error, at },
    }
}

/// The client of every CrowdSec LAPI feed, TAXII feed and MISP feed or
/// server, credentials read now: a missing, empty or unprotected key file
/// stops the agent before it starts.
fn crowdsec_pollers(cfg: &Config) -> Result<BTreeMap<String, FeedPoller>> {
    let mut pollers = BTreeMap::new();
    let refuse = |f: &FeedConfig, e: String| {
        Error::State(Box::new(std::io::Error::other(format!(
            "feed {}: {e}",
            f.name
        ))))
    };
    for f in &cfg.feeds {
        let p = if f.is_crowdsec_lapi() {
            FeedPoller::Crowdsec(Poller::new(f).map_err(|e| refuse(f, e))?)
        } else if f.is_taxii_server() {
            FeedPoller::Taxii(Box::new(taxii::Poller::new(f).map_err(|e| refuse(f, e))?))
        } else if let Some(p) = MispPoller::new(f).map_err(|e| refuse(f, e))? {
            FeedPoller::Misp(p)
        } else {
            continue;
        };
        pollers.insert(f.name.clone(), p);
    }
    Ok(pollers)
}

/// Run the agent described by `cfg` until SIGINT/SIGTERM.
pub async fn run(cfg: Config, config_path: &std::path::Path) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers before anything else: a SIGHUP during start-up must not kill
    // the agent.
    let sig = |k| signal(k).map_err(|e| state_err("installing signal handlers", e));
    let signals = Signals {
        hup: sig(SignalKind::hangup())?,
        term: sig(SignalKind::terminate())?,
        int: sig(SignalKind::interrupt())?,
    };
    let pollers = crowdsec_pollers(&cfg)?;
    // One agent per interface: refuse before binding a port or touching
    // the kernel when another agent manages one of ours.
    let paths = Paths::new(&cfg.bpffs);
    let locks = cfg
        .interfaces
        .iter()
        .map(|i| AgentLock::acquire(paths.root(), &i.name))
        .collect::<Result<Vec<_>>>()?;
    // Follow link events from before anything is attached.
    let links = crate::agent::watch::monitor();
    // Bind the metrics port before touching the kernel: an address that is
    // taken stops the agent before it attaches anything.
    let metrics = crate::ops::metrics::start(
        &cfg.metrics,
        cfg.bpffs.clone(),
        cfg.interfaces.iter().map(|i| i.name.clone()).collect(),
    )
    .await
    .map_err(|e| state_err("starting the metrics endpoint", e))?;
    let mut agent = FeedAgent::start(cfg)?;
    agent.metrics = metrics;
    agent.pollers = pollers;
    // TAXII cursors live in the state directory, opened (and checked) by
    // the agent's start.
    for p in agent.pollers.values_mut() {
        if let FeedPoller::Taxii(p) = p {
            p.resume_from(agent.state.clone());
        }
    }
    // Absolute: the advice it appears in is pasted in another directory.
    agent.config_path =
        std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    agent.run(signals, links).await?;
    drop(locks);
    Ok(())
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// One interface the agent filters.
struct Enforced {
    name: String,
    maps: EntryMaps,
    /// The maps enforce exactly `desired.set` (then a resync applies only
    /// the changes).
    synced: bool,
    /// The last sync failed or was refused in part: the reconcile tries
    /// again, so the maps converge whenever the set fits.
    incomplete: bool,
    watch: Watch,
}

struct FeedAgent {
    cfg: Config,
    /// The configuration file, for the commands the agent advises.
    config_path: std::path::PathBuf,
    state: StateDir,
    snapshots: BTreeMap<String, FeedSnapshot>,
    lkg_meta: BTreeMap<String, (Validators, usize)>,
    health: BTreeMap<String, FeedHealth>,
    guard: ShrinkGuard,
    /// The interfaces filtered.
    ifaces: Vec<Enforced>,
    /// Shared with the metrics exporter (per-feed hits need provenance).
    desired: std::sync::Arc<DesiredState>,
    status: Status,
    /// Last-known-good copies that could not be saved (a full or read-only
    /// state directory): retried at every reconcile until they are, so a
    /// restart after the disk recovers enforces the newest copy.
    unsaved: BTreeMap<String, LastKnownGood>,
    /// Updates the shrink guard holds, kept to apply once they persist.
    held: BTreeMap<String, (FeedParse, Validators, String, OffsetDateTime)>,
    /// The Prometheus exporter's view of the agent, when it serves one.
    metrics: Option<std::sync::Arc<crate::ops::metrics::Metrics>>,
    /// CrowdSec feeds' bouncers, TAXII and MISP feeds' pollers, handed to their
    /// tasks at start.
    pollers: BTreeMap<String, FeedPoller>,
}

fn state_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Pin {
        op: op.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl FeedAgent {
    /// Load last-known-good copies, merge, and attach or adopt every
    /// interface with that state, before any feed is fetched: a restart
    /// with every feed unreachable enforces exactly what was enforced.
    fn start(cfg: Config) -> Result<FeedAgent> {
        let state = StateDir::open(&cfg.state_dir).map_err(|e| Error::State(Box::new(e)))?;
        // The previous run's status: when each feed last succeeded (a 304
        // confirms the copy without rewriting it), so a restart with a
        // feed down still says how old the enforced copy is.
        let previous = Status::read(&cfg.state_dir).ok();
        let mut snapshots = BTreeMap::new();
        let mut lkg_meta = BTreeMap::new();
        let mut health = BTreeMap::new();
        // Feeds started from their last-known-good copy: (name, entries
        // listed, fetched at).
        let mut from_lkg = Vec::new();
        for f in &cfg.feeds {
            let mut h = FeedHealth {
                name: f.name.clone(),
                source: match intake::location(f) {
                    l @ Location::Http(_) => l.to_string(),
                    Location::File(p) => p.display().to_string(),
                },
                ..Default::default()
            };
            match state.load_lkg(&f.name) {
                Ok(Some(lkg)) => {
                    h.rejected_lines = lkg.rejected_lines;
                    h.from_last_known_good = true;
                    // The copy is as fresh as its fetch, or as the last
                    // success confirming it (not newer than the previous
                    // status said, nor older than the copy).
                    let confirmed = previous
                        .as_ref()
                        .and_then(|p| p.feeds.iter().find(|x| x.name == f.name))
                        .and_then(|x| x.last_success);
                    h.last_success =
                        Some(confirmed.map_or(lkg.fetched_at, |c| c.max(lkg.fetched_at)));
                    // Logged once merged: the merge counts distinct keys
                    // (a sort of 1M keys here was 5% of a start).
                    from_lkg.push((f.name.clone(), lkg.entries.len(), lkg.fetched_at));
                    lkg_meta.insert(f.name.clone(), (lkg.validators.clone(), lkg.rejected_lines));
                    snapshots.insert(
                        f.name.clone(),
                        FeedSnapshot {
                            feed: f.name.clone(),
                            entries: lkg.entries,
                            asserted_at: lkg.fetched_at,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => log::error!(
                    "feed {}: ignoring unreadable last-known-good copy: {e}",
                    f.name
                ),
            }
            health.insert(f.name.clone(), h);
        }
        let guard: ShrinkGuard = match state.load_json(GUARD_FILE) {
            Ok(g) => g.unwrap_or_default(),
            Err(e) => {
                log::error!("ignoring unreadable guard state: {e}");
                ShrinkGuard::default()
            }
        };
        let now = OffsetDateTime::now_utc();
        let desired = std::sync::Arc::new(merge(&cfg, snapshots.values(), now));
        for (name, listed, fetched_at) in from_lkg {
            let c = desired.per_feed.get(&name).cloned().unwrap_or_default();
            log::info!(
                "feed {name}: {} distinct entries ({listed} listed, {} expired, {} not yet valid) from last-known-good copy of {fetched_at}",
                c.entries,
                c.expired,
                c.pending
            );
        }
        let paths = Paths::new(&cfg.bpffs);
        let flags = cfg.runtime_flags();
        let mut ifaces = Vec::new();
        for i in &cfg.interfaces {
            // A pinned filter and no last-known-good feed copy at all (a new
            // or lost state directory): keep what the kernel enforces until
            // the first feed arrives instead of emptying the maps.
            let keep = snapshots.is_empty() && paths.link(&i.name).exists();
            let kept;
            let set = if keep {
                kept = attach::open_pinned(&paths, &i.name)?.read()?.to_entry_set();
                log::warn!(
                    "{}: no last-known-good feed copies in {}: keeping the {} entries the pinned filter enforces until the first feed arrives",
                    i.name,
                    cfg.state_dir.display(),
                    kept.entries.len()
                );
                &kept
            } else {
                &desired.set
            };
            let att =
                attach::attach_or_adopt(&paths, &i.name, i.mode, &cfg.capacities, set, flags)?;
            log::info!(
                "{} {} with {} entries ({} added, {} removed)",
                match (att.adopted, att.reattached) {
                    (_, true) => "re-attached",
                    (true, false) => "adopted",
                    (false, false) => "attached to",
                },
                i.name,
                desired.set.entries.len(),
                att.initial_sync.added,
                att.initial_sync.removed
            );
            if let Some(m) = att.differs_message(&paths, &i.name) {
                log::warn!("{m}");
            }
            if att.reattached {
                log::error!(
                    "{}: enforcement gap: the pinned filter was not attached (the interface was deleted or recreated while no agent ran); traffic passed unfiltered for an unknown time until now",
                    i.name
                );
            }
            for r in &att.initial_sync.refusals {
                log::error!("{}: {r}", i.name);
            }
            let mut att = att;
            if !keep {
                // The start copied the set into the engine: share ours
                // (before the census, which then has nothing to compare).
                att.maps.share(&shared_set(&desired));
            }
            let mut watch = Watch::new(&paths, &i.name, i.mode, &cfg.capacities, att.reattached);
            watch.count(&att.maps, set);
            // Kept contents are not `desired.set`: the first resync diffs
            // against what `apply` saw instead.
            let synced = !keep && att.maps.in_sync();
            ifaces.push(Enforced {
                name: i.name.clone(),
                incomplete: att.initial_sync.refused > 0,
                maps: att.maps,
                synced,
                watch,
            });
        }
        let status = Status {
            pid: std::process::id(),
            started: Some(now),
            interfaces: cfg.interfaces.iter().map(|i| i.name.clone()).collect(),
            ..Default::default()
        };
        Ok(FeedAgent {
            cfg,
            config_path: std::path::PathBuf::new(),
            state,
            snapshots,
            lkg_meta,
            health,
            guard,
            ifaces,
            desired,
            status,
            held: BTreeMap::new(),
            unsaved: BTreeMap::new(),
            metrics: None,
            pollers: BTreeMap::new(),
        })
    }

    async fn run(
        &mut self,
        signals: Signals,
        mut links: Option<crate::kernel::netlink::LinkMonitor>,
    ) -> Result<()> {
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = signals;
        let fetcher = std::sync::Arc::new(
            Fetcher::new().map_err(|e| state_err("creating the HTTP client", e))?,
        );
        let (tx, mut rx) = mpsc::channel(64);
        let (refetch_tx, _) = broadcast::channel(4);
        for f in &self.cfg.feeds {
            let validators = self
                .lkg_meta
                .get(&f.name)
                .map(|(v, _)| v.clone())
                .unwrap_or_default();
            tokio::spawn(feed_task(
                f.clone(),
                self.cfg.clone(),
                fetcher.clone(),
                validators,
                self.pollers.remove(&f.name),
                tx.clone(),
                refetch_tx.subscribe(),
            ));
        }
        drop(tx);
        self.write_status();
        // A supervisor that stopped reading must not stop the agent.
        let _ = writeln!(
            std::io::stdout(),
            "ready: {}",
            self.status.interfaces.join(" ")
        );
        let mut reconcile = tokio::time::interval(self.cfg.reconcile_interval);
        reconcile.tick().await;
        let mut link_check = tokio::time::interval(crate::agent::watch::CHECK_EVERY);
        link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hit_pass = tokio::time::interval(crate::agent::watch::HIT_PASS_EVERY);
        hit_pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let expiry = self.next_expiry();
            tokio::select! {
                Some((msg, next)) = rx.recv() => {
                    if let Some(h) = self.health.get_mut(msg.feed()) {
                        h.next_attempt = Some(next);
                    }
                    self.on_msg(msg);
                }
                _ = reconcile.tick() => self.reconcile(),
                _ = hit_pass.tick() => {
                    self.note_hits();
                    continue;
                }
                ev = crate::agent::watch::next_event(&mut links) => {
                    log::debug!("link event: {ev:?}");
                    self.check_links();
                }
                _ = link_check.tick() => self.check_links(),
                _ = tokio::time::sleep(expiry) => self.resync("expiry"),
                _ = hup.recv() => {
                    log::info!("SIGHUP: refetching every feed");
                    let _ = refetch_tx.send(());
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
            self.write_status();
        }
        let (kept, gone): (Vec<&Watch>, Vec<&Watch>) = self
            .ifaces
            .iter()
            .map(|i| &i.watch)
            .partition(|w| w.attached());
        let paths = Paths::new(&self.cfg.bpffs);
        for w in kept {
            log::info!(
                "stopping; the filter stays attached to {} (remove it with `{}`)",
                w.iface(),
                paths.detach_command(w.iface())
            );
        }
        for w in gone {
            log::warn!(
                "stopping; {} is not filtered: {}",
                w.iface(),
                w.health().detail.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Check every interface's attachment (after a link event, and every
    /// second); a re-attached interface gets the maps it already had.
    fn check_links(&mut self) {
        for i in &mut self.ifaces {
            i.watch.check();
        }
    }

    fn next_expiry(&self) -> Duration {
        match self.desired.next_change() {
            Some(t) => {
                let d = t - OffsetDateTime::now_utc();
                Duration::try_from(d).unwrap_or(Duration::ZERO) + Duration::from_millis(10)
            }
            None => Duration::from_secs(3600),
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::NotModified {
                feed,
                at,
                unchanged_body,
            } => {
                if unchanged_body && let Some(m) = &self.metrics {
                    m.body_unchanged(&feed);
                }
                // Not modified *held* content is another sighting of it,
                // once per refresh interval (file feeds are polled faster).
                let refresh = self.cfg.feed(&feed).map_or(Duration::ZERO, |f| f.refresh);
                // An operator's force-feed makes it due at once.
                let forced = self.state.force_path(&feed).is_ok_and(|p| p.exists());
                let due = self
                    .held
                    .get(&feed)
                    .is_some_and(|(_, _, _, seen)| forced || at - *seen >= refresh);
                if due && let Some((parse, validators, digest, _)) = self.held.remove(&feed) {
                    self.on_parsed(feed, parse, validators, digest, at, false);
                    return;
                }
                let h = self.health.entry(feed.clone()).or_default();
                h.last_attempt = Some(at);
                h.last_success = Some(at);
                h.last_error = None;
                h.consecutive_failures = 0;
                // The feed still asserts its entries: that extends TTLs.
                if let Some(s) = self.snapshots.get_mut(&feed) {
                    s.asserted_at = at;
                }
            }
            Msg::Failed { feed, error, at } => {
                if let Some(m) = &self.metrics {
                    m.fetch_failed(&feed);
                }
                log::error!("feed {feed}: {error}; its last-known-good entries stay enforced");
                let h = self.health.entry(feed).or_default();
                h.last_attempt = Some(at);
                h.last_error = Some(error);
                h.consecutive_failures += 1;
            }
            Msg::Parsed {
                feed,
                parse,
                validators,
                digest,
                at,
                delta,
                refetched,
            } => {
                if refetched && let Some(m) = &self.metrics {
                    m.body_refetched(&feed);
                }
                self.on_parsed(feed, *parse, validators, digest, at, delta);
                // The parse is freed only now, after the sync's own purge.
                crate::memory::release_freed();
            }
        }
    }

    fn on_parsed(
        &mut self,
        feed: String,
        parse: FeedParse,
        validators: Validators,
        digest: String,
        at: OffsetDateTime,
        delta: bool,
    ) {
        for r in parse.rejected.iter().take(20) {
            log::warn!("feed {feed}: line {}: {}: {}", r.index, r.reason, r.text);
        }
        if parse.rejected.len() > 20 {
            log::warn!(
                "feed {feed}: {} more rejected lines",
                parse.rejected.len() - 20
            );
        }
        let forced = match self.state.take_force(&feed) {
            Ok(f) => f,
            Err(e) => {
                log::error!("feed {feed}: reading the force flag: {e}");
                false
            }
        } || delta;
        let prev = self.snapshots.get(&feed).map_or(0, |s| s.entries.len());
        let decision = self
            .guard
            .evaluate(&feed, prev, parse.len(), &self.cfg.safety, forced);
        let saved = self.state.save_json(GUARD_FILE, &self.guard);
        self.persisted("the shrink-guard state", saved.map_err(|e| e.to_string()));
        let h = self.health.entry(feed.clone()).or_default();
        h.last_attempt = Some(at);
        h.last_success = Some(at);
        h.last_error = None;
        h.consecutive_failures = 0;
        match decision {
            GuardDecision::Hold {
                previous,
                proposed,
                shrink_fraction,
                seen,
                needed,
            } => {
                let what = format!(
                    "update from {previous} to {proposed} entries ({:.0}% fewer) held: seen {seen} of {needed} refreshes (or `edge-filter force-feed {} --config {}`)",
                    shrink_fraction * 100.0,
                    crate::escape::shell_word(&feed),
                    crate::escape::shell_word(&self.config_path.to_string_lossy()),
                );
                log::warn!("feed {feed}: {what}");
                h.held = Some(what);
                self.held.insert(feed, (parse, validators, digest, at));
            }
            GuardDecision::Apply => {
                self.held.remove(&feed);
                h.held = None;
                h.rejected_lines = parse.rejected.len();
                h.unsupported = parse.unsupported;
                h.partial = parse.partial.len();
                for p in parse.partial.iter().take(3) {
                    log::info!(
                        "feed {feed}: object {}: {}: {}",
                        p.index,
                        crate::escape::Escaped(&p.reason),
                        crate::escape::Escaped(&p.text)
                    );
                }
                h.from_last_known_good = false;
                h.rejected_examples = parse
                    .rejected
                    .iter()
                    .take(5)
                    .map(|r| format!("line {}: {}", r.index, r.reason))
                    .collect();
                // One compact copy, shared by the snapshot and the file.
                let rejected_lines = parse.rejected.len();
                let entries = std::sync::Arc::new(parse.into_entries());
                let lkg = LastKnownGood {
                    feed: feed.clone(),
                    fetched_at: at,
                    validators,
                    entries: std::sync::Arc::clone(&entries),
                    rejected_lines,
                    source_digest: digest,
                };
                self.save_lkg(lkg);
                self.snapshots.insert(
                    feed.clone(),
                    FeedSnapshot {
                        feed: feed.clone(),
                        entries,
                        asserted_at: at,
                    },
                );
                self.resync(&format!("feed {feed}"));
            }
        }
    }

    /// Merge every feed and apply the result to every interface.
    fn resync(&mut self, why: &str) {
        let t = Instant::now();
        // Merged straight from the snapshots (a copy of every feed's entries
        // was 112 bytes a /32 of peak memory).
        let prev = std::mem::replace(
            &mut self.desired,
            std::sync::Arc::new(merge(
                &self.cfg,
                self.snapshots.values(),
                OffsetDateTime::now_utc(),
            )),
        );
        let flags = self.cfg.runtime_flags();
        let mut refused = 0;
        // The key-level changes, computed once for every interface whose
        // maps enforce the previous set: applying them costs in proportion
        // to the change, not to the set.
        let mut changes: Option<SetChanges> = None;
        for Enforced {
            name: iface,
            maps,
            synced,
            incomplete,
            watch,
        } in &mut self.ifaces
        {
            // The engine holds the agent's set rather than a copy of it.
            maps.offer(shared_set(&self.desired));
            let r = if *synced && maps.in_sync() {
                let ch = changes
                    .get_or_insert_with(|| SetChanges::between(&prev.set, &self.desired.set));
                maps.apply_changes(&self.desired.set, ch, flags)
            } else {
                maps.rebuild(&self.desired.set, flags)
            };
            maps.withdraw();
            *synced = matches!(&r, Ok(s) if s.refused == 0);
            *incomplete = !*synced;
            match r {
                Ok(s) => {
                    refused += s.refused;
                    if s.added + s.changed + s.removed > 0 {
                        log::info!(
                            "{iface}: {why}: {} added, {} changed, {} removed",
                            s.added,
                            s.changed,
                            s.removed
                        );
                    }
                    for r in &s.refusals {
                        log::error!("{iface}: {r}");
                    }
                }
                Err(e) => {
                    log::error!("{iface}: applying failed (retried at the next reconcile): {e}");
                    maps.forget_shadow();
                }
            }
            watch.count(maps, &self.desired.set);
        }
        self.status.syncs += 1;
        self.status.refused = refused;
        self.status.last_sync_ms = t.elapsed().as_secs_f64() * 1e3;
        if let Some(m) = &self.metrics {
            m.observe_sync(t.elapsed().as_secs_f64());
        }
        crate::memory::release_freed();
    }

    /// The last-hit pass over every interface's per-entry counters.
    fn note_hits(&mut self) {
        for i in &self.ifaces {
            if let Err(e) = i.maps.note_hits() {
                log::debug!("{}: last-hit pass: {e}", i.name);
            }
        }
    }

    fn reconcile(&mut self) {
        self.retry_unsaved();
        // An interface whose last sync failed or was refused in part is
        // brought to the desired state again: it converges whenever the
        // set fits (a map freed, a transient error gone).
        if self.ifaces.iter().any(|i| i.incomplete) {
            self.resync("retry of an incomplete sync");
        }
        let flags = self.cfg.runtime_flags();
        for Enforced {
            name: iface,
            maps,
            watch,
            ..
        } in &mut self.ifaces
        {
            // One read of the kernel: drift repaired, then what the maps
            // hold against the desired set.
            match maps.reconcile_with(flags, Some(&self.desired.set)) {
                Ok((drift, census)) => {
                    if drift > 0 {
                        log::warn!(
                            "{iface}: {drift} map entries had been changed behind the agent's back; repaired"
                        );
                        self.status.drift_repairs += drift as u64;
                        // The repair copied the set into the engine.
                        maps.share(&shared_set(&self.desired));
                    }
                    if let Some(c) = census {
                        watch.set_census(c.entries, c.missing);
                        if c.missing > 0 {
                            log::error!(
                                "{iface}: the kernel enforces {} entries; {} of the desired set are missing",
                                c.entries,
                                c.missing
                            );
                        }
                    }
                }
                Err(e) => log::error!("{iface}: reconcile failed: {e}"),
            }
        }
        crate::memory::release_freed();
    }

    fn write_status(&mut self) {
        self.status.updated = Some(OffsetDateTime::now_utc());
        // Per-feed entries as the merge counts them: distinct, enforced.
        self.status.feeds = self
            .health
            .values()
            .map(|h| FeedHealth {
                entries: self.desired.per_feed.get(&h.name).map_or(0, |c| c.entries),
                ..h.clone()
            })
            .collect();
        self.status.entries = self.desired.set.entries.len();
        self.status.allowlisted = self.desired.set.allow.len();
        self.status.rejected_entries = self.desired.rejected.len();
        self.status.ifaces = self.ifaces.iter().map(|i| i.watch.health()).collect();
        let saved = self.state.save_json_report(STATUS_FILE, &self.status);
        self.persisted("status", saved.map_err(|e| e.to_string()));
        if let Some(m) = &self.metrics {
            m.publish(crate::ops::metrics::Published {
                status: self.status.clone(),
                // The exporter takes the set from `desired`.
                set: None,
                desired: Some(std::sync::Arc::clone(&self.desired)),
            });
        }
    }
}

impl FeedAgent {
    /// Save a feed's copy as its last-known-good one; a copy that cannot be
    /// saved is kept to retry ([`FeedAgent::retry_unsaved`]) and reported.
    fn save_lkg(&mut self, lkg: LastKnownGood) {
        let feed = lkg.feed.clone();
        let saved = self.state.save_lkg(&lkg).map_err(|e| e.to_string());
        if let Some(h) = self.health.get_mut(&feed) {
            h.persist_error = saved.as_ref().err().map(|e| {
                format!("its last-known-good copy could not be saved ({e}): a restart would enforce an older copy")
            });
        }
        if saved.is_ok() {
            self.unsaved.remove(&feed);
        } else {
            self.unsaved.insert(feed.clone(), lkg);
        }
        self.persisted(&format!("the last-known-good copy of feed {feed}"), saved);
    }

    /// Try again to save the copies that could not be saved.
    fn retry_unsaved(&mut self) {
        let pending: Vec<LastKnownGood> = std::mem::take(&mut self.unsaved).into_values().collect();
        for lkg in pending {
            let feed = lkg.feed.clone();
            self.save_lkg(lkg);
            if !self.unsaved.contains_key(&feed) {
                log::info!("feed {feed}: its last-known-good copy is saved now");
            }
        }
    }

    /// Account for one write to the state directory: failures are counted
    /// and reported (status, metrics, log) until writes succeed again and
    /// no copy waits to be saved.
    fn persisted(&mut self, what: &str, r: std::result::Result<(), String>) {
        match r {
            Ok(()) => {
                if what == "status" && self.unsaved.is_empty() {
                    self.status.persist_error = None;
                }
            }
            Err(e) => {
                let msg = format!("writing {what} to {}: {e}", self.cfg.state_dir.display());
                if self.status.persist_error.as_deref() != Some(msg.as_str()) {
                    log::error!("{msg}");
                }
                self.status.persist_failures += 1;
                self.status.persist_error = Some(msg);
            }
        }
    }
}

/// The desired state as the set the sync engine shares
/// (`EntryMaps::offer`).
fn shared_set(d: &std::sync::Arc<DesiredState>) -> SharedSet {
    std::sync::Arc::clone(d) as SharedSet
}
