//! The agent's Prometheus endpoint: `GET /metrics` in the OpenMetrics text
//! format (`prometheus-client`), served with hyper.
//!
//! Kernel numbers are read at scrape time from the pinned maps, like
//! `edge-filter stats` does, so a scrape always shows what the kernel
//! counted, not a copy; the agent's own numbers (feed health, syncs, drift
//! repairs) come from the status it publishes after every sync and status
//! write ([`Metrics::publish`]). Each scrape builds a fresh registry: values
//! read from the kernel are totals, and a new counter set to a total is the
//! simplest honest way to expose them. Only the sync-duration histogram and
//! the fetch-failure counters live across scrapes.
//!
//! Names follow the Prometheus conventions: `edge_filter_` prefix,
//! `_total` for counters, seconds and bytes as units.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::kernel::paths::Paths;
use crate::ops::status::Status;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// What the agent publishes for the exporter.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The agent's status (feeds, syncs, drift repairs, interfaces).
    pub status: Status,
    /// The entry set the kernel should enforce, when `desired` does not
    /// carry it (the blocklist agent): a scrape counts what the kernel's
    /// maps lack of it.
    pub set: Option<Arc<crate::entry::EntrySet>>,
    /// The merged feeds with provenance (config agent only): per-feed hits.
    pub desired: Option<Arc<crate::intel::desired::DesiredState>>,
}

/// Shared between the agent loop and the HTTP server.
pub struct Metrics {
    paths: Paths,
    ifaces: Vec<String>,
    published: Mutex<Published>,
    sync_seconds: Histogram,
    fetch_failures: Family<Labels, Counter>,
    unchanged_bodies: Family<Labels, Counter>,
    refetches: Family<Labels, Counter>,
}

impl Metrics {
    /// An exporter for the attachments of `ifaces` under `bpffs`.
    pub fn new(bpffs: PathBuf, ifaces: Vec<String>) -> Arc<Metrics> {
        Arc::new(Metrics {
            paths: Paths::new(bpffs),
            ifaces,
            published: Mutex::new(Published::default()),
            // 1 ms .. ~33 s: from a one-entry delta to a cold million-entry sync.
            sync_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            fetch_failures: Family::default(),
            unchanged_bodies: Family::default(),
            refetches: Family::default(),
        })
    }

    /// Replace the agent's published state.
    pub fn publish(&self, p: Published) {
        if let Ok(mut g) = self.published.lock() {
            *g = p;
        }
    }

    /// Record one sync's duration.
    pub fn observe_sync(&self, seconds: f64) {
        self.sync_seconds.observe(seconds);
    }

    /// Count a body of `feed` that was not parsed because its digest equals
    /// the last one parsed.
    pub fn body_unchanged(&self, feed: &str) {
        self.unchanged_bodies
            .get_or_create(&vec![("feed", feed.to_string())])
            .inc();
    }

    /// Count a body of `feed` fetched a second time because a probe of the
    /// first found it changed.
    pub fn body_refetched(&self, feed: &str) {
        self.refetches
            .get_or_create(&vec![("feed", feed.to_string())])
            .inc();
    }

    /// Count a failed fetch or parse of `feed`.
    pub fn fetch_failed(&self, feed: &str) {
        self.fetch_failures
            .get_or_create(&vec![("feed", feed.to_string())])
            .inc();
    }

    /// The exposition text, as a scrape sees it.
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("edge_filter");
        let published = self.published.lock().map(|g| g.clone()).unwrap_or_default();
        self.kernel(&mut r, &published);
        agent(&mut r, &published.status);
        r.register(
            "sync_duration_seconds",
            "Time to bring the kernel maps to the desired state, per sync",
            self.sync_seconds.clone(),
        );
        r.register(
            "feed_fetch_failures",
            "Fetches or parses of a feed that failed since the agent started",
            self.fetch_failures.clone(),
        );
        r.register(
            "feed_unchanged_bodies",
            "Bodies of a feed not parsed again because they equal the last one parsed (same digest), since the agent started",
            self.unchanged_bodies.clone(),
        );
        r.register(
            "feed_refetches",
            "Bodies of a feed without ETag or Last-Modified fetched a second time because a probe of the first (hashed as it streamed in, not kept) found them changed, since the agent started",
            self.refetches.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }

    /// Everything read from the kernel, one pass per interface: whether the
    /// filter is in force, the counters, the maps' contents (occupancy, what
    /// they lack of the desired set) and the per-entry counters joined with
    /// the feeds asserting each entry. Reads each attachment's maps in full,
    /// so a scrape costs time in proportion to the entry count.
    fn kernel(&self, r: &mut Registry, p: &Published) {
        let packets = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let attached = Family::<Labels, Gauge>::default();
        let scrape_errors = Family::<Labels, Gauge>::default();
        let entries = Family::<Labels, Gauge>::default();
        let capacity = Family::<Labels, Gauge>::default();
        let kernel_entries = Family::<Labels, Gauge>::default();
        let missing = Family::<Labels, Gauge>::default();
        let feed_packets = Family::<Labels, Counter>::default();
        let feed_bytes = Family::<Labels, Counter>::default();
        let overflow = Family::<Labels, Counter>::default();
        let sample_every = Family::<Labels, Gauge>::default();
        let clock = crate::kernel::clock::Clock::now();
        for iface in &self.ifaces {
            let il = vec![("iface", iface.clone())];
            let in_force = crate::kernel::attach::link_health(&self.paths, iface)
                .is_ok_and(|h| h.is_attached());
            attached.get_or_create(&il).set(i64::from(in_force));
            let maps = match crate::kernel::attach::open_pinned(&self.paths, iface) {
                Ok(m) => m,
                Err(e) => {
                    log::debug!("metrics: {iface}: {e}");
                    continue;
                }
            };
            if let Ok(c) = maps.config() {
                let mode = crate::intel::config::EntryCounters::of_flags(c.flags);
                sample_every
                    .get_or_create(&il)
                    .set(i64::from(mode.sample_every()));
            }
            match maps.counters() {
                Ok(c) => {
                    let (rows, _) = crate::kernel::counters::named(&c);
                    for row in rows {
                        let l = vec![
                            ("iface", iface.clone()),
                            ("reason", row.reason.clone()),
                            ("verdict", row.verdict.to_string()),
                        ];
                        packets.get_or_create(&l).inc_by(row.packets);
                        bytes.get_or_create(&l).inc_by(row.bytes);
                    }
                }
                Err(e) => {
                    log::warn!("metrics: {iface}: reading counters: {e}");
                    scrape_errors.get_or_create(&il).set(1);
                }
            }
            let contents = match maps.read() {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("metrics: {iface}: reading the maps: {e}");
                    scrape_errors.get_or_create(&il).set(1);
                    continue;
                }
            };
            let mut held = 0;
            // The current tier's capacities (datapath v2 grows them with
            // the set), not the ignored `[capacities]` keys.
            let caps = maps.capacities();
            for ((map, n), c) in contents.counts().into_iter().zip(caps) {
                let l = vec![("iface", iface.clone()), ("map", map.to_string())];
                entries.get_or_create(&l).set(n as i64);
                capacity.get_or_create(&l).set(i64::from(c));
                if map != edge_filter_common::MAP_ALLOW_V4
                    && map != edge_filter_common::MAP_ALLOW_V6
                {
                    held += n;
                }
            }
            kernel_entries.get_or_create(&il).set(held as i64);
            let set = p.desired.as_deref().map(|d| &d.set).or(p.set.as_deref());
            if let Some(set) = set {
                missing
                    .get_or_create(&il)
                    .set(contents.census(set).missing as i64);
            }
            let (stats, over) = match (maps.entry_stats(), maps.stats_overflow()) {
                (Ok(s), Ok(o)) => (s, o),
                (Err(e), _) | (_, Err(e)) => {
                    log::debug!("metrics: {iface}: per-entry counters: {e}");
                    continue;
                }
            };
            let h = crate::ops::hits::join(
                iface,
                &contents,
                &stats,
                &over,
                maps.entry_stats_capacity(),
                &clock,
            );
            overflow.get_or_create(&il).inc_by(h.overflow.packets);
            let Some(d) = p.desired.as_deref() else {
                continue;
            };
            for e in &h.entries {
                let crate::kernel::maps::SlotKey::Entry(k) = &e.key else {
                    continue;
                };
                if e.hits.packets == 0 {
                    continue;
                }
                for feed in d.feeds_of(k) {
                    let l = vec![
                        ("feed", feed.to_string()),
                        ("iface", iface.clone()),
                        ("action", e.action.to_string()),
                    ];
                    feed_packets.get_or_create(&l).inc_by(e.hits.packets);
                    feed_bytes.get_or_create(&l).inc_by(e.hits.bytes);
                }
            }
        }
        r.register(
            "packets",
            "Packets the XDP program saw, by interface, verdict (pass, drop, monitor) and reason",
            packets,
        );
        r.register(
            "bytes",
            "Bytes of the packets the XDP program saw, by interface, verdict and reason",
            bytes,
        );
        r.register(
            "attached",
            "1 when the filter is in force on the interface (its pinned link is attached to the interface of that name), 0 when it is not (interface deleted or recreated, filter detached)",
            attached,
        );
        r.register(
            "counter_read_errors",
            "1 when the counters or maps of the interface could not be read at this scrape",
            scrape_errors,
        );
        r.register(
            "map_entries",
            "Entries in each kernel map, read from the kernel at this scrape",
            entries,
        );
        r.register(
            "map_capacity_entries",
            "Capacity (max_entries) of each kernel map",
            capacity,
        );
        r.register(
            "kernel_entries",
            "Block and monitor entries the kernel's maps hold, read at this scrape",
            kernel_entries,
        );
        r.register(
            "missing_entries",
            "Entries of the desired set the kernel's maps lack or hold with another action, at this scrape (0: the kernel enforces the whole set)",
            missing,
        );
        r.register(
            "feed_packets",
            "Packets dropped or monitored (action) on an interface by entries a feed asserts",
            feed_packets,
        );
        r.register(
            "feed_bytes",
            "Bytes of the packets dropped or monitored by entries a feed asserts",
            feed_bytes,
        );
        r.register(
            "entry_counters_sample_every",
            "How the per-entry counters behind feed_packets and feed_bytes count: 1 every hit (exact), 16 one hit in 16 per CPU counted as 16 (entry_counters = \"sampled\": estimates), 0 none (off)",
            sample_every,
        );
        r.register(
            "entry_stats_overflow_packets",
            "Packets decided by entries whose id is beyond the per-entry counter capacity",
            overflow,
        );
    }
}

/// The agent's own numbers.
fn agent(r: &mut Registry, s: &Status) {
    let gauge = |r: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        r.register(name, help, g);
    };
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        r.register(name, help, c);
    };
    if let Some(t) = s.started {
        let g = FloatGauge::default();
        g.set(t.unix_timestamp_nanos() as f64 / 1e9);
        r.register(
            "agent_start_time_seconds",
            "When the agent started (Unix time)",
            g,
        );
    }
    gauge(
        r,
        "desired_entries",
        "Block and monitor entries the agent enforces (all feeds merged)",
        s.entries as i64,
    );
    gauge(
        r,
        "allowlist_entries",
        "Allowlist entries the agent enforces",
        s.allowlisted as i64,
    );
    gauge(
        r,
        "rejected_entries",
        "Entries refused by the safety rules (too broad) at the last merge",
        s.rejected_entries as i64,
    );
    gauge(
        r,
        "refused_entries",
        "Entries refused at the last sync because a map was full",
        s.refused as i64,
    );
    counter(r, "syncs", "Syncs applied to the kernel maps", s.syncs);
    counter(
        r,
        "state_write_failures",
        "Writes to the state directory (last-known-good copies, guard, status) that failed",
        s.persist_failures,
    );
    gauge(
        r,
        "state_write_ok",
        "0 while writes to the state directory fail (a restart would enforce older copies)",
        i64::from(s.persist_error.is_none()),
    );
    let gaps = Family::<Labels, Counter>::default();
    let gap_seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for i in &s.ifaces {
        let l = vec![("iface", i.name.clone())];
        gaps.get_or_create(&l).inc_by(i.gaps);
        gap_seconds.get_or_create(&l).inc_by(i.gap_seconds);
    }
    r.register(
        "enforcement_gaps",
        "Times the agent found the interface unfiltered (deleted, recreated or detached) since it started",
        gaps,
    );
    r.register(
        "enforcement_gap_seconds",
        "Time the interface was unfiltered while the agent ran, the current gap included",
        gap_seconds,
    );
    counter(
        r,
        "drift_repairs",
        "Map keys found changed behind the agent's back and repaired",
        s.drift_repairs,
    );

    let entries = Family::<Labels, Gauge>::default();
    let rejected = Family::<Labels, Gauge>::default();
    let unsupported = Family::<Labels, Gauge>::default();
    let partial = Family::<Labels, Gauge>::default();
    let last_success = Family::<Labels, FloatGauge>::default();
    let last_attempt = Family::<Labels, FloatGauge>::default();
    let up = Family::<Labels, Gauge>::default();
    let failures = Family::<Labels, Gauge>::default();
    let held = Family::<Labels, Gauge>::default();
    let from_lkg = Family::<Labels, Gauge>::default();
    let lkg_saved = Family::<Labels, Gauge>::default();
    for f in &s.feeds {
        let l = vec![("feed", f.name.clone())];
        entries.get_or_create(&l).set(f.entries as i64);
        rejected.get_or_create(&l).set(f.rejected_lines as i64);
        unsupported.get_or_create(&l).set(f.unsupported as i64);
        partial.get_or_create(&l).set(f.partial as i64);
        if let Some(t) = f.last_success {
            last_success
                .get_or_create(&l)
                .set(t.unix_timestamp_nanos() as f64 / 1e9);
        }
        if let Some(t) = f.last_attempt {
            last_attempt
                .get_or_create(&l)
                .set(t.unix_timestamp_nanos() as f64 / 1e9);
        }
        up.get_or_create(&l).set(i64::from(
            f.last_success.is_some() && f.last_error.is_none(),
        ));
        failures
            .get_or_create(&l)
            .set(i64::from(f.consecutive_failures));
        held.get_or_create(&l).set(i64::from(f.held.is_some()));
        from_lkg
            .get_or_create(&l)
            .set(i64::from(f.from_last_known_good));
        lkg_saved
            .get_or_create(&l)
            .set(i64::from(f.persist_error.is_none()));
    }
    r.register(
        "feed_entries",
        "Distinct entries the enforced copy of each feed contributes (no duplicates or rejected lines)",
        entries,
    );
    r.register(
        "feed_rejected_lines",
        "Lines or objects of the enforced copy of each feed that were rejected",
        rejected,
    );
    r.register(
        "feed_unsupported_records",
        "Records of the enforced copy that edge-filter cannot express (STIX patterns)",
        unsupported,
    );
    r.register(
        "feed_partial_records",
        "Records of the enforced copy enforced in part: STIX indicators whose OR alternatives edge-filter cannot express were left out",
        partial,
    );
    r.register(
        "feed_last_success_timestamp_seconds",
        "Last fetch of each feed that gave a usable copy (Unix time); age = time() - this",
        last_success,
    );
    r.register(
        "feed_last_attempt_timestamp_seconds",
        "Last fetch attempt of each feed (Unix time)",
        last_attempt,
    );
    r.register("feed_up", "1 when the last fetch of the feed succeeded", up);
    r.register(
        "feed_consecutive_failures",
        "Failed fetches of the feed since its last success",
        failures,
    );
    r.register(
        "feed_held_update",
        "1 when the shrink guard is holding an update of the feed",
        held,
    );
    r.register(
        "feed_last_known_good_saved",
        "0 when the enforced copy of the feed could not be saved to the state directory",
        lkg_saved,
    );
    r.register(
        "feed_from_last_known_good",
        "1 when the enforced copy of the feed was loaded from the state directory at start",
        from_lkg,
    );
}

/// Answer one request: `/metrics` or 404.
fn respond(m: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            *resp.body_mut() = Full::new(Bytes::from(m.render()));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
        }
        (&hyper::Method::GET, "/") => {
            *resp.body_mut() = Full::new(Bytes::from_static(
                b"edge-filter agent: metrics at /metrics\n",
            ));
        }
        _ => *resp.status_mut() = StatusCode::NOT_FOUND,
    }
    resp
}

/// Start the endpoint `cfg` asks for, serving the attachments of `ifaces`
/// under `bpffs`. `Ok(None)`: off, or the default address could not be bound
/// (logged: another agent or program may hold the port). An address set
/// explicitly that cannot be bound is an error: the operator asked for it.
pub async fn start(
    cfg: &crate::intel::config::MetricsConfig,
    bpffs: PathBuf,
    ifaces: Vec<String>,
) -> std::io::Result<Option<Arc<Metrics>>> {
    let (addr, explicit) = cfg
        .listen_addr()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let Some(addr) = addr else {
        log::info!("metrics endpoint off");
        return Ok(None);
    };
    let listener = match bind(addr).await {
        Ok(l) => l,
        Err(e) if !explicit => {
            log::warn!("{e}; running without metrics (set metrics.listen to enable them)");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if let Some(warning) = unreachable_loopback(addr) {
        log::warn!("{warning}");
    }
    let m = Metrics::new(bpffs, ifaces);
    log::info!(
        "metrics at http://{}/metrics",
        listener.local_addr().unwrap_or(addr)
    );
    tokio::spawn(serve(listener, Arc::clone(&m)));
    Ok(Some(m))
}

/// Bind `addr` (errors name the address and, where the kernel's answer is
/// terse, say what it means).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EADDRINUSE) => " (another process listens there)".to_string(),
            Some(libc::EADDRNOTAVAIL) => {
                " (no interface of this network namespace has that address)".to_string()
            }
            _ => String::new(),
        };
        std::io::Error::new(
            e.kind(),
            format!("binding the metrics endpoint {addr}: {e}{why}"),
        )
    })
}

/// A loopback listener binds even while `lo` is down (as it is in a new
/// network namespace), but nothing can connect to it: say so, with the fix,
/// rather than serve into the void. `None` when the address is not loopback,
/// `lo` is up, or its state cannot be read.
pub fn unreachable_loopback(addr: SocketAddr) -> Option<String> {
    if !addr.ip().is_loopback() {
        return None;
    }
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Some(format!(
            "the metrics endpoint {addr} listens on loopback, but this network namespace has \
             no `lo` interface: nothing can connect to it"
        ));
    }
    match crate::kernel::netlink::is_up(lo) {
        Ok(false) => Some(format!(
            "the metrics endpoint {addr} is bound, but the loopback interface `lo` is down in \
             this network namespace, so nothing can connect to it; bring it up with `ip link \
             set lo up` (a new namespace starts with it down)"
        )),
        _ => None,
    }
}

/// Serve `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, m: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = Arc::clone(&m);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let m = Arc::clone(&m);
                // Reading the pinned maps is blocking syscalls: keep them
                // off the runtime's worker threads.
                async move {
                    let resp = tokio::task::spawn_blocking(move || respond(&m, &req))
                        .await
                        .unwrap_or_else(|_| {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            r
                        });
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                log::debug!("metrics: connection: {e}");
            }
        });
    }
}
