//! The operator's paths through the command line (issue 18): what the tool
//! says must be true, and what it prints as advice must work when pasted.
//!
//! - `closed_stdout_is_a_quiet_exit`: every subcommand run with its stdout
//!   a pipe whose reader is already gone (`status | head -1` where `head`
//!   has exited) exits with status 0 and no panic on stderr.
//! - `stats_and_detach_take_config`: with a config agent whose pins live
//!   under the config's own `bpffs`, `stats --config` (once and `--watch`)
//!   finds the interface and counts its drops, and `detach --config`
//!   removes the filter, neither given `--bpffs`.
//! - `printed_hints_work_when_pasted`: the commands the agents print as
//!   advice are run as printed, by `sh -c` in another directory with no
//!   `EDGE_FILTER_BPFFS`: the shrink guard's `force-feed` hint applies the
//!   held update; the config agent's and the blocklist agent's stop
//!   messages (pins under a non-default root) detach the filter.
//! - `status_exit_status_says_health`: `status --config` exits 0 while
//!   everything is healthy, 3 (degraded) once a feed fails, printing the
//!   error in full (the table clips it) with the next attempt, and still 3
//!   with the agent stopped; 4 (not enforcing) once the filter is detached.
//!   `--json` says the same in `health`, and `--help` documents the codes.
//! - `smaller_disagreements` (item 11): a replay error names its cause
//!   once; `stats --json` has the shape the README shows; `top`'s footer
//!   counts entries and allowlist nets as `status` does; `replay
//!   --per-packet --json` and `events --json` describe the same packet with
//!   the same words (`"proto": "udp"`, `src_port`); `check-config` notes an
//!   interface that does not exist here, and not one that does.
//! - `restart_with_a_feed_down_keeps_the_copy_age` (item 2): an HTTP feed
//!   fetched, the agent stopped, the server stopped, the agent started
//!   again: `status` still gives the first run's last success (and its
//!   age), and `edge_filter_feed_last_success_timestamp_seconds` is still
//!   scraped with that time, while the feed is failing.
//! - `failed_feed_retried_with_backoff` (item 9): an HTTP feed refreshed
//!   hourly that fails is fetched again after 1 s, 2 s, 4 s (`[limits]
//!   retry_backoff = "1s"`) until it succeeds, not an hour later; a 503
//!   with `Retry-After: 3` is next tried 3 s later.
//! - `replay_uses_last_known_good_copies` (item 1): with the feed server
//!   of a config stopped, `replay --config` replays the agent's
//!   last-known-good copy (saying so on stderr) and drops the listed
//!   source; `--offline` does the same from the state directory alone; a
//!   feed with neither a copy nor a server is an error naming it.
//! - `detach_under_a_running_agent` (item 3): `detach` names the agent
//!   that still manages the interface and says it will not re-attach; the
//!   agent reports the gap, does not re-attach, and on exit says the
//!   interface is not filtered (not "stays attached").
//! - `restart_with_other_mode_or_sizes_says_so` (item 4): an agent
//!   restarted with the same options adopts silently; one restarted with
//!   another `--mode` says the adopted filter differs, how, and names the
//!   detach command that makes a new one; `--max-addr-v4` is warned about
//!   as ignored (datapath v2 sizes its maps from the set).
//! - `metrics_on_a_down_loopback_says_why` (item 10): an agent whose
//!   metrics listen on 127.0.0.1 in a namespace whose `lo` is down warns
//!   that nothing can connect and how to fix it (the bind itself
//!   succeeds); once `lo` is up, a restarted agent does not warn and the
//!   endpoint answers; an address no interface holds fails with that
//!   reason.
//!
//! Root only (`skipping: needs root` otherwise). Build the binary first, in
//! the same profile:
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test operator_paths -- --nocapture
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::httpd::{HttpServer, Reply};
use edge_filter_tests::netns::{self, Lab, RECEIVER_IF, Stats};
use edge_filter_tests::scrape;

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const BLOCKED4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `cmd` with stdout a pipe whose read end is already closed, stdin
/// empty, and a deadline; returns its output (stdout empty).
fn with_closed_stdout(mut cmd: Command, timeout: Duration) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // The pipe's write end lives on in the child only.
    drop(cmd);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "still running after {timeout:?} with a closed stdout; stderr:\n{}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// A capture of one UDP datagram from `src` to the receiver.
fn one_packet_pcap(path: &Path, src: Ipv4Addr) {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.octets(), [192, 0, 2, 1], 64)
        .udp(40000, 5001)
        .write(&mut frame, b"x")
        .expect("frame");
    let file = std::fs::File::create(path).expect("create pcap");
    let mut w = pcap_file::pcap::PcapWriter::new(file).expect("pcap header");
    w.write_packet(&pcap_file::pcap::PcapPacket::new(
        Duration::ZERO,
        frame.len() as u32,
        &frame,
    ))
    .expect("pcap packet");
}

#[test]
fn closed_stdout_is_a_quiet_exit() {
    if netns::skip_unless_root("closed_stdout_is_a_quiet_exit") {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(BLOCKED4, 24);
    let bl = lab.write_file("blocklist.txt", "192.0.2.7\n");
    let agent = lab.start_agent(&["--blocklist", bl.to_str().unwrap()]);
    agent.wait_ready("attached");
    let state = lab.dir.join("state");
    let cfg = AgentConfig::new(&lab, &state)
        .file_feed("droplist", &bl, "plain", "1s")
        .table("[metrics]\nlisten = \"off\"")
        .write(&lab);
    std::fs::create_dir_all(&state).unwrap();
    let pcap = lab.dir.join("one.pcap");
    one_packet_pcap(&pcap, Ipv4Addr::new(192, 0, 2, 7));
    let (bl, cfg, pcap) = (path(&bl), path(&cfg), path(&pcap));

    let mut cases: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["status", "--json"],
        vec!["status", "--config", &cfg],
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["stats", "--watch", "0.2"],
        vec!["stats", "--watch", "0.2", "--json"],
        vec!["top"],
        vec!["top", "--json"],
        vec!["explain", "192.0.2.7", "--blocklist", &bl],
        vec!["explain", "192.0.2.7", "--blocklist", &bl, "--json"],
        vec!["features"],
        vec!["features", "--json"],
        vec!["check-config", &cfg],
        vec!["check-config", &cfg, "--json"],
        vec!["replay", &pcap, "--blocklist", &bl],
        vec!["replay", &pcap, "--blocklist", &bl, "--json"],
        vec!["replay", &pcap, "--blocklist", &bl, "--per-packet"],
        vec!["force-feed", "droplist", "--config", &cfg],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
        vec!["status", "--help"],
        vec!["--version"],
    ];
    // `events` prints when a packet is dropped: send some while it waits.
    cases.push(vec!["events", "--json"]);
    cases.push(vec!["events"]);
    // Last: it removes the filter.
    cases.push(vec!["detach", "--iface", RECEIVER_IF]);
    let mut failures = Vec::new();
    for args in &cases {
        let mut cmd = lab.edge_filter_cmd();
        cmd.args(args).env("EDGE_FILTER_BPFFS", &lab.bpffs);
        let out = if args[0] == "events" {
            std::thread::scope(|s| {
                let h = s.spawn(|| with_closed_stdout(cmd, Duration::from_secs(20)));
                while !h.is_finished() {
                    lab.send_udp(
                        SocketAddr::new(BLOCKED4, 40000),
                        SocketAddr::new(RECV4, 5001),
                        &[b"x".to_vec()],
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                h.join().unwrap()
            })
        } else {
            with_closed_stdout(cmd, Duration::from_secs(30))
        };
        let err = text(&out.stderr);
        if !out.status.success() || err.contains("panicked") || err.contains("Broken pipe") {
            failures.push(format!("{args:?}: {}\n{err}", out.status));
        }
    }
    assert!(
        failures.is_empty(),
        "with stdout closed:\n{}",
        failures.join("\n")
    );
}

fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// `edge-filter ARGS...` in the lab's receiving namespace, without
/// `--bpffs` and without `EDGE_FILTER_BPFFS`.
fn ef_without_root(lab: &Lab, args: &[&str]) -> Output {
    let mut cmd = lab.edge_filter_cmd();
    cmd.args(args).env_remove("EDGE_FILTER_BPFFS");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "{args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn stats_and_detach_take_config() {
    if netns::skip_unless_root("stats_and_detach_take_config") {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(BLOCKED4, 24);
    let bl = lab.write_file("droplist.txt", "192.0.2.7\n");
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .file_feed("droplist", &bl, "plain", "1s")
        .table("[metrics]\nlisten = \"off\"")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let cfg = path(&cfg);
    edge_filter_tests::wait::poll("the feed enforced", Duration::from_secs(20), &agent, || {
        (!lab.enforced().entries.is_empty()).then_some(())
    });
    for _ in 0..3 {
        lab.send_udp(
            SocketAddr::new(BLOCKED4, 40000),
            SocketAddr::new(RECV4, 5001),
            &[b"x".to_vec()],
        );
    }

    let args = ["stats", "--config", &cfg, "--json"];
    let stats = Stats::parse(&ok(&args, &ef_without_root(&lab, &args)), RECEIVER_IF);
    assert_eq!(stats.packets("drop_addr"), 3, "{}", stats.summary());
    let args = ["stats", "--config", &cfg];
    let table = ok(&args, &ef_without_root(&lab, &args));
    assert!(table.contains(&format!("{RECEIVER_IF}: ")), "{table}");

    // --watch: the first sample names the interface.
    let mut cmd = lab.edge_filter_cmd();
    cmd.args(["stats", "--config", &cfg, "--watch", "0.2", "--json"])
        .env_remove("EDGE_FILTER_BPFFS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("stats --watch");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .expect("read a sample");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.contains(&format!("\"{RECEIVER_IF}\"")),
        "stats --watch --config: {line}\nstderr: {}",
        text(&out.stderr)
    );

    let args = ["detach", "--iface", RECEIVER_IF, "--config", &cfg];
    ok(&args, &ef_without_root(&lab, &args));
    assert_eq!(lab.xdp_prog_id(), None, "{}", lab.receiver_link());
    assert!(lab.try_enforced().is_err(), "the pins are still there");
}

/// The last command in backticks starting with `prefix` in `log` (a
/// command the tool printed as advice).
fn quoted_command(log: &str, prefix: &str) -> Option<String> {
    let start = log.rfind(&format!("`{prefix}"))? + 1;
    let end = log[start..].find('`')?;
    Some(log[start..start + end].to_string())
}

/// Run `cmd` as an operator pasting it would: `sh -c` in the receiving
/// namespace, from `/`, with this build's `edge-filter` first on PATH and
/// no `EDGE_FILTER_BPFFS`.
fn paste(lab: &Lab, cmd: &str) -> Output {
    assert!(cmd.starts_with("edge-filter "), "not a command: {cmd}");
    let bin = netns::edge_filter_bin();
    let dir = bin.parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    lab.receiver
        .command("sh")
        .arg("-c")
        .arg(cmd)
        .env("PATH", path)
        .env_remove("EDGE_FILTER_BPFFS")
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("sh -c {cmd}: {e}"))
}

#[test]
fn printed_hints_work_when_pasted() {
    if netns::skip_unless_root("printed_hints_work_when_pasted") {
        return;
    }
    let lab = Lab::create();
    let ten: String = (10..20).map(|i| format!("203.0.113.{i}\n")).collect();
    let list = lab.write_file("droplist.txt", &ten);
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .set("reconcile_interval = \"2s\"")
        .file_feed("droplist", &list, "plain", "1h")
        .table("[metrics]\nlisten = \"off\"")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let wait_entries = |n: usize, what: &str| {
        edge_filter_tests::wait::poll(what, Duration::from_secs(20), &agent, || {
            (lab.enforced().entries.len() == n).then_some(())
        })
    };
    wait_entries(10, "the ten entries enforced");

    // A shrink to 2 of 10 entries is held; the hint applies it.
    lab.replace_file("droplist.txt", "203.0.113.10\n203.0.113.11\n");
    assert!(
        agent.wait_stderr("held", Duration::from_secs(20)),
        "no held update\n{}",
        agent.tail(20)
    );
    let hint = quoted_command(&agent.stderr_text(), "edge-filter force-feed")
        .unwrap_or_else(|| panic!("no hint in\n{}", agent.tail(20)));
    assert!(hint.contains("--config"), "{hint}");
    ok(&[hint.as_str()], &paste(&lab, &hint));
    wait_entries(2, "the held update applied after the pasted force-feed");

    // The stop message names the interface and the pin root.
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    let stop = quoted_command(&agent.stderr_text(), "edge-filter detach")
        .unwrap_or_else(|| panic!("no detach hint in\n{}", agent.tail(20)));
    ok(&[stop.as_str()], &paste(&lab, &stop));
    assert_eq!(lab.xdp_prog_id(), None, "{stop}: {}", lab.receiver_link());

    // The blocklist agent's.
    let bl = lab.write_file("blocklist.txt", "203.0.113.7\n");
    let agent = lab.start_agent(&["--blocklist", bl.to_str().unwrap()]);
    agent.wait_ready("attached");
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    let stop = quoted_command(&agent.stderr_text(), "edge-filter detach")
        .unwrap_or_else(|| panic!("no detach hint in\n{}", agent.tail(20)));
    ok(&[stop.as_str()], &paste(&lab, &stop));
    assert_eq!(lab.xdp_prog_id(), None, "{stop}: {}", lab.receiver_link());
}

#[test]
fn status_exit_status_says_health() {
    if netns::skip_unless_root("status_exit_status_says_health") {
        return;
    }
    let lab = Lab::create();
    // A long name, so that the error is longer than the table's column.
    let list = lab.write_file(
        "a-droplist-file-with-a-rather-long-name-to-overflow-the-table.txt",
        "203.0.113.10\n203.0.113.11\n",
    );
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .set("reconcile_interval = \"1s\"")
        .file_feed("droplist", &list, "plain", "1s")
        .table("[metrics]\nlisten = \"off\"")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let cfg = path(&cfg);
    let until_code = |want: i32, what: &str| -> String {
        edge_filter_tests::wait::poll(what, Duration::from_secs(20), &agent, || {
            let (text, code) = lab.status_unpinned(&["--config", &cfg]);
            (code == want).then_some(text)
        })
    };
    let text = until_code(0, "status healthy (exit 0)");
    assert!(text.contains("health: ok (exit 0)"), "{text}");

    std::fs::remove_file(&list).unwrap();
    let text = until_code(3, "status degraded (exit 3) with the feed failing");
    let (json, code) = lab.status_json(&["--config", &cfg]);
    assert_eq!(code, 3);
    assert_eq!(json["health"]["code"], 3, "{json:#}");
    assert_eq!(json["health"]["state"], "degraded", "{json:#}");
    let feed = &json["feeds"][0];
    let error = feed["last_error"].as_str().expect("last_error").to_string();
    assert!(error.len() > 60, "a short error proves nothing: {error}");
    assert!(
        text.contains(&error),
        "the error in full ({error}) is not in:\n{text}"
    );
    assert!(
        text.contains("feed droplist: last error at ") && text.contains("next attempt "),
        "{text}"
    );
    assert!(feed["next_attempt"].is_string(), "{feed:#}");
    assert!(text.contains("health: degraded (exit 3)"), "{text}");

    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    let (text, code) = lab.status_unpinned(&["--config", &cfg]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("agent down"), "{text}");

    ok(&["detach"], &lab.detach());
    let (text, code) = lab.status_unpinned(&["--config", &cfg]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("health: not enforcing (exit 4)"), "{text}");
    let (_, code) = lab.status(&[]);
    assert_eq!(code, 4, "nothing attached");

    let help = ok(
        &["status", "--help"],
        &lab.edge_filter_cmd()
            .args(["status", "--help"])
            .output()
            .unwrap(),
    );
    for line in ["Exit status", "3  degraded", "4  not enforcing"] {
        assert!(help.contains(line), "{line}: {help}");
    }
}

/// The shape of a JSON value: objects by their keys (recursively), arrays
/// by their first element, scalars by their type.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::Number(_) => Value::String("number".into()),
        Value::String(_) => Value::String("string".into()),
        Value::Bool(_) => Value::String("bool".into()),
        Value::Null => Value::Null,
    }
}

/// The JSON block of the README after the marker `<!-- NAME: ... -->`.
fn readme_json(name: &str) -> serde_json::Value {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let at = readme
        .find(&format!("<!-- {name}:"))
        .unwrap_or_else(|| panic!("no <!-- {name}: --> in the README"));
    let block = &readme[at..];
    let start = block.find("```json\n").expect("```json") + "```json\n".len();
    let end = block[start..].find("```").expect("end of the block");
    serde_json::from_str(&block[start..start + end])
        .unwrap_or_else(|e| panic!("README {name} block is not JSON: {e}"))
}

#[test]
fn smaller_disagreements() {
    if netns::skip_unless_root("smaller_disagreements") {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(BLOCKED4, 24);

    // A replay error: its cause once.
    let out = lab
        .edge_filter_cmd()
        .args(["replay", "/nonexistent.pcap", "--blocklist"])
        .arg(lab.dir.join("no-such-blocklist.txt"))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    let bl = lab.write_file("blocklist.txt", "192.0.2.7\n203.0.113.0/24\n");
    let al = lab.write_file("allowlist.txt", "192.0.2.200\n");
    let agent = lab.start_agent(&[
        "--blocklist",
        bl.to_str().unwrap(),
        "--allowlist",
        al.to_str().unwrap(),
    ]);
    agent.wait_ready("attached");
    let (src, dst) = (
        SocketAddr::new(BLOCKED4, 40000),
        SocketAddr::new(RECV4, 5001),
    );

    // events and replay: the same packet in the same words.
    let mut events = lab.edge_filter_cmd();
    events
        .args(["events", "--json", "--count", "1", "--bpffs"])
        .arg(&lab.bpffs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = events.spawn().expect("events");
    let line = std::thread::scope(|s| {
        let h = s.spawn(|| child.wait_with_output().expect("events"));
        while !h.is_finished() {
            lab.send_udp(src, dst, &[b"x".to_vec()]);
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = h.join().unwrap();
        assert!(out.status.success(), "events: {}", text(&out.stderr));
        text(&out.stdout)
    });
    let event: serde_json::Value = serde_json::from_str(line.trim()).expect("events JSON");
    let pcap = lab.dir.join("one.pcap");
    one_packet_pcap(&pcap, Ipv4Addr::new(192, 0, 2, 7));
    let out = lab
        .edge_filter_cmd()
        .arg("replay")
        .arg(&pcap)
        .args([
            "--blocklist",
            bl.to_str().unwrap(),
            "--per-packet",
            "--json",
        ])
        .output()
        .unwrap();
    let replayed = ok(&["replay"], &out);
    let packet: serde_json::Value = replayed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "packet")
        .unwrap_or_else(|| panic!("no packet line:\n{replayed}"));
    assert_eq!(event["proto"], "udp", "{event}");
    for key in [
        "src", "proto", "src_port", "dst_port", "verdict", "reason", "entry",
    ] {
        assert_eq!(
            event[key], packet[key],
            "{key}: events {event}\nreplay {packet}"
        );
    }

    // stats --json has the README's shape.
    let stats = lab.ef_json(&["stats"]);
    assert_eq!(
        shape(&stats),
        shape(&readme_json("stats-json")),
        "stats --json: {stats:#}"
    );

    // top's footer counts what status counts.
    let (st, _) = lab.status_json(&[]);
    let top = lab.ef_json(&["top"]);
    let (si, ti) = (&st["interfaces"][0], &top["interfaces"][0]);
    assert_eq!(
        (si["entries"].as_u64(), si["allowlisted"].as_u64()),
        (Some(2), Some(1)),
        "{si:#}"
    );
    assert_eq!(ti["entries"], si["entries"], "top {ti:#}");
    assert_eq!(ti["allowlisted"], si["allowlisted"], "top {ti:#}");
    let text_top = lab.ef_ok(&["top"]);
    assert!(
        text_top.contains("; 2 entries, 1 allowlisted"),
        "{text_top}"
    );

    // check-config: an interface that is not here is noted.
    let note = "does not exist on this host";
    let state = lab.dir.join("state");
    for (iface, noted) in [("ef-none0", true), (RECEIVER_IF, false)] {
        let cfg = lab.write_file(
            "check.toml",
            &format!(
                "state_dir = '{}'\nbpffs = '{}'\n[[interface]]\nname = \"{iface}\"\n",
                state.display(),
                lab.bpffs.display()
            ),
        );
        let out = lab
            .edge_filter_cmd()
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{all}");
        assert_eq!(all.contains(note), noted, "{iface}: {all}");
        if noted {
            assert!(all.contains(&format!("interface {iface} {note}")), "{all}");
        }
    }
}

/// The port the agents' metrics listen on (inside the lab's namespace).
const METRICS_PORT: u16 = 19436;

#[test]
fn restart_with_a_feed_down_keeps_the_copy_age() {
    if netns::skip_unless_root("restart_with_a_feed_down_keeps_the_copy_age") {
        return;
    }
    let lab = Lab::create();
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok("203.0.113.5\n203.0.113.6\n"));
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .set("reconcile_interval = \"1s\"")
        .feed("web", &srv.url("/list.txt"), "plain", "1h")
        .table(&format!("[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\""))
        .write(&lab);
    let cfg_s = path(&cfg);
    let metric = "edge_filter_feed_last_success_timestamp_seconds{feed=\"web\"}";
    let web = |lab: &Lab| {
        let (st, _) = lab.status_json(&["--config", &cfg_s]);
        st["feeds"][0].clone()
    };

    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let first =
        edge_filter_tests::wait::poll("the feed fetched", Duration::from_secs(20), &agent, || {
            let f = web(&lab);
            (f["state"] == "ok").then_some(f)
        });
    let success = first["last_success"]
        .as_str()
        .expect("last_success")
        .to_string();
    let (m, body) = edge_filter_tests::wait::poll(
        "the last success published",
        Duration::from_secs(20),
        &agent,
        || {
            let (m, body) = scrape::metrics(&lab.receiver, METRICS_PORT);
            m.contains_key(metric).then_some((m, body))
        },
    );
    let stamp = scrape::value(&m, metric, &body);
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));

    // The feed goes down; the agent comes back.
    srv.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let after =
        edge_filter_tests::wait::poll("the feed failing", Duration::from_secs(20), &agent, || {
            let f = web(&lab);
            (f["state"] == "failing").then_some(f)
        });
    assert_eq!(after["last_success"], success.as_str(), "{after:#}");
    assert!(
        after["age_s"].as_f64().is_some_and(|a| a >= 1.0),
        "{after:#}"
    );
    assert_eq!(after["from_last_known_good"], true, "{after:#}");
    let (text, _) = lab.status_unpinned(&["--config", &cfg_s]);
    assert!(text.contains(&success), "{text}");
    let (m, body) = scrape::metrics(&lab.receiver, METRICS_PORT);
    assert_eq!(scrape::value(&m, metric, &body), stamp, "{body}");
    assert_eq!(
        scrape::value(&m, "edge_filter_feed_up{feed=\"web\"}", &body),
        0.0,
        "{body}"
    );
    assert_eq!(lab.enforced().entries.len(), 2, "the copy stays enforced");
}

#[test]
fn failed_feed_retried_with_backoff() {
    if netns::skip_unless_root("failed_feed_retried_with_backoff") {
        return;
    }
    let lab = Lab::create();
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok("203.0.113.5\n"));
    srv.queue(Reply::status(503, "busy"), 3);
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .feed("web", &srv.url("/list.txt"), "plain", "1h")
        .table("[limits]\nretries = 0\nretry_backoff = \"1s\"\nretry_backoff_max = \"4s\"")
        .table("[metrics]\nlisten = \"off\"")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    edge_filter_tests::wait::poll(
        "the feed fetched after 3 failures",
        Duration::from_secs(30),
        &agent,
        || (lab.enforced().entries.len() == 1).then_some(()),
    );
    let reqs = srv.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 200],
        "{reqs:?}"
    );
    let gaps: Vec<f64> = reqs
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    for (gap, want) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            *gap >= want - 0.1 && *gap < want + 1.5,
            "gaps {gaps:?}, want about 1, 2, 4 s"
        );
    }

    // Retry-After is honoured (3 s, not the 1 s backoff).
    srv.queue(Reply::status(503, "later").header("Retry-After", "3"), 1);
    let n0 = srv.request_count();
    assert!(agent.signal(libc::SIGHUP));
    let reqs = edge_filter_tests::wait::poll(
        "the retry after Retry-After",
        Duration::from_secs(20),
        &agent,
        || {
            let r = srv.requests();
            (r.len() >= n0 + 2).then_some(r)
        },
    );
    let (failed, retried) = (&reqs[n0], &reqs[n0 + 1]);
    assert_eq!((failed.status, retried.status), (503, 200), "{reqs:?}");
    let gap = (retried.at - failed.at).as_secs_f64();
    assert!(
        (2.9..4.5).contains(&gap),
        "retried {gap:.2} s after a Retry-After: 3"
    );
}

/// The verdict of the one packet of `replay CAPTURE ARGS --per-packet
/// --json`, and its stderr; panics unless it succeeds.
fn replay_verdict(lab: &Lab, pcap: &Path, args: &[&str]) -> (String, String) {
    let out = lab
        .edge_filter_cmd()
        .arg("replay")
        .arg(pcap)
        .args(args)
        .args(["--per-packet", "--json"])
        .output()
        .unwrap();
    let stdout = ok(args, &out);
    let packet: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "packet")
        .unwrap_or_else(|| panic!("no packet line:\n{stdout}"));
    (
        packet["verdict"].as_str().unwrap_or("?").to_string(),
        text(&out.stderr),
    )
}

#[test]
fn replay_uses_last_known_good_copies() {
    if netns::skip_unless_root("replay_uses_last_known_good_copies") {
        return;
    }
    let lab = Lab::create();
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok("192.0.2.7\n"));
    let url = srv.url("/list.txt");
    let state = lab.dir.join("state");
    let cfg = AgentConfig::new(&lab, &state)
        .feed("web", &url, "plain", "1h")
        .table("[metrics]\nlisten = \"off\"")
        .write(&lab);
    let cfg_s = path(&cfg);
    let pcap = lab.dir.join("one.pcap");
    one_packet_pcap(&pcap, Ipv4Addr::new(192, 0, 2, 7));

    // Online: fetched.
    let (verdict, _) = replay_verdict(&lab, &pcap, &["--config", &cfg_s]);
    assert_eq!(verdict, "drop");
    // The agent keeps a last-known-good copy; then the server goes away.
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    edge_filter_tests::wait::poll("the copy saved", Duration::from_secs(20), &agent, || {
        state.join("lkg/web.lkg").exists().then_some(())
    });
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    srv.stop();

    let (verdict, err) = replay_verdict(&lab, &pcap, &["--config", &cfg_s]);
    assert_eq!(verdict, "drop", "{err}");
    assert!(
        err.contains("feed web: ") && err.contains("replaying its last-known-good copy"),
        "{err}"
    );
    let (verdict, err) = replay_verdict(&lab, &pcap, &["--config", &cfg_s, "--offline"]);
    assert_eq!(verdict, "drop", "{err}");
    assert!(
        !err.contains("last-known-good"),
        "offline fetches nothing: {err}"
    );

    // A feed with neither: an error naming it, online and offline.
    let cfg2 = AgentConfig::new(&lab, &state)
        .feed("web", &url, "plain", "1h")
        .feed(
            "other",
            &url.replace("list.txt", "other.txt"),
            "plain",
            "1h",
        )
        .write(&lab);
    for extra in [None, Some("--offline")] {
        let mut cmd = lab.edge_filter_cmd();
        cmd.arg("replay").arg(&pcap).arg("--config").arg(&cfg2);
        cmd.args(extra);
        let out = cmd.output().unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: {err}");
        assert!(
            err.contains("feed other: ") && err.contains("no last-known-good copy in"),
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn detach_under_a_running_agent() {
    if netns::skip_unless_root("detach_under_a_running_agent") {
        return;
    }
    let lab = Lab::create();
    let bl = lab.write_file("blocklist.txt", "203.0.113.7\n");
    let agent = lab.start_agent(&["--blocklist", bl.to_str().unwrap()]);
    agent.wait_ready("attached");
    let said = ok(&["detach"], &lab.detach());
    assert!(
        said.contains(&format!(
            "agent pid {} still manages {RECEIVER_IF}",
            agent.pid()
        )) && said.contains("does not attach the filter again"),
        "{said}"
    );
    assert!(
        agent.wait_stderr("enforcement gap started", Duration::from_secs(10)),
        "{}",
        agent.tail(20)
    );
    assert!(
        agent.stderr_text().contains("does not attach it again"),
        "{}",
        agent.tail(20)
    );
    // As said: it stays detached.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.xdp_prog_id(), None, "{}", lab.receiver_link());
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    let log = agent.stderr_text();
    assert!(
        log.contains(&format!("stopping; {RECEIVER_IF} is not filtered"))
            && !log.contains("stays attached"),
        "{log}"
    );
}

#[test]
fn restart_with_other_mode_or_sizes_says_so() {
    if netns::skip_unless_root("restart_with_other_mode_or_sizes_says_so") {
        return;
    }
    let lab = Lab::create();
    let bl = lab.write_file("blocklist.txt", "203.0.113.7\n");
    let bl = bl.to_str().unwrap();
    let first = ["--blocklist", bl, "--mode", "skb", "--max-addr-v4", "4096"];
    let agent = lab.start_agent(&first);
    agent.wait_ready("attached");
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));

    let agent = lab.start_agent(&first);
    agent.wait_ready("adopted");
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    assert!(
        !agent.stderr_text().contains("differs"),
        "{}",
        agent.tail(20)
    );

    let agent = lab.start_agent(&[
        "--blocklist",
        bl,
        "--mode",
        "native",
        "--max-addr-v4",
        "8192",
    ]);
    agent.wait_ready("adopted");
    let log = agent.stderr_text();
    for want in [
        "adopted the pinned filter as it is, which differs from what was asked",
        "it runs in skb mode, native was asked",
        // Datapath v2 sizes its maps from the set (capacity tiers): a size
        // asked for is not a difference to act on, only a key to drop.
        "map capacities are ignored (addr_v4 = 8192)",
        &format!(
            "run `edge-filter detach --iface {RECEIVER_IF} --bpffs {}`",
            lab.bpffs.display()
        ),
    ] {
        assert!(log.contains(want), "{want}:\n{log}");
    }
    assert!(!log.contains("ADDR_V4 holds"), "{log}");
}

#[test]
fn metrics_on_a_down_loopback_says_why() {
    if netns::skip_unless_root("metrics_on_a_down_loopback_says_why") {
        return;
    }
    const PORT: u16 = 19_436;
    const WARNING: &str = "the loopback interface `lo` is down";
    let lab = Lab::create();
    let bl = lab.write_file("blocklist.txt", "203.0.113.7\n");
    let bl = bl.to_str().unwrap();
    let listen = format!("127.0.0.1:{PORT}");
    let args = ["--blocklist", bl, "--metrics-listen", &listen];
    lab.receiver.ip(&["link", "set", "lo", "down"]);
    let agent = lab.start_agent(&args);
    agent.wait_ready("attached");
    assert!(
        agent.wait_stderr(WARNING, Duration::from_secs(10)),
        "no warning about the down loopback:\n{}",
        agent.tail(20)
    );
    assert!(
        agent.stderr_text().contains("ip link set lo up"),
        "{}",
        agent.tail(20)
    );
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));

    lab.receiver.ip(&["link", "set", "lo", "up"]);
    let agent = lab.start_agent(&args);
    agent.wait_ready("adopted");
    let (status, _, body) = scrape::get(&lab.receiver, PORT, "/metrics");
    assert!(
        status.contains("200") && body.contains("edge_filter_"),
        "{status}\n{body}"
    );
    assert!(
        !agent.stderr_text().contains(WARNING),
        "warned with lo up:\n{}",
        agent.tail(20)
    );
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));

    // An explicit address that no interface here has: an error that says so.
    let agent = lab.start_agent(&["--blocklist", bl, "--metrics-listen", "192.0.2.250:9436"]);
    let exit = agent.wait_exit(
        Duration::from_secs(20),
        "the agent with an unbindable address",
    );
    let log = agent.stderr_text();
    assert!(
        !exit.success()
            && log.contains("binding the metrics endpoint 192.0.2.250:9436")
            && log.contains("no interface of this network namespace has that address"),
        "{exit}: {log}"
    );
}
