//! The operator's commands against a real attached filter and real traffic
//! in network namespaces ([`Lab`]): `status`, `stats --watch`, `explain`,
//! and the generated completions and man page.
//!
//! - `operator_status_native_mode_and_occupancy` / `..._skb_...`: a
//!   blocklist agent in each attach mode; `status --json` names the
//!   interface, the mode and program id the kernel reports (checked against
//!   `ip link`), and per map exactly the entries loaded against the
//!   capacities the agent was started with; an edit of the blocklist shows
//!   up in the occupancy.
//! - `operator_stats_watch_rates_per_window`: `stats --watch 1 --json`
//!   prints one sample per second; bursts sent right after a sample are
//!   counted exactly in the next sample's deltas (drop and monitor reasons,
//!   packets and bytes), a quiet window shows zero, and the rates are the
//!   deltas over the measured interval. The table mode redraws and exits
//!   cleanly on Ctrl-C (SIGINT).
//! - `operator_explain_and_status_with_feeds`: a config agent with two file
//!   feeds (JSON Lines with indicator ids, and a plain list asserting the
//!   same address). `explain --json` names the deciding entry, both feeds
//!   and the indicator for a blocked address, the allowlist net and its
//!   source for an allowlisted one, "no match" for an unknown one, a
//!   destination-port entry (decided, and conditional when the port is
//!   left open), and the kernel agreeing; real datagrams from each address
//!   get exactly that verdict (counters). A blocklist the kernel does not
//!   enforce is reported as a mismatch. `status --config` shows each feed's
//!   health (entries, rejected lines, then the error of a vanished file)
//!   and the agent up, then down once stopped.
//! - `operator_completions_and_man`: bash, zsh and fish completions and the
//!   man pages are generated and name the subcommands (no root needed).
//!
//! Root only for the kernel tests (`skipping: needs root` otherwise). Build
//! the binary first, in the same profile:
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test operator -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter_common as abi;
use edge_filter_tests::cli::stdout_of;
use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::literal::{ip, net, path_str};
use edge_filter_tests::netns::{self, Agent, Lab, RECEIVER_IF, Stats};
use edge_filter_tests::traffic::{PAYLOAD, Probe};
use edge_filter_tests::wait::poll;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Addresses (documentation ranges, only inside the test namespaces).

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// Source of the end-of-burst markers: never in any list.
const MARK4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
const PORT: u16 = 5001;
/// The destination port of the `dst` port entries.
const SVC_PORT: u16 = 7001;
/// Bytes a test datagram is counted with: Ethernet + IPv4 + UDP + payload.
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
/// Bound for an agent's change to show up.
const BOUND: Duration = Duration::from_secs(10);

/// Packets of `reason` between two `stats --json` reads.
fn delta(before: &Stats, after: &Stats, reason: &str) -> u64 {
    after.packets(reason) - before.packets(reason)
}

/// The map row `name` of an interface in `status --json`.
fn map_row<'a>(iface: &'a Value, name: &str) -> &'a Value {
    iface["maps"]
        .as_array()
        .expect("maps array")
        .iter()
        .find(|m| m["map"] == name)
        .unwrap_or_else(|| panic!("no map {name} in {iface}"))
}

fn status_iface(status: &Value) -> &Value {
    status["interfaces"]
        .as_array()
        .expect("interfaces array")
        .iter()
        .find(|i| i["iface"] == RECEIVER_IF)
        .unwrap_or_else(|| panic!("status has no {RECEIVER_IF}: {status:#}"))
}

// ---------------------------------------------------------------------------
// status: mode, program, occupancy.

const STATUS_BLOCKLIST: &str = "\
# operator test blocklist
192.0.2.11
192.0.2.12
192.0.2.13
198.51.100.0/24
203.0.113.0/25 monitor
tcp 192.0.2.14:443
udp 198.51.100.0/24:53 dst
2001:db8:1::11
2001:db8:bad::/48
tcp [2001:db8:1::12]:22 dst
this line is rejected
";
const STATUS_ALLOWLIST: &str = "192.0.2.15\n192.0.2.128/25\n2001:db8:1::15\n";

/// Expected entries per map for [`STATUS_BLOCKLIST`] and [`STATUS_ALLOWLIST`].
const STATUS_COUNTS: [(&str, u64); 10] = [
    (abi::MAP_ALLOW_V4, 2),
    (abi::MAP_ALLOW_V6, 1),
    (abi::MAP_ADDR_V4, 3),
    (abi::MAP_ADDR_V6, 1),
    (abi::MAP_PREFIX_V4, 2),
    (abi::MAP_PREFIX_V6, 1),
    (abi::MAP_PORT_V4, 1),
    (abi::MAP_PORT_V6, 1),
    (abi::MAP_PPREFIX_V4, 1),
    (abi::MAP_PPREFIX_V6, 0),
];

fn status_case(mode: &str, caps: Option<(u32, u32, u32, u32, u32)>) {
    let t0 = Instant::now();
    let lab = Lab::create();
    let bl = lab.write_file("blocklist.txt", STATUS_BLOCKLIST);
    let al = lab.write_file("allowlist.txt", STATUS_ALLOWLIST);
    let mut args: Vec<String> = [
        "--blocklist",
        path_str(&bl),
        "--allowlist",
        path_str(&al),
        "--mode",
        mode,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((a4, a6, p, port, allow)) = caps {
        for (flag, v) in [
            ("--max-addr-v4", a4),
            ("--max-addr-v6", a6),
            ("--max-prefixes", p),
            ("--max-ports", port),
            ("--max-allow", allow),
        ] {
            args.push(flag.into());
            args.push(v.to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = lab.start_agent(&args);
    agent.wait_ready("attached");
    // Datapath v2 sizes its maps from the set (capacity tiers): the
    // `--max-*` options of v1 are ignored, with a warning naming them.
    if caps.is_some() {
        assert!(
            agent.wait_stderr("map capacities are ignored", Duration::from_secs(5))
                && agent.stderr_text().contains("addr_v4 = 1000"),
            "no warning that the capacities are ignored:\n{}",
            agent.stderr_text()
        );
    }

    let status = lab.status_json(&[]).0;
    let i = status_iface(&status);
    let kernel_mode = if lab.receiver_link().contains("xdpgeneric") {
        "skb"
    } else {
        "native"
    };
    assert_eq!(kernel_mode, mode, "ip link disagrees with --mode {mode}");
    assert_eq!(i["attached"], true, "{i:#}");
    assert_eq!(i["mode"], mode, "{i:#}");
    let prog = lab.xdp_prog_id().expect("ip link shows the program id");
    assert_eq!(i["program_id"], u64::from(prog), "{i:#}");
    assert!(i["link_id"].as_u64().is_some_and(|l| l > 0), "{i:#}");
    assert_eq!(i["malformed"], "pass", "{i:#}");
    assert!(i.get("error").is_none(), "{i:#}");
    let mut caps_seen = BTreeMap::new();
    for (map, n) in STATUS_COUNTS {
        let row = map_row(i, map);
        assert_eq!(row["entries"], n, "{map}: {row}");
        // The current tier's capacity: room for at least twice the set.
        let cap = row["capacity"].as_u64().unwrap_or(0);
        assert!(cap >= 2 * n.max(1), "{map}: {row}");
        caps_seen.insert(map, cap);
    }
    assert_eq!(i["entries"], 10, "{i:#}");
    assert_eq!(i["allowlisted"], 3, "{i:#}");
    assert!(status.get("agent").is_none() && status.get("feeds").is_none());

    // The table says the same.
    let text = lab.status(&[]).0;
    let row = text
        .lines()
        .find(|l| l.contains(RECEIVER_IF) && l.contains(mode))
        .unwrap_or_else(|| panic!("no {RECEIVER_IF} {mode} row:\n{text}"));
    assert!(row.contains(&prog.to_string()), "{row}\n{text}");
    let addr_row = text
        .lines()
        .find(|l| l.contains(" ADDR_V4 "))
        .unwrap_or_else(|| panic!("no ADDR_V4 row:\n{text}"));
    let cells: Vec<&str> = addr_row
        .split(|c: char| c.is_whitespace() || c == '│')
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells[..3],
        ["ADDR_V4", "3", &caps_seen[abi::MAP_ADDR_V4].to_string()],
        "{addr_row}"
    );

    // An edit shows up in the occupancy.
    lab.replace_file(
        "blocklist.txt",
        &format!("{STATUS_BLOCKLIST}192.0.2.16\n192.0.2.17\n"),
    );
    poll("two more ADDR_V4 entries", BOUND, &agent, || {
        let s = lab.status_json(&[]).0;
        (map_row(status_iface(&s), abi::MAP_ADDR_V4)["entries"] == 5).then_some(())
    });
    println!("status ({mode}):\n{text}");
    println!("status ({mode}): done in {:.1?}", t0.elapsed());
}

#[test]
fn operator_status_native_mode_and_occupancy() {
    if netns::skip_unless_root("operator_status_native_mode_and_occupancy") {
        return;
    }
    status_case("native", None);
}

#[test]
fn operator_status_skb_mode_and_capacities() {
    if netns::skip_unless_root("operator_status_skb_mode_and_capacities") {
        return;
    }
    status_case("skb", Some((1000, 200, 500, 300, 50)));
}

// ---------------------------------------------------------------------------
// stats --watch.

/// One sample of `stats --watch --json` for the receiver.
struct Sample {
    raw: Value,
}

impl Sample {
    fn parse(line: &str) -> Sample {
        let raw: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        Sample { raw }
    }

    fn iface(&self) -> &Value {
        self.raw["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["iface"] == RECEIVER_IF))
            .unwrap_or_else(|| panic!("no {RECEIVER_IF} in sample {}", self.raw))
    }

    fn row(&self, reason: &str) -> &Value {
        self.iface()["counters"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["reason"] == reason))
            .unwrap_or_else(|| panic!("no {reason} in sample {}", self.raw))
    }

    fn interval(&self) -> f64 {
        self.raw["interval_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("no interval_s in {}", self.raw))
    }
}

/// Packets per reason in one window.
type Window = BTreeMap<&'static str, u64>;

const WATCHED: [&str; 3] = ["drop_addr", "drop_addr_port", "monitor_addr"];

/// Wait until the watcher has printed more than `n` lines; returns them.
fn lines_after(watcher: &Agent, n: usize) -> Vec<String> {
    poll(
        "the next stats sample",
        Duration::from_secs(5),
        watcher,
        || {
            let l = watcher.stdout_lines();
            (l.len() > n).then_some(l)
        },
    )
}

#[test]
fn operator_stats_watch_rates_per_window() {
    if netns::skip_unless_root("operator_stats_watch_rates_per_window") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    let (drop4, port4, mon4) = (ip("192.0.2.11"), ip("192.0.2.13"), ip("192.0.2.14"));
    for a in [MARK4, drop4, port4, mon4] {
        lab.add_sender_addr(a, 24);
    }
    let bl = lab.write_file(
        "blocklist.txt",
        "192.0.2.11\nudp 192.0.2.13:5353\n192.0.2.14 monitor\n",
    );
    let agent = lab.start_agent(&["--blocklist", path_str(&bl)]);
    agent.wait_ready("attached");
    let sink = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    let before = lab.stats();

    let mut cmd = lab.edge_filter_cmd();
    cmd.args([
        "stats",
        "--watch",
        "1",
        "--json",
        "--iface",
        RECEIVER_IF,
        "--bpffs",
    ])
    .arg(&lab.bpffs);
    let watcher = Agent::spawn(cmd, RECEIVER_IF);
    let first = Sample::parse(&lines_after(&watcher, 0)[0]);
    assert_eq!(first.raw["sample"], 0);
    assert!(
        first.raw.get("interval_s").is_none()
            && first.row("drop_addr").get("packets_delta").is_none(),
        "the first sample has no rates: {}",
        first.raw
    );

    // Bursts (drop_addr, drop_addr_port, monitor_addr), each sent right
    // after a sample so it falls in the window the next sample closes.
    let plan: [Window; 3] = [
        WATCHED.into_iter().zip([5, 3, 4]).collect(),
        WATCHED.into_iter().zip([0, 0, 0]).collect(),
        WATCHED.into_iter().zip([9, 0, 2]).collect(),
    ];
    let mut sent: Window = WATCHED.into_iter().map(|r| (r, 0)).collect();
    let mut checked = 0;
    let mut straddled = 0;
    let mut seen = 1;
    let mut prev = first;
    while checked < plan.len() {
        let want = &plan[checked];
        // Send at once after the latest sample.
        let start_lines = watcher.stdout_lines().len();
        if start_lines != seen {
            // Samples arrived meanwhile: catch up first.
            prev = Sample::parse(&watcher.stdout_lines()[start_lines - 1]);
            seen = start_lines;
        }
        let delivered_drop = sink
            .send(
                &lab,
                SocketAddr::new(drop4, 40000),
                want["drop_addr"] as usize,
            )
            .arrived();
        let delivered_port = sink
            .send(
                &lab,
                SocketAddr::new(port4, 5353),
                want["drop_addr_port"] as usize,
            )
            .arrived();
        let delivered_mon = sink
            .send(
                &lab,
                SocketAddr::new(mon4, 40000),
                want["monitor_addr"] as usize,
            )
            .arrived();
        assert_eq!(
            (delivered_drop, delivered_port),
            (0, 0),
            "dropped sources got through"
        );
        assert_eq!(
            delivered_mon, want["monitor_addr"] as usize,
            "monitored datagrams lost"
        );
        for (r, n) in want {
            *sent.get_mut(r).unwrap() += n;
        }
        let mid_burst = watcher.stdout_lines().len() != seen;
        let lines = lines_after(&watcher, seen);
        let next = Sample::parse(&lines[seen]);
        seen += 1;
        if mid_burst {
            // A sample landed while the burst was being sent: the burst is
            // split over two windows. Let the second window close, then
            // send this window's burst again.
            straddled += 1;
            assert!(straddled < 3, "samples keep landing mid-burst");
            let lines = lines_after(&watcher, seen);
            prev = Sample::parse(&lines[seen]);
            seen += 1;
            continue;
        }
        let secs = next.interval();
        assert!((0.8..2.0).contains(&secs), "interval {secs}: {}", next.raw);
        let mut dropped_rate = 0.0;
        for reason in WATCHED {
            let row = next.row(reason);
            let n = want[reason];
            let got = row["packets_delta"].as_u64().expect("packets_delta");
            assert_eq!(got, n, "window {checked}: {reason} delta: {row}");
            assert_eq!(
                row["bytes_delta"].as_u64(),
                Some(n * FRAME),
                "{reason}: {row}"
            );
            let cum =
                row["packets"].as_u64().unwrap() - prev.row(reason)["packets"].as_u64().unwrap();
            assert_eq!(
                cum, n,
                "{reason}: cumulative packets disagree with the delta"
            );
            let rate = row["packets_per_s"].as_f64().expect("packets_per_s");
            let expect = (n as f64 / secs * 1000.0).round() / 1000.0;
            assert!(
                (rate - expect).abs() < 1e-9,
                "{reason}: rate {rate}, expected {expect} ({n} in {secs}s)"
            );
            if reason.starts_with("drop_") {
                dropped_rate += rate;
            }
        }
        let rates = &next.iface()["rates"];
        assert!(
            (rates["dropped_per_s"].as_f64().unwrap() - dropped_rate).abs() < 1e-6,
            "verdict rates: {rates}"
        );
        assert!(
            (rates["monitored_per_s"].as_f64().unwrap()
                - next.row("monitor_addr")["packets_per_s"].as_f64().unwrap())
            .abs()
                < 1e-6,
            "verdict rates: {rates}"
        );
        println!(
            "watch window {checked}: {} in {secs:.3}s -> {}",
            WATCHED
                .iter()
                .map(|r| format!("{r}={}", want[r]))
                .collect::<Vec<_>>()
                .join(" "),
            WATCHED
                .iter()
                .map(|r| format!("{r}={}/s", next.row(r)["packets_per_s"]))
                .collect::<Vec<_>>()
                .join(" ")
        );
        prev = next;
        checked += 1;
    }
    // Everything sent, and nothing else, in the drop and monitor reasons.
    let after = lab.stats();
    for r in WATCHED {
        assert_eq!(
            delta(&before, &after, r),
            sent[r],
            "{r}: {}",
            after.summary()
        );
    }
    let st = watcher.signal_and_wait(libc::SIGINT, Duration::from_secs(5));
    assert!(
        st.success(),
        "stats --watch exited {st} on SIGINT\n{}",
        watcher.tail(5)
    );

    // Table mode: redrawn every sample, rates shown, Ctrl-C exits with 0.
    let mut cmd = lab.edge_filter_cmd();
    cmd.args(["stats", "--watch", "0.3", "--iface", RECEIVER_IF, "--bpffs"])
        .arg(&lab.bpffs);
    let table = Agent::spawn(cmd, RECEIVER_IF);
    poll("two table samples", Duration::from_secs(5), &table, || {
        let text = table.stdout_lines().join("\n");
        (text.matches("Ctrl-C to exit").count() >= 2).then_some(())
    });
    let st = table.signal_and_wait(libc::SIGINT, Duration::from_secs(5));
    assert!(st.success(), "stats --watch (table) exited {st} on SIGINT");
    let text = table.stdout_lines().join("\n");
    assert!(
        text.contains("packets/s") && text.contains("drop_addr"),
        "{text}"
    );
    // Pass counts move with background traffic; drop and monitor totals
    // only with ours.
    let totals = format!(
        ", {} dropped, {} monitored",
        sent["drop_addr"] + sent["drop_addr_port"],
        sent["monitor_addr"]
    );
    assert!(text.contains(&totals), "no `{totals}` in:\n{text}");
    println!("watch: done in {:.1?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// explain and status with a config agent.

const SOC: &str = r#"{"net":"192.0.2.20","indicator":"SOC-20","confidence":70,"description":"scanner","expires":"2099-01-01T00:00:00Z"}
{"net":"192.0.2.21","action":"monitor","indicator":"SOC-21"}
{"net":"192.0.2.22","proto":"udp","port":7001,"side":"dst","indicator":"SOC-22"}
{"net":"192.0.2.30","indicator":"SOC-30"}
"#;
const DROPLIST: &str = "# drop list\n192.0.2.20\n203.0.113.0/24\nnot-an-address\n";

fn feeds_set() -> EntrySet {
    let e = |s: &str, a| Entry::new(net(s), None, a);
    let mut entries = vec![
        e("192.0.2.20", Action::Drop),
        e("192.0.2.21", Action::Monitor),
        Entry::new(
            net("192.0.2.22"),
            Some(PortMatch {
                proto: Proto::Udp,
                port: SVC_PORT,
                side: Side::Dst,
            }),
            Action::Drop,
        ),
        e("192.0.2.30", Action::Drop),
        e("203.0.113.0/24", Action::Drop),
    ];
    entries.sort();
    EntrySet {
        allow: vec![net("192.0.2.30")],
        entries,
    }
}

fn provenance<'a>(entry: &'a Value, feed: &str) -> &'a Value {
    entry["provenance"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["feed"] == feed))
        .unwrap_or_else(|| panic!("no provenance from feed {feed}: {entry:#}"))
}

/// The one kernel comparison (for the receiver) of an explanation.
fn kernel_of(ex: &Value) -> &Value {
    let k = ex["kernel"].as_array().expect("kernel array");
    assert_eq!(k.len(), 1, "one attached interface: {ex:#}");
    assert_eq!(k[0]["iface"], RECEIVER_IF);
    assert_eq!(k[0]["checked"], true, "{ex:#}");
    &k[0]
}

fn assert_kernel_agrees(ex: &Value) {
    let k = kernel_of(ex);
    assert_eq!(k["agrees"], true, "kernel disagrees: {k:#}");
    assert_eq!(k["reason"], ex["reason"], "{k:#}");
    assert_eq!(k["mismatches"].as_array().map(Vec::len), Some(0), "{k:#}");
}

#[test]
fn operator_explain_and_status_with_feeds() {
    if netns::skip_unless_root("operator_explain_and_status_with_feeds") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    let addrs = [
        "192.0.2.20",
        "192.0.2.21",
        "192.0.2.22",
        "192.0.2.30",
        "192.0.2.40",
    ];
    lab.add_sender_addr(MARK4, 24);
    for a in addrs {
        lab.add_sender_addr(ip(a), 24);
    }
    let soc = lab.write_file("soc.jsonl", SOC);
    let droplist = lab.write_file("droplist.txt", DROPLIST);
    let cfg = AgentConfig::soc_and_droplist(&lab, &soc, &droplist)
        .table("[allowlist]\nentries = [\"192.0.2.30\"]")
        .write(&lab);
    let cfg_s = path_str(&cfg).to_string();
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let want = feeds_set();
    poll("both feeds enforced", BOUND, &agent, || {
        (lab.try_enforced().ok().as_ref() == Some(&want)).then_some(())
    });
    let sink = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    let svc = Probe::new(&lab, SocketAddr::new(RECV4, SVC_PORT), MARK4);
    const N: usize = 6;

    // A blocked address asserted by both feeds.
    let ex = lab.ef_json(&["explain", "192.0.2.20", "--config", &cfg_s]);
    assert_eq!(ex["source"], "config");
    assert_eq!(ex["verdict"], "drop", "{ex:#}");
    assert_eq!(ex["reason"], "drop_addr");
    assert_eq!(ex["decision"], "entry");
    let d = &ex["deciding"];
    assert_eq!(d["entry"], "192.0.2.20", "{ex:#}");
    assert_eq!(d["kind"], "addr");
    assert_eq!(d["action"], "drop");
    assert_eq!(d["provenance"].as_array().map(Vec::len), Some(2), "{d:#}");
    let p = provenance(d, "soc");
    assert_eq!(p["indicator"], "SOC-20");
    assert_eq!(p["confidence"], 70);
    assert_eq!(p["description"], "scanner");
    assert_eq!(p["expires"], "2099-01-01T00:00:00Z");
    assert_eq!(p["action"], "drop");
    let p = provenance(d, "droplist");
    assert_eq!(p["indicator"], Value::Null);
    assert_eq!(ex["matching"].as_array().map(Vec::len), Some(1));
    assert_eq!(ex["matching"][0]["deciding"], true);
    assert_kernel_agrees(&ex);
    assert_eq!(kernel_of(&ex)["deciding"], "192.0.2.20");
    let text = lab.ef_ok(&["explain", "192.0.2.20", "--config", &cfg_s]);
    assert!(
        text.contains("DROP (drop_addr): decided by 192.0.2.20 (addr, drop) from feed soc (indicator SOC-20), feed droplist")
            && text.contains("kernel ef-rcv: agrees (drop_addr by 192.0.2.20)"),
        "{text}"
    );
    println!("explain (blocked):\n{text}");

    // A destination-port entry: decided with the port, conditional without.
    let ex = lab.ef_json(&[
        "explain",
        "192.0.2.22",
        "40000",
        "--proto",
        "udp",
        "--dst-port",
        "7001",
        "--config",
        &cfg_s,
    ]);
    assert_eq!(
        (ex["verdict"].as_str(), ex["reason"].as_str()),
        (Some("drop"), Some("drop_addr_port")),
        "{ex:#}"
    );
    assert_eq!(ex["deciding"]["entry"], "udp 192.0.2.22:7001 dst");
    assert_eq!(ex["deciding"]["side"], "dst");
    assert_eq!(ex["deciding"]["port"], 7001);
    assert_eq!(provenance(&ex["deciding"], "soc")["indicator"], "SOC-22");
    assert_kernel_agrees(&ex);
    let ex = lab.ef_json(&[
        "explain",
        "192.0.2.22",
        "40000",
        "--proto",
        "udp",
        "--config",
        &cfg_s,
    ]);
    assert_eq!(ex["decision"], "no_match", "{ex:#}");
    assert_eq!(ex["conditional"][0]["entry"], "udp 192.0.2.22:7001 dst");
    assert_eq!(
        ex["conditional"][0]["condition"],
        "if it is udp with destination port 7001"
    );
    assert_kernel_agrees(&ex);

    // A monitored address.
    let ex = lab.ef_json(&["explain", "192.0.2.21", "--config", &cfg_s]);
    assert_eq!(
        (ex["verdict"].as_str(), ex["reason"].as_str()),
        (Some("monitor"), Some("monitor_addr")),
        "{ex:#}"
    );
    assert_eq!(provenance(&ex["deciding"], "soc")["indicator"], "SOC-21");
    assert_kernel_agrees(&ex);

    // An allowlisted address (also asserted by a feed).
    let ex = lab.ef_json(&["explain", "192.0.2.30", "--config", &cfg_s]);
    assert_eq!(ex["verdict"], "pass", "{ex:#}");
    assert_eq!(ex["reason"], "pass_allowlist");
    assert_eq!(ex["decision"], "allowlisted");
    assert_eq!(ex["allowlisted_by"]["net"], "192.0.2.30/32");
    assert_eq!(
        ex["allowlisted_by"]["sources"],
        serde_json::json!(["inline"])
    );
    assert_eq!(ex["deciding"], Value::Null);
    assert_eq!(ex["matching"][0]["entry"], "192.0.2.30");
    assert_eq!(ex["matching"][0]["deciding"], false);
    assert_eq!(provenance(&ex["matching"][0], "soc")["indicator"], "SOC-30");
    assert_kernel_agrees(&ex);
    assert_eq!(kernel_of(&ex)["allowlisted_by"], "192.0.2.30/32");
    let text = lab.ef_ok(&["explain", "192.0.2.30", "--config", &cfg_s]);
    assert!(
        text.contains("PASS (pass_allowlist): 192.0.2.30 is allowlisted by 192.0.2.30/32 (inline)"),
        "{text}"
    );
    println!("explain (allowlisted):\n{text}");

    // An unknown address.
    let ex = lab.ef_json(&["explain", "192.0.2.40", "--config", &cfg_s]);
    assert_eq!(
        (
            ex["verdict"].as_str(),
            ex["reason"].as_str(),
            ex["decision"].as_str()
        ),
        (Some("pass"), Some("pass_no_match"), Some("no_match")),
        "{ex:#}"
    );
    assert_eq!(ex["matching"].as_array().map(Vec::len), Some(0));
    assert_eq!(ex["conditional"].as_array().map(Vec::len), Some(0));
    assert_eq!(ex["allowlist"].as_array().map(Vec::len), Some(0));
    assert_kernel_agrees(&ex);
    let text = lab.ef_ok(&["explain", "192.0.2.40", "--config", &cfg_s]);
    assert!(
        text.contains("PASS (pass_no_match): no entry matches 192.0.2.40"),
        "{text}"
    );

    // Real datagrams get exactly those verdicts.
    let before = lab.stats();
    let src = |a: &str, port: u16| SocketAddr::new(ip(a), port);
    assert_eq!(sink.send(&lab, src("192.0.2.20", 40000), N).arrived(), 0);
    assert_eq!(svc.send(&lab, src("192.0.2.22", 40000), N).arrived(), 0);
    assert_eq!(sink.send(&lab, src("192.0.2.22", 40000), N).arrived(), N);
    assert_eq!(sink.send(&lab, src("192.0.2.21", 40000), N).arrived(), N);
    assert_eq!(sink.send(&lab, src("192.0.2.30", 40000), N).arrived(), N);
    assert_eq!(sink.send(&lab, src("192.0.2.40", 40000), N).arrived(), N);
    let after = lab.stats();
    for (reason, n) in [
        ("drop_addr", N),
        ("drop_addr_port", N),
        ("monitor_addr", N),
        ("pass_allowlist", N),
    ] {
        assert_eq!(
            delta(&before, &after, reason),
            n as u64,
            "{reason}: {}",
            after.summary()
        );
        assert_eq!(
            after.get(reason).bytes - before.get(reason).bytes,
            n as u64 * FRAME,
            "{reason} bytes"
        );
    }
    // 192.0.2.22 to the open port, 192.0.2.40, and the markers.
    assert!(
        delta(&before, &after, "pass_no_match") >= 2 * N as u64 + 6,
        "{}",
        after.summary()
    );

    // Lists the kernel does not enforce: every difference is named.
    let other = lab.write_file("other.txt", "192.0.2.40\n");
    let ex = lab.ef_json(&["explain", "192.0.2.40", "--blocklist", path_str(&other)]);
    assert_eq!(ex["source"], "files");
    assert_eq!(
        ex["deciding"]["provenance"][0]["location"],
        format!("{}:1", other.display())
    );
    let k = kernel_of(&ex);
    assert_eq!(k["agrees"], false, "{k:#}");
    assert_eq!(k["reason"], "pass_no_match");
    let mismatches: Vec<&str> = k["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mismatches.contains(&"kernel does not hold the deciding entry 192.0.2.40 (drop)"),
        "{mismatches:?}"
    );
    let ex = lab.ef_json(&["explain", "192.0.2.20", "--blocklist", path_str(&other)]);
    let mismatches: Vec<&str> = kernel_of(&ex)["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mismatches.contains(&"kernel holds 192.0.2.20 (drop), which the given lists do not"),
        "{mismatches:?}"
    );
    let text = lab.ef_ok(&["explain", "192.0.2.40", "--blocklist", path_str(&other)]);
    assert!(
        text.contains("kernel ef-rcv: MISMATCH")
            && text.contains("  - kernel does not hold the deciding entry 192.0.2.40 (drop)"),
        "{text}"
    );

    // status --config: feeds healthy, the agent up.
    let st = lab.status_json(&["--config", &cfg_s]).0;
    let i = status_iface(&st);
    assert_eq!(i["configured"], true);
    assert_eq!(i["program_id"], u64::from(lab.xdp_prog_id().unwrap()));
    assert_eq!(i["mode"], "native", "{i:#}");
    for (map, n) in [
        (abi::MAP_ADDR_V4, 3),
        (abi::MAP_PREFIX_V4, 1),
        (abi::MAP_PORT_V4, 1),
        (abi::MAP_ALLOW_V4, 1),
        (abi::MAP_PPREFIX_V4, 0),
    ] {
        assert_eq!(map_row(i, map)["entries"], n, "{map}");
    }
    let a = &st["agent"];
    assert_eq!(a["state"], "up", "{a:#}");
    assert_eq!(a["up"], true);
    assert_eq!(a["pid"], agent.pid());
    assert_eq!(a["entries"], 5);
    assert_eq!(a["allowlisted"], 1);
    assert!(
        a["updated_age_s"].as_f64().is_some_and(|s| s < 5.0),
        "{a:#}"
    );
    let feed = |st: &Value, name: &str| -> Value {
        st["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no feed {name}: {st:#}"))
    };
    let f = feed(&st, "soc");
    assert_eq!(f["state"], "ok", "{f:#}");
    assert_eq!(f["entries"], 4);
    assert_eq!(f["rejected_lines"], 0);
    assert!(
        f["age_s"].as_f64().is_some_and(|s| (0.0..5.0).contains(&s)),
        "{f:#}"
    );
    assert_eq!(f["last_error"], Value::Null);
    assert_eq!(f["held"], Value::Null);
    let f = feed(&st, "droplist");
    assert_eq!(f["state"], "ok", "{f:#}");
    assert_eq!(f["entries"], 2);
    assert_eq!(f["rejected_lines"], 1);
    let text = lab.status(&["--config", &cfg_s]).0;
    assert!(text.contains("agent: up (pid "), "{text}");
    println!("status --config:\n{text}");

    // A vanished feed file: the feed is failing, its entries stay.
    std::fs::remove_file(&droplist).unwrap();
    let f = poll("droplist failing", BOUND, &agent, || {
        let f = feed(&lab.status_json(&["--config", &cfg_s]).0, "droplist");
        (f["state"] == "failing").then_some(f)
    });
    assert!(
        f["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("droplist.txt")),
        "{f:#}"
    );
    assert_eq!(f["entries"], 2);
    let text = lab.status(&["--config", &cfg_s]).0;
    assert!(
        text.lines()
            .any(|l| l.contains("droplist") && l.contains("failing")),
        "{text}"
    );

    // The agent stopped: down.
    let code = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(code.success(), "agent exited {code}");
    let st = lab.status_json(&["--config", &cfg_s]).0;
    assert_eq!(st["agent"]["state"], "down", "{:#}", st["agent"]);
    assert_eq!(st["agent"]["up"], false);
    assert!(
        st["agent"]["detail"]
            .as_str()
            .unwrap()
            .contains("is not running"),
        "{:#}",
        st["agent"]
    );
    // The filter stays attached and explain still works from the copies.
    assert_eq!(status_iface(&st)["attached"], true);
    let ex = lab.ef_json(&["explain", "192.0.2.20", "--config", &cfg_s]);
    assert_eq!(ex["reason"], "drop_addr");
    assert_kernel_agrees(&ex);
    println!("explain/status with feeds: done in {:.1?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// Completions and man pages (no root needed).

#[test]
fn operator_completions_and_man() {
    let bin = netns::edge_filter_bin();
    let run = |args: &[&str]| -> String { stdout_of(std::process::Command::new(&bin).args(args)) };
    let subcommands = [
        "run",
        "stats",
        "status",
        "explain",
        "detach",
        "check-config",
    ];
    for (shell, marker) in [
        ("bash", "complete -F _edge__filter"),
        ("zsh", "#compdef edge-filter"),
        ("fish", "complete -c edge-filter"),
    ] {
        let s = run(&["completions", shell]);
        assert!(s.contains(marker), "{shell}: no `{marker}`");
        for sub in subcommands {
            assert!(s.contains(sub), "{shell} completions lack {sub}");
        }
        let (watch, dst) = if shell == "fish" {
            ("-l watch", "-l dst-port")
        } else {
            ("--watch", "--dst-port")
        };
        assert!(
            s.contains(watch) && s.contains(dst),
            "{shell}: options missing"
        );
    }
    // Bash really completes subcommand options and values (the script is
    // patched for clap-rs/clap#6421; without that nothing completes after
    // a subcommand of a hyphenated binary).
    if std::path::Path::new("/bin/bash").exists() {
        let dir = std::env::temp_dir().join(format!("ef-compl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("edge-filter.bash");
        std::fs::write(&script, run(&["completions", "bash"])).unwrap();
        let complete = |words: &[&str]| -> String {
            // _edge__filter CMD CUR PREV with COMP_WORDS/COMP_CWORD set.
            let cword = words.len() - 1;
            let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
            let prog = format!(
                "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; _edge__filter edge-filter '{}' '{}'; echo \"${{COMPREPLY[*]}}\"",
                script.display(),
                quoted.join(" "),
                words[cword],
                words[cword - 1]
            );
            let out = std::process::Command::new("/bin/bash")
                .args(["-c", &prog])
                .output()
                .expect("run bash");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(complete(&["edge-filter", "sta"]), "stats status");
        assert_eq!(complete(&["edge-filter", "stats", "--wa"]), "--watch");
        assert_eq!(
            complete(&["edge-filter", "explain", "192.0.2.1", "--pr"]),
            "--proto"
        );
        assert_eq!(
            complete(&["edge-filter", "explain", "192.0.2.1", "--proto", ""]),
            "tcp udp"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let page = run(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH edge-filter 1"),
        "{page}"
    );
    assert!(page.contains(".TH edge-filter 1"), "{page}");
    for sub in subcommands {
        assert!(
            page.contains(&sub.replace('-', "\\-")),
            "man page lacks {sub}"
        );
    }
    let page = run(&["man", "explain"]);
    assert!(page.contains(".TH edge-filter-explain 1"), "{page}");
    assert!(page.contains("\\-\\-dst\\-port"), "{page}");
    let out = std::process::Command::new(&bin)
        .args(["man", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no subcommand \"nope\""));
}
