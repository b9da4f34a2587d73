//! The filter never stops enforcing silently (issue #13): one agent per
//! interface, an interface deleted and recreated under a running agent or
//! while none runs, a rotation of a near-capacity feed and a sync after a
//! crash in the middle of one, the blocklist agent's shrink guard, and a
//! full state directory. Root only: real agents on a veth pair in private
//! namespaces.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::netns::{self, Agent, Lab, RECEIVER_IF};
use edge_filter_tests::traffic::Probe;
use edge_filter_tests::{scrape, wait};

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 67, 0, 1));
/// On every blocklist of these tests.
const BLOCKED: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 67, 0, 20));
/// Never on a list: the probes' markers come from it.
const MARK: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 67, 0, 99));
const PORT: u16 = 7411;
const BOUND: Duration = Duration::from_secs(10);

fn addresses(lab: &Lab) {
    lab.add_receiver_addr(RECV4, 24);
    for a in [BLOCKED, MARK] {
        lab.add_sender_addr(a, 24);
    }
}

fn lab() -> (Lab, Probe) {
    let lab = Lab::create();
    addresses(&lab);
    lab.receiver.ip(&["link", "set", "lo", "up"]);
    let probe = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK);
    (lab, probe)
}

fn blocked_is_dropped(lab: &Lab, probe: &Probe, agent: &Agent, what: &str) {
    if let Err(seen) = probe.wait_for(lab, &[(BLOCKED, false), (MARK, true)], BOUND) {
        panic!("{what}: {seen}\n{}", agent.tail(30));
    }
}

fn wait_log(agent: &Agent, needle: &str, what: &str) {
    assert!(
        agent.wait_stderr(needle, BOUND),
        "{what}: no {needle:?} in the agent's log\n{}",
        agent.tail(40)
    );
}

/// Run `edge-filter ARGS` (with the lab's --bpffs when `pins`) and return
/// (exit code, stdout, stderr).
fn cli(lab: &Lab, args: &[&str], pins: bool) -> (i32, String, String) {
    let out = if pins {
        lab.edge_filter(args)
    } else {
        lab.edge_filter_cmd()
            .args(args)
            .output()
            .expect("run edge-filter")
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config agent's TOML: one interface, the lab's pins, file feeds.
fn config(lab: &Lab, state: &Path, extra: &str, feeds: &[(&str, &Path)]) -> PathBuf {
    let mut c = AgentConfig::new(lab, state)
        .set("reconcile_interval = \"1s\"")
        .table(extra);
    for (name, path) in feeds {
        c = c.file_feed(name, path, "plain", "1s");
    }
    c.write(lab)
}

/// Bug 4: a second agent on an interface an agent manages refuses, naming
/// the first one's pid, and changes nothing; either kind of agent.
#[test]
fn second_agent_is_refused() {
    if netns::skip_unless_root("second_agent_is_refused") {
        return;
    }
    let (lab, probe) = lab();
    let list = lab.write_file("blocklist.txt", &format!("{BLOCKED}\n"));
    let first = lab.start_agent(&[
        "--blocklist",
        list.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ]);
    first.wait_ready("attached");
    blocked_is_dropped(&lab, &probe, &first, "first agent");
    let before = lab.enforced();

    // The same blocklist agent again, and one with an empty list (which
    // would have wiped the maps).
    let empty = lab.write_file("empty.txt", "");
    for list in [&list, &empty] {
        let (code, _, err) = cli(
            &lab,
            &[
                "run",
                "--iface",
                RECEIVER_IF,
                "--blocklist",
                list.to_str().unwrap(),
                "--metrics-listen",
                "off",
            ],
            true,
        );
        assert_ne!(code, 0, "a second agent started: {err}");
        assert!(
            err.contains(&format!(
                "{RECEIVER_IF} is already managed by edge-filter agent pid {}",
                first.pid()
            )),
            "{err}"
        );
    }
    // A config agent on the same pins.
    let state = lab.dir.join("state");
    let cfg = config(&lab, &state, "", &[("empty", &empty)]);
    let (code, _, err) = cli(&lab, &["run", "--config", cfg.to_str().unwrap()], false);
    assert_ne!(
        code, 0,
        "a config agent started beside the blocklist agent: {err}"
    );
    assert!(err.contains("already managed by"), "{err}");
    assert!(err.contains(&first.pid().to_string()), "{err}");
    assert_eq!(lab.enforced(), before, "a refused agent changed the maps");
    assert!(
        first.is_running(),
        "the first agent died\n{}",
        first.tail(20)
    );
    blocked_is_dropped(&lab, &probe, &first, "after the refusals");

    // Once the first one is gone, a new agent may take over.
    first.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let next = lab.start_agent(&[
        "--blocklist",
        list.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ]);
    next.wait_ready("adopted");
}

/// Bug 3: the interface is deleted and created again under a running agent.
/// The agent reports the gap at once (log, metrics, status), attaches the
/// filter to the new interface with the same maps, and says how long the
/// gap lasted; blocked traffic is dropped again.
#[test]
fn interface_recreated_under_a_running_agent() {
    if netns::skip_unless_root("interface_recreated_under_a_running_agent") {
        return;
    }
    let (lab, probe) = lab();
    let list = lab.write_file("blocklist.txt", &format!("{BLOCKED}\n203.0.113.0/24\n"));
    const METRICS: u16 = 19441;
    let agent = lab.start_agent(&[
        "--blocklist",
        list.to_str().unwrap(),
        "--metrics-listen",
        &format!("127.0.0.1:{METRICS}"),
    ]);
    agent.wait_ready("attached");
    blocked_is_dropped(&lab, &probe, &agent, "before");
    let (m, body) = scrape::metrics(&lab.receiver, METRICS);
    let attached = format!("edge_filter_attached{{iface=\"{RECEIVER_IF}\"}}");
    let gaps = format!("edge_filter_enforcement_gaps_total{{iface=\"{RECEIVER_IF}\"}}");
    let gap_s = format!("edge_filter_enforcement_gap_seconds_total{{iface=\"{RECEIVER_IF}\"}}");
    assert_eq!(scrape::value(&m, &attached, &body), 1.0);
    assert_eq!(scrape::value(&m, &gaps, &body), 0.0);

    lab.delete_veth();
    wait_log(&agent, "enforcement gap started", "after the delete");
    let (m, body) = scrape::metrics(&lab.receiver, METRICS);
    assert_eq!(scrape::value(&m, &attached, &body), 0.0, "{body}");
    assert_eq!(scrape::value(&m, &gaps, &body), 1.0, "{body}");
    // The CLI says so too.
    let (_, out, _) = cli(&lab, &["status", "--json"], true);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(v["interfaces"][0]["attached"], false, "{out}");

    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    lab.add_veth();
    wait_log(
        &agent,
        "the enforcement gap lasted",
        "after the interface came back",
    );
    blocked_is_dropped(&lab, &probe, &agent, "after the re-attach");
    eprintln!(
        "re-attached and dropping {:?} after the interface came back",
        t0.elapsed()
    );
    let (m, body) = scrape::metrics(&lab.receiver, METRICS);
    assert_eq!(scrape::value(&m, &attached, &body), 1.0, "{body}");
    assert_eq!(scrape::value(&m, &gaps, &body), 1.0, "{body}");
    let secs = scrape::value(&m, &gap_s, &body);
    assert!(
        (0.3..BOUND.as_secs_f64()).contains(&secs),
        "gap of {secs} s\n{body}"
    );
    // Same maps: the entries (and their counters) survived.
    let set = lab.enforced();
    assert_eq!(set.entries.len(), 2, "{set:?}");
    let (_, out, _) = cli(&lab, &["status", "--json"], true);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(v["interfaces"][0]["attached"], true, "{out}");
}

/// Bug 3, second half: the interface is recreated while no agent runs. The
/// pinned link filters nothing; a new agent must not adopt it as if it did:
/// it attaches the program again and says there was a gap.
#[test]
fn restarted_agent_does_not_adopt_a_dead_link() {
    if netns::skip_unless_root("restarted_agent_does_not_adopt_a_dead_link") {
        return;
    }
    let (lab, probe) = lab();
    let list = lab.write_file("blocklist.txt", &format!("{BLOCKED}\n"));
    let args = [
        "--blocklist",
        list.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ];
    let agent = lab.start_agent(&args);
    agent.wait_ready("attached");
    blocked_is_dropped(&lab, &probe, &agent, "before");
    agent.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    lab.delete_veth();
    lab.add_veth();
    // Nothing filters now, while status used to say "attached".
    assert!(probe.passes(&lab, BLOCKED), "the dead link still filters?");
    let (_, out, _) = cli(&lab, &["status", "--json"], true);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(v["interfaces"][0]["attached"], false, "{out}");
    assert_eq!(v["interfaces"][0]["pinned"], true, "{out}");

    let again = lab.start_agent(&args);
    again.wait_ready("adopted");
    wait_log(&again, "enforcement gap", "restart over a dead link");
    blocked_is_dropped(&lab, &probe, &again, "after the restart");
}

/// Bugs 1 and 2: a feed rotated to as many different entries at capacity
/// lands whole, and an agent restarted over maps holding a mix of both
/// sets (a crash in the middle of such a sync) converges; status and
/// metrics report what the kernel holds against the desired set.
#[test]
fn rotation_at_capacity_and_restart_converge() {
    if netns::skip_unless_root("rotation_at_capacity_and_restart_converge") {
        return;
    }
    let (lab, probe) = lab();
    let n = 990;
    let addrs = |base: u32| -> String {
        (0..n)
            .map(|i| format!("{}\n", Ipv4Addr::from(base + i)))
            .collect::<String>()
    };
    // The blocked probe source is in both sets.
    let feed_text = |base: u32| format!("{BLOCKED}\n{}", addrs(base));
    let feed = lab.write_file("feed.txt", &feed_text(0x0b00_0000));
    const METRICS: u16 = 19442;
    let state = lab.dir.join("state");
    let cfg = config(
        &lab,
        &state,
        &format!(
            "[capacities]\naddr_v4 = 1000\n\n[metrics]\nlisten = \"127.0.0.1:{METRICS}\"\n\n[safety]\nmax_shrink = 1.0\n"
        ),
        &[("f", &feed)],
    );
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let wait_enforced = |want: usize, base: u32, what: &str| {
        let deadline = Instant::now() + BOUND;
        loop {
            let set = lab.enforced();
            let first = IpAddr::V4(Ipv4Addr::from(base));
            if set.entries.len() == want && set.entries.iter().any(|e| e.net.addr() == first) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the kernel holds {} entries\n{}",
                set.entries.len(),
                agent.tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_enforced(n as usize + 1, 0x0b00_0000, "first set");
    lab.replace_file("feed.txt", &feed_text(0x0c00_0000));
    wait_enforced(n as usize + 1, 0x0c00_0000, "rotated set");
    blocked_is_dropped(&lab, &probe, &agent, "after the rotation");
    let missing = format!("edge_filter_missing_entries{{iface=\"{RECEIVER_IF}\"}}");
    let held = format!("edge_filter_kernel_entries{{iface=\"{RECEIVER_IF}\"}}");
    let (m, body) = scrape::metrics(&lab.receiver, METRICS);
    assert_eq!(scrape::value(&m, &missing, &body), 0.0, "{body}");
    assert_eq!(scrape::value(&m, &held, &body), f64::from(n + 1), "{body}");

    // A crash in the middle of a rotation: the agent dies, the kernel holds
    // half of each set; the new agent (same desired set, from its
    // last-known-good copy) must converge.
    agent.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    {
        let paths = edge_filter::kernel::paths::Paths::new(&lab.bpffs);
        let mut maps = edge_filter::kernel::attach::open_pinned(&paths, RECEIVER_IF).expect("maps");
        let mut mixed: edge_filter::entry::EntrySet = edge_filter::entry::EntrySet::default();
        for (base, take) in [(0x0b00_0000u32, n / 2), (0x0c00_0000, n / 2 + 9)] {
            for i in 0..take {
                mixed.entries.push(edge_filter::entry::Entry::new(
                    ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::from(base + i))),
                    None,
                    edge_filter::entry::Action::Drop,
                ));
            }
        }
        maps.rebuild(&mixed, 0).expect("plant the mix");
    }
    let again = lab.start_config_agent(&cfg);
    again.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    wait_enforced(n as usize + 1, 0x0c00_0000, "after the restart");
    let set = lab.enforced();
    assert!(
        !set.entries
            .iter()
            .any(|e| e.net.addr() == IpAddr::V4(Ipv4Addr::from(0x0b00_0000))),
        "an entry of the old set is still enforced"
    );
    let (m, body) = scrape::metrics(&lab.receiver, METRICS);
    assert_eq!(scrape::value(&m, &missing, &body), 0.0, "{body}");
    let (_, out, _) = cli(
        &lab,
        &["status", "--config", cfg.to_str().unwrap(), "--json"],
        false,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(v["interfaces"][0]["kernel_entries"], n + 1, "{out}");
    // The agent counts the kernel at every reconcile (1 s here).
    let deadline = Instant::now() + BOUND;
    loop {
        let (_, out, _) = cli(
            &lab,
            &["status", "--config", cfg.to_str().unwrap(), "--json"],
            false,
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
        if v["interfaces"][0]["missing_entries"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed 0 missing: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bug 9: emptying the blocklist file does not remove everything: the
/// reload is held until SIGHUP confirms it.
#[test]
fn blocklist_shrink_is_held_until_sighup() {
    if netns::skip_unless_root("blocklist_shrink_is_held_until_sighup") {
        return;
    }
    let (lab, probe) = lab();
    let list = lab.write_file(
        "blocklist.txt",
        &format!("{BLOCKED}\n198.51.100.1\n198.51.100.2\n198.51.100.3\n"),
    );
    let agent = lab.start_agent(&[
        "--blocklist",
        list.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ]);
    agent.wait_ready("attached");
    blocked_is_dropped(&lab, &probe, &agent, "before");
    lab.write_file("blocklist.txt", "");
    wait_log(
        &agent,
        "reload from 4 to 0 entries (100% fewer) held",
        "emptied file",
    );
    assert_eq!(
        lab.enforced().entries.len(),
        4,
        "the held reload was applied"
    );
    assert!(
        !probe.passes(&lab, BLOCKED),
        "blocked traffic passes while the shrink is held"
    );
    // A small change still applies at once.
    lab.write_file(
        "blocklist.txt",
        &format!("{BLOCKED}\n198.51.100.1\n198.51.100.2\n"),
    );
    wait_log(&agent, "1 removed", "a 25% shrink");
    assert_eq!(lab.enforced().entries.len(), 3);
    // The operator confirms an emptied file with SIGHUP.
    lab.write_file("blocklist.txt", "");
    wait_log(&agent, "reload from 3 to 0 entries", "emptied again");
    assert!(agent.signal(libc::SIGHUP));
    wait_log(&agent, "SIGHUP: applying the held reload", "SIGHUP");
    if let Err(seen) = probe.wait_for(&lab, &[(BLOCKED, true)], BOUND) {
        panic!("after SIGHUP: {seen}\n{}", agent.tail(30));
    }
    assert!(lab.enforced().entries.is_empty());
}

/// A tmpfs mounted for one test, unmounted when dropped (also on panic).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    /// Fill it to the last byte (again: each call adds a file).
    fn fill(&self) {
        use std::io::Write as _;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut f) = std::fs::File::create(self.0.join(format!("filler{n}"))) else {
            return;
        };
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Bug 10: a full state directory. The last-known-good copy of a new feed
/// version cannot be saved: status and metrics say so, and status still
/// finds the running agent (through its lock) although its status file
/// can no longer be rewritten.
#[test]
fn full_state_dir_is_reported() {
    if netns::skip_unless_root("full_state_dir_is_reported") {
        return;
    }
    let (lab, probe) = lab();
    let state = lab.dir.join("state");
    let fs = Tmpfs::mount(&state, "256k");
    let feed = lab.write_file("feed.txt", &format!("{BLOCKED}\n"));
    const METRICS: u16 = 19443;
    let cfg = config(
        &lab,
        &state,
        &format!("[metrics]\nlisten = \"127.0.0.1:{METRICS}\"\n"),
        &[("f", &feed)],
    );
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    blocked_is_dropped(&lab, &probe, &agent, "before");
    // The status file exists; then the disk fills up, and the feed changes.
    let deadline = Instant::now() + BOUND;
    while !state.join("status.json").exists() {
        assert!(Instant::now() < deadline, "no status.json");
        std::thread::sleep(Duration::from_millis(50));
    }
    fs.fill();
    lab.replace_file("feed.txt", &format!("{BLOCKED}\n198.51.100.9\n"));
    wait_log(
        &agent,
        "writing the last-known-good copy of feed f",
        "full disk",
    );
    // The log line comes first; the metrics follow within the same sync
    // pass, so poll them (one scrape can fall between the two).
    let saved = "edge_filter_feed_last_known_good_saved{feed=\"f\"}";
    let reported = wait::within(BOUND, || {
        let (m, body) = scrape::metrics(&lab.receiver, METRICS);
        (scrape::value(&m, "edge_filter_state_write_ok", &body) == 0.0
            && scrape::value(&m, "edge_filter_state_write_failures_total", &body) >= 1.0
            && scrape::value(&m, saved, &body) == 0.0)
            .then_some(())
    });
    if reported.is_none() {
        let (_, body) = scrape::metrics(&lab.receiver, METRICS);
        panic!("the failed save is not in the metrics within {BOUND:?}:\n{body}");
    }
    // The new version is enforced all the same.
    assert_eq!(lab.enforced().entries.len(), 2);
    // No status file at all now (removed, and the space it freed taken):
    // the CLI still finds the agent, by its lock.
    std::fs::remove_file(state.join("status.json")).unwrap();
    fs.fill();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !state.join("status.json").exists(),
        "the status could still be written"
    );
    let (_, out, _) = cli(
        &lab,
        &["status", "--config", cfg.to_str().unwrap(), "--json"],
        false,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(v["agent"]["up"], true, "{out}");
    assert_eq!(v["agent"]["lock_holder"], agent.pid(), "{out}");
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    drop(fs);
}

/// Bug 13: messages that name the fix. Another XDP program on the
/// interface is named (no misleading fallback to skb mode and a second
/// copy of the error); an unprivileged user reading or detaching the
/// filter is told about privileges, not shown a bare `BPF_OBJ_GET failed`.
#[test]
fn messages_name_the_fix() {
    if netns::skip_unless_root("messages_name_the_fix") {
        return;
    }
    let (lab, _probe) = lab();
    let list = lab.write_file("blocklist.txt", &format!("{BLOCKED}\n"));
    let agent = lab.start_agent(&[
        "--blocklist",
        list.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ]);
    agent.wait_ready("attached");
    let prog = lab.xdp_prog_id().expect("an XDP program");

    // A second filter on other pins: the interface is taken.
    let other = std::path::PathBuf::from(format!("{}-other", lab.bpffs.display()));
    let out = lab
        .edge_filter_cmd()
        .args(["run", "--iface", RECEIVER_IF, "--blocklist"])
        .arg(&list)
        .args(["--metrics-listen", "off", "--bpffs"])
        .arg(&other)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{RECEIVER_IF} already runs another XDP program (program {prog} in "
        )),
        "{err}"
    );
    assert!(!err.contains("falling back"), "misleading fallback: {err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(!other.exists(), "the refused run left {}", other.display());

    // An unprivileged user.
    let bin = netns::edge_filter_bin();
    for args in [
        vec!["detach", "--iface", RECEIVER_IF],
        vec!["stats", "--iface", RECEIVER_IF],
    ] {
        let out = lab
            .receiver
            .command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(&args)
            .arg("--bpffs")
            .arg(&lab.bpffs)
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Permission denied") && !err.contains("edge-filter:") {
            println!("skipping the unprivileged part: the binary is not reachable by uid 65534");
            return;
        }
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("permission denied: run as root or grant CAP_BPF"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("BPF_OBJ_GET"), "{args:?}: {err}");
    }
    assert_eq!(lab.xdp_prog_id(), Some(prog), "the filter changed");
}
