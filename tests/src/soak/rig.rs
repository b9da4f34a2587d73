//! The real lab the soak runs in, and the execution of each step.
//!
//! A [`Lab`] (two namespaces, a veth pair) with the 48 traffic sources on
//! the sender's veth and the sink's address on the receiver's; an
//! [`HttpServer`] per HTTP feed and a file per file feed; the state
//! directory on a 1 MiB tmpfs (so it can be filled); the `edge-filter`
//! binary run as the config agent (`run --config`) in the receiving
//! namespace; continuous [`Traffic`]. Dropping the [`Rig`] kills the agents,
//! stops the traffic and the servers, unmounts the tmpfs, detaches the
//! filter and deletes the namespaces and files (the [`Lab`]'s cleanup),
//! also after a panic.
//!
//! After every step [`Rig::verify`] checks the invariant ([`super::check`]):
//! it polls the kernel until it holds the expected set (bounded by
//! `settle`), then compares status and metrics with the kernel, then judges
//! one traffic window.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use edge_filter::ops::status::Status;

use super::check::{
    self, IFACE, KernelState, MetricsText, Reported, Violation, ViolationKind, Window,
};
use super::model::{
    self, ADDR_V4_CAPACITY, Expected, FEEDS, LAB_PREFIX, RECEIVER_ADDR, ROT, SAFETY, SOURCES,
    Serving, Transport, source_addr,
};
use super::plan::{Action, Resolve, Second, Step};
use super::traffic::Traffic;
use crate::httpd::{HttpServer, Length, Reply};
use crate::netns::{Agent, Lab};

/// Every feed's refresh interval.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The agent's HTTP timeout (`[limits] timeout`); a timeout fault answers
/// after [`SLOW_REPLY`].
const FETCH_TIMEOUT: &str = "1s";
const SLOW_REPLY: Duration = Duration::from_secs(3);
/// `reconcile_interval`.
const RECONCILE: &str = "2s";
/// The agent's metrics port, on the receiving namespace's loopback.
const METRICS_PORT: u16 = 9436;
/// Size of the state directory's tmpfs.
const STATE_FS_SIZE: &str = "1m";
/// How long an agent may take to print `ready:`.
const READY_BOUND: Duration = Duration::from_secs(30);
/// How long a change may take to show in `status.json`.
const OBSERVE_BOUND: Duration = Duration::from_secs(6);
/// How long a second agent gets to refuse.
const SECOND_AGENT_BOUND: Duration = Duration::from_secs(10);
/// How long reporting may lag the kernel.
const REPORT_BOUND: Duration = Duration::from_secs(2);
/// How long the agent may take to save what a full disk kept it from
/// saving, once there is room (two reconciles and a status write).
const RECOVER_BOUND: Duration = Duration::from_secs(6);

/// Run-wide knobs.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Bound on the kernel converging after a step.
    pub settle: Duration,
    /// Length of a judged traffic window.
    pub window: Duration,
    /// Datagrams per second per source.
    pub rate: u32,
}

/// Why a step stopped early: the run's deadline passed or a signal came.
#[derive(Debug, Clone, Copy)]
pub struct Stopped;

/// A step's result, or [`Stopped`].
pub type Res<T> = Result<T, Stopped>;

/// The run's deadline and the signal flag.
pub struct Stopper {
    /// When the run must stop.
    pub deadline: Instant,
    /// Set by SIGINT/SIGTERM.
    pub flag: &'static AtomicBool,
}

impl Stopper {
    /// Whether the run must stop.
    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }

    /// `Err(Stopped)` when the run must stop.
    pub fn check(&self) -> Res<()> {
        if self.stopped() { Err(Stopped) } else { Ok(()) }
    }

    /// Sleep `d`, waking early (with `Err`) when the run must stop.
    pub fn sleep(&self, d: Duration) -> Res<()> {
        let until = Instant::now() + d;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Violations found.
    pub violations: Vec<Violation>,
    /// Invariant checks made (kernel, reporting and traffic: one check).
    pub checks: usize,
    /// Traffic windows judged.
    pub windows: usize,
    /// Windows not judged for lost datagrams (receive buffer overflow).
    pub noisy_windows: usize,
}

/// The lab, the servers, the agent and the traffic.
pub struct Rig {
    // Dropped in this order: the agents, the traffic, the servers, then
    // the lab (its cleanup kills any agent left, detaches, unmounts, and
    // deletes the namespaces and files).
    agent: Option<Agent>,
    traffic: Traffic,
    servers: Vec<Option<HttpServer>>,
    /// The lab (namespaces, pins, files).
    pub lab: Lab,
    config: PathBuf,
    second_config: PathBuf,
    empty_blocklist: PathBuf,
    state_dir: PathBuf,
    timing: Timing,
    /// Agents started (the first included).
    pub agent_starts: usize,
    /// Every agent's output is appended here when it is replaced.
    agent_log: Option<std::fs::File>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.set_agent(None);
    }
}

fn etag_of(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Rig {
    /// Build the lab, serve every feed's initial copy from `model`, write
    /// the config and start the traffic (not the agent).
    pub fn create(model: &model::Model, timing: Timing, agent_log: Option<&Path>) -> Rig {
        let lab = Lab::create();
        for ns in [&lab.sender, &lab.receiver] {
            // IPv4 only: no IPv6 chatter (MLD, ND) through the filter, so
            // the kernel's counters count the soak's datagrams alone.
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        }
        lab.add_receiver_addr(IpAddr::V4(RECEIVER_ADDR), LAB_PREFIX);
        let sources: Vec<(IpAddr, u8)> = (0..SOURCES)
            .map(|i| (IpAddr::V4(source_addr(i)), LAB_PREFIX))
            .collect();
        lab.add_sender_addrs(&sources);
        let state_dir = lab.mount_tmpfs("state", STATE_FS_SIZE);
        let mut servers = Vec::new();
        let mut sources_cfg = Vec::new();
        for spec in &FEEDS {
            match spec.transport {
                Transport::Http => {
                    let srv = HttpServer::start_in(&lab.receiver, Reply::status(503, ""));
                    sources_cfg.push(srv.url(&format!("/{}.txt", spec.name)));
                    servers.push(Some(srv));
                }
                Transport::File => {
                    let p = lab.dir.join(format!("{}.txt", spec.name));
                    sources_cfg.push(format!("file:{}", p.display()));
                    servers.push(None);
                }
            }
        }
        let empty_blocklist = lab.write_file("empty-blocklist.txt", "");
        let config_text = |metrics: &str| config_text(&lab, &state_dir, &sources_cfg, metrics);
        let config = lab.write_file(
            "edge-filter.toml",
            &config_text(&format!("127.0.0.1:{METRICS_PORT}")),
        );
        let second_config = lab.write_file("second.toml", &config_text("off"));
        let traffic = Traffic::start(&lab, timing.rate);
        let mut rig = Rig {
            agent: None,
            traffic,
            servers,
            lab,
            config,
            second_config,
            empty_blocklist,
            state_dir,
            timing,
            agent_starts: 0,
            agent_log: agent_log.and_then(|p| {
                std::fs::File::create(p)
                    .map_err(|e| eprintln!("soak: cannot write {}: {e}", p.display()))
                    .ok()
            }),
        };
        for (i, f) in model.feeds.iter().enumerate() {
            rig.deliver(i, &f.serving, &f.lkg);
        }
        rig
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Datagrams sent and received so far.
    pub fn traffic_totals(&self) -> (u64, u64) {
        self.traffic.totals()
    }

    /// Make `feed`'s source deliver `serving` (`lkg`: the copy a slow reply
    /// would carry).
    fn deliver(&mut self, feed: usize, serving: &Serving, lkg: &[ipnet::Ipv4Net]) {
        let spec = FEEDS[feed];
        let body = serving.body(spec.name);
        match spec.transport {
            Transport::Http => {
                let reply = match serving {
                    Serving::Valid(_) => {
                        let b = body.expect("valid body");
                        // Conditional requests get 304s, as from most
                        // feed servers: an unchanged feed causes no sync.
                        Reply::ok(b.clone()).etag(&etag_of(&b))
                    }
                    Serving::Truncated { .. } => {
                        Reply::ok(body.expect("truncated body")).length(Length::Close)
                    }
                    Serving::Garbage(_) => Reply::ok(body.expect("garbage body")),
                    Serving::Status500 => Reply::status(500, "internal server error\n"),
                    Serving::Timeout => Reply::ok(
                        Serving::Valid(lkg.to_vec())
                            .body(spec.name)
                            .expect("valid body"),
                    )
                    .delay(SLOW_REPLY),
                    Serving::Missing => Reply::status(404, "not found\n"),
                };
                self.servers[feed].as_ref().expect("http feed").set(reply);
            }
            Transport::File => {
                let name = format!("{}.txt", spec.name);
                match body {
                    Some(b) => {
                        let text = String::from_utf8(b).expect("feed bodies are text");
                        self.lab.replace_file(&name, &text);
                    }
                    None => {
                        let _ = std::fs::remove_file(self.lab.dir.join(&name));
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------
    // The agent.

    /// The running agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent
            .as_ref()
            .filter(|a| a.is_running())
            .map(Agent::pid)
    }

    /// Start the agent and wait for `ready:`; a violation when it exits
    /// first or does not get ready.
    pub fn start_agent(&mut self, stop: &Stopper) -> Res<Vec<Violation>> {
        let agent = self.lab.start_config_agent(&self.config);
        self.agent_starts += 1;
        let deadline = Instant::now() + READY_BOUND;
        let ready = format!("ready: {IFACE}");
        loop {
            if agent.stdout_lines().contains(&ready) {
                self.set_agent(Some(agent));
                return Ok(Vec::new());
            }
            if let Some(st) = agent.try_status() {
                std::thread::sleep(Duration::from_millis(100));
                let v = Violation::new(
                    ViolationKind::AgentDied,
                    format!(
                        "the agent exited ({st}) before `{ready}`: {}",
                        last_lines(&agent, 4)
                    ),
                );
                self.set_agent(Some(agent));
                return Ok(vec![v]);
            }
            if Instant::now() > deadline {
                let v = Violation::new(
                    ViolationKind::AgentDied,
                    format!(
                        "no `{ready}` within {READY_BOUND:?}: {}",
                        last_lines(&agent, 4)
                    ),
                );
                self.set_agent(Some(agent));
                return Ok(vec![v]);
            }
            if stop.stopped() {
                self.set_agent(Some(agent));
                return Err(Stopped);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `sig` to the agent and wait (bounded) for it to exit; None when
    /// it did not.
    fn signal_agent(
        &mut self,
        sig: libc::c_int,
        bound: Duration,
    ) -> Option<std::process::ExitStatus> {
        let agent = self.agent.as_ref()?;
        agent.signal(sig);
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(st) = agent.try_status() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGKILL the agent (if running) and forget it.
    fn kill_agent(&mut self) {
        self.signal_agent(libc::SIGKILL, Duration::from_secs(5));
        self.set_agent(None);
    }

    /// Replace the current agent (killed if still running), appending its
    /// output to the agent log.
    fn set_agent(&mut self, agent: Option<Agent>) {
        if let Some(old) = std::mem::replace(&mut self.agent, agent) {
            self.log_agent(&old, "agent");
        }
    }

    fn log_agent(&mut self, a: &Agent, what: &str) {
        if let Some(f) = &mut self.agent_log {
            let _ = writeln!(
                f,
                "===== {what} pid {} ({}) =====\n-- stdout --\n{}\n-- stderr --\n{}\n",
                a.pid(),
                match a.try_status() {
                    None => "running".to_string(),
                    Some(s) => s.to_string(),
                },
                a.stdout_lines().join("\n"),
                a.stderr_text()
            );
        }
    }

    /// Before a step: an agent that exited on its own is a violation; start
    /// a new one.
    pub fn ensure_agent(&mut self, stop: &Stopper) -> Res<Vec<Violation>> {
        let mut v = Vec::new();
        if let Some(a) = &self.agent
            && let Some(st) = a.try_status()
        {
            v.push(Violation::new(
                ViolationKind::AgentDied,
                format!("the agent exited on its own ({st}): {}", last_lines(a, 4)),
            ));
            self.set_agent(None);
        }
        if self.agent.is_none() {
            v.extend(self.start_agent(stop)?);
        }
        Ok(v)
    }

    // -----------------------------------------------------------------
    // Observing.

    /// The kernel's view: the interface, its XDP program, the pinned maps.
    pub fn kernel(&self) -> KernelState {
        let (iface_exists, xdp_prog) = match self.lab.try_xdp_prog_id() {
            Ok(p) => (true, p),
            Err(_) => (false, None),
        };
        KernelState {
            iface_exists,
            xdp_prog,
            set: self.lab.try_enforced(),
        }
    }

    /// `edge-filter status --config F --json`.
    fn status_json(&self) -> Result<serde_json::Value, String> {
        let out = self
            .lab
            .edge_filter_cmd()
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .map_err(|e| format!("cannot run status: {e}"))?;
        // 3 and 4 report health (degraded, not enforcing), not a failure.
        let health = matches!(out.status.code(), Some(0 | 3 | 4));
        if !health {
            return Err(format!(
                "status exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status --json is not JSON: {e}"))
    }

    /// `GET /metrics` from the agent (connecting from inside the receiving
    /// namespace).
    fn metrics_text(&self) -> Result<String, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        let mut sock = self
            .lab
            .receiver
            .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        sock.read_to_end(&mut buf)
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "no HTTP header end".to_string())?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("answer: {}", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_string())
    }

    fn reported(&self) -> Reported {
        Reported {
            status: self.status_json(),
            metrics: self.metrics_text().map(|t| MetricsText::parse(&t)),
            agent_pid: self.agent_pid(),
        }
    }

    /// The agent's `status.json` (read directly: cheap enough to poll).
    fn status_file(&self) -> Option<Status> {
        let t = std::fs::read_to_string(self.state_dir.join("status.json")).ok()?;
        serde_json::from_str(&t).ok()
    }

    /// When the agent last attempted `feed`, as Unix nanoseconds.
    fn last_attempt(&self, feed: usize) -> Option<i128> {
        let s = self.status_file()?;
        let h = s.feeds.into_iter().find(|f| f.name == FEEDS[feed].name)?;
        Some(h.last_attempt?.unix_timestamp_nanos())
    }

    /// Wait until the agent has fetched each of `feeds` after the change at
    /// (`at`, `wall`): for HTTP feeds after the server saw a request that
    /// arrived after `at`; for files 20 ms after `wall`. Returns the feeds
    /// not observed within [`OBSERVE_BOUND`].
    fn wait_observed(
        &self,
        stop: &Stopper,
        feeds: &[usize],
        at: Instant,
        wall: SystemTime,
    ) -> Res<Vec<usize>> {
        let wall_ns = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128)
        };
        let deadline = Instant::now() + OBSERVE_BOUND;
        let mut pending: Vec<usize> = feeds.to_vec();
        while !pending.is_empty() && Instant::now() < deadline {
            stop.check()?;
            pending.retain(|&f| {
                let after = match &self.servers[f] {
                    Some(srv) => match srv.requests().into_iter().find(|r| r.at > at) {
                        // The reply was chosen when the request arrived.
                        Some(r) => wall_ns(wall + (r.at - at)),
                        None => return true,
                    },
                    None => wall_ns(wall) + 20_000_000,
                };
                self.last_attempt(f).is_none_or(|t| t < after)
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        Ok(pending)
    }

    /// [`Rig::wait_observed`], turning feeds not observed into a violation.
    fn observe(
        &self,
        stop: &Stopper,
        feeds: &[usize],
        at: Instant,
        wall: SystemTime,
    ) -> Res<Vec<Violation>> {
        let pending = self.wait_observed(stop, feeds, at, wall)?;
        if pending.is_empty() || self.agent_pid().is_none() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = pending.iter().map(|&f| FEEDS[f].name).collect();
        Ok(vec![Violation::new(
            ViolationKind::AgentStalled,
            format!(
                "status.json shows no fetch of {} within {OBSERVE_BOUND:?} of the change",
                names.join(", ")
            ),
        )])
    }

    // -----------------------------------------------------------------
    // The invariant.

    /// Poll the kernel until it holds `exp` exactly (or `bound` passes);
    /// the violations of the last look.
    fn converge(
        &self,
        stop: &Stopper,
        exp: &Expected,
        bound: Duration,
    ) -> Res<(KernelState, Vec<Violation>)> {
        let deadline = Instant::now() + bound;
        loop {
            stop.check()?;
            let k = self.kernel();
            let v = check::check_kernel(exp, &k);
            if v.is_empty() || Instant::now() >= deadline {
                return Ok((k, v));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole invariant after a step: kernel (waiting up to `settle +
    /// extra`), then status and metrics, then one judged traffic window.
    pub fn verify(&mut self, stop: &Stopper, exp: &Expected, extra: Duration) -> Res<Outcome> {
        let mut out = Outcome::default();
        let (_, mut v) = self.converge(stop, exp, self.timing.settle + extra)?;
        // Reporting may lag the kernel a little: poll until it agrees (an
        // absent surface never will; it does not hold the poll up).
        let deadline = Instant::now() + REPORT_BOUND;
        let (rv, gap_reported) = loop {
            stop.check()?;
            let k = self.kernel();
            let r = self.reported();
            let rv = check::check_reporting(exp, &k, &r);
            let settled = rv.iter().all(|x| x.kind == ViolationKind::ReportingMissing);
            if settled || Instant::now() >= deadline {
                break (rv, agent_says_unfiltered(&r));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        v.extend(rv);
        stop.check()?;
        let (w, noisy) = self.window(gap_reported);
        if noisy {
            out.noisy_windows += 1;
        }
        v.extend(check::check_traffic(&exp.source_verdicts(), &w));
        out.windows += 1;
        out.checks += 1;
        out.violations = v;
        Ok(out)
    }

    /// One judged traffic window.
    fn window(&mut self, gap_reported: bool) -> (Window, bool) {
        let receiver = &self.lab.receiver;
        let lab = &self.lab;
        let edge = || {
            let counters = edge_filter::kernel::attach::open_pinned(
                &edge_filter::kernel::paths::Paths::new(&lab.bpffs),
                IFACE,
            )
            .and_then(|m| m.counters())
            .ok()
            .map(|c| edge_filter::kernel::counters::named(&c).1);
            let rcvbuf = receiver.net_counter("snmp", "Udp", "RcvbufErrors");
            let attached = matches!(lab.try_xdp_prog_id(), Ok(Some(_)));
            (counters, rcvbuf, attached)
        };
        let (counts, (c0, r0, a0), (c1, r1, a1)) = self.traffic.window(self.timing.window, edge);
        let (kernel_dropped, kernel_passed) = match (c0, c1) {
            (Some(a), Some(b)) => (
                b.dropped.saturating_sub(a.dropped),
                (b.passed + b.monitored).saturating_sub(a.passed + a.monitored),
            ),
            _ => (0, 0),
        };
        let w = Window {
            sent: counts.sent,
            received: counts.received,
            kernel_dropped,
            kernel_passed,
            rcvbuf_errors: r1.saturating_sub(r0),
            attached: a0 && a1,
            gap_reported,
        };
        let noisy = w.rcvbuf_errors > 0;
        (w, noisy)
    }

    // -----------------------------------------------------------------
    // Steps.

    /// Execute `step`; `model_before`/`model_after`: the model before and
    /// after it.
    pub fn run_step(
        &mut self,
        stop: &Stopper,
        step: &Step,
        model_before: &model::Model,
        model_after: &model::Model,
    ) -> Res<Outcome> {
        let (before, after) = (&model_before.expected(), &model_after.expected());
        let mut pre = Vec::new();
        let mut extra = Duration::ZERO;
        match &step.action {
            Action::Serve { feed, serving } => {
                let (at, wall) = (Instant::now(), SystemTime::now());
                self.deliver(*feed, serving, &model_after.feeds[*feed].lkg);
                pre.extend(self.observe(stop, &[*feed], at, wall)?);
                if matches!(serving, Serving::Garbage(_)) {
                    // Past the point where a shrink hold of the garbage
                    // would have run out.
                    stop.sleep(REFRESH * SAFETY.hold_refreshes + Duration::from_millis(1500))?;
                }
            }
            Action::Shrink {
                feed,
                entries,
                resolve,
            } => {
                let (at, wall) = (Instant::now(), SystemTime::now());
                self.deliver(*feed, &Serving::Valid(entries.clone()), entries);
                pre.extend(self.observe(stop, &[*feed], at, wall)?);
                // First sighting: the previous copy must still be enforced.
                let k = self.kernel();
                if let Ok(set) = &k.set {
                    let held = check::SetDiff::of(before, set).exact();
                    let applied = check::SetDiff::of(after, set).exact();
                    if applied && !held {
                        pre.push(Violation::new(
                            ViolationKind::ShrinkNotHeld,
                            format!(
                                "{} went from {} to {} entries (more than max_shrink {}) and the kernel applied it on the first sighting",
                                FEEDS[*feed].name,
                                model_before.feeds[*feed].lkg.len(),
                                entries.len(),
                                SAFETY.max_shrink
                            ),
                        ));
                    }
                }
                match resolve {
                    Resolve::Force => {
                        let out = self
                            .lab
                            .edge_filter_cmd()
                            .args(["force-feed", FEEDS[*feed].name, "--config"])
                            .arg(&self.config)
                            .output();
                        if let Ok(o) = &out
                            && !o.status.success()
                        {
                            pre.push(Violation::new(
                                ViolationKind::AgentStalled,
                                format!(
                                    "force-feed failed ({}): {}",
                                    o.status,
                                    String::from_utf8_lossy(&o.stderr).trim()
                                ),
                            ));
                        }
                    }
                    Resolve::Wait => extra = REFRESH * (SAFETY.hold_refreshes + 1),
                }
            }
            Action::Kill { during, delay_ms } => {
                if let Some(rot) = during {
                    let at = Instant::now();
                    self.deliver(ROT, &Serving::Valid(rot.clone()), rot);
                    // Kill once the agent has the new copy in hand.
                    let srv = self.servers[ROT].as_ref().expect("rot is http");
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while !srv.requests().iter().any(|r| r.at > at) && Instant::now() < deadline {
                        stop.sleep(Duration::from_millis(5))?;
                    }
                    stop.sleep(Duration::from_millis(*delay_ms))?;
                }
                self.kill_agent();
                pre.extend(self.start_agent(stop)?);
            }
            Action::Hup => {
                let (at, wall) = (Instant::now(), SystemTime::now());
                if let Some(a) = &self.agent {
                    a.signal(libc::SIGHUP);
                }
                let all: Vec<usize> = (0..FEEDS.len()).collect();
                pre.extend(self.observe(stop, &all, at, wall)?);
            }
            Action::Term => {
                match self.signal_agent(libc::SIGTERM, Duration::from_secs(10)) {
                    Some(st) if st.success() => {}
                    Some(st) => pre.push(Violation::new(
                        ViolationKind::AgentDied,
                        format!("the agent exited {st} after SIGTERM (want 0)"),
                    )),
                    None => pre.push(Violation::new(
                        ViolationKind::AgentStuck,
                        "the agent did not exit within 10 s of SIGTERM",
                    )),
                }
                self.kill_agent();
                pre.extend(self.start_agent(stop)?);
            }
            Action::Recreate { gap_ms } => {
                pre.extend(self.recreate(stop, *gap_ms, after)?);
            }
            Action::SecondAgent { variant } => {
                pre.extend(self.second_agent(stop, *variant)?);
            }
            Action::DiskFull {
                feed,
                entries,
                restart,
            } => {
                pre.extend(self.disk_full(stop, *feed, entries, *restart, after)?);
            }
        }
        let mut out = self.verify(stop, after, extra)?;
        pre.append(&mut out.violations);
        out.violations = pre;
        Ok(out)
    }

    /// Delete the interface, wait `gap_ms`, recreate it; the agent must
    /// re-attach and report the gap (counter, seconds, log line).
    fn recreate(&mut self, stop: &Stopper, gap_ms: u64, after: &Expected) -> Res<Vec<Violation>> {
        let gap_metrics = |r: &Rig| {
            let m = r.metrics_text().ok().map(|t| MetricsText::parse(&t));
            m.map(|m| {
                (
                    m.get("edge_filter_enforcement_gaps_total", Some(IFACE)),
                    m.get("edge_filter_enforcement_gap_seconds_total", Some(IFACE)),
                )
            })
        };
        let before = gap_metrics(self);
        let log_len = self.agent.as_ref().map_or(0, |a| a.stderr_text().len());
        let pid = self.agent_pid();
        self.lab.delete_veth();
        let slept = stop.sleep(Duration::from_millis(gap_ms));
        // Recreate even when stopping: the lab's cleanup expects the pair.
        self.lab.add_veth();
        slept?;
        // Wait for the kernel (re-attach) before judging the reports.
        let _ = self.converge(stop, after, self.timing.settle)?;
        let deadline = Instant::now() + REPORT_BOUND;
        let mut missing;
        loop {
            stop.check()?;
            missing = Vec::new();
            if self.agent_pid() != pid {
                // Another agent instance: its counters start over.
                return Ok(Vec::new());
            }
            let now = gap_metrics(self);
            let (g0, s0) = before.unwrap_or((None, None));
            match now {
                None => missing.push("metrics unreadable".to_string()),
                Some((g1, s1)) => {
                    match (g0, g1) {
                        (_, None) => {
                            missing.push("edge_filter_enforcement_gaps_total absent".into())
                        }
                        (Some(a), Some(b)) if b <= a => {
                            missing.push(format!("edge_filter_enforcement_gaps_total stayed {b}"))
                        }
                        _ => {}
                    }
                    match (s0, s1) {
                        (_, None) => {
                            missing.push("edge_filter_enforcement_gap_seconds_total absent".into())
                        }
                        (Some(a), Some(b)) if b <= a => missing.push(format!(
                            "edge_filter_enforcement_gap_seconds_total stayed {b}"
                        )),
                        _ => {}
                    }
                }
            }
            let logged = self
                .agent
                .as_ref()
                .map(|a| a.stderr_text())
                .is_some_and(|t| t.get(log_len..).unwrap_or("").contains("enforcement gap"));
            if !logged {
                missing.push("no log line containing \"enforcement gap\"".into());
            }
            if missing.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(if missing.is_empty() {
            Vec::new()
        } else {
            vec![Violation::new(
                ViolationKind::GapUnreported,
                format!(
                    "interface deleted for {gap_ms} ms and recreated: {}",
                    missing.join("; ")
                ),
            )]
        })
    }

    /// Start a second agent on the managed interface: it must exit
    /// non-zero saying "already managed by" and the first agent's pid, and
    /// leave the kernel's set as it was.
    fn second_agent(&mut self, stop: &Stopper, variant: Second) -> Res<Vec<Violation>> {
        let mut v = Vec::new();
        let before = self.lab.try_enforced();
        let holder = self.agent_pid();
        let second = match variant {
            Second::Config => self.lab.start_config_agent(&self.second_config),
            Second::Blocklist => {
                let bl = self.empty_blocklist.display().to_string();
                self.lab
                    .start_agent(&["--blocklist", &bl, "--metrics-listen", "off"])
            }
        };
        // The kernel is sampled all along: the first agent's reconcile may
        // repair what the second one did before it is gone.
        let mut changed: Option<edge_filter::entry::EntrySet> = None;
        let sample = |lab: &Lab, changed: &mut Option<edge_filter::entry::EntrySet>| {
            if changed.is_none()
                && let (Ok(b), Ok(now)) = (&before, lab.try_enforced())
                && *b != now
            {
                *changed = Some(now);
            }
        };
        let deadline = Instant::now() + SECOND_AGENT_BOUND;
        let mut outcome = None;
        let mut ready_at = None;
        while Instant::now() < deadline {
            sample(&self.lab, &mut changed);
            if let Some(st) = second.try_status() {
                outcome = Some(st);
                break;
            }
            if ready_at.is_none()
                && second
                    .stdout_lines()
                    .iter()
                    .any(|l| l.starts_with("ready:"))
            {
                ready_at = Some(Instant::now());
            }
            // It took over: let it run a moment as a real one would.
            if ready_at.is_some_and(|t: Instant| t.elapsed() > Duration::from_millis(500)) {
                break;
            }
            if stop.stopped() {
                return Err(Stopped);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let text = second.stderr_text();
        match outcome {
            Some(st) if !st.success() => {
                let pid_named = holder.is_some_and(|p| text.contains(&p.to_string()));
                if !text.contains("already managed by") || !pid_named {
                    v.push(Violation::new(
                        ViolationKind::SecondAgentNotRefused,
                        format!(
                            "{variant:?} agent exited {st} without \"already managed by\" and the holder's pid {holder:?}: {}",
                            tail_of(&text, 2)
                        ),
                    ));
                }
            }
            Some(st) => v.push(Violation::new(
                ViolationKind::SecondAgentNotRefused,
                format!(
                    "{variant:?} agent exited {st} (success) instead of refusing: {}",
                    tail_of(&text, 2)
                ),
            )),
            None => {
                let ready = second
                    .stdout_lines()
                    .into_iter()
                    .find(|l| l.starts_with("ready:"));
                v.push(Violation::new(
                    ViolationKind::SecondAgentNotRefused,
                    format!(
                        "{variant:?} agent was not refused: {} (holder pid {holder:?}); SIGKILLed it",
                        ready.unwrap_or_else(|| "still running".into())
                    ),
                ));
            }
        }
        self.log_agent(&second, "second agent");
        drop(second); // SIGKILL if still running
        sample(&self.lab, &mut changed);
        if let (Ok(b), Some(a)) = (&before, &changed) {
            let bs: std::collections::BTreeSet<_> = b.entries.iter().collect();
            let as_: std::collections::BTreeSet<_> = a.entries.iter().collect();
            v.push(Violation::new(
                ViolationKind::SecondAgentChangedKernel,
                format!(
                    "{variant:?} agent changed the kernel: {} entries removed, {} added, allowlist {} -> {}",
                    bs.difference(&as_).count(),
                    as_.difference(&bs).count(),
                    b.allow.len(),
                    a.allow.len()
                ),
            ));
        }
        Ok(v)
    }

    /// Fill the state directory's file system, change a feed (and maybe
    /// restart the agent), check the reports say persistence failed, free
    /// the space.
    fn disk_full(
        &mut self,
        stop: &Stopper,
        feed: usize,
        entries: &[ipnet::Ipv4Net],
        restart: bool,
        after: &Expected,
    ) -> Res<Vec<Violation>> {
        let mut v = Vec::new();
        let fill = self.state_dir.join("fill");
        fill_up(&fill);
        let res = (|| -> Res<()> {
            self.deliver(feed, &Serving::Valid(entries.to_vec()), entries);
            // status.json cannot be written now: give the agent a refresh
            // and then some, and let the kernel tell.
            stop.sleep(REFRESH + Duration::from_millis(500))?;
            if restart {
                self.kill_agent();
                v.extend(self.start_agent(stop)?);
            }
            let mut out = self.verify(stop, after, Duration::ZERO)?;
            // The failed saves must show somewhere: a field or metric named
            // for persistence or saving, or the OS's error.
            let status = self
                .status_json()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let metrics = self.metrics_text().unwrap_or_default();
            let said = |t: &str| {
                let t = t.to_ascii_lowercase();
                ["persist", "save", "state_write", "no space"]
                    .iter()
                    .any(|w| t.contains(w))
            };
            let reported = said(&status) || said(&metrics);
            if reported {
                // A status file that cannot be written lags; once the
                // failure is reported, its stale desired count is not
                // another violation.
                out.violations.retain(|x| {
                    !(x.kind == ViolationKind::StatusDisagrees && x.detail.contains("desired set"))
                });
            }
            v.append(&mut out.violations);
            if !reported {
                v.push(Violation::new(
                    ViolationKind::PersistenceUnreported,
                    format!(
                        "state_dir full{}: neither status --json nor /metrics mentions a persistence failure",
                        if restart { " across a restart" } else { "" }
                    ),
                ));
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&fill);
        res?;
        // Room again: the agent saves what it could not (at its next
        // reconcile) and says so; until then a restart would enforce older
        // copies, which the model here does not follow.
        let deadline = Instant::now() + RECOVER_BOUND;
        loop {
            stop.check()?;
            let s = self.status_json().unwrap_or_default();
            let clear = s["agent"]["persist_error"].is_null()
                && s["feeds"]
                    .as_array()
                    .is_some_and(|f| f.iter().all(|x| x["persist_error"].is_null()));
            if clear {
                break;
            }
            if Instant::now() > deadline {
                v.push(Violation::new(
                    ViolationKind::PersistenceNotRecovered,
                    format!(
                        "state_dir has room again, but {RECOVER_BOUND:?} later status still reports a persistence failure: {} / {}",
                        s["agent"]["persist_error"],
                        s["feeds"]
                    ),
                ));
                break;
            }
            stop.sleep(Duration::from_millis(100))?;
        }
        Ok(v)
    }
}

/// Whether the agent says the interface is unfiltered (status `attached`
/// false or `edge_filter_attached` 0): a reported gap.
fn agent_says_unfiltered(r: &Reported) -> bool {
    let status = r.status.as_ref().ok().and_then(|s| {
        s["interfaces"]
            .as_array()?
            .iter()
            .find(|i| i["iface"] == IFACE)?["attached"]
            .as_bool()
    });
    let metric = r
        .metrics
        .as_ref()
        .ok()
        .and_then(|m| m.get("edge_filter_attached", Some(IFACE)));
    status == Some(false) || metric == Some(0.0)
}

fn last_lines(a: &Agent, n: usize) -> String {
    tail_of(&a.stderr_text(), n)
}

fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Write zeros to `path` until the file system is full.
fn fill_up(path: &Path) {
    let Ok(mut f) = std::fs::File::create(path) else {
        return;
    };
    let chunk = vec![0u8; 16 << 10];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk: byte by byte would be slow; 512-byte blocks.
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
}

fn config_text(lab: &Lab, state_dir: &Path, sources: &[String], metrics: &str) -> String {
    let lit = |p: &Path| {
        let s = p.display().to_string();
        assert!(!s.contains('\''), "path with a quote: {s}");
        format!("'{s}'")
    };
    let mut t = format!(
        "# edge-filter soak (cargo xtask soak): written by ef-soak\n\
         state_dir = {}\n\
         bpffs = {}\n\
         reconcile_interval = \"{RECONCILE}\"\n\n\
         [metrics]\nlisten = \"{metrics}\"\n\n\
         [[interface]]\nname = \"{IFACE}\"\n\n\
         [capacities]\naddr_v4 = {ADDR_V4_CAPACITY}\naddr_v6 = 64\nprefix_v4 = 256\nprefix_v6 = 64\n\
         port_v4 = 64\nport_v6 = 64\nallow = 64\nentry_stats = 4096\n\n\
         [limits]\ntimeout = \"{FETCH_TIMEOUT}\"\nretries = 0\n\n\
         [safety]\nmax_shrink = {}\nhold_refreshes = {}\n\n\
         [allowlist]\nentries = [{}]\nfeeds = [{}]\n",
        lit(state_dir),
        lit(&lab.bpffs),
        SAFETY.max_shrink,
        SAFETY.hold_refreshes,
        model::inline_allow()
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", "),
        FEEDS
            .iter()
            .filter(|f| f.role == model::Role::Allow)
            .map(|f| format!("\"{}\"", f.name))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for (spec, source) in FEEDS.iter().zip(sources) {
        t.push_str(&format!(
            "\n[[feed]]\nname = \"{}\"\nsource = \"{source}\"\nformat = \"plain\"\nrefresh = \"{}s\"\n",
            spec.name,
            REFRESH.as_secs()
        ));
        if spec.role == model::Role::Allow {
            t.push_str("role = \"allow\"\n");
        }
    }
    t
}
