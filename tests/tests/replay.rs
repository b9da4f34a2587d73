//! `edge-filter replay`, run as a subprocess: every link type it handles
//! (the real captures under `../shared/data/pcaps` with Linux cooked SLL and
//! SLL2, raw IP, raw IPv4 and IPv6 link types, and a BSD loopback one for the
//! "not supported" report), the expectations gate (a pass and deliberate
//! failures), `--diff-against-blocklist` on a real feed edited to add and
//! remove entries, `--live` totals against the in-kernel ones, a
//! generated capture of 1,000,000 packets (totals against the reference
//! classifier, peak RSS and packets per second), and input a gate must not
//! pass on: unreadable, cut and empty captures (exit 3, no expectations
//! written, every file listed; `--allow-unreadable`, `--allow-empty`), a
//! 9 MB pcapng packet (replayed, cut and counted) and a block claiming
//! 4 GiB (a clear error under a 1 GiB address-space limit).
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

use edge_filter::intel::blocklist::load_files;
use edge_filter::kernel::counters::reason_name;
use edge_filter::reference::Reference;
use edge_filter_tests::corpus::shared_data_dir;
use edge_filter_tests::frames::l4_frame;
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
            if let Some(ports) = v.2 {
                let (s, d) = (p["src_port"].as_u64(), p["dst_port"].as_u64());
                assert_eq!(
                    Some(ports),
                    s.zip(d).map(|(s, d)| (s as u16, d as u16)),
                    "{rel}#{index}: {p}"
                );
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
        frame4(Ipv4Addr::new(10, 0, 0, 1), 6, 1, 2, None)
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
    assert!(
        err.contains("edge-filter replay --live needs CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON")
            && err.contains("nothing was changed"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// A large generated capture.

/// An IPv4 frame of the shared builder (most cases here are IPv4).
fn frame4(src: Ipv4Addr, proto: u8, sport: u16, dport: u16, vlan: Option<u16>) -> Vec<u8> {
    l4_frame(src.into(), proto, sport, dport, vlan)
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
                frame4(src, proto, sport, dport, None)
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
                l4_frame(src.into(), proto, sport, dport, None)
            }
            90..=94 => {
                let src = Ipv4Addr::new(10, rng.below(6) as u8, 7, rng.below(256) as u8);
                frame4(src, proto, sport, dport, Some(100))
            }
            95..=97 => {
                // ARP: not IP, passed uncounted as such.
                let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06];
                f.extend_from_slice(&[0u8; 28]);
                f
            }
            _ => {
                // IPv4 whose total length exceeds the frame: malformed.
                let mut f = frame4(Ipv4Addr::new(10, 1, 2, 3), 17, 1, 2, None);
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

// ---------------------------------------------------------------------------
// Unreadable input, empty input and records of any legal size: a gate must
// not pass on garbage, nor be written from it.

/// A little-endian pcapng block: type, length, body padded to 4, length.
fn ng_block(ty: u32, body: &[u8]) -> Vec<u8> {
    let pad = (4 - body.len() % 4) % 4;
    let len = (12 + body.len() + pad) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&[0; 3][..pad]);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

/// Section Header Block (little-endian, version 1.0, unknown length).
fn ng_shb() -> Vec<u8> {
    let mut body = vec![0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0];
    body.extend_from_slice(&(-1i64).to_le_bytes());
    ng_block(0x0a0d_0d0a, &body)
}

/// Interface Description Block: Ethernet, the given snap length (0: no
/// limit).
fn ng_idb(snaplen: u32) -> Vec<u8> {
    let mut body = vec![1, 0, 0, 0];
    body.extend_from_slice(&snaplen.to_le_bytes());
    ng_block(1, &body)
}

/// Enhanced Packet Block on interface 0, microsecond timestamp `ts`.
fn ng_epb(ts: u64, frame: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(20 + frame.len());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(ts as u32).to_le_bytes());
    body.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    body.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    body.extend_from_slice(frame);
    ng_block(6, &body)
}

/// An IPv6 jumbogram (payload length 0, Hop-by-Hop Jumbo Payload option)
/// carrying UDP, `len` bytes in all.
fn jumbogram_v6(src: Ipv6Addr, len: usize) -> Vec<u8> {
    // Written by hand: no builder makes a jumbogram.
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 0, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1).octets());
    // The Jumbo Payload length: everything after the IPv6 header.
    let jumbo = (len - f.len()) as u32;
    f.extend_from_slice(&[17, 0, 0xc2, 4]);
    f.extend_from_slice(&jumbo.to_be_bytes());
    // UDP 4000 -> 53.
    f.extend_from_slice(&[0x0f, 0xa0, 0, 53, 0, 8, 0, 0]);
    f.resize(len, 0xa5);
    f
}

/// `replay` with extra process limits: the address space capped at
/// `as_bytes` (so allocating what a length field claims would fail).
fn replay_limited(args: &[&OsStr], as_bytes: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(edge_filter_bin());
    c.arg("replay").args(args).env("RUST_LOG", "warn");
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing
    // else of the parent.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: as_bytes,
                rlim_max: as_bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().expect("run edge-filter replay")
}

/// Files in `dir` (to check nothing was left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn unreadable_captures_fail_and_write_no_expectations() {
    let _g = lock();
    if skip_unless_root("unreadable_captures_fail_and_write_no_expectations") {
        return;
    }
    let tmp = TempDir::new("garbage");
    let caps = tmp.path("caps");
    std::fs::create_dir(&caps).unwrap();
    // Garbage with control characters in its bytes and in a file name.
    std::fs::write(caps.join("html.pcap"), "<html>\r\n\x1b[2Jnot found</html>").unwrap();
    std::fs::write(
        caps.join("evil\x1b[2J\rname.pcapng"),
        [0x0a, 0x0d, 0x0d, 0x0a, 1],
    )
    .unwrap();
    std::fs::write(caps.join("short.cap"), [0xd4, 0xc3]).unwrap();
    // A pcap header whose first record is cut.
    let mut cut = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    cut.extend_from_slice(&[0; 8]);
    cut.extend_from_slice(&[0, 0, 4, 0, 1, 0, 0, 0]);
    cut.extend_from_slice(&[0; 8]);
    cut.extend_from_slice(&60u32.to_le_bytes());
    cut.extend_from_slice(&60u32.to_le_bytes());
    cut.extend_from_slice(&[0; 20]);
    std::fs::write(caps.join("cut.pcap"), &cut).unwrap();
    let bl = tmp.path("bl.txt");
    std::fs::write(&bl, "192.0.2.1\n").unwrap();
    let exp = tmp.path("expect.json");
    let before = listing(&tmp.0);

    // The gate is not made from garbage: exit 3, no file, no leftovers.
    let out = replay(&[
        os(&caps),
        "--blocklist".as_ref(),
        os(&bl),
        "--write-expect".as_ref(),
        os(&exp),
    ]);
    let err = text(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(!exp.exists());
    assert_eq!(listing(&tmp.0), before);
    let path = |f: &str| caps.join(f).display().to_string();
    for (f, why) in [
        ("html.pcap", "not a pcap or pcapng file (magic 3c68746d)"),
        ("short.cap", "too short to be a capture (less than 4 bytes)"),
        (
            "cut.pcap",
            "broken after 0 records: file ends inside record 1 at byte 24, which claims 76 bytes: 36 are present",
        ),
    ] {
        assert!(
            err.contains(&format!("unreadable capture {}: {why}\n", path(f))),
            "{f}: {err}"
        );
    }
    // The name's control characters are escaped; none reach the terminal.
    assert!(
        err.contains(&format!(
            "unreadable capture {}: invalid pcapng section header: file ends inside the header of block 1 at byte 0: 5 of 8 bytes are present",
            caps.join("evil\\u{1b}[2J\\rname.pcapng").display()
        )),
        "{err}"
    );
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    assert!(!text(&out.stdout).contains('\x1b'));
    assert!(
        err.contains("4 of 4 captures could not be read (listed above; --allow-unreadable"),
        "{err}"
    );
    assert!(
        err.contains("no packet was replayed from 4 captures (4 unreadable)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("--write-expect: {} not written", exp.display())),
        "{err}"
    );

    // Expectations of nothing (as the old behaviour let anyone write) do
    // not make garbage pass either.
    std::fs::write(&exp, r#"{"totals": {"packets": 0}}"#).unwrap();
    let out = replay(&[
        os(&caps),
        "--blocklist".as_ref(),
        os(&bl),
        "--expect".as_ref(),
        os(&exp),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Allowing unreadable captures still leaves a replay of nothing.
    let out = replay(&[
        os(&caps),
        "--blocklist".as_ref(),
        os(&bl),
        "--expect".as_ref(),
        os(&exp),
        ALLOW_UNREADABLE.as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Both allowances: exit 0, and every file still listed.
    let out = replay(&[
        os(&caps),
        "--blocklist".as_ref(),
        os(&bl),
        ALLOW_UNREADABLE.as_ref(),
        "--allow-empty".as_ref(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("unreadable capture ").count(), 4, "{err}");
    assert!(
        err.contains("4 of 4 captures could not be read: allowed by --allow-unreadable"),
        "{err}"
    );
    // ... but --write-expect never writes expectations of nothing.
    std::fs::remove_file(&exp).unwrap();
    let out = replay(&[
        os(&caps),
        "--blocklist".as_ref(),
        os(&bl),
        ALLOW_UNREADABLE.as_ref(),
        "--allow-empty".as_ref(),
        "--write-expect".as_ref(),
        os(&exp),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not written: no packet was replayed"),
        "{}",
        text(&out.stderr)
    );
    assert!(!exp.exists());
}

#[test]
fn a_capture_without_packets_fails_unless_allowed() {
    let _g = lock();
    if skip_unless_root("a_capture_without_packets_fails_unless_allowed") {
        return;
    }
    let tmp = TempDir::new("empty");
    let cap = tmp.path("empty.pcap");
    write_pcap(&cap, 0, |_| unreachable!());
    let ng = tmp.path("empty.pcapng");
    let mut f = ng_shb();
    f.extend(ng_idb(0));
    std::fs::write(&ng, f).unwrap();
    let bl = tmp.path("bl.txt");
    std::fs::write(&bl, "192.0.2.1\n").unwrap();
    for c in [&cap, &ng] {
        let out = replay(&[os(c), "--blocklist".as_ref(), os(&bl)]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains(
                "no packet was replayed from 1 capture (1 without packet records): a replay of nothing checks nothing (--allow-empty accepts it)"
            ),
            "{err}"
        );
        // The summary still went to stdout.
        assert!(text(&out.stdout).starts_with("replayed 0 packets from 1 capture"));
        let out = replay(&[
            os(c),
            "--blocklist".as_ref(),
            os(&bl),
            "--allow-empty".as_ref(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    // An expectations file already in place is left as it was.
    let exp = tmp.path("expect.json");
    std::fs::write(&exp, "precious").unwrap();
    let out = replay(&[
        os(&cap),
        "--blocklist".as_ref(),
        os(&bl),
        "--allow-empty".as_ref(),
        "--write-expect".as_ref(),
        os(&exp),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&exp).unwrap(), "precious");
    // A directory without captures, a path that does not exist: exit 3.
    let none = tmp.path("none");
    std::fs::create_dir(&none).unwrap();
    for p in [&none, &tmp.path("missing.pcap")] {
        let out = replay(&[os(p), "--blocklist".as_ref(), os(&bl)]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    }
}

#[test]
fn a_mixed_directory_with_allow_unreadable() {
    let _g = lock();
    if skip_unless_root("a_mixed_directory_with_allow_unreadable") {
        return;
    }
    let tmp = TempDir::new("mixed");
    let caps = tmp.path("caps");
    std::fs::create_dir(&caps).unwrap();
    let good = caps.join("good.pcap");
    write_pcap(&good, 20, |i| {
        frame4(Ipv4Addr::new(192, 0, 2, (i % 4) as u8), 17, 1000, 53, None)
    });
    std::fs::write(caps.join("garbage.pcap"), b"GIF89a, not a capture").unwrap();
    // Three records, the third cut: the two before it are replayed.
    let partial = caps.join("partial.pcap");
    write_pcap(&partial, 3, |_| {
        frame4(Ipv4Addr::new(192, 0, 2, 1), 6, 1, 2, None)
    });
    let len = std::fs::metadata(&partial).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap();
    f.set_len(len - 10).unwrap();
    let bl = tmp.path("bl.txt");
    std::fs::write(&bl, "192.0.2.1\n").unwrap();
    let exp = tmp.path("expect.json");
    let args = |extra: &[&'static str]| -> Vec<std::ffi::OsString> {
        let mut a = vec![caps.clone().into_os_string(), "--blocklist".into()];
        a.push(bl.clone().into_os_string());
        a.extend(extra.iter().map(|s| s.into()));
        a
    };
    let run = |extra: &[&'static str], more: &[&OsStr]| {
        let mut a = args(extra);
        a.extend(more.iter().map(|s| s.to_os_string()));
        let a: Vec<&OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        replay(&a)
    };

    // Without the flag: exit 3 and no expectations.
    let out = run(&[], &["--write-expect".as_ref(), os(&exp)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(!exp.exists());
    assert!(
        err.contains("--allow-unreadable writes expectations for the others"),
        "{err}"
    );

    // With it: exit 0, both files listed with their reasons, and the
    // expectations cover what was read (the packets before the break too).
    let out = run(
        &[ALLOW_UNREADABLE],
        &["--write-expect".as_ref(), os(&exp), "--json".as_ref()],
    );
    let err = text(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "unreadable capture {}: not a pcap or pcapng file (magic 47494638)",
            caps.join("garbage.pcap").display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "unreadable capture {}: broken after 2 records: file ends inside record 3 at byte 164, which claims 70 bytes: 60 are present",
            partial.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("2 of 3 captures could not be read: allowed by --allow-unreadable"),
        "{err}"
    );
    let sum: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sum["packets"].as_u64(), Some(22));
    assert_eq!(
        file_report(&sum, "partial.pcap")["replayed"].as_u64(),
        Some(2)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&exp).unwrap()).unwrap();
    assert_eq!(doc["totals"]["packets"].as_u64(), Some(22));
    assert_eq!(doc["totals"]["by_verdict"]["drop"].as_u64(), Some(7));
    assert_eq!(doc["packets"]["partial.pcap"].as_array().unwrap().len(), 2);

    // The gate passes on the same input, with the flag...
    let out = run(&[ALLOW_UNREADABLE], &["--expect".as_ref(), os(&exp)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("expectations met"));
    // ... fails without it (3 wins over a clean comparison) ...
    let out = run(&[], &["--expect".as_ref(), os(&exp)]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // ... and a readable capture turning unreadable fails it even with the
    // flag: its expected packets go missing.
    std::fs::write(&good, b"\xd4\xc3\xb2\xa1").unwrap();
    let out = run(&[ALLOW_UNREADABLE], &["--expect".as_ref(), os(&exp)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("good.pcap#1: expected pass (pass_no_match), but the capture has no such replayed packet"),
        "{err}"
    );
}

#[test]
fn a_nine_megabyte_pcapng_packet_is_replayed() {
    let _g = lock();
    if skip_unless_root("a_nine_megabyte_pcapng_packet_is_replayed") {
        return;
    }
    const BIG: usize = 9_000_000;
    let tmp = TempDir::new("big");
    let cap = tmp.path("big.pcapng");
    let blocked = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);
    // Snap length 0: no limit, so 9 MB packets are legal.
    let mut f = ng_shb();
    f.extend(ng_idb(0));
    f.extend(ng_epb(1, &jumbogram_v6(blocked, BIG)));
    // IPv4 from a blocked source, its total length at the 65,535 maximum.
    let mut v4 = frame4(Ipv4Addr::new(192, 0, 2, 1), 17, 1, 2, None);
    v4[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
    v4.resize(BIG + 3, 0x5a);
    f.extend(ng_epb(2, &v4));
    f.extend(ng_epb(
        3,
        &frame4(Ipv4Addr::new(192, 0, 2, 9), 6, 1, 2, None),
    ));
    std::fs::write(&cap, &f).unwrap();
    drop(f);
    let bl = tmp.path("bl.txt");
    std::fs::write(&bl, format!("{blocked}\n192.0.2.1\n")).unwrap();

    // The address space is capped well below what holding the file would
    // take twice over; the packets stream as prefixes.
    let out = replay_limited(
        &[
            os(&cap),
            "--blocklist".as_ref(),
            os(&bl),
            "--json".as_ref(),
            "--per-packet".as_ref(),
        ],
        1 << 30,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    // The jumbogram: cut to what XDP sees linearly, decided by the kernel
    // on its (blocked) source.
    let p = &lines[0];
    println!("{p}");
    assert_eq!(p["truncated"], true, "{p}");
    assert_eq!(p["len"].as_u64(), Some(3520), "{p}");
    assert_eq!(p["src"], blocked.to_string(), "{p}");
    assert_eq!(
        (&p["verdict"], &p["reason"]),
        (&"drop".into(), &"drop_addr".into()),
        "{p}"
    );
    assert_eq!(p["evaluated"], "kernel");
    // What XDP sees linearly of it: an IPv4 header claiming more than the
    // frame holds, malformed by the semantics (passed by default).
    let p = &lines[1];
    println!("{p}");
    assert_eq!(p["truncated"], true, "{p}");
    assert_eq!(p["reason"], "malformed_pass_ipv4_length", "{p}");
    assert_eq!(lines[2]["truncated"], false);
    assert_eq!(lines[2]["verdict"], "pass");
    let sum = &lines[3]["summary"];
    assert_eq!(sum["packets"].as_u64(), Some(3));
    assert_eq!(sum["truncated"].as_u64(), Some(2));
    let r = file_report(sum, &cap.display().to_string());
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(r["truncated"].as_u64(), Some(2), "{r}");
    assert_eq!(r["records"].as_u64(), Some(3), "{r}");
}

#[test]
fn a_block_claiming_four_gib_is_a_clear_error_in_bounded_memory() {
    let _g = lock();
    if skip_unless_root("a_block_claiming_four_gib_is_a_clear_error_in_bounded_memory") {
        return;
    }
    let tmp = TempDir::new("claim");
    let cap = tmp.path("claim.pcapng");
    let mut f = ng_shb();
    f.extend(ng_idb(0));
    f.extend(ng_epb(
        1,
        &frame4(Ipv4Addr::new(192, 0, 2, 1), 17, 1, 2, None),
    ));
    let at = f.len();
    // An Enhanced Packet Block whose lengths claim 4 GiB - 4, in a file of
    // a few hundred bytes.
    f.extend_from_slice(&6u32.to_le_bytes());
    f.extend_from_slice(&0xffff_fffcu32.to_le_bytes());
    for w in [0u32, 0, 2, 0xffff_ffdc, 0xffff_ffdc] {
        f.extend_from_slice(&w.to_le_bytes());
    }
    f.extend_from_slice(&[0xab; 200]);
    std::fs::write(&cap, &f).unwrap();
    let bl = tmp.path("bl.txt");
    std::fs::write(&bl, "192.0.2.1\n").unwrap();
    // An address space of 1 GiB: allocating what the block claims fails.
    let out = replay_limited(&[os(&cap), "--blocklist".as_ref(), os(&bl)], 1 << 30);
    let err = text(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "unreadable capture {}: broken after 1 packet blocks: file ends inside block 4 (Enhanced Packet Block) at byte {at}, which claims 4294967292 bytes: 228 are present",
            cap.display()
        )),
        "{err}"
    );
    // The packet before it is replayed (and dropped).
    let out = replay_limited(
        &[
            os(&cap),
            "--blocklist".as_ref(),
            os(&bl),
            ALLOW_UNREADABLE.as_ref(),
            "--json".as_ref(),
        ],
        1 << 30,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sum: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sum["totals"]["dropped"].as_u64(), Some(1), "{sum}");
}

/// The project's own gate (`.ci/run`) replays a directory that holds
/// unreadable captures on purpose, so it says `--allow-unreadable`; without
/// it the same command fails with exit 3.
#[test]
fn the_ci_gate_on_the_shared_captures_says_allow_unreadable() {
    let _g = lock();
    let Some(data) = setup("the_ci_gate_on_the_shared_captures_says_allow_unreadable") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let line = script
        .lines()
        .find(|l| l.contains("edge-filter replay"))
        .expect("a replay gate in .ci/run");
    let gate = script[script.find(line).unwrap()..]
        .split("\n\n")
        .next()
        .unwrap()
        .to_string();
    assert!(gate.contains("--allow-unreadable"), "{gate}");
    let pcaps = data.join("pcaps");
    let (bl, exp) = (
        root.join("ci/replay-blocklist.txt"),
        root.join("ci/replay-expect.json"),
    );
    let gate_args = |allow: bool| {
        let mut a: Vec<&OsStr> = vec![
            os(&pcaps),
            "--blocklist".as_ref(),
            os(&bl),
            "--expect".as_ref(),
            os(&exp),
        ];
        if allow {
            a.push(ALLOW_UNREADABLE.as_ref());
        }
        a
    };
    let out = replay(&gate_args(true));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("expectations met"), "{err}");
    // Exactly the captures MANIFEST.tsv describes as damaged beyond reading.
    let listed: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("unreadable capture "))
        .collect();
    println!("{}", listed.join("\n"));
    assert_eq!(listed.len(), 2, "{err}");
    assert!(
        listed[0].contains("libpcap/shb-option-too-long.pcapng: invalid pcapng section header")
    );
    assert!(listed[1].contains("suricata-verify/bug-6875-01__fuzz.pcap: broken after 1 records"));
    let out = replay(&gate_args(false));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

/// The exit statuses are documented where a CI author looks, and usage
/// errors keep clap's 2 (no root needed).
#[test]
fn exit_statuses_are_documented() {
    let out = replay(&["--help".as_ref()]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for l in [
        "Exit status:",
        "0  replayed, and every check passed",
        "1  the verdicts differ from --expect",
        "2  usage error",
        "3  input problem",
        "4  the replay could not run",
        "--allow-unreadable",
        "--allow-empty",
    ] {
        assert!(help.contains(l), "{l}: {help}");
    }
    let out = replay(&["x.pcap".as_ref(), "--no-such-flag".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
}
