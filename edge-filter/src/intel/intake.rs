//! A feed's bytes into entries, as the agent takes them in: where a feed
//! is and how it is fetched ([`location`], [`policy`]), a fetched body
//! parsed as the feed's config says ([`parse_body`], on every refresh of
//! the config agent), and every feed of a config read or fetched once and
//! merged as the agent merges them ([`read_once`], for `replay --config`).

use time::OffsetDateTime;

use crate::intel::config::{Config, FeedConfig, Limits, Source};
use crate::intel::desired::{DesiredState, FeedSnapshot, merge};
use crate::intel::feeds::{FeedParse, parse_feed};
use crate::intel::fetch::{
    FetchError, FetchPolicy, Fetched, Fetcher, Framing, Location, Validators,
};
use crate::intel::state::StateDir;

/// Why [`read_once`] could not read a config's feeds.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The runtime that fetches could not start.
    #[error(transparent)]
    Runtime(#[from] std::io::Error),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] FetchError),
    /// A feed could not be fetched, or its copy is not usable (the agent
    /// would refuse it too).
    #[error("feed {feed}: {reason}")]
    Feed {
        /// The feed.
        feed: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where `f` is fetched from.
pub fn location(f: &FeedConfig) -> Location<'_> {
    match &f.source {
        Source::File(p) => Location::File(p),
        Source::Http(u) => Location::Http(u),
    }
}

/// How every feed is fetched under `limits`.
pub fn policy(limits: &Limits) -> FetchPolicy {
    FetchPolicy {
        timeout: limits.timeout,
        max_bytes: limits.max_bytes as u64,
        retries: limits.retries,
        ..FetchPolicy::default()
    }
}

/// Parse a fetched body per the feed's config. A body that is not a usable
/// copy of the feed (nothing parses, or too many lines are rejected: see
/// [`FeedParse::usable`]) is an error like a failed fetch, so it never
/// replaces the last-known-good copy. `framing` says whether the transport
/// proved the body whole; if not, a last line without a newline is
/// rejected.
pub fn parse_body(
    f: &FeedConfig,
    cfg: &Config,
    bytes: &[u8],
    framing: Framing,
) -> Result<FeedParse, String> {
    let format = f.format.resolve(&f.source.format_hint(), bytes);
    let mut opts = f.feed_options(&cfg.limits);
    opts.end_unproven = framing.end_unproven();
    // Packed as they are kept (see `FeedParse::into_entries`).
    opts.pack = true;
    let parse = parse_feed(format, bytes, &opts).map_err(|e| e.to_string())?;
    parse
        .usable(f.max_rejected_share(&cfg.safety), format)
        .map_err(|e| e.to_string())?;
    Ok(parse)
}

/// Where [`read_once`] takes each feed's copy from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copies {
    /// Read or fetch every feed now; a feed that cannot be read, fetched or
    /// used falls back to its last-known-good copy in `state_dir` (a
    /// warning says so); one with neither is an error naming it.
    Fetch,
    /// Only the last-known-good copies in `state_dir` (no network, no feed
    /// file read); a feed without one is an error naming it.
    Offline,
    /// Read or fetch every feed now, without any fallback (feeds that are
    /// not an agent's: `replay --feed`).
    FetchOnly,
}

/// Every feed of `cfg` read (file) or fetched (HTTP) once, or taken from
/// its last-known-good copy as `copies` says, each parsed exactly as the
/// agent does (a copy the agent would refuse is a failure here too), and
/// merged as the agent merges them. The first rejected lines of each feed
/// and the first rejected entries are logged. The state directory is only
/// read.
pub fn read_once(cfg: &Config, copies: Copies) -> Result<DesiredState, IntakeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetcher = Fetcher::new()?;
    let policy = policy(&cfg.limits);
    let state = StateDir::read_only(&cfg.state_dir);
    let now = OffsetDateTime::now_utc();
    let mut snapshots = Vec::new();
    for f in &cfg.feeds {
        let failed = |reason: String| IntakeError::Feed {
            feed: f.name.clone(),
            reason,
        };
        let fresh = match copies {
            Copies::Offline => Err("--offline".to_string()),
            Copies::Fetch | Copies::FetchOnly if f.is_crowdsec_lapi() => {
                // One bouncer poll with startup=true: the whole set.
                crate::intel::crowdsec::Poller::new(f).and_then(|mut p| {
                    match rt.block_on(p.poll(f, cfg, &fetcher, &policy))? {
                        crate::intel::crowdsec::Polled::Changed { parse, .. } => Ok(parse),
                        crate::intel::crowdsec::Polled::Unchanged => Ok(FeedParse::default()),
                    }
                })
            }
            Copies::Fetch | Copies::FetchOnly if f.is_taxii_server() => {
                // One full fetch of the collection (no cursor, nothing saved).
                crate::intel::taxii::Poller::new(f).and_then(|mut p| {
                    match rt.block_on(p.poll(f, cfg, &fetcher, &policy))? {
                        crate::intel::crowdsec::Polled::Changed { parse, .. } => Ok(parse),
                        crate::intel::crowdsec::Polled::Unchanged => Ok(FeedParse::default()),
                    }
                })
            }
            Copies::Fetch | Copies::FetchOnly
                if matches!(
                    f.misp_source(),
                    Some(
                        crate::intel::config::MispSource::Feed
                            | crate::intel::config::MispSource::RestSearch
                    )
                ) =>
            {
                // The whole feed or search, once.
                crate::intel::misp::MispPoller::new(f).and_then(|p| {
                    let mut p = p.ok_or("not a MISP feed or server")?;
                    match rt.block_on(p.poll(f, cfg, &fetcher, &policy))? {
                        crate::intel::crowdsec::Polled::Changed { parse, .. } => Ok(parse),
                        crate::intel::crowdsec::Polled::Unchanged => Ok(FeedParse::default()),
                    }
                })
            }
            Copies::Fetch | Copies::FetchOnly => {
                match rt.block_on(fetcher.fetch(location(f), &Validators::default(), &policy)) {
                    Ok(Fetched::Body { bytes, framing, .. }) => parse_body(f, cfg, &bytes, framing),
                    Ok(Fetched::NotModified) => Err("unexpected 304".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let snapshot = match fresh {
            Ok(parsed) => {
                for r in parsed.rejected.iter().take(5) {
                    log::warn!("feed {}: line {r}", f.name);
                }
                FeedSnapshot {
                    feed: f.name.clone(),
                    entries: std::sync::Arc::new(parsed.into_entries()),
                    asserted_at: now,
                }
            }
            Err(why) if copies == Copies::FetchOnly => return Err(failed(why)),
            Err(why) => {
                let lkg = state.load_lkg(&f.name).map_err(|e| {
                    failed(format!(
                        "{why}; its last-known-good copy is unreadable: {e}"
                    ))
                })?;
                let Some(lkg) = lkg else {
                    let dir = state.root().display();
                    return Err(failed(match copies {
                        Copies::Offline => {
                            format!(
                                "no last-known-good copy in {dir} (--offline replays only those)"
                            )
                        }
                        _ => format!("{why}; and no last-known-good copy in {dir}"),
                    }));
                };
                if copies == Copies::Fetch {
                    log::warn!(
                        "feed {}: {why}; replaying its last-known-good copy of {} from {}",
                        f.name,
                        lkg.fetched_at,
                        state.root().display()
                    );
                }
                FeedSnapshot {
                    feed: f.name.clone(),
                    entries: lkg.entries,
                    asserted_at: lkg.fetched_at,
                }
            }
        };
        snapshots.push(snapshot);
    }
    let d = merge(cfg, &snapshots, now);
    for r in d.rejected.iter().take(5) {
        log::warn!("feed {}: {} rejected: {}", r.feed, r.entry, r.reason);
    }
    Ok(d)
}
