//! Fetching MISP intelligence (`format = "misp"`) that is more than one
//! document (see [`FeedConfig::misp_source`]):
//!
//! * a **MISP feed** (what MISP's feed export and PyMISP write: a
//!   `manifest.json` mapping each event's UUID to its `timestamp`, and one
//!   `UUID.json` per event), at an `http(s)://` URL ending in `/` or
//!   `manifest.json`, or in a directory. Each poll reads the manifest and
//!   fetches only the events whose timestamp changed (or that are new);
//!   events gone from the manifest are dropped;
//! * the **API**: `POST {source}/attributes/restSearch` with the key of
//!   `api_key_file` in `Authorization`, a page of `misp.page_size`
//!   attributes at a time until a short page.
//!
//! Each poll either succeeds as a whole, handing the agent the whole
//! current copy (every event's or page's entries), or fails and changes
//! nothing held: a failed event fetch, a manifest that is not one, a page
//! that is not a restSearch answer, a page loop. Errors name the URL or
//! file and what to fix; the key is never in them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderValue;
use serde_json::Value;

use crate::intel::config::{Config, FeedConfig, MispSource, Source};
use crate::intel::crowdsec::Polled;
use crate::intel::feeds::{FeedParse, Unusable, misp};
use crate::intel::fetch::{FetchError, FetchPolicy, Fetched, Fetcher, Location, Validators};
use crate::intel::secret::{SecretKind, read_secret};

/// Attributes per restSearch page unless `misp.page_size` says.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Most pages one poll reads unless `misp.max_pages` says.
pub const DEFAULT_MAX_PAGES: u32 = 1000;

/// The attribute types asked of restSearch (the ones [`misp`] enforces).
const TYPES: [&str; 5] = [
    "ip-src",
    "ip-dst",
    "ip-src|port",
    "ip-dst|port",
    "domain|ip",
];

/// One event of a MISP feed as held: its manifest timestamp and its parse.
#[derive(Clone, Debug)]
struct Held {
    timestamp: String,
    parse: FeedParse,
}

/// One MISP feed's or server's poller.
pub struct MispPoller {
    kind: MispSource,
    /// Feed: the directory URL (ending in `/`) or path; API: the base URL.
    base: String,
    key_file: Option<PathBuf>,
    key: Option<HeaderValue>,
    /// Feed: the events held, by UUID.
    events: BTreeMap<String, Held>,
    /// Digest of the last copy handed over (none before the first).
    last: Option<String>,
    /// Feed: digest of the manifest of the last successful poll (the
    /// same manifest again means nothing to fetch or rebuild).
    manifest: Option<String>,
}

impl std::fmt::Debug for MispPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MispPoller")
            .field("kind", &self.kind)
            .field("base", &self.base)
            .field("key_file", &self.key_file)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Whether `s` can name an event file: a UUID's characters only (the
/// manifest is feed data; `../x` must not become a path).
fn is_uuid(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A manifest's `timestamp` (MISP writes an integer or a string).
fn timestamp(v: &Value) -> Option<String> {
    match v.get("timestamp")? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.trim().to_string()),
        _ => None,
    }
}

impl MispPoller {
    /// The poller of `f`, or `None` when `f` is not a MISP feed or server
    /// (one document is fetched like any feed). The key, if any, is read
    /// now.
    pub fn new(f: &FeedConfig) -> Result<Option<MispPoller>, String> {
        let kind = match f.misp_source() {
            None | Some(MispSource::Document) => return Ok(None),
            Some(k) => k,
        };
        let (key_file, key) = match (&f.api_key_file, kind) {
            (Some(file), MispSource::RestSearch) => {
                let key =
                    read_secret(file, "api_key_file", SecretKind::Token, "the MISP auth key")?;
                let mut v = HeaderValue::from_str(&key)
                    .map_err(|_| format!("api_key_file {} does not hold a key", file.display()))?;
                v.set_sensitive(true);
                (Some(file.clone()), Some(v))
            }
            _ => (None, None),
        };
        let base = match (&f.source, kind) {
            (Source::Http(u), MispSource::Feed) => {
                let u = u.strip_suffix("manifest.json").unwrap_or(u);
                if u.ends_with('/') {
                    u.to_string()
                } else {
                    format!("{u}/")
                }
            }
            (Source::Http(u), _) => u.trim_end_matches('/').to_string(),
            (Source::File(p), _) => {
                let dir = if p.is_dir() {
                    p.as_path()
                } else {
                    p.parent().unwrap_or(Path::new("/"))
                };
                dir.to_string_lossy().into_owned()
            }
        };
        Ok(Some(MispPoller {
            kind,
            base,
            key_file,
            key,
            events: BTreeMap::new(),
            last: None,
            manifest: None,
        }))
    }

    /// Poll once. On failure nothing held changes.
    pub async fn poll(
        &mut self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<Polled, String> {
        let (parse, digest, events) = match self.kind {
            MispSource::RestSearch => {
                let (p, d) = self.search(f, cfg, fetcher, policy).await?;
                (p, d, None)
            }
            _ => match self.feed(f, cfg, fetcher, policy).await? {
                None => return Ok(Polled::Unchanged),
                Some((p, d, e, m)) => (p, d, Some((e, m))),
            },
        };
        Unusable::check(
            parse.records,
            parse.rejected.len(),
            f.max_rejected_share(&cfg.safety),
            "attributes",
            || format!("attribute {}", parse.rejected[0]),
        )
        .map_err(|e| format!("{}: {e}", self.shown()))?;
        if parse.entries.len() > cfg.limits.max_entries {
            return Err(format!(
                "{}: {} entries, more than the {}-entry limit ([limits] max_entries)",
                self.shown(),
                parse.entries.len(),
                cfg.limits.max_entries
            ));
        }
        if let Some((e, m)) = events {
            self.events = e;
            self.manifest = Some(m);
        }
        if self.last.as_deref() == Some(digest.as_str()) {
            return Ok(Polled::Unchanged);
        }
        self.last = Some(digest.clone());
        Ok(Polled::Changed {
            parse,
            digest,
            resync: true,
        })
    }

    fn shown(&self) -> String {
        match self.kind {
            MispSource::RestSearch => format!("{}/attributes/restSearch", self.base),
            _ => self.at("manifest.json"),
        }
    }

    /// A file of the feed: `{base}{name}` or `{dir}/{name}`.
    fn at(&self, name: &str) -> String {
        if self.base.ends_with('/') {
            format!("{}{name}", self.base)
        } else {
            format!("{}/{name}", self.base)
        }
    }

    async fn get(
        &self,
        name: &str,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<Vec<u8>, String> {
        let at = self.at(name);
        let loc = if at.starts_with("http://") || at.starts_with("https://") {
            Location::Http(&at)
        } else {
            Location::File(Path::new(&at))
        };
        match fetcher.fetch(loc, &Validators::default(), policy).await {
            Ok(Fetched::Body { bytes, .. }) => Ok(bytes),
            Ok(Fetched::NotModified) => Err(format!("{at}: unexpected 304")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A MISP feed: the manifest, then the events whose timestamp changed
    /// (`None`: the manifest is the last one's, nothing to do).
    #[allow(clippy::type_complexity)]
    async fn feed(
        &self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<Option<(FeedParse, String, BTreeMap<String, Held>, String)>, String> {
        let manifest_at = self.at("manifest.json");
        let bytes = self.get("manifest.json", fetcher, policy).await?;
        let manifest_digest = crate::intel::state::digest(&bytes);
        if self.manifest.as_deref() == Some(manifest_digest.as_str()) {
            return Ok(None);
        }
        let bad = |why: String| {
            format!(
                "{manifest_at}: not a MISP feed manifest ({why}); check the feed's URL or directory"
            )
        };
        let manifest: serde_json::Map<String, Value> = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad("expected an object of event UUIDs".into())),
            Err(e) => return Err(bad(e.to_string())),
        };
        let opts = f.feed_options(&cfg.limits);
        let mut next = BTreeMap::new();
        let mut fetched = 0usize;
        for (uuid, meta) in &manifest {
            if !is_uuid(uuid) {
                return Err(bad(format!(
                    "key '{}' is not an event UUID",
                    crate::escape::Escaped(&crate::intel::blocklist::clip(uuid, 64))
                )));
            }
            let Some(ts) = timestamp(meta) else {
                return Err(bad(format!("event {uuid} has no timestamp")));
            };
            if let Some(h) = self.events.get(uuid).filter(|h| h.timestamp == ts) {
                next.insert(uuid.clone(), h.clone());
                continue;
            }
            let name = format!("{uuid}.json");
            let body = self.get(&name, fetcher, policy).await?;
            fetched += 1;
            let parse =
                misp::parse(&body, &opts).map_err(|e| format!("{}: {e}", self.at(&name)))?;
            next.insert(
                uuid.clone(),
                Held {
                    timestamp: ts,
                    parse,
                },
            );
        }
        log::debug!(
            "feed {}: manifest lists {} events, {fetched} fetched",
            f.name,
            next.len()
        );
        let mut out = FeedParse::default();
        let mut digest_input = Vec::new();
        for (uuid, h) in &next {
            digest_input.extend_from_slice(uuid.as_bytes());
            digest_input.push(b' ');
            digest_input.extend_from_slice(h.timestamp.as_bytes());
            digest_input.push(b'\n');
            let mut p = h.parse.clone();
            for r in &mut p.rejected {
                r.text = format!("event {uuid}: {}", r.text);
            }
            for i in &mut p.ignored {
                i.text = format!("event {uuid}: {}", i.text);
            }
            out.entries.extend(p.entries);
            out.rejected.extend(p.rejected);
            out.ignored.extend(p.ignored);
            out.partial.extend(p.partial);
            out.unsupported += p.unsupported;
            out.skipped += p.skipped;
            out.records += p.records;
        }
        Ok(Some((
            out,
            crate::intel::state::digest(&digest_input),
            next,
            manifest_digest,
        )))
    }

    /// The API: restSearch, page by page.
    async fn search(
        &self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<(FeedParse, String), String> {
        let url = format!("{}/attributes/restSearch", self.base);
        let m = f.misp.clone().unwrap_or_default();
        let limit = m.page_size.unwrap_or(DEFAULT_PAGE_SIZE).max(1);
        let max_pages = m.max_pages.unwrap_or(DEFAULT_MAX_PAGES).max(1);
        let Some(key) = self.key.clone() else {
            return Err("format \"misp\" with the API needs api_key_file".into());
        };
        let headers = [
            (reqwest::header::AUTHORIZATION, key),
            (
                reqwest::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            ),
            (
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ];
        let opts = f.feed_options(&cfg.limits);
        let mut out = FeedParse::default();
        let mut digests = Vec::new();
        let mut previous: Option<String> = None;
        for page in 1..=max_pages + 1 {
            if page > max_pages {
                return Err(format!(
                    "{url}: still full pages after {max_pages} pages of {limit} attributes: a page loop, or more attributes than misp.max_pages allows (raise it, or narrow misp.filters)"
                ));
            }
            let mut body = serde_json::Map::new();
            for (k, v) in &m.filters {
                body.insert(
                    k.clone(),
                    serde_json::to_value(v).map_err(|e| format!("misp.filters.{k}: {e}"))?,
                );
            }
            body.insert("returnFormat".into(), "json".into());
            body.insert("type".into(), TYPES.iter().copied().collect());
            body.insert("includeEventTags".into(), true.into());
            body.insert("deleted".into(), false.into());
            if opts.misp.non_ids == misp::NonIds::Skip {
                body.insert("to_ids".into(), true.into());
            }
            body.insert("page".into(), page.into());
            body.insert("limit".into(), limit.into());
            let request = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
            let bytes = match fetcher
                .post_with_headers(&url, &headers, &request, policy)
                .await
            {
                Ok(Fetched::Body { bytes, .. }) => bytes,
                Ok(Fetched::NotModified) => return Err(format!("{url}: unexpected 304")),
                Err(
                    e @ FetchError::Status {
                        code: 401 | 403, ..
                    },
                ) => {
                    return Err(format!(
                        "{e}: the MISP server refused the key in {} (check it under Administration > Auth keys, and that it may search attributes)",
                        self.key_file
                            .as_deref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ));
                }
                Err(e) => return Err(e.to_string()),
            };
            let digest = crate::intel::state::digest(&bytes);
            let p = misp::parse(&bytes, &opts).map_err(|e| format!("{url}: page {page}: {e}"))?;
            let n = attributes_in(&bytes);
            if n > 0 && previous.as_deref() == Some(digest.as_str()) {
                return Err(format!(
                    "{url}: page {page} repeats page {}: the server ignores paging (a page loop)",
                    page - 1
                ));
            }
            previous = Some(digest.clone());
            digests.extend_from_slice(digest.as_bytes());
            let offset = out.records + out.rejected.len();
            out.entries.extend(p.entries);
            out.rejected.extend(p.rejected.into_iter().map(|mut r| {
                r.index += offset;
                r
            }));
            out.ignored.extend(p.ignored.into_iter().map(|mut i| {
                i.index += offset;
                i
            }));
            out.unsupported += p.unsupported;
            out.skipped += p.skipped;
            out.records += p.records;
            if out.entries.len() > cfg.limits.max_entries {
                return Err(format!(
                    "{url}: more than the {}-entry limit ([limits] max_entries) by page {page}",
                    cfg.limits.max_entries
                ));
            }
            if n < limit as usize {
                break;
            }
        }
        Ok((out, crate::intel::state::digest(&digests)))
    }
}

/// How many attributes a restSearch page holds (its `response.Attribute`).
fn attributes_in(bytes: &[u8]) -> usize {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("response")?
                .get("Attribute")?
                .as_array()
                .map(Vec::len)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_must_be_uuids() {
        assert!(is_uuid("5f1d5451-4111-4e64-be44-bf65c222857e"));
        for bad in ["", "../etc/passwd", "a/b", "x.json", "uuid with space"] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn sources() {
        let mk = |src: &str, key: bool| {
            let mut f = FeedConfig::new("m", src.parse().unwrap());
            f.format = crate::intel::config::FeedFormat::Fixed(crate::intel::feeds::Format::Misp);
            if key {
                f.api_key_file = Some("/nonexistent".into());
            }
            f
        };
        assert_eq!(
            mk("http://127.0.0.1:1/feed/", false).misp_source(),
            Some(MispSource::Feed)
        );
        assert_eq!(
            mk("http://127.0.0.1:1/feed/manifest.json", false).misp_source(),
            Some(MispSource::Feed)
        );
        assert_eq!(
            mk("http://127.0.0.1:1/event.json", false).misp_source(),
            Some(MispSource::Document)
        );
        assert_eq!(
            mk("http://127.0.0.1:1", true).misp_source(),
            Some(MispSource::RestSearch)
        );
        let p = MispPoller::new(&mk("http://127.0.0.1:1/feed/manifest.json", false))
            .unwrap()
            .unwrap();
        assert_eq!(p.at("x.json"), "http://127.0.0.1:1/feed/x.json");
        let e = MispPoller::new(&mk("http://127.0.0.1:1", true)).unwrap_err();
        assert!(e.starts_with("api_key_file /nonexistent"), "{e}");
    }
}
