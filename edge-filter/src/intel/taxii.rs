//! Polling a TAXII 2.1 collection (`format = "taxii"` with an `http(s)://`
//! source, the server's discovery URL).
//!
//! The first poll finds the collection: `GET {source}` (discovery) gives
//! the API roots (`api_root` from the config, else the discovery's
//! `default`, else its only one), `GET {api_root}collections/` the
//! collection whose `id` or `title` is the config's `collection`. Then
//! every poll asks `GET {api_root}collections/{id}/objects/?limit=N`, with
//! `Accept: application/taxii+json;version=2.1` and basic (`username` +
//! `password_file`) or bearer (`token_file`) authentication, and follows
//! the pages: by the server's `next` token while `more` is true, or, for a
//! server that pages without tokens, by `added_after` = the page's
//! `X-TAXII-Date-Added-Last`. Requests carrying a `next` token are not
//! retried (servers may hand a token's page out once: a retry after a lost
//! answer would silently skip it); a failed page fails the poll.
//!
//! Between polls the cursor is the last `X-TAXII-Date-Added-Last`: the next
//! poll asks only `added_after` it and applies the objects to what it
//! holds ([`Collection`]: newest version per STIX id). Without a cursor
//! (the first poll with no saved state, or after the cursor was lost) a
//! poll is a full fetch that replaces the set. The cursor and the set are
//! saved together, atomically, in the state directory
//! (`taxii-FEED.json`, read back with the checks of every state file), so
//! a restart resumes where it stopped; a saved state that is missing,
//! unreadable or from another configuration of the feed means a full
//! fetch. A cursor ahead of the server's clock (its `Date`) by more than
//! [`CLOCK_SLACK`] would hide every object added before it: the poll fails
//! saying so, the cursor is dropped, and the next poll fetches everything.
//!
//! A failed poll (server down, 5xx, a timeout, 401/403, an answer that is
//! not a TAXII envelope, over the size or entry limits, more pages than
//! `max_pages`) changes nothing held, nor the cursor.
//!
//! Objects deleted on the server (rather than revoked) are only noticed by
//! a full fetch: TAXII has no deletion feed.

use reqwest::header::{ACCEPT, AUTHORIZATION, DATE, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::escape::Escaped;
use crate::intel::config::{Config, FeedConfig};
use crate::intel::crowdsec::Polled;
use crate::intel::feeds::taxii::{Applied, Collection, envelope};
use crate::intel::feeds::{FeedParse, Unusable, parse_time};
use crate::intel::fetch::{FetchError, FetchPolicy, Fetched, Fetcher};
use crate::intel::secret::{SecretKind, read_secret};
use crate::intel::state::StateDir;

/// The TAXII 2.1 media type, asked for in `Accept`.
pub const MEDIA_TYPE: &str = "application/taxii+json;version=2.1";
/// Objects per page unless `page_size` says.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// Pages per poll unless `max_pages` says.
pub const DEFAULT_MAX_PAGES: u32 = 1000;
/// How far a cursor may be ahead of the server's clock before it is taken
/// for a wrong one.
pub const CLOCK_SLACK: time::Duration = time::Duration::minutes(5);
/// Version of the saved state's layout.
const STATE_VERSION: u32 = 1;

/// The response header holding the cursor.
fn added_last_header() -> HeaderName {
    HeaderName::from_static("x-taxii-date-added-last")
}

/// The state blob of feed `feed` (`taxii-FEED.json`).
pub fn state_name(feed: &str) -> String {
    format!("taxii-{feed}")
}

/// What is saved between runs.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    feed: String,
    /// [`Poller::fingerprint`] of the configuration that saved it.
    fingerprint: String,
    cursor: Option<String>,
    collection: Collection,
}

/// The credential a poll sends.
struct Auth {
    header: HeaderValue,
    /// `password_file /x` or `token_file /x`, for errors.
    file: String,
}

/// One TAXII feed's poller: where the collection is, the cursor, and the
/// indicators held.
pub struct Poller {
    discovery: String,
    collection_key: String,
    api_root: Option<String>,
    auth: Option<Auth>,
    page_size: u32,
    max_pages: u32,
    fingerprint: String,
    /// `{api_root}collections/{id}/objects/`, once found.
    objects_url: Option<String>,
    cursor: Option<String>,
    held: Collection,
    state: Option<StateDir>,
    feed: String,
    /// No poll has succeeded since start: the next success hands the whole
    /// set over even if it did not change.
    fresh: bool,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("discovery", &self.discovery)
            .field("collection", &self.collection_key)
            .field("objects_url", &self.objects_url)
            .field("cursor", &self.cursor)
            .field("held", &self.held.objects.len())
            .finish_non_exhaustive()
    }
}

/// `user:password` in base64 (RFC 4648, padded), for basic authentication.
fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(char::from(T[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `url` with `?limit=..&added_after=..&next=..`.
fn page_url(base: &str, limit: u32, added_after: Option<&str>, next: Option<&str>) -> String {
    let Ok(mut url) = reqwest::Url::parse(base) else {
        return base.to_string();
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("limit", &limit.to_string());
        if let Some(a) = added_after {
            q.append_pair("added_after", a);
        }
        if let Some(n) = next {
            q.append_pair("next", n);
        }
    }
    url.to_string()
}

/// `rel` resolved against `base`, ending in `/`.
fn join_dir(base: &str, rel: &str) -> Result<String, String> {
    let base = reqwest::Url::parse(base).map_err(|e| format!("{base}: {e}"))?;
    let mut u = base
        .join(rel)
        .map_err(|e| format!("API root '{}': {e}", Escaped(rel)))?
        .to_string();
    if !u.ends_with('/') {
        u.push('/');
    }
    Ok(u)
}

impl Poller {
    /// The poller of TAXII feed `f` (see [`FeedConfig::is_taxii_server`]),
    /// its credential read now.
    pub fn new(f: &FeedConfig) -> Result<Poller, String> {
        let auth = match (&f.username, &f.password_file, &f.token_file) {
            (Some(user), Some(file), _) => {
                let pw = read_secret(file, "password_file", SecretKind::Password, "the password")?;
                let mut v = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64(format!("{user}:{pw}").as_bytes())
                ))
                .map_err(|_| {
                    format!("password_file {} does not hold a password", file.display())
                })?;
                v.set_sensitive(true);
                Some(Auth {
                    header: v,
                    file: format!("username {user} + password_file {}", file.display()),
                })
            }
            (_, _, Some(file)) => {
                let token = read_secret(file, "token_file", SecretKind::Token, "the token")?;
                let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| format!("token_file {} does not hold a token", file.display()))?;
                v.set_sensitive(true);
                Some(Auth {
                    header: v,
                    file: format!("token_file {}", file.display()),
                })
            }
            _ => None,
        };
        let Some(collection_key) = f.collection.clone() else {
            return Err("format \"taxii\" needs collection".into());
        };
        let source = f.source.to_string();
        Ok(Poller {
            fingerprint: format!(
                "{source}|{collection_key}|{:?}|{}|{}",
                f.api_root,
                f.action.name(),
                f.url_ip_hosts
            ),
            discovery: source,
            collection_key,
            api_root: f.api_root.clone(),
            auth,
            page_size: f.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
            max_pages: f.max_pages.unwrap_or(DEFAULT_MAX_PAGES),
            objects_url: None,
            cursor: None,
            held: Collection::new(),
            state: None,
            feed: f.name.clone(),
            fresh: true,
        })
    }

    /// Save the cursor and the set in `state` after each poll that changes
    /// them, resuming from what it holds now: a saved state of this feed
    /// and configuration is taken, anything else (none, unreadable, not
    /// trusted, another configuration) means the next poll is a full fetch
    /// (logged).
    pub fn resume_from(&mut self, state: StateDir) {
        let name = state_name(&self.feed);
        match state.load_json::<Saved>(&name) {
            Ok(Some(s))
                if s.version == STATE_VERSION
                    && s.feed == self.feed
                    && s.fingerprint == self.fingerprint =>
            {
                log::info!(
                    "feed {}: resuming the TAXII collection from the saved cursor {} ({} objects held)",
                    self.feed,
                    s.cursor
                        .as_deref()
                        .map_or("(none)".into(), |c| Escaped(c).to_string()),
                    s.collection.objects.len()
                );
                self.cursor = s.cursor;
                self.held = s.collection;
            }
            Ok(Some(_)) => log::info!(
                "feed {}: the saved TAXII state is from another configuration of the feed: fetching the whole collection",
                self.feed
            ),
            Ok(None) => {}
            Err(e) => log::warn!(
                "feed {}: {e}: fetching the whole collection instead",
                self.feed
            ),
        }
        self.state = Some(state);
    }

    /// The cursor the next poll sends (`None`: a full fetch).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![(ACCEPT, HeaderValue::from_static(MEDIA_TYPE))];
        if let Some(a) = &self.auth {
            h.push((AUTHORIZATION, a.header.clone()));
        }
        h
    }

    /// A failed request, with what to fix when the status says.
    fn explain(&self, e: FetchError) -> String {
        match &e {
            FetchError::Status {
                code: 401 | 403, ..
            } => match &self.auth {
                Some(a) => format!(
                    "{e}: the TAXII server refused the credentials ({}): check them and the user's access to the collection",
                    a.file
                ),
                None => format!(
                    "{e}: the TAXII server wants credentials: set username + password_file, or token_file"
                ),
            },
            FetchError::Status {
                code: 406 | 415, ..
            } => format!("{e}: the server does not serve TAXII 2.1 ({MEDIA_TYPE}) there"),
            _ => e.to_string(),
        }
    }

    async fn get_json(
        &self,
        url: &str,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<(Vec<u8>, HeaderMap), String> {
        match fetcher
            .get_with_response_headers(url, &self.headers(), policy)
            .await
        {
            Ok((Fetched::Body { bytes, .. }, h)) => Ok((bytes, h)),
            Ok((Fetched::NotModified, _)) => Err(format!("{url}: unexpected 304")),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// Discovery, API root, collection: the objects URL.
    async fn resolve(&self, fetcher: &Fetcher, policy: &FetchPolicy) -> Result<String, String> {
        let (bytes, _) = self.get_json(&self.discovery, fetcher, policy).await?;
        let d: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a TAXII discovery answer: {e}", self.discovery))?;
        let root = match &self.api_root {
            Some(r) => join_dir(&self.discovery, r)?,
            None => {
                let roots: Vec<&str> = d
                    .get("api_roots")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match (d.get("default").and_then(Value::as_str), roots.as_slice()) {
                    (Some(def), _) => join_dir(&self.discovery, def)?,
                    (None, [only]) => join_dir(&self.discovery, only)?,
                    (None, []) => {
                        return Err(format!(
                            "{}: the discovery lists no API root: set api_root",
                            self.discovery
                        ));
                    }
                    (None, many) => {
                        return Err(format!(
                            "{}: the discovery lists {} API roots and no default: set api_root to one of {}",
                            self.discovery,
                            many.len(),
                            many.iter()
                                .map(|r| Escaped(r).to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
        };
        let url = format!("{root}collections/");
        let (bytes, _) = self.get_json(&url, fetcher, policy).await?;
        let c: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{url}: not a TAXII collections answer: {e}"))?;
        let all: Vec<&Value> = c
            .get("collections")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let field = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        let key = self.collection_key.trim();
        let by_id: Vec<&&Value> = all
            .iter()
            .filter(|c| field(c, "id").as_deref() == Some(key))
            .collect();
        let by_title: Vec<&&Value> = all
            .iter()
            .filter(|c| field(c, "title").as_deref() == Some(key))
            .collect();
        let found = match (by_id.as_slice(), by_title.as_slice()) {
            ([one], _) | ([], [one]) => *one,
            ([], []) => {
                return Err(format!(
                    "{url}: no collection has the id or title '{}' (there are: {})",
                    Escaped(key),
                    all.iter()
                        .map(|c| format!(
                            "{} \"{}\"",
                            Escaped(&field(c, "id").unwrap_or_default()),
                            Escaped(&field(c, "title").unwrap_or_default())
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            _ => {
                return Err(format!(
                    "{url}: several collections are titled '{}': set collection to the id",
                    Escaped(key)
                ));
            }
        };
        if found.get("can_read") == Some(&Value::Bool(false)) {
            return Err(format!(
                "{url}: the collection '{}' cannot be read with these credentials (can_read is false)",
                Escaped(key)
            ));
        }
        let id = field(found, "id").unwrap_or_default();
        if id.is_empty() || id.contains(['/', '?', '#']) {
            return Err(format!("{url}: the collection has no usable id"));
        }
        Ok(format!("{root}collections/{id}/objects/"))
    }

    /// Poll once. On failure nothing held changes (nor the cursor), and the
    /// collection is looked up again at the next poll.
    pub async fn poll(
        &mut self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<Polled, String> {
        let r = self.try_poll(f, cfg, fetcher, policy).await;
        if r.is_err() {
            self.objects_url = None;
        }
        r
    }

    async fn try_poll(
        &mut self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<Polled, String> {
        let url = match &self.objects_url {
            Some(u) => u.clone(),
            None => {
                let u = self.resolve(fetcher, policy).await?;
                self.objects_url = Some(u.clone());
                u
            }
        };
        let mut opts = f.feed_options(&cfg.limits);
        let now = OffsetDateTime::now_utc();
        opts.now = Some(now);
        let full = self.cursor.is_none();
        let mut next = if full {
            Collection::new()
        } else {
            self.held.clone()
        };
        let mut applied = Applied::default();
        let mut added_after = self.cursor.clone();
        let mut token: Option<String> = None;
        let mut new_cursor = None;
        let mut total = 0usize;
        let mut digests = String::new();
        let mut index = 1;
        let mut pages = 0u32;
        loop {
            if pages == self.max_pages {
                return Err(format!(
                    "{url}: the server still has `more` after {pages} pages (max_pages): its paging does not end, or the collection is larger than page_size x max_pages"
                ));
            }
            pages += 1;
            let purl = page_url(
                &url,
                self.page_size,
                added_after.as_deref(),
                token.as_deref(),
            );
            // A `next` token may be good for one answer only: a retry
            // after a lost answer could get the page after it.
            let p = if token.is_some() {
                FetchPolicy {
                    retries: 0,
                    ..*policy
                }
            } else {
                *policy
            };
            let (bytes, headers) = self.get_json(&purl, fetcher, &p).await?;
            total += bytes.len();
            if total > cfg.limits.max_bytes {
                return Err(format!(
                    "{url}: the answers of one poll exceed the {}-byte limit ([limits] max_bytes) after {pages} pages",
                    cfg.limits.max_bytes
                ));
            }
            digests.push_str(&crate::intel::state::digest(&bytes));
            let server_now = headers
                .get(DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()
                })
                .unwrap_or(now);
            if pages == 1
                && let Some(c) = &added_after
                && parse_time(c).is_ok_and(|t| t > server_now + CLOCK_SLACK)
            {
                let c = Escaped(c).to_string();
                self.cursor = None;
                return Err(format!(
                    "{url}: the cursor added_after={c} is ahead of the server's clock ({}): objects added before it would never be fetched; it is dropped and the next poll fetches the whole collection (if the server's clock was wrong, fix it)",
                    crate::intel::feeds::fmt_time(server_now)
                ));
            }
            let env = envelope(&bytes).map_err(|e| format!("{purl}: {e}"))?;
            next.apply(&env.objects, index, &opts, &mut applied)
                .map_err(|e| format!("{url}: {e}"))?;
            index += env.objects.len();
            let last = headers
                .get(added_last_header())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(l) = &last {
                match parse_time(l) {
                    Ok(t) if t > server_now + CLOCK_SLACK => log::warn!(
                        "feed {}: X-TAXII-Date-Added-Last {} is ahead of the server's clock: not used as the cursor",
                        self.feed,
                        Escaped(l)
                    ),
                    Ok(_) => new_cursor = Some(l.clone()),
                    Err(e) => {
                        return Err(format!("{purl}: X-TAXII-Date-Added-Last: {e}"));
                    }
                }
            }
            if !env.more {
                break;
            }
            match env.next {
                Some(t) => token = Some(t),
                None => {
                    // Paging by date: the page's last addition.
                    match last {
                        Some(l) if added_after.as_deref() != Some(l.as_str()) => {
                            added_after = Some(l);
                            token = None;
                        }
                        _ => {
                            return Err(format!(
                                "{purl}: `more` without `next` nor a new X-TAXII-Date-Added-Last: the server's paging cannot go on"
                            ));
                        }
                    }
                }
            }
        }
        if full {
            Unusable::check(
                applied.parse.records,
                applied.parse.rejected.len(),
                f.max_rejected_share(&cfg.safety),
                "objects",
                || format!("object {}", applied.parse.rejected[0]),
            )
            .map_err(|e| format!("{url}: {e}"))?;
        }
        next.prune(now);
        for i in applied.parse.ignored.iter().take(5) {
            log::info!(
                "feed {}: object {}: {}: {}",
                f.name,
                i.index,
                Escaped(&i.reason),
                Escaped(&i.text)
            );
        }
        let changed = next.entries() != self.held.entries();
        let cursor = new_cursor.or_else(|| self.cursor.clone());
        let saved_changed = next != self.held || cursor != self.cursor;
        self.held = next;
        self.cursor = cursor;
        if saved_changed && let Some(state) = self.state.clone() {
            let saved = Saved {
                version: STATE_VERSION,
                feed: self.feed.clone(),
                fingerprint: self.fingerprint.clone(),
                cursor: self.cursor.clone(),
                collection: self.held.clone(),
            };
            let name = state_name(&self.feed);
            let r = tokio::task::spawn_blocking(move || state.save_json(&name, &saved)).await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!(
                    "feed {}: the TAXII cursor is not saved ({e}): a restart fetches again from the last saved one",
                    self.feed
                ),
                Err(e) => log::warn!("feed {}: saving the TAXII cursor: {e}", self.feed),
            }
        }
        let fresh = std::mem::replace(&mut self.fresh, false);
        if !changed && !fresh && !full {
            return Ok(Polled::Unchanged);
        }
        Ok(Polled::Changed {
            parse: FeedParse {
                entries: self.held.entries(),
                records: self.held.objects.len(),
                ..applied.parse
            },
            digest: crate::intel::state::digest(digests.as_bytes()),
            resync: full,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// One scripted answer: status, extra headers, body, delay before it.
    #[derive(Clone)]
    struct Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
        delay: Duration,
        /// Announce more bytes than sent (a cut answer).
        cut: bool,
    }

    fn ok(body: &str) -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
            cut: false,
        }
    }

    /// A TAXII server on loopback: discovery and collections answered
    /// from the script below, objects requests from a queue (the last
    /// answer repeats). Keeps every request line.
    struct Server {
        base: String,
        objects: Arc<Mutex<VecDeque<Answer>>>,
        seen: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(objects: Vec<Answer>) -> Server {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let objects = Arc::new(Mutex::new(VecDeque::from(objects)));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (q, s, b) = (objects.clone(), seen.clone(), base.clone());
            let task = tokio::spawn(async move {
                while let Ok((mut sock, _)) = l.accept().await {
                    let (q, s, b) = (q.clone(), s.clone(), b.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 8192];
                        let mut n = 0;
                        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut buf[n..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => n += k,
                            }
                        }
                        let head = String::from_utf8_lossy(&buf[..n]).to_string();
                        let line = head.lines().next().unwrap_or("").to_string();
                        s.lock().unwrap().push(head.clone());
                        let a = if line.contains(" /taxii2/ ") {
                            ok(&format!(
                                r#"{{"api_roots":["{b}/api1/"],"default":"{b}/api1/"}}"#
                            ))
                        } else if line.contains("/api1/collections/ ") {
                            ok(
                                r#"{"collections":[{"id":"c1","title":"Indicators","can_read":true}]}"#,
                            )
                        } else {
                            let mut q = q.lock().unwrap();
                            if q.len() > 1 {
                                q.pop_front().unwrap()
                            } else {
                                q[0].clone()
                            }
                        };
                        tokio::time::sleep(a.delay).await;
                        let mut out = format!(
                            "HTTP/1.1 {} X\r\nContent-Type: application/taxii+json;version=2.1\r\nContent-Length: {}\r\nConnection: close\r\n",
                            a.status,
                            a.body.len() + if a.cut { 100 } else { 0 }
                        );
                        for (k, v) in &a.headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        out.push_str(&a.body);
                        let _ = sock.write_all(out.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            Server {
                base,
                objects,
                seen,
                task,
            }
        }

        fn script(&self, answers: Vec<Answer>) {
            *self.objects.lock().unwrap() = VecDeque::from(answers);
        }

        /// Request lines of objects requests.
        fn object_requests(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter_map(|h| h.lines().next())
                .filter(|l| l.contains("/objects/"))
                .map(str::to_string)
                .collect()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn page(objects: &[(u32, &str)], more: bool, next: Option<&str>, last: &str) -> Answer {
        let objs: Vec<Value> = objects
            .iter()
            .map(|(n, ip)| {
                serde_json::json!({"type": "indicator", "spec_version": "2.1",
                    "id": format!("indicator--{n}"), "created": "2026-01-01T00:00:00Z",
                    "modified": "2026-01-01T00:00:00Z",
                    "pattern": format!("[ipv4-addr:value = '{ip}']"), "pattern_type": "stix",
                    "valid_from": "2026-01-01T00:00:00Z"})
            })
            .collect();
        let mut body = serde_json::json!({"objects": objs, "more": more});
        if let Some(n) = next {
            body["next"] = n.into();
        }
        let mut a = ok(&body.to_string());
        a.headers
            .push(("X-TAXII-Date-Added-Last", last.to_string()));
        a
    }

    fn setup(base: &str, extra: &str) -> (FeedConfig, Config, FetchPolicy) {
        let text = format!(
            "[[interface]]\nname = \"eth0\"\n[limits]\nretries = 1\ntimeout = \"1s\"\n{extra}\n[[feed]]\nname = \"tx\"\nformat = \"taxii\"\nsource = \"{base}/taxii2/\"\ncollection = \"Indicators\"\npage_size = 2\nmax_pages = 5\n"
        );
        let cfg = Config::from_str_named(&text, "t.toml").unwrap();
        let policy = FetchPolicy {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..crate::intel::intake::policy(&cfg.limits)
        };
        (cfg.feeds[0].clone(), cfg, policy)
    }

    fn nets(p: &Polled) -> Vec<String> {
        match p {
            Polled::Changed { parse, .. } => {
                parse.entries.iter().map(|e| e.entry.to_string()).collect()
            }
            Polled::Unchanged => vec!["(unchanged)".into()],
        }
    }

    const T1: &str = "2026-12-05T10:00:00.000001Z";
    const T2: &str = "2026-12-05T10:00:01.000001Z";

    /// Every fault fails the poll with a message saying what, holds what
    /// was held and the cursor, and the next good poll goes on from the
    /// cursor.
    #[tokio::test]
    async fn faults_change_nothing_and_the_next_poll_recovers() {
        let srv = Server::start(vec![
            page(
                &[(1, "192.0.2.1"), (2, "192.0.2.2")],
                true,
                Some("tok1"),
                T1,
            ),
            page(&[(3, "192.0.2.3")], false, None, T2),
        ])
        .await;
        let (f, cfg, policy) = setup(&srv.base, "");
        let fetcher = Fetcher::new_direct().unwrap();
        let mut p = Poller::new(&f).unwrap();
        let got = p.poll(&f, &cfg, &fetcher, &policy).await.unwrap();
        assert_eq!(nets(&got), ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
        assert!(matches!(got, Polled::Changed { resync: true, .. }));
        assert_eq!(p.cursor(), Some(T2));
        let reqs = srv.object_requests();
        assert!(reqs[0].contains("?limit=2 "), "{reqs:?}");
        assert!(reqs[1].contains("?limit=2&next=tok1 "), "{reqs:?}");
        let held = p.held.clone();

        let mut cut = ok(r#"{"objects":[{"type":"indicator""#);
        cut.cut = true;
        let mut slow = ok("{}");
        slow.delay = Duration::from_secs(3);
        let mut e503 = ok("");
        e503.status = 503;
        let mut e403 = ok("");
        e403.status = 403;
        let endless = page(&[(9, "192.0.2.9")], true, Some("again"), T2);
        for (what, answers, want) in [
            ("5xx", vec![e503], "HTTP 503"),
            ("403", vec![e403], "wants credentials"),
            (
                "not JSON",
                vec![ok("<html>busy</html>")],
                "not a TAXII envelope",
            ),
            ("truncated", vec![cut], "body truncated"),
            ("timeout", vec![slow], "no complete response within 1s"),
            ("endless next", vec![endless], "after 5 pages (max_pages)"),
        ] {
            srv.script(answers);
            let e = p.poll(&f, &cfg, &fetcher, &policy).await.unwrap_err();
            assert!(e.contains(want), "{what}: {e}");
            assert_eq!(p.held, held, "{what}");
            assert_eq!(p.cursor(), Some(T2), "{what}");
        }
        // Recovery: added_after the cursor, applied onto what is held.
        srv.script(vec![page(
            &[(4, "192.0.2.4")],
            false,
            None,
            "2026-12-05T10:00:02Z",
        )]);
        let before = srv.object_requests().len();
        let got = p.poll(&f, &cfg, &fetcher, &policy).await.unwrap();
        assert_eq!(
            nets(&got),
            ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
        );
        assert!(matches!(got, Polled::Changed { resync: false, .. }));
        let reqs = srv.object_requests();
        assert!(
            reqs[before..]
                .iter()
                .all(|r| r.contains("added_after=2026-12-05T10%3A00%3A01.000001Z")),
            "{reqs:?}"
        );
        // An empty answer: unchanged, cursor kept.
        srv.script(vec![ok("{}")]);
        let got = p.poll(&f, &cfg, &fetcher, &policy).await.unwrap();
        assert!(matches!(got, Polled::Unchanged));
        assert_eq!(p.cursor(), Some("2026-12-05T10:00:02Z"));
    }

    #[tokio::test]
    async fn oversized_answers_and_paging_by_date() {
        let big = page(&[(1, "192.0.2.1"), (2, "192.0.2.2")], false, None, T1);
        let srv = Server::start(vec![big]).await;
        let (f, cfg, policy) = setup(&srv.base, "max_bytes = 100");
        let fetcher = Fetcher::new_direct().unwrap();
        let mut p = Poller::new(&f).unwrap();
        let e = p.poll(&f, &cfg, &fetcher, &policy).await.unwrap_err();
        assert!(e.contains("100-byte limit"), "{e}");
        assert!(p.held.objects.is_empty() && p.cursor().is_none());
        // `more` without `next`: the next page by added_after; a server
        // that does not move the date on cannot page.
        let (f, cfg, policy) = setup(&srv.base, "");
        srv.script(vec![
            page(&[(1, "192.0.2.1")], true, None, T1),
            page(&[(2, "192.0.2.2")], false, None, T2),
        ]);
        let got = p.poll(&f, &cfg, &fetcher, &policy).await.unwrap();
        assert_eq!(nets(&got), ["192.0.2.1", "192.0.2.2"]);
        let reqs = srv.object_requests();
        assert!(
            reqs.last()
                .unwrap()
                .contains("added_after=2026-12-05T10%3A00%3A00.000001Z"),
            "{reqs:?}"
        );
        srv.script(vec![page(&[(1, "192.0.2.1")], true, None, T2)]);
        let e = p.poll(&f, &cfg, &fetcher, &policy).await.unwrap_err();
        assert!(e.contains("paging cannot go on"), "{e}");
    }

    #[tokio::test]
    async fn the_cursor_is_saved_and_resumed() {
        let srv = Server::start(vec![page(&[(1, "192.0.2.1")], false, None, T1)]).await;
        let (f, cfg, policy) = setup(&srv.base, "");
        let dir = std::env::temp_dir().join(format!("ef-taxii-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let fetcher = Fetcher::new_direct().unwrap();
        let mut p = Poller::new(&f).unwrap();
        p.resume_from(state.clone());
        p.poll(&f, &cfg, &fetcher, &policy).await.unwrap();
        // A new poller (a restart) resumes: the first poll asks added_after
        // and hands over the whole set though nothing is new.
        srv.script(vec![ok("{}")]);
        let mut q = Poller::new(&f).unwrap();
        q.resume_from(state.clone());
        assert_eq!(q.cursor(), Some(T1));
        let got = q.poll(&f, &cfg, &fetcher, &policy).await.unwrap();
        assert_eq!(nets(&got), ["192.0.2.1"]);
        assert!(matches!(got, Polled::Changed { resync: false, .. }));
        assert!(
            srv.object_requests()
                .last()
                .unwrap()
                .contains("added_after=")
        );
        // Another configuration of the feed: its state is not taken.
        let mut other = f.clone();
        other.action = crate::entry::Action::Monitor;
        let mut r = Poller::new(&other).unwrap();
        r.resume_from(state);
        assert_eq!(r.cursor(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn base64_as_rfc4648() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc, "{plain}");
        }
    }

    #[test]
    fn page_urls() {
        let u = "http://127.0.0.1:5000/api1/collections/c1/objects/";
        assert_eq!(
            page_url(u, 2, None, None),
            "http://127.0.0.1:5000/api1/collections/c1/objects/?limit=2"
        );
        assert_eq!(
            page_url(u, 2, Some("2026-12-05T12:00:00.123456Z"), Some("ab-c")),
            "http://127.0.0.1:5000/api1/collections/c1/objects/?limit=2&added_after=2026-12-05T12%3A00%3A00.123456Z&next=ab-c"
        );
        assert_eq!(
            join_dir("http://h:1/taxii2/", "/api1").unwrap(),
            "http://h:1/api1/"
        );
        assert_eq!(
            join_dir("http://h:1/taxii2/", "http://other/api2/").unwrap(),
            "http://other/api2/"
        );
    }
}
