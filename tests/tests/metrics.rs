//! The agent's Prometheus endpoint, scraped over HTTP while real traffic
//! crosses the filter.
//!
//! A config agent filters the receiving end of a veth pair with two file
//! feeds (one `drop`, one `monitor`) and one feed whose file is missing.
//! The test sends known numbers of UDP datagrams of known sizes from a
//! dropped, a monitored and an unlisted source, then scrapes
//! `http://127.0.0.1:PORT/metrics` inside the receiving namespace and checks
//! the counters against what it sent, and the feed and map gauges against
//! the config.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::netns::{self, Lab, RECEIVER_IF};
use edge_filter_tests::scrape::{self, samples, value};

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 66, 0, 1));
const BLOCKED4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 66, 0, 20));
const WATCHED4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 66, 0, 21));
const OTHER4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 66, 0, 22));
const PORT: u16 = 7409;
const METRICS_PORT: u16 = 19436;
/// Ethernet + IPv4 + UDP headers: what a datagram adds on the wire.
const HEADERS: u64 = 14 + 20 + 8;

fn get(lab: &Lab, path: &str) -> (String, String, String) {
    scrape::get(&lab.receiver, METRICS_PORT, path)
}

fn packets_key(reason: &str, verdict: &str) -> String {
    format!(
        "edge_filter_packets_total{{iface=\"{RECEIVER_IF}\",reason=\"{reason}\",verdict=\"{verdict}\"}}"
    )
}

fn bytes_key(reason: &str, verdict: &str) -> String {
    format!(
        "edge_filter_bytes_total{{iface=\"{RECEIVER_IF}\",reason=\"{reason}\",verdict=\"{verdict}\"}}"
    )
}

#[test]
fn metrics_scrape_matches_traffic() {
    if netns::skip_unless_root("metrics_scrape_matches_traffic") {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    for a in [BLOCKED4, WATCHED4, OTHER4] {
        lab.add_sender_addr(a, 24);
    }
    lab.receiver.ip(&["link", "set", "lo", "up"]);
    let blk = lab.write_file(
        "blk.txt",
        &format!("{BLOCKED4}\n# comment\nnot-an-address\n"),
    );
    let watch = lab.write_file("watch.txt", &format!("{WATCHED4}\n"));
    let missing = lab.dir.join("missing.txt");
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .table(&format!("[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\""))
        .file_feed("blk", &blk, "plain", "1s")
        .file_feed("watch", &watch, "plain", "1s")
        .line("action = \"monitor\"")
        .file_feed("gone", &missing, "plain", "1s")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));

    // Wait until both feeds are enforced (the scrape says so itself).
    let deadline = Instant::now() + Duration::from_secs(15);
    let map_key = format!("edge_filter_map_entries{{iface=\"{RECEIVER_IF}\",map=\"ADDR_V4\"}}");
    loop {
        let (_, _, body) = get(&lab, "/metrics");
        let s = samples(&body);
        if s.get(&map_key) == Some(&2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two feed entries never reached ADDR_V4:\n{body}\n{}",
            agent.tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (_, _, body0) = get(&lab, "/metrics");
    let before = samples(&body0);
    let count = |s: &BTreeMap<String, f64>, k: &str| s.get(k).copied().unwrap_or(0.0);

    // Known traffic: 7 dropped datagrams of 100 bytes, 5 monitored of 60,
    // 3 unlisted of 30.
    let sink = lab.udp_sink(SocketAddr::new(RECV4, PORT));
    let dst = SocketAddr::new(RECV4, PORT);
    lab.send_udp(
        SocketAddr::new(BLOCKED4, 40000),
        dst,
        &vec![vec![b'd'; 100]; 7],
    );
    lab.send_udp(
        SocketAddr::new(WATCHED4, 40001),
        dst,
        &vec![vec![b'm'; 60]; 5],
    );
    lab.send_udp(
        SocketAddr::new(OTHER4, 40002),
        dst,
        &vec![vec![b'o'; 30]; 3],
    );
    // The 8 that pass arrive; then every counter has moved.
    let mut buf = [0u8; 256];
    let mut got = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while got < 8 && Instant::now() < until {
        if sink.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    assert_eq!(got, 8, "monitored and unlisted datagrams must arrive");

    let (status, headers, body) = get(&lab, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let after = samples(&body);
    let delta = |k: String| value(&after, &k, &body) - count(&before, &k);
    assert_eq!(delta(packets_key("drop_addr", "drop")), 7.0, "{body}");
    assert_eq!(
        delta(bytes_key("drop_addr", "drop")),
        7.0 * (100.0 + HEADERS as f64)
    );
    assert_eq!(delta(packets_key("monitor_addr", "monitor")), 5.0);
    assert_eq!(
        delta(bytes_key("monitor_addr", "monitor")),
        5.0 * (60.0 + HEADERS as f64)
    );
    // Unlisted sources pass as no match; ARP may add to it, never remove.
    assert!(delta(packets_key("pass_no_match", "pass")) >= 3.0);

    // Per feed, from the per-entry kernel counters and provenance.
    let fp = |m: &str, f: &str, action: &str| {
        format!(
            "edge_filter_feed_{m}_total{{feed=\"{f}\",iface=\"{RECEIVER_IF}\",action=\"{action}\"}}"
        )
    };
    assert_eq!(delta(fp("packets", "blk", "drop")), 7.0, "{body}");
    assert_eq!(
        delta(fp("bytes", "blk", "drop")),
        7.0 * (100.0 + HEADERS as f64)
    );
    assert_eq!(delta(fp("packets", "watch", "monitor")), 5.0);
    assert!(!after.contains_key(&fp("packets", "blk", "monitor")));
    assert!(!after.contains_key(&fp("packets", "watch", "drop")));

    // Feeds: entries, health, the failing one, its failures counted.
    let feed = |name: &str, f: &str| format!("edge_filter_{name}{{feed=\"{f}\"}}");
    assert_eq!(value(&after, &feed("feed_entries", "blk"), &body), 1.0);
    assert_eq!(
        value(&after, &feed("feed_rejected_lines", "blk"), &body),
        1.0
    );
    assert_eq!(value(&after, &feed("feed_entries", "watch"), &body), 1.0);
    assert_eq!(value(&after, &feed("feed_up", "blk"), &body), 1.0);
    assert_eq!(value(&after, &feed("feed_up", "gone"), &body), 0.0);
    assert!(value(&after, &feed("feed_fetch_failures_total", "gone"), &body) >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let fresh = value(
        &after,
        &feed("feed_last_success_timestamp_seconds", "blk"),
        &body,
    );
    assert!(
        (now - fresh).abs() < 60.0,
        "last success {fresh} vs now {now}"
    );

    // Maps and the agent.
    assert_eq!(value(&after, &map_key, &body), 2.0);
    let cap =
        format!("edge_filter_map_capacity_entries{{iface=\"{RECEIVER_IF}\",map=\"ADDR_V4\"}}");
    // The current capacity tier's: datapath v2 sizes the maps for at
    // least twice the set (and grows them with it).
    let cap = value(&after, &cap, &body);
    assert!((4.0..1_048_576.0).contains(&cap), "ADDR_V4 capacity {cap}");
    assert_eq!(value(&after, "edge_filter_desired_entries", &body), 2.0);
    assert!(value(&after, "edge_filter_syncs_total", &body) >= 1.0);
    assert!(value(&after, "edge_filter_sync_duration_seconds_count", &body) >= 1.0);
    assert_eq!(value(&after, "edge_filter_drift_repairs_total", &body), 0.0);
    let attached = format!("edge_filter_attached{{iface=\"{RECEIVER_IF}\"}}");
    assert_eq!(value(&after, &attached, &body), 1.0);
    // Exact per-entry counters by default: every hit counts once.
    let every = format!("edge_filter_entry_counters_sample_every{{iface=\"{RECEIVER_IF}\"}}");
    assert_eq!(value(&after, &every, &body), 1.0);

    // Anything else is 404.
    let (status, _, _) = get(&lab, "/nope");
    assert!(status.contains("404"), "{status}");
    println!(
        "metrics: {} samples; drop_addr +7, monitor_addr +5 as sent\n{body}",
        after.len()
    );
}

/// The simple agent (`run --iface --blocklist`) serves the same kernel
/// families; an explicit address that is taken stops it at start.
#[test]
fn metrics_simple_agent() {
    if netns::skip_unless_root("metrics_simple_agent") {
        return;
    }
    const PORT2: u16 = 19437;
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(BLOCKED4, 24);
    lab.receiver.ip(&["link", "set", "lo", "up"]);
    let list = lab.write_file(
        "blocklist.txt",
        &format!("{BLOCKED4}\n10.66.9.0/24 monitor\n"),
    );
    let listen = format!("127.0.0.1:{PORT2}");
    let agent = lab.start_agent(&[
        "--blocklist",
        list.to_str().unwrap(),
        "--metrics-listen",
        &listen,
        "--entry-counters",
        "sampled",
    ]);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF} attached"));
    let (_, _, body0) = scrape::get(&lab.receiver, PORT2, "/metrics");
    let before = samples(&body0);
    let dst = SocketAddr::new(RECV4, PORT);
    lab.send_udp(
        SocketAddr::new(BLOCKED4, 40000),
        dst,
        &vec![vec![b'd'; 50]; 4],
    );
    // Dropped datagrams leave no trace at the receiver: poll the scrape.
    let key = packets_key("drop_addr", "drop");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (body, after) = loop {
        let (_, _, body) = scrape::get(&lab.receiver, PORT2, "/metrics");
        let after = samples(&body);
        if value(&after, &key, &body) - before.get(&key).copied().unwrap_or(0.0) >= 4.0 {
            break (body, after);
        }
        assert!(Instant::now() < deadline, "drops never counted:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        value(&after, &key, &body) - before.get(&key).copied().unwrap_or(0.0),
        4.0
    );
    let m = |map: &str| format!("edge_filter_map_entries{{iface=\"{RECEIVER_IF}\",map=\"{map}\"}}");
    assert_eq!(value(&after, &m("ADDR_V4"), &body), 1.0);
    assert_eq!(value(&after, &m("PREFIX_V4"), &body), 1.0);
    assert_eq!(value(&after, "edge_filter_desired_entries", &body), 2.0);
    // Sampled per-entry counters, said on the scrape (the verdict
    // counters above stayed exact).
    let every = format!("edge_filter_entry_counters_sample_every{{iface=\"{RECEIVER_IF}\"}}");
    assert_eq!(
        value(&after, &every, &body),
        f64::from(edge_filter_common::ENTRY_SAMPLE_EVERY)
    );

    // A second agent (on other pins: the same ones are refused by the
    // one-agent-per-interface lock first) asking for the same, taken,
    // address refuses to start, before it touches the kernel.
    let other_pins = std::path::PathBuf::from(format!("{}-other", lab.bpffs.display()));
    let other = lab
        .edge_filter_cmd()
        .args(["run", "--iface", RECEIVER_IF, "--blocklist"])
        .arg(&list)
        .args(["--metrics-listen", &listen, "--bpffs"])
        .arg(&other_pins)
        .output()
        .expect("run edge-filter");
    assert!(!other_pins.exists(), "pins made before the port was bound");
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success(),
        "a taken explicit address must be fatal: {err}"
    );
    assert!(
        err.contains(&format!("binding the metrics endpoint {listen}")),
        "the error names the address: {err}"
    );
    assert!(
        !err.contains("adopted") && !err.contains("reloaded"),
        "refused before adopting the pins: {err}"
    );
    assert!(agent.is_running(), "the first agent keeps running");
}
