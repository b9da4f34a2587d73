//! MISP as a feed (`format = "misp"`), against the real agent binary in a
//! test lab, its kernel maps read back and packets sent through it.
//!
//! No MISP server installs here, so the intelligence comes from PyMISP
//! (`cargo xtask setup` installs it in its venv):
//!
//! - `misp_feed_events_enforced_and_released`: a MISP feed written by
//!   PyMISP (manifest.json + one file per event) served by
//!   `python3 -m http.server` on the receiver's loopback. An event's
//!   `to_ids` ip-src is dropped by the kernel (its datagrams do not arrive,
//!   a bystander's do); to_ids false is monitor; ip-dst|port, domain|ip and
//!   an ip-port object give their entries. A changed event is fetched
//!   again and only it (the server's request log); an event removed from
//!   the manifest releases its addresses (its datagrams arrive again). The
//!   server down and a manifest that is not JSON: the feed is reported
//!   failing, naming the URL, the enforced set stays; the next good poll
//!   recovers.
//! - `misp_rest_search_paged_with_faults`: `POST /attributes/restSearch`
//!   answered by a small loopback server from pages recorded off a
//!   PyMISP-written event (as MISP answers them: attributes with their
//!   event). The key of `api_key_file` arrives in `Authorization`, pages
//!   are asked until a short one. A wrong key (403), a 500, a truncated
//!   and a non-JSON answer, one over `[limits] max_bytes`, and a server
//!   answering every page with the same full page (a page loop): each is
//!   a clear error naming the feed, the enforced set stays, and the next
//!   good poll recovers. The key never shows in the agent's output.
//!
//! Root only. Without PyMISP the tests print why they skip, unless
//! `CI=true`, where they fail.
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test misp -- --nocapture
//! ```

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter::ops::status::{FeedHealth, Status};
use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::literal::net;
use edge_filter_tests::netns::{self, Agent, Lab};
use edge_filter_tests::wait;
use serde_json::{Value, json};

const READY: &str = "ready: ef-rcv";
/// Refresh 1 s: everything shows within a few.
const BOUND: Duration = Duration::from_secs(15);

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// The attacker an event names (`ip-src`, `to_ids`).
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
/// A bystander whose datagrams mark the end of a burst.
const MARK: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8));
const PORT: u16 = 5001;

/// Writes a MISP feed with PyMISP: `{"dir": DIR, "events": [...]}` on
/// stdin, each event `{uuid, info, timestamp, attributes: [{type, value,
/// to_ids, deleted}], objects: [{name, attributes: [{relation, value,
/// to_ids}]}]}`; with `"search": N` it also prints the restSearch pages
/// (N attributes each) MISP would answer for those events.
const GEN: &str = r#"
import json, os, sys
from datetime import datetime, timezone
from pymisp import MISPEvent, MISPObject, MISPOrganisation
spec = json.load(sys.stdin)
out = spec["dir"]
os.makedirs(out, exist_ok=True)
manifest = {}
attributes = []
for ev in spec["events"]:
    e = MISPEvent()
    e.uuid = ev["uuid"]
    e.info = ev["info"]
    e.threat_level_id = ev.get("threat_level_id", 2)
    e.analysis = 2
    e.distribution = 3
    e.published = True
    org = MISPOrganisation()
    org.name = "edge-filter tests"
    org.uuid = "5f6e7d8c-0000-4000-8000-000000000001"
    e.Orgc = org
    for t in ev.get("tags", []):
        e.add_tag(t)
    for a in ev.get("attributes", []):
        attr = e.add_attribute(a["type"], a["value"], to_ids=a.get("to_ids", True))
        if a.get("deleted"):
            attr.deleted = True
    for o in ev.get("objects", []):
        obj = MISPObject(o["name"])
        for a in o["attributes"]:
            obj.add_attribute(a["relation"], value=a["value"], to_ids=a.get("to_ids", False))
        e.add_object(obj)
    e.timestamp = datetime.fromtimestamp(ev["timestamp"], timezone.utc)
    feed = e.to_feed(with_meta=True)
    manifest.update(feed["Event"].pop("_manifest"))
    feed["Event"].pop("_hashes", None)
    for a in feed["Event"].get("Attribute", []):
        a = dict(a)
        a["Event"] = {"uuid": e.uuid, "info": e.info, "distribution": "3"}
        attributes.append(a)
    with open(os.path.join(out, e.uuid + ".json"), "w") as f:
        json.dump(feed, f)
tmp = os.path.join(out, "manifest.json.tmp")
with open(tmp, "w") as f:
    json.dump(manifest, f)
os.replace(tmp, os.path.join(out, "manifest.json"))
n = spec.get("search")
if n:
    pages = [{"response": {"Attribute": attributes[i:i + n]}} for i in range(0, len(attributes), n)]
    if len(attributes) % n == 0:
        pages.append({"response": {"Attribute": []}})
    json.dump(pages, sys.stdout)
"#;

/// The Python with PyMISP; `None` means skip (printed), a panic under CI.
fn python(test: &str) -> Option<PathBuf> {
    // The environment `cargo xtask setup` makes.
    let venv = std::env::var_os("EDGE_FILTER_PYTHON_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edge-filter/python"))
        })?;
    let p = venv.join("bin/python3");
    let ok = Command::new(&p)
        .args(["-c", "import pymisp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !ci,
        "{test}: PyMISP not installed ({}) and CI=true (run `cargo xtask setup`)",
        p.display()
    );
    println!("skipping: PyMISP is not installed; `cargo xtask setup` installs it ({test})");
    None
}

/// Write the feed `events` into `dir`; with `search`, the restSearch pages.
fn write_feed(py: &Path, dir: &Path, events: &Value, search: Option<usize>) -> Vec<Value> {
    let mut spec = json!({"dir": dir, "events": events});
    if let Some(n) = search {
        spec["search"] = json!(n);
    }
    let mut child = Command::new(py)
        .args(["-c", GEN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run PyMISP");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyMISP feed writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if search.is_some() {
        serde_json::from_slice(&out.stdout).unwrap()
    } else {
        Vec::new()
    }
}

/// A free port on the receiver's loopback.
fn free_port(lab: &Lab) -> u16 {
    lab.receiver.enter(|| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port()
    })
}

/// Whether 127.0.0.1:`port` accepts a connection in the receiver.
fn connects(lab: &Lab, port: u16) -> bool {
    lab.receiver.enter(|| {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok()
    })
}

/// `python3 -m http.server` serving `dir` on the receiver's loopback;
/// its request log in `log`. Killed on drop.
struct HttpDir {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    ns: PathBuf,
}

impl HttpDir {
    fn start(lab: &Lab, dir: &Path, port: u16) -> HttpDir {
        let log = lab.dir.join("http.log");
        let mut s = HttpDir {
            child: None,
            port,
            dir: dir.to_path_buf(),
            log,
            ns: lab.receiver.path(),
        };
        s.restart(lab);
        s
    }

    fn restart(&mut self, lab: &Lab) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.display()))
            .args(["--", "python3", "-m", "http.server"])
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start python3 -m http.server");
        self.child = Some(child);
        let t0 = Instant::now();
        while !connects(lab, self.port) {
            assert!(
                t0.elapsed() < BOUND,
                "http.server does not listen:\n{}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs of `/NAME` answered 200 so far.
    fn gets(&self, name: &str) -> usize {
        let needle = format!("\"GET /{name} HTTP/1.1\" 200");
        self.requests().matches(&needle).count()
    }
}

impl Drop for HttpDir {
    fn drop(&mut self) {
        self.stop();
    }
}

fn addr(n: &str, a: Action) -> Entry {
    Entry::new(net(n), None, a)
}

fn port(n: &str, proto: Proto, p: u16) -> Entry {
    Entry::new(
        net(n),
        Some(PortMatch {
            proto,
            port: p,
            side: Side::Src,
        }),
        Action::Drop,
    )
}

fn set_of(entries: impl IntoIterator<Item = Entry>) -> EntrySet {
    let mut entries: Vec<Entry> = entries.into_iter().collect();
    entries.sort();
    entries.dedup();
    EntrySet {
        allow: Vec::new(),
        entries,
    }
}

fn health(lab: &Lab, feed: &str) -> Option<FeedHealth> {
    let text = std::fs::read_to_string(lab.dir.join("state/status.json")).ok()?;
    let s: Status = serde_json::from_str(&text).ok()?;
    s.feeds.into_iter().find(|f| f.name == feed)
}

fn show(set: &EntrySet) -> String {
    let s: Vec<String> = set.entries.iter().map(|e| e.to_string()).collect();
    format!("[{}]", s.join(", "))
}

fn wait_enforced(what: &str, lab: &Lab, agent: &Agent, feed: &str, want: &EntrySet) -> Duration {
    let context = || {
        format!(
            "enforced: {}\nstatus: {:?}\n",
            lab.try_enforced().map(|s| show(&s)).unwrap_or_else(|e| e),
            health(lab, feed)
        )
    };
    let (_, took) = wait::poll_with(what, BOUND, agent, context, || {
        (lab.try_enforced().ok().as_ref() == Some(want)).then_some(())
    });
    println!("{what}: {} after {took:.1?}", show(want));
    took
}

/// The feed reported failing with an error containing `needle`; returns it.
fn wait_failing(what: &str, lab: &Lab, agent: &Agent, feed: &str, needle: &str) -> String {
    let (h, took) = wait::poll_with(
        what,
        BOUND,
        agent,
        || format!("{:?}", health(lab, feed)),
        || {
            health(lab, feed).filter(|h| {
                h.consecutive_failures > 0
                    && h.last_error.as_deref().is_some_and(|e| e.contains(needle))
            })
        },
    );
    let e = h.last_error.unwrap();
    println!("{what} after {took:.1?}: {e}");
    e
}

fn wait_recovered(what: &str, lab: &Lab, agent: &Agent, feed: &str) {
    wait::poll_with(
        what,
        BOUND,
        agent,
        || format!("{:?}", health(lab, feed)),
        || health(lab, feed).filter(|h| h.last_error.is_none() && h.consecutive_failures == 0),
    );
}

/// The kernel enforces exactly `want` on every read for `d`.
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Datagrams from the attacker that arrive, out of `n` sent (then a
/// marker from the bystander, which must arrive).
fn attacker_datagrams_arriving(lab: &Lab, sink: &std::net::UdpSocket, n: usize) -> usize {
    let dst = SocketAddr::new(RECV4, PORT);
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("attack {i}").into_bytes()).collect();
    lab.send_udp(SocketAddr::new(ATTACKER, 0), dst, &payloads);
    lab.send_udp(SocketAddr::new(MARK, 0), dst, &[b"mark".to_vec()]);
    let got = netns::recv_until_marker(sink, b"mark", Duration::from_secs(3));
    got.iter().filter(|(from, _)| from.ip() == ATTACKER).count()
}

fn event(uuid: &str, info: &str, ts: u64, attributes: Value, objects: Value) -> Value {
    json!({"uuid": uuid, "info": info, "timestamp": ts, "attributes": attributes, "objects": objects})
}

const E1: &str = "11111111-1111-4111-8111-000000000001";
const E2: &str = "11111111-1111-4111-8111-000000000002";
const E3: &str = "11111111-1111-4111-8111-000000000003";
const E4: &str = "11111111-1111-4111-8111-000000000004";

fn events(e2_ts: u64, with_e1: bool, e2_extra: bool) -> Value {
    let mut e2_attrs = vec![json!({"type": "ip-dst|port", "value": "203.0.113.5|8443"})];
    if e2_extra {
        e2_attrs.push(json!({"type": "ip-src", "value": "198.51.100.61"}));
    }
    let mut v = vec![
        event(E2, "C2 endpoint", e2_ts, json!(e2_attrs), json!([])),
        event(
            E3,
            "phishing infrastructure",
            1_700_000_000,
            json!([
                {"type": "domain|ip", "value": "evil.example|198.51.100.9"},
                {"type": "domain", "value": "evil.example"},
                {"type": "ip-src", "value": "198.51.100.77", "deleted": true},
            ]),
            json!([{"name": "ip-port", "attributes": [
                {"relation": "ip", "value": "198.51.100.50", "to_ids": true},
                {"relation": "dst-port", "value": "4444"},
            ]}]),
        ),
        event(
            E4,
            "scanners",
            1_700_000_000,
            json!([{"type": "ip-src", "value": "198.51.100.60"}]),
            json!([]),
        ),
    ];
    if with_e1 {
        v.push(event(
            E1,
            "brute force against our SSH",
            1_700_000_000,
            json!([
                {"type": "ip-src", "value": ATTACKER.to_string()},
                {"type": "ip-dst", "value": "192.0.2.44", "to_ids": false},
            ]),
            json!([]),
        ));
    }
    json!(v)
}

fn base_set() -> Vec<Entry> {
    vec![
        port("203.0.113.5/32", Proto::Tcp, 8443),
        port("203.0.113.5/32", Proto::Udp, 8443),
        addr("198.51.100.9", Action::Drop),
        port("198.51.100.50/32", Proto::Tcp, 4444),
        port("198.51.100.50/32", Proto::Udp, 4444),
        addr("198.51.100.60", Action::Drop),
    ]
}

#[test]
fn misp_feed_events_enforced_and_released() {
    let test = "misp_feed_events_enforced_and_released";
    if netns::skip_unless_root(test) {
        return;
    }
    let Some(py) = python(test) else { return };
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(ATTACKER, 24);
    lab.add_sender_addr(MARK, 24);
    let feed_dir = lab.dir.join("misp-feed");
    write_feed(&py, &feed_dir, &events(1_700_000_000, true, false), None);
    let mut server = HttpDir::start(&lab, &feed_dir, free_port(&lab));
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .set("reconcile_interval = \"2s\"")
        .feed("misp", &server.url(), "misp", "1s")
        .write(&lab);
    let sink = lab.udp_sink(SocketAddr::new(RECV4, PORT));
    assert_eq!(
        attacker_datagrams_arriving(&lab, &sink, 20),
        20,
        "before the agent"
    );
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);

    let with_e1 = set_of(base_set().into_iter().chain([
        addr(&ATTACKER.to_string(), Action::Drop),
        addr("192.0.2.44", Action::Monitor),
    ]));
    wait_enforced("the feed's events", &lab, &agent, "misp", &with_e1);
    assert_eq!(
        attacker_datagrams_arriving(&lab, &sink, 20),
        0,
        "the event's to_ids ip-src is not dropped\n{}",
        agent.tail(30)
    );
    for e in [E1, E2, E3, E4] {
        assert_eq!(
            server.gets(&format!("{e}.json")),
            1,
            "{e}\n{}",
            server.requests()
        );
    }
    let (h, _) = wait::poll_with(
        "status counts the deleted and unsupported attributes",
        BOUND,
        &agent,
        || format!("{:?}", health(&lab, "misp")),
        || health(&lab, "misp").filter(|h| h.entries == 8),
    );
    assert_eq!(h.unsupported, 1, "the domain attribute: {h:?}");

    // E2 changed (new timestamp): fetched again, and only it.
    let manifests = server.gets("manifest.json");
    write_feed(&py, &feed_dir, &events(1_700_000_100, true, true), None);
    let with_e2 = set_of(
        with_e1
            .entries
            .iter()
            .copied()
            .chain([addr("198.51.100.61", Action::Drop)]),
    );
    wait_enforced("E2 updated", &lab, &agent, "misp", &with_e2);
    std::thread::sleep(Duration::from_secs(2));
    assert!(server.gets("manifest.json") > manifests + 1);
    assert_eq!(
        server.gets(&format!("{E2}.json")),
        2,
        "{}",
        server.requests()
    );
    for e in [E1, E3, E4] {
        assert_eq!(
            server.gets(&format!("{e}.json")),
            1,
            "unchanged event {e} fetched again\n{}",
            server.requests()
        );
    }
    println!(
        "manifest polled {} times, E2 fetched twice, the others once",
        server.gets("manifest.json")
    );

    // E1 gone from the manifest: its addresses are released.
    write_feed(&py, &feed_dir, &events(1_700_000_100, false, true), None);
    let without_e1 = set_of(
        base_set()
            .into_iter()
            .chain([addr("198.51.100.61", Action::Drop)]),
    );
    wait_enforced("E1 removed", &lab, &agent, "misp", &without_e1);
    assert_eq!(
        attacker_datagrams_arriving(&lab, &sink, 20),
        20,
        "released, yet dropped\n{}",
        agent.tail(30)
    );

    // The server down: the set stays, the feed fails naming the URL.
    server.stop();
    let e = wait_failing("server down", &lab, &agent, "misp", &server.url());
    assert!(e.contains("manifest.json"), "{e}");
    holds(
        "server down",
        &lab,
        &agent,
        &without_e1,
        Duration::from_secs(2),
    );
    server.restart(&lab);
    wait_recovered("server back", &lab, &agent, "misp");

    // A manifest that is not JSON: a clear error, nothing changes.
    std::fs::write(
        feed_dir.join("manifest.json"),
        "<html>502 Bad Gateway</html>",
    )
    .unwrap();
    let e = wait_failing(
        "manifest not JSON",
        &lab,
        &agent,
        "misp",
        "not a MISP feed manifest",
    );
    assert!(e.contains("manifest.json"), "{e}");
    assert!(agent.wait_stderr("feed misp: ", BOUND));
    holds(
        "bad manifest",
        &lab,
        &agent,
        &without_e1,
        Duration::from_secs(2),
    );
    write_feed(&py, &feed_dir, &events(1_700_000_100, true, true), None);
    wait_enforced("good manifest again", &lab, &agent, "misp", &with_e2);
    wait_recovered("good manifest again", &lab, &agent, "misp");
}

/// How the restSearch server answers.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Pages,
    Status(u16),
    /// A `Content-Length` larger than the body.
    Truncated,
    NotJson,
    /// A body of this many bytes.
    Oversized(usize),
    /// Page 1 whatever page is asked.
    Loop,
}

/// A MISP restSearch endpoint on the receiver's loopback: answers
/// `POST /attributes/restSearch` with `pages[page - 1]` (by the request's
/// `page`), or as `mode` says; logs `(authorization, page, limit)`.
struct Search {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    log: Arc<Mutex<Vec<(String, u64, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl Search {
    fn start(lab: &Lab, pages: Vec<Value>) -> Search {
        let listener = lab
            .receiver
            .enter(|| TcpListener::bind("127.0.0.1:0").unwrap());
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Pages));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, l, s) = (mode.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let _ = answer(sock, &pages, &m.lock().unwrap().clone(), &l);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Search {
            port,
            mode,
            log,
            stop,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for Search {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn answer(
    mut sock: TcpStream,
    pages: &[Value],
    mode: &Mode,
    log: &Mutex<Vec<(String, u64, u64)>>,
) -> std::io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let req: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    let page = req["page"].as_u64().unwrap_or(0);
    let limit = req["limit"].as_u64().unwrap_or(0);
    log.lock()
        .unwrap()
        .push((header("authorization").unwrap_or_default(), page, limit));
    let ok = |body: Vec<u8>, declared: usize| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        r.extend(body);
        r
    };
    let reply = match mode {
        Mode::Pages => {
            let body = pages
                .get((page as usize).saturating_sub(1))
                .cloned()
                .unwrap_or(json!({"response": {"Attribute": []}}));
            let b = body.to_string().into_bytes();
            let n = b.len();
            ok(b, n)
        }
        Mode::Loop => {
            let b = pages[0].to_string().into_bytes();
            let n = b.len();
            ok(b, n)
        }
        Mode::Status(code) => {
            let b = br#"{"name":"Authentication failed.","message":"Authentication failed.","url":"/attributes/restSearch"}"#.to_vec();
            let mut r = format!(
                "HTTP/1.1 {code} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            )
            .into_bytes();
            r.extend(b);
            r
        }
        Mode::Truncated => {
            let b = pages[0].to_string().into_bytes();
            let half = b[..b.len() / 2].to_vec();
            ok(half, b.len())
        }
        Mode::NotJson => ok(b"<html><body>MISP is updating</body></html>".to_vec(), 42),
        Mode::Oversized(n) => {
            let mut b = br#"{"response": {"Attribute": []}, "pad": ""#.to_vec();
            b.resize(*n, b'x');
            b.extend_from_slice(b"\"}");
            let len = b.len();
            ok(b, len)
        }
    };
    sock.write_all(&reply)?;
    sock.flush()
}

/// Write `key` into `path`, mode `mode`.
fn write_key(path: &Path, key: &str, mode: u32) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    writeln!(f, "{key}").unwrap();
}

#[test]
fn misp_rest_search_paged_with_faults() {
    let test = "misp_rest_search_paged_with_faults";
    if netns::skip_unless_root(test) {
        return;
    }
    let Some(py) = python(test) else { return };
    let lab = Lab::create();
    // One event of five address attributes: pages of 2 -> 2, 2, 1.
    let ev = json!([event(
        E1,
        "recorded for restSearch",
        1_700_000_000,
        json!([
            {"type": "ip-src", "value": "198.51.100.1"},
            {"type": "ip-dst", "value": "198.51.100.2"},
            {"type": "ip-src|port", "value": "198.51.100.3|2222"},
            {"type": "domain|ip", "value": "x.example|198.51.100.4"},
            {"type": "ip-dst", "value": "198.51.100.5", "to_ids": false},
        ]),
        json!([]),
    )]);
    let pages = write_feed(&py, &lab.dir.join("recorded"), &ev, Some(2));
    assert_eq!(pages.len(), 3);
    let server = Search::start(&lab, pages);
    let key = "4aVeryPrivateMispAuthKey0123456789abcdef";
    let key_file = lab.dir.join("misp.key");
    write_key(&key_file, key, 0o600);
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .set("reconcile_interval = \"2s\"")
        .table("[limits]\nmax_bytes = 20000\nretries = 0\ntimeout = \"2s\"\nretry_backoff = \"1s\"")
        .feed(
            "misp",
            &format!("http://127.0.0.1:{}", server.port),
            "misp",
            "1s",
        )
        .line(&format!("api_key_file = '{}'", key_file.display()))
        .table("[feed.misp]\npage_size = 2\nmax_pages = 5")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    let want = set_of([
        addr("198.51.100.1", Action::Drop),
        addr("198.51.100.2", Action::Drop),
        port("198.51.100.3/32", Proto::Tcp, 2222),
        port("198.51.100.3/32", Proto::Udp, 2222),
        addr("198.51.100.4", Action::Drop),
        addr("198.51.100.5", Action::Monitor),
    ]);
    wait_enforced("every page", &lab, &agent, "misp", &want);
    {
        let log = server.log.lock().unwrap();
        assert!(
            log.iter()
                .all(|(auth, _, limit)| auth == key && *limit == 2),
            "{log:?}"
        );
        let first: Vec<u64> = log.iter().take(3).map(|(_, p, _)| *p).collect();
        assert_eq!(first, [1, 2, 3], "pages asked until a short one");
        println!("restSearch: {} requests, pages {:?}", log.len(), first);
    }

    let faults: [(Mode, &str); 6] = [
        (Mode::Status(403), "the MISP server refused the key in"),
        (Mode::Status(500), "500"),
        (Mode::Truncated, "truncated"),
        (Mode::NotJson, "not JSON"),
        (Mode::Oversized(30_000), "larger than"),
        (Mode::Loop, "page loop"),
    ];
    for (mode, needle) in faults {
        let what = format!("{mode:?}");
        server.set(mode);
        let e = wait_failing(&what, &lab, &agent, "misp", needle);
        assert!(!e.contains(key), "the key in an error: {e}");
        holds(&what, &lab, &agent, &want, Duration::from_secs(1));
        server.set(Mode::Pages);
        wait_recovered(&format!("{what}, then good pages"), &lab, &agent, "misp");
        holds(
            &format!("{what} recovered"),
            &lab,
            &agent,
            &want,
            Duration::from_millis(500),
        );
    }
    let out = format!(
        "{}\n{}",
        agent.stderr_text(),
        agent.stdout_lines().join("\n")
    );
    assert!(!out.contains(key), "the key in the agent's output");
    assert!(out.contains("feed misp"), "{}", agent.tail(20));
}
