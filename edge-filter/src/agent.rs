//! The long-running agent: keep one interface's maps equal to the blocklist
//! and allowlist files, reloading on change or SIGHUP, until stopped.
//!
//! Stopping the agent (SIGINT/SIGTERM, or SIGKILL) leaves the filter attached
//! and enforcing; `edge-filter detach` removes it. A restarted agent adopts
//! the pinned link and maps.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use edge_filter_common as abi;

use crate::attach::{self, Mode};
use crate::blocklist::{LineError, parse_allowlist, parse_blocklist};
use crate::entry::EntrySet;
use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::program::Capacities;

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
    /// Pin root.
    pub paths: Paths,
    /// How often to check the files for changes.
    pub poll: Duration,
    /// The Prometheus endpoint.
    pub metrics: crate::config::MetricsConfig,
}

/// The entry set from the files, with every bad line reported.
pub struct Loaded {
    /// What to enforce.
    pub set: EntrySet,
    /// Bad lines (the rest applied).
    pub errors: Vec<LineError>,
}

/// Read and parse the blocklist and allowlist. A file that cannot be read is
/// an error (the caller keeps what is enforced); bad lines are not.
pub fn load_files(blocklist: &Path, allowlist: Option<&Path>) -> Result<Loaded> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| Error::Read {
            path: p.into(),
            source,
        })
    };
    let text = read(blocklist)?;
    let b = parse_blocklist(&blocklist.display().to_string(), &text);
    let mut set = EntrySet {
        allow: Vec::new(),
        entries: b.entries,
    };
    let mut errors = b.errors;
    if let Some(a) = allowlist {
        let text = read(a)?;
        let out = parse_allowlist(&a.display().to_string(), &text);
        set.allow = out.nets;
        errors.extend(out.errors);
    }
    Ok(Loaded { set, errors })
}

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
    let flags = if opts.malformed_drop {
        abi::CONFIG_MALFORMED_DROP
    } else {
        0
    };
    let files: Vec<PathBuf> = std::iter::once(opts.blocklist.clone())
        .chain(opts.allowlist.clone())
        .collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // Stamp before reading: an edit made while we load and attach then
    // shows up as a change on the first tick instead of being missed.
    let mut last = stamp(&refs);
    let loaded = load_files(&opts.blocklist, opts.allowlist.as_deref())?;
    report(&loaded);
    // Bind the metrics port before touching the kernel: an address that is
    // taken stops the agent before it attaches or adopts anything.
    let metrics = crate::metrics::start(
        &opts.metrics,
        opts.paths.root().to_path_buf(),
        vec![opts.iface.clone()],
        opts.caps,
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
    if att.adopted {
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
    // Tell a supervisor (and tests) the filter is in place.
    println!(
        "ready: {} {}",
        opts.iface,
        if att.adopted { "adopted" } else { "attached" }
    );
    let mut status = crate::feed_agent::Status {
        pid: std::process::id(),
        started: Some(time::OffsetDateTime::now_utc()),
        interfaces: vec![opts.iface.clone()],
        ..Default::default()
    };
    let publish = |status: &mut crate::feed_agent::Status,
                   att: &attach::Attachment,
                   set: &EntrySet,
                   refused: usize| {
        status.updated = Some(time::OffsetDateTime::now_utc());
        status.entries = set.entries.len();
        status.allowlisted = set.allow.len();
        status.refused = refused;
        if let Some(m) = &metrics {
            m.publish(crate::metrics::Published {
                status: status.clone(),
                desired: None,
                maps: att
                    .maps
                    .shadow()
                    .map(|d| vec![(opts.iface.clone(), d.counts().to_vec())])
                    .unwrap_or_default(),
            });
        }
    };
    status.syncs = 1;
    publish(&mut status, &att, &loaded.set, s.refused);
    let mut tick = tokio::time::interval(opts.poll);
    loop {
        let forced = tokio::select! {
            _ = hup.recv() => true,
            _ = tick.tick() => false,
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
                let t = std::time::Instant::now();
                match att.maps.apply(&l.set, flags) {
                    Ok(s) => {
                        status.syncs += 1;
                        status.last_sync_ms = t.elapsed().as_secs_f64() * 1e3;
                        if let Some(m) = &metrics {
                            m.observe_sync(t.elapsed().as_secs_f64());
                        }
                        publish(&mut status, &att, &l.set, s.refused);
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
                    Err(e) => log::error!("reload failed, previous entries stay enforced: {e}"),
                }
            }
            Err(e) => log::error!("reload skipped, previous entries stay enforced: {e}"),
        }
    }
    log::info!(
        "stopping; the filter stays attached to {} (remove it with `edge-filter detach --iface {}`)",
        opts.iface,
        opts.iface
    );
    Ok(())
}
