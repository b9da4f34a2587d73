//! `edge-filter replay`, run as a subprocess: every link type it handles
//! (the real captures under `../shared/data/pcaps` with Linux cooked SLL and
//! SLL2, raw IP, raw IPv4 and IPv6 link types, and a BSD loopback one for the
//! "not supported" report), the expectations gate (a pass and deliberate
//! failures), `--diff-against-blocklist` on a real feed edited to add and
//! remove entries, `--live` totals against the in-kernel ones, and a
//! generated capture of 1,000,000 packets (totals against the reference
//! classifier, peak RSS and packets per second).
//!
//! Needs root for `BPF_PROG_TEST_RUN` (each test prints `skipping: needs
//! root` and passes otherwise) and the `edge-filter` binary of the same
//! profile, built first:
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test replay -- --nocapture
//! ```
//!
//! Tests that read `../shared/data` print a skip message when it is absent.
//! The tests run one at a time (a shared lock), so the throughput printed
//! by the large-capture test is not disturbed by the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_filter::agent::load_files;
use edge_filter::counters::reason_name;
use edge_filter::reference::Reference;
use edge_filter_tests::corpus::shared_data_dir;
use edge_filter_tests::netns::{edge_filter_bin, skip_unless_root, unique_tag};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use serde_json::Value;

/// Serialises the tests of this file.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ef-replay-test-{what}-{}", unique_tag()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Root and the shared data, or a skip message (and `None`).
fn setup(test: &str) -> Option<PathBuf> {
    if skip_unless_root(test) {
        return None;
    }
    match shared_data_dir() {
        Some(d) => Some(d),
        None => {
            println!(
                "skipping {test}: shared test data (../shared/data) not found (set EDGE_FILTER_SHARED_DATA)"
            );
            None
        }
    }
}

fn replay(args: &[&OsStr]) -> Output {
    Command::new(edge_filter_bin())
        .arg("replay")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run edge-filter replay")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "edge-filter replay failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `--json` (without `--per-packet`): the summary.
fn summary(args: &[&OsStr]) -> Value {
    let mut a = args.to_vec();
    a.push(OsStr::new("--json"));
    let out = replay(&a);
    ok(&out);
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

/// `--json --per-packet`: the packet lines and the summary.
fn per_packet(args: &[&OsStr]) -> (Vec<Value>, Value) {
    let mut a = args.to_vec();
    a.push(OsStr::new("--json"));
    a.push(OsStr::new("--per-packet"));
    let out = replay(&a);
    ok(&out);
    let mut packets = Vec::new();
    let mut summary = None;
    for line in text(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("JSON line");
        match v["type"].as_str() {
            Some("packet") => packets.push(v),
            Some("summary") => summary = Some(v["summary"].clone()),
            other => panic!("unexpected line type {other:?}: {line}"),
        }
    }
    (packets, summary.expect("a summary line"))
}

fn by_reason(summary: &Value) -> BTreeMap<String, u64> {
    summary["by_reason"]
        .as_array()
        .expect("by_reason")
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap().to_string(),
                r["packets"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn file_report<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == name)
        .unwrap_or_else(|| panic!("no report for {name}: {summary}"))
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// The shared captures include files that are unreadable on purpose
/// (MANIFEST.tsv): replays of the whole directory say so explicitly.
const ALLOW_UNREADABLE: &str = "--allow-unreadable";

// ---------------------------------------------------------------------------
// Link types.

/// A MANIFEST.tsv row: file (relative to pcaps/), link type number, packets.
fn manifest(data: &Path) -> Vec<(String, u32, u64)> {
    let text = std::fs::read_to_string(data.join("pcaps/MANIFEST.tsv")).expect("MANIFEST.tsv");
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 5 {
            continue;
        }
        let lt = cols[3]
            .rsplit_once('(')
            .and_then(|(_, n)| n.trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("link type in {line}"));
        rows.push((cols[0].to_string(), lt, cols[4].parse().unwrap_or(0)));
    }
    rows
}

/// The network-layer payload of a record, cut independently of replay's
/// code: the link header lengths and protocol fields of SLL, SLL2 and raw IP.
fn ip_payload(linktype: u32, data: &[u8]) -> Option<&[u8]> {
    match linktype {
        113 => data.get(16..),
        276 => data.get(20..),
        12 | 14 | 101 | 228 | 229 => Some(data),
        _ => None,
    }
}

/// `(src, dst, ports)` of an IP packet.
type View = (IpAddr, IpAddr, Option<(u16, u16)>);

/// [`View`] as etherparse reads an IP packet.
fn etherparse_view(ip: &[u8]) -> Option<View> {
    let p = SlicedPacket::from_ip(ip).ok()?;
    let (src, dst) = match p.net? {
        NetSlice::Ipv4(s) => (
            IpAddr::V4(s.header().source_addr()),
            IpAddr::V4(s.header().destination_addr()),
        ),
        NetSlice::Ipv6(s) => (
            IpAddr::V6(s.header().source_addr()),
            IpAddr::V6(s.header().destination_addr()),
        ),
        NetSlice::Arp(_) => return None,
    };
    let ports = match p.transport {
        Some(TransportSlice::Tcp(t)) => Some((t.source_port(), t.destination_port())),
        Some(TransportSlice::Udp(u)) => Some((u.source_port(), u.destination_port())),
        _ => None,
    };
    Some((src, dst, ports))
}

/// Every record of a classic pcap: (link type, data), read with pcap-file's
/// raw reader.
fn raw_records(path: &Path) -> (u32, Vec<Vec<u8>>) {
    let mut r = PcapReader::new(File::open(path).unwrap()).unwrap();
    let lt = u32::from(r.header().datalink) & 0x03ff_ffff;
    let mut out = Vec::new();
    while let Some(Ok(p)) = r.next_raw_packet() {
        out.push(p.data.into_owned());
    }
    (lt, out)
}

#[test]
fn every_link_type_is_rewrapped_or_reported() {
    let _g = lock();
    let Some(data) = setup("every_link_type_is_rewrapped_or_reported") else {
        return;
    };
    let pcaps = data.join("pcaps");
    let rows = manifest(&data);
    let handled: [u32; 5] = [113, 276, 101, 228, 229];
    let picked: Vec<&(String, u32, u64)> = rows.iter().filter(|(_, lt, _)| *lt != 1).collect();
    for lt in handled.iter().chain(&[0]) {
        assert!(
            picked.iter().any(|(_, l, _)| l == lt),
            "MANIFEST.tsv has no capture of link type {lt}"
        );
    }
    // A source from each supported capture goes on the blocklist: the
    // kernel must drop those packets, which it can only do if it saw the
    // rewrapped IP header where Ethernet puts it.
    let tmp = TempDir::new("links");
    let mut block: HashSet<IpAddr> = HashSet::new();
    let mut views: HashMap<(String, u64), View> = HashMap::new();
    for (file, lt, _) in &picked {
        if !handled.contains(lt) || file.ends_with(".pcapng") {
            continue;
        }
        let (hdr_lt, records) = raw_records(&pcaps.join(file));
        assert_eq!(hdr_lt, *lt, "{file}: link type in the header");
        let mut first = true;
        for (i, rec) in records.iter().enumerate() {
            if let Some(v) = ip_payload(*lt, rec).and_then(etherparse_view) {
                if first {
                    block.insert(v.0);
                    first = false;
                }
                views.insert((file.clone(), i as u64 + 1), v);
            }
        }
    }
    assert!(block.len() >= 4, "too few sources found: {block:?}");
    let bl = tmp.path("blocklist.txt");
    let text: String = block.iter().map(|a| format!("{a}\n")).collect();
    std::fs::write(&bl, text).unwrap();

    let mut args: Vec<PathBuf> = picked.iter().map(|(f, _, _)| pcaps.join(f)).collect();
    // Plus captures that break: cut mid-record, and an invalid header.
    let cut = "suricata-verify/bug-6875-01__fuzz.pcap";
    let bad = "libpcap/shb-option-too-long.pcapng";
    let nsec_be = "pcapplusplus/nanosecs_big_endian.pcap";
    for f in [cut, bad, nsec_be] {
        args.push(pcaps.join(f));
    }
    let mut a: Vec<&OsStr> = args.iter().map(|p| p.as_os_str()).collect();
    a.extend([OsStr::new("--blocklist"), os(&bl)]);
    // Two of them cannot be read to the end: listed, not failing.
    a.push(OsStr::new(ALLOW_UNREADABLE));
    let (packets, sum) = per_packet(&a);

    let name = |f: &str| pcaps.join(f).display().to_string();
    let mut seen_links = HashSet::new();
    for (file, lt, count) in &picked {
        let r = file_report(&sum, &name(file));
        let links = r["link_types"].as_array().unwrap();
        assert_eq!(links.len(), 1, "{file}: {r}");
        assert_eq!(
            links[0]["linktype"].as_u64(),
            Some(u64::from(*lt)),
            "{file}"
        );
        assert_eq!(r["records"].as_u64(), Some(*count), "{file}: records: {r}");
        assert!(r["error"].is_null(), "{file}: {r}");
        if handled.contains(lt) {
            assert_eq!(r["replayed"].as_u64(), Some(*count), "{file}: {r}");
            assert_eq!(links[0]["supported"], true);
        } else {
            assert_eq!(r["replayed"].as_u64(), Some(0), "{file}: {r}");
            let notes = r["notes"].to_string();
            if *lt == 0 {
                assert!(
                    notes.contains("BSD loopback (NULL, 0): not supported"),
                    "{file}: {notes}"
                );
            }
            assert!(notes.contains("not supported"), "{file}: {notes}");
        }
        seen_links.insert(*lt);
        println!(
            "{file}: {} ({} records, {} replayed)",
            links[0]["name"].as_str().unwrap(),
            r["records"],
            r["replayed"]
        );
    }
    for lt in handled {
        assert!(seen_links.contains(&lt), "link type {lt} not exercised");
    }

    // Broken captures: reported, the packets before the break kept.
    let r = file_report(&sum, &name(cut));
    assert!(r["error"].as_str().unwrap().contains("broken after"), "{r}");
    assert!(r["replayed"].as_u64().unwrap() >= 1, "{r}");
    let r = file_report(&sum, &name(bad));
    assert!(!r["error"].is_null(), "{r}");
    assert_eq!(r["replayed"].as_u64(), Some(0));
    // Nanosecond, big-endian pcap: nine fraction digits.
    let t = packets
        .iter()
        .find(|p| p["file"] == name(nsec_be))
        .and_then(|p| p["time"].as_str())
        .expect("a packet of the nsec capture");
    let frac = t.rsplit_once('.').unwrap().1.trim_end_matches('Z');
    assert_eq!(frac.len(), 9, "{t}");

    // Addresses and ports agree with etherparse's reading of the record;
    // blocked sources are dropped by the kernel.
    let mut compared = 0;
    let mut dropped = 0;
    for p in &packets {
        let file = p["file"].as_str().unwrap();
        let Some(rel) = file.strip_prefix(&format!("{}/", pcaps.display())) else {
            continue;
        };
        let index = p["index"].as_u64().unwrap();
        let src: Option<IpAddr> = p["src"].as_str().map(|s| s.parse().unwrap());
        if let (Some(src), Some(v)) = (src, views.get(&(rel.to_string(), index))) {
            let dst: IpAddr = p["dst"].as_str().unwrap().parse().unwrap();
            assert_eq!((src, dst), (v.0, v.1), "{rel}#{index}");
            if let (Some(ports), Some(s), Some(d)) = (v.2, p["sport"].as_u64(), p["dport"].as_u64())
            {
                assert_eq!(ports, (s as u16, d as u16), "{rel}#{index}");
            }
            compared += 1;
        }
        if let Some(src) = src
            && block.contains(&src)
        {
            assert_eq!(p["verdict"], "drop", "{p}");
            assert_eq!(p["evaluated"], "kernel", "{p}");
            assert_eq!(p["feeds"][0], "blocklist.txt", "{p}");
            dropped += 1;
        }
    }
    println!("{compared} packets compared with etherparse, {dropped} dropped by the kernel");
    assert!(compared >= 30, "only {compared} packets compared");
    assert!(dropped >= block.len());
}

// ---------------------------------------------------------------------------
// The expectations gate.

fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn expectation_gate_passes_then_fails_on_a_blocklist_edit() {
    let _g = lock();
    let Some(data) = setup("expectation_gate_passes_then_fails_on_a_blocklist_edit") else {
        return;
    };
    let pcaps = data.join("pcaps");
    let tmp = TempDir::new("expect");
    // A real feed, plus a prefix that matches traffic in the captures.
    let feed = data.join("feeds/plain/et_compromised-ips.txt");
    let bl = tmp.path("blocklist.txt");
    let mut text = std::fs::read_to_string(&feed).unwrap();
    text.push_str("10.0.0.0/8\n192.168.0.0/16 monitor\n");
    std::fs::write(&bl, &text).unwrap();
    let exp = tmp.path("expect.json");
    let totals = tmp.path("totals.json");

    let out = replay(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&bl),
        "--write-expect".as_ref(),
        os(&exp),
    ]);
    ok(&out);
    let doc: Value = serde_json::from_slice(&std::fs::read(&exp).unwrap()).unwrap();
    assert_eq!(doc["edge_filter_version"], env!("CARGO_PKG_VERSION"));
    let n = doc["totals"]["packets"].as_u64().unwrap();
    assert!(n > 40_000, "{n}");
    let listed: usize = doc["packets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    assert_eq!(listed as u64, n);
    assert!(doc["packets"]["tcpdump/tfo-5c1fa7f9ae91.pcap"].is_array());
    let out = replay(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&bl),
        "--write-expect".as_ref(),
        os(&totals),
        "--totals-only".as_ref(),
    ]);
    ok(&out);
    let tdoc: Value = serde_json::from_slice(&std::fs::read(&totals).unwrap()).unwrap();
    assert!(tdoc.get("packets").is_none(), "{tdoc}");
    assert_eq!(tdoc["totals"], doc["totals"]);

    // The gate passes on the same inputs, from another directory too (the
    // captures are named relative to the directory argument).
    for e in [&exp, &totals] {
        let out = Command::new(edge_filter_bin())
            .current_dir(&tmp.0)
            .args([
                "replay".as_ref(),
                os(&pcaps),
                ALLOW_UNREADABLE.as_ref(),
                "--blocklist".as_ref(),
                os(&bl),
            ])
            .args(["--expect".as_ref(), os(e)])
            .output()
            .unwrap();
        ok(&out);
        assert!(
            text_of(&out.stderr).contains("expectations met"),
            "{}",
            text_of(&out.stderr)
        );
    }

    // Edit: block 1.1.1.1 (7 packets in the captures).
    std::fs::write(&bl, format!("{text}1.1.1.1\n")).unwrap();
    let out = replay(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&bl),
        "--expect".as_ref(),
        os(&exp),
    ]);
    assert_eq!(exit_code(&out), Some(1), "{}", text_of(&out.stderr));
    let err = text_of(&out.stderr);
    println!("{err}");
    let diffs: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("expected pass (pass_no_match), got drop (drop_addr)"))
        .collect();
    assert_eq!(diffs.len(), 7, "{err}");
    assert!(diffs.iter().all(|l| l.contains("1.1.1.1")), "{err}");
    assert!(
        err.contains("suricata-verify/decode-too-small__test.pcap#4: expected pass"),
        "{err}"
    );
    assert!(err.contains("totals: drop: expected"), "{err}");
    assert!(err.contains("differences from the expectations"), "{err}");
    // The summary still went to stdout.
    assert!(text_of(&out.stdout).contains("dropped"));

    // Totals-only expectations fail on the same edit.
    let out = replay(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&bl),
        "--expect".as_ref(),
        os(&totals),
    ]);
    assert_eq!(exit_code(&out), Some(1));
    let err = text_of(&out.stderr);
    assert!(
        err.contains("totals: drop_addr: expected 0, got 7"),
        "{err}"
    );

    // Many differences: 20 listed, the rest counted.
    std::fs::write(&bl, format!("{text}192.168.0.0/16\n")).unwrap();
    let out = replay(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&bl),
        "--expect".as_ref(),
        os(&exp),
    ]);
    assert_eq!(exit_code(&out), Some(1));
    let err = text_of(&out.stderr);
    let listed = err
        .lines()
        .filter(|l| l.contains("expected monitor (monitor_prefix), got drop (drop_prefix)"))
        .count();
    assert_eq!(listed, 20, "{err}");
    assert!(
        err.contains("... and 885 more per-packet differences"),
        "{err}"
    );

    // A hand-written file: only what matters.
    let hand = tmp.path("hand.json");
    std::fs::write(
        &hand,
        r#"{"packets": {"tcpdump/tfo-5c1fa7f9ae91.pcap": [{"index": 1, "verdict": "pass"}]},
            "totals": {"by_verdict": {"pass": 1, "drop": 0, "monitor": 0}}}"#,
    )
    .unwrap();
    std::fs::write(&bl, "9.9.9.9\n").unwrap();
    let tfo = pcaps.join("tcpdump/tfo-5c1fa7f9ae91.pcap");
    let out = replay(&[
        os(&tfo),
        "--blocklist".as_ref(),
        os(&bl),
        "--expect".as_ref(),
        os(&hand),
    ]);
    assert_eq!(exit_code(&out), Some(1));
    let err = text_of(&out.stderr);
    assert!(err.contains("totals: pass: expected 1, got"), "{err}");
    // A malformed expectations file is an error before anything runs.
    std::fs::write(
        &hand,
        r#"{"totals": {"by_reason": {"drop_everything": 1}}}"#,
    )
    .unwrap();
    let out = replay(&[
        os(&tfo),
        "--blocklist".as_ref(),
        os(&bl),
        "--expect".as_ref(),
        os(&hand),
    ]);
    // Exit 4: the replay could not run (not 1: nothing was compared).
    assert_eq!(exit_code(&out), Some(4));
    assert!(
        text_of(&out.stderr).contains("unknown reason \"drop_everything\""),
        "{}",
        text_of(&out.stderr)
    );
}

fn text_of(b: &[u8]) -> String {
    text(b)
}

// ---------------------------------------------------------------------------
// --diff-against-blocklist.

#[test]
fn diff_against_an_edited_real_feed() {
    let _g = lock();
    let Some(data) = setup("diff_against_an_edited_real_feed") else {
        return;
    };
    let pcaps = data.join("pcaps");
    let tmp = TempDir::new("diff");
    // A real feed that lists addresses seen in the captures (public DNS
    // resolvers: 1.1.1.1, 1.1.1.2, 9.9.9.9).
    let feed = data.join("feeds/plain/c2theg_whitelist_dns_servers_mixed_v4_v6.txt");
    let old = tmp.path("old.txt");
    let new = tmp.path("new.txt");
    std::fs::copy(&feed, &old).unwrap();
    // The new version: 1.1.1.1 removed, 116.63.66.108 (an SLL2 capture's
    // server) and 8.8.8.8 added.
    let orig = std::fs::read_to_string(&feed).unwrap();
    assert!(orig.lines().any(|l| l.trim() == "1.1.1.1"));
    let mut edited: String = orig
        .lines()
        .filter(|l| l.trim() != "1.1.1.1")
        .map(|l| format!("{l}\n"))
        .collect();
    edited.push_str("116.63.66.108\n8.8.8.8\n");
    std::fs::write(&new, edited).unwrap();

    // What each source sends, from the per-packet output under the old feed.
    let (packets, _) = per_packet(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&old),
    ]);
    let from = |a: &str| packets.iter().filter(|p| p["src"] == a).count() as u64;
    let (released, added) = (from("1.1.1.1"), from("116.63.66.108") + from("8.8.8.8"));
    assert!(released > 0 && added > 0, "{released} {added}");
    assert!(
        packets
            .iter()
            .filter(|p| p["src"] == "1.1.1.1")
            .all(|p| p["verdict"] == "drop" && p["feeds"][0] == "old.txt")
    );

    let sum = summary(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&new),
        "--diff-against-blocklist".as_ref(),
        os(&old),
        "--max-changes".as_ref(),
        "1000".as_ref(),
    ]);
    let d = &sum["diff"];
    println!(
        "{}",
        serde_json::to_string_pretty(&d["transitions"]).unwrap()
    );
    assert_eq!(d["newly_dropped"].as_u64(), Some(added), "{d}");
    assert_eq!(d["released"].as_u64(), Some(released), "{d}");
    assert_eq!(d["changed"].as_u64(), Some(added + released), "{d}");
    assert_eq!(
        d["packets"].as_array().unwrap().len() as u64,
        added + released
    );
    for p in d["packets"].as_array().unwrap() {
        match p["src"].as_str().unwrap() {
            "1.1.1.1" => {
                assert_eq!(p["verdict"], "pass");
                assert_eq!(p["baseline"]["verdict"], "drop");
                assert_eq!(p["baseline"]["entry"], "1.1.1.1");
                assert_eq!(p["baseline"]["feeds"][0], "old.txt");
            }
            "116.63.66.108" | "8.8.8.8" => {
                assert_eq!(p["verdict"], "drop");
                assert_eq!(p["baseline"]["verdict"], "pass");
                assert_eq!(p["feeds"][0], "new.txt");
            }
            other => panic!("unexpected changed source {other}: {p}"),
        }
    }
    let tr: Vec<(String, String, u64)> = d["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].as_str().unwrap().into(),
                t["to"].as_str().unwrap().into(),
                t["packets"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tr,
        vec![
            ("drop".into(), "pass".into(), released),
            ("pass".into(), "drop".into(), added)
        ]
    );
    // The human form names both directions.
    let out = replay(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&new),
        "--diff-against-blocklist".as_ref(),
        os(&old),
    ]);
    ok(&out);
    let s = text(&out.stdout);
    assert!(
        s.contains(&format!(
            "change verdict ({added} newly dropped, {released} released"
        )),
        "{s}"
    );
}

/// The same edit through the agent's config: `--config NEW --diff-against
/// OLD` names the feed (not the file), and `--feed FILE` replays a feed file
/// exactly as `--blocklist` does for a plain list.
#[test]
fn diff_against_config_and_feed_inputs() {
    let _g = lock();
    let Some(data) = setup("diff_against_config_and_feed_inputs") else {
        return;
    };
    let pcaps = data.join("pcaps");
    let tmp = TempDir::new("diffcfg");
    let feed = data.join("feeds/plain/c2theg_whitelist_dns_servers_mixed_v4_v6.txt");
    let old = tmp.path("old.txt");
    let new = tmp.path("new.txt");
    std::fs::copy(&feed, &old).unwrap();
    let orig = std::fs::read_to_string(&feed).unwrap();
    let mut edited: String = orig
        .lines()
        .filter(|l| l.trim() != "1.1.1.1")
        .map(|l| format!("{l}\n"))
        .collect();
    edited.push_str("116.63.66.108\n8.8.8.8\n");
    std::fs::write(&new, edited).unwrap();
    let config = |name: &str, file: &Path| {
        let p = tmp.path(&format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "[[interface]]\nname = \"replay\"\n[[feed]]\nname = \"resolvers\"\nsource = \"file:{}\"\n",
                file.display()
            ),
        )
        .unwrap();
        p
    };
    let (old_cfg, new_cfg) = (config("old", &old), config("new", &new));

    // Reference numbers from the plain-blocklist path.
    let by_list = summary(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&new),
        "--diff-against-blocklist".as_ref(),
        os(&old),
    ]);
    let by_cfg = summary(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--config".as_ref(),
        os(&new_cfg),
        "--diff-against".as_ref(),
        os(&old_cfg),
        "--max-changes".as_ref(),
        "1000".as_ref(),
    ]);
    for k in ["newly_dropped", "released", "changed"] {
        assert_eq!(
            by_cfg["diff"][k], by_list["diff"][k],
            "{k}: {}",
            by_cfg["diff"]
        );
    }
    assert!(by_cfg["diff"]["changed"].as_u64().unwrap() > 0);
    for p in by_cfg["diff"]["packets"].as_array().unwrap() {
        let feeds = if p["verdict"] == "drop" {
            &p["feeds"]
        } else {
            &p["baseline"]["feeds"]
        };
        assert_eq!(feeds[0], "resolvers", "{p}");
    }
    // --feed gives the same totals as --blocklist for a plain list.
    let by_feed = summary(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--feed".as_ref(),
        os(&new),
    ]);
    let by_bl = summary(&[
        os(&pcaps),
        ALLOW_UNREADABLE.as_ref(),
        "--blocklist".as_ref(),
        os(&new),
    ]);
    assert_eq!(by_reason(&by_feed), by_reason(&by_bl));
}

// ---------------------------------------------------------------------------
// --live.

#[test]
fn live_totals_equal_in_kernel_totals() {
    let _g = lock();
    let Some(data) = setup("live_totals_equal_in_kernel_totals") else {
        return;
    };
    let pcaps = data.join("pcaps");
    let tmp = TempDir::new("live");
    let bl = tmp.path("blocklist.txt");
    // Drops, monitors, port entries and an allowlisted source, all matching
    // traffic in the captures.
    std::fs::write(
        &bl,
        "10.0.0.0/8\n192.168.0.0/16 monitor\n1.1.1.1\nudp 9.9.9.9:53\ntcp 131.155.215.69:46656\n\
         2001:db8::/32\n",
    )
    .unwrap();
    let al = tmp.path("allowlist.txt");
    std::fs::write(&al, "10.0.0.1\n").unwrap();
    for extra in [&[][..], &["--drop-malformed"][..]] {
        let mut args: Vec<&OsStr> = vec![
            os(&pcaps),
            ALLOW_UNREADABLE.as_ref(),
            "--blocklist".as_ref(),
            os(&bl),
            "--allowlist".as_ref(),
            os(&al),
            "--live".as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let sum = summary(&args);
        let live = &sum["live"];
        assert_eq!(live["equal"], true, "{live}");
        let sent = live["sent"].as_u64().unwrap();
        let excluded =
            live["excluded_short"].as_u64().unwrap() + live["excluded_long"].as_u64().unwrap();
        assert_eq!(sent + excluded, sum["packets"].as_u64().unwrap());
        assert!(sent > 40_000, "{sent}");
        let mut kinds = HashSet::new();
        for r in live["by_reason"].as_array().unwrap() {
            assert_eq!(r["in_kernel_packets"], r["live_packets"], "{r}");
            assert_eq!(r["in_kernel_bytes"], r["live_bytes"], "{r}");
            kinds.insert(r["reason"].as_str().unwrap().to_string());
        }
        // The in-kernel side is the summary minus the excluded frames.
        let all = by_reason(&sum);
        for r in live["by_reason"].as_array().unwrap() {
            let name = r["reason"].as_str().unwrap();
            assert!(r["in_kernel_packets"].as_u64().unwrap() <= all[name]);
        }
        for k in [
            "pass_no_match",
            "pass_allowlist",
            "drop_prefix",
            "monitor_prefix",
            "drop_addr",
        ] {
            assert!(kinds.contains(k), "{k} not exercised: {kinds:?}");
        }
        println!(
            "live{}: {sent} frames sent, {excluded} excluded, {} reasons, equal",
            extra.first().map_or(String::new(), |e| format!(" {e}")),
            kinds.len()
        );
    }
    // Nothing is left behind.
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ef-replay-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn live_needs_root() {
    let _g = lock();
    if skip_unless_root("live_needs_root") {
        return;
    }
    let setpriv = Path::new("/usr/bin/setpriv");
    if !setpriv.exists() {
        println!("skipping live_needs_root: setpriv (util-linux) not installed");
        return;
    }
    let tmp = TempDir::new("noroot");
    let cap = tmp.path("one.pcap");
    write_pcap(&cap, 1, |_| {
        frame_v4(Ipv4Addr::new(10, 0, 0, 1), 6, 1, 2, None)
    });
    let bl = tmp.path("bl.txt");
    std::fs::write(&bl, "10.0.0.1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&tmp.0, &cap, &bl] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(edge_filter_bin())
        .args(["replay".as_ref(), os(&cap), "--blocklist".as_ref(), os(&bl)])
        .arg("--live")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    if err.contains("Permission denied") && !err.contains("needs root") {
        println!("skipping live_needs_root: the binary is not reachable by an unprivileged user");
        return;
    }
    // Exit 4: the replay could not run.
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("--live: needs root"), "{err}");
}

// ---------------------------------------------------------------------------
// A large generated capture.

fn eth(ethertype: u16, vlan: Option<u16>) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        6 => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 0x50;
            t[13] = 0x02;
            t
        }
        17 => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&8u16.to_be_bytes());
            u
        }
        _ => vec![8, 0, 0, 0, 0, 1, 0, 1],
    }
}

fn frame_v4(src: Ipv4Addr, proto: u8, sport: u16, dport: u16, vlan: Option<u16>) -> Vec<u8> {
    let payload = l4(proto, sport, dport);
    let mut f = eth(0x0800, vlan);
    let total = (20 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[192, 0, 2, 1]);
    f.extend_from_slice(&payload);
    f
}

fn frame_v6(src: Ipv6Addr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let payload = l4(proto, sport, dport);
    let mut f = eth(0x86dd, None);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[if proto == 1 { 58 } else { proto }, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1).octets());
    f.extend_from_slice(&payload);
    f
}

/// Write `n` frames made by `make(i)` as a microsecond pcap.
fn write_pcap(path: &Path, n: u64, mut make: impl FnMut(u64) -> Vec<u8>) {
    let f = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut w = PcapWriter::new(f).unwrap();
    for i in 0..n {
        let data = make(i);
        let ts = Duration::from_micros(1_700_000_000_000_000 + i * 10);
        w.write_packet(&PcapPacket::new(ts, data.len() as u32, &data))
            .unwrap();
    }
}

/// xorshift64*, so the capture is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn a_million_packets_stream_in_bounded_memory() {
    let _g = lock();
    if skip_unless_root("a_million_packets_stream_in_bounded_memory") {
        return;
    }
    const N: u64 = 1_000_000;
    let tmp = TempDir::new("large");
    let bl = tmp.path("blocklist.txt");
    let al = tmp.path("allowlist.txt");
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut list = String::from(
        "10.1.0.0/16\n10.2.0.0/16 monitor\ntcp 10.3.0.0/16:443\nudp 10.4.0.0/16:53 dst\n\
         2001:db8:1::/48\n2001:db8:2::/48 monitor\nudp [2001:db8:3::1]:53\n",
    );
    for _ in 0..200 {
        list.push_str(&format!("10.5.{}.{}\n", rng.below(256), rng.below(256)));
    }
    std::fs::write(&bl, list).unwrap();
    std::fs::write(&al, "10.1.1.0/24\n").unwrap();
    let loaded = load_files(&bl, Some(&al)).unwrap();
    assert!(loaded.errors.is_empty());
    let reference = Reference::new(&loaded.set);

    let cap = tmp.path("large.pcap");
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let t0 = Instant::now();
    let ports = [443u16, 53, 80, 22, 1024, 5353];
    write_pcap(&cap, N, |_| {
        let kind = rng.below(100);
        let proto = [6u8, 17, 1][rng.below(3) as usize];
        let sport = ports[rng.below(ports.len() as u64) as usize];
        let dport = ports[rng.below(ports.len() as u64) as usize];
        let f = match kind {
            0..=69 => {
                let src = Ipv4Addr::new(
                    10,
                    rng.below(6) as u8,
                    rng.below(256) as u8,
                    rng.below(256) as u8,
                );
                frame_v4(src, proto, sport, dport, None)
            }
            70..=89 => {
                let src = if rng.below(50) == 0 {
                    Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1)
                } else {
                    Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        rng.below(5) as u16,
                        0,
                        0,
                        0,
                        0,
                        rng.below(65536) as u16,
                    )
                };
                frame_v6(src, proto, sport, dport)
            }
            90..=94 => {
                let src = Ipv4Addr::new(10, rng.below(6) as u8, 7, rng.below(256) as u8);
                frame_v4(src, proto, sport, dport, Some(100))
            }
            95..=97 => {
                let mut f = eth(0x0806, None);
                f.extend_from_slice(&[0u8; 28]);
                f
            }
            _ => {
                // IPv4 whose total length exceeds the frame: malformed.
                let mut f = frame_v4(Ipv4Addr::new(10, 1, 2, 3), 17, 1, 2, None);
                f[16] = 0x05;
                f
            }
        };
        let v = reference.classify(&f, false);
        *want.entry(reason_name(v.reason)).or_default() += 1;
        f
    });
    let size = std::fs::metadata(&cap).unwrap().len();
    println!(
        "generated {N} packets ({} MB) in {:.1} s",
        size / 1_000_000,
        t0.elapsed().as_secs_f64()
    );

    // Run the binary and take its peak RSS from wait4's rusage.
    let t1 = Instant::now();
    // Reaped by wait4 below (std's wait would not return the rusage).
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(edge_filter_bin())
        .args(["replay".as_ref(), os(&cap), "--blocklist".as_ref(), os(&bl)])
        .args(["--allowlist".as_ref(), os(&al), "--json".as_ref()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; the pid is our unreaped child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: valid pointers to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let wall = t1.elapsed();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "replay failed ({status}): {}",
        text(&stderr)
    );
    let sum: Value = serde_json::from_slice(&stdout).expect("summary JSON");
    let got = by_reason(&sum);
    assert_eq!(sum["packets"].as_u64(), Some(N));
    assert_eq!(
        got, want,
        "kernel totals differ from the reference classifier"
    );
    let peak_mb = ru.ru_maxrss as f64 / 1024.0;
    println!(
        "replayed {N} packets: {:.1} s in the replay loop ({} packets/s), {:.1} s wall for the process, peak RSS {:.1} MB",
        sum["elapsed_seconds"].as_f64().unwrap(),
        sum["packets_per_second"],
        wall.as_secs_f64(),
        peak_mb
    );
    println!("by reason: {got:?}");
    // Streaming: the peak does not grow with the capture (it is a fixed
    // read buffer, the program's maps and bounded statistics).
    assert!(
        peak_mb < 200.0,
        "peak RSS {peak_mb:.1} MB for a {} MB capture",
        size / 1_000_000
    );
    let top = sum["top_sources_dropped"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    assert!(
        top[0]["first_dropped"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:2")
    );
}
