//! The feed-driven agent (`edge-filter run --config FILE`) against real
//! components: a real HTTP server started by the test (on the loopback of
//! the agent's own network namespace), real feed files, the real binary,
//! the kernel maps read back through the library, and real datagrams
//! through a veth pair.
//!
//! - `feeds_faults_keep_enforced_set`: a good feed, then 500s, a hang past
//!   the timeout, a truncated body, garbage, oversized bodies (with and
//!   without `Content-Length`), 304 Not Modified (the ETag honoured) and a
//!   304 to an unconditional request. After each: the kernel
//!   enforces exactly the same entries (a thread reads the maps back all
//!   along, and every read must equal the expected set), the last-known-good
//!   file is unchanged byte for byte, and the fault is in `status.json`
//!   (`last_error`) and on stderr. While the HTTP feed hangs, an edit of a
//!   file feed still applies at once.
//! - `feeds_bad_bodies_fail_and_counts_are_honest`: a feed with duplicates
//!   and a line carrying `\r` and ESC: status, metrics and check-config
//!   count the same distinct entries, and the line reaches stderr escaped.
//!   An HTML page (nothing parses) and a body 70% rejected are failed
//!   fetches (state `failing` in `status`, `edge_filter_feed_up 0`,
//!   consecutive failures, the reason in `last_error`), the kernel's set and
//!   the last-known-good file unchanged. A close-delimited body cut
//!   mid-address (`203.0.113.77` arriving as `203.0.113.7`) has its last
//!   line rejected and counted; the same bytes with a `Content-Length`
//!   (proven whole) are the producer's and enforced.
//! - `feeds_shrink_is_held_until_it_persists`: a 90% shrink is held (maps
//!   unchanged, `held` reported) on its first and second sighting and
//!   applied on the third (`hold_refreshes = 3`; the server honours ETags,
//!   so the later sightings are 304s).
//! - `feeds_force_feed_applies_held_shrink_at_once`: with an hourly
//!   refresh, `edge-filter force-feed` applies a held shrink at once; first
//!   from a server without validators (the forced refetch is a 200), then
//!   from one with an ETag (the forced refetch is a 304).
//! - `feeds_restart_with_all_feeds_down`: a file feed and an HTTP feed
//!   applied, the agent SIGKILLed, the server stopped and the file deleted:
//!   a new agent adopts the pins, enforces the same entries from the
//!   last-known-good copies (never fewer, read back all along) and reports
//!   both feeds' errors.
//! - `feeds_action_change_takes_effect_within_a_refresh`: a JSON Lines file
//!   feed monitors a sender; its datagrams arrive and `monitor_addr` counts
//!   them; the entry becomes `drop` and within one refresh they stop and
//!   `drop_addr` counts them; the entry is removed and they arrive again.
//!   Exact counts from `edge-filter stats --json`.
//! - `feeds_unchanged_body_is_not_parsed_again` (issue 16, item 2): a
//!   server without `ETag` or `Last-Modified` answers every refresh with
//!   the same body: after the first, the bodies are not parsed
//!   (`edge_filter_feed_unchanged_bodies_total` counts them) and the feed
//!   stays healthy; a changed body (the same length, then longer) is
//!   found by the probe, fetched again (`_refetches_total`), parsed and
//!   enforced at once, and the next bodies are unchanged again.
//!
//! Root only (each test prints `skipping: needs root` otherwise). Build the
//! binary first, in the same profile:
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test feeds_agent -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter::ops::status::{FeedHealth, Status};
use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::httpd::{HttpServer, Length, Reply};
use edge_filter_tests::literal::net;
use edge_filter_tests::netns::{self, Agent, Count, Lab, RECEIVER_IF, Stats};
use edge_filter_tests::{scrape, traffic, wait};
use ipnet::IpNet;

/// The line a config agent prints once its interface is attached or adopted.
const READY: &str = "ready: ef-rcv";
/// How long a fault may take to show up in `status.json`.
const REPORT_BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Entries.

fn drop_(s: &str) -> Entry {
    Entry::new(net(s), None, Action::Drop)
}

fn monitor(s: &str) -> Entry {
    Entry::new(net(s), None, Action::Monitor)
}

fn with_port(mut e: Entry, proto: Proto, port: u16, side: Side) -> Entry {
    e.port = Some(PortMatch { proto, port, side });
    e
}

/// The entry set the kernel should hold for `entries` (no allowlist), in
/// the order `to_entry_set` returns.
fn set_of(entries: impl IntoIterator<Item = Entry>) -> EntrySet {
    let mut entries: Vec<Entry> = entries.into_iter().collect();
    entries.sort();
    entries.dedup();
    EntrySet {
        allow: Vec::new(),
        entries,
    }
}

fn union(a: &EntrySet, b: &EntrySet) -> EntrySet {
    set_of(a.entries.iter().chain(&b.entries).copied())
}

fn show(set: &EntrySet) -> String {
    let mut s: Vec<String> = set.entries.iter().map(|e| e.to_string()).collect();
    s.extend(set.allow.iter().map(|n| format!("allow {n}")));
    format!("{} entries [{}]", s.len(), s.join(", "))
}

/// A plain list of `entries` (drop, no ports), with a header comment.
fn plain(entries: &[Entry]) -> String {
    let mut t = String::from("# edge-filter test feed\n");
    for e in entries {
        t.push_str(&format!("{}\n", e.net));
    }
    t
}

// ---------------------------------------------------------------------------
// Config and status.

struct FeedDef {
    name: &'static str,
    source: String,
    format: &'static str,
    refresh: &'static str,
}

impl FeedDef {
    fn http(
        name: &'static str,
        srv: &HttpServer,
        format: &'static str,
        refresh: &'static str,
    ) -> Self {
        FeedDef {
            name,
            source: srv.url(&format!("/{name}.txt")),
            format,
            refresh,
        }
    }

    fn file(name: &'static str, path: &Path, format: &'static str, refresh: &'static str) -> Self {
        FeedDef {
            name,
            source: format!("file:{}", path.display()),
            format,
            refresh,
        }
    }
}

/// Write the agent's config into the lab's directory: the receiver's veth,
/// the lab's pin root, a state directory in the lab's directory.
fn write_config(lab: &Lab, feeds: &[FeedDef], limits: &str, safety: &str) -> PathBuf {
    let mut c = AgentConfig::new(lab, &state_dir(lab))
        .table(&format!("[limits]\n{limits}"))
        .table(&format!("[safety]\n{safety}"));
    for f in feeds {
        c = c.feed(f.name, &f.source, f.format, f.refresh);
    }
    c.write(lab)
}

fn state_dir(lab: &Lab) -> PathBuf {
    lab.dir.join("state")
}

fn status_text(lab: &Lab) -> String {
    std::fs::read_to_string(state_dir(lab).join("status.json")).unwrap_or_default()
}

fn status(lab: &Lab) -> Option<Status> {
    serde_json::from_str(&status_text(lab)).ok()
}

fn health(lab: &Lab, feed: &str) -> Option<FeedHealth> {
    status(lab)?.feeds.into_iter().find(|f| f.name == feed)
}

/// The bytes of `feed`'s last-known-good file (panics when absent).
fn lkg_bytes(lab: &Lab, feed: &str) -> Vec<u8> {
    let p = state_dir(lab).join(format!("lkg/{feed}.lkg"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn start(lab: &Lab, config: &Path) -> Agent {
    let agent = lab.start_config_agent(config);
    agent.wait_ready_line(READY);
    agent
}

/// Poll `f` every 50 ms until it returns `Some`, at most `bound`; panics
/// with the status file and the agent's output otherwise (or when the agent
/// exits). Returns the value and how long it took.
fn wait_until<T>(
    what: &str,
    bound: Duration,
    lab: &Lab,
    agent: &Agent,
    f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let context = || {
        format!(
            "enforced: {}\nstatus.json: {}\n",
            lab.try_enforced().map(|s| show(&s)).unwrap_or_else(|e| e),
            status_text(lab)
        )
    };
    wait::poll_with(what, bound, agent, context, f)
}

/// Wait until the kernel enforces exactly `want`.
fn wait_enforced(
    what: &str,
    bound: Duration,
    lab: &Lab,
    agent: &Agent,
    want: &EntrySet,
) -> Duration {
    wait_until(what, bound, lab, agent, || {
        (lab.try_enforced().ok().as_ref() == Some(want)).then_some(())
    })
    .1
}

fn assert_enforced(what: &str, lab: &Lab, agent: &Agent, want: &EntrySet) {
    let got = lab.enforced();
    assert!(
        &got == want,
        "{what}: the kernel enforces\n  {}\nexpected\n  {}\nstatus.json: {}\n{}",
        show(&got),
        show(want),
        status_text(lab),
        agent.tail(40)
    );
}

/// A stderr line of the agent containing every one of `needles`.
fn stderr_line(agent: &Agent, needles: &[&str]) -> Option<String> {
    agent
        .stderr_text()
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
}

// ---------------------------------------------------------------------------
// Reading the maps back all along.

/// What a [`Watch`] accepts.
#[derive(Clone, Debug)]
enum Accept {
    /// Exactly this set.
    Exactly(EntrySet),
    /// A sync from one set to another in progress: only entries of either,
    /// and every address/port key of both present all along (an entry
    /// present before and after an update is never absent in between).
    Between(EntrySet, EntrySet),
}

impl Accept {
    fn admits(&self, got: &EntrySet) -> bool {
        match self {
            Accept::Exactly(want) => got == want,
            Accept::Between(a, b) => {
                let key = |e: &Entry| (e.net, e.port);
                let keys = |s: &EntrySet| s.entries.iter().map(key).collect::<BTreeSet<_>>();
                let got_keys = keys(got);
                got.allow == a.allow
                    && got.allow == b.allow
                    && got_keys.len() == got.entries.len()
                    && got
                        .entries
                        .iter()
                        .all(|e| a.entries.contains(e) || b.entries.contains(e))
                    && keys(a).intersection(&keys(b)).all(|k| got_keys.contains(k))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Accept::Exactly(s) => show(s),
            Accept::Between(a, b) => format!("between {} and {}", show(a), show(b)),
        }
    }
}

/// A thread that reads what the kernel enforces every few milliseconds and
/// records every read that its [`Accept`] does not admit.
struct Watch {
    lab_bpffs: PathBuf,
    accept: Arc<Mutex<Accept>>,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    bad: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watch {
    fn start(lab: &Lab, want: &EntrySet) -> Watch {
        let accept = Arc::new(Mutex::new(Accept::Exactly(want.clone())));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (a, s, r, b) = (accept.clone(), stop.clone(), reads.clone(), bad.clone());
        let bpffs = lab.bpffs.clone();
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            let paths = edge_filter::kernel::paths::Paths::new(&bpffs);
            while !s.load(Ordering::SeqCst) {
                let got = edge_filter::kernel::attach::open_pinned(&paths, RECEIVER_IF)
                    .map_err(|e| e.to_string())
                    .and_then(|m| m.read().map_err(|e| e.to_string()))
                    .map(|d| d.to_entry_set());
                // Judged by the acceptance as it is *after* the read: the
                // test only narrows it once it has seen the new state.
                let ok = match &got {
                    Ok(set) => lock(&a).admits(set),
                    Err(_) => false,
                };
                r.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    let mut bad = lock(&b);
                    if bad.len() < 5 {
                        bad.push(format!(
                            "at {:.3?}: {}",
                            t0.elapsed(),
                            match got {
                                Ok(set) => show(&set),
                                Err(e) => format!("read failed: {e}"),
                            }
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Watch {
            lab_bpffs: lab.bpffs.clone(),
            accept,
            stop,
            reads,
            bad,
            thread: Some(thread),
        }
    }

    /// From now on accept exactly `want`.
    fn exactly(&self, want: &EntrySet) {
        *lock(&self.accept) = Accept::Exactly(want.clone());
    }

    /// From now on accept `from`, `to`, and any state of a sync between them.
    fn between(&self, from: &EntrySet, to: &EntrySet) {
        *lock(&self.accept) = Accept::Between(from.clone(), to.clone());
    }

    /// Panic when any read so far was not accepted.
    fn check(&self, what: &str, agent: &Agent) {
        let bad = lock(&self.bad).clone();
        let accept = lock(&self.accept).describe();
        assert!(
            bad.is_empty(),
            "{what}: the kernel maps under {} held an unexpected set while watched \
             ({} reads; accepting {accept}):\n  {}\n{}",
            self.lab_bpffs.display(),
            self.reads.load(Ordering::Relaxed),
            bad.join("\n  "),
            agent.tail(40)
        );
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Feed faults.

const FAULT_LIMITS: &str = "timeout = \"500ms\"\nretries = 1\nmax_bytes = 2000";
const SAFETY: &str = "max_shrink = 0.5\nhold_refreshes = 3";

/// The faults test's state.
struct FaultRun<'a> {
    lab: &'a Lab,
    agent: &'a Agent,
    srv: &'a HttpServer,
    watch: &'a Watch,
    good: Reply,
    /// What the kernel must enforce.
    want: EntrySet,
    /// Entries of the HTTP feed.
    web_entries: usize,
}

impl FaultRun<'_> {
    fn health(&self) -> Option<FeedHealth> {
        health(self.lab, "web")
    }

    /// Serve `reply`; wait until `web`'s `last_error` contains `needle` and
    /// the failure repeats once more; check nothing changed (the kernel's
    /// set, and the last-known-good file byte for byte); then serve the
    /// good feed again and wait until the feed is healthy.
    fn failure(&self, label: &str, reply: Reply, needle: &str) {
        let t = Instant::now();
        self.srv.set(reply);
        let (h, took) = wait_until(
            &format!("{label}: last_error with `{needle}`"),
            REPORT_BOUND,
            self.lab,
            self.agent,
            || {
                let h = self.health()?;
                h.last_error.as_deref()?.contains(needle).then_some(h)
            },
        );
        assert!(
            h.consecutive_failures >= 1 && h.held.is_none(),
            "{label}: {h:?}"
        );
        assert_eq!(h.entries, self.web_entries, "{label}: {h:?}");
        assert_enforced(label, self.lab, self.agent, &self.want);
        let err = h.last_error.clone().unwrap_or_default();
        // Read once the failure shows: every fetch from now on gets `reply`.
        let lkg = lkg_bytes(self.lab, "web");
        // The same failure once more: still nothing changes.
        wait_until(
            &format!("{label}: a second failed refresh"),
            REPORT_BOUND,
            self.lab,
            self.agent,
            || (self.health()?.consecutive_failures >= 2).then_some(()),
        );
        assert_enforced(
            &format!("{label} (again)"),
            self.lab,
            self.agent,
            &self.want,
        );
        assert!(
            lkg_bytes(self.lab, "web") == lkg,
            "{label}: the last-known-good copy of web changed"
        );
        assert!(
            stderr_line(
                self.agent,
                &[
                    "feed web: ",
                    needle,
                    "last-known-good entries stay enforced"
                ]
            )
            .is_some(),
            "{label}: not on stderr\n{}",
            self.agent.tail(30)
        );
        self.recover(label);
        self.watch.check(label, self.agent);
        println!(
            "faults: {label}: reported after {took:.1?} as `{err}`; enforced set unchanged ({:.1?} in all)",
            t.elapsed()
        );
    }

    /// Serve the good feed again; wait until `web` is healthy.
    fn recover(&self, label: &str) {
        self.srv.set(self.good.clone());
        wait_until(
            &format!("{label}: recovery"),
            REPORT_BOUND,
            self.lab,
            self.agent,
            || {
                let h = self.health()?;
                (h.last_error.is_none() && h.consecutive_failures == 0 && h.held.is_none())
                    .then_some(())
            },
        );
        assert_enforced(
            &format!("{label} (recovered)"),
            self.lab,
            self.agent,
            &self.want,
        );
    }
}

/// Deterministic junk: an HTML error page then binary bytes.
fn garbage() -> Vec<u8> {
    let mut g = b"<html><head><title>502 Bad Gateway</title></head>\n<body><h1>Bad Gateway</h1>\n<p>The upstream server returned an invalid response.</p></body></html>\n".to_vec();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..600 {
        // xorshift32
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        g.push((x >> 24) as u8);
    }
    g
}

#[test]
fn feeds_faults_keep_enforced_set() {
    if netns::skip_unless_root("feeds_faults_keep_enforced_set") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    let web = vec![
        drop_("198.51.100.1"),
        drop_("198.51.100.2"),
        drop_("198.51.100.3"),
        drop_("203.0.113.0/26"),
        drop_("2001:db8:77::/48"),
        drop_("2001:db8:78::1"),
    ];
    let local1 = vec![drop_("192.0.2.200")];
    let local2 = vec![drop_("192.0.2.200"), drop_("192.0.2.201")];
    let good = Reply::ok(plain(&web)).etag("v1");
    let srv = HttpServer::start_in(&lab.receiver, good.clone());
    let local = lab.write_file("local.txt", &plain(&local1));
    let cfg = write_config(
        &lab,
        &[
            FeedDef::http("web", &srv, "plain", "1s"),
            FeedDef::file("local", &local, "plain", "1s"),
        ],
        FAULT_LIMITS,
        SAFETY,
    );
    let agent = start(&lab, &cfg);
    let mut want = set_of(web.iter().chain(&local1).copied());
    let took = wait_enforced("the good feed", REPORT_BOUND, &lab, &agent, &want);
    println!(
        "faults: good feed enforced {took:.1?} after ready: {}",
        show(&want)
    );
    let first = srv.requests();
    assert!(
        first[0].status == 200 && first[0].header("If-None-Match").is_none(),
        "first request: {:?}",
        first[0]
    );
    assert!(
        state_dir(&lab).join("lkg/web.lkg").is_file(),
        "no last-known-good copy of web"
    );
    let watch = Watch::start(&lab, &want);
    let url = srv.url("/web.txt");
    let mut run = FaultRun {
        lab: &lab,
        agent: &agent,
        srv: &srv,
        watch: &watch,
        good: good.clone(),
        want: want.clone(),
        web_entries: web.len(),
    };

    // 304 Not Modified: every refresh is conditional on the ETag and
    // answered 304; the feed stays healthy and nothing changes.
    let n0 = srv.request_count();
    let last_success = health(&lab, "web").and_then(|h| h.last_success);
    wait_until(
        "three conditional refreshes",
        REPORT_BOUND,
        &lab,
        &agent,
        || (srv.request_count() >= n0 + 3).then_some(()),
    );
    for r in &srv.requests()[n0..] {
        assert_eq!(r.header("If-None-Match"), Some("\"v1\""), "{r:?}");
        assert_eq!(r.status, 304, "{r:?}");
    }
    let (h, _) = wait_until(
        "last_success after a 304",
        REPORT_BOUND,
        &lab,
        &agent,
        || {
            let h = health(&lab, "web")?;
            (h.last_success > last_success).then_some(h)
        },
    );
    assert!(h.last_error.is_none() && h.held.is_none(), "{h:?}");
    assert_eq!(h.entries, web.len());
    assert_enforced("304 Not Modified", &lab, &agent, &want);
    watch.check("304 Not Modified", &agent);
    println!("faults: 304: If-None-Match sent, 304 answered, feed healthy, set unchanged");

    // 500s (retried once, then the refresh fails).
    run.failure(
        "HTTP 500",
        Reply::status(500, "internal error\n"),
        &format!("{url}: HTTP 500 Internal Server Error after 2 attempts"),
    );

    // A hang past the timeout; meanwhile a file feed's edit still applies.
    let t = Instant::now();
    srv.set(good.clone().delay(Duration::from_secs(20)));
    wait_until("the hang starts", REPORT_BOUND, &lab, &agent, || {
        srv.requests()
            .last()
            .is_some_and(|r| r.at > t)
            .then_some(())
    });
    let want2 = set_of(web.iter().chain(&local2).copied());
    watch.between(&want, &want2);
    lab.replace_file("local.txt", &plain(&local2));
    let took = wait_enforced(
        "a file feed edit while the HTTP feed hangs",
        Duration::from_secs(3),
        &lab,
        &agent,
        &want2,
    );
    watch.exactly(&want2);
    watch.check("file feed edit during the hang", &agent);
    println!("faults: hang: a file feed edit applied after {took:.1?} while the HTTP feed hangs");
    want = want2;
    run.want = want.clone();
    run.failure(
        "hang",
        good.clone().delay(Duration::from_secs(20)),
        &format!("{url}: no complete response within 500ms after 2 attempts"),
    );

    // A truncated body: Content-Length larger than what is sent, then close.
    let part = plain(&web[..2]);
    let n = part.len();
    run.failure(
        "truncated body",
        Reply::ok(part).length(Length::Lie(n + 1000)),
        &format!("{url}: body truncated"),
    );
    assert!(
        stderr_line(
            &agent,
            &["feed web: ", "body truncated", "after 2 attempts"]
        )
        .is_some(),
        "truncation not retried\n{}",
        agent.tail(30)
    );

    // Oversized: valid entries, more than max_bytes; announced, then not.
    let big: Vec<Entry> = (0..200u32)
        .map(|i| drop_(&Ipv4Addr::from(0xc633_6400 + i).to_string()))
        .collect();
    let big = plain(&big);
    assert!(big.len() > 2000);
    run.failure(
        "oversized body (Content-Length)",
        Reply::ok(big.clone()),
        &format!("{url}: larger than the 2000-byte limit"),
    );
    run.failure(
        "oversized body (no Content-Length)",
        Reply::ok(big).length(Length::Close),
        &format!("{url}: larger than the 2000-byte limit"),
    );

    // Garbage: every line rejected. A failed fetch, not an empty feed (it
    // never reaches the shrink guard, and never replaces the copy).
    run.failure(
        "garbage",
        Reply::ok(garbage()),
        "lines parsed (every one rejected; line 1: ",
    );

    // A 304 to an unconditional request (a broken cache in front of the
    // feed): once the copy in hand has no validators, a 304 cannot mean
    // "keep it" and must fail the refresh.
    let n0 = srv.request_count();
    srv.set(Reply::ok(plain(&web)));
    wait_until(
        "a copy without validators",
        REPORT_BOUND,
        &lab,
        &agent,
        || {
            let reqs = srv.requests();
            reqs[n0..]
                .iter()
                .any(|r| r.status == 200 && r.header("If-None-Match").is_none())
                .then_some(())
        },
    );
    let n0 = srv.request_count();
    run.failure(
        "304 to an unconditional request",
        Reply::status(304, ""),
        &format!("{url}: HTTP 304 Not Modified"),
    );
    let bogus: Vec<_> = srv.requests()[n0..]
        .iter()
        .filter(|r| r.status == 304)
        .cloned()
        .collect();
    assert!(
        !bogus.is_empty() && bogus.iter().all(|r| r.header("If-None-Match").is_none()),
        "{bogus:?}"
    );

    assert!(agent.is_running(), "{}", agent.tail(30));
    assert!(watch.reads() > 100, "only {} map reads", watch.reads());
    watch.check("all faults", &agent);
    println!(
        "faults: done in {:.1?} ({} map reads, all equal to the expected set)",
        t0.elapsed(),
        watch.reads()
    );
}

// ---------------------------------------------------------------------------
// Shrink guard.

/// 18 addresses and 2 prefixes; the shrunk copy keeps 2 of the 20.
fn shrink_sets() -> (Vec<Entry>, Vec<Entry>) {
    let mut full: Vec<Entry> = (1..=18)
        .map(|i| drop_(&format!("198.51.100.{i}")))
        .collect();
    full.push(drop_("203.0.113.0/28"));
    full.push(drop_("2001:db8:99::/48"));
    let shrunk = vec![full[0], full[18]];
    (full, shrunk)
}

#[test]
fn feeds_shrink_is_held_until_it_persists() {
    if netns::skip_unless_root("feeds_shrink_is_held_until_it_persists") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    let (full, shrunk) = shrink_sets();
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok(plain(&full)).etag("v1"));
    let cfg = write_config(
        &lab,
        &[FeedDef::http("web", &srv, "plain", "1s")],
        FAULT_LIMITS,
        SAFETY,
    );
    let agent = start(&lab, &cfg);
    let want_full = set_of(full.iter().copied());
    let want_shrunk = set_of(shrunk.iter().copied());
    wait_enforced("the full feed", REPORT_BOUND, &lab, &agent, &want_full);
    let watch = Watch::start(&lab, &want_full);

    // The shrink persists on every refresh (a 200, then 304s for its ETag).
    let n0 = srv.request_count();
    srv.set(Reply::ok(plain(&shrunk)).etag("s1"));
    // The hint names the config, as an absolute path, to paste anywhere.
    let abs_cfg = std::path::absolute(&cfg).unwrap();
    let msg = |seen: u32| {
        format!(
            "update from 20 to 2 entries (90% fewer) held: seen {seen} of 3 refreshes (or `edge-filter force-feed web --config {}`)",
            abs_cfg.display()
        )
    };
    let mut seen_msgs = BTreeSet::new();
    let mut held_twice_and_unchanged = false;
    let (applied_at, took) = wait_until(
        "the shrink applied",
        Duration::from_secs(15),
        &lab,
        &agent,
        || {
            // Status first, then the maps: a "seen 2" status and the full set
            // read after it mean the second sighting did not apply it. Only
            // then may the maps start to change (the watch checks every read).
            let held = health(&lab, "web").and_then(|h| h.held);
            let now = lab.try_enforced().ok()?;
            if let Some(m) = held {
                if m == msg(2) && now == want_full && !held_twice_and_unchanged {
                    held_twice_and_unchanged = true;
                    watch.between(&want_full, &want_shrunk);
                }
                seen_msgs.insert(m);
            }
            (now == want_shrunk).then(Instant::now)
        },
    );
    let reqs = srv.requests()[n0..].to_vec();
    assert!(
        seen_msgs.contains(&msg(1)) && held_twice_and_unchanged,
        "the shrink was not reported held (with the maps unchanged) on its first and second \
         sightings; held messages seen: {seen_msgs:?}\nrequests: {reqs:?}\n{}",
        agent.tail(30)
    );
    assert!(
        !seen_msgs.iter().any(|m| m.contains("seen 3 of")),
        "{seen_msgs:?}"
    );
    // Applied after the third sighting, not before, and promptly.
    assert!(
        reqs.len() >= 3,
        "applied after {} requests: {reqs:?}",
        reqs.len()
    );
    assert_eq!(reqs[0].status, 200, "{:?}", reqs[0]);
    for r in &reqs[1..3] {
        assert_eq!(r.status, 304, "{r:?}");
        assert_eq!(r.header("If-None-Match"), Some("\"s1\""), "{r:?}");
    }
    assert!(
        reqs[2].at < applied_at && applied_at - reqs[2].at < Duration::from_millis(1500),
        "applied {:?} after the third sighting",
        applied_at.checked_duration_since(reqs[2].at)
    );
    // The agent writes status after the maps (with datapath v2, after the
    // plan's last grace periods), so it may lag them briefly.
    wait_until(
        "status to report the shrink applied",
        Duration::from_secs(5),
        &lab,
        &agent,
        || health(&lab, "web").filter(|h| h.held.is_none() && h.entries == 2),
    );
    assert!(
        stderr_line(&agent, &["feed web: ", &msg(1)]).is_some()
            && stderr_line(&agent, &["feed web: ", &msg(2)]).is_some(),
        "held updates not on stderr\n{}",
        agent.tail(30)
    );
    let lkg = edge_filter::intel::state::StateDir::read_only(state_dir(&lab))
        .load_lkg("web")
        .expect("lkg/web.lkg")
        .expect("a copy of web");
    assert_eq!(lkg.entries.len(), 2, "{lkg:?}");
    watch.exactly(&want_shrunk);
    std::thread::sleep(Duration::from_millis(1500));
    watch.check("the applied shrink", &agent);
    println!(
        "shrink: held on sightings 1 and 2, applied {:.0?} after sighting 3 ({took:.1?} after the change); done in {:.1?}",
        applied_at - reqs[2].at,
        t0.elapsed()
    );
}

/// How soon `force-feed` must apply a held update.
const FORCE_BOUND: Duration = Duration::from_secs(3);

/// Run `edge-filter force-feed web --config CFG`; returns its stdout.
fn force_feed(lab: &Lab, cfg: &Path, agent: &Agent) -> String {
    let mut cmd = lab.edge_filter_cmd();
    cmd.args(["force-feed", "web", "--config"]).arg(cfg);
    let out = netns::run_ok(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!(
            "asked the agent (pid {}) to refetch now",
            agent.pid()
        )),
        "force-feed did not signal the agent: {stdout}"
    );
    stdout
}

/// SIGHUP the agent and wait until the server has answered one more
/// request and `web`'s status shows `f` true.
fn refetch<T>(
    what: &str,
    lab: &Lab,
    agent: &Agent,
    srv: &HttpServer,
    mut f: impl FnMut(&FeedHealth) -> Option<T>,
) -> T {
    let n = srv.request_count();
    assert!(agent.signal(libc::SIGHUP), "agent gone\n{}", agent.tail(30));
    wait_until(what, REPORT_BOUND, lab, agent, || {
        if srv.request_count() <= n {
            return None;
        }
        f(&health(lab, "web")?)
    })
    .0
}

#[test]
fn feeds_force_feed_applies_held_shrink_at_once() {
    if netns::skip_unless_root("feeds_force_feed_applies_held_shrink_at_once") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    let (full, shrunk) = shrink_sets();
    let want_full = set_of(full.iter().copied());
    let want_shrunk = set_of(shrunk.iter().copied());
    // A refresh of an hour: every fetch after the first is a SIGHUP's.
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok(plain(&full)));
    let cfg = write_config(
        &lab,
        &[FeedDef::http("web", &srv, "plain", "1h")],
        FAULT_LIMITS,
        SAFETY,
    );
    let agent = start(&lab, &cfg);
    wait_enforced("the full feed", REPORT_BOUND, &lab, &agent, &want_full);
    let held1 = "update from 20 to 2 entries (90% fewer) held: seen 1 of 3 refreshes";

    for (round, etag) in [("no validators", None), ("ETag", Some("s"))] {
        // The shrink, fetched once: held.
        srv.set(match etag {
            Some(t) => Reply::ok(plain(&shrunk)).etag(&format!("{t}-{}", srv.request_count())),
            None => Reply::ok(plain(&shrunk)),
        });
        let h = refetch("the shrink held", &lab, &agent, &srv, |h| {
            h.held.as_deref()?.contains(held1).then(|| h.clone())
        });
        assert_enforced(&format!("{round}: held"), &lab, &agent, &want_full);
        assert_eq!(h.entries, 20, "{h:?}");

        // Forced: applied at once (the forced refetch is a 200 without
        // validators, a 304 with the ETag).
        let n = srv.request_count();
        let t = Instant::now();
        force_feed(&lab, &cfg, &agent);
        let applied = wait::within(FORCE_BOUND, || {
            (lab.try_enforced().ok()? == want_shrunk).then_some(())
        });
        let took = t.elapsed();
        let reqs = srv.requests()[n..].to_vec();
        if applied.is_none() {
            let flag = state_dir(&lab).join("force/web");
            panic!(
                "{round}: `edge-filter force-feed web` did not apply the held shrink within \
                 {FORCE_BOUND:?} (refresh is 1h): the forced refetch was answered {:?} \
                 (If-None-Match {:?}); the force flag {} {}; status: held {:?}, entries {:?}; \
                 the kernel enforces {}\n{}",
                reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
                reqs.iter()
                    .map(|r| r.header("If-None-Match"))
                    .collect::<Vec<_>>(),
                flag.display(),
                if flag.exists() {
                    "is still there (not consumed)"
                } else {
                    "was consumed"
                },
                health(&lab, "web").and_then(|h| h.held),
                health(&lab, "web").map(|h| h.entries),
                show(&lab.enforced()),
                agent.tail(12)
            );
        }
        // Status is written after the maps, once the sync returns: with
        // datapath v2 the kernel enforces the new set a grace period or two
        // (tens of ms) before the plan's last removals and grace periods
        // end. Give it a moment to follow.
        wait_until(
            &format!("{round}: status to report the shrink applied"),
            Duration::from_secs(5),
            &lab,
            &agent,
            || health(&lab, "web").filter(|h| h.held.is_none() && h.entries == 2),
        );
        println!(
            "force-feed ({round}): applied {:.1?} after force-feed (forced refetch answered {:?})",
            took,
            reqs.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        if etag.is_some() {
            assert!(
                reqs.iter().any(|r| r.status == 304),
                "the forced refetch was not conditional: {reqs:?}"
            );
        }

        // Back to the full feed (growth: applied at once).
        srv.set(match etag {
            Some(t) => Reply::ok(plain(&full)).etag(&format!("{t}-full")),
            None => Reply::ok(plain(&full)),
        });
        refetch("the full feed again", &lab, &agent, &srv, |h| {
            (h.entries == 20).then_some(())
        });
        wait_enforced(
            &format!("{round}: the full feed again"),
            REPORT_BOUND,
            &lab,
            &agent,
            &want_full,
        );
    }
    println!("force-feed: done in {:.1?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// 2. Restart with every feed down.

#[test]
fn feeds_restart_with_all_feeds_down() {
    if netns::skip_unless_root("feeds_restart_with_all_feeds_down") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    let remote = vec![
        drop_("198.51.100.11"),
        drop_("198.51.100.12"),
        drop_("203.0.113.64/27"),
        drop_("2001:db8:aa::/48"),
    ];
    let local_jsonl = concat!(
        "{\"net\":\"192.0.2.50\",\"indicator\":\"L-1\"}\n",
        "{\"net\":\"2001:db8:5::/48\",\"action\":\"monitor\"}\n",
        "{\"net\":\"203.0.113.9\",\"proto\":\"tcp\",\"port\":443}\n",
        "{\"net\":\"198.18.0.0/24\",\"proto\":\"udp\",\"port\":53,\"side\":\"dst\",\"action\":\"monitor\"}\n",
    );
    let local = set_of([
        drop_("192.0.2.50"),
        monitor("2001:db8:5::/48"),
        with_port(drop_("203.0.113.9"), Proto::Tcp, 443, Side::Src),
        with_port(monitor("198.18.0.0/24"), Proto::Udp, 53, Side::Dst),
    ]);
    let want = union(&set_of(remote.iter().copied()), &local);
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok(plain(&remote)).etag("r1"));
    let local_path = lab.write_file("local.jsonl", local_jsonl);
    let cfg = write_config(
        &lab,
        &[
            FeedDef::http("remote", &srv, "plain", "1s"),
            FeedDef::file("local", &local_path, "jsonl", "1s"),
        ],
        FAULT_LIMITS,
        SAFETY,
    );
    let agent = start(&lab, &cfg);
    let took = wait_enforced("both feeds", REPORT_BOUND, &lab, &agent, &want);
    println!(
        "restart: both feeds enforced {took:.1?} after ready: {}",
        show(&want)
    );
    for f in ["remote", "local"] {
        wait_until(&format!("lkg/{f}.lkg"), REPORT_BOUND, &lab, &agent, || {
            state_dir(&lab)
                .join(format!("lkg/{f}.lkg"))
                .is_file()
                .then_some(())
        });
    }
    let watch = Watch::start(&lab, &want);

    // SIGKILL, then every feed becomes unreachable.
    let st = agent.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "{st}"
    );
    drop(agent);
    let url = srv.url("/remote.txt");
    let addr = srv.addr();
    srv.stop();
    std::fs::remove_file(&local_path).expect("delete the local feed");
    assert!(
        lab.receiver
            .enter(|| std::net::TcpStream::connect(addr))
            .is_err(),
        "the HTTP feed is still reachable"
    );

    // A new agent with the same config: same entries, from last-known-good.
    let t = Instant::now();
    let agent = start(&lab, &cfg);
    let ready = t.elapsed();
    assert_enforced("right after the restart", &lab, &agent, &want);
    let adopted = stderr_line(&agent, &["adopted ", RECEIVER_IF]).unwrap_or_default();
    assert!(
        adopted.contains(&format!(
            "with {} entries (0 added, 0 removed)",
            want.entries.len()
        )),
        "no adoption without changes: `{adopted}`\n{}",
        agent.tail(30)
    );
    for f in ["remote", "local"] {
        assert!(
            stderr_line(
                &agent,
                &[&format!("feed {f}: "), "from last-known-good copy"]
            )
            .is_some(),
            "feed {f}: no last-known-good load logged\n{}",
            agent.tail(30)
        );
    }
    let (hs, took) = wait_until(
        "both feeds' errors reported",
        REPORT_BOUND,
        &lab,
        &agent,
        || {
            let r = health(&lab, "remote")?;
            let l = health(&lab, "local")?;
            let ok = |h: &FeedHealth, needle: &str| {
                h.consecutive_failures >= 2
                    && h.last_error.as_deref().is_some_and(|e| e.contains(needle))
            };
            (ok(&r, &format!("{url}: connection failed")) && ok(&l, "No such file or directory"))
                .then_some((r, l))
        },
    );
    for (h, n) in [(&hs.0, 4), (&hs.1, 4)] {
        assert!(
            h.from_last_known_good && h.entries == n && h.held.is_none(),
            "{h:?}"
        );
        assert!(
            stderr_line(
                &agent,
                &[
                    &format!("feed {}: ", h.name),
                    "last-known-good entries stay enforced"
                ]
            )
            .is_some(),
            "feed {}: error not on stderr\n{}",
            h.name,
            agent.tail(30)
        );
    }
    let st = status(&lab).expect("status.json");
    assert_eq!(st.entries, want.entries.len(), "{st:?}");
    assert_enforced("with every feed down", &lab, &agent, &want);
    watch.check("restart with every feed down", &agent);
    assert!(
        !agent
            .stderr_text()
            .lines()
            .any(|l| l.contains(" removed") && !l.contains(" 0 removed")),
        "the agent removed entries\n{}",
        agent.tail(30)
    );
    println!(
        "restart: ready {ready:.1?} after start with every feed down; errors reported after {took:.1?}: \
         remote `{}`, local `{}`; {} map reads all equal; done in {:.1?}",
        hs.0.last_error.unwrap_or_default(),
        hs.1.last_error.unwrap_or_default(),
        watch.reads(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2b. Bodies that are not a usable copy; honest counts; escaped logs.

/// The agent's default metrics port (on 127.0.0.1 inside its namespace).
const METRICS_PORT: u16 = 9436;

/// No raw control character but newlines in `text`.
fn assert_no_controls(what: &str, text: &str) {
    let bad: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| c.is_control() && *c != '\n')
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: raw control characters {bad:?} in\n{text}"
    );
}

#[test]
fn feeds_bad_bodies_fail_and_counts_are_honest() {
    if netns::skip_unless_root("feeds_bad_bodies_fail_and_counts_are_honest") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    // 7 entries listed, 5 distinct; one line with control characters.
    let good = concat!(
        "# web feed\n",
        "198.51.100.1\n",
        "198.51.100.2\n",
        "198.51.100.2\n",
        "203.0.113.0/26\n",
        "203.0.113.0/26\n",
        "2001:db8:77::/48\n",
        "203.0.113.99\r[ERROR] forged line \x1b[31mred\n",
        "203.0.113.77\n",
    );
    let web = set_of(
        [
            "198.51.100.1",
            "198.51.100.2",
            "203.0.113.0/26",
            "2001:db8:77::/48",
            "203.0.113.77",
        ]
        .map(drop_),
    );
    let local_text = "192.0.2.200\n192.0.2.200\n192.0.2.201\n";
    let local = set_of(["192.0.2.200", "192.0.2.201"].map(drop_));
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok(good).etag("g1"));
    let local_path = lab.write_file("local.txt", local_text);
    let cfg = write_config(
        &lab,
        &[
            FeedDef::http("web", &srv, "plain", "1s"),
            FeedDef::file("local", &local_path, "plain", "1s"),
        ],
        FAULT_LIMITS,
        SAFETY,
    );
    let cfg_s = cfg.display().to_string();
    let agent = start(&lab, &cfg);
    let mut want = union(&web, &local);
    wait_enforced("the good feeds", REPORT_BOUND, &lab, &agent, &want);
    let (h, _) = wait_until("web healthy", REPORT_BOUND, &lab, &agent, || {
        health(&lab, "web").filter(|h| h.last_success.is_some())
    });

    // Counts: distinct entries, the same on every surface.
    assert_eq!((h.entries, h.rejected_lines), (5, 1), "{h:?}");
    assert_eq!(health(&lab, "local").map(|h| h.entries), Some(2));
    let (m, body) = scrape::metrics(&lab.receiver, METRICS_PORT);
    for (feed, n) in [("web", 5.0), ("local", 2.0)] {
        assert_eq!(
            m.get(&format!("edge_filter_feed_entries{{feed=\"{feed}\"}}"))
                .copied(),
            Some(n),
            "{feed}:\n{body}"
        );
    }
    let cc = lab.ef_ok_unpinned(&["check-config", &cfg_s]);
    assert!(
        cc.contains("3 entries parsed, 2 distinct: 2 drop, 0 monitor"),
        "check-config:\n{cc}"
    );
    let st_text = lab.status_unpinned(&["--config", &cfg_s, "--json"]).0;
    let st_json: serde_json::Value =
        serde_json::from_str(&st_text).unwrap_or_else(|e| panic!("status --json: {e}\n{st_text}"));
    let feed_json = |st: &serde_json::Value, name: &str| {
        st["feeds"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no feed {name}: {st:#}"))
    };
    assert_eq!(feed_json(&st_json, "web")["entries"], 5);
    assert_eq!(feed_json(&st_json, "local")["entries"], 2);
    println!(
        "bad bodies: counts agree: web 5 distinct of 7 listed, local 2 of 3 (status, metrics, check-config)"
    );

    // The rejected line reaches stderr escaped, and nothing raw does.
    let forged = stderr_line(&agent, &["feed web: line 8: "])
        .unwrap_or_else(|| panic!("the rejected line is not logged\n{}", agent.tail(30)));
    assert!(
        forged.contains(r"203.0.113.99\r[ERROR] forged line \x1b[31mred"),
        "{forged}"
    );
    assert!(
        !agent
            .stderr_text()
            .lines()
            .any(|l| l.starts_with("[ERROR] forged")),
        "a forged log line\n{}",
        agent.tail(30)
    );
    assert_no_controls("agent stderr", &agent.stderr_text());
    println!("bad bodies: logged as `{forged}`");

    let lkg = lkg_bytes(&lab, "web");
    let watch = Watch::start(&lab, &want);
    // A body that is not a usable copy: a failed fetch. Status, metrics and
    // the log say why; the kernel's set and the last-known-good file stay.
    let unusable = |label: &str, body: &[u8], needle: &str| {
        let n0 = health(&lab, "web").map_or(0, |h| h.consecutive_failures);
        srv.set(Reply::ok(body.to_vec()));
        let (h, took) = wait_until(
            &format!("{label}: failing twice"),
            REPORT_BOUND,
            &lab,
            &agent,
            || {
                let h = health(&lab, "web")?;
                (h.consecutive_failures >= n0 + 2 && h.last_error.as_deref()?.contains(needle))
                    .then_some(h)
            },
        );
        assert_eq!((h.entries, h.rejected_lines), (5, 1), "{label}: {h:?}");
        assert!(h.held.is_none(), "{label}: {h:?}");
        assert_enforced(label, &lab, &agent, &want);
        assert!(
            lkg_bytes(&lab, "web") == lkg,
            "{label}: the last-known-good copy changed"
        );
        let st: serde_json::Value =
            serde_json::from_str(&lab.status_unpinned(&["--config", &cfg_s, "--json"]).0)
                .expect("status --json");
        let f = feed_json(&st, "web");
        assert_eq!(f["state"], "failing", "{label}: {f:#}");
        assert!(
            f["consecutive_failures"].as_u64() >= Some(2),
            "{label}: {f:#}"
        );
        let text = lab.status_unpinned(&["--config", &cfg_s]).0;
        assert_no_controls(&format!("{label}: status"), &text);
        let (m, body) = scrape::metrics(&lab.receiver, METRICS_PORT);
        assert_eq!(
            m.get("edge_filter_feed_up{feed=\"web\"}").copied(),
            Some(0.0),
            "{label}\n{body}"
        );
        assert!(
            m.get("edge_filter_feed_consecutive_failures{feed=\"web\"}")
                .copied()
                >= Some(2.0),
            "{label}\n{body}"
        );
        assert_eq!(
            m.get("edge_filter_feed_entries{feed=\"web\"}").copied(),
            Some(5.0),
            "{label}\n{body}"
        );
        assert!(
            stderr_line(
                &agent,
                &[
                    "feed web: ",
                    needle,
                    "last-known-good entries stay enforced"
                ]
            )
            .is_some(),
            "{label}: not on stderr\n{}",
            agent.tail(30)
        );
        assert_no_controls(&format!("{label}: agent stderr"), &agent.stderr_text());
        // Back to the good copy: 304s against the ETag kept, healthy.
        srv.set(Reply::ok(good).etag("g1"));
        wait_until(
            &format!("{label}: recovery"),
            REPORT_BOUND,
            &lab,
            &agent,
            || {
                let h = health(&lab, "web")?;
                (h.last_error.is_none() && h.consecutive_failures == 0).then_some(())
            },
        );
        assert!(
            lkg_bytes(&lab, "web") == lkg,
            "{label}: the last-known-good copy changed"
        );
        watch.check(label, &agent);
        println!(
            "bad bodies: {label}: failing after {took:.1?} as `{}`; set and last-known-good unchanged",
            h.last_error.unwrap_or_default()
        );
    };
    unusable(
        "HTML page",
        b"<html>\x1b]0;pwned\x07<head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad Gateway</h1>\n</body></html>\n",
        "0 of 4 lines parsed (every one rejected; line 1: ",
    );
    let mostly_bad = format!(
        "198.51.100.1\n198.51.100.2\n203.0.113.77\n{}",
        "<p>maintenance</p>\n".repeat(7)
    );
    unusable(
        "70% rejected",
        mostly_bad.as_bytes(),
        "rejected 70% of lines (7 of 10, limit 50%; first: line 4: ",
    );

    // Cut mid-address: the good feed without its last newline and last
    // digit, so `203.0.113.77` arrives as `203.0.113.7`.
    let cut = &good[..good.len() - 2];
    assert!(cut.ends_with("203.0.113.7"));
    let no_77: Vec<Entry> = web
        .entries
        .iter()
        .copied()
        .filter(|e| e.net != net("203.0.113.77"))
        .collect();
    let want_cut = union(&set_of(no_77.iter().copied()), &local);
    watch.between(&want, &want_cut);
    srv.set(Reply::ok(cut).length(Length::Close));
    let took = wait_enforced("the cut body", REPORT_BOUND, &lab, &agent, &want_cut);
    watch.exactly(&want_cut);
    let (h, _) = wait_until("the cut body counted", REPORT_BOUND, &lab, &agent, || {
        health(&lab, "web").filter(|h| h.rejected_lines == 2)
    });
    assert!(h.last_error.is_none() && h.held.is_none(), "{h:?}");
    assert_eq!(h.entries, 4, "{h:?}");
    let line = stderr_line(&agent, &["feed web: line 9: ", "may be cut short"])
        .unwrap_or_else(|| panic!("the cut line is not reported\n{}", agent.tail(30)));
    assert!(line.ends_with(": 203.0.113.7"), "{line}");
    assert!(
        !lab.enforced()
            .entries
            .iter()
            .any(|e| e.net == net("203.0.113.7"))
    );
    watch.check("the cut body", &agent);
    println!(
        "bad bodies: close-delimited body cut mid-line: applied after {took:.1?} without its last line: `{line}`"
    );
    want = want_cut;

    // The same bytes with a Content-Length: proven whole, so the last line
    // is the producer's and is enforced.
    let want_whole = union(&want, &set_of([drop_("203.0.113.7")]));
    watch.between(&want, &want_whole);
    srv.set(Reply::ok(cut));
    let took = wait_enforced("the framed body", REPORT_BOUND, &lab, &agent, &want_whole);
    watch.exactly(&want_whole);
    wait_until(
        "the framed body counted",
        REPORT_BOUND,
        &lab,
        &agent,
        || health(&lab, "web").filter(|h| h.rejected_lines == 1 && h.entries == 5),
    );
    watch.check("the framed body", &agent);
    assert_no_controls("agent stderr", &agent.stderr_text());
    println!(
        "bad bodies: the same bytes with Content-Length: last line enforced after {took:.1?}; done in {:.1?} ({} map reads)",
        t0.elapsed(),
        watch.reads()
    );
}

// ---------------------------------------------------------------------------
// 3. Packet level: a change of action within one refresh.

const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// Never in any feed: the end-of-flow markers' source.
const MARK4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
/// The address whose action changes.
const SUSPECT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
const PORT: u16 = 5001;
const FLOW: usize = 8;
/// Refresh of the file feed, and the bound on a change: 2 refreshes + 1 s.
const CHANGE_BOUND: Duration = Duration::from_secs(3);

/// The feed: the suspect with `action` (absent: not listed) and four
/// bystanders, so removing the suspect is a 20% shrink.
fn watch_feed(action: Option<&str>) -> String {
    let mut t = String::from("# SOC watch list\n");
    if let Some(a) = action {
        t.push_str(&format!(
            "{{\"net\":\"{SUSPECT4}\",\"action\":\"{a}\",\"indicator\":\"SOC-20\",\"confidence\":70}}\n"
        ));
    }
    for i in 1..=4 {
        t.push_str(&format!(
            "{{\"net\":\"198.51.100.{i}\",\"indicator\":\"SOC-{i}\"}}\n"
        ));
    }
    t
}

fn bystanders() -> Vec<Entry> {
    (1..=4).map(|i| drop_(&format!("198.51.100.{i}"))).collect()
}

/// Expected counters by reason (packets, bytes) and the flows sent.
#[derive(Default)]
struct Ledger {
    expected: BTreeMap<&'static str, Count>,
    markers: u64,
}

impl Ledger {
    fn add(&mut self, reason: &'static str, payload_len: usize) {
        let c = self.expected.entry(reason).or_default();
        c.packets += 1;
        c.bytes += 14 + 20 + 8 + payload_len as u64;
    }

    /// Compare `after - before` with what was sent: exactly for every
    /// reason except the ones background traffic moves.
    fn check(&self, what: &str, before: &Stats, after: &Stats, agent: &Agent) {
        let mut bad = Vec::new();
        for (reason, a) in &after.by_reason {
            let b = before.get(reason);
            let got = Count {
                packets: a.packets - b.packets,
                bytes: a.bytes - b.bytes,
            };
            let want = self
                .expected
                .get(reason.as_str())
                .copied()
                .unwrap_or_default();
            match reason.as_str() {
                "pass_no_match" => {
                    if got.packets < want.packets + self.markers {
                        bad.push(format!(
                            "{reason}: {} packets, expected at least {}",
                            got.packets,
                            want.packets + self.markers
                        ));
                    }
                }
                "pass_non_ip" => {}
                _ => {
                    if got != want {
                        bad.push(format!(
                            "{reason}: {}p/{}B, expected {}p/{}B",
                            got.packets, got.bytes, want.packets, want.bytes
                        ));
                    }
                }
            }
        }
        for reason in self.expected.keys() {
            if !after.by_reason.contains_key(*reason) {
                bad.push(format!("{reason}: missing from stats --json"));
            }
        }
        assert!(
            bad.is_empty(),
            "{what}: counters off:\n  {}\nstats: {}\n{}",
            bad.join("\n  "),
            after.summary(),
            agent.tail(30)
        );
    }
}

/// Send `n` datagrams from the suspect, then a marker from [`MARK4`];
/// returns how many of the `n` arrived and records their verdict (`reason`
/// when delivered, `dropped` otherwise) in the ledger.
fn flow(
    lab: &Lab,
    sink: &UdpSocket,
    ledger: &mut Ledger,
    n: usize,
    delivered_as: &'static str,
    dropped_as: &'static str,
) -> usize {
    let f = traffic::send(
        lab,
        sink,
        SocketAddr::new(SUSPECT4, 40000),
        SocketAddr::new(RECV4, PORT),
        SocketAddr::new(MARK4, 40001),
        n,
    );
    ledger.markers += 1;
    assert!(f.stray.is_empty(), "stray datagrams: {:?}", f.stray_lines());
    for p in &f.sent {
        ledger.add(
            if f.delivered(p) {
                delivered_as
            } else {
                dropped_as
            },
            p.len(),
        );
    }
    f.arrived()
}

/// Send one datagram every 100 ms until one is (`delivered`) or is not
/// delivered; returns how long that took after `since`.
#[allow(clippy::too_many_arguments)]
fn probe_until(
    what: &str,
    lab: &Lab,
    sink: &UdpSocket,
    ledger: &mut Ledger,
    agent: &Agent,
    since: Instant,
    delivered: bool,
    delivered_as: &'static str,
    dropped_as: &'static str,
) -> Duration {
    loop {
        let got = flow(lab, sink, ledger, 1, delivered_as, dropped_as);
        if (got == 1) == delivered {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < CHANGE_BOUND,
            "{what}: not in effect within {CHANGE_BOUND:?}\nenforced: {}\n{}",
            show(&lab.enforced()),
            agent.tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn feeds_action_change_takes_effect_within_a_refresh() {
    if netns::skip_unless_root("feeds_action_change_takes_effect_within_a_refresh") {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_sender_addr(MARK4, 24);
    lab.add_sender_addr(SUSPECT4, 24);
    let feed = lab.write_file("soc.jsonl", &watch_feed(Some("monitor")));
    let cfg = write_config(
        &lab,
        &[FeedDef::file("soc", &feed, "jsonl", "1s")],
        "",
        SAFETY,
    );
    let agent = start(&lab, &cfg);
    let suspect = IpNet::from(SUSPECT4).to_string();
    let with = |e: Entry| set_of(bystanders().into_iter().chain([e]));
    wait_enforced(
        "the monitor entry",
        REPORT_BOUND,
        &lab,
        &agent,
        &with(monitor(&suspect)),
    );
    let sink = lab.udp_sink(SocketAddr::new(RECV4, PORT));
    let mut ledger = Ledger::default();
    let before = lab.stats();

    // Monitor: delivered and counted.
    let got = flow(&lab, &sink, &mut ledger, FLOW, "monitor_addr", "dropped");
    assert_eq!(got, FLOW, "monitored datagrams lost\n{}", agent.tail(30));
    ledger.check("monitor", &before, &lab.stats(), &agent);

    // Monitor -> drop: within one refresh.
    let t = Instant::now();
    lab.replace_file("soc.jsonl", &watch_feed(Some("drop")));
    let took = probe_until(
        "monitor -> drop",
        &lab,
        &sink,
        &mut ledger,
        &agent,
        t,
        false,
        "monitor_addr",
        "drop_addr",
    );
    assert_enforced("drop", &lab, &agent, &with(drop_(&suspect)));
    let got = flow(&lab, &sink, &mut ledger, FLOW, "monitor_addr", "drop_addr");
    assert_eq!(
        got,
        0,
        "datagrams of a dropped source arrived\n{}",
        agent.tail(30)
    );
    ledger.check("drop", &before, &lab.stats(), &agent);
    println!("action: monitor -> drop in effect after {took:.2?}");

    // Entry removed: delivered again, counted as no match.
    let t = Instant::now();
    lab.replace_file("soc.jsonl", &watch_feed(None));
    let took2 = probe_until(
        "entry removed",
        &lab,
        &sink,
        &mut ledger,
        &agent,
        t,
        true,
        "pass_no_match",
        "drop_addr",
    );
    assert_enforced("removed", &lab, &agent, &set_of(bystanders()));
    let got = flow(&lab, &sink, &mut ledger, FLOW, "pass_no_match", "drop_addr");
    assert_eq!(
        got,
        FLOW,
        "datagrams lost after the entry was removed\n{}",
        agent.tail(30)
    );
    let after = lab.stats();
    ledger.check("removed", &before, &after, &agent);
    println!("action: drop -> removed in effect after {took2:.2?}");
    let h = health(&lab, "soc").expect("soc health");
    assert!(
        h.last_error.is_none() && h.held.is_none() && h.entries == 4,
        "{h:?}"
    );
    println!(
        "action: counters {}; done in {:.1?}",
        ["monitor_addr", "drop_addr"]
            .iter()
            .map(|r| format!("{r}={}", after.packets(r) - before.packets(r)))
            .collect::<Vec<_>>()
            .join(" "),
        t0.elapsed()
    );
}

#[test]
fn feeds_unchanged_body_is_not_parsed_again() {
    if netns::skip_unless_root("feeds_unchanged_body_is_not_parsed_again") {
        return;
    }
    const PORT: u16 = 19_437;
    let lab = Lab::create();
    lab.receiver.ip(&["link", "set", "lo", "up"]);
    let first = "198.51.100.10\n198.51.100.11\n";
    let srv = HttpServer::start_in(&lab.receiver, Reply::ok(first));
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .table(&format!("[metrics]\nlisten = \"127.0.0.1:{PORT}\""))
        .feed("web", &srv.url("/web.txt"), "plain", "1s")
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(&format!("ready: {RECEIVER_IF}"));
    let key = "edge_filter_feed_unchanged_bodies_total{feed=\"web\"}";
    let unchanged = || {
        let (s, _) = scrape::metrics(&lab.receiver, PORT);
        s.get(key).copied().unwrap_or(0.0)
    };
    wait::poll(
        "three unchanged bodies",
        Duration::from_secs(30),
        &agent,
        || (unchanged() >= 3.0).then_some(()),
    );
    // Every one of them was a 200 with the whole body: the digest, not the
    // server, said "unchanged".
    let requests = srv.requests();
    assert!(
        requests.len() >= 4 && requests.iter().all(|r| r.status == 200),
        "{requests:?}"
    );
    let h = health(&lab, "web").expect("web's health");
    assert!(h.last_error.is_none() && h.entries == 2, "{h:?}");
    assert_eq!(
        lab.enforced(),
        set_of([drop_("198.51.100.10"), drop_("198.51.100.11")]),
    );

    // From the second refresh on, the agent probes: it hashes the body as
    // it arrives and fetches it again only when it changed.
    let refetches = || {
        let (s, _) = scrape::metrics(&lab.receiver, PORT);
        s.get("edge_filter_feed_refetches_total{feed=\"web\"}")
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(
        refetches(),
        0.0,
        "nothing changed yet, nothing fetched twice"
    );

    // A change of the same length, in the last line: the probe reads the
    // whole body before it sees it (so the next refresh fetches whole).
    let second = "198.51.100.10\n198.51.100.12\n";
    srv.set(Reply::ok(second));
    let want = set_of([drop_("198.51.100.10"), drop_("198.51.100.12")]);
    wait::poll(
        "the same-length change enforced",
        Duration::from_secs(20),
        &agent,
        || (lab.enforced() == want).then_some(()),
    );
    assert!(refetches() >= 1.0, "the changed body was not fetched again");
    // Unchanged again: caught by the digest of a whole fetch, then probed.
    let before = unchanged();
    wait::poll(
        "two unchanged bodies after the change",
        Duration::from_secs(20),
        &agent,
        || (unchanged() >= before + 2.0).then_some(()),
    );

    // An appended line: the probe sees another `Content-Length` at once.
    let fetched = refetches();
    srv.set(Reply::ok(format!("{second}198.51.100.13\n")));
    let want = set_of([
        drop_("198.51.100.10"),
        drop_("198.51.100.12"),
        drop_("198.51.100.13"),
    ]);
    wait::poll(
        "the changed body enforced",
        Duration::from_secs(20),
        &agent,
        || (lab.enforced() == want).then_some(()),
    );
    assert!(
        refetches() > fetched,
        "the appended body was not fetched again"
    );
    let h = health(&lab, "web").expect("web's health");
    assert!(h.last_error.is_none() && h.entries == 3, "{h:?}");
}
