//! The agent's TOML configuration (`edge-filter run --config FILE`).
//!
//! Every table denies unknown keys: a misspelt option is an error naming the
//! file, line and key, never a silently ignored setting (on a filter that
//! decides what traffic passes, "I thought I had turned that on" is the
//! expensive failure). After parsing, [`Config::validate`] checks what the
//! types cannot (unique names, allowlist feeds that exist and are allow
//! feeds, ranges) and reports every problem at once, so one edit fixes them
//! all.
//!
//! See `examples/edge-filter.toml` for every option with its default.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::entry::{Action, Proto, Side};
use crate::intel::feeds::crowdsec::NonBan;
use crate::intel::feeds::csv::{Column, CsvMapping, ProtoSpec};
use crate::intel::feeds::misp::{MispOptions, NonIds, ThreatLevel};
use crate::intel::feeds::{self, FeedLimits, FeedOptions, Format};
use crate::kernel::attach::Mode;
use crate::kernel::program::Capacities;

/// Where the agent keeps last-known-good feed contents and guard state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/edge-filter";

/// Why a configuration was not accepted. Every variant names the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not TOML, or TOML that does not fit the schema (unknown key, wrong
    /// type, missing required key, bad value).
    #[error("{file}:{line}:{column}: {message}{}", context.as_ref().map(|c| format!(" (at `{c}`)")).unwrap_or_default())]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line of the offending key or value (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
        /// The offending line, trimmed (so the key is always named).
        context: Option<String>,
    },
    /// Well-formed but inconsistent or out of range; every problem found.
    #[error("{file}: {}", problems.join("; "))]
    Invalid {
        /// The file.
        file: String,
        /// One message per problem, each naming the key or feed.
        problems: Vec<String>,
    },
}

/// What to do with malformed IP packets (see docs/semantics.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Malformed {
    /// Let them through (counted by class).
    #[default]
    Pass,
    /// Drop them (counted by class).
    Drop,
}

/// How the datapath counts hits per entry (`edge-filter top` and
/// `explain`, the per-feed metrics and last-hit times read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EntryCounters {
    /// Every hit: exact counts, at the price of one more cache line per
    /// hit (at 1M entries a hit costs about 1.8x what it costs uncounted;
    /// docs/bench/REPORT-v2.md).
    #[default]
    Exact,
    /// One hit in 16 per CPU and reason, counted as 16: estimates (an
    /// entry hit a few times may show 0 or 16) for almost no cost.
    Sampled,
    /// No per-entry counts (verdict and reason counters stay exact).
    Off,
}

impl EntryCounters {
    /// The `CONFIG_*` bits of this mode.
    pub fn flags(self) -> u32 {
        match self {
            EntryCounters::Exact => 0,
            EntryCounters::Sampled => edge_filter_common::CONFIG_COUNT_SAMPLED,
            EntryCounters::Off => edge_filter_common::CONFIG_COUNT_OFF,
        }
    }

    /// The mode the `CONFIG_*` bits `flags` select.
    pub fn of_flags(flags: u32) -> EntryCounters {
        if flags & edge_filter_common::CONFIG_COUNT_OFF != 0 {
            EntryCounters::Off
        } else if flags & edge_filter_common::CONFIG_COUNT_SAMPLED != 0 {
            EntryCounters::Sampled
        } else {
            EntryCounters::Exact
        }
    }

    /// Packets one counted hit stands for: 1, [`ENTRY_SAMPLE_EVERY`]
    /// when sampled, 0 when off (the metric's value).
    ///
    /// [`ENTRY_SAMPLE_EVERY`]: edge_filter_common::ENTRY_SAMPLE_EVERY
    pub fn sample_every(self) -> u32 {
        match self {
            EntryCounters::Exact => 1,
            EntryCounters::Sampled => edge_filter_common::ENTRY_SAMPLE_EVERY,
            EntryCounters::Off => 0,
        }
    }

    /// `exact`, `sampled` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            EntryCounters::Exact => "exact",
            EntryCounters::Sampled => "sampled",
            EntryCounters::Off => "off",
        }
    }
}

/// One interface to filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Interface name (`eth1`).
    pub name: String,
    /// Attach mode; default `auto` (native, else generic with a warning).
    #[serde(default)]
    pub mode: Mode,
}

/// Where the agent serves Prometheus metrics (`[metrics]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT` for `GET /metrics`, or `"off"`. Unset: the default,
    /// [`DEFAULT_METRICS_LISTEN`] (loopback only), where a port already in
    /// use is logged and the agent runs on; a port set here that cannot be
    /// bound stops the agent at start.
    pub listen: Option<String>,
}

/// The metrics address when `[metrics] listen` is unset.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9436";

impl MetricsConfig {
    /// The address to serve on (`None`: off) and whether it was configured
    /// explicitly.
    pub fn listen_addr(&self) -> Result<(Option<std::net::SocketAddr>, bool), String> {
        match self.listen.as_deref() {
            None => Ok((DEFAULT_METRICS_LISTEN.parse().ok(), false)),
            Some("off") => Ok((None, true)),
            Some(s) => s.parse().map(|a| (Some(a), true)).map_err(|e| {
                format!("[metrics] listen = {s:?}: {e} (want HOST:PORT like \"127.0.0.1:9436\" or \"off\")")
            }),
        }
    }
}

/// Input limits of every feed, and how feeds are fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted feed (file or HTTP body), in bytes; an integer or a
    /// string with a unit (`"64MiB"`, `"500kB"`). Default 64 MiB.
    #[serde(deserialize_with = "de_bytes")]
    pub max_bytes: usize,
    /// Most entries one feed may produce. Default 1,000,000.
    pub max_entries: usize,
    /// Longest accepted line of a line-based format. Default 4096.
    pub max_line_len: usize,
    /// Timeout of one HTTP fetch attempt (connect to last byte). Default 30s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed HTTP fetch (with backoff) before the refresh is
    /// counted as failed. Default 3.
    pub retries: u32,
    /// After a failed refresh of an HTTP feed, the next attempt comes
    /// after this long instead of a whole `refresh`, doubling with each
    /// consecutive failure up to `retry_backoff_max`, never later than
    /// `refresh`, and not sooner than the server's `Retry-After`. Default
    /// 30s.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Upper bound of that backoff. Default 1h.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let f = FeedLimits::default();
        Limits {
            max_bytes: f.max_bytes,
            max_entries: f.max_entries,
            max_line_len: f.max_line_len,
            timeout: Duration::from_secs(30),
            retries: 3,
            retry_backoff: Duration::from_secs(30),
            retry_backoff_max: Duration::from_secs(3600),
        }
    }
}

impl Limits {
    /// How long after the `failures`-th consecutive failed refresh (1-based)
    /// of a feed refreshed every `refresh` its next attempt comes:
    /// `retry_backoff x 2^(failures-1)`, at most `retry_backoff_max`, at
    /// least the server's `retry_after`, and never later than `refresh`.
    pub fn retry_delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        refresh: Duration,
    ) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        let backoff = self
            .retry_backoff
            .saturating_mul(1u32 << exp)
            .min(self.retry_backoff_max);
        backoff.max(retry_after.unwrap_or_default()).min(refresh)
    }

    /// The parser's view of these limits.
    pub fn feed_limits(&self) -> FeedLimits {
        FeedLimits {
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
            max_line_len: self.max_line_len,
        }
    }
}

/// Guards against a broken or hostile feed blocking too much or unblocking
/// too much at once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Safety {
    /// An update that removes more than this fraction of a feed's entries
    /// is held (a truncated download looks exactly like this). In (0, 1];
    /// 1 never holds. Default 0.5.
    pub max_shrink: f64,
    /// A held shrink is applied once it has been seen on this many
    /// consecutive refreshes (the first sighting counts). At least 1.
    /// Default 3.
    pub hold_refreshes: u32,
    /// IPv4 prefixes shorter than this are rejected unless the feed has
    /// `allow_broad`. Default 8.
    pub broadest_v4: u8,
    /// IPv6 prefixes shorter than this are rejected unless the feed has
    /// `allow_broad`. Default 32.
    pub broadest_v6: u8,
    /// A copy of a feed where more than this fraction of the data lines
    /// (or STIX objects) is rejected is a failed fetch: the last-known-good
    /// copy stays enforced and the bad copy is never saved. A copy where
    /// nothing parses always fails. In [0, 1]; a feed's own
    /// `max_rejected_share` overrides it. Default 0.5.
    pub max_rejected_share: f64,
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            max_shrink: 0.5,
            hold_refreshes: 3,
            broadest_v4: 8,
            broadest_v6: 32,
            max_rejected_share: 0.5,
        }
    }
}

impl Safety {
    /// Whether `net` is broader than the limit of its family.
    pub fn too_broad(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => n.prefix_len() < self.broadest_v4,
            IpNet::V6(n) => n.prefix_len() < self.broadest_v6,
        }
    }

    /// The limit for `net`'s family (for messages).
    pub fn broadest_for(&self, net: &IpNet) -> u8 {
        match net {
            IpNet::V4(_) => self.broadest_v4,
            IpNet::V6(_) => self.broadest_v6,
        }
    }
}

/// Sources that always pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowlistConfig {
    /// Inline addresses and prefixes (normalised: host bits cleared).
    #[serde(deserialize_with = "de_nets")]
    pub entries: Vec<IpNet>,
    /// Feeds whose role is `allow`. Listing them here as well as setting
    /// their role is deliberate: a feed can only unblock traffic when both
    /// say so.
    pub feeds: Vec<String>,
}

/// Whether a feed blocks or allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Its entries are block (or monitor) entries.
    #[default]
    Block,
    /// Its addresses and prefixes join the allowlist.
    Allow,
}

impl Role {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Block => "block",
            Role::Allow => "allow",
        }
    }
}

/// Where a feed comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Source {
    /// A local file (`file:/etc/edge-filter/feeds/x.txt`; a relative path is
    /// relative to the configuration file's directory).
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Http(String),
}

impl Source {
    /// A file name for [`feeds::detect_format`]: the path, or the URL's path
    /// without query (its extension is a hint).
    pub fn format_hint(&self) -> PathBuf {
        match self {
            Source::File(p) => p.clone(),
            Source::Http(url) => {
                let no_query = url.split(['?', '#']).next().unwrap_or("");
                let path = no_query
                    .split_once("://")
                    .map_or("", |(_, rest)| rest)
                    .split_once('/')
                    .map_or("", |(_, p)| p);
                PathBuf::from(path)
            }
        }
    }

    /// Whether fetching it needs the network.
    pub fn is_http(&self) -> bool {
        matches!(self, Source::Http(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "file:{}", p.display()),
            Source::Http(u) => f.write_str(u),
        }
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        if let Some(rest) = s.strip_prefix("file:") {
            // `file:///p` is the URL spelling of `file:/p`; a host is not.
            let path = match rest.strip_prefix("//") {
                Some(r) if r.starts_with('/') => r,
                Some(_) => {
                    return Err(format!(
                        "source '{s}': a file: URL with a host is not supported (use file:/path)"
                    ));
                }
                None => rest,
            };
            if path.is_empty() {
                return Err(format!("source '{s}': file: needs a path"));
            }
            return Ok(Source::File(PathBuf::from(path)));
        }
        for scheme in ["http://", "https://"] {
            if lower.starts_with(scheme) {
                let rest = &s[scheme.len()..];
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                if host.is_empty() {
                    return Err(format!("source '{s}': URL has no host"));
                }
                if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!("source '{s}': URL contains whitespace"));
                }
                return Ok(Source::Http(s.to_string()));
            }
        }
        Err(format!(
            "source '{s}' is not supported (use file:/path, http://... or https://...)"
        ))
    }
}

impl TryFrom<String> for Source {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

/// A feed's format: named, or detected from its name and first bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FeedFormat {
    /// [`feeds::detect_format`] on every fetch.
    #[default]
    Auto,
    /// Always this format.
    Fixed(Format),
}

impl FeedFormat {
    /// The format to parse `bytes` with (`hint`: see [`Source::format_hint`]).
    pub fn resolve(self, hint: &Path, bytes: &[u8]) -> Format {
        match self {
            FeedFormat::Auto => feeds::detect_format(hint, bytes),
            FeedFormat::Fixed(f) => f,
        }
    }

    /// Whether `format` may be what this resolves to.
    fn admits(self, format: Format) -> bool {
        self == FeedFormat::Auto || self == FeedFormat::Fixed(format)
    }
}

impl fmt::Display for FeedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedFormat::Auto => f.write_str("auto"),
            FeedFormat::Fixed(x) => f.write_str(x.name()),
        }
    }
}

impl TryFrom<String> for FeedFormat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.eq_ignore_ascii_case("auto") {
            Ok(FeedFormat::Auto)
        } else {
            s.parse().map(FeedFormat::Fixed)
        }
    }
}

impl From<FeedFormat> for String {
    fn from(f: FeedFormat) -> String {
        f.to_string()
    }
}

/// A CSV column in the config: a header name (`"dst_ip"`) or a 0-based
/// position (`1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvColumn(pub Column);

impl<'de> Deserialize<'de> for CsvColumn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = CsvColumn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name or a 0-based column index")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CsvColumn, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("column name is empty"));
                }
                Ok(CsvColumn(Column::name(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<CsvColumn, E> {
                usize::try_from(v)
                    .map(|i| CsvColumn(Column::Index(i)))
                    .map_err(|_| E::custom(format!("column index {v} is negative")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<CsvColumn, E> {
                Ok(CsvColumn(Column::Index(v as usize)))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for CsvColumn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Column::Name(n) => s.serialize_str(n),
            Column::Index(i) => s.serialize_u64(*i as u64),
        }
    }
}

/// `[feed.csv]`: the config form of [`CsvMapping`] (which the parser owns
/// and keeps free of serde).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// Address or prefix column (required).
    pub ip_column: CsvColumn,
    /// Port column; absent: address-only entries.
    #[serde(default)]
    pub port_column: Option<CsvColumn>,
    /// Protocol of every port entry (`tcp` or `udp`).
    #[serde(default)]
    pub proto: Option<Proto>,
    /// Column holding `tcp`/`udp` (instead of `proto`). Neither: a port
    /// yields a TCP and a UDP entry.
    #[serde(default)]
    pub proto_column: Option<CsvColumn>,
    /// Indicator column (malware family, id, ...).
    #[serde(default)]
    pub indicator_column: Option<CsvColumn>,
    /// Confidence column (0-100).
    #[serde(default)]
    pub confidence_column: Option<CsvColumn>,
    /// Start-of-validity column.
    #[serde(default)]
    pub valid_from_column: Option<CsvColumn>,
    /// End-of-validity column.
    #[serde(default)]
    pub expires_column: Option<CsvColumn>,
    /// Free-text column.
    #[serde(default)]
    pub description_column: Option<CsvColumn>,
    /// Which packet port the port column is (`src`: the remote endpoint's
    /// port, as for C2 servers; `dst`: a local service). Default `src`.
    #[serde(default)]
    pub side: Side,
    /// Field separator, one ASCII character. Default `,`.
    #[serde(
        default = "default_delimiter",
        deserialize_with = "de_delimiter",
        serialize_with = "ser_delimiter"
    )]
    pub delimiter: u8,
}

impl CsvConfig {
    /// The parser's mapping.
    pub fn mapping(&self) -> CsvMapping {
        let col = |c: &Option<CsvColumn>| c.as_ref().map(|c| c.0.clone());
        CsvMapping {
            ip_column: self.ip_column.0.clone(),
            port_column: col(&self.port_column),
            proto: match (&self.proto, &self.proto_column) {
                (Some(p), _) => Some(ProtoSpec::Fixed(*p)),
                (None, Some(c)) => Some(ProtoSpec::Column(c.0.clone())),
                (None, None) => None,
            },
            indicator_column: col(&self.indicator_column),
            confidence_column: col(&self.confidence_column),
            valid_from_column: col(&self.valid_from_column),
            expires_column: col(&self.expires_column),
            description_column: col(&self.description_column),
            side: self.side,
            delimiter: self.delimiter,
        }
    }
}

/// One `[[feed]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Unique name, `[a-z0-9_-]`, 1-64 characters (it names state files).
    pub name: String,
    /// `file:/path` or an `http(s)://` URL.
    pub source: Source,
    /// `auto` (default) or a format name.
    #[serde(default)]
    pub format: FeedFormat,
    /// How often to fetch (HTTP) or check for changes (files). Default 5m.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Action of entries whose input does not say. Default `drop`.
    #[serde(default = "default_action")]
    pub action: Action,
    /// Entries with a confidence below this become `monitor`; entries
    /// without a confidence are not affected.
    #[serde(default, deserialize_with = "de_percent")]
    pub confidence_threshold: Option<u8>,
    /// Entries without their own expiry expire this long after the feed
    /// last asserted them (its last successful fetch).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Accept prefixes broader than `[safety]` allows from this feed.
    #[serde(default)]
    pub allow_broad: bool,
    /// `block` (default) or `allow`.
    #[serde(default)]
    pub role: Role,
    /// Column mapping for CSV feeds; absent: recognised from the header.
    #[serde(default)]
    pub csv: Option<CsvConfig>,
    /// STIX: block `url:value` indicators whose host is an IP literal, as a
    /// TCP address+port entry. Default false (broader than the URL).
    #[serde(default)]
    pub url_ip_hosts: bool,
    /// This feed's `[safety] max_rejected_share`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rejected_share: Option<f64>,
    /// CrowdSec: the file holding the bouncer API key (sent as
    /// `X-Api-Key`); relative to the configuration file. Read once at
    /// start; it must be private to root or the agent's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// CrowdSec: decisions of a type other than `ban` are `monitor`
    /// (default) or `skip`ped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_ban_decisions: Option<NonBan>,
    /// CrowdSec: only decisions from these origins (`crowdsec`, `cscli`,
    /// `CAPI`, `lists`, ...), asked of the LAPI. Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
    /// CrowdSec: only decisions whose scenario contains one of these,
    /// asked of the LAPI. Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scenarios_containing: Vec<String>,
    /// TAXII: the collection polled, by its `id` or its `title`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// TAXII: the API root's URL (absolute, or relative to `source`);
    /// absent: the discovery's `default`, or its only API root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_root: Option<String>,
    /// TAXII: HTTP basic authentication's user (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TAXII: the file holding `username`'s password; relative to the
    /// configuration file, private to root or the agent's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TAXII: the file holding a bearer token (instead of basic
    /// authentication); same rules as `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// TAXII: objects asked per page (`limit`). Default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// TAXII: most pages one poll follows before it gives up (a `next`
    /// that never ends). Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pages: Option<u32>,
    /// MISP (`[feed.misp]`): what `to_ids` false becomes, confidence from
    /// tags and threat levels, restSearch filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misp: Option<MispConfig>,
}

/// `[feed.misp]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MispConfig {
    /// Attributes with `to_ids` false: `monitor` (default) or `skip`.
    #[serde(default)]
    pub non_ids: NonIds,
    /// Confidence (0-100) by tag name; see [`MispOptions::tag_confidence`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_confidence: BTreeMap<String, u8>,
    /// Confidence (0-100) by threat level (`high`, `medium`, `low`,
    /// `undefined`); see [`MispOptions::threat_level_confidence`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub threat_level_confidence: BTreeMap<ThreatLevel, u8>,
    /// restSearch: attributes per page (`limit`). Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// restSearch: most pages one poll reads (a server that keeps
    /// answering full pages is a loop). Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pages: Option<u32>,
    /// restSearch: extra search filters, sent as they are in the request
    /// body (`tags`, `last`, `org`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filters: BTreeMap<String, toml::Value>,
}

impl MispConfig {
    /// The parser's options.
    pub fn options(&self) -> MispOptions {
        MispOptions {
            non_ids: self.non_ids,
            tag_confidence: self.tag_confidence.clone(),
            threat_level_confidence: self.threat_level_confidence.clone(),
        }
    }
}

/// How a MISP feed's copies are fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MispSource {
    /// One document, fetched and parsed like any feed.
    Document,
    /// A MISP feed: manifest.json and one file per event.
    Feed,
    /// The API: `POST /attributes/restSearch` with `api_key_file`.
    RestSearch,
}

impl FeedConfig {
    /// A feed of `source` with every other option at its default: what a
    /// `[[feed]]` table with only `name` and `source` reads as.
    pub fn new(name: impl Into<String>, source: Source) -> FeedConfig {
        FeedConfig {
            name: name.into(),
            source,
            format: FeedFormat::default(),
            refresh: default_refresh(),
            action: default_action(),
            confidence_threshold: None,
            ttl: None,
            allow_broad: false,
            role: Role::default(),
            csv: None,
            url_ip_hosts: false,
            max_rejected_share: None,
            api_key_file: None,
            non_ban_decisions: None,
            origins: Vec::new(),
            scenarios_containing: Vec::new(),
            collection: None,
            api_root: None,
            username: None,
            password_file: None,
            token_file: None,
            page_size: None,
            max_pages: None,
            misp: None,
        }
    }

    /// How to parse this feed under `limits`.
    pub fn feed_options(&self, limits: &Limits) -> FeedOptions {
        FeedOptions {
            limits: limits.feed_limits(),
            now: None,
            action: self.action,
            csv: self.csv.as_ref().map(CsvConfig::mapping),
            url_ip_hosts: self.url_ip_hosts,
            // Known only once the body is fetched.
            end_unproven: false,
            crowdsec_non_ban: self.non_ban_decisions.unwrap_or_default(),
            misp: self
                .misp
                .as_ref()
                .map(MispConfig::options)
                .unwrap_or_default(),
            // The caller's choice (`intake::parse_body` packs).
            pack: false,
        }
    }

    /// How a `format = "misp"` feed is fetched (`None`: another format):
    /// with `api_key_file`, the restSearch API at `source`; a source
    /// ending in `/` or `manifest.json`, or a directory, is a MISP feed;
    /// anything else is one document.
    pub fn misp_source(&self) -> Option<MispSource> {
        if self.format != FeedFormat::Fixed(Format::Misp) {
            return None;
        }
        Some(match &self.source {
            Source::Http(_) if self.api_key_file.is_some() => MispSource::RestSearch,
            Source::Http(u) => {
                let path = u.split(['?', '#']).next().unwrap_or(u);
                if path.ends_with('/') || path.ends_with("/manifest.json") {
                    MispSource::Feed
                } else {
                    MispSource::Document
                }
            }
            Source::File(p) => {
                if p.is_dir() || p.file_name().is_some_and(|n| n == "manifest.json") {
                    MispSource::Feed
                } else {
                    MispSource::Document
                }
            }
        })
    }

    /// The largest share of rejected lines a usable copy of this feed may
    /// have (its own `max_rejected_share`, else `[safety]`'s).
    pub fn max_rejected_share(&self, safety: &Safety) -> f64 {
        self.max_rejected_share.unwrap_or(safety.max_rejected_share)
    }

    /// Whether this is a CrowdSec LAPI polled over HTTP (rather than a
    /// recorded answer in a file).
    pub fn is_crowdsec_lapi(&self) -> bool {
        self.format == FeedFormat::Fixed(Format::Crowdsec) && self.source.is_http()
    }

    /// Whether this is a TAXII 2.1 server polled over HTTP (rather than a
    /// recorded envelope in a file).
    pub fn is_taxii_server(&self) -> bool {
        self.format == FeedFormat::Fixed(Format::Taxii) && self.source.is_http()
    }

    /// Whether the feed's addresses join the allowlist.
    pub fn is_allow(&self) -> bool {
        self.role == Role::Allow
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Last-known-good feeds and guard state. Default `/var/lib/edge-filter`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Root of the bpffs pins. Default `/sys/fs/bpf/edge-filter`.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// How often the maps are compared with the desired state (repairing
    /// drift). Default 30s.
    #[serde(default = "default_reconcile", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Malformed IP packets: `pass` (default) or `drop`.
    #[serde(default)]
    pub malformed: Malformed,
    /// Per-entry hit counters: `exact` (default), `sampled` or `off`.
    #[serde(default)]
    pub entry_counters: EntryCounters,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[[interface]]`: at least one.
    #[serde(rename = "interface", default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// `[capacities]`: map sizes.
    #[serde(default)]
    pub capacities: Capacities,
    /// `[limits]`.
    #[serde(default)]
    pub limits: Limits,
    /// `[safety]`.
    #[serde(default)]
    pub safety: Safety,
    /// `[allowlist]`.
    #[serde(default)]
    pub allowlist: AllowlistConfig,
    /// `[[feed]]`.
    #[serde(rename = "feed", default)]
    pub feeds: Vec<FeedConfig>,
}

impl Config {
    /// Read, parse and validate `path`. Every relative path in it
    /// (`state_dir`, `bpffs`, `file:` sources) is made relative to the
    /// file's directory, made absolute: the agent's working directory is
    /// usually `/`, not where the config lives, and one rule for every path
    /// is the one nobody has to remember.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load(path)
    }

    /// Parse and validate `text`; `name` labels errors. Relative paths stay
    /// relative (to the working directory).
    pub fn from_str_named(text: &str, name: &str) -> Result<Config, ConfigError> {
        Self::parse(text, name, None)
    }

    /// A configuration of `interfaces` (attach mode `auto`), the inline
    /// `allowlist` and `feeds`, every other option at its default (what a
    /// file with only those reads as), validated like a file; `name` labels
    /// errors.
    pub fn new(
        name: &str,
        interfaces: &[&str],
        allowlist: Vec<IpNet>,
        feeds: Vec<FeedConfig>,
    ) -> Result<Config, ConfigError> {
        let cfg = Config {
            state_dir: default_state_dir(),
            bpffs: default_bpffs(),
            reconcile_interval: default_reconcile(),
            malformed: Malformed::default(),
            entry_counters: EntryCounters::default(),
            metrics: MetricsConfig::default(),
            interfaces: interfaces
                .iter()
                .map(|i| InterfaceConfig {
                    name: i.to_string(),
                    mode: Mode::default(),
                })
                .collect(),
            capacities: Capacities::default(),
            limits: Limits::default(),
            safety: Safety::default(),
            allowlist: AllowlistConfig {
                entries: allowlist.iter().map(IpNet::trunc).collect(),
                feeds: Vec::new(),
            },
            feeds,
        };
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                file: name.to_string(),
                problems,
            })
        }
    }

    fn parse(text: &str, name: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| syntax(name, text, &e))?;
        if let Some(base) = base {
            let mut paths: Vec<&mut PathBuf> = vec![&mut cfg.state_dir, &mut cfg.bpffs];
            for f in &mut cfg.feeds {
                if let Source::File(p) = &mut f.source {
                    paths.push(p);
                }
                for p in [&mut f.api_key_file, &mut f.password_file, &mut f.token_file]
                    .into_iter()
                    .flatten()
                {
                    paths.push(p);
                }
            }
            for p in paths.into_iter().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        }
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                file: name.to_string(),
                problems,
            })
        }
    }

    /// Every consistency or range problem (empty when valid).
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.interfaces.is_empty() {
            p.push("at least one [[interface]] is required".to_string());
        }
        let mut ifaces = BTreeSet::new();
        for i in &self.interfaces {
            if !valid_ifname(&i.name) {
                p.push(format!(
                    "interface name '{}' is invalid (1-15 characters, no '/', ':' or whitespace)",
                    i.name
                ));
            } else if !ifaces.insert(i.name.as_str()) {
                p.push(format!("interface '{}' is listed twice", i.name));
            }
        }
        if self.reconcile_interval.is_zero() {
            p.push("reconcile_interval must be greater than zero".to_string());
        }
        if let Err(e) = self.metrics.listen_addr() {
            p.push(e);
        }
        let l = &self.limits;
        for (key, zero) in [
            ("max_bytes", l.max_bytes == 0),
            ("max_entries", l.max_entries == 0),
            ("max_line_len", l.max_line_len == 0),
            ("timeout", l.timeout.is_zero()),
            ("retry_backoff", l.retry_backoff.is_zero()),
        ] {
            if zero {
                p.push(format!("[limits] {key} must be greater than zero"));
            }
        }
        if l.retry_backoff_max < l.retry_backoff {
            p.push("[limits] retry_backoff_max must be at least retry_backoff".to_string());
        }
        let s = &self.safety;
        if !(s.max_shrink > 0.0 && s.max_shrink <= 1.0) {
            p.push(format!(
                "[safety] max_shrink = {} is out of range (more than 0, at most 1)",
                s.max_shrink
            ));
        }
        if s.hold_refreshes == 0 {
            p.push("[safety] hold_refreshes must be at least 1".to_string());
        }
        for (key, value, max, everything) in [
            ("broadest_v4", s.broadest_v4, 32, "0.0.0.0/0"),
            ("broadest_v6", s.broadest_v6, 128, "::/0"),
        ] {
            if value > max {
                p.push(format!(
                    "[safety] {key} = {value} is out of range (1-{max})"
                ));
            } else if value == 0 {
                // Refused rather than warned about: 0 turns the breadth
                // check off for every feed, so one bad line (`{everything}`)
                // blocks every source; a feed that really lists broad
                // prefixes says so itself with allow_broad.
                p.push(format!(
                    "[safety] {key} = 0 turns the breadth check off: any feed line such as {everything} would block every source (set allow_broad = true on the feeds that may list broad prefixes instead)"
                ));
            }
        }
        if !(0.0..=1.0).contains(&s.max_rejected_share) {
            p.push(format!(
                "[safety] max_rejected_share = {} is out of range (0 to 1)",
                s.max_rejected_share
            ));
        }
        let mut by_name: BTreeMap<&str, &FeedConfig> = BTreeMap::new();
        for f in &self.feeds {
            if !valid_feed_name(&f.name) {
                p.push(format!(
                    "feed name '{}' is invalid (1-64 characters of a-z, 0-9, '_', '-')",
                    f.name
                ));
            } else if f.name == "inline" {
                p.push(
                    "feed name 'inline' is reserved (it labels [allowlist] entries)".to_string(),
                );
            } else if by_name.insert(&f.name, f).is_some() {
                p.push(format!("feed '{}' is defined twice", f.name));
            }
            p.extend(
                feed_problems(f)
                    .into_iter()
                    .map(|m| format!("feed '{}': {m}", f.name)),
            );
        }
        let mut listed = BTreeSet::new();
        for name in &self.allowlist.feeds {
            if !listed.insert(name.as_str()) {
                p.push(format!("[allowlist] feeds lists '{name}' twice"));
                continue;
            }
            match by_name.get(name.as_str()) {
                None => p.push(format!(
                    "[allowlist] feeds names '{name}', which is not a [[feed]]"
                )),
                Some(f) if !f.is_allow() => p.push(format!(
                    "[allowlist] feeds names '{name}', whose role is \"{}\" (set role = \"allow\" on that feed)",
                    f.role.name()
                )),
                Some(_) => {}
            }
        }
        for f in by_name.values().filter(|f| f.is_allow()) {
            if !listed.contains(f.name.as_str()) {
                p.push(format!(
                    "feed '{}' has role = \"allow\" but is not listed in [allowlist] feeds (list it there to confirm it may unblock traffic)",
                    f.name
                ));
            }
        }
        p
    }

    /// Settings that are valid but weaken a safety net, one message each
    /// naming the key (empty when none). `check-config` prints them and the
    /// agent logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let s = &self.safety;
        let d = Safety::default();
        if s.max_shrink >= 1.0 {
            w.push(format!(
                "[safety] max_shrink = {} turns the shrink guard off: an empty or truncated download removes all of a feed's entries at once (default {})",
                s.max_shrink, d.max_shrink
            ));
        }
        if s.hold_refreshes == 1 {
            w.push(format!(
                "[safety] hold_refreshes = 1 applies a shrink on its first sighting, so the shrink guard never holds one (default {})",
                d.hold_refreshes
            ));
        }
        for (key, value, default, bits) in [
            ("broadest_v4", s.broadest_v4, d.broadest_v4, 32u32),
            ("broadest_v6", s.broadest_v6, d.broadest_v6, 128),
        ] {
            if value > 0 && value < default {
                w.push(format!(
                    "[safety] {key} = {value} lets any feed block a /{value} (2^{} addresses) by one line (default {default}; prefer allow_broad = true on the feeds that need broad prefixes)",
                    bits - u32::from(value)
                ));
            }
        }
        w
    }

    /// The feed called `name`.
    pub fn feed(&self, name: &str) -> Option<&FeedConfig> {
        self.feeds.iter().find(|f| f.name == name)
    }

    /// Whether malformed packets are dropped.
    pub fn malformed_drop(&self) -> bool {
        self.malformed == Malformed::Drop
    }

    /// The datapath's runtime `CONFIG_*` flags this configuration asks for.
    pub fn runtime_flags(&self) -> u32 {
        let malformed = if self.malformed_drop() {
            edge_filter_common::CONFIG_MALFORMED_DROP
        } else {
            0
        };
        malformed | self.entry_counters.flags()
    }
}

/// Read, parse and validate the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: name.clone(),
        source,
    })?;
    // The directory of `path`, absolute (`c.toml` is in the working
    // directory).
    let base = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    Config::parse(&text, &name, base.as_deref())
}

/// Problems of one feed on its own (prefixed with the feed by the caller).
fn feed_problems(f: &FeedConfig) -> Vec<String> {
    let mut p = Vec::new();
    if f.refresh.is_zero() {
        p.push("refresh must be greater than zero".to_string());
    }
    if f.ttl.is_some_and(|t| t.is_zero()) {
        p.push("ttl must be greater than zero".to_string());
    }
    if let Some(csv) = &f.csv {
        if !f.format.admits(Format::Csv) {
            p.push(format!(
                "a csv mapping is given but format is \"{}\" (use \"csv\" or \"auto\")",
                f.format
            ));
        }
        if csv.proto.is_some() && csv.proto_column.is_some() {
            p.push("csv: give proto or proto_column, not both".to_string());
        }
    }
    if f.url_ip_hosts
        && !f.format.admits(Format::Stix)
        && f.format != FeedFormat::Fixed(Format::Taxii)
    {
        p.push(format!(
            "url_ip_hosts applies to STIX only but format is \"{}\"",
            f.format
        ));
    }
    if f.is_allow() && f.confidence_threshold.is_some() {
        p.push("confidence_threshold has no effect on an allow feed".to_string());
    }
    if let Some(x) = f.max_rejected_share
        && !(0.0..=1.0).contains(&x)
    {
        p.push(format!("max_rejected_share = {x} is out of range (0 to 1)"));
    }
    let crowdsec = f.format == FeedFormat::Fixed(Format::Crowdsec);
    if crowdsec && f.source.is_http() && f.api_key_file.is_none() {
        p.push(
            "format \"crowdsec\" needs api_key_file, a file holding the bouncer key (`cscli bouncers add NAME -o raw`)"
                .to_string(),
        );
    }
    let misp = f.format == FeedFormat::Fixed(Format::Misp);
    if let Some(m) = &f.misp {
        if !f.format.admits(Format::Misp) {
            p.push(format!(
                "a [feed.misp] table is given but format is \"{}\" (use \"misp\")",
                f.format
            ));
        }
        p.extend(m.options().problems());
        if m.page_size == Some(0) || m.max_pages == Some(0) {
            p.push("misp.page_size and misp.max_pages must be greater than zero".to_string());
        }
    }
    if misp && f.api_key_file.is_some() && !f.source.is_http() {
        p.push(
            "api_key_file applies to a MISP server (an http(s) source), not to a file".to_string(),
        );
    }
    if !crowdsec {
        for (key, set) in [
            ("api_key_file", f.api_key_file.is_some() && !misp),
            ("non_ban_decisions", f.non_ban_decisions.is_some()),
            ("origins", !f.origins.is_empty()),
            ("scenarios_containing", !f.scenarios_containing.is_empty()),
        ] {
            if set {
                p.push(format!(
                    "{key} applies to format \"crowdsec\" only but format is \"{}\"",
                    f.format
                ));
            }
        }
    }
    p.extend(taxii_problems(f));
    p
}

/// The TAXII keys' problems.
fn taxii_problems(f: &FeedConfig) -> Vec<String> {
    let mut p = Vec::new();
    let taxii = f.format == FeedFormat::Fixed(Format::Taxii);
    if !taxii {
        for (key, set) in [
            ("collection", f.collection.is_some()),
            ("api_root", f.api_root.is_some()),
            ("username", f.username.is_some()),
            ("password_file", f.password_file.is_some()),
            ("token_file", f.token_file.is_some()),
            ("page_size", f.page_size.is_some()),
            ("max_pages", f.max_pages.is_some()),
        ] {
            if set {
                p.push(format!(
                    "{key} applies to format \"taxii\" only but format is \"{}\"",
                    f.format
                ));
            }
        }
        return p;
    }
    if f.source.is_http() && f.collection.as_deref().is_none_or(|c| c.trim().is_empty()) {
        p.push(
            "format \"taxii\" needs collection, the id or title of the collection to poll (see GET {api_root}/collections/)"
                .to_string(),
        );
    }
    match (&f.username, &f.password_file, &f.token_file) {
        (Some(_), None, _) => p.push("username needs password_file, a file holding the password".into()),
        (None, Some(_), _) => p.push("password_file needs username".into()),
        (Some(_), Some(_), Some(_)) => p.push(
            "give username + password_file (basic authentication) or token_file (bearer token), not both"
                .into(),
        ),
        _ => {}
    }
    if let Some(u) = &f.username
        && (u.is_empty() || u.contains(':') || u.chars().any(char::is_control))
    {
        p.push("username must be non-empty, without ':' or control characters".into());
    }
    if f.page_size.is_some_and(|n| n == 0 || n > 100_000) {
        p.push("page_size must be 1 to 100000".into());
    }
    if f.max_pages == Some(0) {
        p.push("max_pages must be at least 1".into());
    }
    p
}

/// Linux interface names: at most IFNAMSIZ - 1 bytes, no '/', ':' or space.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Feed names end up in file names and log lines: keep them boring.
fn valid_feed_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A toml error as file:line:column plus the offending line.
fn syntax(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column, context) = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = text[line_start..start].chars().count() + 1;
            let line_text = text[line_start..].lines().next().unwrap_or("").trim();
            let context =
                (!line_text.is_empty()).then(|| crate::intel::blocklist::clip(line_text, 120));
            (line, column, context)
        }
        None => (0, 0, None),
    };
    ConfigError::Syntax {
        file: file.to_string(),
        line,
        column,
        message: e.message().trim().to_string(),
        context,
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_bpffs() -> PathBuf {
    PathBuf::from(crate::kernel::paths::DEFAULT_ROOT)
}

fn default_reconcile() -> Duration {
    Duration::from_secs(30)
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_action() -> Action {
    Action::Drop
}

fn default_delimiter() -> u8 {
    b','
}

/// Inline allowlist entries, parsed like blocklist addresses (a bare
/// address is a /32 or /128) and normalised.
fn de_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| {
            crate::intel::blocklist::parse_net(t.trim())
                .map(|n| n.trunc())
                .map_err(|e| serde::de::Error::custom(format!("allowlist entry '{t}': {e}")))
        })
        .collect()
}

/// 0-100.
fn de_percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    let v = i64::deserialize(d)?;
    match u8::try_from(v) {
        Ok(n) if n <= 100 => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!(
            "confidence_threshold {v} is out of range (0-100)"
        ))),
    }
}

/// One ASCII character.
fn de_delimiter<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_bytes() {
        [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => Ok(*b),
        _ => Err(serde::de::Error::custom(format!(
            "delimiter '{}' must be one ASCII character other than '\"' or a newline",
            s.escape_debug()
        ))),
    }
}

fn ser_delimiter<S: Serializer>(b: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&(*b as char).to_string())
}

/// A byte count: an integer, or a string with a unit (`B`, `kB`/`KB`,
/// `MB`, `GB` powers of 1000; `KiB`, `MiB`, `GiB` powers of 1024).
fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte count (integer, or a string like \"64MiB\")")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("byte count {v} is negative")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("byte count {v} is too large")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<usize, E> {
            parse_bytes(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// See [`de_bytes`].
fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid byte count '{text}' (units: B, kB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("invalid byte count '{text}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid config, plus `extra`.
    fn cfg(extra: &str) -> Result<Config, ConfigError> {
        let text = format!("[[interface]]\nname = \"eth1\"\n{extra}");
        Config::from_str_named(&text, "test.toml")
    }

    /// What `Config::new` builds is what the same file reads as: its
    /// defaults are serde's.
    #[test]
    fn built_config_equals_the_file_it_stands_for() {
        let feeds = vec![
            FeedConfig::new("a_0", Source::File("/f/a.txt".into())),
            FeedConfig::new("b_1", "https://example.org/b.csv".parse().unwrap()),
        ];
        let allow = vec![
            "192.0.2.7/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let built = Config::new("t", &["eth1"], allow, feeds).unwrap();
        let read = cfg(
            "[allowlist]\nentries = [\"192.0.2.7/24\", \"2001:db8::/32\"]\n\
             [[feed]]\nname = \"a_0\"\nsource = \"file:/f/a.txt\"\n\
             [[feed]]\nname = \"b_1\"\nsource = \"https://example.org/b.csv\"\n",
        )
        .unwrap();
        assert_eq!(built, read);
        let e = Config::new("--feed", &[], Vec::new(), Vec::new()).unwrap_err();
        assert!(e.to_string().starts_with("--feed: at least one"), "{e}");
    }

    #[test]
    fn entry_counters_modes_and_flags() {
        use edge_filter_common::{CONFIG_COUNT_OFF, CONFIG_COUNT_SAMPLED, CONFIG_MALFORMED_DROP};
        let read = |top: &str| {
            Config::from_str_named(
                &format!("{top}\n[[interface]]\nname = \"eth1\"\n"),
                "test.toml",
            )
        };
        assert_eq!(cfg("").unwrap().entry_counters, EntryCounters::Exact);
        assert_eq!(cfg("").unwrap().runtime_flags(), 0);
        for (text, mode, flags) in [
            ("exact", EntryCounters::Exact, 0),
            ("sampled", EntryCounters::Sampled, CONFIG_COUNT_SAMPLED),
            ("off", EntryCounters::Off, CONFIG_COUNT_OFF),
        ] {
            let c = read(&format!(
                "entry_counters = \"{text}\"\nmalformed = \"drop\""
            ))
            .unwrap();
            assert_eq!(c.entry_counters, mode);
            assert_eq!(c.runtime_flags(), flags | CONFIG_MALFORMED_DROP, "{text}");
            assert_eq!(EntryCounters::of_flags(c.runtime_flags()), mode);
            assert_eq!(mode.name(), text);
        }
        assert_eq!(
            [
                EntryCounters::Exact,
                EntryCounters::Sampled,
                EntryCounters::Off
            ]
            .map(EntryCounters::sample_every),
            [1, edge_filter_common::ENTRY_SAMPLE_EVERY, 0]
        );
        let e = read("entry_counters = \"some\"").unwrap_err().to_string();
        assert!(
            e.contains("exact") && e.contains("sampled") && e.contains("off"),
            "the error lists the modes: {e}"
        );
    }

    fn err(extra: &str) -> String {
        cfg(extra).expect_err("should be rejected").to_string()
    }

    fn problems(extra: &str) -> Vec<String> {
        match cfg(extra) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = cfg("").unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/edge-filter"));
        assert_eq!(c.bpffs, Path::new(crate::kernel::paths::DEFAULT_ROOT));
        assert_eq!(c.reconcile_interval, Duration::from_secs(30));
        assert_eq!(c.malformed, Malformed::Pass);
        assert!(!c.malformed_drop());
        assert_eq!(c.interfaces[0].mode, Mode::Auto);
        assert_eq!(c.capacities, Capacities::default());
        assert_eq!(c.limits.feed_limits(), FeedLimits::default());
        assert_eq!(c.limits.timeout, Duration::from_secs(30));
        assert_eq!(c.limits.retries, 3);
        assert_eq!(c.safety, Safety::default());
        assert_eq!(c.safety.max_shrink, 0.5);
        assert_eq!(c.safety.hold_refreshes, 3);
        assert_eq!((c.safety.broadest_v4, c.safety.broadest_v6), (8, 32));
        assert!(c.allowlist.entries.is_empty() && c.feeds.is_empty());
    }

    #[test]
    fn a_feed_with_defaults_and_options() {
        let c = cfg(r#"
[[feed]]
name = "drop"
source = "file:/etc/edge-filter/feeds/drop.txt"

[[feed]]
name = "c2-csv"
source = "https://example.net/feeds/c2.csv?key=1"
format = "csv"
refresh = "1h 30m"
action = "monitor"
confidence_threshold = 80
ttl = "7d"
allow_broad = true
csv = { ip_column = "ip", port_column = 2, proto = "udp", side = "dst", delimiter = ";" }
"#)
        .unwrap();
        let d = &c.feeds[0];
        assert_eq!(
            d.source,
            Source::File("/etc/edge-filter/feeds/drop.txt".into())
        );
        assert_eq!(d.format, FeedFormat::Auto);
        assert_eq!(d.refresh, Duration::from_secs(300));
        assert_eq!(d.action, Action::Drop);
        assert_eq!((d.confidence_threshold, d.ttl), (None, None));
        assert!(!d.allow_broad && !d.url_ip_hosts && d.csv.is_none());
        assert_eq!(d.role, Role::Block);
        let f = &c.feeds[1];
        assert_eq!(
            f.source,
            Source::Http("https://example.net/feeds/c2.csv?key=1".into())
        );
        assert_eq!(f.source.format_hint(), Path::new("feeds/c2.csv"));
        assert_eq!(f.format, FeedFormat::Fixed(Format::Csv));
        assert_eq!(f.refresh, Duration::from_secs(5400));
        assert_eq!(f.ttl, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(f.confidence_threshold, Some(80));
        let o = f.feed_options(&c.limits);
        assert_eq!(o.action, Action::Monitor);
        assert_eq!(o.limits, FeedLimits::default());
        let m = o.csv.unwrap();
        assert_eq!(m.ip_column, Column::name("ip"));
        assert_eq!(m.port_column, Some(Column::Index(2)));
        assert_eq!(m.proto, Some(ProtoSpec::Fixed(Proto::Udp)));
        assert_eq!((m.side, m.delimiter), (Side::Dst, b';'));
        assert_eq!(
            c.feed("c2-csv").map(|f| f.source.to_string()).as_deref(),
            Some("https://example.net/feeds/c2.csv?key=1")
        );
    }

    #[test]
    fn sources() {
        let ok = |s: &str| s.parse::<Source>().unwrap();
        assert_eq!(ok("file:/a/b"), Source::File("/a/b".into()));
        assert_eq!(ok("file:///a/b"), Source::File("/a/b".into()));
        assert_eq!(ok("file:rel/x.txt"), Source::File("rel/x.txt".into()));
        assert_eq!(ok("HTTP://h/x"), Source::Http("HTTP://h/x".into()));
        assert_eq!(ok("file:/a/b").to_string(), "file:/a/b");
        let bad = |s: &str| s.parse::<Source>().unwrap_err();
        assert_eq!(
            bad("/etc/x"),
            "source '/etc/x' is not supported (use file:/path, http://... or https://...)"
        );
        assert_eq!(bad("file:"), "source 'file:': file: needs a path");
        assert_eq!(bad("https:///x"), "source 'https:///x': URL has no host");
        assert_eq!(
            bad("file://host/x"),
            "source 'file://host/x': a file: URL with a host is not supported (use file:/path)"
        );
        assert_eq!(bad("ftp://h/x").split(' ').nth(2), Some("is"));
    }

    #[test]
    fn misp_feeds() {
        let c = Config::parse(
            "[[interface]]\nname = \"eth0\"\n[[feed]]\nname = \"m\"\nformat = \"misp\"\nsource = \"https://misp.example\"\napi_key_file = \"/k\"\n[feed.misp]\nnon_ids = \"skip\"\npage_size = 500\ntag_confidence = { 'estimative-language:confidence-in-analytic-judgment=\"high\"' = 90 }\nthreat_level_confidence = { high = 80, low = 20 }\nfilters = { tags = [\"tlp:white\"], last = \"30d\" }\n",
            "t.toml",
            None,
        )
        .unwrap();
        let f = &c.feeds[0];
        assert_eq!(f.misp_source(), Some(MispSource::RestSearch));
        let o = f.feed_options(&c.limits).misp;
        assert_eq!(o.non_ids, NonIds::Skip);
        assert_eq!(o.threat_level_confidence.get(&ThreatLevel::Low), Some(&20));
        assert_eq!(f.misp.as_ref().unwrap().page_size, Some(500));
        let err = |text: &str| Config::parse(text, "t.toml", None).unwrap_err().to_string();
        let e = err(
            "[[interface]]\nname = \"eth0\"\n[[feed]]\nname = \"m\"\nformat = \"stix\"\nsource = \"file:/x\"\n[feed.misp]\ntag_confidence = { t = 101 }\n",
        );
        assert!(
            e.contains("a [feed.misp] table is given but format is \"stix\""),
            "{e}"
        );
        assert!(
            e.contains("misp.tag_confidence: 't' = 101 is over 100"),
            "{e}"
        );
        let e = err(
            "[[interface]]\nname = \"eth0\"\n[[feed]]\nname = \"m\"\nformat = \"misp\"\nsource = \"file:/x\"\napi_key_file = \"/k\"\n",
        );
        assert!(e.contains("api_key_file applies to a MISP server"), "{e}");
    }

    #[test]
    fn crowdsec_feeds() {
        let dir = std::env::temp_dir().join(format!("ef-config-cs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[[interface]]\nname = \"eth0\"\n[[feed]]\nname = \"cs\"\nformat = \"crowdsec\"\nsource = \"http://127.0.0.1:8080\"\napi_key_file = \"keys/cs.key\"\nnon_ban_decisions = \"skip\"\norigins = [\"crowdsec\", \"cscli\"]\nscenarios_containing = [\"ssh\"]\n",
        )
        .unwrap();
        let c = load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let f = &c.feeds[0];
        assert!(f.is_crowdsec_lapi());
        assert_eq!(f.origins, ["crowdsec", "cscli"]);
        assert_eq!(f.scenarios_containing, ["ssh"]);
        assert_eq!(f.api_key_file.as_deref(), Some(&*dir.join("keys/cs.key")));
        assert_eq!(f.feed_options(&c.limits).crowdsec_non_ban, NonBan::Skip);
        let p = problems(
            "[[feed]]\nname = \"cs\"\nformat = \"crowdsec\"\nsource = \"http://127.0.0.1:8080\"\n\
             [[feed]]\nname = \"x\"\nsource = \"http://h/x\"\napi_key_file = \"/k\"\nnon_ban_decisions = \"monitor\"\norigins = [\"cscli\"]\n\
             [[feed]]\nname = \"rec\"\nformat = \"crowdsec\"\nsource = \"file:/recorded.json\"\n",
        );
        assert_eq!(
            p,
            [
                "feed 'cs': format \"crowdsec\" needs api_key_file, a file holding the bouncer key (`cscli bouncers add NAME -o raw`)",
                "feed 'x': api_key_file applies to format \"crowdsec\" only but format is \"auto\"",
                "feed 'x': non_ban_decisions applies to format \"crowdsec\" only but format is \"auto\"",
                "feed 'x': origins applies to format \"crowdsec\" only but format is \"auto\"",
            ]
        );
        assert!(err("[[feed]]\nname = \"cs\"\nformat = \"crowdsec\"\nsource = \"http://h\"\napi_key_file = \"/k\"\nnon_ban_decisions = \"captcha\"\n").contains("unknown variant `captcha`"));
    }

    #[test]
    fn taxii_feeds() {
        let dir = std::env::temp_dir().join(format!("ef-config-taxii-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[[interface]]\nname = \"eth0\"\n[[feed]]\nname = \"tx\"\nformat = \"taxii\"\nsource = \"https://cti.example/taxii2/\"\ncollection = \"Indicators\"\nusername = \"edge\"\npassword_file = \"keys/taxii.pw\"\npage_size = 100\nurl_ip_hosts = true\n",
        )
        .unwrap();
        let c = load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let f = &c.feeds[0];
        assert!(f.is_taxii_server());
        assert_eq!(
            f.password_file.as_deref(),
            Some(&*dir.join("keys/taxii.pw"))
        );
        let p = problems(
            "[[feed]]\nname = \"a\"\nformat = \"taxii\"\nsource = \"http://h/taxii2/\"\nusername = \"u\"\n\
             [[feed]]\nname = \"b\"\nformat = \"taxii\"\nsource = \"http://h/taxii2/\"\ncollection = \"c\"\nusername = \"u\"\npassword_file = \"/p\"\ntoken_file = \"/t\"\npage_size = 0\nmax_pages = 0\n\
             [[feed]]\nname = \"x\"\nsource = \"http://h/x\"\ncollection = \"c\"\ntoken_file = \"/t\"\n\
             [[feed]]\nname = \"rec\"\nformat = \"taxii\"\nsource = \"file:/recorded.json\"\n",
        );
        assert_eq!(
            p,
            [
                "feed 'a': format \"taxii\" needs collection, the id or title of the collection to poll (see GET {api_root}/collections/)",
                "feed 'a': username needs password_file, a file holding the password",
                "feed 'b': give username + password_file (basic authentication) or token_file (bearer token), not both",
                "feed 'b': page_size must be 1 to 100000",
                "feed 'b': max_pages must be at least 1",
                "feed 'x': collection applies to format \"taxii\" only but format is \"auto\"",
                "feed 'x': token_file applies to format \"taxii\" only but format is \"auto\"",
            ]
        );
    }

    #[test]
    fn relative_file_sources_follow_the_config_file() {
        let dir = std::env::temp_dir().join(format!("ef-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[[interface]]\nname = \"eth0\"\n[[feed]]\nname = \"a\"\nsource = \"file:feeds/a.txt\"\n[[feed]]\nname = \"b\"\nsource = \"file:/abs/b.txt\"\n",
        )
        .unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.feeds[0].source, Source::File(dir.join("feeds/a.txt")));
        assert_eq!(c.feeds[1].source, Source::File("/abs/b.txt".into()));
        // Defaults are absolute already.
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.bpffs, Path::new(crate::kernel::paths::DEFAULT_ROOT));
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = dir.join("nope.toml");
        let e = load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{e}"
        );
    }

    /// state_dir and bpffs follow the same rule as file: sources: relative
    /// to the config's directory, whatever the working directory, also when
    /// the config itself is named by a relative path.
    #[test]
    fn every_relative_path_follows_the_config_file() {
        let dir = std::env::temp_dir().join(format!("ef-config-rel-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let text = "state_dir = \"state\"\nbpffs = \"../pins\"\n[[interface]]\nname = \"eth0\"\n[[feed]]\nname = \"a\"\nsource = \"file:feeds/a.txt\"\n";
        let path = dir.join("sub/c.toml");
        std::fs::write(&path, text).unwrap();
        let c = load(&path).unwrap();
        let sub = dir.join("sub");
        assert_eq!(c.state_dir, sub.join("state"));
        assert_eq!(c.bpffs, sub.join("../pins"));
        assert_eq!(c.feeds[0].source, Source::File(sub.join("feeds/a.txt")));
        // A config named by a path relative to the working directory
        // resolves the same, to absolute paths (spelt through `..` here:
        // tests run in parallel, so the working directory stays).
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let rel = PathBuf::from(format!("{up}{}", path.strip_prefix("/").unwrap().display()));
        assert!(rel.is_relative());
        let c2 = load(&rel).unwrap();
        assert!(c2.state_dir.is_absolute() && c2.bpffs.is_absolute());
        assert!(
            c2.state_dir.ends_with("sub/state"),
            "{}",
            c2.state_dir.display()
        );
        assert_eq!(
            c2.state_dir.parent().unwrap().canonicalize().unwrap(),
            sub.canonicalize().unwrap()
        );
        // Absolute paths are kept.
        std::fs::write(
            &path,
            "state_dir = \"/var/lib/x\"\n[[interface]]\nname = \"eth0\"\n",
        )
        .unwrap();
        assert_eq!(load(&path).unwrap().state_dir, Path::new("/var/lib/x"));
        std::fs::remove_dir_all(&dir).unwrap();
        // from_str_named has no file: paths stay as written.
        let c = Config::from_str_named("state_dir = \"s\"\n[[interface]]\nname = \"e\"\n", "x")
            .unwrap();
        assert_eq!(c.state_dir, Path::new("s"));
    }

    #[test]
    fn safety_values_that_weaken_the_guards_are_warned_about() {
        assert!(cfg("").unwrap().warnings().is_empty());
        assert!(
            cfg("[safety]\nmax_shrink = 0.9\nhold_refreshes = 2\nbroadest_v4 = 16\nbroadest_v6 = 48\n")
                .unwrap()
                .warnings()
                .is_empty()
        );
        let w = cfg(
            "[safety]\nmax_shrink = 1.0\nhold_refreshes = 1\nbroadest_v4 = 4\nbroadest_v6 = 16\n",
        )
        .unwrap()
        .warnings();
        assert_eq!(
            w,
            [
                "[safety] max_shrink = 1 turns the shrink guard off: an empty or truncated download removes all of a feed's entries at once (default 0.5)",
                "[safety] hold_refreshes = 1 applies a shrink on its first sighting, so the shrink guard never holds one (default 3)",
                "[safety] broadest_v4 = 4 lets any feed block a /4 (2^28 addresses) by one line (default 8; prefer allow_broad = true on the feeds that need broad prefixes)",
                "[safety] broadest_v6 = 16 lets any feed block a /16 (2^112 addresses) by one line (default 32; prefer allow_broad = true on the feeds that need broad prefixes)",
            ]
        );
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        assert_eq!(
            err("\n[[feed]]\nname = \"a\"\nsource = \"file:/x\"\nrefesh = \"5m\"\n"),
            "test.toml:7:1: unknown field `refesh`, expected one of `name`, `source`, `format`, \
             `refresh`, `action`, `confidence_threshold`, `ttl`, `allow_broad`, `role`, `csv`, \
             `url_ip_hosts`, `max_rejected_share`, `api_key_file`, `non_ban_decisions`, `origins`, `scenarios_containing`, \
             `collection`, `api_root`, `username`, `password_file`, `token_file`, `page_size`, \
             `max_pages`, `misp` (at `refesh = \"5m\"`)"
        );
        let e = err("[safety]\nmax_shrnk = 0.2\n");
        assert!(
            e.starts_with("test.toml:4:1: unknown field `max_shrnk`"),
            "{e}"
        );
        let e = err("[capacities]\naddr_v5 = 1\n");
        assert!(
            e.starts_with("test.toml:4:1: unknown field `addr_v5`"),
            "{e}"
        );
        let e = Config::from_str_named("stat_dir = \"/x\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:1:1: unknown field `stat_dir`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_line() {
        assert_eq!(
            err("[[feed]]\nname = \"a\"\nsource = \"file:/x\"\nformat = \"xml\"\n"),
            "test.toml:6:10: unknown feed format 'xml' (expected auto or one of plain, spamhaus, \
             csv, stix, jsonl, tor, ipsum, alienvault, crowdsec, taxii, misp) (at `format = \"xml\"`)"
        );
        assert_eq!(
            err("[[feed]]\nname = \"a\"\nsource = \"file:/x\"\nconfidence_threshold = 150\n"),
            "test.toml:6:24: confidence_threshold 150 is out of range (0-100) \
             (at `confidence_threshold = 150`)"
        );
        let e = err("[[feed]]\nname = \"a\"\nsource = \"gopher://x\"\n");
        assert!(
            e.starts_with("test.toml:5:10: source 'gopher://x' is not supported"),
            "{e}"
        );
        let e = err("[[feed]]\nname = \"a\"\nsource = \"file:/x\"\nrefresh = \"soon\"\n");
        assert!(e.starts_with("test.toml:6:11: "), "{e}");
        assert!(e.ends_with("(at `refresh = \"soon\"`)"), "{e}");
        assert_eq!(
            err("[allowlist]\nentries = [\"192.0.2.0/24\", \"bogus\"]\n"),
            "test.toml:4:11: allowlist entry 'bogus': invalid address 'bogus' \
             (at `entries = [\"192.0.2.0/24\", \"bogus\"]`)"
        );
        let e = err("[[interface]]\nname = \"eth2\"\nmode = \"fast\"\n");
        assert!(
            e.starts_with("test.toml:5:8: unknown variant `fast`"),
            "{e}"
        );
        let e = err("[[feed]]\nname = \"a\"\nsource = \"file:/x\"\nrole = \"deny\"\n");
        assert!(
            e.starts_with("test.toml:6:8: unknown variant `deny`"),
            "{e}"
        );
        let e = err("[[feed]]\nname = \"a\"\n");
        assert!(e.contains("missing field `source`"), "{e}");
        let e = err("[[feed]]\nname = \"a\"\nsource = \"file:/x\"\ncsv = { ip_column = -1 }\n");
        assert!(e.contains("column index -1 is negative"), "{e}");
        let e = err(
            "[[feed]]\nname = \"a\"\nsource = \"file:/x\"\ncsv = { ip_column = 0, delimiter = \"::\" }\n",
        );
        assert!(
            e.contains("delimiter '::' must be one ASCII character"),
            "{e}"
        );
        let e = err("[limits]\nmax_bytes = \"12 parsecs\"\n");
        assert!(
            e.contains("invalid byte count '12 parsecs' (units: B, kB, MB, GB, KiB, MiB, GiB)"),
            "{e}"
        );
        let e = Config::from_str_named("[[interface]\n", "c.toml").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 1, .. }), "{e}");
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("500 kB"), Ok(500_000));
        assert_eq!(parse_bytes("7"), Ok(7));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert!(parse_bytes("MiB").is_err());
        let c = cfg("[limits]\nmax_bytes = \"2MiB\"\nmax_entries = 10\nmax_line_len = 100\ntimeout = \"5s\"\nretries = 0\n").unwrap();
        assert_eq!(
            c.limits.feed_limits(),
            FeedLimits {
                max_bytes: 2 << 20,
                max_entries: 10,
                max_line_len: 100
            }
        );
        assert_eq!(
            (c.limits.timeout, c.limits.retries),
            (Duration::from_secs(5), 0)
        );
        assert_eq!(
            cfg("[limits]\nmax_bytes = 4096\n")
                .unwrap()
                .limits
                .max_bytes,
            4096
        );
    }

    #[test]
    fn validation_problems() {
        let feed = |name: &str, extra: &str| {
            format!("[[feed]]\nname = \"{name}\"\nsource = \"file:/f/{name}\"\n{extra}\n")
        };
        // Each case: config text, the one expected problem.
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{}{}", feed("a", ""), feed("a", "")),
                "feed 'a' is defined twice",
            ),
            (
                feed("Bad Name", ""),
                "feed name 'Bad Name' is invalid (1-64 characters of a-z, 0-9, '_', '-')",
            ),
            (
                feed("inline", ""),
                "feed name 'inline' is reserved (it labels [allowlist] entries)",
            ),
            (
                feed("a", "refresh = \"0s\""),
                "feed 'a': refresh must be greater than zero",
            ),
            (
                feed("a", "ttl = \"0s\""),
                "feed 'a': ttl must be greater than zero",
            ),
            (
                "[allowlist]\nfeeds = [\"nope\"]\n".to_string(),
                "[allowlist] feeds names 'nope', which is not a [[feed]]",
            ),
            (
                format!("[allowlist]\nfeeds = [\"a\"]\n{}", feed("a", "")),
                "[allowlist] feeds names 'a', whose role is \"block\" (set role = \"allow\" on that feed)",
            ),
            (
                feed("a", "role = \"allow\""),
                "feed 'a' has role = \"allow\" but is not listed in [allowlist] feeds (list it there to confirm it may unblock traffic)",
            ),
            (
                format!(
                    "[allowlist]\nfeeds = [\"a\", \"a\"]\n{}",
                    feed("a", "role = \"allow\"")
                ),
                "[allowlist] feeds lists 'a' twice",
            ),
            (
                format!(
                    "[allowlist]\nfeeds = [\"a\"]\n{}",
                    feed("a", "role = \"allow\"\nconfidence_threshold = 50")
                ),
                "feed 'a': confidence_threshold has no effect on an allow feed",
            ),
            (
                "[safety]\nmax_shrink = 0.0\n".to_string(),
                "[safety] max_shrink = 0 is out of range (more than 0, at most 1)",
            ),
            (
                "[safety]\nmax_shrink = 1.5\n".to_string(),
                "[safety] max_shrink = 1.5 is out of range (more than 0, at most 1)",
            ),
            (
                "[safety]\nmax_shrink = nan\n".to_string(),
                "[safety] max_shrink = NaN is out of range (more than 0, at most 1)",
            ),
            (
                "[safety]\nhold_refreshes = 0\n".to_string(),
                "[safety] hold_refreshes must be at least 1",
            ),
            (
                "[safety]\nbroadest_v4 = 33\n".to_string(),
                "[safety] broadest_v4 = 33 is out of range (1-32)",
            ),
            (
                "[safety]\nbroadest_v6 = 129\n".to_string(),
                "[safety] broadest_v6 = 129 is out of range (1-128)",
            ),
            (
                "[safety]\nbroadest_v4 = 0\n".to_string(),
                "[safety] broadest_v4 = 0 turns the breadth check off: any feed line such as 0.0.0.0/0 would block every source (set allow_broad = true on the feeds that may list broad prefixes instead)",
            ),
            (
                "[safety]\nbroadest_v6 = 0\n".to_string(),
                "[safety] broadest_v6 = 0 turns the breadth check off: any feed line such as ::/0 would block every source (set allow_broad = true on the feeds that may list broad prefixes instead)",
            ),
            (
                "[safety]\nmax_rejected_share = 1.01\n".to_string(),
                "[safety] max_rejected_share = 1.01 is out of range (0 to 1)",
            ),
            (
                "[safety]\nmax_rejected_share = -0.1\n".to_string(),
                "[safety] max_rejected_share = -0.1 is out of range (0 to 1)",
            ),
            (
                "[safety]\nmax_rejected_share = nan\n".to_string(),
                "[safety] max_rejected_share = NaN is out of range (0 to 1)",
            ),
            (
                feed("a", "max_rejected_share = 2"),
                "feed 'a': max_rejected_share = 2 is out of range (0 to 1)",
            ),
            (
                "[limits]\nmax_entries = 0\n".to_string(),
                "[limits] max_entries must be greater than zero",
            ),
            (
                "[limits]\ntimeout = \"0s\"\n".to_string(),
                "[limits] timeout must be greater than zero",
            ),
            (
                "[[interface]]\nname = \"eth1\"\n".to_string(),
                "interface 'eth1' is listed twice",
            ),
            (
                "[[interface]]\nname = \"a/b\"\n".to_string(),
                "interface name 'a/b' is invalid (1-15 characters, no '/', ':' or whitespace)",
            ),
            (
                feed("a", "format = \"plain\"\ncsv = { ip_column = 0 }"),
                "feed 'a': a csv mapping is given but format is \"plain\" (use \"csv\" or \"auto\")",
            ),
            (
                feed(
                    "a",
                    "csv = { ip_column = 0, proto = \"tcp\", proto_column = 3 }",
                ),
                "feed 'a': csv: give proto or proto_column, not both",
            ),
            (
                feed("a", "format = \"csv\"\nurl_ip_hosts = true"),
                "feed 'a': url_ip_hosts applies to STIX only but format is \"csv\"",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(problems(&text), vec![expected.to_string()], "{text}");
        }
        // A top-level key must come before the first table (after
        // [[interface]] it would belong to the interface).
        let e = Config::from_str_named(
            "reconcile_interval = \"0s\"\n[[interface]]\nname = \"e\"\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: reconcile_interval must be greater than zero"
        );
    }

    #[test]
    fn no_interface_and_several_problems_at_once() {
        let e = Config::from_str_named(
            "[safety]\nhold_refreshes = 0\n[[feed]]\nname = \"X\"\nsource = \"file:/x\"\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: at least one [[interface]] is required; \
             [safety] hold_refreshes must be at least 1; \
             feed name 'X' is invalid (1-64 characters of a-z, 0-9, '_', '-')"
        );
    }

    #[test]
    fn allowlist_and_allow_feed() {
        let c = cfg(r#"
[allowlist]
entries = ["192.0.2.7/24", "2001:db8::1", "198.51.100.9"]
feeds = ["resolvers"]

[[feed]]
name = "resolvers"
source = "file:/etc/edge-filter/resolvers.txt"
role = "allow"
"#)
        .unwrap();
        let nets: Vec<String> = c.allowlist.entries.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["192.0.2.0/24", "2001:db8::1/128", "198.51.100.9/32"]);
        assert!(c.feeds[0].is_allow());
    }

    #[test]
    fn safety_breadth() {
        let s = Safety::default();
        let n = |t: &str| t.parse::<IpNet>().unwrap();
        assert!(s.too_broad(&n("0.0.0.0/0")));
        assert!(s.too_broad(&n("10.0.0.0/7")));
        assert!(!s.too_broad(&n("10.0.0.0/8")));
        assert!(s.too_broad(&n("2000::/31")));
        assert!(!s.too_broad(&n("2001:db8::/32")));
        assert_eq!(s.broadest_for(&n("2001:db8::/32")), 32);
        // An integer is a valid fraction.
        assert_eq!(
            cfg("[safety]\nmax_shrink = 1\n").unwrap().safety.max_shrink,
            1.0
        );
    }

    #[test]
    fn rejected_share_default_global_and_per_feed() {
        let feeds = "[[feed]]\nname = \"a\"\nsource = \"file:/a\"\n\n[[feed]]\nname = \"b\"\nsource = \"file:/b\"\nmax_rejected_share = 0\n";
        let c = cfg(feeds).unwrap();
        assert_eq!(c.safety.max_rejected_share, 0.5);
        assert_eq!(c.feeds[0].max_rejected_share(&c.safety), 0.5);
        assert_eq!(c.feeds[1].max_rejected_share(&c.safety), 0.0);
        let c = cfg(&format!("[safety]\nmax_rejected_share = 1\n{feeds}")).unwrap();
        assert_eq!(c.feeds[0].max_rejected_share(&c.safety), 1.0);
        assert_eq!(c.feeds[1].max_rejected_share(&c.safety), 0.0);
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::from_str_named(include_str!("../../../examples/edge-filter.toml"), "ex")
            .unwrap();
        let text = toml::to_string(&c).unwrap();
        let again = Config::from_str_named(&text, "again").unwrap();
        assert_eq!(c, again);
    }

    /// The shipped example must always load: it documents every option.
    #[test]
    fn example_config_loads() {
        let c = Config::from_str_named(
            include_str!("../../../examples/edge-filter.toml"),
            "examples/edge-filter.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.interfaces.len(), 2);
        assert!(c.malformed_drop());
        assert_eq!(c.entry_counters, EntryCounters::Exact);
        assert_eq!(c.runtime_flags(), edge_filter_common::CONFIG_MALFORMED_DROP);
        assert!(c.feeds.iter().any(|f| f.source.is_http()));
        assert!(c.feeds.iter().any(|f| f.csv.is_some()));
        assert!(c.feeds.iter().any(|f| f.ttl.is_some()));
        assert!(c.feeds.iter().any(|f| f.confidence_threshold.is_some()));
        assert!(c.feeds.iter().any(|f| f.allow_broad));
        assert!(c.feeds.iter().any(|f| f.url_ip_hosts));
        assert!(c.feeds.iter().any(|f| f.max_rejected_share.is_some()));
        assert!(c.feeds.iter().any(|f| f.is_allow()));
        assert!(!c.allowlist.entries.is_empty());
        // Every key of every table appears: the example is the reference.
        let text = include_str!("../../../examples/edge-filter.toml");
        for key in [
            "state_dir",
            "bpffs",
            "reconcile_interval",
            "malformed",
            "entry_counters",
            "mode",
            "addr_v4",
            "addr_v6",
            "prefix_v4",
            "prefix_v6",
            "port_v4",
            "port_v6",
            "allow ",
            "max_bytes",
            "max_entries",
            "max_line_len",
            "timeout",
            "retries",
            "max_shrink",
            "hold_refreshes",
            "broadest_v4",
            "broadest_v6",
            "max_rejected_share",
            "entries",
            "feeds",
            "format",
            "refresh",
            "action",
            "confidence_threshold",
            "ttl",
            "allow_broad",
            "role",
            "ip_column",
            "port_column",
            "proto ",
            "proto_column",
            "indicator_column",
            "confidence_column",
            "valid_from_column",
            "expires_column",
            "description_column",
            "side",
            "delimiter",
            "url_ip_hosts",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().trim_start_matches("# ").starts_with(key)),
                "example does not mention {key}"
            );
        }
    }

    #[test]
    fn retry_delay_doubles_bounded_by_max_refresh_and_retry_after() {
        let l = Limits {
            retry_backoff: Duration::from_secs(30),
            retry_backoff_max: Duration::from_secs(300),
            ..Limits::default()
        };
        let day = Duration::from_secs(86400);
        let d = |n, ra: Option<u64>, refresh| {
            l.retry_delay(n, ra.map(Duration::from_secs), refresh)
                .as_secs()
        };
        assert_eq!(
            [d(1, None, day), d(2, None, day), d(3, None, day)],
            [30, 60, 120]
        );
        assert_eq!(d(5, None, day), 300);
        assert_eq!(d(40, None, day), 300);
        assert_eq!(d(1, Some(90), day), 90, "Retry-After is honoured");
        assert_eq!(d(3, Some(90), day), 120, "but never shortens the backoff");
        assert_eq!(
            d(1, None, Duration::from_secs(10)),
            10,
            "never beyond refresh"
        );
        assert_eq!(d(1, Some(7200), Duration::from_secs(3600)), 3600);
    }
}
