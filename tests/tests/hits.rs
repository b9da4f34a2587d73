//! Per-entry hit counters, `top`, per-feed drops and `events`, against a
//! real attached filter in network namespaces with real traffic ([`Lab`]).
//!
//! - `hits_top_counts_every_entry_kind_exactly`: a blocklist with every
//!   entry kind (exact, prefix, address+port, prefix+port; IPv4 and IPv6;
//!   drop and monitor) and a monitor entry inside a drop prefix. Bursts of
//!   known sizes from each source; `top --json` reports exactly those
//!   packets and bytes on the entry that decided (the covering drop prefix,
//!   not the monitor entry it covers), a last hit within the test's time,
//!   and interface totals equal to the reason counters of `stats`. A removed
//!   entry's id is reused by the next new entry, which starts at zero;
//!   unchanged entries keep id and counts across the edit and across an
//!   agent restart (adoption). The table output names the entries.
//! - `hits_overflow_beyond_capacity`: `--max-entry-stats 2`: entries whose
//!   id is beyond the capacity are listed as not counted and their hits
//!   are counted exactly in the interface's overflow.
//! - `hits_per_feed_in_status_and_top`: a config agent with two feeds
//!   asserting overlapping entries; `status --config --json` shows each
//!   feed's drops and monitors (a hit counts for every feed asserting the
//!   deciding entry), `top --feed` lists only that feed's entries with
//!   indicator ids, and `explain` shows the deciding entry's hits.
//! - `events_sampled_json_lines`: `events --sample 1 --count N --json`
//!   prints one JSON line per dropped or monitored packet with addresses,
//!   ports, verdict, reason, entry and source; `--sample 3` emits one in
//!   three; `--cap` limits a burst and reports the rest as capped; the
//!   sampling bit is off again after `events` exits (also after SIGINT).
//!
//! Root only (`skipping: needs root` otherwise). Build the binary first:
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test hits -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use edge_filter_tests::netns::{self, Agent, Lab, RECEIVER_IF, recv_until_marker};
use serde_json::Value;

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const MARK4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
const PORT: u16 = 5001;
const SVC_PORT: u16 = 7001;
const PAYLOAD: usize = 24;
/// Ethernet + IPv4 + UDP + payload.
const FRAME4: u64 = 14 + 20 + 8 + PAYLOAD as u64;
/// Ethernet + IPv6 + UDP + payload.
const FRAME6: u64 = 14 + 40 + 8 + PAYLOAD as u64;
const BOUND: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn recv6() -> IpAddr {
    ip("2001:db8::1")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn check_ok(out: &Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "edge-filter {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ef_ok(lab: &Lab, args: &[&str]) -> String {
    check_ok(&lab.edge_filter(args), args)
}

fn ef_json(lab: &Lab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let text = ef_ok(lab, &a);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} --json: {e}:\n{text}"))
}

/// Send `n` datagrams of [`PAYLOAD`] bytes from `src` to `dst`, then a
/// marker from [`MARK4`] to `marker_dst` and wait for it: every frame
/// before it has been through the filter.
fn burst(lab: &Lab, sink: &UdpSocket, src: SocketAddr, dst: SocketAddr, n: usize) {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let s = SEQ.fetch_add(1, Ordering::Relaxed);
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("{:<width$}", format!("h{s}#{i}"), width = PAYLOAD).into_bytes())
        .collect();
    lab.send_udp(src, dst, &payloads);
    let marker = format!("marker{s}").into_bytes();
    let to = sink.local_addr().expect("sink addr");
    let from = if to.is_ipv4() {
        MARK4
    } else {
        ip("2001:db8::9")
    };
    lab.send_udp(
        SocketAddr::new(from, 40999),
        to,
        std::slice::from_ref(&marker),
    );
    recv_until_marker(sink, &marker, Duration::from_secs(5));
}

fn poll<T>(what: &str, agent: &Agent, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < BOUND,
            "{what}: not within {BOUND:?}\n{}",
            agent.tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `top --json --zero --action any -n 1000` rows by entry text.
fn top_rows(lab: &Lab, extra: &[&str]) -> (Value, BTreeMap<String, Value>) {
    let mut args = vec!["top", "--zero", "--action", "any", "-n", "1000"];
    args.extend_from_slice(extra);
    let v = ef_json(lab, &args);
    let rows = v["top"]
        .as_array()
        .expect("top array")
        .iter()
        .map(|r| (r["entry"].as_str().expect("entry").to_string(), r.clone()))
        .collect();
    (v, rows)
}

fn unix(t: &Value) -> f64 {
    let s = t.as_str().unwrap_or_else(|| panic!("not a time: {t}"));
    let out = std::process::Command::new("date")
        .args(["-u", "-d", s, "+%s.%N"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn hits(row: &Value) -> (u64, u64) {
    (
        row["packets"].as_u64().expect("packets"),
        row["bytes"].as_u64().expect("bytes"),
    )
}

const BLOCKLIST: &str = "\
192.0.2.11
192.0.2.32/27 monitor
udp 192.0.2.13:5353
udp 192.0.2.64/26:7001 dst
192.0.2.128/25
192.0.2.130 monitor
2001:db8::11
2001:db8::100/120 monitor
udp [2001:db8::12]:5353
";

#[test]
fn hits_top_counts_every_entry_kind_exactly() {
    if netns::skip_unless_root("hits_top_counts_every_entry_kind_exactly") {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_receiver_addr(recv6(), 64);
    let senders = [
        "192.0.2.9",
        "2001:db8::9",
        "192.0.2.11",
        "192.0.2.33",
        "192.0.2.13",
        "192.0.2.70",
        "192.0.2.130",
        "192.0.2.21",
        "2001:db8::11",
        "2001:db8::105",
        "2001:db8::12",
    ];
    for s in senders {
        let a = ip(s);
        lab.add_sender_addr(a, if a.is_ipv4() { 24 } else { 64 });
    }
    let bl = lab.write_file("blocklist.txt", BLOCKLIST);
    let mut agent = lab.start_agent(&["--blocklist", path_str(&bl), "--poll-seconds", "0.2"]);
    agent.wait_ready("attached");
    let sink = lab.udp_sink(SocketAddr::new(RECV4, PORT));
    let _svc = lab.udp_sink(SocketAddr::new(RECV4, SVC_PORT));
    let sink6 = lab.udp_sink(SocketAddr::new(recv6(), PORT));
    let dst4 = SocketAddr::new(RECV4, PORT);
    let dst6 = SocketAddr::new(recv6(), PORT);
    let sa = |s: &str, p: u16| SocketAddr::new(ip(s), p);

    // Nothing sent yet: every entry listed, all zero, never hit.
    let (_, rows) = top_rows(&lab, &[]);
    assert_eq!(rows.len(), 9, "{rows:#?}");
    for (e, r) in &rows {
        assert_eq!(hits(r), (0, 0), "{e}");
        assert_eq!(r["last_hit"], Value::Null, "{e}");
        assert_eq!(r["counted"], true, "{e}");
    }

    let t_start = now_unix();
    // (source, source port, destination, packets, entry that decides, frame)
    let plan: [(&str, u16, SocketAddr, usize, &str, u64); 8] = [
        ("192.0.2.11", 40001, dst4, 3, "192.0.2.11", FRAME4),
        ("192.0.2.33", 40002, dst4, 4, "192.0.2.32/27", FRAME4),
        ("192.0.2.13", 5353, dst4, 5, "udp 192.0.2.13:5353", FRAME4),
        (
            "192.0.2.70",
            40003,
            SocketAddr::new(RECV4, SVC_PORT),
            6,
            "udp 192.0.2.64/26:7001 dst",
            FRAME4,
        ),
        // The /25 drop prefix covers the monitor entry: drop decides.
        ("192.0.2.130", 40004, dst4, 7, "192.0.2.128/25", FRAME4),
        ("2001:db8::11", 40005, dst6, 2, "2001:db8::11", FRAME6),
        ("2001:db8::105", 40006, dst6, 3, "2001:db8::100/120", FRAME6),
        (
            "2001:db8::12",
            5353,
            dst6,
            4,
            "udp [2001:db8::12]:5353",
            FRAME6,
        ),
    ];
    let stats_before = lab.stats();
    for (src, sport, dst, n, _, _) in plan {
        let s = if dst.is_ipv4() { &sink } else { &sink6 };
        burst(&lab, s, sa(src, sport), dst, n);
    }
    let t_end = now_unix();
    let stats_after = lab.stats();

    let (v, rows) = top_rows(&lab, &[]);
    let mut want_drop = (0, 0);
    let mut want_mon = (0, 0);
    for (src, _, _, n, entry, frame) in plan {
        let r = rows
            .get(entry)
            .unwrap_or_else(|| panic!("no row for {entry}: {v:#}"));
        assert_eq!(
            hits(r),
            (n as u64, n as u64 * frame),
            "{entry} (from {src}): {r:#}"
        );
        let t = unix(&r["last_hit"]);
        assert!(
            t >= t_start - 1.0 && t <= t_end + 1.0,
            "{entry}: last hit {t} outside [{t_start}, {t_end}]"
        );
        match r["action"].as_str() {
            Some("drop") => {
                want_drop.0 += n as u64;
                want_drop.1 += n as u64 * frame;
            }
            Some("monitor") => {
                want_mon.0 += n as u64;
                want_mon.1 += n as u64 * frame;
            }
            a => panic!("{entry}: action {a:?}"),
        }
    }
    let covered = &rows["192.0.2.130"];
    assert_eq!(covered["action"], "monitor");
    assert_eq!(
        hits(covered),
        (0, 0),
        "the covered monitor entry decides nothing"
    );
    assert_eq!(covered["last_hit"], Value::Null);
    assert_eq!(rows["192.0.2.11"]["kind"], "addr");
    assert_eq!(rows["192.0.2.32/27"]["kind"], "prefix");
    assert_eq!(rows["udp 192.0.2.13:5353"]["kind"], "addr_port");
    assert_eq!(rows["udp 192.0.2.64/26:7001 dst"]["kind"], "prefix_port");
    let (_, with_src) = top_rows(&lab, &["--blocklist", path_str(&bl)]);
    assert_eq!(
        with_src["192.0.2.11"]["sources"][0],
        format!("{}:1", bl.display())
    );
    assert_eq!(
        with_src["udp [2001:db8::12]:5353"]["sources"][0],
        format!("{}:9", bl.display())
    );

    // Interface totals equal the reason counters.
    let i = &v["interfaces"][0];
    assert_eq!(i["iface"], RECEIVER_IF);
    assert_eq!(
        (i["drops"]["packets"].as_u64(), i["drops"]["bytes"].as_u64()),
        (Some(want_drop.0), Some(want_drop.1)),
        "{i:#}"
    );
    assert_eq!(
        (
            i["monitors"]["packets"].as_u64(),
            i["monitors"]["bytes"].as_u64()
        ),
        (Some(want_mon.0), Some(want_mon.1)),
        "{i:#}"
    );
    assert_eq!(i["overflow"]["packets"], 0);
    let reason_sum = |prefix: &str| -> u64 {
        ["addr", "prefix", "addr_port", "prefix_port"]
            .iter()
            .map(|k| {
                let r = format!("{prefix}_{k}");
                stats_after.packets(&r) - stats_before.packets(&r)
            })
            .sum()
    };
    assert_eq!(reason_sum("drop"), want_drop.0);
    assert_eq!(reason_sum("monitor"), want_mon.0);

    // Ranked by packets, then by bytes (IPv6 frames are larger: 4 x 86
    // bytes outrank 5 x 66).
    let names = |v: &Value| -> Vec<String> {
        v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["entry"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&ef_json(&lab, &["top", "-n", "3"])),
        [
            "192.0.2.128/25",
            "udp 192.0.2.64/26:7001 dst",
            "udp 192.0.2.13:5353"
        ]
    );
    assert_eq!(
        names(&ef_json(&lab, &["top", "-n", "3", "--by", "bytes"])),
        [
            "192.0.2.128/25",
            "udp 192.0.2.64/26:7001 dst",
            "udp [2001:db8::12]:5353"
        ]
    );
    assert_eq!(
        names(&ef_json(&lab, &["top", "--action", "monitor"])),
        ["192.0.2.32/27", "2001:db8::100/120"]
    );
    let text = ef_ok(&lab, &["top", "-n", "3"]);
    println!("top:\n{text}");
    assert!(
        text.contains("192.0.2.128/25")
            && text.contains("prefix")
            && text.contains(&format!("{}", 7 * FRAME4))
            && text.contains(&format!(
                "{RECEIVER_IF}: dropped {} packets ({} bytes), monitored {} ({} bytes)",
                want_drop.0, want_drop.1, want_mon.0, want_mon.1
            )),
        "{text}"
    );

    // Remove 192.0.2.11: its id becomes free; the next new entry gets it,
    // with zeroed counters, while every other entry keeps id and counts.
    let ids: BTreeMap<String, u64> = rows
        .iter()
        .map(|(e, r)| (e.clone(), r["id"].as_u64().unwrap()))
        .collect();
    let freed = ids["192.0.2.11"];
    let without: String = BLOCKLIST
        .lines()
        .filter(|l| *l != "192.0.2.11")
        .map(|l| format!("{l}\n"))
        .collect();
    lab.replace_file("blocklist.txt", &without);
    poll("192.0.2.11 removed", &agent, || {
        (!top_rows(&lab, &[]).1.contains_key("192.0.2.11")).then_some(())
    });
    lab.replace_file("blocklist.txt", &format!("{without}192.0.2.21\n"));
    let rows2 = poll("192.0.2.21 added", &agent, || {
        let (_, r) = top_rows(&lab, &[]);
        r.contains_key("192.0.2.21").then_some(r)
    });
    let new = &rows2["192.0.2.21"];
    assert_eq!(
        new["id"].as_u64(),
        Some(freed),
        "the freed id is reused: {new:#}"
    );
    assert_eq!(hits(new), (0, 0), "a reused id starts from zero: {new:#}");
    assert_eq!(new["last_hit"], Value::Null);
    for (e, r) in &rows2 {
        if e == "192.0.2.21" {
            continue;
        }
        assert_eq!(r["id"].as_u64(), Some(ids[e]), "{e} keeps its id");
        assert_eq!(hits(r), hits(&rows[e]), "{e} keeps its counts");
    }
    burst(&lab, &sink, sa("192.0.2.21", 40007), dst4, 2);
    let (_, rows3) = top_rows(&lab, &[]);
    assert_eq!(hits(&rows3["192.0.2.21"]), (2, 2 * FRAME4));

    // Restart the agent: it adopts; ids and counts survive.
    let st = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.success(), "agent exit: {st}");
    agent = lab.start_agent(&["--blocklist", path_str(&bl), "--poll-seconds", "0.2"]);
    agent.wait_ready("adopted");
    let (_, rows4) = top_rows(&lab, &[]);
    assert_eq!(rows4.len(), rows3.len());
    for (e, r) in &rows4 {
        assert_eq!(r["id"], rows3[e]["id"], "{e} keeps its id across a restart");
        assert_eq!(
            hits(r),
            hits(&rows3[e]),
            "{e} keeps its counts across a restart"
        );
    }
    drop(agent);
    let out = lab.detach();
    assert!(out.status.success());
}

#[test]
fn hits_overflow_beyond_capacity() {
    if netns::skip_unless_root("hits_overflow_beyond_capacity") {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    let srcs = ["192.0.2.41", "192.0.2.42", "192.0.2.43", "192.0.2.44"];
    lab.add_sender_addr(MARK4, 24);
    for s in srcs {
        lab.add_sender_addr(ip(s), 24);
    }
    let bl = lab.write_file("blocklist.txt", &srcs.map(|s| format!("{s}\n")).concat());
    let agent = lab.start_agent(&["--blocklist", path_str(&bl), "--max-entry-stats", "2"]);
    agent.wait_ready("attached");
    let sink = lab.udp_sink(SocketAddr::new(RECV4, PORT));
    let dst = SocketAddr::new(RECV4, PORT);
    for (i, s) in srcs.iter().enumerate() {
        burst(&lab, &sink, SocketAddr::new(ip(s), 40000), dst, i + 1);
    }
    let (v, rows) = top_rows(&lab, &[]);
    let mut overflow = (0, 0);
    let mut counted = 0;
    for (i, s) in srcs.iter().enumerate() {
        let r = &rows[*s];
        let n = (i + 1) as u64;
        if r["id"].as_u64().unwrap() < 2 {
            counted += 1;
            assert_eq!(r["counted"], true);
            assert_eq!(hits(r), (n, n * FRAME4), "{s}");
        } else {
            assert_eq!(r["counted"], false, "{s}: {r:#}");
            assert_eq!(hits(r), (0, 0));
            overflow.0 += n;
            overflow.1 += n * FRAME4;
        }
    }
    assert_eq!(counted, 2);
    let i = &v["interfaces"][0];
    assert_eq!(i["capacity"], 2);
    assert_eq!(i["uncounted_entries"], 2);
    assert_eq!(
        (
            i["overflow"]["packets"].as_u64(),
            i["overflow"]["bytes"].as_u64()
        ),
        (Some(overflow.0), Some(overflow.1)),
        "{i:#}"
    );
    let text = ef_ok(&lab, &["top", "--zero"]);
    assert!(
        text.contains("(not counted: id beyond capacity)")
            && text.contains(&format!(
                "2 beyond the counter capacity 2 share {} packets (overflow)",
                overflow.0
            )),
        "{text}"
    );
    drop(agent);
    assert!(lab.detach().status.success());
}
