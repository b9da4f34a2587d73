//! Threat-intelligence feed formats.
//!
//! Every parser turns a feed into [`FeedEntry`] values (an [`Entry`] plus
//! provenance) and never gives up on a bad line or object: it is recorded in
//! [`FeedParse::rejected`] and parsing goes on. Only whole-input problems
//! (over a [`FeedLimits`] limit, a JSON document that does not parse, a CSV
//! without a usable header) are a [`FeedError`].
//!
//! | [`Format`] | module | input |
//! |---|---|---|
//! | `plain` | [`plain`] | address/CIDR per line; FireHOL `.netset`/`.ipset`; `#`/`;` comments; `A-B` ranges |
//! | `spamhaus` | [`spamhaus`] | DROP/EDROP/DROPv6 `CIDR ; SBLnnn`, the JSON-lines `drop_v4.json` variant, ASN-DROP |
//! | `csv` | [`csv`] | abuse.ch Feodo Tracker `ipblocklist.csv`, or any CSV through a [`csv::CsvMapping`] |
//! | `stix` | [`stix`] | STIX 2.x bundles: indicators with address and `network-traffic` patterns |
//! | `jsonl` | [`jsonl`] | the native JSON Lines format, one entry with every supported field per line |
//! | `tor` | [`tor`] | TorDNSEL `exit-addresses` (`ExitNode`/`ExitAddress` records) |
//! | `ipsum` | [`ipsum`] | IPsum `ADDR<TAB>count` |
//! | `alienvault` | [`alienvault`] | AlienVault reputation `ip#reliability#risk#activity#...` |
//! | `crowdsec` | [`crowdsec`] | CrowdSec LAPI decisions (a `/v1/decisions/stream` answer; polled by the agent) |
//! | `taxii` | [`taxii`] | a TAXII 2.1 envelope of STIX objects (a collection's objects answer; polled by the agent) |
//! | `misp` | [`misp`] | MISP events, `restSearch` answers (a MISP feed or the API: fetched by the agent) |
//!
//! [`detect_format`] picks one for `auto`; [`parse_feed`] dispatches.
//!
//! Indices in [`Rejected`] and [`Ignored`] are 1-based line numbers, except
//! for STIX where they are 1-based positions in the bundle's `objects`.
//!
//! Counting: `entries` are what the filter will enforce; `rejected` is
//! malformed input; `unsupported` counts indicators that are well-formed but
//! cannot be expressed by a source-address filter (URLs, domains, hashes,
//! ASNs, ...); `skipped` counts revoked or already expired indicators. The
//! reasons for the last two are in [`FeedParse::ignored`]. `records` counts
//! the lines or objects that were well-formed (they produced entries or were
//! ignored on purpose), so `records + rejected` is the feed's data.
//!
//! Whether a copy is usable at all is [`FeedParse::usable`]: a copy where
//! nothing parses (an HTML error page, the wrong format, binary junk) or
//! where rejected lines exceed a share of the data is a failed fetch, not an
//! empty or shrunken feed.
//!
//! A last line without a newline is parsed like any other, unless
//! [`FeedOptions::end_unproven`] says the input may have been cut short (an
//! HTTP body that ended when the connection closed, with no
//! `Content-Length` and no chunked framing to prove it whole): then it is
//! rejected, because a cut line can still parse (`203.0.113.77` cut after
//! `203.0.113.7` is a different, valid address).

pub mod alienvault;
pub mod crowdsec;
pub mod csv;
pub mod ipsum;
pub mod jsonl;
pub mod misp;
pub mod plain;
pub mod spamhaus;
pub mod stix;
mod stix_pattern;
pub mod taxii;
pub mod tor;

#[cfg(test)]
mod data_tests;
#[cfg(test)]
mod stix_oracle_tests;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use thiserror::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::entry::{Action, Entry};
use crate::escape::Escaped;
use crate::intel::blocklist::clip;
/// Defined with the compact store of them (which reads no parser).
pub use crate::intel::feed_entries::FeedEntry;
use crate::intel::feed_entries::{FeedEntries, FeedEntriesBuilder};

/// How much of a bad line or object a [`Rejected`] quotes.
const QUOTE_LEN: usize = 200;

/// Why a last line without a newline is rejected when the input's end is
/// not proven ([`FeedOptions::end_unproven`]).
pub const UNTERMINATED: &str = "last line has no newline and the body's end is unproven (the server closed the connection without Content-Length or chunked framing): it may be cut short";

impl FeedEntry {
    /// Whether the entry is to be enforced at `now`: `valid_from <= now <
    /// expires` (an absent bound is open).
    pub fn active_at(&self, now: OffsetDateTime) -> bool {
        self.valid_from.is_none_or(|t| t <= now) && self.expires.is_none_or(|t| now < t)
    }
}

/// A line or object that is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number (STIX: 1-based position in `objects`).
    pub index: usize,
    /// What is wrong with it.
    pub reason: String,
    /// The offending text (shortened).
    pub text: String,
}

impl fmt::Display for Rejected {
    /// `INDEX: REASON: TEXT`, with control characters of the reason and
    /// text escaped (they come from the feed; see [`crate::escape`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.index,
            Escaped(&self.reason),
            Escaped(&self.text)
        )
    }
}

/// Why a well-formed indicator produced no entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IgnoreKind {
    /// It cannot be expressed by a source-address filter (counted in
    /// [`FeedParse::unsupported`]).
    Unsupported,
    /// Revoked by its producer (counted in [`FeedParse::skipped`]).
    Revoked,
    /// Its validity ended before the parse time (counted in
    /// [`FeedParse::skipped`]).
    Expired,
}

/// An indicator that produced no entries on purpose; see [`IgnoreKind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// 1-based line number (STIX: 1-based position in `objects`).
    pub index: usize,
    /// Which kind of "no".
    pub kind: IgnoreKind,
    /// The explanation.
    pub reason: String,
    /// The indicator (shortened).
    pub text: String,
}

/// An indicator enforced in part: some alternatives of an OR in its
/// pattern cannot be expressed and were left out (STIX).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    /// 1-based position in the bundle's `objects`.
    pub index: usize,
    /// What was left out, and why.
    pub reason: String,
    /// The indicator (shortened).
    pub text: String,
}

/// Everything a parser got out of one feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedParse {
    /// The entries, in input order (duplicates kept); empty when the parse
    /// packed them ([`FeedOptions::pack`]).
    pub entries: Vec<FeedEntry>,
    /// With [`FeedOptions::pack`], the entries in input order, packed as
    /// the agent keeps them (see [`FeedParse::into_entries`]); boxed, so
    /// that a parse passed by value stays small.
    pub packed: Box<FeedEntries>,
    /// Malformed lines or objects.
    pub rejected: Vec<Rejected>,
    /// Indicators that cannot be expressed (see [`FeedParse::ignored`]).
    pub unsupported: usize,
    /// Revoked or expired indicators (see [`FeedParse::ignored`]).
    pub skipped: usize,
    /// One explanation per unsupported or skipped indicator.
    pub ignored: Vec<Ignored>,
    /// Indicators whose entries enforce only some alternatives of their
    /// pattern (the others cannot be expressed); their entries are in
    /// `entries`.
    pub partial: Vec<Partial>,
    /// Lines or objects that were well-formed: they produced entries or
    /// were ignored on purpose. Comments, blank lines and record headers
    /// (Tor's `ExitNode`) are neither this nor rejected.
    pub records: usize,
}

impl fmt::Display for FeedParse {
    /// `N entries, N rejected, N unsupported, N skipped`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries, {} rejected, {} unsupported, {} skipped",
            self.entries.len(),
            self.rejected.len(),
            self.unsupported,
            self.skipped
        )
    }
}

impl FeedParse {
    /// How many entries, packed or not.
    pub fn len(&self) -> usize {
        self.entries.len() + self.packed.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This parse as a packing parse ([`FeedOptions::pack`]) of the same
    /// input returns it (for tests comparing the two).
    #[cfg(test)]
    pub fn packed_form(mut self) -> FeedParse {
        let entries = std::mem::take(&mut self.entries);
        self.packed = Box::new(entries.into());
        self
    }

    /// The entries as the agent keeps them: the packed ones, then any in
    /// [`FeedParse::entries`] (a parse fills one or the other; parsers that
    /// assemble their result themselves fill `entries`).
    pub fn into_entries(self) -> FeedEntries {
        if self.entries.is_empty() {
            return *self.packed;
        }
        if self.packed.is_empty() {
            return self.entries.into();
        }
        let packed = self.packed.iter().map(|e| e.to_owned());
        packed.chain(self.entries).collect()
    }

    /// Whether this copy can stand for the feed, given that at most
    /// `max_rejected_share` (0 to 1) of its data (`records + rejected`) may
    /// be rejected. A copy where nothing parses is never usable, whatever
    /// the share: an HTML error page or a feed in another format rejects
    /// every line, and applying it as an empty feed would unblock
    /// everything. A copy with no data at all (empty, or only comments) is
    /// usable: an empty feed is the shrink guard's business.
    pub fn usable(&self, max_rejected_share: f64, format: Format) -> Result<(), Unusable> {
        let (one, unit) = match format {
            Format::Stix | Format::Taxii => ("object", "objects"),
            Format::Misp => ("attribute", "attributes"),
            _ => ("line", "lines"),
        };
        Unusable::check(
            self.records,
            self.rejected.len(),
            max_rejected_share,
            unit,
            || format!("{one} {}", self.rejected[0]),
        )
    }
}

impl Unusable {
    /// Judge a copy of `records` well-formed and `rejected` rejected lines
    /// or objects (`unit`) against `max_rejected_share` (see
    /// [`FeedParse::usable`]); `first` describes the first rejection.
    pub fn check(
        records: usize,
        rejected: usize,
        max_rejected_share: f64,
        unit: &'static str,
        first: impl FnOnce() -> String,
    ) -> Result<(), Unusable> {
        if rejected == 0 {
            return Ok(());
        }
        if records == 0 {
            return Err(Unusable::NothingParsed {
                rejected,
                unit,
                first: first(),
            });
        }
        let total = records + rejected;
        if rejected as f64 > max_rejected_share * total as f64 {
            return Err(Unusable::TooManyRejected {
                rejected,
                total,
                unit,
                share: percent(rejected as f64 / total as f64),
                limit: percent(max_rejected_share),
                first: first(),
            });
        }
        Ok(())
    }
}

/// `0.7` as `70%`, `1/3` as `33.3%`.
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Why a parsed copy of a feed is not used (see [`FeedParse::usable`]): the
/// fetch counts as failed and the last-known-good copy stays enforced.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Unusable {
    /// Every line or object was rejected.
    #[error("0 of {rejected} {unit} parsed (every one rejected; {first})")]
    NothingParsed {
        /// Rejected lines or objects.
        rejected: usize,
        /// `lines` or `objects`.
        unit: &'static str,
        /// The first rejection, `line INDEX: REASON: TEXT` (escaped).
        first: String,
    },
    /// More than the allowed share was rejected.
    #[error("rejected {share} of {unit} ({rejected} of {total}, limit {limit}; first: {first})")]
    TooManyRejected {
        /// Rejected lines or objects.
        rejected: usize,
        /// Rejected plus well-formed ones.
        total: usize,
        /// `lines` or `objects`.
        unit: &'static str,
        /// `rejected / total`, as a percentage (`70%`).
        share: String,
        /// The limit, as a percentage.
        limit: String,
        /// The first rejection, `line INDEX: REASON: TEXT` (escaped).
        first: String,
    },
}

/// Input limits. A feed over `max_bytes` or producing more than
/// `max_entries` entries is refused as a whole ([`FeedError`]); a line over
/// `max_line_len` is rejected on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedLimits {
    /// Largest accepted input, in bytes. Default 64 MiB.
    pub max_bytes: usize,
    /// Most entries one feed may produce. Default 1,000,000.
    pub max_entries: usize,
    /// Longest accepted line of a line-based format, in bytes. Default 4096.
    /// (Does not apply to STIX, a single JSON document.)
    pub max_line_len: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        FeedLimits {
            max_bytes: 64 << 20,
            max_entries: 1_000_000,
            max_line_len: crate::intel::blocklist::MAX_LINE_LEN,
        }
    }
}

/// How to parse a feed.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    /// Input limits.
    pub limits: FeedLimits,
    /// "Now" for expiry checks; `None` is the current time.
    pub now: Option<OffsetDateTime>,
    /// The action of entries whose input does not say (only the `jsonl`
    /// format can say). Default [`Action::Drop`].
    pub action: Action,
    /// Column mapping for [`Format::Csv`]; `None` recognises the Feodo
    /// Tracker header or guesses from common column names.
    pub csv: Option<csv::CsvMapping>,
    /// STIX: turn `url:value` indicators whose host is an IP literal
    /// (`https://198.51.100.7:2967/x`) into a TCP address+port entry. Off by
    /// default: blocking the endpoint is broader than the URL.
    pub url_ip_hosts: bool,
    /// The input may have been cut short without anyone noticing: an HTTP
    /// body that ended when the server closed the connection, with neither
    /// `Content-Length` nor chunked framing to prove it whole. Then a last
    /// line without a newline is rejected instead of parsed (a cut line can
    /// still parse, as a different entry). Off by default: files and
    /// length-framed bodies are known to be whole, and their last line is
    /// the producer's, newline or not.
    pub end_unproven: bool,
    /// CrowdSec: what decisions of a type other than `ban` become.
    pub crowdsec_non_ban: crowdsec::NonBan,
    /// MISP: `to_ids` false, confidence from tags and threat levels.
    pub misp: misp::MispOptions,
    /// Collect the entries packed ([`FeedParse::packed`]) rather than as
    /// [`FeedEntry`] values: what the agent keeps. A 1M-line list as a
    /// vector of 112-byte `FeedEntry`s was 120 MB written (and faulted in)
    /// only to be packed into 8 MB. Off by default: tools and tests read
    /// [`FeedParse::entries`].
    pub pack: bool,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            limits: FeedLimits::default(),
            now: None,
            action: Action::Drop,
            csv: None,
            url_ip_hosts: false,
            end_unproven: false,
            crowdsec_non_ban: crowdsec::NonBan::Monitor,
            misp: misp::MispOptions::default(),
            pack: false,
        }
    }
}

/// A problem with the feed as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FeedError {
    /// Over [`FeedLimits::max_bytes`].
    #[error("feed is {len} bytes, larger than the {max}-byte limit")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Over [`FeedLimits::max_entries`].
    #[error("feed has more than {max} entries (limit reached at {at})")]
    TooManyEntries {
        /// The limit.
        max: usize,
        /// Line number (STIX: object position) where it was reached.
        at: usize,
    },
    /// A JSON document (STIX) that does not parse.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON that is not a STIX bundle, object or array of objects.
    #[error("not STIX: {0}")]
    NotStix(String),
    /// JSON that is not a MISP event, list of events or restSearch answer.
    #[error("not MISP: {0}")]
    NotMisp(String),
    /// A CSV whose columns cannot be mapped.
    #[error("CSV: {0}")]
    Csv(String),
}

/// A feed format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// [`plain`].
    Plain,
    /// [`spamhaus`].
    Spamhaus,
    /// [`csv`].
    Csv,
    /// [`stix`].
    Stix,
    /// [`jsonl`].
    Jsonl,
    /// [`tor`].
    Tor,
    /// [`ipsum`].
    Ipsum,
    /// [`alienvault`].
    AlienVault,
    /// [`crowdsec`].
    Crowdsec,
    /// [`taxii`].
    Taxii,
    /// [`misp`].
    Misp,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 11] = [
        Format::Plain,
        Format::Spamhaus,
        Format::Csv,
        Format::Stix,
        Format::Jsonl,
        Format::Tor,
        Format::Ipsum,
        Format::AlienVault,
        Format::Crowdsec,
        Format::Taxii,
        Format::Misp,
    ];

    /// The name used on the command line and in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Spamhaus => "spamhaus",
            Format::Csv => "csv",
            Format::Stix => "stix",
            Format::Jsonl => "jsonl",
            Format::Tor => "tor",
            Format::Ipsum => "ipsum",
            Format::AlienVault => "alienvault",
            Format::Crowdsec => "crowdsec",
            Format::Taxii => "taxii",
            Format::Misp => "misp",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| s.eq_ignore_ascii_case(f.name()))
            .ok_or_else(|| {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown feed format '{s}' (expected auto or one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Parse `bytes` as `format`.
pub fn parse_feed(
    format: Format,
    bytes: &[u8],
    opts: &FeedOptions,
) -> Result<FeedParse, FeedError> {
    match format {
        Format::Plain => plain::parse(bytes, opts),
        Format::Spamhaus => spamhaus::parse(bytes, opts),
        Format::Csv => csv::parse(bytes, opts),
        Format::Stix => stix::parse(bytes, opts),
        Format::Jsonl => jsonl::parse(bytes, opts),
        Format::Tor => tor::parse(bytes, opts),
        Format::Ipsum => ipsum::parse(bytes, opts),
        Format::AlienVault => alienvault::parse(bytes, opts),
        Format::Crowdsec => crowdsec::parse(bytes, opts),
        Format::Taxii => taxii::parse(bytes, opts),
        Format::Misp => misp::parse(bytes, opts),
    }
}

/// Guess the format of a feed from its name and first bytes (for `auto`).
///
/// JSON: a MISP event, list of events or restSearch answer is MISP
/// (see [`misp`]); another document that is not one object per line is STIX; JSON lines
/// with `cidr`/`asn` keys are Spamhaus, other JSON lines the native format.
/// Text: `ExitNode`/`ExitAddress` records are Tor; `;` comments or
/// `CIDR ; SBLnnn` are Spamhaus; quoted or `.csv` comma-separated text is
/// CSV; `ip#n#n#` is AlienVault; `ADDR<whitespace>count` is IPsum; anything
/// else is plain.
pub fn detect_format(path: &Path, bytes: &[u8]) -> Format {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64 << 10)]);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let trimmed = head.trim_start_matches('\u{feff}').trim_start();
    if misp::looks_like(trimmed) {
        return Format::Misp;
    }
    if trimmed.starts_with('[') {
        return Format::Stix;
    }
    if trimmed.starts_with('{') {
        let first = trimmed.lines().next().unwrap_or("").trim();
        return match serde_json::from_str::<serde_json::Value>(first) {
            Ok(serde_json::Value::Object(obj)) => {
                if obj.contains_key("objects")
                    || obj.contains_key("spec_version")
                    || obj.get("type").and_then(|t| t.as_str()) == Some("bundle")
                {
                    Format::Stix
                } else if obj.contains_key("cidr")
                    || obj.contains_key("asn")
                    || obj.get("type").and_then(|t| t.as_str()) == Some("metadata")
                {
                    Format::Spamhaus
                } else {
                    Format::Jsonl
                }
            }
            // The first line is not a whole object: a (pretty-printed) document.
            _ => Format::Stix,
        };
    }
    if ext == "json" || ext == "stix" {
        return Format::Stix;
    }
    if ext == "jsonl" || ext == "ndjson" {
        return Format::Jsonl;
    }
    let lines: Vec<&str> = head
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.iter().take(50).any(|l| {
        l.starts_with("ExitNode ")
            || l.starts_with("ExitAddress ")
            || l.starts_with("@type tordnsel")
    }) {
        return Format::Tor;
    }
    let data: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .take(20)
        .collect();
    if lines.iter().take(20).any(|l| l.starts_with(';'))
        || data
            .iter()
            .any(|l| l.contains(" ; SBL") || l.contains(";SBL"))
    {
        return Format::Spamhaus;
    }
    if ext == "csv"
        || data
            .first()
            .is_some_and(|l| l.contains(',') && (l.starts_with('"') || l.matches(',').count() >= 2))
    {
        return Format::Csv;
    }
    let first_field_is_addr = |l: &str, sep: &[char]| {
        l.split(sep)
            .next()
            .is_some_and(|a| crate::intel::blocklist::parse_net(a).is_ok())
    };
    if data.first().is_some_and(|l| {
        let f: Vec<&str> = l.split('#').collect();
        f.len() >= 4 && first_field_is_addr(l, &['#']) && f[1].bytes().all(|b| b.is_ascii_digit())
    }) {
        return Format::AlienVault;
    }
    if data.first().is_some_and(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 2
            && first_field_is_addr(l, &[' ', '\t'])
            && f[1].bytes().all(|b| b.is_ascii_digit())
    }) {
        return Format::Ipsum;
    }
    Format::Plain
}

/// Shared state of a parser: the output, the options and "now".
pub(crate) struct Sink<'a> {
    pub out: FeedParse,
    pub opts: &'a FeedOptions,
    pub now: OffsetDateTime,
    /// The last index counted in [`FeedParse::records`] (a line or object
    /// can produce several entries; it counts once).
    counted: Option<usize>,
    /// The entries, packed ([`FeedOptions::pack`]).
    packed: Option<FeedEntriesBuilder>,
}

impl<'a> Sink<'a> {
    /// Start a parse, refusing input over the size limit.
    pub fn new(bytes: &[u8], opts: &'a FeedOptions) -> Result<Self, FeedError> {
        if bytes.len() > opts.limits.max_bytes {
            return Err(FeedError::TooLarge {
                len: bytes.len(),
                max: opts.limits.max_bytes,
            });
        }
        Ok(Sink {
            out: FeedParse::default(),
            opts,
            now: opts.now.unwrap_or_else(OffsetDateTime::now_utc),
            counted: None,
            packed: opts.pack.then(FeedEntriesBuilder::default),
        })
    }

    /// Entries so far.
    fn entries(&self) -> usize {
        self.out.entries.len() + self.packed.as_ref().map_or(0, FeedEntriesBuilder::len)
    }

    /// Refuse an entry past the limit. `index` locates it.
    fn room(&self, index: usize) -> Result<(), FeedError> {
        if self.entries() >= self.opts.limits.max_entries {
            return Err(FeedError::TooManyEntries {
                max: self.opts.limits.max_entries,
                at: index,
            });
        }
        Ok(())
    }

    /// Add an entry, enforcing the entry limit. `index` locates it.
    pub fn push(&mut self, index: usize, entry: FeedEntry) -> Result<(), FeedError> {
        self.room(index)?;
        match &mut self.packed {
            Some(b) => b.push(entry),
            None => self.out.entries.push(entry),
        }
        self.count(index);
        Ok(())
    }

    /// [`Sink::push`] of an IPv4 net without a port or provenance, with
    /// the options' action (a plain list's bare address): packed directly
    /// when the parse packs.
    pub fn push_v4(&mut self, index: usize, net: ipnet::Ipv4Net) -> Result<(), FeedError> {
        let action = self.opts.action;
        if self.packed.is_some() {
            self.room(index)?;
        }
        match &mut self.packed {
            Some(b) => {
                b.push_v4(net, action);
                self.count(index);
                Ok(())
            }
            None => self.push(
                index,
                FeedEntry::new(Entry::new(ipnet::IpNet::V4(net), None, action)),
            ),
        }
    }

    /// Count the line or object at `index` as well-formed without an
    /// entry of its own (a MISP object's port, used with its address).
    pub fn count_record(&mut self, index: usize) {
        self.count(index);
    }

    /// Count the line or object at `index` as well-formed, once.
    fn count(&mut self, index: usize) {
        if self.counted != Some(index) {
            self.counted = Some(index);
            self.out.records += 1;
        }
    }

    /// Record a malformed line or object.
    pub fn reject(&mut self, index: usize, reason: impl fmt::Display, text: &str) {
        self.out.rejected.push(Rejected {
            index,
            reason: reason.to_string(),
            text: clip(text.trim(), QUOTE_LEN),
        });
    }

    /// Record an indicator that produced no entries on purpose.
    pub fn ignore(
        &mut self,
        index: usize,
        kind: IgnoreKind,
        reason: impl fmt::Display,
        text: &str,
    ) {
        match kind {
            IgnoreKind::Unsupported => self.out.unsupported += 1,
            IgnoreKind::Revoked | IgnoreKind::Expired => self.out.skipped += 1,
        }
        self.count(index);
        self.out.ignored.push(Ignored {
            index,
            kind,
            reason: reason.to_string(),
            text: clip(text.trim(), QUOTE_LEN),
        });
    }

    /// Record an indicator enforced in part (its entries are pushed
    /// separately).
    pub fn partial(&mut self, index: usize, reason: impl fmt::Display, text: &str) {
        self.out.partial.push(Partial {
            index,
            reason: reason.to_string(),
            text: clip(text.trim(), QUOTE_LEN),
        });
    }

    /// Whether an entry valid until `expires` is already expired.
    pub fn expired(&self, expires: Option<OffsetDateTime>) -> bool {
        expires.is_some_and(|t| t <= self.now)
    }

    /// Run `f` on every line (1-based number, text without the terminator),
    /// rejecting lines over the length limit and lines that are not UTF-8.
    /// A UTF-8 byte-order mark at the start is skipped. With
    /// [`FeedOptions::end_unproven`], a non-blank last line without a
    /// newline is rejected (it may be cut short).
    pub fn lines(
        &mut self,
        bytes: &[u8],
        f: impl FnMut(&mut Self, usize, &str) -> Result<(), FeedError>,
    ) -> Result<(), FeedError> {
        self.lines_fast(bytes, |_, _, _| Ok(false), f)
    }

    /// [`Sink::lines`], offering each line's bytes to `fast` first (after
    /// the checks of length and of a cut last line, before the UTF-8
    /// check): a line it takes (`true`) is not passed to `f`. For the
    /// lines a parser can take without building a `&str` (a bare IPv4
    /// address: most of a big list).
    pub fn lines_fast(
        &mut self,
        bytes: &[u8],
        mut fast: impl FnMut(&mut Self, usize, &[u8]) -> Result<bool, FeedError>,
        mut f: impl FnMut(&mut Self, usize, &str) -> Result<(), FeedError>,
    ) -> Result<(), FeedError> {
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        if bytes.is_empty() {
            return Ok(());
        }
        let terminated = bytes.ends_with(b"\n");
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        // Room for an entry a line (up to the limit) before the first: a
        // list is mostly entries, and growing the vector by doubling
        // copied it and faulted in up to twice its size. At most one per
        // 8 bytes of body ("1.2.3.4\n"), and only tried: a body of blank
        // lines must not claim memory it will not use, nor abort the agent
        // where memory is not overcommitted (the vector then grows).
        let n = memchr::memchr_iter(b'\n', bytes).count() + 1;
        let room = n.min(bytes.len() / 8 + 1).min(self.opts.limits.max_entries);
        let want = room.saturating_sub(self.entries());
        match &mut self.packed {
            Some(b) => b.reserve(want),
            None => {
                let _ = self.out.entries.try_reserve(want);
            }
        }
        let mut lines = split_lines(bytes).enumerate().peekable();
        while let Some((i, raw)) = lines.next() {
            let index = i + 1;
            if lines.peek().is_none()
                && !terminated
                && self.opts.end_unproven
                && !raw.iter().all(u8::is_ascii_whitespace)
            {
                let text = String::from_utf8_lossy(&raw[..raw.len().min(QUOTE_LEN)]).into_owned();
                self.reject(index, UNTERMINATED, &text);
                continue;
            }
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.len() > self.opts.limits.max_line_len {
                let reason = format!(
                    "line is {} bytes, longer than the {}-byte limit",
                    raw.len(),
                    self.opts.limits.max_line_len
                );
                let text = String::from_utf8_lossy(&raw[..raw.len().min(QUOTE_LEN)]).into_owned();
                self.reject(index, reason, &text);
                continue;
            }
            if fast(self, index, raw)? {
                continue;
            }
            match std::str::from_utf8(raw) {
                Ok(line) => f(self, index, line)?,
                Err(e) => {
                    let reason = format!("not valid UTF-8 at byte {}", e.valid_up_to());
                    self.reject(index, reason, &String::from_utf8_lossy(raw));
                }
            }
        }
        Ok(())
    }

    /// Finish.
    pub fn finish(mut self) -> FeedParse {
        if let Some(b) = self.packed.take() {
            self.out.packed = Box::new(b.finish());
        }
        self.out
    }
}

/// The lines of `bytes` (split at every `\n`, as `split` would), found
/// with `memchr`: a byte-at-a-time split was a tenth of the parse of a
/// 1M-line feed.
fn split_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'\n', r) {
            Some(p) => {
                rest = Some(&r[p + 1..]);
                Some(&r[..p])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Parse a timestamp: RFC 3339 (`2026-12-01T00:00:00Z`), or UTC
/// `YYYY-MM-DD HH:MM:SS` / `YYYY-MM-DD` (abuse.ch, Tor).
pub(crate) fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let datetime = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    if let Ok(t) = time::PrimitiveDateTime::parse(text, datetime) {
        return Ok(t.assume_utc());
    }
    let date = format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(text, date) {
        return Ok(d.midnight().assume_utc());
    }
    Err(format!(
        "invalid timestamp '{}' (expected RFC 3339, e.g. 2026-12-01T00:00:00Z)",
        clip(text, 64)
    ))
}

/// Format a timestamp as RFC 3339 for messages.
pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Parse a confidence value 0-100.
pub(crate) fn parse_confidence(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n <= 100 => Ok(n as u8),
        Ok(n) => Err(format!("confidence {n} out of range (0-100)")),
        Err(_) => Err(format!(
            "invalid confidence '{}' (expected 0-100)",
            clip(text, 32)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> FeedOptions {
        FeedOptions::default()
    }

    #[test]
    fn split_lines_splits_as_split_does() {
        for text in [
            "",
            "a",
            "a\nb",
            "\n",
            "\n\n",
            "a\n\nb",
            "\na",
            "a\r\nb\n",
            "ab\n\n\nc",
        ] {
            let b = text.as_bytes();
            let want: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
            let got: Vec<&[u8]> = split_lines(b).collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn format_names() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!("STIX".parse::<Format>(), Ok(Format::Stix));
        let err = "xml".parse::<Format>().unwrap_err();
        assert!(err.starts_with("unknown feed format 'xml'"), "{err}");
    }

    #[test]
    fn size_limit_is_fatal() {
        let o = FeedOptions {
            limits: FeedLimits {
                max_bytes: 10,
                ..FeedLimits::default()
            },
            ..opts()
        };
        for f in Format::ALL {
            assert_eq!(
                parse_feed(f, b"203.0.113.1\n203.0.113.2\n", &o),
                Err(FeedError::TooLarge { len: 24, max: 10 }),
                "{f}"
            );
        }
        assert_eq!(
            FeedError::TooLarge { len: 24, max: 10 }.to_string(),
            "feed is 24 bytes, larger than the 10-byte limit"
        );
    }

    #[test]
    fn entry_limit_is_fatal() {
        let o = FeedOptions {
            limits: FeedLimits {
                max_entries: 2,
                ..FeedLimits::default()
            },
            ..opts()
        };
        let two = parse_feed(Format::Plain, b"203.0.113.1\n203.0.113.2\n", &o).unwrap();
        assert_eq!(two.entries.len(), 2);
        let err = parse_feed(
            Format::Plain,
            b"203.0.113.1\n# c\n203.0.113.2\n203.0.113.3\n",
            &o,
        )
        .unwrap_err();
        assert_eq!(err, FeedError::TooManyEntries { max: 2, at: 4 });
        assert_eq!(
            err.to_string(),
            "feed has more than 2 entries (limit reached at 4)"
        );
    }

    #[test]
    fn line_limit_and_utf8_reject_the_line_only() {
        let o = FeedOptions {
            limits: FeedLimits {
                max_line_len: 16,
                ..FeedLimits::default()
            },
            ..opts()
        };
        let input = b"\xef\xbb\xbf203.0.113.1\r\n# a comment that is far too long\n203.0.113.\xff\n2001:db8::1\n";
        let p = parse_feed(Format::Plain, input, &o).unwrap();
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.rejected.len(), 2);
        assert_eq!(p.rejected[0].index, 2);
        assert_eq!(
            p.rejected[0].reason,
            "line is 32 bytes, longer than the 16-byte limit"
        );
        assert_eq!(p.rejected[1].index, 3);
        assert_eq!(p.rejected[1].reason, "not valid UTF-8 at byte 10");
        assert_eq!(
            p.rejected[1].to_string(),
            "3: not valid UTF-8 at byte 10: 203.0.113.\u{fffd}"
        );
    }

    #[test]
    fn unterminated_last_line_is_rejected_only_when_the_end_is_unproven() {
        let cut = FeedOptions {
            end_unproven: true,
            ..opts()
        };
        // A body cut mid-address: `203.0.113.77` arrived as `203.0.113.7`.
        let body = b"198.51.100.1\n203.0.113.7";
        let whole = parse_feed(Format::Plain, body, &opts()).unwrap();
        assert_eq!(
            whole.entries.len(),
            2,
            "a file's last line is the producer's"
        );
        assert!(whole.rejected.is_empty());
        for f in [Format::Plain, Format::Spamhaus, Format::Ipsum] {
            let p = parse_feed(f, body, &cut).unwrap();
            assert_eq!(p.rejected.len(), 1, "{f}: {p:?}");
            assert_eq!(p.rejected[0].index, 2, "{f}");
            assert_eq!(p.rejected[0].reason, UNTERMINATED, "{f}");
            assert_eq!(p.rejected[0].text, "203.0.113.7", "{f}");
            assert!(
                !p.entries
                    .iter()
                    .any(|e| e.entry.net.to_string() == "203.0.113.7/32"),
                "{f}: the cut address must not be enforced"
            );
        }
        let p = parse_feed(Format::Plain, body, &cut).unwrap();
        assert_eq!((p.entries.len(), p.records), (1, 1));
        // Terminated, or ending in blanks: nothing to distrust.
        for body in [
            &b"198.51.100.1\n203.0.113.77\n"[..],
            b"198.51.100.1\r\n",
            b"198.51.100.1\n  ",
        ] {
            let p = parse_feed(Format::Plain, body, &cut).unwrap();
            assert!(p.rejected.is_empty(), "{body:?}: {p:?}");
        }
        // A one-line body without a newline: nothing is left, so the copy
        // is unusable (it would otherwise replace the feed with nothing).
        let p = parse_feed(Format::Plain, b"203.0.113.7", &cut).unwrap();
        assert!(p.entries.is_empty());
        assert!(matches!(
            p.usable(1.0, Format::Plain),
            Err(Unusable::NothingParsed { rejected: 1, .. })
        ));
        // JSON Lines: a cut object is invalid JSON anyway; the reason says why.
        let jsonl = b"{\"net\":\"198.51.100.1\"}\n{\"net\":\"203.0.113.7\"}";
        let p = parse_feed(Format::Jsonl, jsonl, &cut).unwrap();
        assert_eq!((p.entries.len(), p.rejected.len()), (1, 1), "{p:?}");
        assert_eq!(p.rejected[0].reason, UNTERMINATED);
        // CSV: the header is whole, the last record is cut.
        // (`192.0.2.2,443` cut to port 44 would be a wrong entry.)
        let csv = b"ip,port\n192.0.2.1,443\n192.0.2.2,44";
        let p = parse_feed(Format::Csv, csv, &cut).unwrap();
        assert_eq!((p.records, p.rejected.len()), (1, 1), "{p:?}");
        assert_eq!(p.rejected[0].index, 3);
        assert_eq!(parse_feed(Format::Csv, csv, &opts()).unwrap().records, 2);
    }

    #[test]
    fn records_count_lines_not_entries() {
        // A range expands to several entries but is one record; comments
        // and blanks are not records; duplicates are.
        let p = parse_feed(
            Format::Plain,
            b"# c\n\n198.51.100.0-198.51.100.2\n203.0.113.1\n203.0.113.1\nbad\n",
            &opts(),
        )
        .unwrap();
        assert_eq!(p.records, 3, "{p:?}");
        assert_eq!(p.rejected.len(), 1);
        assert!(p.entries.len() > 3);
        // Unsupported and expired STIX indicators are well-formed records.
        let stix = br#"{"type":"bundle","id":"bundle--1","objects":[
            {"type":"indicator","spec_version":"2.1","id":"indicator--1","pattern":"[domain-name:value = 'x.example']","pattern_type":"stix","valid_from":"2024-01-01T00:00:00Z"},
            {"type":"indicator","spec_version":"2.1","id":"indicator--2","pattern":"[ipv4-addr:value = '203.0.113.5']","pattern_type":"stix","valid_from":"2024-01-01T00:00:00Z"},
            {"type":"indicator","spec_version":"2.1","id":"indicator--3"}]}"#;
        let p = parse_feed(Format::Stix, stix, &opts()).unwrap();
        assert_eq!(
            (p.records, p.unsupported, p.rejected.len()),
            (2, 1, 1),
            "{p:?}"
        );
    }

    #[test]
    fn usable_copies() {
        let parse = |text: &str| parse_feed(Format::Plain, text.as_bytes(), &opts()).unwrap();
        // Nothing parses: an HTML error page.
        let html = parse("<html>\n<body>502 Bad Gateway</body>\n</html>\n");
        let e = html.usable(0.5, Format::Plain).unwrap_err();
        assert!(
            matches!(e, Unusable::NothingParsed { rejected: 3, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("0 of 3 lines parsed (every one rejected; line 1: "),
            "{e}"
        );
        // Even with no limit on the share.
        assert!(html.usable(1.0, Format::Plain).is_err());
        // 7 of 10 rejected.
        let mostly_bad = parse(&format!(
            "{}{}",
            "203.0.113.1\n203.0.113.2\n203.0.113.3\n",
            "junk\n".repeat(7)
        ));
        let e = mostly_bad.usable(0.5, Format::Plain).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rejected 70% of lines (7 of 10, limit 50%; first: line 4: invalid address 'junk': junk)"
        );
        assert!(
            mostly_bad.usable(0.7, Format::Plain).is_ok(),
            "at the limit is fine"
        );
        assert!(mostly_bad.usable(1.0, Format::Plain).is_ok());
        let third = parse("203.0.113.1\n203.0.113.2\nx\n");
        assert!(
            third
                .usable(0.25, Format::Plain)
                .unwrap_err()
                .to_string()
                .starts_with("rejected 33.3% of lines (1 of 3, limit 25%;"),
        );
        // Nothing rejected, or no data at all: usable (an empty feed is the
        // shrink guard's business), even with a zero limit.
        for text in ["203.0.113.1\n", "", "# only a comment\n"] {
            assert!(parse(text).usable(0.0, Format::Plain).is_ok(), "{text:?}");
        }
        assert!(third.usable(0.0, Format::Plain).is_err());
        // STIX counts objects.
        let stix = parse_feed(
            Format::Stix,
            br#"[{"type":"indicator","id":"indicator--1"}]"#,
            &opts(),
        )
        .unwrap();
        assert!(
            stix.usable(0.5, Format::Stix)
                .unwrap_err()
                .to_string()
                .starts_with("0 of 1 objects parsed (every one rejected; object 1: "),
        );
    }

    #[test]
    fn rejected_text_is_escaped_when_shown() {
        let p = parse_feed(
            Format::Plain,
            b"203.0.113.1\rINFO forged line\x1b[2J\n",
            &opts(),
        )
        .unwrap();
        let r = &p.rejected[0];
        // Kept as it was (quoted text is data) ...
        assert!(r.text.contains('\r'));
        // ... and escaped wherever it is shown.
        let shown = r.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\rINFO forged line\\x1b[2J"), "{shown}");
    }

    #[test]
    fn activity_window_and_summary() {
        use crate::entry::{Action, Entry};
        let t = |s: &str| parse_time(s).unwrap();
        let mut e = FeedEntry::new(Entry::new(
            "192.0.2.1/32".parse().unwrap(),
            None,
            Action::Drop,
        ));
        assert!(e.active_at(t("2020-01-01")));
        e.valid_from = Some(t("2026-01-01"));
        e.expires = Some(t("2026-02-01"));
        assert!(!e.active_at(t("2025-12-31")));
        assert!(e.active_at(t("2026-01-01")));
        assert!(!e.active_at(t("2026-02-01")));
        let p = FeedParse {
            entries: vec![e],
            unsupported: 2,
            ..FeedParse::default()
        };
        assert_eq!(
            p.to_string(),
            "1 entries, 0 rejected, 2 unsupported, 0 skipped"
        );
    }

    #[test]
    fn times_and_confidence() {
        let t = parse_time("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_796_083_200);
        assert_eq!(parse_time("2026-12-01 00:00:00").unwrap(), t);
        assert_eq!(parse_time("2026-12-01").unwrap(), t);
        assert_eq!(parse_time("2026-12-01T01:00:00+01:00").unwrap(), t);
        assert!(parse_time("2015-05-15T09:12:16.432678Z").is_ok());
        assert_eq!(
            parse_time("yesterday").unwrap_err(),
            "invalid timestamp 'yesterday' (expected RFC 3339, e.g. 2026-12-01T00:00:00Z)"
        );
        assert_eq!(parse_confidence("90"), Ok(90));
        assert_eq!(
            parse_confidence("101").unwrap_err(),
            "confidence 101 out of range (0-100)"
        );
        assert_eq!(
            parse_confidence("high").unwrap_err(),
            "invalid confidence 'high' (expected 0-100)"
        );
    }

    #[test]
    fn detection() {
        let d = |name: &str, text: &str| detect_format(Path::new(name), text.as_bytes());
        assert_eq!(d("x.txt", "203.0.113.1\n198.51.100.0/24\n"), Format::Plain);
        assert_eq!(
            d("x.netset", "#\n# firehol\n#\n1.2.3.0/24\n"),
            Format::Plain
        );
        assert_eq!(d("x", ""), Format::Plain);
        assert_eq!(
            d("x", "; Spamhaus\n1.10.16.0/20 ; SBL256894\n"),
            Format::Spamhaus
        );
        assert_eq!(d("x", "1.10.16.0/20 ; SBL256894\n"), Format::Spamhaus);
        assert_eq!(
            d(
                "x",
                "{\"cidr\":\"1.10.16.0/20\",\"sblid\":\"SBL1\",\"rir\":\"apnic\"}\n"
            ),
            Format::Spamhaus
        );
        assert_eq!(d("x", "{\"asn\":932,\"rir\":\"arin\"}\n"), Format::Spamhaus);
        assert_eq!(d("x", "{\"net\":\"203.0.113.0/24\"}\n"), Format::Jsonl);
        assert_eq!(d("x", "{\n  \"type\": \"bundle\"\n}\n"), Format::Stix);
        assert_eq!(d("x", "{\"type\":\"bundle\",\"objects\":[]}"), Format::Stix);
        assert_eq!(d("x", "[{\"type\":\"indicator\"}]"), Format::Stix);
        assert_eq!(d("x.json", ""), Format::Stix);
        assert_eq!(d("x.jsonl", ""), Format::Jsonl);
        assert_eq!(
            d("x.json", "{\n \"Event\": {\"info\": \"x\"}}"),
            Format::Misp
        );
        assert_eq!(d("x", "{\"response\": []}"), Format::Misp);
        assert_eq!(
            d(
                "x",
                "# banner\n\"first_seen_utc\",\"dst_ip\",\"dst_port\"\n"
            ),
            Format::Csv
        );
        assert_eq!(d("x.csv", "ip\n203.0.113.1\n"), Format::Csv);
        assert_eq!(
            d(
                "x",
                "ExitNode ABC\nPublished 2024-03-11 13:07:19\nExitAddress 1.2.3.4 2024-03-12 08:10:51\n"
            ),
            Format::Tor
        );
        assert_eq!(d("x", "# IPsum\n31.220.1.233\t10\n"), Format::Ipsum);
        assert_eq!(
            d("x", "203.121.165.16#6#5#C&C#TH##15.0,100.0#2\n"),
            Format::AlienVault
        );
    }
}
