//! Every real feed file under `../shared/data/feeds` through its parser,
//! with exact counts (worked out independently with grep/awk/Python, see
//! the table). The data directory is `$EDGE_FILTER_SHARED_DATA` or
//! `$CARGO_MANIFEST_DIR/../../shared/data`; without it the tests print
//! "skipping: ../shared/data not present" and pass.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use time::macros::datetime;

use super::*;
use crate::entry::{PortMatch, Proto, Side};

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("EDGE_FILTER_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    dir.join("feeds").is_dir().then_some(dir)
}

macro_rules! data_or_skip {
    () => {
        match data_dir() {
            Some(d) => d.join("feeds"),
            None => {
                println!("skipping: ../shared/data not present");
                return;
            }
        }
    };
}

fn opts() -> FeedOptions {
    FeedOptions {
        // Fixed, so validity checks do not depend on the day the tests run.
        now: Some(datetime!(2025-06-01 0:00 UTC)),
        ..FeedOptions::default()
    }
}

/// Expected outcome of one file.
struct Case {
    file: &'static str,
    format: Format,
    /// What [`detect_format`] says (differs from `format` only for the
    /// Spamhaus copies without ids, which are plain lists).
    detected: Format,
    entries: usize,
    rejected: usize,
    unsupported: usize,
    skipped: usize,
}

const fn case(
    file: &'static str,
    format: Format,
    detected: Format,
    entries: usize,
    rejected: usize,
    unsupported: usize,
) -> Case {
    Case {
        file,
        format,
        detected,
        entries,
        rejected,
        unsupported,
        skipped: 0,
    }
}

use Format::{AlienVault, Csv, Ipsum, Plain, Spamhaus, Stix, Tor};

/// Counts: line-based files = non-blank, non-comment lines, each checked to
/// be an address/CIDR (Python `ipaddress`) and cross-checked with
/// `grep -cvE '^\s*(#|$)'` / `grep -cvE '^\s*(;|$)'`; Tor = `grep -c
/// '^ExitAddress '`; Feodo = the `# END 28 entries` trailer; ASN-DROP = 201
/// `{"asn":..}` lines + 1 metadata line; STIX = indicators counted per
/// pattern with Python `json` (see each comment).
const CASES: &[Case] = &[
    case(
        "abusech/feodo_ipblocklist_2024-04-04.csv",
        Csv,
        Csv,
        28,
        0,
        0,
    ),
    case(
        "alienvault/reputation.data.head",
        AlienVault,
        AlienVault,
        3000,
        0,
        0,
    ),
    case("bogons/c2theg_blacklist_bogon.txt", Plain, Plain, 26, 0, 0),
    case("bogons/fullbogons-ipv4.txt", Plain, Plain, 1479, 0, 0),
    case("bogons/fullbogons-ipv6.head.txt", Plain, Plain, 5999, 0, 0),
    case("firehol/blocklist_de_ssh.ipset", Plain, Plain, 6054, 0, 0),
    case("firehol/ciarmy.ipset", Plain, Plain, 15000, 0, 0),
    case(
        "firehol/cidr_report_bogons.netset",
        Plain,
        Plain,
        4123,
        0,
        0,
    ),
    case("firehol/dshield.netset", Plain, Plain, 20, 0, 0),
    case("firehol/et_compromised.ipset", Plain, Plain, 1498, 0, 0),
    case("firehol/et_tor.ipset", Plain, Plain, 5924, 0, 0),
    case("firehol/feodo.ipset", Plain, Plain, 1235, 0, 0),
    case("firehol/feodo_2015-10-23.ipset", Plain, Plain, 235, 0, 0),
    case("firehol/firehol_level1.netset", Plain, Plain, 6986, 0, 0),
    case("firehol/firehol_level2.netset", Plain, Plain, 20521, 0, 0),
    case("firehol/iblocklist_isp_aol.netset", Plain, Plain, 16, 0, 0),
    case("firehol/spamhaus_drop.netset", Plain, Plain, 792, 0, 0),
    case("firehol/spamhaus_edrop.netset", Plain, Plain, 52, 0, 0),
    case("firehol/sslbl.ipset", Plain, Plain, 136, 0, 0),
    case("firehol/tor_exits.ipset", Plain, Plain, 866, 0, 0),
    case("ipsum/ipsum.head.txt", Ipsum, Ipsum, 5993, 0, 0),
    case("ipsum/ipsum_level4.txt", Plain, Plain, 4831, 0, 0),
    case(
        "plain/c2theg_blacklist_generic_ips.txt",
        Plain,
        Plain,
        50,
        0,
        0,
    ),
    case(
        "plain/c2theg_whitelist_dns_servers_mixed_v4_v6.txt",
        Plain,
        Plain,
        6042,
        0,
        0,
    ),
    case(
        "plain/cps_abuse-ch-ipblocklist.txt",
        Plain,
        Plain,
        7980,
        0,
        0,
    ),
    case("plain/cps_alienvault.txt", Plain, Plain, 609, 0, 0),
    case("plain/cps_illuminate_EMPTY.txt", Plain, Plain, 0, 0, 0),
    case("plain/cps_threatfox_ips.txt", Plain, Plain, 3483, 0, 0),
    case("plain/cps_tor-exit.txt", Plain, Plain, 3251, 0, 0),
    case("plain/et_compromised-ips.txt", Plain, Plain, 539, 0, 0),
    case(
        "spamhaus/drop_2025-01-17.txt",
        Spamhaus,
        Spamhaus,
        1385,
        0,
        0,
    ),
    case(
        "spamhaus/dropv6_2025-01-15.txt",
        Spamhaus,
        Spamhaus,
        78,
        0,
        0,
    ),
    case(
        "spamhaus/edrop_2024-10-18_merged_stub.txt",
        Spamhaus,
        Spamhaus,
        0,
        0,
        0,
    ),
    // 201 ASN records: no addresses, counted as unsupported, not errors.
    case(
        "spamhaus/secops_asn_drop.json",
        Spamhaus,
        Spamhaus,
        0,
        0,
        201,
    ),
    case(
        "spamhaus/secops_drop_ipv6_stripped.txt",
        Spamhaus,
        Plain,
        51,
        0,
        0,
    ),
    case(
        "spamhaus/secops_drop_stripped.txt",
        Spamhaus,
        Plain,
        989,
        0,
        0,
    ),
    case(
        "spamhaus/secops_edrop_stripped.txt",
        Spamhaus,
        Plain,
        322,
        0,
        0,
    ),
    // domain, domain AND resolves_to_refs, file:name.
    case(
        "stix/mispstix_test_attributes_collection_stix21.json",
        Stix,
        Stix,
        0,
        0,
        3,
    ),
    case(
        "stix/mispstix_test_events_collection_stix21.json",
        Stix,
        Stix,
        0,
        0,
        3,
    ),
    // email, file hashes AND name, domain AND resolves_to_refs.
    case(
        "stix/mispstix_test_objects_collection_stix21.json",
        Stix,
        Stix,
        0,
        0,
        3,
    ),
    // 4 ipv4 CIDRs; 3 domains, 3 md5, 2 x509 unsupported.
    case("stix/oasis_apt1.json", Stix, Stix, 4, 0, 8),
    case(
        "stix/oasis_indicator-for-c2-ip-address.json",
        Stix,
        Stix,
        1,
        0,
        0,
    ),
    case(
        "stix/oasis_indicator-to-campaign-relationship.json",
        Stix,
        Stix,
        1,
        0,
        0,
    ),
    // ipv4 indicator + SHA-256 indicator.
    case(
        "stix/oasis_indicators-for-C2-with-COA.json",
        Stix,
        Stix,
        1,
        0,
        1,
    ),
    // No indicators: the ipv4-addr SCO states no detection rule.
    case("stix/oasis_infrastructure.json", Stix, Stix, 0, 0, 0),
    // 3 SHA-256, 7 URLs (3 with IP-literal hosts; see unit42_url_hosts).
    case("stix/unit42_2024-02-08-Pikabot.json", Stix, Stix, 0, 0, 10),
    case("tor/tor_exit-addresses.txt", Tor, Tor, 2378, 0, 0),
    case("tor/torbulkexitlist.txt", Plain, Plain, 1174, 0, 0),
];

/// Not a bundle: a dict of MISP attribute type -> {MISP, STIX}.
const MAPPING_FILE: &str = "stix/mispstix_misp_attributes_to_stix21_mapping.json";

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn feed_files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !rel.ends_with(".source.txt") && rel != "INDEX.tsv" {
                out.insert(rel);
            }
        }
    }
    out
}

#[test]
fn every_file_has_a_case() {
    let dir = data_or_skip!();
    let mut covered: BTreeSet<String> = CASES.iter().map(|c| c.file.to_string()).collect();
    covered.insert(MAPPING_FILE.to_string());
    assert_eq!(feed_files(&dir), covered);
    assert_eq!(covered.len(), 49);
}

#[test]
fn counts_per_file() {
    let dir = data_or_skip!();
    let mut failures = Vec::new();
    for c in CASES {
        let bytes = read(&dir, c.file);
        let p = parse_feed(c.format, &bytes, &opts()).unwrap_or_else(|e| panic!("{}: {e}", c.file));
        let got = (p.entries.len(), p.rejected.len(), p.unsupported, p.skipped);
        let want = (c.entries, c.rejected, c.unsupported, c.skipped);
        if got != want {
            failures.push(format!(
                "{}: got {got:?} want {want:?}; rejected {:?}; ignored {:?}",
                c.file,
                p.rejected.iter().take(3).collect::<Vec<_>>(),
                p.ignored.iter().take(3).collect::<Vec<_>>()
            ));
        }
        assert_eq!(p.ignored.len(), p.unsupported + p.skipped, "{}", c.file);
        // Packed as the agent parses: the same entries, provenance
        // included, and the same everything else.
        let packed = parse_feed(
            c.format,
            &bytes,
            &FeedOptions {
                pack: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(packed, p.clone().packed_form(), "{}: packed", c.file);
        let detected = detect_format(Path::new(c.file), &bytes);
        if detected != c.detected {
            failures.push(format!(
                "{}: detected {detected}, want {}",
                c.file, c.detected
            ));
        }
        // Whatever `auto` picks gives the same entries.
        if detected != c.format {
            let again = parse_feed(detected, &bytes, &opts()).unwrap();
            let nets = |p: &FeedParse| p.entries.iter().map(|e| e.entry).collect::<Vec<_>>();
            assert_eq!(nets(&again), nets(&p), "{}", c.file);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn mapping_file_is_not_a_bundle() {
    let dir = data_or_skip!();
    let bytes = read(&dir, MAPPING_FILE);
    assert_eq!(detect_format(Path::new(MAPPING_FILE), &bytes), Stix);
    assert!(matches!(
        parse_feed(Stix, &bytes, &opts()),
        Err(FeedError::NotStix(_))
    ));
}

/// The mapping file's STIX objects, gathered into a bundle: exercises the
/// `network-traffic` patterns MISP produces for ip-src/ip-dst(|port).
#[test]
fn mapping_file_objects_as_bundle() {
    let dir = data_or_skip!();
    let doc: serde_json::Value = serde_json::from_slice(&read(&dir, MAPPING_FILE)).unwrap();
    let mut objects = Vec::new();
    for v in doc.as_object().unwrap().values() {
        match &v["STIX"] {
            serde_json::Value::Array(a) => objects.extend(a.iter().cloned()),
            o => objects.push(o.clone()),
        }
    }
    let indicators = objects.iter().filter(|o| o["type"] == "indicator").count();
    assert_eq!(indicators, 78);
    let bundle = serde_json::json!({"type": "bundle", "id": "bundle--x", "objects": objects});
    let p = parse_feed(Stix, bundle.to_string().as_bytes(), &opts()).unwrap();
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    // ip-src, ip-src|port (tcp+udp), ip-dst, ip-dst|port (tcp+udp).
    let mut got: Vec<String> = p.entries.iter().map(|e| e.entry.to_string()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "1.2.3.4",
            "5.6.7.8",
            "tcp 1.2.3.4:1234",
            "tcp 5.6.7.8:5678",
            "udp 1.2.3.4:1234",
            "udp 5.6.7.8:5678"
        ]
    );
    assert_eq!(p.unsupported, 74);
    assert_eq!(p.skipped, 0);
    // The four non-STIX pattern types are among them, with their reason.
    let non_stix = p
        .ignored
        .iter()
        .filter(|i| i.reason.starts_with("pattern_type '"))
        .count();
    assert_eq!(non_stix, 4);
    let port_only = p
        .ignored
        .iter()
        .filter(|i| {
            i.reason
                .starts_with("network-traffic without src_ref.value")
        })
        .count();
    assert_eq!(port_only, 1);
}

#[test]
fn unit42_url_hosts() {
    let dir = data_or_skip!();
    let bytes = read(&dir, "stix/unit42_2024-02-08-Pikabot.json");
    let p = parse_feed(Stix, &bytes, &opts()).unwrap();
    let hinted = p
        .ignored
        .iter()
        .filter(|i| i.reason.contains("enable url_ip_hosts"))
        .count();
    assert_eq!(hinted, 3);
    let o = FeedOptions {
        url_ip_hosts: true,
        ..opts()
    };
    let p = parse_feed(Stix, &bytes, &o).unwrap();
    let got: Vec<String> = p.entries.iter().map(|e| e.entry.to_string()).collect();
    assert_eq!(
        got,
        [
            "tcp 158.220.80.167:2967",
            "tcp 104.129.55.103:2224",
            "tcp 158.220.80.157:9785"
        ]
    );
    assert_eq!(
        p.entries[0].indicator.as_deref(),
        Some("indicator--53ec5036-46d0-407d-a103-87024f101ceb")
    );
    assert_eq!((p.unsupported, p.rejected.len()), (7, 0));
}

#[test]
fn spot_checks() {
    let dir = data_or_skip!();
    let parse =
        |file: &str, format: Format| parse_feed(format, &read(&dir, file), &opts()).unwrap();

    let drop = parse("spamhaus/drop_2025-01-17.txt", Spamhaus);
    assert_eq!(drop.entries[0].entry.to_string(), "1.10.16.0/20");
    assert_eq!(drop.entries[0].indicator.as_deref(), Some("SBL256894"));
    assert!(
        drop.entries
            .iter()
            .all(|e| e.indicator.as_deref().is_some_and(|i| i.starts_with("SBL")))
    );

    let feodo = parse("abusech/feodo_ipblocklist_2024-04-04.csv", Csv);
    let first = &feodo.entries[0];
    assert_eq!(first.entry.to_string(), "tcp 192.9.135.73:1194");
    assert_eq!(
        first.entry.port,
        Some(PortMatch {
            proto: Proto::Tcp,
            port: 1194,
            side: Side::Src
        })
    );
    assert_eq!(first.indicator.as_deref(), Some("Pikabot"));
    assert_eq!(first.valid_from, Some(datetime!(2023-05-23 17:51:44 UTC)));

    let apt1 = parse("stix/oasis_apt1.json", Stix);
    let nets: Vec<String> = apt1.entries.iter().map(|e| e.entry.to_string()).collect();
    assert_eq!(
        nets,
        [
            "223.166.0.0/15",
            "58.246.0.0/15",
            "112.64.0.0/15",
            "139.226.0.0/15"
        ]
    );
    assert_eq!(
        apt1.entries[0].indicator.as_deref(),
        Some("indicator--031778a4-057f-48e6-9db9-c8d72b81ccd5")
    );

    let tor = parse("tor/tor_exit-addresses.txt", Tor);
    assert_eq!(tor.entries[0].entry.to_string(), "185.241.208.232");
    assert_eq!(
        tor.entries[0].indicator.as_deref(),
        Some("FE39F07EBE7870DCE124AB30DF3ABD0700A43F75")
    );

    // Duplicates are kept (3251 lines, 1372 distinct).
    let dup = parse("plain/cps_tor-exit.txt", Plain);
    let distinct: HashSet<_> = dup.entries.iter().map(|e| e.entry).collect();
    assert_eq!((dup.entries.len(), distinct.len()), (3251, 1372));

    // Leading whitespace (48 lines) is tolerated.
    assert_eq!(
        parse("plain/c2theg_blacklist_generic_ips.txt", Plain)
            .entries
            .len(),
        50
    );

    // Mixed v4/v6.
    let dns = parse("plain/c2theg_whitelist_dns_servers_mixed_v4_v6.txt", Plain);
    let v6 = dns
        .entries
        .iter()
        .filter(|e| matches!(e.entry.net, ipnet::IpNet::V6(_)))
        .count();
    assert_eq!(v6, 136);

    let av = parse("alienvault/reputation.data.head", AlienVault);
    assert_eq!(av.entries[0].confidence, Some(60));
    assert_eq!(
        av.entries[0].description.as_deref(),
        Some("C&C; risk 5; TH")
    );
}

#[test]
fn wrong_parser_rejects_instead_of_failing() {
    let dir = data_or_skip!();
    // The Tor records through the plain parser: every line rejected, none fatal.
    let p = parse_feed(Plain, &read(&dir, "tor/tor_exit-addresses.txt"), &opts()).unwrap();
    assert_eq!((p.entries.len(), p.rejected.len()), (0, 9494));
    // IPsum through plain: 5993 lines with a count column.
    let p = parse_feed(Plain, &read(&dir, "ipsum/ipsum.head.txt"), &opts()).unwrap();
    assert_eq!((p.entries.len(), p.rejected.len()), (0, 5993));
    // The ASN-DROP JSON through the native JSON Lines parser: 202 rejections.
    let p = parse_feed(
        Format::Jsonl,
        &read(&dir, "spamhaus/secops_asn_drop.json"),
        &opts(),
    )
    .unwrap();
    assert_eq!((p.entries.len(), p.rejected.len()), (0, 202));
}
