//! Polling a CrowdSec Local API as a bouncer (`format = "crowdsec"` with an
//! `http(s)://` source): `GET {source}/v1/decisions/stream` with the key of
//! `api_key_file` in `X-Api-Key`.
//!
//! The stream's cursor lives on the server, per key: an answer lost on the
//! way loses its deltas for good. So the first poll, and every poll after a
//! failed one, asks `startup=true` (the whole set) and replaces what is held;
//! the others ask `startup=false` and apply the delta
//! ([`crate::intel::feeds::crowdsec::Decisions`]). The agent's pipeline
//! takes whole copies of a feed, so each poll that changes something hands
//! it every active decision.

use std::path::{Path, PathBuf};

use reqwest::header::{HeaderName, HeaderValue};
use time::OffsetDateTime;

use crate::intel::config::{Config, FeedConfig};
use crate::intel::feeds::crowdsec::Decisions;
use crate::intel::feeds::{FeedParse, Unusable};
use crate::intel::fetch::{FetchError, FetchPolicy, Fetched, Fetcher};

/// Read a bouncer API key from `path`: one line, not empty, in a regular
/// file owned by root or the current user that neither group nor others
/// may read or write. Errors name the file and what to fix, never the key.
pub fn read_api_key(path: &Path) -> Result<String, String> {
    crate::intel::secret::read_secret(
        path,
        "api_key_file",
        crate::intel::secret::SecretKind::Token,
        "the key of `cscli bouncers add NAME -o raw`",
    )
}

/// `{base}/v1/decisions/stream?startup=...`, with the feed's filters.
fn stream_url(base: &str, startup: bool, f: &FeedConfig) -> String {
    let plain = format!("{base}/v1/decisions/stream");
    let Ok(mut url) = reqwest::Url::parse(&plain) else {
        // Fetching it reports the bad URL.
        return format!("{plain}?startup={startup}");
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("startup", if startup { "true" } else { "false" });
        for (key, values) in [
            ("origins", &f.origins),
            ("scenarios_containing", &f.scenarios_containing),
        ] {
            if !values.is_empty() {
                q.append_pair(key, &values.join(","));
            }
        }
    }
    url.to_string()
}

/// One CrowdSec feed's bouncer: its key, whether the next poll resyncs,
/// and the decisions held.
pub struct Poller {
    base: String,
    key_file: PathBuf,
    key: HeaderValue,
    resync: bool,
    decisions: Decisions,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("base", &self.base)
            .field("key_file", &self.key_file)
            .field("resync", &self.resync)
            .field("decisions", &self.decisions.len())
            .finish_non_exhaustive()
    }
}

/// What one poll found.
#[derive(Debug)]
pub enum Polled {
    /// The set changed: every active decision, and this answer's rejected
    /// and ignored ones.
    Changed {
        /// The whole current copy of the feed.
        parse: FeedParse,
        /// Digest of the answer.
        digest: String,
        /// Whether it was a `startup=true` answer (a whole set, subject to
        /// the shrink guard), not a delta (explicit deletions).
        resync: bool,
    },
    /// Nothing changed.
    Unchanged,
}

impl Poller {
    /// The bouncer of CrowdSec feed `f` (see
    /// [`FeedConfig::is_crowdsec_lapi`]), its key read now.
    pub fn new(f: &FeedConfig) -> Result<Poller, String> {
        let Some(key_file) = f.api_key_file.clone() else {
            return Err("format \"crowdsec\" needs api_key_file".into());
        };
        let key = read_api_key(&key_file)?;
        let mut key = HeaderValue::from_str(&key)
            .map_err(|_| format!("api_key_file {} does not hold a key", key_file.display()))?;
        key.set_sensitive(true);
        Ok(Poller {
            base: f.source.to_string().trim_end_matches('/').to_string(),
            key_file,
            key,
            resync: true,
            decisions: Decisions::new(),
        })
    }

    /// Poll once. On failure nothing held changes and the next poll asks
    /// for the whole set again.
    pub async fn poll(
        &mut self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<Polled, String> {
        let r = self.try_poll(f, cfg, fetcher, policy).await;
        self.resync = r.is_err();
        r
    }

    async fn try_poll(
        &mut self,
        f: &FeedConfig,
        cfg: &Config,
        fetcher: &Fetcher,
        policy: &FetchPolicy,
    ) -> Result<Polled, String> {
        let startup = self.resync;
        let url = stream_url(&self.base, startup, f);
        let headers = [(HeaderName::from_static("x-api-key"), self.key.clone())];
        let bytes = match fetcher.get_with_headers(&url, &headers, policy).await {
            Ok(Fetched::Body { bytes, .. }) => bytes,
            Ok(Fetched::NotModified) => return Err(format!("{url}: unexpected 304")),
            Err(
                e @ FetchError::Status {
                    code: 401 | 403, ..
                },
            ) => {
                return Err(format!(
                    "{e}: the LAPI refused the bouncer key in {} (check it against `cscli bouncers list`)",
                    self.key_file.display()
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let opts = f.feed_options(&cfg.limits);
        let mut next = self.decisions.clone();
        let applied = next
            .apply(&bytes, startup, &opts)
            .map_err(|e| format!("{url}: {e}"))?;
        if startup {
            // A whole set is judged like any feed's copy.
            Unusable::check(
                applied.parse.records,
                applied.parse.rejected.len(),
                f.max_rejected_share(&cfg.safety),
                "decisions",
                || format!("decision {}", applied.parse.rejected[0]),
            )
            .map_err(|e| format!("{url}: {e}"))?;
        }
        self.decisions = next;
        for i in applied.parse.ignored.iter().take(5) {
            log::info!(
                "feed {}: decision {}: {}: {}",
                f.name,
                i.index,
                i.reason,
                i.text
            );
        }
        if !startup && !applied.changed {
            return Ok(Polled::Unchanged);
        }
        let now = opts.now.unwrap_or_else(OffsetDateTime::now_utc);
        Ok(Polled::Changed {
            parse: FeedParse {
                entries: self.decisions.entries(now),
                records: self.decisions.len(),
                ..applied.parse
            },
            digest: crate::intel::state::digest(&bytes),
            resync: startup,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn stream_urls_carry_the_filters() {
        let mut f = FeedConfig::new("cs", "http://127.0.0.1:8080/".parse().unwrap());
        assert_eq!(
            stream_url("http://127.0.0.1:8080", true, &f),
            "http://127.0.0.1:8080/v1/decisions/stream?startup=true"
        );
        f.origins = vec!["crowdsec".into(), "cscli".into()];
        f.scenarios_containing = vec!["ssh bf".into()];
        assert_eq!(
            stream_url("http://127.0.0.1:8080", false, &f),
            "http://127.0.0.1:8080/v1/decisions/stream?startup=false&origins=crowdsec%2Ccscli&scenarios_containing=ssh+bf"
        );
    }

    #[test]
    fn key_files_must_exist_hold_a_key_and_be_private() {
        let dir = std::env::temp_dir().join(format!("ef-cs-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        let write = |text: &str, mode: u32| {
            std::fs::write(&key, text).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let secret = "0123456789abcdef0123456789abcdef";
        write(&format!("{secret}\n"), 0o600);
        assert_eq!(read_api_key(&key).unwrap(), secret);
        write(&format!("{secret}\n"), 0o640);
        let e = read_api_key(&key).unwrap_err();
        assert!(
            e.contains("has mode 0640") && e.contains("chmod 600"),
            "{e}"
        );
        assert!(!e.contains(secret));
        write(&format!("{secret}\n"), 0o604);
        assert!(read_api_key(&key).unwrap_err().contains("mode 0604"));
        write(" \n", 0o400);
        assert!(read_api_key(&key).unwrap_err().contains("is empty"));
        write(&format!("{secret}\n{secret}\n"), 0o600);
        let e = read_api_key(&key).unwrap_err();
        assert!(
            e.contains("does not hold a key") && !e.contains(secret),
            "{e}"
        );
        let e = read_api_key(&dir.join("nope")).unwrap_err();
        assert!(
            e.starts_with("api_key_file ") && e.contains("No such file"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
