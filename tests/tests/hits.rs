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
//! - `hits_every_entry_counted_whatever_max_entry_stats`: `--max-entry-stats
//!   2` (which limited v1's per-entry counters) is ignored with a warning:
//!   with datapath v2 every entry is counted exactly, nothing overflows.
//! - `hits_sampled_and_off_entry_counters`: `--entry-counters sampled`
//!   counts whole samples of `ENTRY_SAMPLE_EVERY` packets (bytes with
//!   them), within a sample per CPU of what was sent, while the verdict
//!   counters stay exact; `status` and `top` say so; restarted with `off`
//!   the entries count nothing more, and with the default every packet
//!   again.
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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::literal::{ip, path_str};
use edge_filter_tests::netns::{self, Agent, Lab, RECEIVER_IF};
use edge_filter_tests::traffic::{PAYLOAD, Probe};
use edge_filter_tests::wait::poll;
use serde_json::Value;

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const MARK4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
const PORT: u16 = 5001;
const SVC_PORT: u16 = 7001;
/// Ethernet + IPv4 + UDP + payload.
const FRAME4: u64 = 14 + 20 + 8 + PAYLOAD as u64;
/// Ethernet + IPv6 + UDP + payload.
const FRAME6: u64 = 14 + 40 + 8 + PAYLOAD as u64;
const BOUND: Duration = Duration::from_secs(10);

fn recv6() -> IpAddr {
    ip("2001:db8::1")
}

/// `top --json --zero --action any -n 1000` rows by entry text.
fn top_rows(lab: &Lab, extra: &[&str]) -> (Value, BTreeMap<String, Value>) {
    let mut args = vec!["top", "--zero", "--action", "any", "-n", "1000"];
    args.extend_from_slice(extra);
    let v = lab.ef_json(&args);
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
    let sink = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    let _svc = lab.udp_sink(SocketAddr::new(RECV4, SVC_PORT));
    let sink6 = Probe::new(&lab, SocketAddr::new(recv6(), PORT), ip("2001:db8::9"));
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
        s.send_to(&lab, sa(src, sport), dst, n);
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
        names(&lab.ef_json(&["top", "-n", "3"])),
        [
            "192.0.2.128/25",
            "udp 192.0.2.64/26:7001 dst",
            "udp 192.0.2.13:5353"
        ]
    );
    assert_eq!(
        names(&lab.ef_json(&["top", "-n", "3", "--by", "bytes"])),
        [
            "192.0.2.128/25",
            "udp 192.0.2.64/26:7001 dst",
            "udp [2001:db8::12]:5353"
        ]
    );
    assert_eq!(
        names(&lab.ef_json(&["top", "--action", "monitor"])),
        ["192.0.2.32/27", "2001:db8::100/120"]
    );
    let text = lab.ef_ok(&["top", "-n", "3"]);
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
    poll("192.0.2.11 removed", BOUND, &agent, || {
        (!top_rows(&lab, &[]).1.contains_key("192.0.2.11")).then_some(())
    });
    lab.replace_file("blocklist.txt", &format!("{without}192.0.2.21\n"));
    let rows2 = poll("192.0.2.21 added", BOUND, &agent, || {
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
    sink.send_to(&lab, sa("192.0.2.21", 40007), dst4, 2);
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
fn hits_every_entry_counted_whatever_max_entry_stats() {
    if netns::skip_unless_root("hits_every_entry_counted_whatever_max_entry_stats") {
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
    // v1 counted ids below this limit and the rest in one overflow slot;
    // with datapath v2 every id has its own counter and the key is ignored.
    let agent = lab.start_agent(&["--blocklist", path_str(&bl), "--max-entry-stats", "2"]);
    agent.wait_ready("attached");
    assert!(
        agent.wait_stderr("entry_stats = 2", Duration::from_secs(5))
            && agent.stderr_text().contains("map capacities are ignored"),
        "no warning that the capacity is ignored:\n{}",
        agent.stderr_text()
    );
    let sink = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    let dst = SocketAddr::new(RECV4, PORT);
    for (i, s) in srcs.iter().enumerate() {
        sink.send_to(&lab, SocketAddr::new(ip(s), 40000), dst, i + 1);
    }
    let (v, rows) = top_rows(&lab, &[]);
    for (i, s) in srcs.iter().enumerate() {
        let r = &rows[*s];
        let n = (i + 1) as u64;
        assert_eq!(r["counted"], true, "{s}: {r:#}");
        assert_eq!(hits(r), (n, n * FRAME4), "{s}");
    }
    let i = &v["interfaces"][0];
    assert!(
        i["capacity"]
            .as_u64()
            .is_some_and(|c| c >= srcs.len() as u64),
        "{i:#}"
    );
    assert_eq!(i["uncounted_entries"], 0, "{i:#}");
    assert_eq!(
        (
            i["overflow"]["packets"].as_u64(),
            i["overflow"]["bytes"].as_u64()
        ),
        (Some(0), Some(0)),
        "{i:#}"
    );
    let text = lab.ef_ok(&["top", "--zero"]);
    assert!(!text.contains("not counted"), "{text}");
    drop(agent);
    assert!(lab.detach().status.success());
}

#[test]
fn hits_sampled_and_off_entry_counters() {
    if netns::skip_unless_root("hits_sampled_and_off_entry_counters") {
        return;
    }
    let every = u64::from(edge_filter_common::ENTRY_SAMPLE_EVERY);
    let cpus = std::thread::available_parallelism().map_or(64, |n| n.get()) as u64;
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(MARK4, 24);
    let (drop4, mon4) = ("192.0.2.51", "192.0.2.52");
    lab.add_sender_addr(ip(drop4), 24);
    lab.add_sender_addr(ip(mon4), 24);
    let bl = lab.write_file("blocklist.txt", &format!("{drop4}\n{mon4} monitor\n"));
    let mut agent = lab.start_agent(&["--blocklist", path_str(&bl), "--entry-counters", "sampled"]);
    agent.wait_ready("attached");
    let st = lab.ef_json(&["status"]);
    assert_eq!(
        st["interfaces"][0]["entry_counters"], "sampled",
        "status: {st:#}"
    );
    let sink = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    let dst = SocketAddr::new(RECV4, PORT);
    let (nd, nm) = (10 * every as usize, 3 * every as usize + 5);
    let before = lab.stats();
    sink.send_to(&lab, SocketAddr::new(ip(drop4), 40000), dst, nd);
    sink.send_to(&lab, SocketAddr::new(ip(mon4), 40000), dst, nm);
    let after = lab.stats();
    // The verdict counters stay exact.
    assert_eq!(
        after.packets("drop_addr") - before.packets("drop_addr"),
        nd as u64,
        "{}",
        after.summary()
    );
    assert_eq!(
        after.packets("monitor_addr") - before.packets("monitor_addr"),
        nm as u64,
        "{}",
        after.summary()
    );
    // Per entry: whole samples of `every` packets (each of `every` times
    // the frame), within one sample per CPU of the truth (each CPU ticks
    // on its own count of the reason).
    let (v, rows) = top_rows(&lab, &[]);
    for (e, n) in [(drop4, nd as u64), (mon4, nm as u64)] {
        let (p, b) = hits(&rows[e]);
        assert_eq!(p % every, 0, "{e}: {p} packets is not whole samples: {v:#}");
        assert_eq!(b, p * FRAME4, "{e}: bytes are the sample's: {v:#}");
        assert!(
            p.abs_diff(n) < every * cpus,
            "{e}: {p} counted for {n} sent ({cpus} CPUs): {v:#}"
        );
    }
    // The drop entry saw ten samples' worth: at least one landed.
    assert!(hits(&rows[drop4]).0 > 0, "{v:#}");
    assert_ne!(rows[drop4]["last_hit"], Value::Null, "{v:#}");
    assert_eq!(v["interfaces"][0]["entry_counters"], "sampled", "{v:#}");
    let text = lab.ef_ok(&["top"]);
    assert!(
        text.contains("per-entry counters are sampled") && text.contains("estimates"),
        "top does not say its counts are estimates:\n{text}"
    );
    let text = lab.ef_ok(&["explain", drop4, "--blocklist", path_str(&bl)]);
    assert!(
        text.contains(&format!("hits on {RECEIVER_IF}: {drop4}")) && text.contains("estimates"),
        "explain does not say its hits are estimates:\n{text}"
    );
    let ex = lab.ef_json(&["explain", drop4, "--blocklist", path_str(&bl)]);
    assert_eq!(ex["kernel"][0]["entry_counters"], "sampled", "{ex:#}");

    // Restarted with counters off: the agent adopts and switches the
    // datapath; entries keep what they had and count nothing more, while
    // the verdict counters go on.
    let st = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.success(), "agent exit: {st}");
    agent = lab.start_agent(&["--blocklist", path_str(&bl), "--entry-counters", "off"]);
    agent.wait_ready("adopted");
    let (_, kept) = top_rows(&lab, &[]);
    let before = lab.stats();
    sink.send_to(&lab, SocketAddr::new(ip(drop4), 40001), dst, nd);
    let after = lab.stats();
    assert_eq!(
        after.packets("drop_addr") - before.packets("drop_addr"),
        nd as u64
    );
    let (v, rows) = top_rows(&lab, &[]);
    assert_eq!(hits(&rows[drop4]), hits(&kept[drop4]), "off counts: {v:#}");
    assert_eq!(v["interfaces"][0]["entry_counters"], "off", "{v:#}");
    assert!(lab.ef_ok(&["top"]).contains("per-entry counters are off"));

    // And back to exact: every packet again.
    let st = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.success(), "agent exit: {st}");
    agent = lab.start_agent(&["--blocklist", path_str(&bl)]);
    agent.wait_ready("adopted");
    let (_, kept) = top_rows(&lab, &[]);
    sink.send_to(&lab, SocketAddr::new(ip(drop4), 40002), dst, 7);
    let (v, rows) = top_rows(&lab, &[]);
    let (p0, b0) = hits(&kept[drop4]);
    assert_eq!(hits(&rows[drop4]), (p0 + 7, b0 + 7 * FRAME4), "{v:#}");
    assert_eq!(v["interfaces"][0]["entry_counters"], "exact", "{v:#}");
    drop(agent);
    assert!(lab.detach().status.success());
}

const SOC: &str = r#"{"net":"192.0.2.20","indicator":"SOC-20"}
{"net":"192.0.2.21","action":"monitor","indicator":"SOC-21"}
"#;
const DROPLIST: &str = "192.0.2.20\n192.0.2.23\n";

fn feed_row<'a>(status: &'a Value, feed: &str) -> &'a Value {
    status["feeds"]
        .as_array()
        .expect("feeds")
        .iter()
        .find(|f| f["name"] == feed)
        .unwrap_or_else(|| panic!("no feed {feed}: {status:#}"))
}

#[test]
fn hits_per_feed_in_status_and_top() {
    if netns::skip_unless_root("hits_per_feed_in_status_and_top") {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    for a in ["192.0.2.9", "192.0.2.20", "192.0.2.21", "192.0.2.23"] {
        lab.add_sender_addr(ip(a), 24);
    }
    let soc = lab.write_file("soc.jsonl", SOC);
    let droplist = lab.write_file("droplist.txt", DROPLIST);
    let cfg = AgentConfig::soc_and_droplist(&lab, &soc, &droplist).write(&lab);
    let cfg_s = path_str(&cfg).to_string();
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    poll("both feeds enforced", BOUND, &agent, || {
        let (_, r) = top_rows(&lab, &["--config", &cfg_s]);
        (r.len() == 3).then_some(())
    });
    let sink = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    let dst = SocketAddr::new(RECV4, PORT);
    for (src, n) in [("192.0.2.20", 5), ("192.0.2.21", 3), ("192.0.2.23", 4)] {
        sink.send_to(&lab, SocketAddr::new(ip(src), 40000), dst, n);
    }

    // status: a hit counts for every feed asserting the deciding entry.
    let st = lab.status_json(&["--config", &cfg_s]).0;
    let soc_row = feed_row(&st, "soc");
    assert_eq!(soc_row["hits"]["drops"]["packets"], 5, "{soc_row:#}");
    assert_eq!(soc_row["hits"]["drops"]["bytes"], 5 * FRAME4);
    assert_eq!(soc_row["hits"]["monitors"]["packets"], 3);
    assert_eq!(soc_row["hits"]["monitors"]["bytes"], 3 * FRAME4);
    assert_eq!(soc_row["entries_hit"], 2);
    let dl = feed_row(&st, "droplist");
    assert_eq!(dl["hits"]["drops"]["packets"], 9, "{dl:#}");
    assert_eq!(dl["hits"]["drops"]["bytes"], 9 * FRAME4);
    assert_eq!(dl["hits"]["monitors"]["packets"], 0);
    assert_eq!(dl["entries_hit"], 2);
    let i = &st["interfaces"][0];
    assert_eq!(i["events_sampling"], false);
    let text = lab.status(&["--config", &cfg_s]).0;
    println!("status:\n{text}");
    assert!(
        text.contains("dropped") && text.contains("monitored"),
        "{text}"
    );

    // top --feed: only that feed's entries, with indicator ids.
    let v = lab.ef_json(&[
        "top", "--config", &cfg_s, "--feed", "soc", "--action", "any",
    ]);
    let top: Vec<(&str, u64, &Value)> = v["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["entry"].as_str().unwrap(),
                r["packets"].as_u64().unwrap(),
                r,
            )
        })
        .collect();
    assert_eq!(
        top.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(),
        [("192.0.2.20", 5), ("192.0.2.21", 3)]
    );
    assert_eq!(top[0].2["indicators"][0], "SOC-20");
    let mut feeds: Vec<&str> = top[0].2["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    feeds.sort();
    assert_eq!(feeds, ["droplist", "soc"]);
    assert_eq!(top[1].2["action"], "monitor");
    let f = v["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feed"] == "droplist")
        .unwrap();
    assert_eq!(f["drops"]["packets"], 9);
    assert_eq!(f["interfaces"][0]["iface"], RECEIVER_IF);
    assert_eq!(f["interfaces"][0]["drops"]["packets"], 9);
    let text = lab.ef_ok(&["top", "--config", &cfg_s]);
    println!("top --config:\n{text}");
    assert!(
        text.contains("SOC-20") && text.contains("feed droplist: dropped 9 packets"),
        "{text}"
    );
    let out = lab.edge_filter(&["top", "--config", &cfg_s, "--feed", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("feed \"nope\" is not in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // explain shows the deciding entry's hits.
    let ex = lab.ef_json(&["explain", "192.0.2.20", "--config", &cfg_s]);
    let h = &ex["kernel"][0]["hits"];
    assert_eq!(h.as_array().map(Vec::len), Some(1), "{ex:#}");
    assert_eq!(h[0]["entry"], "192.0.2.20");
    assert_eq!(h[0]["packets"], 5);
    assert_eq!(h[0]["bytes"], 5 * FRAME4);
    let text = lab.ef_ok(&["explain", "192.0.2.20", "--config", &cfg_s]);
    assert!(
        text.contains(&format!(
            "hits on {RECEIVER_IF}: 192.0.2.20 (id {}, drop): 5 packets, {} bytes, last hit",
            h[0]["id"],
            5 * FRAME4
        )),
        "{text}"
    );
    drop(agent);
    assert!(lab.detach().status.success());
}

// ---------------------------------------------------------------------------
// events

fn events_cmd(lab: &Lab, args: &[&str]) -> Agent {
    let mut cmd = lab.edge_filter_cmd();
    cmd.args(["events", "--iface", RECEIVER_IF, "--bpffs"])
        .arg(&lab.bpffs)
        .args(args);
    let a = Agent::spawn(cmd, RECEIVER_IF);
    assert!(
        a.wait_stderr("events: sampling", BOUND),
        "events did not start:\n{}",
        a.tail(20)
    );
    a
}

fn sampling_on(lab: &Lab) -> bool {
    let st = lab.status_json(&[]).0;
    st["interfaces"][0]["events_sampling"]
        .as_bool()
        .unwrap_or_else(|| panic!("{st:#}"))
}

/// `(emitted, lost, capped)` from the summary line on stderr.
fn summary(a: &Agent) -> (u64, u64, u64) {
    let text = a.stderr_text();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("events: {RECEIVER_IF}: ")))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1], nums[2])
}

#[test]
fn events_sampled_json_lines() {
    if netns::skip_unless_root("events_sampled_json_lines") {
        return;
    }
    let ncpus = aya::util::nr_cpus().expect("cpus") as u64;
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_receiver_addr(recv6(), 64);
    for a in [
        "192.0.2.9",
        "2001:db8::9",
        "192.0.2.11",
        "192.0.2.13",
        "192.0.2.14",
        "2001:db8::11",
    ] {
        let a = ip(a);
        lab.add_sender_addr(a, if a.is_ipv4() { 24 } else { 64 });
    }
    let bl = lab.write_file(
        "blocklist.txt",
        "192.0.2.11\nudp 192.0.2.13:5353\n192.0.2.14 monitor\n2001:db8::11\n",
    );
    let agent = lab.start_agent(&["--blocklist", path_str(&bl)]);
    agent.wait_ready("attached");
    assert!(!sampling_on(&lab), "sampling is off by default");
    let sink = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    let sink6 = Probe::new(&lab, SocketAddr::new(recv6(), PORT), ip("2001:db8::9"));
    let dst4 = SocketAddr::new(RECV4, PORT);
    let dst6 = SocketAddr::new(recv6(), PORT);

    // Every drop and monitor, exactly; passes (the markers) are not events.
    let ev = events_cmd(
        &lab,
        &[
            "--sample",
            "1",
            "--count",
            "8",
            "--json",
            "--blocklist",
            path_str(&bl),
        ],
    );
    assert!(sampling_on(&lab));
    // A second reader is refused while the first one runs.
    let out = lab.edge_filter(&["events", "--iface", RECEIVER_IF, "--count", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("event sampling is already on for ef-rcv"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t_start = now_unix();
    sink.send_to(&lab, SocketAddr::new(ip("192.0.2.11"), 40001), dst4, 3);
    sink.send_to(&lab, SocketAddr::new(ip("192.0.2.13"), 5353), dst4, 2);
    sink.send_to(&lab, SocketAddr::new(ip("192.0.2.14"), 40002), dst4, 2);
    sink6.send_to(&lab, SocketAddr::new(ip("2001:db8::11"), 40003), dst6, 1);
    let t_end = now_unix();
    let st = ev.wait_exit(BOUND, "(events)");
    assert!(st.success(), "events failed:\n{}", ev.tail(20));
    let lines = ev.stdout_lines();
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let by_src = |s: &str| events.iter().filter(|e| e["src"] == s).collect::<Vec<_>>();
    let e11 = by_src("192.0.2.11");
    assert_eq!(e11.len(), 3);
    for e in &e11 {
        assert_eq!(e["iface"], RECEIVER_IF);
        assert_eq!(e["dst"], "192.0.2.1");
        assert_eq!(e["proto"], "udp");
        assert_eq!(e["src_port"], 40001);
        assert_eq!(e["dst_port"], PORT);
        assert_eq!(e["verdict"], "drop");
        assert_eq!(e["reason"], "drop_addr");
        assert_eq!(e["entry"], "192.0.2.11");
        assert_eq!(e["sources"][0], format!("{}:1", bl.display()));
        assert_eq!(e["len"], FRAME4);
        let t = unix(&e["time"]);
        assert!(t >= t_start - 1.0 && t <= t_end + 1.0, "{e}");
    }
    let e13 = by_src("192.0.2.13");
    assert_eq!(e13.len(), 2);
    assert_eq!(e13[0]["reason"], "drop_addr_port");
    assert_eq!(e13[0]["entry"], "udp 192.0.2.13:5353");
    assert_eq!(e13[0]["src_port"], 5353);
    let e14 = by_src("192.0.2.14");
    assert_eq!(e14.len(), 2);
    assert_eq!(e14[0]["verdict"], "monitor");
    assert_eq!(e14[0]["reason"], "monitor_addr");
    let e6 = by_src("2001:db8::11");
    assert_eq!(e6.len(), 1);
    assert_eq!(e6[0]["dst"], "2001:db8::1");
    assert_eq!(e6[0]["len"], FRAME6);
    assert_eq!(e6[0]["entry"], "2001:db8::11");
    assert_eq!(summary(&ev), (8, 0, 0));
    assert!(
        !sampling_on(&lab),
        "sampling is off again after events exits"
    );

    // One in three per CPU.
    let ev = events_cmd(&lab, &["--sample", "3", "--duration", "3", "--json"]);
    sink.send_to(&lab, SocketAddr::new(ip("192.0.2.11"), 40004), dst4, 30);
    assert!(ev.wait_exit(BOUND, "(events)").success(), "{}", ev.tail(20));
    let n = ev.stdout_lines().len() as u64;
    assert!(
        (10..10 + ncpus).contains(&n),
        "1 in 3 of 30 per CPU: {n} events on {ncpus} CPUs"
    );
    assert_eq!(summary(&ev), (n, 0, 0));

    // A cap of 3 per second per CPU: the rest of a burst is counted as capped.
    let ev = events_cmd(&lab, &["--cap", "3", "--duration", "3", "--json"]);
    sink.send_to(&lab, SocketAddr::new(ip("192.0.2.11"), 40005), dst4, 10);
    assert!(ev.wait_exit(BOUND, "(events)").success(), "{}", ev.tail(20));
    let n = ev.stdout_lines().len() as u64;
    let (emitted, lost, capped) = summary(&ev);
    assert!((3..=3 * ncpus).contains(&n), "{n} events");
    assert_eq!((emitted, lost, capped), (n, 0, 10 - n));

    // Ctrl-C ends a stream and switches sampling off; text lines by default.
    let ev = events_cmd(&lab, &[]);
    sink.send_to(&lab, SocketAddr::new(ip("192.0.2.11"), 40006), dst4, 1);
    let t0 = Instant::now();
    while ev.stdout_lines().is_empty() {
        assert!(t0.elapsed() < BOUND, "no event line:\n{}", ev.tail(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = ev.signal_and_wait(libc::SIGINT, BOUND);
    assert!(st.success(), "{st}: {}", ev.tail(20));
    let line = &ev.stdout_lines()[0];
    println!("events (text): {line}");
    assert!(
        line.contains(
            " ef-rcv DROP drop_addr udp 192.0.2.11:40006 -> 192.0.2.1:5001 66 bytes entry "
        ),
        "{line}"
    );
    assert!(!sampling_on(&lab));
    drop(agent);
    assert!(lab.detach().status.success());
}
