//! Feed transport: fetching a feed's bytes from a local file or over
//! HTTP(S), only when it changed.
//!
//! [`Fetcher::fetch`] takes where the feed is ([`Location`]), what was known
//! about the copy in hand ([`Validators`]) and the limits ([`FetchPolicy`]),
//! and answers [`Fetched::NotModified`] or [`Fetched::Body`] with the new
//! validators to keep for next time.
//!
//! - **Local files** are "watched" by polling: the agent calls `fetch` on a
//!   short interval, and a file whose modification time (nanoseconds) and
//!   length are those of [`Validators::file_stamp`] is
//!   [`Fetched::NotModified`] after a single `stat`, without being read. A
//!   changed file is read whole (at most [`FetchPolicy::max_bytes`]); if it
//!   changes while being read it is read again, and a file that keeps
//!   changing is an [`FetchError::Io`] for this round (the next poll tries
//!   again). Writers should replace feed files atomically (write a temporary
//!   file, then rename it over the feed) so a reader never sees half a file.
//! - **HTTP(S)** uses reqwest with rustls (ring, Mozilla's root store from
//!   `webpki-roots`; no OpenSSL). Requests are conditional
//!   (`If-None-Match` from [`Validators::etag`], `If-Modified-Since` from
//!   [`Validators::last_modified`]) and a `304 Not Modified` is
//!   [`Fetched::NotModified`]. Every attempt is bounded by
//!   [`FetchPolicy::timeout`] (connecting, headers and the whole body) and
//!   [`FetchPolicy::connect_timeout`]; the body is refused as soon as it is
//!   known to exceed [`FetchPolicy::max_bytes`] (from `Content-Length` before
//!   reading, or while streaming). Transient failures (HTTP 5xx and 429,
//!   timeouts, connection failures, truncated bodies) are retried up to
//!   [`FetchPolicy::retries`] times with exponential backoff and full jitter,
//!   or after the server's `Retry-After` (seconds, capped by
//!   [`FetchPolicy::backoff_max`]); other statuses, oversized bodies and
//!   local errors are not retried. `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`
//!   are honoured by [`Fetcher::new`]. A body with neither
//!   `Content-Length` nor chunked framing ends when the server closes the
//!   connection, so a cut connection cannot be told from its end: it comes
//!   back marked [`Framing::ConnectionClose`] and the parser rejects its
//!   last line when it has no newline.
//!
//! Errors name the location (URLs with passwords and credential-like query
//! parameters masked, see [`Location`]'s `Display`) and how many attempts
//! were made, e.g. `https://feeds.example/drop.txt: HTTP 503 Service
//! Unavailable after 4 attempts`.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, RETRY_AFTER, TRANSFER_ENCODING,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a feed is fetched from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location<'a> {
    /// A local file, polled for changes.
    File(&'a Path),
    /// An `http://` or `https://` URL.
    Http(&'a str),
}

impl fmt::Display for Location<'_> {
    /// The path, or the URL with its password and credential-like query
    /// parameters (`key`, `token`, `secret`, `auth`, `pass`, `sig`, ...)
    /// replaced by `***`, so it can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Http(u) => f.write_str(&redact_url(u)),
        }
    }
}

/// What is known about the copy of a feed in hand, to ask only for a newer
/// one. Persisted with the last-known-good copy; pass
/// `Validators::default()` when there is no copy in hand (a feed must never
/// be answered "not modified" when its body was lost).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// HTTP `ETag` of the copy, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// HTTP `Last-Modified` of the copy, sent back as `If-Modified-Since`.
    pub last_modified: Option<String>,
    /// Local file: modification time (nanoseconds since the Unix epoch) and
    /// length in bytes when it was read.
    pub file_stamp: Option<(i64, u64)>,
}

impl Validators {
    /// Whether there is nothing to make a request conditional on.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none() && self.file_stamp.is_none()
    }
}

/// The outcome of a successful fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The copy described by the validators passed in is still current.
    NotModified,
    /// A new copy.
    Body {
        /// The feed's bytes (at most [`FetchPolicy::max_bytes`]).
        bytes: Vec<u8>,
        /// What to pass to the next fetch of this feed.
        validators: Validators,
        /// Whether the transport proved the bytes whole.
        framing: Framing,
    },
}

/// Whether the end of a body is known to be its real end.
///
/// HTTP/1 has three ways to end a body: `Content-Length` (the client knows
/// how much to expect, and a shorter body is [`FetchError::Truncated`]),
/// chunked encoding (a final empty chunk ends it; a connection that closes
/// before it is [`FetchError::Truncated`] too) and neither, where the body
/// simply ends when the server closes the connection. In that last case a
/// connection cut by a proxy, a crash or a network fault looks exactly like
/// the end, so the last bytes may be half a line: the parser is told
/// ([`crate::intel::feeds::FeedOptions::end_unproven`]) and rejects a last line
/// without a newline instead of trusting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Proven whole: a local file read at a stable size, an HTTP body of
    /// its `Content-Length`, a chunked body with its final chunk, or an
    /// HTTP/2 or later stream (framed by the protocol).
    Proven,
    /// An HTTP/1 body delimited only by the connection closing.
    ConnectionClose,
}

impl Framing {
    /// Whether the body may have been cut short unnoticed.
    pub fn end_unproven(self) -> bool {
        self == Framing::ConnectionClose
    }
}

/// Limits and retry behaviour of one fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Longest one HTTP attempt may take, from connecting to the end of the
    /// body. Default 30 s.
    pub timeout: Duration,
    /// Longest the TCP+TLS connection set-up may take. Default 10 s.
    pub connect_timeout: Duration,
    /// Largest accepted body or file, in bytes. Default 64 MiB (the
    /// parsers' default [`crate::intel::feeds::FeedLimits::max_bytes`]).
    pub max_bytes: u64,
    /// How many times a transient HTTP failure is retried (so at most
    /// `retries + 1` attempts). Default 3.
    pub retries: u32,
    /// Backoff before the first retry; doubles with each retry, and the
    /// actual sleep is uniformly random between zero and that ("full
    /// jitter"). Default 500 ms.
    pub backoff_base: Duration,
    /// Upper bound of any sleep between attempts, including one asked for
    /// with `Retry-After`. Default 30 s.
    pub backoff_max: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_bytes: 64 << 20,
            retries: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why a fetch failed. Every variant names the location (see [`Location`]'s
/// `Display`); the HTTP ones say how many attempts were made when there was
/// more than one.
#[derive(Debug, Error)]
pub enum FetchError {
    /// A local feed file could not be read (missing, permission denied, ...)
    /// or kept changing while being read.
    #[error("{location}: {source}")]
    Io {
        /// The file.
        location: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file or body is larger than [`FetchPolicy::max_bytes`]. Not
    /// retried.
    #[error("{location}: larger than the {limit}-byte limit")]
    TooLarge {
        /// The file or URL.
        location: String,
        /// The limit.
        limit: u64,
    },
    /// The server answered with a status other than 2xx or 304 (or a 304
    /// to an unconditional request). 5xx and 429 were retried, the rest not.
    #[error("{location}: HTTP {code}{}{}", reason(*.code), after(*.attempts))]
    Status {
        /// The URL.
        location: String,
        /// The HTTP status of the last attempt.
        code: u16,
        /// Attempts made.
        attempts: u32,
        /// The last response's `Retry-After`, when it had one.
        retry_after: Option<Duration>,
    },
    /// No complete response within [`FetchPolicy::timeout`] (or no
    /// connection within [`FetchPolicy::connect_timeout`]). Retried.
    #[error("{location}: no complete response within {timeout:?}{}", after(*.attempts))]
    Timeout {
        /// The URL.
        location: String,
        /// The limit that was hit.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// The connection ended before the whole body (as announced by
    /// `Content-Length` or chunked encoding) arrived. Retried.
    #[error("{location}: body truncated: {detail}{}", after(*.attempts))]
    Truncated {
        /// The URL.
        location: String,
        /// What the HTTP stack said.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Connecting failed (refused, DNS, TLS handshake or certificate) or the
    /// connection failed before a response. Retried.
    #[error("{location}: connection failed: {detail}{}", after(*.attempts))]
    Connect {
        /// The URL.
        location: String,
        /// What the HTTP stack said.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Anything else (an invalid URL, too many redirects, the HTTP client
    /// could not be built). Not retried.
    #[error("{location}: {detail}")]
    Other {
        /// The URL (empty when building the client failed).
        location: String,
        /// What went wrong.
        detail: String,
    },
}

impl FetchError {
    /// The file or (masked) URL the error is about.
    pub fn location(&self) -> &str {
        match self {
            FetchError::Io { location, .. }
            | FetchError::TooLarge { location, .. }
            | FetchError::Status { location, .. }
            | FetchError::Timeout { location, .. }
            | FetchError::Truncated { location, .. }
            | FetchError::Connect { location, .. }
            | FetchError::Other { location, .. } => location,
        }
    }

    /// How long the server asked to wait (`Retry-After` on the last
    /// response), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// How many attempts were made (1 for errors that are never retried).
    pub fn attempts(&self) -> u32 {
        match self {
            FetchError::Status { attempts, .. }
            | FetchError::Timeout { attempts, .. }
            | FetchError::Truncated { attempts, .. }
            | FetchError::Connect { attempts, .. } => *attempts,
            _ => 1,
        }
    }
}

/// `" Service Unavailable"` for 503, empty for unknown codes.
fn reason(code: u16) -> String {
    StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

/// `" after N attempts"` when there was more than one.
fn after(attempts: u32) -> String {
    if attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

/// The outcome of one failed HTTP attempt, before it is known whether it
/// is the last.
#[derive(Debug)]
enum Failure {
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    Timeout(Duration),
    Truncated(String),
    Connect(String),
    TooLarge,
    Other(String),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Status { code, .. } => *code >= 500 || *code == 429,
            Failure::Timeout(_) | Failure::Truncated(_) | Failure::Connect(_) => true,
            Failure::TooLarge | Failure::Other(_) => false,
        }
    }

    fn into_error(self, location: String, attempts: u32, policy: &FetchPolicy) -> FetchError {
        match self {
            Failure::Status { code, retry_after } => FetchError::Status {
                location,
                code,
                attempts,
                retry_after,
            },
            Failure::Timeout(timeout) => FetchError::Timeout {
                location,
                timeout,
                attempts,
            },
            Failure::Truncated(detail) => FetchError::Truncated {
                location,
                detail,
                attempts,
            },
            Failure::Connect(detail) => FetchError::Connect {
                location,
                detail,
                attempts,
            },
            Failure::TooLarge => FetchError::TooLarge {
                location,
                limit: policy.max_bytes,
            },
            Failure::Other(detail) => FetchError::Other { location, detail },
        }
    }
}

/// Fetches feeds. One per agent: it holds the HTTP connection pool, so
/// share it (it is `Sync`) rather than creating one per fetch.
#[derive(Debug)]
pub struct Fetcher {
    /// The client for [`FetchPolicy::default`]'s connect timeout.
    client: reqwest::Client,
    /// Clients for other connect timeouts, built on first use (reqwest only
    /// sets the connect timeout per client).
    others: Mutex<Vec<(Duration, reqwest::Client)>>,
    /// Whether proxy environment variables are honoured.
    env_proxy: bool,
}

impl Fetcher {
    /// A fetcher that honours `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and
    /// `NO_PROXY` like curl does.
    pub fn new() -> Result<Self, FetchError> {
        Self::build(true)
    }

    /// A fetcher that always connects directly, whatever the proxy
    /// environment variables say.
    pub fn new_direct() -> Result<Self, FetchError> {
        Self::build(false)
    }

    fn build(env_proxy: bool) -> Result<Self, FetchError> {
        Ok(Fetcher {
            client: make_client(FetchPolicy::default().connect_timeout, env_proxy)?,
            others: Mutex::new(Vec::new()),
            env_proxy,
        })
    }

    fn client_for(&self, connect_timeout: Duration) -> Result<reqwest::Client, FetchError> {
        if connect_timeout == FetchPolicy::default().connect_timeout {
            return Ok(self.client.clone());
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = others.iter().find(|(t, _)| *t == connect_timeout) {
            return Ok(c.clone());
        }
        let c = make_client(connect_timeout, self.env_proxy)?;
        others.push((connect_timeout, c.clone()));
        Ok(c)
    }

    /// Fetch the feed at `loc` unless it is still what `prev` describes.
    ///
    /// Local files are compared by modification time and length and read
    /// only when changed; this is cheap enough to call every few seconds,
    /// which is how file feeds are watched. HTTP(S) feeds get a conditional
    /// GET with retries (see the [module documentation](self)).
    pub async fn fetch(
        &self,
        loc: Location<'_>,
        prev: &Validators,
        policy: &FetchPolicy,
    ) -> Result<Fetched, FetchError> {
        match loc {
            Location::File(path) => {
                let path = path.to_path_buf();
                let prev = prev.file_stamp;
                let max = policy.max_bytes;
                let name = loc.to_string();
                tokio::task::spawn_blocking(move || read_file(&path, prev, max))
                    .await
                    .map_err(|e| FetchError::Other {
                        location: name.clone(),
                        detail: format!("file reader task failed: {e}"),
                    })?
                    .map_err(|e| match e {
                        FileError::TooLarge => FetchError::TooLarge {
                            location: name,
                            limit: max,
                        },
                        FileError::Io(source) => FetchError::Io {
                            location: name,
                            source,
                        },
                    })
            }
            Location::Http(url) => self
                .fetch_http(Ask::get(url, prev), loc.to_string(), policy, &Keep)
                .await
                .map(|(f, _)| f),
        }
    }

    /// An unconditional GET of `url` with extra request `headers` (an API
    /// key: mark its value sensitive), with the limits and retries of
    /// [`Fetcher::fetch`]. Errors name the (masked) URL, never a header.
    pub async fn get_with_headers(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        policy: &FetchPolicy,
    ) -> Result<Fetched, FetchError> {
        let location = Location::Http(url).to_string();
        let ask = Ask {
            headers,
            body: None,
            ..Ask::get(url, &NO_VALIDATORS)
        };
        self.fetch_http(ask, location, policy, &Keep)
            .await
            .map(|(f, _)| f)
    }

    /// Like [`Fetcher::get_with_headers`], also returning the response's
    /// headers (a protocol's own cursor or paging headers).
    pub async fn get_with_response_headers(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        policy: &FetchPolicy,
    ) -> Result<(Fetched, HeaderMap), FetchError> {
        let location = Location::Http(url).to_string();
        let ask = Ask {
            headers,
            body: None,
            ..Ask::get(url, &NO_VALIDATORS)
        };
        self.fetch_http(ask, location, policy, &Keep).await
    }

    /// A POST of `body` to `url` with extra request `headers`, with the
    /// limits and retries of [`Fetcher::fetch`]: for search APIs (MISP's
    /// restSearch), whose requests are queries and safe to repeat. Errors
    /// name the (masked) URL, never a header or the body.
    pub async fn post_with_headers(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
        policy: &FetchPolicy,
    ) -> Result<Fetched, FetchError> {
        let location = Location::Http(url).to_string();
        let ask = Ask {
            headers,
            body: Some(body),
            ..Ask::get(url, &NO_VALIDATORS)
        };
        self.fetch_http(ask, location, policy, &Keep)
            .await
            .map(|(f, _)| f)
    }

    async fn fetch_http<R: Receive>(
        &self,
        ask: Ask<'_>,
        location: String,
        policy: &FetchPolicy,
        recv: &R,
    ) -> Result<(R::Out, HeaderMap), FetchError> {
        let client = self.client_for(policy.connect_timeout)?;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failure =
                match tokio::time::timeout(policy.timeout, attempt(&client, ask, policy, recv))
                    .await
                {
                    Ok(Ok(fetched)) => return Ok(fetched),
                    Ok(Err(f)) => f,
                    Err(_) => Failure::Timeout(policy.timeout),
                };
            if !failure.retryable() || attempts > policy.retries {
                return Err(failure.into_error(location, attempts, policy));
            }
            let delay = match failure {
                Failure::Status {
                    retry_after: Some(d),
                    ..
                } => d.min(policy.backoff_max),
                _ => backoff(policy, attempts),
            };
            log::debug!(
                "{location}: attempt {attempts} failed ({failure:?}); retrying in {delay:?}"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether the feed at `url` still sends the body `print` describes,
    /// found while the body streams in, without holding it: each
    /// [`PROBE_SEGMENT`]-byte piece is hashed as it arrives and compared
    /// with the last body's, and the request is dropped at the first piece
    /// (or `Content-Length`) that differs. The request is conditional on
    /// `prev` like [`Fetcher::fetch`]'s, with the same limits and retries.
    ///
    /// For servers that send neither `ETag` nor `Last-Modified`: an
    /// unchanged body then costs its transfer and a hash, not a buffer as
    /// large as the body (whose fresh pages cost more than the hash; see
    /// `docs/bench/REPORT-agent.md`). A changed one costs a second request
    /// ([`Fetcher::fetch`]) and the bytes read up to the first difference.
    pub async fn probe(
        &self,
        url: &str,
        prev: &Validators,
        print: &BodyPrint,
        policy: &FetchPolicy,
    ) -> Result<Probed, FetchError> {
        let location = Location::Http(url).to_string();
        self.fetch_http(Ask::get(url, prev), location, policy, &Probe(print))
            .await
            .map(|(p, _)| p)
    }
}

fn make_client(connect_timeout: Duration, env_proxy: bool) -> Result<reqwest::Client, FetchError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("edge-filter/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .use_rustls_tls();
    if !env_proxy {
        b = b.no_proxy();
    }
    b.build().map_err(|e| FetchError::Other {
        location: String::new(),
        detail: format!("cannot build the HTTP client: {}", chain(e)),
    })
}

/// A `Retry-After` value (RFC 9110 10.2.3): delay-seconds, or an
/// HTTP-date (then the time from `now` until it, zero when past).
fn parse_retry_after(v: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// The sleep before retry number `attempts` (1-based): uniformly random in
/// `[0, min(backoff_max, backoff_base * 2^(attempts-1))]`.
fn backoff(policy: &FetchPolicy, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(31);
    let cap = policy
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(policy.backoff_max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// One request, as asked of [`Fetcher::fetch_http`] (the same for every
/// attempt).
#[derive(Clone, Copy)]
struct Ask<'a> {
    url: &'a str,
    /// Validators of the copy in hand (a conditional request).
    prev: &'a Validators,
    /// Extra request headers.
    headers: &'a [(HeaderName, HeaderValue)],
    /// A POST's body; `None` is a GET.
    body: Option<&'a [u8]>,
}

/// No copy in hand: an unconditional request.
static NO_VALIDATORS: Validators = Validators {
    etag: None,
    last_modified: None,
    file_stamp: None,
};

impl<'a> Ask<'a> {
    /// A GET of `url`, conditional on `prev`.
    fn get(url: &'a str, prev: &'a Validators) -> Self {
        Ask {
            url,
            prev,
            headers: &[],
            body: None,
        }
    }
}

/// One HTTP attempt (the caller bounds its duration).
async fn attempt<R: Receive>(
    client: &reqwest::Client,
    ask: Ask<'_>,
    policy: &FetchPolicy,
    recv: &R,
) -> Result<(R::Out, HeaderMap), Failure> {
    let Ask {
        url,
        prev,
        headers,
        body,
    } = ask;
    let mut req = match body {
        None => client.get(url),
        Some(b) => client.post(url).body(b.to_vec()),
    }
    .timeout(policy.timeout);
    for (name, value) in headers {
        req = req.header(name, value.clone());
    }
    let mut conditional = false;
    if let Some(v) = prev
        .etag
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        req = req.header(IF_NONE_MATCH, v);
        conditional = true;
    }
    if let Some(v) = prev
        .last_modified
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        req = req.header(IF_MODIFIED_SINCE, v);
        conditional = true;
    }
    let resp = req.send().await.map_err(|e| classify(e, policy))?;
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED && conditional {
        return Ok((R::not_modified(), resp.headers().clone()));
    }
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
        return Err(Failure::Status {
            code: status.as_u16(),
            retry_after,
        });
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let response_headers = resp.headers().clone();
    let validators = Validators {
        etag: header(ETAG),
        last_modified: header(LAST_MODIFIED),
        file_stamp: None,
    };
    // `Response::content_length` is the size hint of the body, which is 0
    // for some bodies without the header; read the header itself.
    let announced = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > policy.max_bytes) {
        return Err(Failure::TooLarge);
    }
    // The body's end is proven by its length (checked below), by chunked
    // framing (the last transfer coding; hyper fails a chunked body that
    // stops before its final chunk) or by the protocol (HTTP/2 and later).
    let chunked = resp
        .headers()
        .get_all(TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|c| !c.is_empty())
        .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
    let framed_by_protocol = resp.version() >= reqwest::Version::HTTP_2;
    let framing = if announced.is_some() || chunked || framed_by_protocol {
        Framing::Proven
    } else {
        Framing::ConnectionClose
    };
    let head = Head {
        resp,
        validators,
        announced,
        framing,
    };
    Ok((recv.receive(head, policy).await?, response_headers))
}

/// A response whose status says its body is the feed, with what its
/// headers told.
struct Head {
    resp: reqwest::Response,
    validators: Validators,
    /// `Content-Length`, when sent.
    announced: Option<u64>,
    framing: Framing,
}

/// What an attempt does with a body: keep it ([`Keep`]) or compare it
/// with the last one as it streams in ([`Probe`]).
trait Receive {
    type Out;
    /// The answer to a `304` for a conditional request.
    fn not_modified() -> Self::Out;
    async fn receive(&self, head: Head, policy: &FetchPolicy) -> Result<Self::Out, Failure>;
}

/// Keep the whole body: [`Fetched`].
struct Keep;

impl Receive for Keep {
    type Out = Fetched;

    fn not_modified() -> Fetched {
        Fetched::NotModified
    }

    async fn receive(&self, head: Head, policy: &FetchPolicy) -> Result<Fetched, Failure> {
        let Head {
            mut resp,
            validators,
            announced,
            framing,
        } = head;
        let cap = announced.unwrap_or(0).min(policy.max_bytes).min(16 << 20);
        let mut bytes = Vec::with_capacity(usize::try_from(cap).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(e, policy))? {
            if (bytes.len() + chunk.len()) as u64 > policy.max_bytes {
                return Err(Failure::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        if let Some(n) = announced
            && (bytes.len() as u64) < n
        {
            return Err(Failure::Truncated(format!(
                "{} of {n} announced bytes",
                bytes.len()
            )));
        }
        Ok(Fetched::Body {
            bytes,
            validators,
            framing,
        })
    }
}

/// Bytes per hashed piece of a [`BodyPrint`]: a difference is seen at most
/// this many bytes after it arrives, and a print costs 8 bytes per piece
/// (about 2 KiB for a 15 MB list).
pub const PROBE_SEGMENT: usize = 64 << 10;

/// What is kept of the last body parsed, to tell whether the next one is
/// the same while it streams in ([`Fetcher::probe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyPrint {
    len: u64,
    /// XXH3-64 of each [`PROBE_SEGMENT`]-byte piece, the last one short.
    segments: Vec<u64>,
    /// XXH3-64 of the whole body (what [`crate::intel::state::digest`]
    /// formats).
    whole: u64,
    framing: Framing,
}

impl BodyPrint {
    /// The print of `bytes`, received with `framing` (the same bytes with
    /// an unproven end parse differently, so they are not "the same").
    pub fn of(bytes: &[u8], framing: Framing) -> Self {
        BodyPrint {
            len: bytes.len() as u64,
            segments: bytes
                .chunks(PROBE_SEGMENT)
                .map(xxhash_rust::xxh3::xxh3_64)
                .collect(),
            whole: xxhash_rust::xxh3::xxh3_64(bytes),
            framing,
        }
    }

    /// The body's digest as the state files keep it (`xxh3:` and 16 hex
    /// digits).
    pub fn digest(&self) -> String {
        digest_hex(self.whole)
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> u64 {
        self.len
    }

    /// Whether `bytes` received with `framing` are the body printed.
    pub fn matches(&self, bytes: &[u8], framing: Framing) -> bool {
        self.framing == framing
            && self.len == bytes.len() as u64
            && self.whole == xxhash_rust::xxh3::xxh3_64(bytes)
    }
}

/// An XXH3-64 as the state files keep a body's digest
/// ([`crate::intel::state::digest`]): `xxh3:` and 16 hex digits.
pub fn digest_hex(xxh3: u64) -> String {
    format!("xxh3:{xxh3:016x}")
}

/// What [`Fetcher::probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// The request was conditional and the server said "not modified".
    NotModified,
    /// The body is the one printed, byte for byte (to XXH3-64 per piece)
    /// and with the same framing.
    Same {
        /// What to pass to the next fetch of this feed.
        validators: Validators,
    },
    /// The body differs; it was dropped after `read` bytes.
    Changed {
        /// Bytes received before the difference showed (0: its length
        /// told).
        read: u64,
    },
}

/// Compare the body with a print as it streams in: [`Probed`].
struct Probe<'a>(&'a BodyPrint);

impl Receive for Probe<'_> {
    type Out = Probed;

    fn not_modified() -> Probed {
        Probed::NotModified
    }

    async fn receive(&self, head: Head, policy: &FetchPolicy) -> Result<Probed, Failure> {
        let print = self.0;
        let Head {
            mut resp,
            validators,
            announced,
            framing,
        } = head;
        if framing != print.framing || announced.is_some_and(|n| n != print.len) {
            return Ok(Probed::Changed { read: 0 });
        }
        let mut piece = xxhash_rust::xxh3::Xxh3Default::new();
        let (mut read, mut filled, mut index) = (0u64, 0usize, 0usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(e, policy))? {
            read += chunk.len() as u64;
            if read > print.len {
                return Ok(Probed::Changed { read });
            }
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = rest.len().min(PROBE_SEGMENT - filled);
                piece.update(&rest[..take]);
                rest = &rest[take..];
                filled += take;
                if filled == PROBE_SEGMENT {
                    if print.segments.get(index) != Some(&piece.digest()) {
                        return Ok(Probed::Changed { read });
                    }
                    piece.reset();
                    (filled, index) = (0, index + 1);
                }
            }
        }
        if let Some(n) = announced
            && read < n
        {
            return Err(Failure::Truncated(format!("{read} of {n} announced bytes")));
        }
        // With the whole length read, every full piece has matched, and
        // only a short last piece is left to compare.
        let same = read == print.len
            && (filled == 0 || print.segments.get(index) == Some(&piece.digest()));
        Ok(if same {
            Probed::Same { validators }
        } else {
            Probed::Changed { read }
        })
    }
}

/// Sort a reqwest error into retryable and not.
fn classify(e: reqwest::Error, policy: &FetchPolicy) -> Failure {
    if e.is_timeout() {
        if e.is_connect() {
            Failure::Timeout(policy.connect_timeout)
        } else {
            Failure::Timeout(policy.timeout)
        }
    } else if e.is_body() || e.is_decode() {
        Failure::Truncated(causes(e))
    } else if e.is_connect() || e.is_request() {
        Failure::Connect(causes(e))
    } else {
        Failure::Other(chain(e))
    }
}

/// An error and its sources, `: `-separated, without the URL reqwest puts
/// in its own message (it may hold credentials; the location is named
/// separately).
fn chain(e: reqwest::Error) -> String {
    use std::error::Error as _;
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(cause) = src {
        parts.push(cause.to_string());
        src = cause.source();
    }
    join(parts)
}

/// Like [`chain`], without reqwest's and hyper's generic wrappers ("error
/// sending request", "client error (Connect)", ...) when there is a more
/// specific cause: `tcp connect error: Connection refused (os error 111)`.
fn causes(e: reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts = Vec::new();
    let mut src = e.source();
    while let Some(cause) = src {
        let msg = cause.to_string();
        if !(msg.starts_with("client error (") || msg == "request or response body error") {
            parts.push(msg);
        }
        src = cause.source();
    }
    if parts.is_empty() {
        chain(e)
    } else {
        join(parts)
    }
}

/// `a: b: c`, leaving out a part that the previous one already ends with.
fn join(parts: Vec<String>) -> String {
    let mut s = String::new();
    for p in parts {
        if s.ends_with(&p) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&p);
    }
    s
}

enum FileError {
    TooLarge,
    Io(io::Error),
}

impl From<io::Error> for FileError {
    fn from(e: io::Error) -> Self {
        FileError::Io(e)
    }
}

fn stamp(m: &std::fs::Metadata) -> (i64, u64) {
    let ns = m
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec());
    (ns, m.len())
}

/// How often a file that changes while being read is read again.
const FILE_READ_TRIES: usize = 3;

fn read_file(path: &Path, prev: Option<(i64, u64)>, max: u64) -> Result<Fetched, FileError> {
    if prev.is_some() && prev == Some(stamp(&std::fs::metadata(path)?)) {
        return Ok(Fetched::NotModified);
    }
    for _ in 0..FILE_READ_TRIES {
        let mut f = std::fs::File::open(path)?;
        let before = f.metadata()?;
        if !before.is_file() {
            return Err(FileError::Io(io::Error::other("not a regular file")));
        }
        if before.len() > max {
            return Err(FileError::TooLarge);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
        (&mut f)
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(FileError::TooLarge);
        }
        // Changed in place while being read, or replaced since it was
        // opened: read again, so the bytes match the stamp kept.
        let by_fd = stamp(&f.metadata()?);
        let by_path = stamp(&std::fs::metadata(path)?);
        if by_fd == stamp(&before) && by_path == by_fd && bytes.len() as u64 == by_fd.1 {
            return Ok(Fetched::Body {
                bytes,
                validators: Validators {
                    file_stamp: Some(by_fd),
                    ..Validators::default()
                },
                framing: Framing::Proven,
            });
        }
    }
    Err(FileError::Io(io::Error::other(format!(
        "kept changing while being read ({FILE_READ_TRIES} tries); replace feed files atomically (write, then rename)"
    ))))
}

/// Query parameter names whose values are masked in logged URLs.
const SECRET_PARAMS: [&str; 9] = [
    "key",
    "token",
    "secret",
    "auth",
    "pass",
    "sig",
    "credential",
    "session",
    "code",
];

/// `url` with its password and credential-like query parameter values
/// replaced by `***` (unparseable URLs are returned as they are).
fn redact_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let lk = k.to_ascii_lowercase();
                let secret = SECRET_PARAMS.iter().any(|s| lk.contains(s));
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        if pairs.iter().any(|(_, v)| v == "***") {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test server frames a reply's body.
    #[derive(Clone, Copy, Debug)]
    enum Length {
        /// A correct `Content-Length`.
        Exact,
        /// No `Content-Length`; the body ends when the connection closes.
        Close,
        /// A `Content-Length` of this many bytes, whatever the body is.
        Lie(usize),
        /// `Transfer-Encoding: chunked`, in chunks of at most this many
        /// bytes, with the final empty chunk.
        Chunked(usize),
        /// `Transfer-Encoding: chunked` cut off: these chunks, then the
        /// connection closes without the final chunk.
        ChunkedCut(usize),
    }

    /// One scripted reply.
    #[derive(Clone, Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        length: Length,
        /// Sleep before sending anything.
        delay: Duration,
        /// Send the head and this many body bytes, then sleep this long
        /// before the rest.
        stall: Option<(usize, Duration)>,
    }

    impl Reply {
        fn new(status: u16, body: &[u8]) -> Self {
            Reply {
                status,
                headers: Vec::new(),
                body: body.to_vec(),
                length: Length::Exact,
                delay: Duration::ZERO,
                stall: None,
            }
        }

        fn header(mut self, name: &'static str, value: &str) -> Self {
            self.headers.push((name, value.to_owned()));
            self
        }
    }

    /// A request as the server saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A one-request-per-connection HTTP/1.1 server on 127.0.0.1 that
    /// answers the n-th request with the n-th reply of its script (the last
    /// one over and over after that). Stops (with every connection) when
    /// dropped.
    struct Server {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        async fn start(script: Vec<Reply>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(script);
            let count = Arc::new(AtomicUsize::new(0));
            let seen2 = seen.clone();
            let task = tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        return;
                    };
                    let (script, seen, count) = (script.clone(), seen2.clone(), count.clone());
                    conns.spawn(async move {
                        let _ = serve(sock, &script, &seen, &count).await;
                    });
                }
            });
            Server { addr, seen, task }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn serve(
        mut sock: tokio::net::TcpStream,
        script: &[Reply],
        seen: &Mutex<Vec<Seen>>,
        count: &AtomicUsize,
    ) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or("").to_owned();
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        seen.lock().unwrap().push(Seen { line, headers });
        let n = count.fetch_add(1, Ordering::SeqCst);
        let r = &script[n.min(script.len() - 1)];
        tokio::time::sleep(r.delay).await;
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nConnection: close\r\n",
            r.status,
            reason(r.status).trim()
        );
        for (k, v) in &r.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match r.length {
            Length::Exact => head.push_str(&format!("Content-Length: {}\r\n", r.body.len())),
            Length::Lie(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
            Length::Close => {}
            Length::Chunked(n) | Length::ChunkedCut(n) => {
                head.push_str("Transfer-Encoding: chunked\r\n");
                head.push_str("\r\n");
                let mut out = head.into_bytes();
                for c in r.body.chunks(n.max(1)) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                if matches!(r.length, Length::Chunked(_)) {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                sock.write_all(&out).await?;
                sock.flush().await?;
                return sock.shutdown().await;
            }
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await?;
        let mut body = &r.body[..];
        if let Some((n, d)) = r.stall {
            sock.write_all(&body[..n]).await?;
            sock.flush().await?;
            body = &body[n..];
            tokio::time::sleep(d).await;
        }
        sock.write_all(body).await?;
        sock.flush().await?;
        sock.shutdown().await
    }

    fn quick() -> FetchPolicy {
        FetchPolicy {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_bytes: 1 << 20,
            retries: 3,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
        }
    }

    fn fetcher() -> Fetcher {
        Fetcher::new_direct().unwrap()
    }

    async fn get(
        url: &str,
        prev: &Validators,
        policy: &FetchPolicy,
    ) -> Result<Fetched, FetchError> {
        fetcher().fetch(Location::Http(url), prev, policy).await
    }

    #[tokio::test]
    async fn fetch_http_etag_then_304() {
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        let srv = Server::start(vec![
            Reply::new(200, b"192.0.2.1\n")
                .header("ETag", "\"v1\"")
                .header("Last-Modified", lm),
            Reply::new(304, b""),
        ])
        .await;
        let url = srv.url("/feed.txt");
        let f = fetcher();
        let first = f
            .fetch(Location::Http(&url), &Validators::default(), &quick())
            .await
            .unwrap();
        let Fetched::Body {
            bytes,
            validators,
            framing,
        } = first
        else {
            panic!("expected a body, got {first:?}");
        };
        assert_eq!(bytes, b"192.0.2.1\n");
        assert_eq!(framing, Framing::Proven);
        assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
        assert_eq!(validators.last_modified.as_deref(), Some(lm));
        assert_eq!(validators.file_stamp, None);
        let second = f
            .fetch(Location::Http(&url), &validators, &quick())
            .await
            .unwrap();
        assert_eq!(second, Fetched::NotModified);
        let seen = srv.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].line, "GET /feed.txt HTTP/1.1");
        assert_eq!(seen[0].header("if-none-match"), None);
        assert_eq!(seen[0].header("if-modified-since"), None);
        assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
        assert_eq!(seen[1].header("if-modified-since"), Some(lm));
        assert!(
            seen[1]
                .header("user-agent")
                .unwrap()
                .starts_with("edge-filter/")
        );
    }

    #[tokio::test]
    async fn fetch_http_304_to_unconditional_request_is_an_error() {
        let srv = Server::start(vec![Reply::new(304, b"")]).await;
        let err = get(&srv.url("/"), &Validators::default(), &quick())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::Status {
                    code: 304,
                    attempts: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn fetch_http_retries_500_then_succeeds() {
        let srv = Server::start(vec![
            Reply::new(500, b"oops"),
            Reply::new(500, b"oops"),
            Reply::new(200, b"ok"),
        ])
        .await;
        let got = get(&srv.url("/"), &Validators::default(), &quick())
            .await
            .unwrap();
        assert_eq!(
            got,
            Fetched::Body {
                bytes: b"ok".to_vec(),
                validators: Validators::default(),
                framing: Framing::Proven,
            }
        );
        assert_eq!(srv.seen().len(), 3);
    }

    #[tokio::test]
    async fn fetch_http_503_always_gives_up_after_retries() {
        let srv = Server::start(vec![Reply::new(503, b"busy")]).await;
        let url = srv.url("/drop.txt");
        let err = get(&url, &Validators::default(), &quick())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::Status {
                    code: 503,
                    attempts: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(srv.seen().len(), 4);
        assert_eq!(
            err.to_string(),
            format!("{url}: HTTP 503 Service Unavailable after 4 attempts")
        );
        assert_eq!(err.attempts(), 4);
        assert_eq!(err.location(), url);
    }

    #[tokio::test]
    async fn fetch_http_429_honours_capped_retry_after() {
        let srv = Server::start(vec![
            Reply::new(429, b"").header("Retry-After", "3600"),
            Reply::new(200, b"ok"),
        ])
        .await;
        let t = Instant::now();
        let policy = FetchPolicy {
            backoff_max: Duration::from_millis(200),
            ..quick()
        };
        let got = get(&srv.url("/"), &Validators::default(), &policy)
            .await
            .unwrap();
        assert!(matches!(got, Fetched::Body { .. }));
        assert_eq!(srv.seen().len(), 2);
        // Slept the capped Retry-After (200 ms), not a jittered 5 ms.
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn fetch_http_404_is_not_retried() {
        let srv = Server::start(vec![Reply::new(404, b"no")]).await;
        let url = srv.url("/gone");
        let err = get(&url, &Validators::default(), &quick())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::Status {
                    code: 404,
                    attempts: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(srv.seen().len(), 1);
        assert_eq!(err.to_string(), format!("{url}: HTTP 404 Not Found"));
    }

    #[tokio::test]
    async fn fetch_http_hang_times_out() {
        let mut hang = Reply::new(200, b"late");
        hang.delay = Duration::from_secs(30);
        let srv = Server::start(vec![hang]).await;
        let policy = FetchPolicy {
            timeout: Duration::from_millis(300),
            retries: 1,
            ..quick()
        };
        let t = Instant::now();
        let err = get(&srv.url("/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        let took = t.elapsed();
        assert!(
            matches!(err, FetchError::Timeout { attempts: 2, timeout, .. } if timeout == Duration::from_millis(300)),
            "{err:?}"
        );
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(srv.seen().len(), 2);
        assert!(
            err.to_string()
                .ends_with("no complete response within 300ms after 2 attempts"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fetch_http_stall_in_body_times_out() {
        let mut r = Reply::new(200, &[b'x'; 1000]);
        r.stall = Some((100, Duration::from_secs(30)));
        let srv = Server::start(vec![r]).await;
        let policy = FetchPolicy {
            timeout: Duration::from_millis(300),
            retries: 0,
            ..quick()
        };
        let t = Instant::now();
        let err = get(&srv.url("/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Timeout { attempts: 1, .. }),
            "{err:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn fetch_http_truncated_body() {
        let mut r = Reply::new(200, b"192.0.2.1\n192.0.2.2\n");
        r.length = Length::Lie(1000);
        let srv = Server::start(vec![r]).await;
        let policy = FetchPolicy {
            retries: 1,
            ..quick()
        };
        let err = get(&srv.url("/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Truncated { attempts: 2, .. }),
            "{err:?}"
        );
        assert_eq!(srv.seen().len(), 2);
        assert!(err.to_string().contains("body truncated"), "{err}");
    }

    #[tokio::test]
    async fn fetch_http_oversized_body_with_content_length() {
        let srv = Server::start(vec![Reply::new(200, &[b'x'; 5000])]).await;
        let policy = FetchPolicy {
            max_bytes: 1000,
            ..quick()
        };
        let err = get(&srv.url("/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1000, .. }),
            "{err:?}"
        );
        assert_eq!(srv.seen().len(), 1, "not retried");
        assert!(err.to_string().ends_with("larger than the 1000-byte limit"));
    }

    #[tokio::test]
    async fn fetch_http_oversized_body_without_content_length() {
        // Large enough that the server is still sending when the client
        // gives up, so this shows the cut-off is early.
        let mut r = Reply::new(200, &vec![b'x'; 4 << 20]);
        r.length = Length::Close;
        let srv = Server::start(vec![r]).await;
        let policy = FetchPolicy {
            max_bytes: 1000,
            ..quick()
        };
        let err = get(&srv.url("/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1000, .. }),
            "{err:?}"
        );
        assert_eq!(srv.seen().len(), 1);
    }

    #[tokio::test]
    async fn fetch_http_body_at_the_limit_is_accepted() {
        for length in [Length::Exact, Length::Close] {
            let mut r = Reply::new(200, &[b'x'; 1000]);
            r.length = length;
            let srv = Server::start(vec![r]).await;
            let policy = FetchPolicy {
                max_bytes: 1000,
                ..quick()
            };
            let got = get(&srv.url("/"), &Validators::default(), &policy)
                .await
                .unwrap();
            let Fetched::Body { bytes, .. } = got else {
                panic!("{got:?}")
            };
            assert_eq!(bytes.len(), 1000, "{length:?}");
        }
    }

    /// Only a body that ends when the connection closes (no
    /// `Content-Length`, not chunked) is reported as of unproven length; a
    /// chunked body cut before its final chunk is an error, like a body
    /// shorter than its `Content-Length`.
    #[tokio::test]
    async fn fetch_http_framing_says_whether_the_end_is_proven() {
        let body = b"192.0.2.1\n203.0.113.77";
        for (length, want) in [
            (Length::Exact, Framing::Proven),
            (Length::Chunked(7), Framing::Proven),
            (Length::Close, Framing::ConnectionClose),
        ] {
            let mut r = Reply::new(200, body);
            r.length = length;
            let srv = Server::start(vec![r]).await;
            let got = get(&srv.url("/"), &Validators::default(), &quick())
                .await
                .unwrap();
            let Fetched::Body { bytes, framing, .. } = got else {
                panic!("{got:?}")
            };
            assert_eq!(bytes, body, "{length:?}");
            assert_eq!(framing, want, "{length:?}");
            assert_eq!(framing.end_unproven(), want == Framing::ConnectionClose);
        }
        let mut r = Reply::new(200, body);
        r.length = Length::ChunkedCut(7);
        let srv = Server::start(vec![r]).await;
        let policy = FetchPolicy {
            retries: 0,
            ..quick()
        };
        let err = get(&srv.url("/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Truncated { .. }), "{err:?}");
    }

    /// A list of `lines` addresses, about 14 bytes a line.
    fn list(lines: u32, salt: u32) -> Vec<u8> {
        (0..lines)
            .flat_map(|i| {
                let a = i.wrapping_mul(2_654_435_761) ^ salt;
                std::net::Ipv4Addr::from(a)
                    .to_string()
                    .into_bytes()
                    .into_iter()
                    .chain([b'\n'])
            })
            .collect()
    }

    async fn probe(
        body: &[u8],
        length: Length,
        print: &BodyPrint,
    ) -> (Result<Probed, FetchError>, Vec<Seen>) {
        let mut r = Reply::new(200, body);
        r.length = length;
        let srv = Server::start(vec![r]).await;
        let got = fetcher()
            .probe(&srv.url("/"), &Validators::default(), print, &quick())
            .await;
        (got, srv.seen())
    }

    /// A probe says "same" for the printed bytes however they are framed
    /// in transit (a proven end), and "changed" for any other bytes: a
    /// different length (at once when announced), a different piece (at
    /// that piece, before the rest arrives), a different last short piece,
    /// or the same bytes with an unproven end.
    #[tokio::test]
    async fn probe_tells_the_printed_body_from_any_other() {
        let body = list(60_000, 0);
        assert!(body.len() > 4 * PROBE_SEGMENT && !body.len().is_multiple_of(PROBE_SEGMENT));
        let print = BodyPrint::of(&body, Framing::Proven);
        assert_eq!(print.digest(), crate::intel::state::digest(&body));
        assert_eq!(print.body_len(), body.len() as u64);
        assert!(print.matches(&body, Framing::Proven));
        assert!(!print.matches(&body, Framing::ConnectionClose));
        for length in [
            Length::Exact,
            Length::Chunked(1000),
            Length::Chunked(100_000),
        ] {
            let (got, seen) = probe(&body, length, &print).await;
            assert_eq!(
                got.unwrap(),
                Probed::Same {
                    validators: Validators::default()
                },
                "{length:?}"
            );
            assert_eq!(seen.len(), 1);
        }

        // One byte changed in the second piece: seen by the end of that
        // piece (plus what one read brings), long before the body's end.
        let mut changed = body.clone();
        changed[PROBE_SEGMENT + 10] ^= 1;
        for length in [Length::Exact, Length::Chunked(4096)] {
            let (got, _) = probe(&changed, length, &print).await;
            match got.unwrap() {
                Probed::Changed { read } => assert!(
                    read >= 2 * PROBE_SEGMENT as u64 && read < body.len() as u64 / 2,
                    "{length:?}: read {read}"
                ),
                other => panic!("{length:?}: {other:?}"),
            }
        }
        // The last (short) piece differs: seen only at the end.
        let mut last = body.clone();
        *last.last_mut().unwrap() = b' ';
        let (got, _) = probe(&last, Length::Chunked(4096), &print).await;
        assert_eq!(
            got.unwrap(),
            Probed::Changed {
                read: body.len() as u64
            }
        );
        // Longer and shorter: announced, told before reading; streamed,
        // told when the length is passed or at the end.
        let mut longer = body.clone();
        longer.extend_from_slice(b"192.0.2.1\n");
        let shorter = &body[..body.len() - PROBE_SEGMENT];
        for b in [&longer[..], shorter] {
            let (got, _) = probe(b, Length::Exact, &print).await;
            assert_eq!(got.unwrap(), Probed::Changed { read: 0 });
            let (got, _) = probe(b, Length::Chunked(4096), &print).await;
            assert!(
                matches!(got.unwrap(), Probed::Changed { read } if read > 0),
                "{}",
                b.len()
            );
        }
        // The same bytes, but an end the transport does not prove.
        let (got, _) = probe(&body, Length::Close, &print).await;
        assert_eq!(got.unwrap(), Probed::Changed { read: 0 });
        let close = BodyPrint::of(&body, Framing::ConnectionClose);
        let (got, _) = probe(&body, Length::Close, &close).await;
        assert!(matches!(got.unwrap(), Probed::Same { .. }));
        // An empty body is a body like any other.
        let empty = BodyPrint::of(b"", Framing::Proven);
        let (got, _) = probe(b"", Length::Exact, &empty).await;
        assert!(matches!(got.unwrap(), Probed::Same { .. }));
        let (got, _) = probe(b"\n", Length::Chunked(10), &empty).await;
        assert!(matches!(got.unwrap(), Probed::Changed { .. }));
    }

    /// A probe is a request like a fetch's: conditional on the validators
    /// (a `304` is "not modified"), returning the new ones, and failing
    /// the same way on a body cut short.
    #[tokio::test]
    async fn probe_is_conditional_and_fails_like_a_fetch() {
        let body = list(100, 7);
        let print = BodyPrint::of(&body, Framing::Proven);
        let srv = Server::start(vec![
            Reply::new(304, b""),
            Reply::new(200, &body).header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ])
        .await;
        let prev = Validators {
            etag: Some("\"v1\"".into()),
            ..Validators::default()
        };
        let f = fetcher();
        let got = f.probe(&srv.url("/"), &prev, &print, &quick()).await;
        assert_eq!(got.unwrap(), Probed::NotModified);
        let got = f.probe(&srv.url("/"), &prev, &print, &quick()).await;
        let Probed::Same { validators } = got.unwrap() else {
            panic!("expected the same body");
        };
        assert_eq!(
            validators.last_modified.as_deref(),
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        );
        assert!(
            srv.seen()
                .iter()
                .all(|s| s.header("if-none-match") == Some("\"v1\""))
        );

        let mut r = Reply::new(200, &body);
        r.length = Length::ChunkedCut(50);
        let srv = Server::start(vec![r]).await;
        let policy = FetchPolicy {
            retries: 1,
            ..quick()
        };
        let err = fetcher()
            .probe(&srv.url("/"), &Validators::default(), &print, &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Truncated { attempts: 2, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn fetch_http_connection_refused_is_retried() {
        // A port that was just free: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let policy = FetchPolicy {
            retries: 2,
            ..quick()
        };
        let err = get(&format!("http://{addr}/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Connect { attempts: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("connection failed"), "{err}");
    }

    #[tokio::test]
    async fn fetch_https_to_a_plain_http_server_fails_the_handshake() {
        // Exercises the rustls path (provider, root store) up to the
        // handshake, which a server answering in plain HTTP breaks.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let _ = sock
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = sock.shutdown().await;
            }
        });
        let policy = FetchPolicy {
            retries: 0,
            ..quick()
        };
        let err = get(&format!("https://{addr}/"), &Validators::default(), &policy)
            .await
            .unwrap_err();
        task.abort();
        assert!(matches!(err, FetchError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("connection failed"), "{err}");
    }

    #[tokio::test]
    async fn fetch_http_invalid_url_is_other() {
        let err = get("http://", &Validators::default(), &quick())
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Other { .. }), "{err:?}");
    }

    #[test]
    fn fetch_backoff_is_bounded_full_jitter() {
        let p = FetchPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
            ..FetchPolicy::default()
        };
        for _ in 0..200 {
            assert!(backoff(&p, 1) <= Duration::from_millis(100));
            assert!(backoff(&p, 2) <= Duration::from_millis(200));
            assert!(backoff(&p, 3) <= Duration::from_millis(250));
            assert!(backoff(&p, 1000) <= Duration::from_millis(250));
        }
        // Jitter: not always the same.
        let samples: std::collections::HashSet<_> = (0..50).map(|_| backoff(&p, 3)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn fetch_redacts_credentials() {
        assert_eq!(
            redact_url("https://user:hunter2@feeds.example/x.txt?apikey=abc&format=txt"),
            "https://user:***@feeds.example/x.txt?apikey=***&format=txt"
        );
        assert_eq!(
            redact_url("https://feeds.example/x?format=csv"),
            "https://feeds.example/x?format=csv"
        );
        assert_eq!(
            Location::Http("https://f.example/?auth_token=s3cret").to_string(),
            "https://f.example/?auth_token=***"
        );
        assert_eq!(
            Location::File(Path::new("/etc/feeds/a.txt")).to_string(),
            "/etc/feeds/a.txt"
        );
    }

    /// A fresh directory under the system temporary directory, removed on
    /// drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "edge-filter-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn fetch_file_not_modified_until_rewritten() {
        let dir = Scratch::new("fetch");
        let path = dir.0.join("feed.txt");
        std::fs::write(&path, "192.0.2.1\n").unwrap();
        let f = fetcher();
        let policy = FetchPolicy::default();
        let got = f
            .fetch(Location::File(&path), &Validators::default(), &policy)
            .await
            .unwrap();
        let Fetched::Body {
            bytes,
            validators,
            framing,
        } = got
        else {
            panic!("{got:?}")
        };
        assert_eq!(bytes, b"192.0.2.1\n");
        assert_eq!(framing, Framing::Proven, "a file is read whole");
        let (_, len) = validators.file_stamp.unwrap();
        assert_eq!(len, 10);
        assert_eq!(validators.etag, None);

        let again = f
            .fetch(Location::File(&path), &validators, &policy)
            .await
            .unwrap();
        assert_eq!(again, Fetched::NotModified);

        // Rewritten with the same length: the modification time tells.
        std::fs::write(&path, "192.0.2.9\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        drop(file);
        let got = f
            .fetch(Location::File(&path), &validators, &policy)
            .await
            .unwrap();
        let Fetched::Body {
            bytes,
            validators: v2,
            ..
        } = got
        else {
            panic!("{got:?}")
        };
        assert_eq!(bytes, b"192.0.2.9\n");
        assert_ne!(v2, validators);

        // Replaced by rename with a different length.
        let tmp = dir.0.join(".feed.txt.tmp");
        std::fs::write(&tmp, "192.0.2.0/24\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let got = f.fetch(Location::File(&path), &v2, &policy).await.unwrap();
        assert!(
            matches!(&got, Fetched::Body { bytes, .. } if bytes == b"192.0.2.0/24\n"),
            "{got:?}"
        );

        // No validators: always read.
        let got = f
            .fetch(Location::File(&path), &Validators::default(), &policy)
            .await
            .unwrap();
        assert!(matches!(got, Fetched::Body { .. }));
    }

    #[tokio::test]
    async fn fetch_file_errors() {
        let dir = Scratch::new("fetch");
        let path = dir.0.join("big.txt");
        std::fs::write(&path, [b'x'; 2000]).unwrap();
        let policy = FetchPolicy {
            max_bytes: 1999,
            ..FetchPolicy::default()
        };
        let err = fetcher()
            .fetch(Location::File(&path), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1999, .. }),
            "{err:?}"
        );

        let missing = dir.0.join("missing.txt");
        let err = fetcher()
            .fetch(Location::File(&missing), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );
        // A missing file is an error even when a stamp is in hand.
        let err = fetcher()
            .fetch(
                Location::File(&missing),
                &Validators {
                    file_stamp: Some((1, 1)),
                    ..Validators::default()
                },
                &policy,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Io { .. }), "{err:?}");

        let err = fetcher()
            .fetch(Location::File(&dir.0), &Validators::default(), &policy)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Io { .. }), "{err:?}");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = time::macros::datetime!(2026-12-04 19:00:00 UTC);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 19:02:30 GMT", now),
            Some(Duration::from_secs(150))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 18:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
