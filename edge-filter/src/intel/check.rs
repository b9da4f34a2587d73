//! What `edge-filter check-config` reports: the configuration as the agent
//! would load it, every `file:` feed parsed and merged exactly as the agent
//! does, and the resulting map usage against `[capacities]`.
//!
//! It never touches the kernel and never uses the network: HTTP feeds are
//! listed as not fetched, so the totals are a lower bound when there are
//! any (the report says so). It looks at the state directory and the pin
//! root the way the agent will ([`crate::trust`]), without creating them:
//! one another user could write is a problem (the agent refuses it), a
//! feed file another user could write is a warning (feeds are data).

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use time::OffsetDateTime;

use super::desired::{FeedCounts, FeedSnapshot, KindCounts, RejectedEntry, merge};
use crate::escape::Escaped;
use crate::intel::config::{Config, FeedConfig, Role, Source};
use crate::intel::feeds::{self, FeedError, Format};
use crate::kernel::paths::Paths;
use crate::trust::{self, TrustError};

/// How many rejected lines and ignored indicators a feed report quotes.
pub const EXAMPLES: usize = 5;

/// What happened to one feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedStatus {
    /// Read and parsed; its entries are in the totals.
    Loaded,
    /// An HTTP feed: check-config does not use the network.
    NotFetched,
    /// Could not be read, or refused as a whole (size or entry limit, not
    /// JSON, unusable CSV header, nothing parsed or too many lines
    /// rejected: the agent would keep its last-known-good copy).
    Failed,
}

impl FeedStatus {
    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            FeedStatus::Loaded => "loaded",
            FeedStatus::NotFetched => "not fetched (http)",
            FeedStatus::Failed => "FAILED",
        }
    }
}

/// One feed's part of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedReport {
    /// Feed name.
    pub name: String,
    /// `file:...` or the URL.
    pub source: String,
    /// Block or allow.
    pub role: Role,
    /// Loaded, not fetched or failed.
    pub status: FeedStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The format parsed with (absent when not parsed).
    pub format: Option<String>,
    /// Whether `format` was detected (`auto`) rather than configured.
    pub format_detected: bool,
    /// Entries the parser produced (duplicates included).
    pub parsed: usize,
    /// What the feed contributes after merging.
    pub counts: FeedCounts,
    /// Malformed lines or objects.
    pub rejected_lines: usize,
    /// The first few of them, `line N: reason: text` (control characters
    /// escaped).
    pub rejected_examples: Vec<String>,
    /// Well-formed indicators a source-address filter cannot express.
    pub unsupported: usize,
    /// Revoked or already expired indicators.
    pub skipped: usize,
    /// The first few unsupported or skipped indicators, with the reason
    /// (control characters escaped).
    pub ignored_examples: Vec<String>,
    /// Indicators enforced in part: alternatives of an OR in their STIX
    /// pattern that cannot be expressed were left out.
    pub partial: usize,
    /// The first few of them, with what was left out (escaped).
    pub partial_examples: Vec<String>,
}

/// One map's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapUse {
    /// Kernel map name.
    pub map: &'static str,
    /// Entries the desired state puts in it.
    pub entries: usize,
    /// Its `[capacities]` size (the old layout's; the v2 datapath sizes
    /// its maps from the set and ignores it).
    pub capacity: u32,
}

impl MapUse {
    /// Whether the entries do not fit (the overflow would be refused).
    pub fn over(&self) -> bool {
        self.entries > self.capacity as usize
    }
}

/// The allowlist's part of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AllowReport {
    /// Distinct allowlisted nets.
    pub nets: usize,
    /// Of those, from `[allowlist] entries`.
    pub inline: usize,
    /// Of those, from allow feeds.
    pub from_feeds: usize,
    /// Block entries the allowlist makes ineffective.
    pub shadowed: usize,
}

/// Everything `check-config` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The configuration file.
    pub config: String,
    /// `name (mode)` of every interface.
    pub interfaces: Vec<String>,
    /// Per feed, in configuration order.
    pub feeds: Vec<FeedReport>,
    /// Distinct block/monitor entries.
    pub entries: usize,
    /// Of those, dropping.
    pub drop: usize,
    /// Of those, only monitored.
    pub monitor: usize,
    /// By map kind and family.
    pub kinds: KindCounts,
    /// Per kernel map, with capacity.
    pub maps: Vec<MapUse>,
    /// The allowlist.
    pub allowlist: AllowReport,
    /// Entries left out as too broad (or a port on an allow feed).
    pub rejected_entries: Vec<RejectedEntry>,
    /// When the desired state next changes by time alone.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_change: Option<OffsetDateTime>,
    /// Whether HTTP feeds were left out of the totals.
    pub incomplete: bool,
    /// Valid settings that weaken a safety net ([`Config::warnings`]), and
    /// `file:` feeds another user could write.
    pub warnings: Vec<String>,
    /// The state directory or pins another user could write: the agent
    /// would refuse to start (see [`crate::trust`]).
    pub path_problems: Vec<String>,
}

impl CheckReport {
    /// Feeds that failed to load.
    pub fn failed(&self) -> impl Iterator<Item = &FeedReport> {
        self.feeds.iter().filter(|f| f.status == FeedStatus::Failed)
    }

    /// Maps whose entries exceed their capacity.
    pub fn over_capacity(&self) -> impl Iterator<Item = &MapUse> {
        self.maps.iter().filter(|m| m.over())
    }

    /// Everything that makes the configuration fail the check, one line
    /// each: feeds that could not be loaded, maps that would overflow,
    /// paths the agent would refuse. Empty: it passes.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let failed: Vec<&str> = self.failed().map(|f| f.name.as_str()).collect();
        if !failed.is_empty() {
            p.push(format!(
                "{} feed(s) could not be loaded: {}",
                failed.len(),
                failed.join(", ")
            ));
        }
        // The maps follow the set (datapath v2 capacity tiers; the
        // `[capacities]` of `maps` are the old layout's and are ignored):
        // the one size limit is the ids a decision word carries.
        p.extend(ids_problem(self.entries + self.allowlist.nets));
        p.extend(self.path_problems.iter().cloned());
        p
    }
}

/// The problem of a set of `keys` distinct entries and allowlisted nets
/// when the datapath cannot give each an id.
fn ids_problem(keys: usize) -> Option<String> {
    let max = edge_filter_common::v2::MAX_IDS as usize;
    (keys > max).then(|| {
        format!(
            "the set has {keys} distinct entries and allowlisted nets; the datapath carries at most {max}"
        )
    })
}

/// A trust finding as a line, `None` when there is none or the path could
/// merely not be looked at (missing, or not readable by this user: the
/// agent creates it, or runs as root).
fn finding<T>(r: Result<T, TrustError>) -> Option<String> {
    match r {
        Ok(_) | Err(TrustError::Io { .. }) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// What the agent would refuse of `cfg`'s state directory and pins, as it
/// finds them now (nothing is created).
pub fn path_problems(cfg: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let state = &cfg.state_dir;
    p.extend(finding(trust::check_creatable(
        state,
        trust::Role::StateDir,
    )));
    if p.is_empty() {
        for sub in ["lkg", "force"] {
            p.extend(finding(trust::check_creatable(
                &state.join(sub),
                trust::Role::StateDir,
            )));
        }
    }
    match finding(trust::check_creatable(&cfg.bpffs, trust::Role::PinRoot)) {
        Some(e) => p.push(e),
        None => {
            let paths = Paths::new(&cfg.bpffs);
            for i in &cfg.interfaces {
                p.extend(finding(paths.check_iface(&i.name)));
            }
        }
    }
    p
}

/// `file:` feeds another user could write (feeds are data: a warning).
fn feed_file_warnings(cfg: &Config) -> Vec<String> {
    cfg.feeds
        .iter()
        .filter_map(|f| match &f.source {
            // A MISP feed directory: its manifest says which events count.
            Source::File(path) if path.is_dir() => finding(trust::check_file(
                &path.join("manifest.json"),
                trust::Role::FeedFile,
            ))
            .map(|e| format!("feed {}: {e} (the agent reads it anyway: feed content is checked like a download)", f.name)),
            Source::File(path) => finding(trust::check_file(path, trust::Role::FeedFile))
                .map(|e| format!("feed {}: {e} (the agent reads it anyway: feed content is checked like a download)", f.name)),
            Source::Http(_) => None,
        })
        .collect()
}

/// Read and parse every `file:` feed of `cfg` at `now`, merge them and
/// report. `name` labels the configuration.
pub fn check(cfg: &Config, name: &str, now: OffsetDateTime) -> CheckReport {
    let mut feeds = Vec::new();
    let mut snapshots = Vec::new();
    for f in &cfg.feeds {
        let (report, snapshot) = check_feed(cfg, f, now);
        feeds.push(report);
        snapshots.extend(snapshot);
    }
    let st = merge(cfg, &snapshots, now);
    for r in &mut feeds {
        if let Some(c) = st.per_feed.get(&r.name) {
            r.counts = *c;
        }
    }
    let (drop, monitor) = st.action_counts();
    let kinds = st.kind_counts();
    let inline = st
        .allow_sources
        .values()
        .filter(|s| s.iter().any(|s| s == super::desired::INLINE))
        .count();
    let from_feeds = st
        .allow_sources
        .values()
        .filter(|s| s.iter().any(|s| s != super::desired::INLINE))
        .count();
    CheckReport {
        config: name.to_string(),
        interfaces: cfg
            .interfaces
            .iter()
            .map(|i| {
                let mode = match i.mode {
                    crate::kernel::attach::Mode::Native => "native",
                    crate::kernel::attach::Mode::Skb => "skb",
                    crate::kernel::attach::Mode::Auto => "auto",
                };
                format!("{} ({mode})", i.name)
            })
            .collect(),
        entries: st.set.entries.len(),
        drop,
        monitor,
        kinds,
        maps: kinds
            .per_map(&cfg.capacities)
            .into_iter()
            .map(|(map, entries, capacity)| MapUse {
                map,
                entries,
                capacity,
            })
            .collect(),
        allowlist: AllowReport {
            nets: st.set.allow.len(),
            inline,
            from_feeds,
            shadowed: st.shadowed_by_allow(),
        },
        rejected_entries: st.rejected.clone(),
        next_change: st.next_change(),
        incomplete: feeds.iter().any(|f| f.status == FeedStatus::NotFetched),
        feeds,
        warnings: cfg
            .warnings()
            .into_iter()
            .chain(feed_file_warnings(cfg))
            .collect(),
        path_problems: path_problems(cfg),
    }
}

/// One feed: its report (counts filled in after the merge) and, when it
/// loaded, its snapshot.
fn check_feed(
    cfg: &Config,
    f: &FeedConfig,
    now: OffsetDateTime,
) -> (FeedReport, Option<FeedSnapshot>) {
    let mut r = FeedReport {
        name: f.name.clone(),
        source: f.source.to_string(),
        role: f.role,
        status: FeedStatus::Loaded,
        error: None,
        format: None,
        format_detected: false,
        parsed: 0,
        counts: FeedCounts::default(),
        rejected_lines: 0,
        rejected_examples: Vec::new(),
        unsupported: 0,
        skipped: 0,
        ignored_examples: Vec::new(),
        partial: 0,
        partial_examples: Vec::new(),
    };
    let path = match &f.source {
        Source::Http(_) => {
            r.status = FeedStatus::NotFetched;
            return (r, None);
        }
        Source::File(p) => p,
    };
    let fail = |mut r: FeedReport, e: String| {
        r.status = FeedStatus::Failed;
        r.error = Some(e);
        (r, None)
    };
    let (format, parse) = if f.misp_source() == Some(crate::intel::config::MispSource::Feed) {
        // A MISP feed directory: its manifest and every event, as the
        // agent reads them.
        match read_misp_feed(cfg, f) {
            Ok(p) => (Format::Misp, p),
            Err(e) => return fail(r, e),
        }
    } else {
        let bytes = match read_limited(path, cfg.limits.max_bytes) {
            Ok(b) => b,
            Err(e) => return fail(r, e),
        };
        let format = f.format.resolve(&f.source.format_hint(), &bytes);
        let mut opts = f.feed_options(&cfg.limits);
        opts.now = Some(now);
        match feeds::parse_feed(format, &bytes, &opts) {
            Ok(p) => (format, p),
            Err(e) => {
                r.format = Some(format.name().to_string());
                return fail(r, e.to_string());
            }
        }
    };
    r.format = Some(format.name().to_string());
    r.format_detected = f.format == crate::intel::config::FeedFormat::Auto;
    let unit = match format {
        Format::Stix | Format::Taxii => "object",
        Format::Misp => "attribute",
        _ => "line",
    };
    r.parsed = parse.entries.len();
    r.rejected_lines = parse.rejected.len();
    r.rejected_examples = parse
        .rejected
        .iter()
        .take(EXAMPLES)
        .map(|x| format!("{unit} {x}"))
        .collect();
    r.unsupported = parse.unsupported;
    r.skipped = parse.skipped;
    r.ignored_examples = parse
        .ignored
        .iter()
        .take(EXAMPLES)
        .map(|x| {
            format!(
                "{unit} {}: {}: {}",
                x.index,
                Escaped(&x.reason),
                Escaped(&x.text)
            )
        })
        .collect();
    r.partial = parse.partial.len();
    r.partial_examples = parse
        .partial
        .iter()
        .take(EXAMPLES)
        .map(|x| {
            format!(
                "{unit} {}: {}: {}",
                x.index,
                Escaped(&x.reason),
                Escaped(&x.text)
            )
        })
        .collect();
    // A copy the agent would refuse is reported with its rejected lines
    // and left out of the totals, as the agent leaves it out.
    if let Err(e) = parse.usable(f.max_rejected_share(&cfg.safety), format) {
        return fail(r, e.to_string());
    }
    let snapshot = FeedSnapshot {
        feed: f.name.clone(),
        entries: std::sync::Arc::new(parse.entries.into()),
        asserted_at: now,
    };
    (r, Some(snapshot))
}

/// A MISP feed in a directory, read once as the agent reads it.
fn read_misp_feed(cfg: &Config, f: &FeedConfig) -> Result<feeds::FeedParse, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let fetcher = crate::intel::fetch::Fetcher::new().map_err(|e| e.to_string())?;
    let mut p = crate::intel::misp::MispPoller::new(f)?.ok_or("not a MISP feed")?;
    match rt.block_on(p.poll(f, cfg, &fetcher, &crate::intel::intake::policy(&cfg.limits)))? {
        crate::intel::crowdsec::Polled::Changed { parse, .. } => Ok(parse),
        crate::intel::crowdsec::Polled::Unchanged => Ok(feeds::FeedParse::default()),
    }
}

/// Read `path`, refusing files over `max` bytes without reading them (the
/// same message as the parser's limit).
fn read_limited(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > max {
        let len = std::fs::metadata(path)
            .map(|m| m.len() as usize)
            .unwrap_or(bytes.len());
        return Err(FeedError::TooLarge { len, max }.to_string());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2025-06-01 0:00 UTC);

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("ef-check-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
        fn write(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reports_files_http_and_failures() {
        let d = TempDir::new("mixed");
        let block = d.write(
            "block.txt",
            "# list\n203.0.113.7\n198.51.100.0/24\nbogus\n0.0.0.0/1\n203.0.113.7\n",
        );
        let csv = d.write(
            "c2.csv",
            "ip,port,proto\n192.0.2.1,443,tcp\n2001:db8::5,53,udp\n",
        );
        let allow = d.write("allow.txt", "192.0.2.0/24\n");
        let big = d.write("big.txt", &"203.0.113.9\n".repeat(100));
        let text = format!(
            r#"
[[interface]]
name = "eth1"
[[interface]]
name = "eth2"
mode = "skb"
[limits]
max_bytes = 1000
[capacities]
addr_v4 = 1
[allowlist]
entries = ["198.51.100.0/24"]
feeds = ["ok"]
[[feed]]
name = "block"
source = "file:{block}"
[[feed]]
name = "c2"
source = "file:{csv}"
action = "monitor"
[[feed]]
name = "remote"
source = "https://example.net/x.txt"
[[feed]]
name = "missing"
source = "file:{dir}/nope.txt"
[[feed]]
name = "big"
source = "file:{big}"
format = "plain"
[[feed]]
name = "ok"
source = "file:{allow}"
role = "allow"
"#,
            dir = d.0.display()
        );
        let cfg = Config::from_str_named(&text, "c.toml").unwrap();
        let r = check(&cfg, "c.toml", NOW);
        assert_eq!(r.interfaces, ["eth1 (auto)", "eth2 (skb)"]);
        let b = &r.feeds[0];
        assert_eq!(b.status, FeedStatus::Loaded);
        assert_eq!(b.format.as_deref(), Some("plain"));
        assert!(b.format_detected);
        assert_eq!(b.parsed, 4);
        assert_eq!(
            b.counts,
            FeedCounts {
                entries: 2,
                drop: 2,
                rejected: 1,
                ..FeedCounts::default()
            }
        );
        assert_eq!(b.rejected_lines, 1);
        assert!(b.rejected_examples[0].starts_with("line 4: "), "{b:?}");
        let c = &r.feeds[1];
        assert_eq!(c.format.as_deref(), Some("csv"));
        assert_eq!((c.counts.entries, c.counts.monitor), (2, 2));
        assert_eq!(r.feeds[2].status, FeedStatus::NotFetched);
        assert_eq!(r.feeds[2].status.describe(), "not fetched (http)");
        let m = &r.feeds[3];
        assert_eq!(m.status, FeedStatus::Failed);
        assert!(
            m.error.as_deref().unwrap().starts_with("cannot read "),
            "{m:?}"
        );
        assert_eq!(
            r.feeds[4].error.as_deref(),
            Some("feed is 1200 bytes, larger than the 1000-byte limit")
        );
        assert_eq!(r.failed().count(), 2);
        assert_eq!(r.feeds[5].counts.entries, 1);
        assert!(r.incomplete);
        assert_eq!((r.entries, r.drop, r.monitor), (4, 2, 2));
        assert_eq!(r.kinds.addr_v4, 1);
        assert_eq!(r.kinds.prefix_v4, 1);
        assert_eq!(r.kinds.addr_port_v4, 1);
        assert_eq!(r.kinds.addr_port_v6, 1);
        assert_eq!(
            r.allowlist,
            AllowReport {
                nets: 2,
                inline: 1,
                from_feeds: 1,
                // 198.51.100.0/24 (inline) and tcp 192.0.2.1:443 (feed "ok").
                shadowed: 2,
            }
        );
        assert_eq!(r.rejected_entries.len(), 1);
        assert_eq!(r.rejected_entries[0].entry, "0.0.0.0/1");
        assert_eq!(r.over_capacity().count(), 0);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["feeds"][2]["status"], "not_fetched");
        assert_eq!(json["maps"][2]["map"], edge_filter_common::MAP_ADDR_V4);
    }

    /// A feed with duplicates and a bad line counts distinct entries; a
    /// feed where nothing parses, or where too many lines are rejected, is
    /// FAILED (as the agent would refuse it) with its rejected lines shown,
    /// and left out of the totals.
    #[test]
    fn distinct_counts_and_unusable_copies() {
        let d = TempDir::new("unusable");
        let dups = d.write(
            "dups.txt",
            "203.0.113.1\n203.0.113.1\n203.0.113.2\nbogus\n203.0.113.2\n",
        );
        let html = d.write(
            "html.txt",
            "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\x1b[2J</body>\n</html>\n",
        );
        let mostly = d.write(
            "mostly.txt",
            &format!(
                "198.51.100.1\n198.51.100.2\n198.51.100.3\n{}",
                "junk\n".repeat(7)
            ),
        );
        let text = format!(
            "[[interface]]\nname = \"e\"\n[[feed]]\nname = \"dups\"\nsource = \"file:{dups}\"\n[[feed]]\nname = \"html\"\nsource = \"file:{html}\"\n[[feed]]\nname = \"mostly\"\nsource = \"file:{mostly}\"\n[[feed]]\nname = \"lenient\"\nsource = \"file:{mostly}\"\nmax_rejected_share = 0.8\n"
        );
        let cfg = Config::from_str_named(&text, "c").unwrap();
        let r = check(&cfg, "c", NOW);
        let f = &r.feeds[0];
        assert_eq!(f.status, FeedStatus::Loaded);
        assert_eq!(
            (f.parsed, f.counts.entries, f.rejected_lines),
            (4, 2, 1),
            "{f:?}"
        );
        let h = &r.feeds[1];
        assert_eq!(h.status, FeedStatus::Failed);
        assert_eq!(
            h.error.as_deref(),
            Some(
                "0 of 4 lines parsed (every one rejected; line 1: invalid address '<html>': <html>)"
            )
        );
        assert_eq!(h.rejected_lines, 4);
        assert_eq!(h.counts.entries, 0, "left out of the totals");
        assert!(
            h.rejected_examples[2].ends_with("<body>\\x1b[2J</body>"),
            "escaped: {:?}",
            h.rejected_examples
        );
        let m = &r.feeds[2];
        assert_eq!(m.status, FeedStatus::Failed);
        assert!(
            m.error
                .as_deref()
                .unwrap()
                .starts_with("rejected 70% of lines (7 of 10, limit 50%; first: line 4: "),
            "{m:?}"
        );
        assert_eq!(r.feeds[3].status, FeedStatus::Loaded, "its own limit");
        assert_eq!(r.feeds[3].counts.entries, 3);
        assert_eq!(r.failed().count(), 2);
        // The totals: dups' 2 and lenient's 3.
        assert_eq!(r.entries, 5);
    }

    #[test]
    fn paths_others_can_write_are_problems_feed_files_warnings() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let d = TempDir::new("trust");
        let feed = d.write("f.txt", "203.0.113.1\n");
        let state = d.0.join("state");
        std::fs::create_dir(&state).unwrap();
        let pins = d.0.join("pins");
        let text = format!(
            "state_dir = '{}'\nbpffs = '{}'\n[[interface]]\nname = \"e\"\n[safety]\nbroadest_v4 = 4\n[[feed]]\nname = \"f\"\nsource = \"file:{feed}\"\n",
            state.display(),
            pins.display()
        );
        let cfg = Config::from_str_named(&text, "c").unwrap();
        // Good as made (the pin root does not exist yet: the agent makes it).
        chmod(&state, 0o700);
        let r = check(&cfg, "c", NOW);
        assert_eq!(r.path_problems, Vec::<String>::new());
        assert_eq!(r.problems(), Vec::<String>::new());
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("[safety] broadest_v4 = 4 "),
            "{:?}",
            r.warnings
        );

        // A state_dir others can write, a world-writable feed file.
        chmod(&state, 0o777);
        chmod(Path::new(&feed), 0o666);
        let r = check(&cfg, "c", NOW);
        assert_eq!(r.path_problems.len(), 1, "{:?}", r.path_problems);
        assert!(
            r.path_problems[0].starts_with(&format!(
                "state directory {}: it is writable by group and others (mode 0777)",
                state.display()
            )),
            "{:?}",
            r.path_problems
        );
        assert_eq!(r.problems(), r.path_problems);
        assert_eq!(r.feeds[0].status, FeedStatus::Loaded, "data is still read");
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(
            r.warnings[1].starts_with(&format!(
                "feed f: feed file {feed}: it is writable by group and others (mode 0666)"
            )),
            "{:?}",
            r.warnings
        );
        assert!(
            r.warnings[1].contains("the agent reads it anyway"),
            "{:?}",
            r.warnings
        );

        // A world-writable pin root; and a pin directory of a configured
        // interface.
        chmod(&state, 0o700);
        chmod(Path::new(&feed), 0o644);
        std::fs::create_dir(&pins).unwrap();
        chmod(&pins, 0o777);
        let r = check(&cfg, "c", NOW);
        assert_eq!(r.path_problems.len(), 1, "{:?}", r.path_problems);
        assert!(
            r.path_problems[0].starts_with("bpffs pin root "),
            "{:?}",
            r.path_problems
        );
        chmod(&pins, 0o755);
        std::fs::create_dir(pins.join("e")).unwrap();
        chmod(&pins.join("e"), 0o777);
        let r = check(&cfg, "c", NOW);
        assert!(
            r.path_problems[0].starts_with("pin directory "),
            "{:?}",
            r.path_problems
        );
        chmod(&pins.join("e"), 0o755);
        assert!(check(&cfg, "c", NOW).problems().is_empty());
    }

    /// The one size limit is the datapath's ids.
    #[test]
    fn too_many_keys_for_the_ids_is_a_problem() {
        let max = edge_filter_common::v2::MAX_IDS as usize;
        assert_eq!(ids_problem(max), None);
        let p = ids_problem(max + 1).expect("a problem");
        assert!(p.contains(&format!("{} distinct", max + 1)), "{p}");
    }

    #[test]
    fn over_capacity_and_stix_objects() {
        let d = TempDir::new("cap");
        let list = d.write("l.txt", "203.0.113.1\n203.0.113.2\n");
        let stix = d.write(
            "b.json",
            r#"{"type":"bundle","id":"bundle--1","objects":[{"type":"indicator","spec_version":"2.1","id":"indicator--1","created":"2024-01-01T00:00:00Z","modified":"2024-01-01T00:00:00Z","pattern":"[domain-name:value = 'x.example']","pattern_type":"stix","valid_from":"2024-01-01T00:00:00Z"}]}"#,
        );
        let text = format!(
            "[[interface]]\nname = \"e\"\n[capacities]\naddr_v4 = 1\n[[feed]]\nname = \"l\"\nsource = \"file:{list}\"\n[[feed]]\nname = \"s\"\nsource = \"file:{stix}\"\n"
        );
        let cfg = Config::from_str_named(&text, "c").unwrap();
        let r = check(&cfg, "c", NOW);
        // The old layout's capacities are reported, not a problem: the
        // maps follow the set.
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        let over: Vec<_> = r.over_capacity().collect();
        assert_eq!(
            over,
            [&MapUse {
                map: edge_filter_common::MAP_ADDR_V4,
                entries: 2,
                capacity: 1
            }]
        );
        let s = &r.feeds[1];
        assert_eq!(s.format.as_deref(), Some("stix"));
        assert_eq!(s.unsupported, 1);
        assert!(s.ignored_examples[0].starts_with("object 1: "), "{s:?}");
        assert!(!r.incomplete);
        assert_eq!(r.next_change, None);
    }

    #[test]
    fn partial_stix_indicators_are_counted_and_quoted() {
        let d = TempDir::new("partial");
        let stix = d.write(
            "b.json",
            r#"{"type":"bundle","id":"bundle--1","objects":[{"type":"indicator","spec_version":"2.1","id":"indicator--1","pattern":"[domain-name:value = 'x.example' OR ipv4-addr:value = '198.51.100.7']","pattern_type":"stix","valid_from":"2024-01-01T00:00:00Z"},{"type":"indicator","spec_version":"2.1","id":"indicator--2","pattern":"[ipv4-addr:value = '198.51.100.8']","pattern_type":"stix","valid_from":"2024-01-01T00:00:00Z"}]}"#,
        );
        let text = format!(
            "[[interface]]\nname = \"e\"\n[[feed]]\nname = \"s\"\nsource = \"file:{stix}\"\n"
        );
        let cfg = Config::from_str_named(&text, "c").unwrap();
        let r = check(&cfg, "c", NOW);
        let s = &r.feeds[0];
        assert_eq!((s.parsed, s.partial, s.unsupported), (2, 1, 0), "{s:?}");
        assert_eq!(
            s.partial_examples,
            [
                "object 1: partial: 1 of 2 OR alternatives enforced; left out: cannot express 'domain-name:value': indicator--1 [domain-name:value = 'x.example' OR ipv4-addr:value = '198.51.100.7']"
            ]
        );
        assert_eq!(s.counts.entries, 2);
    }
}
