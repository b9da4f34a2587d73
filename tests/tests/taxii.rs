//! A TAXII 2.1 collection as a feed (`format = "taxii"`), against a real
//! server: medallion 3.0.0 (the OASIS reference server, memory backend)
//! on the loopback of the agent's network namespace, objects posted with
//! taxii2-client, and the real agent binary with its kernel maps read back
//! and datagrams sent through the filter.
//!
//! `taxii_indicators_enforced_paged_resumed_and_released`, in order:
//! - five indicators posted before the agent starts come in one full fetch
//!   of three pages (`page_size = 2`, medallion's one-shot `next` tokens);
//! - an indicator posted while the agent runs is dropped by the kernel
//!   within two refresh intervals (datagrams from its address stop
//!   arriving), and passes again after a revoked newer version is posted;
//!   polls after the first ask `added_after` the saved cursor;
//! - a restart resumes from the cursor saved in the state directory (no
//!   full fetch) and picks up an indicator posted while it was down;
//! - a saved cursor in the future: the poll fails naming it, the enforced
//!   set stays, the next poll fetches the whole collection and recovers;
//! - the server down: the set stays, the feed is reported failing;
//! - a wrong password: 401 reported as refused credentials naming the
//!   password file, nothing changes, the password never in the output; a
//!   password file readable by others: the agent refuses to start.
//!
//! Root only. Needs the Python environment `cargo xtask setup` makes
//! (`~/.cache/edge-filter/python`, or `EDGE_FILTER_PYTHON_VENV`): without
//! it the test prints why it skips, unless `CI=true`, where it fails.
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test taxii -- --nocapture
//! ```

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_filter::entry::{Action, Entry, EntrySet};
use edge_filter::ops::status::{FeedHealth, Status};
use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::literal::net;
use edge_filter_tests::netns::{self, Agent, Lab, Netns};
use edge_filter_tests::traffic::Probe;
use edge_filter_tests::wait;

const READY: &str = "ready: ef-rcv";
const BOUND: Duration = Duration::from_secs(15);
/// The feed's refresh.
const REFRESH: Duration = Duration::from_secs(2);
const COLLECTION: &str = "365fed99-08fa-fdcd-a1b3-fb247eb41d01";
const USER: &str = "edge";
const PASSWORD: &str = "s3cret horse pw";
const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const MARK4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
const SUSPECT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
const PORT: u16 = 5353;

/// The tests' Python environment (see `cargo xtask setup`).
fn venv() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_FILTER_PYTHON_VENV") {
        return PathBuf::from(p);
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
        .join(".cache/edge-filter/python")
}

fn medallion_available(test: &str) -> bool {
    let v = venv();
    if v.join("bin/medallion").exists() && v.join("bin/python").exists() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !ci,
        "{test}: medallion is not installed in {} and CI=true (run `cargo xtask setup`)",
        v.display()
    );
    println!(
        "skipping: medallion is not installed in {}; `cargo xtask setup` installs it ({test})",
        v.display()
    );
    false
}

/// taxii2-client posting the JSON array of objects on stdin as a bundle.
const POST: &str = r#"
import json, sys, uuid
from taxii2client.v21 import Collection
url, user, pw = sys.argv[1:4]
objs = json.load(sys.stdin)
st = Collection(url, user=user, password=pw).add_objects(
    {"type": "bundle", "id": "bundle--" + str(uuid.uuid4()), "objects": objs})
assert st.status == "complete" and st.failure_count == 0, st
print(st.success_count)
"#;

/// medallion in `ns` on 127.0.0.1:`port`, memory backend; killed on drop.
struct Medallion {
    dir: PathBuf,
    port: u16,
    ns_path: PathBuf,
    child: Option<Child>,
}

impl Medallion {
    fn create(ns: &Netns, dir: &Path) -> Medallion {
        let port = ns.enter(|| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port()
        });
        std::fs::create_dir_all(dir).unwrap();
        let root = format!("http://127.0.0.1:{port}/api1/");
        let data = serde_json::json!({
            "/discovery": {"title": "edge-filter test", "default": root, "api_roots": [root]},
            "api1": {
                "information": {"title": "api1", "versions": ["application/taxii+json;version=2.1"],
                                "max_content_length": 9_765_625},
                "status": [],
                "collections": [{"id": COLLECTION, "title": "Indicators", "can_read": true,
                                 "can_write": true,
                                 "media_types": ["application/stix+json;version=2.1"],
                                 "objects": [], "manifest": []}]
            }
        });
        std::fs::write(dir.join("data.json"), data.to_string()).unwrap();
        let config = serde_json::json!({
            "backend": {"module": "medallion.backends.memory_backend",
                        "module_class": "MemoryBackend",
                        "filename": dir.join("data.json")},
            "users": {USER: PASSWORD},
            "taxii": {"max_page_size": 100}
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let mut m = Medallion {
            dir: dir.to_path_buf(),
            port,
            ns_path: ns.path(),
            child: None,
        };
        m.start();
        m
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(program);
        c
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("medallion.log")).unwrap();
        let child = self
            .command(&venv().join("bin/medallion"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg(self.dir.join("config.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start medallion");
        self.child = Some(child);
        let t0 = Instant::now();
        while !netns_connect(&self.ns_path, self.port) {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("medallion exited ({st}):\n{}", self.log());
            }
            assert!(
                t0.elapsed() < BOUND,
                "medallion does not listen after {BOUND:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "medallion up on {} in {:.1?}",
            self.discovery(),
            t0.elapsed()
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn discovery(&self) -> String {
        format!("http://127.0.0.1:{}/taxii2/", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("medallion.log")).unwrap_or_default()
    }

    /// The objects requests logged so far (their query strings).
    fn object_requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let i = l.find("/objects/?")?;
                let q = &l[i + "/objects/?".len()..];
                Some(q.split(' ').next().unwrap_or("").to_string())
            })
            .collect()
    }

    /// Post `objects` with taxii2-client.
    fn post(&self, objects: &[serde_json::Value]) {
        let url = format!(
            "http://127.0.0.1:{}/api1/collections/{COLLECTION}/",
            self.port
        );
        let mut child = self
            .command(&venv().join("bin/python"))
            .args(["-c", POST, &url, USER, PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run taxii2-client");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(
                serde_json::Value::from(objects.to_vec())
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "posting with taxii2-client: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Medallion {
    fn drop(&mut self) {
        self.stop();
    }
}

fn netns_connect(ns: &Path, port: u16) -> bool {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("open the netns");
        // SAFETY: setns on a fresh thread with a valid namespace fd.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns");
        TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_millis(200),
        )
        .is_ok()
    })
    .join()
    .unwrap()
}

/// An indicator of `addr` with STIX id `n`, version `modified`.
fn indicator(n: u32, addr: &str, modified: &str, revoked: bool) -> serde_json::Value {
    serde_json::json!({
        "type": "indicator", "spec_version": "2.1",
        "id": format!("indicator--00000000-0000-4000-8000-{n:012}"),
        "created": "2026-01-01T00:00:00.000Z", "modified": modified,
        "name": format!("test indicator {n}"),
        "pattern": format!("[ipv4-addr:value = '{addr}']"), "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00Z", "revoked": revoked
    })
}

fn write_secret(path: &Path, text: &str, mode: u32) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    writeln!(f, "{text}").unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn health(lab: &Lab) -> Option<FeedHealth> {
    let text = std::fs::read_to_string(lab.dir.join("state/status.json")).ok()?;
    let s: Status = serde_json::from_str(&text).ok()?;
    s.feeds.into_iter().find(|f| f.name == "tx")
}

fn set_of(nets: &[&str]) -> EntrySet {
    let mut entries: Vec<Entry> = nets
        .iter()
        .map(|n| Entry::new(net(n), None, Action::Drop))
        .collect();
    entries.sort();
    entries.dedup();
    EntrySet {
        allow: Vec::new(),
        entries,
    }
}

fn show(set: &EntrySet) -> String {
    let s: Vec<String> = set.entries.iter().map(|e| e.to_string()).collect();
    format!("[{}]", s.join(", "))
}

fn wait_enforced(what: &str, lab: &Lab, agent: &Agent, want: &EntrySet) -> Duration {
    let context = || {
        format!(
            "enforced: {}\nstatus: {:?}\n",
            lab.try_enforced().map(|s| show(&s)).unwrap_or_else(|e| e),
            health(lab)
        )
    };
    let (_, took) = wait::poll_with(what, BOUND, agent, context, || {
        (lab.try_enforced().ok().as_ref() == Some(want)).then_some(())
    });
    println!("{what}: {} after {took:.1?}", show(want));
    took
}

fn holds(what: &str, lab: &Lab, agent: &Agent, want: &EntrySet, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        let got = lab.enforced();
        assert!(
            &got == want,
            "{what}: enforced {} instead of {}\n{}",
            show(&got),
            show(want),
            agent.tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_error(what: &str, lab: &Lab, agent: &Agent, needle: &str) -> String {
    let (h, _) = wait::poll_with(
        what,
        BOUND,
        agent,
        || format!("{:?}", health(lab)),
        || health(lab).filter(|h| h.last_error.as_deref().is_some_and(|e| e.contains(needle))),
    );
    let e = h.last_error.unwrap();
    println!("{what}: {e}");
    e
}

#[test]
fn taxii_indicators_enforced_paged_resumed_and_released() {
    let test = "taxii_indicators_enforced_paged_resumed_and_released";
    if netns::skip_unless_root(test) || !medallion_available(test) {
        return;
    }
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(MARK4, 24);
    lab.add_sender_addr(SUSPECT4, 24);
    let mut srv = Medallion::create(&lab.receiver, &lab.dir.join("medallion"));
    let five: Vec<serde_json::Value> = (1..=5)
        .map(|i| {
            indicator(
                i,
                &format!("198.51.100.{i}"),
                "2026-12-01T00:00:00.000Z",
                false,
            )
        })
        .collect();
    srv.post(&five);
    let pw_file = lab.dir.join("taxii.pw");
    write_secret(&pw_file, PASSWORD, 0o600);
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .set("reconcile_interval = \"2s\"")
        .feed(
            "tx",
            &srv.discovery(),
            "taxii",
            &format!("{}s", REFRESH.as_secs()),
        )
        .line("collection = \"Indicators\"")
        .line(&format!("username = \"{USER}\""))
        .line(&format!("password_file = '{}'", pw_file.display()))
        .line("page_size = 2")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);

    // A full fetch of three pages.
    let base: Vec<String> = (1..=5).map(|i| format!("198.51.100.{i}")).collect();
    let base_refs: Vec<&str> = base.iter().map(String::as_str).collect();
    wait_enforced("five indicators, paged", &lab, &agent, &set_of(&base_refs));
    let reqs = srv.object_requests();
    let first: Vec<&String> = reqs.iter().take(3).collect();
    assert!(
        first[0] == "limit=2"
            && first[1].starts_with("limit=2&next=")
            && first[2].starts_with("limit=2&next="),
        "the full fetch did not page with `next`: {reqs:?}"
    );

    // Posted while the agent runs: dropped within two refreshes.
    let probe = Probe::new(&lab, SocketAddr::new(RECV4, PORT), MARK4);
    assert!(probe.passes(&lab, SUSPECT4), "dropped before it was posted");
    let t = Instant::now();
    srv.post(&[indicator(
        20,
        "192.0.2.20",
        "2026-12-02T00:00:00.000Z",
        false,
    )]);
    probe
        .wait_for(&lab, &[(SUSPECT4, false)], BOUND)
        .unwrap_or_else(|seen| panic!("posted indicator not enforced: {seen}\n{}", agent.tail(30)));
    println!(
        "posted indicator dropped after {:.1?} (refresh {REFRESH:?})",
        t.elapsed()
    );
    assert!(
        t.elapsed() <= 2 * REFRESH + Duration::from_millis(500),
        "dropped only after {:.1?}, more than two refreshes",
        t.elapsed()
    );
    let mut with20 = base_refs.clone();
    with20.push("192.0.2.20");
    assert_eq!(lab.enforced(), set_of(&with20));
    // Polls after the first ask added_after the cursor.
    let reqs = srv.object_requests();
    let later = &reqs[3..];
    assert!(
        !later.is_empty() && later.iter().all(|q| q.contains("added_after=")),
        "polls after the full fetch without a cursor: {reqs:?}"
    );
    let saved = std::fs::read_to_string(lab.dir.join("state/taxii-tx.json")).unwrap();
    assert!(saved.contains("\"cursor\":\"2026-"), "{saved}");

    // A revoked newer version releases it.
    let t = Instant::now();
    srv.post(&[indicator(
        20,
        "192.0.2.20",
        "2026-12-03T00:00:00.000Z",
        true,
    )]);
    probe
        .wait_for(&lab, &[(SUSPECT4, true)], BOUND)
        .unwrap_or_else(|seen| {
            panic!(
                "revoked indicator still enforced: {seen}\n{}",
                agent.tail(30)
            )
        });
    println!("revoked version released it after {:.1?}", t.elapsed());
    assert!(t.elapsed() <= 2 * REFRESH + Duration::from_millis(500));
    let base_set = set_of(&base_refs);
    assert_eq!(lab.enforced(), base_set);
    wait::poll_with(
        "status counts 5 entries",
        BOUND,
        &agent,
        || format!("{:?}", health(&lab)),
        || health(&lab).filter(|h| h.entries == 5 && h.last_error.is_none()),
    );
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    drop(agent);

    // A restart resumes from the saved cursor.
    srv.post(&[indicator(
        6,
        "198.51.100.6",
        "2026-12-04T00:00:00.000Z",
        false,
    )]);
    let before = srv.object_requests().len();
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    let mut six = base_refs.clone();
    six.push("198.51.100.6");
    let six = set_of(&six);
    wait_enforced("posted while the agent was down", &lab, &agent, &six);
    let after: Vec<String> = srv.object_requests()[before..].to_vec();
    assert!(
        !after.is_empty() && after.iter().all(|q| q.contains("added_after=")),
        "the restart fetched without the saved cursor: {after:?}"
    );
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    drop(agent);

    // A cursor in the future: reported, nothing changes, then recovered
    // by a full fetch.
    let path = lab.dir.join("state/taxii-tx.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cursor"] = "2099-01-01T00:00:00.000000Z".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let before = srv.object_requests().len();
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    let e = wait_error(
        "a future cursor",
        &lab,
        &agent,
        "ahead of the server's clock",
    );
    assert!(
        e.contains("2099-01-01") && e.contains("whole collection"),
        "{e}"
    );
    assert!(agent.wait_stderr("feed tx: ", BOUND));
    assert_eq!(lab.enforced(), six, "the future cursor changed the set");
    wait::poll_with(
        "recovered by a full fetch",
        BOUND,
        &agent,
        || format!("{:?}", health(&lab)),
        || health(&lab).filter(|h| h.last_error.is_none() && h.consecutive_failures == 0),
    );
    let after: Vec<String> = srv.object_requests()[before..].to_vec();
    assert!(
        after.iter().any(|q| q == "limit=2"),
        "no full fetch after the future cursor: {after:?}"
    );
    holds(
        "after the recovery",
        &lab,
        &agent,
        &six,
        Duration::from_secs(2),
    );

    // The server down: the set stays, the feed is reported failing.
    srv.stop();
    let e = wait_error("the server down", &lab, &agent, "connection failed");
    assert!(
        e.contains(&srv.discovery()) || e.contains("127.0.0.1"),
        "{e}"
    );
    holds(
        "the server down",
        &lab,
        &agent,
        &six,
        Duration::from_secs(3),
    );
    assert!(!agent.stderr_text().contains(PASSWORD));
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    drop(agent);

    // A wrong password: 401, reported naming the file, nothing changes.
    srv.start();
    write_secret(&pw_file, "not the password", 0o600);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    let e = wait_error("a wrong password", &lab, &agent, "HTTP 401");
    assert!(
        e.contains("refused the credentials") && e.contains(&pw_file.display().to_string()),
        "{e}"
    );
    holds(
        "a wrong password",
        &lab,
        &agent,
        &six,
        Duration::from_secs(3),
    );
    let out = agent.stderr_text();
    assert!(!out.contains("not the password") && !out.contains(PASSWORD));
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    drop(agent);

    // A password file others may read: refused at start, naming the feed.
    write_secret(&pw_file, PASSWORD, 0o644);
    let agent = lab.start_config_agent(&cfg);
    let st = agent.wait_exit(BOUND, "refusing a readable password file");
    assert!(!st.success());
    let text = agent.stderr_text();
    assert!(
        text.contains("feed tx: password_file")
            && text.contains("mode 0644")
            && !text.contains(PASSWORD),
        "{text}"
    );
    assert_eq!(lab.enforced(), six, "the refused start changed the maps");
}
