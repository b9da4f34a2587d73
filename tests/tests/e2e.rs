//! End-to-end tests through a real interface.
//!
//! Each test builds its own pair of network namespaces joined by a veth pair
//! ([`Lab`]), runs the real `edge-filter` binary on the receiving side and
//! sends real traffic (UDP datagrams, TCP connects, `ping`) from several IPv4
//! and IPv6 source addresses of the sending side. They assert which flows get
//! through, that the counters of `edge-filter stats --json` match the traffic
//! sent, that blocklist edits apply without a restart (file change and
//! SIGHUP), that a SIGKILLed agent leaves the filter enforcing and a new one
//! adopts the pins, and that `edge-filter detach` removes the program.
//!
//! Needs root (each test prints `skipping: needs root` and passes
//! otherwise), `ip`, `nsenter` and `ping` (`cargo xtask setup`), and the
//! `edge-filter` binary of the same profile (`cargo test` of the workspace
//! builds it; `-p edge-filter-tests` alone does not), and a binary older
//! than its sources is refused (see [`netns::edge_filter_bin`]). Run:
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test e2e -- --nocapture
//! ```
//!
//! Exact counts: neighbors are static on both sides (`nud permanent`) and
//! IPv6 addresses skip DAD, so no ARP or NDP comes from the test addresses.
//! Background traffic (IPv6 MLD and router solicitations from link-local
//! addresses) only ever lands in `pass_no_match` / `pass_non_ip`, so those
//! are checked with `>=`; every other reason must equal what was sent.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use edge_filter_tests::literal::path_str;
use edge_filter_tests::netns::{self, Agent, Connect, Count, Lab, RECEIVER_IF, Stats};
use edge_filter_tests::traffic::{self, Flow, Probe};

// ---------------------------------------------------------------------------
// Addresses (documentation ranges, only ever inside the test namespaces).

/// The receiver (filtered side).
const RECV4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const RECV6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));
/// Sources of the end-of-flow markers: never in any list.
const MARK4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
const MARK6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9));
/// Not in the initial blocklist.
const CLEAN4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const CLEAN6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10));
/// Blocked as an exact address.
const ADDR4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
/// Blocked for TCP to destination port [`TCP_BLOCKED`] only.
const TCPDST4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12));
/// Blocked for UDP from source port [`UDP_SRC_BLOCKED`] only.
const UDPSRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 13));
/// Monitored (counted, let through).
const MON4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 14));
/// Blocked and allowlisted: the allowlist wins.
const ALLOW4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 15));
/// Inside the blocked prefix `2001:db8:1:0:bad::/80`.
const PFX6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0xbad, 0, 0, 0x10));
/// Blocked for UDP to destination port [`TCP_BLOCKED`] (v6 + port + dst).
const PORT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x12));
/// Inside the monitored prefix `2001:db8:1:0:eeee::/80`.
const MON6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0xeeee, 0, 0, 0x10));

const SENDER_ADDRS: [IpAddr; 12] = [
    MARK4, CLEAN4, ADDR4, TCPDST4, UDPSRC4, MON4, ALLOW4, MARK6, CLEAN6, PFX6, PORT6, MON6,
];

/// A port nothing blocks.
const OPEN_PORT: u16 = 5001;
/// The destination port of the `tcp … dst` and `udp [v6] … dst` entries.
const TCP_BLOCKED: u16 = 7001;
/// A TCP port nothing blocks.
const TCP_OPEN: u16 = 7002;
/// The source port of the `udp 192.0.2.13:5353` entry.
const UDP_SRC_BLOCKED: u16 = 5353;

const BLOCKLIST: &str = "\
# edge-filter e2e blocklist
192.0.2.11                       # exact IPv4 address
2001:db8:1:0:bad::/80            # IPv6 prefix
tcp 192.0.2.12:7001 dst          # address + TCP destination port
udp 192.0.2.13:5353              # address + UDP source port
udp [2001:db8:1::12]:7001 dst    # IPv6 address + UDP destination port
192.0.2.14 monitor               # counted, let through
2001:db8:1:0:eeee::/80 monitor   # IPv6 prefix, counted, let through
192.0.2.15                       # blocked, but allowlisted
";
const ALLOWLIST: &str = "192.0.2.15\n";

/// UDP datagrams per flow, echo requests per ping.
const UDP_N: usize = 8;
const PINGS: u32 = 3;
/// How long a blocked TCP connect waits (under the 1 s SYN retransmit).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
/// Bound on how long a blocklist edit may take to apply.
const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// Ethernet + IP header length of a frame from `ip`.
fn l3_overhead(ip: IpAddr) -> u64 {
    14 + if ip.is_ipv4() { 20 } else { 40 }
}

// ---------------------------------------------------------------------------
// Setup.

/// A lab with every sender and receiver address configured.
fn lab() -> Lab {
    let lab = Lab::create();
    lab.add_receiver_addr(RECV4, 24);
    lab.add_receiver_addr(RECV6, 64);
    for a in SENDER_ADDRS {
        lab.add_sender_addr(a, if a.is_ipv4() { 24 } else { 64 });
    }
    lab
}

/// UDP sinks (with the markers of their family) and TCP listeners of the
/// receiver.
struct Servers {
    udp: Vec<Probe>,
    _tcp: Vec<TcpListener>,
}

impl Servers {
    fn start(lab: &Lab) -> Servers {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for ip in [RECV4, RECV6] {
            for port in [OPEN_PORT, TCP_BLOCKED] {
                udp.push(Probe::new(lab, SocketAddr::new(ip, port), mark_of(ip)));
            }
            for port in [TCP_BLOCKED, TCP_OPEN] {
                tcp.push(lab.tcp_listener(SocketAddr::new(ip, port)));
            }
        }
        Servers { udp, _tcp: tcp }
    }

    fn probe(&self, dst: SocketAddr) -> &Probe {
        self.udp
            .iter()
            .find(|p| p.addr() == dst)
            .unwrap_or_else(|| panic!("no UDP sink on {dst}"))
    }
}

fn recv_of(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() { RECV4 } else { RECV6 }
}

fn mark_of(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() { MARK4 } else { MARK6 }
}

// ---------------------------------------------------------------------------
// Flows and expectations.

/// What the filter should do with a flow: the reason it should count under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// `pass_no_match`.
    Pass,
    /// `pass_allowlist`.
    Allow,
    /// A `drop_*` reason.
    Drop(&'static str),
    /// A `monitor_*` reason (delivered).
    Monitor(&'static str),
}

impl Verdict {
    fn reason(self) -> &'static str {
        match self {
            Verdict::Pass => "pass_no_match",
            Verdict::Allow => "pass_allowlist",
            Verdict::Drop(r) | Verdict::Monitor(r) => r,
        }
    }

    fn delivered(self) -> bool {
        !matches!(self, Verdict::Drop(_))
    }
}

/// Reasons whose counts only the test traffic can move (compared exactly).
fn is_exact(reason: &str) -> bool {
    !matches!(reason, "pass_no_match" | "pass_non_ip")
}

/// The traffic sent, its expected counts, and every mismatch seen.
#[derive(Default)]
struct Run {
    /// Expected packets and bytes by reason (`pass_no_match` is a minimum).
    expected: BTreeMap<&'static str, Count>,
    /// One line per flow: what was sent and what arrived.
    log: Vec<String>,
    /// Flows that did not behave.
    failures: Vec<String>,
}

impl Run {
    fn count(&mut self, reason: &'static str, packets: u64, bytes: u64) {
        let c = self.expected.entry(reason).or_default();
        c.packets += packets;
        c.bytes += bytes;
    }

    fn note(&mut self, ok: bool, line: String) {
        if !ok {
            self.failures.push(line.clone());
        }
        self.log
            .push(format!("{} {line}", if ok { "ok  " } else { "FAIL" }));
    }

    /// Send `n` datagrams `src -> dst`, then a marker from the never-filtered
    /// source, and count what the receiver got from `src`.
    fn udp(
        &mut self,
        lab: &Lab,
        srv: &Servers,
        src: SocketAddr,
        dst: SocketAddr,
        n: usize,
        v: Verdict,
    ) {
        let f = udp_flow(lab, srv, src, dst, n);
        let got = f.arrived();
        let want = if v.delivered() { n } else { 0 };
        let bytes: u64 = (f.sent.iter())
            .map(|p| l3_overhead(src.ip()) + 8 + p.len() as u64)
            .sum();
        self.count(v.reason(), n as u64, bytes);
        // The marker is a passing packet too.
        self.count("pass_no_match", 1, 0);
        self.note(
            got == want,
            format!(
                "udp  {src} -> {dst}: sent {n}, received {got}, expected {want} ({})",
                v.reason()
            ),
        );
    }

    /// Connect `src -> dst`; a dropped flow must time out, a passing one connect.
    fn tcp(&mut self, lab: &Lab, src: SocketAddr, dst: SocketAddr, v: Verdict) {
        let r = lab.tcp_connect(src, dst, CONNECT_TIMEOUT);
        let want = if v.delivered() {
            Connect::Connected
        } else {
            Connect::TimedOut
        };
        if v.delivered() {
            // SYN and ACK at least (more when the connection closes).
            self.count(v.reason(), 2, 0);
        } else {
            // SYN: 20-byte TCP header + 20 bytes of options (MSS, SACK-permitted,
            // timestamps, window scale: Linux defaults).
            self.count(v.reason(), r.syns, r.syns * (l3_overhead(src.ip()) + 40));
        }
        self.note(
            r.outcome == want,
            format!(
                "tcp  {src} -> {dst}: {:?} after {} SYN(s), expected {want:?} ({})",
                r.outcome,
                r.syns,
                v.reason()
            ),
        );
    }

    /// `ping -c PINGS -I src`: all replies or none.
    fn ping(&mut self, lab: &Lab, src: IpAddr, v: Verdict) {
        let dst = recv_of(src);
        let r = lab.ping(src, dst, PINGS);
        let want = if v.delivered() { u64::from(PINGS) } else { 0 };
        let echo_bytes = l3_overhead(src) + 8 + 56;
        self.count(v.reason(), r.transmitted, r.transmitted * echo_bytes);
        let ok = r.transmitted == u64::from(PINGS) && r.received == want;
        self.note(
            ok,
            format!(
                "ping {src} -> {dst}: sent {}, {} replies, expected {want} ({})",
                r.transmitted,
                r.received,
                v.reason()
            ),
        );
        if !ok {
            self.log.push(format!(
                "     ping output: {}",
                r.output.trim().replace('\n', " | ")
            ));
        }
    }

    /// Compare the counter deltas `after - before` with the expectations.
    fn check_counters(&mut self, before: &Stats, after: &Stats) {
        let reasons: Vec<String> = after.by_reason.keys().cloned().collect();
        assert!(
            reasons.iter().any(|r| r == "drop_addr"),
            "stats --json lacks the expected reason names: {}",
            after.raw
        );
        for reason in &reasons {
            let (a, b) = (after.get(reason), before.get(reason));
            let got = Count {
                packets: a.packets - b.packets,
                bytes: a.bytes - b.bytes,
            };
            let want = self
                .expected
                .get(reason.as_str())
                .copied()
                .unwrap_or_default();
            if is_exact(reason) {
                if got == want && want == Count::default() {
                    continue; // untouched reason (e.g. malformed_*): as expected
                }
                self.note(
                    got == want,
                    format!(
                        "counter {reason}: {} packets / {} bytes, expected {} / {}",
                        got.packets, got.bytes, want.packets, want.bytes
                    ),
                );
            } else {
                self.note(
                    got.packets >= want.packets,
                    format!(
                        "counter {reason}: {} packets, expected at least {}",
                        got.packets, want.packets
                    ),
                );
            }
        }
        for reason in self.expected.keys() {
            if !reasons.iter().any(|r| r == reason) {
                self.failures
                    .push(format!("counter {reason} missing from stats --json"));
            }
        }
    }

    /// Panic with everything sent and received, the counters and the agent's
    /// output when any flow or counter was off.
    fn finish(&self, what: &str, lab: &Lab, agent: Option<&Agent>) {
        if self.failures.is_empty() {
            return;
        }
        let stats = lab.stats();
        panic!(
            "{what}: {} mismatch(es):\n  {}\n\nall flows and counters:\n  {}\n\nstats now: {}\n{}",
            self.failures.len(),
            self.failures.join("\n  "),
            self.log.join("\n  "),
            stats.summary(),
            agent.map_or(String::new(), |a| a.tail(30))
        );
    }
}

/// Send `n` datagrams `src -> dst` and a marker after them
/// ([`traffic::send`]); every datagram the receiver got meanwhile must be
/// the flow's.
fn udp_flow(lab: &Lab, srv: &Servers, src: SocketAddr, dst: SocketAddr, n: usize) -> Flow {
    let f = srv.probe(dst).send(lab, src, n);
    assert!(
        f.stray.is_empty(),
        "unexpected datagrams on {dst} during flow {src}: {:?}",
        f.stray_lines()
    );
    f
}

/// Whether one datagram from `src` (ephemeral port) to the receiver's open
/// UDP port gets through.
fn passes(lab: &Lab, srv: &Servers, src: IpAddr) -> bool {
    let dst = SocketAddr::new(recv_of(src), OPEN_PORT);
    udp_flow(lab, srv, SocketAddr::new(src, 0), dst, 1).arrived() == 1
}

/// Poll (one datagram per source every 100 ms) until every source's
/// pass/drop state is as given, within [`RELOAD_BOUND`]. Returns how long it took.
fn wait_for_state(
    lab: &Lab,
    srv: &Servers,
    agent: &Agent,
    want: &[(IpAddr, bool)],
    what: &str,
) -> Duration {
    traffic::wait_for(want, RELOAD_BOUND, |ip| passes(lab, srv, ip)).unwrap_or_else(|seen| {
        panic!(
            "{what}: not in effect after {RELOAD_BOUND:?}\n  wanted: {}\n  got:    {seen}\n{}",
            traffic::describe(want),
            agent.tail(30)
        )
    })
}

/// `edge-filter detach`, then: `ip link` shows no `xdp`, the pins are gone,
/// and a source that was blocked gets through.
fn detach_and_verify(lab: &Lab, srv: &Servers, blocked: IpAddr) {
    let out = lab.detach();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(&format!("detached edge-filter from {RECEIVER_IF}")),
        "edge-filter detach failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let link = lab.receiver_link();
    assert!(
        !link.contains("xdp"),
        "XDP still attached after detach:\n{link}"
    );
    assert!(
        !lab.pin_dir().exists(),
        "pins left after detach: {}",
        lab.pin_dir().display()
    );
    assert!(
        passes(lab, srv, blocked),
        "{blocked} is still dropped after detach (link: {link})"
    );
}

fn start_agent(lab: &Lab, extra: &[&str], how: &str) -> Agent {
    let agent = lab.start_agent(extra);
    agent.wait_ready(how);
    agent
}

// ---------------------------------------------------------------------------
// Tests.

/// The whole matrix in one attach mode: which flows pass, exact counters,
/// the filter surviving a graceful stop, and detach.
fn flows_and_counters(mode: &str) {
    let t0 = Instant::now();
    let lab = lab();
    let bl = lab.write_file("blocklist.txt", BLOCKLIST);
    let al = lab.write_file("allowlist.txt", ALLOWLIST);
    let agent = start_agent(
        &lab,
        &[
            "--blocklist",
            path_str(&bl),
            "--allowlist",
            path_str(&al),
            "--mode",
            mode,
        ],
        "attached",
    );
    let link = lab.receiver_link();
    let mode_ok = match mode {
        "skb" => link.contains("xdpgeneric"),
        _ => link.contains(" xdp ") && !link.contains("xdpgeneric"),
    };
    assert!(
        mode_ok,
        "expected a {mode}-mode XDP attachment:\n{link}\n{}",
        agent.tail(30)
    );
    let srv = Servers::start(&lab);
    let before = lab.stats();

    let mut run = Run::default();
    let v4 = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
    let open4 = v4(RECV4, OPEN_PORT);
    let open6 = v4(RECV6, OPEN_PORT);
    let udp_blocked_port4 = v4(RECV4, TCP_BLOCKED);
    let udp_blocked_port6 = v4(RECV6, TCP_BLOCKED);
    use Verdict::*;
    let udp_flows = [
        (v4(CLEAN4, 40000), open4, Pass),
        (v4(CLEAN4, 40001), udp_blocked_port4, Pass),
        (v4(ADDR4, 40000), open4, Drop("drop_addr")),
        // The `tcp … dst` entry does not match UDP.
        (v4(TCPDST4, 40000), udp_blocked_port4, Pass),
        (v4(UDPSRC4, UDP_SRC_BLOCKED), open4, Drop("drop_addr_port")),
        (v4(UDPSRC4, UDP_SRC_BLOCKED + 1), open4, Pass),
        (v4(MON4, 40000), open4, Monitor("monitor_addr")),
        (v4(ALLOW4, 40000), open4, Allow),
        (v4(CLEAN6, 40000), open6, Pass),
        (v4(CLEAN6, 40001), udp_blocked_port6, Pass),
        (v4(PFX6, 40000), open6, Drop("drop_prefix")),
        (v4(PORT6, 40000), udp_blocked_port6, Drop("drop_addr_port")),
        (v4(PORT6, 40001), open6, Pass),
        (v4(MON6, 40000), open6, Monitor("monitor_prefix")),
    ];
    for (src, dst, v) in udp_flows {
        run.udp(&lab, &srv, src, dst, UDP_N, v);
    }
    let tcp_flows = [
        (v4(CLEAN4, 0), v4(RECV4, TCP_BLOCKED), Pass),
        (
            v4(TCPDST4, 0),
            v4(RECV4, TCP_BLOCKED),
            Drop("drop_addr_port"),
        ),
        (v4(TCPDST4, 0), v4(RECV4, TCP_OPEN), Pass),
        (v4(ADDR4, 0), v4(RECV4, TCP_OPEN), Drop("drop_addr")),
        // The `udp 192.0.2.13:5353` entry does not match TCP from port 5353.
        (v4(UDPSRC4, UDP_SRC_BLOCKED), v4(RECV4, TCP_OPEN), Pass),
        (v4(CLEAN6, 0), v4(RECV6, TCP_BLOCKED), Pass),
        (v4(PFX6, 0), v4(RECV6, TCP_OPEN), Drop("drop_prefix")),
        // The `udp [2001:db8:1::12]:7001 dst` entry does not match TCP.
        (v4(PORT6, 0), v4(RECV6, TCP_BLOCKED), Pass),
    ];
    for (src, dst, v) in tcp_flows {
        run.tcp(&lab, src, dst, v);
    }
    let pings = [
        (CLEAN4, Pass),
        (ADDR4, Drop("drop_addr")),
        // Port entries never match ICMP.
        (TCPDST4, Pass),
        (MON4, Monitor("monitor_addr")),
        (ALLOW4, Allow),
        (CLEAN6, Pass),
        (PFX6, Drop("drop_prefix")),
        (PORT6, Pass),
        (MON6, Monitor("monitor_prefix")),
    ];
    for (src, v) in pings {
        run.ping(&lab, src, v);
    }
    let after = lab.stats();
    run.check_counters(&before, &after);
    run.finish(&format!("{mode} mode"), &lab, Some(&agent));
    println!(
        "{mode}: {} flows and counters as expected: {}",
        run.log.len(),
        after.summary()
    );

    // A graceful stop leaves the filter attached and enforcing.
    let st = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        st.success(),
        "agent exited with {st} on SIGTERM\n{}",
        agent.tail(30)
    );
    let link = lab.receiver_link();
    assert!(link.contains("xdp"), "filter gone after SIGTERM:\n{link}");
    assert!(
        !passes(&lab, &srv, ADDR4),
        "{ADDR4} passes after the agent stopped\n{}",
        agent.tail(30)
    );

    detach_and_verify(&lab, &srv, ADDR4);
    println!("{mode}: done in {:.1?}", t0.elapsed());
}

#[test]
fn e2e_native_flows_counters_detach() {
    if netns::skip_unless_root("e2e_native_flows_counters_detach") {
        return;
    }
    flows_and_counters("native");
}

#[test]
fn e2e_skb_flows_counters_detach() {
    if netns::skip_unless_root("e2e_skb_flows_counters_detach") {
        return;
    }
    flows_and_counters("skb");
}

/// Edits of the blocklist file apply without restarting the agent: an
/// in-place rewrite, an atomic rename, an edit with a bad line (reported
/// with file and line, the rest applied) and a change of action only.
#[test]
fn e2e_blocklist_edit_applies_without_restart() {
    if netns::skip_unless_root("e2e_blocklist_edit_applies_without_restart") {
        return;
    }
    let t0 = Instant::now();
    let lab = lab();
    let bl = lab.write_file("blocklist.txt", "192.0.2.11\n2001:db8:1:0:bad::/80\n");
    let agent = start_agent(&lab, &["--blocklist", path_str(&bl)], "attached");
    let srv = Servers::start(&lab);
    let pid = agent.pid();

    let took = wait_for_state(
        &lab,
        &srv,
        &agent,
        &[
            (ADDR4, false),
            (CLEAN4, true),
            (PFX6, false),
            (CLEAN6, true),
        ],
        "initial blocklist",
    );
    assert!(
        took < Duration::from_secs(1),
        "initial blocklist not in effect at once"
    );

    // 1. Rewrite in place: the blocked sources are freed, the clean ones blocked.
    lab.write_file("blocklist.txt", "192.0.2.10\n2001:db8:1::10\n");
    let took = wait_for_state(
        &lab,
        &srv,
        &agent,
        &[
            (ADDR4, true),
            (CLEAN4, false),
            (PFX6, true),
            (CLEAN6, false),
        ],
        "in-place rewrite",
    );
    println!("edit: in-place rewrite applied after {took:.1?}");

    // 2. Atomic replacement (write a temporary file, rename it over).
    lab.replace_file("blocklist.txt", "192.0.2.11\n");
    let took = wait_for_state(
        &lab,
        &srv,
        &agent,
        &[(ADDR4, false), (CLEAN4, true), (PFX6, true), (CLEAN6, true)],
        "atomic replacement",
    );
    println!("edit: atomic replacement applied after {took:.1?}");

    // 3. A bad line is reported with file and line; the rest applies.
    lab.write_file(
        "blocklist.txt",
        "192.0.2.11\nthis is not an entry\n192.0.2.10\n",
    );
    let took = wait_for_state(
        &lab,
        &srv,
        &agent,
        &[(ADDR4, false), (CLEAN4, false), (CLEAN6, true)],
        "edit with a bad line",
    );
    println!("edit: edit with a bad line applied after {took:.1?}");
    let where_ = format!("{}:2:", bl.display());
    assert!(
        agent.wait_stderr(&where_, Duration::from_secs(5)),
        "the bad line was not reported as `{where_} …`\n{}",
        agent.tail(30)
    );

    // 4. Changing only the action (drop -> monitor) applies too.
    let monitored = lab.stats().packets("monitor_addr");
    lab.write_file("blocklist.txt", "192.0.2.11 monitor\n192.0.2.10\n");
    let took = wait_for_state(
        &lab,
        &srv,
        &agent,
        &[(ADDR4, true), (CLEAN4, false)],
        "drop -> monitor",
    );
    println!("edit: drop -> monitor applied after {took:.1?}");
    let now = lab.stats().packets("monitor_addr");
    assert!(
        now > monitored,
        "{ADDR4} passes but monitor_addr did not grow ({monitored} -> {now})\n{}",
        agent.tail(30)
    );

    assert!(
        agent.is_running() && agent.pid() == pid,
        "agent restarted or died\n{}",
        agent.tail(30)
    );
    assert!(
        agent.stderr_text().matches("reloaded").count() >= 4,
        "expected a `reloaded` log line per edit\n{}",
        agent.tail(30)
    );
    let st = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        st.success(),
        "agent exited with {st} on SIGTERM\n{}",
        agent.tail(30)
    );
    detach_and_verify(&lab, &srv, ADDR4);
    println!("edit: done in {:.1?}", t0.elapsed());
}

/// SIGHUP reloads at once, even when the poll interval is an hour.
#[test]
fn e2e_sighup_reloads() {
    if netns::skip_unless_root("e2e_sighup_reloads") {
        return;
    }
    let t0 = Instant::now();
    let lab = lab();
    let bl = lab.write_file("blocklist.txt", "192.0.2.11\n");
    let agent = start_agent(
        &lab,
        &["--blocklist", path_str(&bl), "--poll-seconds", "3600"],
        "attached",
    );
    let srv = Servers::start(&lab);
    wait_for_state(
        &lab,
        &srv,
        &agent,
        &[(ADDR4, false), (CLEAN4, true)],
        "initial blocklist",
    );
    lab.write_file("blocklist.txt", "192.0.2.10\n");
    // With an hour between polls, nothing changes by itself.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !passes(&lab, &srv, ADDR4) && passes(&lab, &srv, CLEAN4),
        "the edit applied before SIGHUP with --poll-seconds 3600\n{}",
        agent.tail(30)
    );
    assert!(
        agent.signal(libc::SIGHUP),
        "agent gone before SIGHUP\n{}",
        agent.tail(30)
    );
    let took = wait_for_state(
        &lab,
        &srv,
        &agent,
        &[(ADDR4, true), (CLEAN4, false)],
        "reload on SIGHUP",
    );
    println!("sighup: applied after {took:.1?}");
    assert!(
        agent.is_running(),
        "agent died on SIGHUP\n{}",
        agent.tail(30)
    );
    let st = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        st.success(),
        "agent exited with {st} on SIGTERM\n{}",
        agent.tail(30)
    );
    detach_and_verify(&lab, &srv, CLEAN4);
    println!("sighup: done in {:.1?}", t0.elapsed());
}

/// SIGKILL leaves the filter attached and enforcing; a new agent on the same
/// pins adopts them (same program, counters continue) and applies the
/// blocklist as it is now.
#[test]
fn e2e_sigkill_keeps_filter_new_agent_adopts() {
    if netns::skip_unless_root("e2e_sigkill_keeps_filter_new_agent_adopts") {
        return;
    }
    let t0 = Instant::now();
    let lab = lab();
    let bl = lab.write_file("blocklist.txt", "192.0.2.11\n2001:db8:1:0:bad::/80\n");
    // The last edit removes two of three entries: the shrink guard (its
    // own test is in reliability.rs) would hold it.
    let args = [
        "--blocklist",
        path_str(&bl),
        "--mode",
        "native",
        "--max-shrink",
        "1",
    ];
    let agent = start_agent(&lab, &args, "attached");
    let srv = Servers::start(&lab);
    let prog = lab.xdp_prog_id();
    assert!(
        prog.is_some(),
        "no XDP program on {RECEIVER_IF}:\n{}",
        lab.receiver_link()
    );

    let expect = |run: &mut Run, src: IpAddr, v: Verdict| {
        let dst = SocketAddr::new(recv_of(src), OPEN_PORT);
        run.udp(&lab, &srv, SocketAddr::new(src, 40000), dst, UDP_N, v);
    };
    let n = UDP_N as u64;
    let check = |run: &mut Run, stats: &Stats, addr: u64, prefix: u64, when: &str| {
        for (reason, want) in [("drop_addr", addr), ("drop_prefix", prefix)] {
            let got = stats.packets(reason);
            run.note(
                got == want,
                format!("{when}: counter {reason} = {got}, expected {want}"),
            );
        }
    };

    // Enforcing with the first agent.
    let mut run = Run::default();
    expect(&mut run, ADDR4, Verdict::Drop("drop_addr"));
    expect(&mut run, PFX6, Verdict::Drop("drop_prefix"));
    expect(&mut run, CLEAN4, Verdict::Pass);
    check(&mut run, &lab.stats(), n, n, "first agent");
    run.finish("first agent", &lab, Some(&agent));

    // SIGKILL: the filter stays and keeps dropping.
    let st = agent.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "agent did not die of SIGKILL: {st}"
    );
    assert!(
        lab.pin_dir().join("link").exists(),
        "link pin gone after SIGKILL"
    );
    assert_eq!(
        lab.xdp_prog_id(),
        prog,
        "XDP program changed or gone after SIGKILL"
    );
    expect(&mut run, ADDR4, Verdict::Drop("drop_addr"));
    expect(&mut run, PFX6, Verdict::Drop("drop_prefix"));
    expect(&mut run, CLEAN4, Verdict::Pass);
    check(&mut run, &lab.stats(), 2 * n, 2 * n, "no agent");

    // Edit while no agent runs: nothing applies it yet.
    lab.write_file(
        "blocklist.txt",
        "192.0.2.11\n2001:db8:1:0:bad::/80\n192.0.2.10\n",
    );
    std::thread::sleep(Duration::from_millis(1500));
    expect(&mut run, CLEAN4, Verdict::Pass);
    run.finish("after SIGKILL", &lab, Some(&agent));
    drop(agent);

    // A new agent adopts the pins: same program, counters not reset, the
    // blocklist as it is now applied at once.
    let agent2 = start_agent(&lab, &args, "adopted");
    assert_eq!(
        lab.xdp_prog_id(),
        prog,
        "the new agent replaced the program instead of adopting it"
    );
    check(
        &mut run,
        &lab.stats(),
        2 * n,
        2 * n,
        "adopted (before traffic)",
    );
    expect(&mut run, ADDR4, Verdict::Drop("drop_addr"));
    expect(&mut run, PFX6, Verdict::Drop("drop_prefix"));
    expect(&mut run, CLEAN4, Verdict::Drop("drop_addr"));
    expect(&mut run, CLEAN6, Verdict::Pass);
    check(&mut run, &lab.stats(), 4 * n, 3 * n, "adopted");
    run.finish("after adoption", &lab, Some(&agent2));
    assert!(
        agent2.stderr_text().contains("adopted"),
        "no adoption log line\n{}",
        agent2.tail(30)
    );

    // And the adopted filter still follows edits.
    lab.write_file("blocklist.txt", "2001:db8:1:0:bad::/80\n");
    let took = wait_for_state(
        &lab,
        &srv,
        &agent2,
        &[(ADDR4, true), (CLEAN4, true), (PFX6, false)],
        "edit after adoption",
    );
    println!("sigkill: edit after adoption applied after {took:.1?}");

    let st = agent2.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        st.success(),
        "agent exited with {st} on SIGTERM\n{}",
        agent2.tail(30)
    );
    detach_and_verify(&lab, &srv, PFX6);
    println!("sigkill: done in {:.1?}", t0.elapsed());
}

/// Wait until the agent has read its files but has not reported ready: it
/// creates the pin root right after reading them and takes seconds less than
/// the program load and attach that follow. Returns false when `ready:` came
/// first (the window was missed).
fn wait_until_attaching(lab: &Lab, agent: &Agent) -> bool {
    let deadline = Instant::now() + netns::READY_TIMEOUT;
    while !lab.bpffs.exists() {
        assert!(
            Instant::now() < deadline && agent.is_running(),
            "agent never created {}\n{}",
            lab.bpffs.display(),
            agent.tail(30)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    agent.stdout_lines().is_empty()
}

/// An edit made while the agent is starting (after it read the blocklist,
/// before `ready:`) must still be applied.
///
/// Regression test: the agent used to take its first mtime+size stamp after
/// attaching, so an edit made during the attach was never applied.
#[test]
fn e2e_edit_during_startup_is_applied() {
    if netns::skip_unless_root("e2e_edit_during_startup_is_applied") {
        return;
    }
    let lab = lab();
    let bl = lab.write_file("blocklist.txt", "192.0.2.11\n");
    let agent = lab.start_agent(&["--blocklist", path_str(&bl)]);
    let in_window = wait_until_attaching(&lab, &agent);
    lab.write_file("blocklist.txt", "192.0.2.10\n");
    agent.wait_ready("attached");
    if !in_window {
        println!("inconclusive: the agent was ready before the edit");
        return;
    }
    let srv = Servers::start(&lab);
    let took = wait_for_state(
        &lab,
        &srv,
        &agent,
        &[(ADDR4, true), (CLEAN4, false)],
        "edit made during startup",
    );
    println!("startup edit: applied after {took:.1?}");
}

/// SIGHUP (the reload signal) sent while the agent is starting must not kill
/// it.
///
/// Regression test: the handlers used to be installed after the attach, so
/// an early SIGHUP (its default action terminates) killed the agent.
#[test]
fn e2e_sighup_during_startup_is_harmless() {
    if netns::skip_unless_root("e2e_sighup_during_startup_is_harmless") {
        return;
    }
    let lab = lab();
    let bl = lab.write_file("blocklist.txt", "192.0.2.11\n");
    let agent = lab.start_agent(&["--blocklist", path_str(&bl)]);
    if !wait_until_attaching(&lab, &agent) {
        println!("inconclusive: the agent was ready before the signal");
        return;
    }
    assert!(agent.signal(libc::SIGHUP), "agent gone\n{}", agent.tail(30));
    agent.wait_ready("attached");
    let srv = Servers::start(&lab);
    wait_for_state(
        &lab,
        &srv,
        &agent,
        &[(ADDR4, false), (CLEAN4, true)],
        "filter after SIGHUP at startup",
    );
    assert!(agent.is_running(), "agent died\n{}", agent.tail(30));
}
