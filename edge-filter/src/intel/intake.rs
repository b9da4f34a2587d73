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
    let parse = parse_feed(format, bytes, &opts).map_err(|e| e.to_string())?;
    parse
        .usable(f.max_rejected_share(&cfg.safety), format)
        .map_err(|e| e.to_string())?;
    Ok(parse)
}

/// Read (file) or fetch once (HTTP) every feed of `cfg`, parse each
/// exactly as the agent does (a copy the agent would refuse is an error
/// here too) and merge them as the agent does, asserted now. The first
/// rejected lines of each feed and the first rejected entries are logged.
pub fn read_once(cfg: &Config) -> Result<DesiredState, IntakeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetcher = Fetcher::new()?;
    let policy = policy(&cfg.limits);
    let now = OffsetDateTime::now_utc();
    let mut snapshots = Vec::new();
    for f in &cfg.feeds {
        let failed = |reason: String| IntakeError::Feed {
            feed: f.name.clone(),
            reason,
        };
        let (bytes, framing) =
            match rt.block_on(fetcher.fetch(location(f), &Validators::default(), &policy)) {
                Ok(Fetched::Body { bytes, framing, .. }) => (bytes, framing),
                Ok(Fetched::NotModified) => return Err(failed("unexpected 304".into())),
                Err(e) => return Err(failed(e.to_string())),
            };
        let parsed = parse_body(f, cfg, &bytes, framing).map_err(failed)?;
        for r in parsed.rejected.iter().take(5) {
            log::warn!("feed {}: line {r}", f.name);
        }
        snapshots.push(FeedSnapshot {
            feed: f.name.clone(),
            entries: parsed.entries,
            asserted_at: now,
        });
    }
    let d = merge(cfg, &snapshots, now);
    for r in d.rejected.iter().take(5) {
        log::warn!("feed {}: {} rejected: {}", r.feed, r.entry, r.reason);
    }
    Ok(d)
}
