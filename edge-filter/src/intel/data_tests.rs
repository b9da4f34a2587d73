//! Merging real feeds from `../shared/data/feeds` (`$EDGE_FILTER_SHARED_DATA`
//! or `$CARGO_MANIFEST_DIR/../../shared/data`; skipped with a message when
//! absent).
//!
//! Expected numbers were computed independently with Python's `ipaddress`
//! and `csv` modules: each file's non-comment lines as networks
//! (`strict=False`), Feodo rows as `(dst_ip, dst_port)`, prefixes shorter
//! than /8 (v4) or /32 (v6) set aside, then set unions and intersections:
//!
//! | feed | parsed | distinct | broader than /8 |
//! |---|---|---|---|
//! | spamhaus/drop_2025-01-17.txt | 1385 | 1385 | 0 |
//! | abusech/feodo_ipblocklist_2024-04-04.csv | 28 | 28 | 0 |
//! | firehol/firehol_level2.netset | 20521 | 20521 | 0 |
//! | firehol/firehol_level1.netset | 6986 | 6986 | 1 (224.0.0.0/3) |
//! | plain/c2theg_whitelist_dns_servers_mixed_v4_v6.txt | 6042 | 6042 (5906 v4, 136 v6) | 0 |
//!
//! Overlaps: spamhaus & level1 = 356, level1 & level2 = 7, spamhaus &
//! level2 = 0. Union of nets = 28528 (22403 addresses, 6125 prefixes, all
//! IPv4) plus 28 Feodo address+port keys = 28556; drop = spamhaus + Feodo =
//! 1413, monitor = 27143. Shadowed by the resolver allowlist: 2
//! (189.52.165.134, 87.244.23.14). Without level2 (expired): 8042 keys.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::macros::datetime;

use super::check::{FeedStatus, check};
use super::desired::{FeedCounts, FeedSnapshot, merge};
use crate::entry::{Action, EntryKey};
use crate::intel::config::Config;
use crate::intel::feeds;

const NOW: OffsetDateTime = datetime!(2025-06-01 0:00 UTC);

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("EDGE_FILTER_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    dir.join("feeds").is_dir().then_some(dir)
}

fn config(feeds: &Path) -> Config {
    let f = |rel: &str| feeds.join(rel).display().to_string();
    let text = format!(
        r#"
[[interface]]
name = "eth1"

[allowlist]
feeds = ["resolvers"]

[[feed]]
name = "spamhaus_drop"
source = "file:{}"

[[feed]]
name = "feodo"
source = "file:{}"

[[feed]]
name = "firehol_level2"
source = "file:{}"
action = "monitor"
ttl = "2d"

[[feed]]
name = "firehol_level1"
source = "file:{}"
action = "monitor"

[[feed]]
name = "resolvers"
source = "file:{}"
role = "allow"
"#,
        f("spamhaus/drop_2025-01-17.txt"),
        f("abusech/feodo_ipblocklist_2024-04-04.csv"),
        f("firehol/firehol_level2.netset"),
        f("firehol/firehol_level1.netset"),
        f("plain/c2theg_whitelist_dns_servers_mixed_v4_v6.txt"),
    );
    Config::from_str_named(&text, "data.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Parse every feed as the agent would; level2 was last fetched a day ago.
fn snapshots(cfg: &Config) -> Vec<FeedSnapshot> {
    cfg.feeds
        .iter()
        .map(|f| {
            let crate::intel::config::Source::File(path) = &f.source else {
                unreachable!("file feeds only")
            };
            let bytes = std::fs::read(path).unwrap();
            let format = f.format.resolve(&f.source.format_hint(), &bytes);
            let mut opts = f.feed_options(&cfg.limits);
            opts.now = Some(NOW);
            let parse = feeds::parse_feed(format, &bytes, &opts).unwrap();
            assert!(
                parse.rejected.is_empty(),
                "{}: {:?}",
                f.name,
                parse.rejected
            );
            let asserted_at = if f.name == "firehol_level2" {
                NOW - time::Duration::days(1)
            } else {
                NOW
            };
            FeedSnapshot {
                feed: f.name.clone(),
                entries: std::sync::Arc::new(parse.entries.into()),
                asserted_at,
            }
        })
        .collect()
}

#[test]
fn real_feeds_merge_with_exact_counts() {
    let Some(dir) = data_dir() else {
        println!("skipping: ../shared/data not present");
        return;
    };
    let cfg = config(&dir.join("feeds"));
    let snaps = snapshots(&cfg);
    let parsed: Vec<usize> = snaps.iter().map(|s| s.entries.len()).collect();
    assert_eq!(parsed, [1385, 28, 20521, 6986, 6042]);

    let st = merge(&cfg, &snaps, NOW);
    let counts = |entries, drop, monitor, rejected| FeedCounts {
        entries,
        drop,
        monitor,
        rejected,
        ..FeedCounts::default()
    };
    assert_eq!(st.per_feed["spamhaus_drop"], counts(1385, 1385, 0, 0));
    assert_eq!(st.per_feed["feodo"], counts(28, 28, 0, 0));
    assert_eq!(st.per_feed["firehol_level2"], counts(20521, 0, 20521, 0));
    assert_eq!(st.per_feed["firehol_level1"], counts(6985, 0, 6985, 1));
    assert_eq!(st.per_feed["resolvers"], counts(6042, 0, 0, 0));

    assert_eq!(st.set.entries.len(), 28556);
    assert_eq!(st.action_counts(), (1413, 27143));
    let k = st.kind_counts();
    assert_eq!((k.addr_v4, k.prefix_v4, k.addr_port_v4), (22403, 6125, 28));
    assert_eq!(
        (k.addr_v6, k.prefix_v6, k.addr_port_v6, k.prefix_port_v4),
        (0, 0, 0, 0)
    );
    assert_eq!((k.allow_v4, k.allow_v6), (5906, 136));
    assert_eq!(st.set.allow.len(), 6042);
    let shadowed: Vec<String> = st.shadowed().map(|e| e.to_string()).collect();
    assert_eq!(shadowed, ["87.244.23.14 monitor", "189.52.165.134 monitor"]);

    assert_eq!(st.rejected.len(), 1);
    assert_eq!(st.rejected[0].feed, "firehol_level1");
    assert_eq!(st.rejected[0].entry, "224.0.0.0/3 monitor");

    // Spamhaus (drop, with its SBL id) and level1 (monitor) both assert
    // 1.10.16.0/20: drop wins and both are remembered.
    let key = EntryKey {
        net: "1.10.16.0/20".parse().unwrap(),
        port: None,
    };
    let provs = &st.provenance(&key).unwrap();
    let who: Vec<(&str, Option<&str>, Action)> = provs
        .iter()
        .map(|p| (p.feed.as_str(), p.indicator.as_deref(), p.action))
        .collect();
    assert_eq!(
        who,
        [
            ("spamhaus_drop", Some("SBL256894"), Action::Drop),
            ("firehol_level1", None, Action::Monitor),
        ]
    );
    assert_eq!(
        st.set
            .entries
            .iter()
            .find(|e| e.key() == key)
            .unwrap()
            .action,
        Action::Drop
    );
    // Level2 entries lapse two days after its last fetch (one day from now).
    assert_eq!(st.next_expiry, Some(NOW + time::Duration::days(1)));

    let later = merge(&cfg, &snaps, NOW + time::Duration::days(1));
    assert_eq!(later.set.entries.len(), 8042);
    assert_eq!(later.per_feed["firehol_level2"].expired, 20521);
    assert_eq!(later.per_feed["firehol_level2"].entries, 0);
    assert_eq!(later.action_counts(), (1413, 6629));
}

#[test]
fn real_feeds_through_check_config() {
    let Some(dir) = data_dir() else {
        println!("skipping: ../shared/data not present");
        return;
    };
    let cfg = config(&dir.join("feeds"));
    let r = check(&cfg, "data.toml", NOW);
    assert!(r.feeds.iter().all(|f| f.status == FeedStatus::Loaded));
    let formats: Vec<&str> = r.feeds.iter().filter_map(|f| f.format.as_deref()).collect();
    assert_eq!(formats, ["spamhaus", "csv", "plain", "plain", "plain"]);
    // check-config asserts every feed now, so nothing has expired.
    assert_eq!((r.entries, r.drop, r.monitor), (28556, 1413, 27143));
    assert_eq!(r.allowlist.nets, 6042);
    assert_eq!(r.allowlist.from_feeds, 6042);
    assert_eq!(r.allowlist.shadowed, 2);
    assert_eq!(r.rejected_entries.len(), 1);
    assert_eq!(r.over_capacity().count(), 0);
    assert!(!r.incomplete);
    assert_eq!(r.next_change, Some(NOW + time::Duration::days(2)));
}
