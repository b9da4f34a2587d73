//! Does a source get through the filter? Datagrams from the sender to a UDP
//! sink in the receiving namespace, then a marker from a source that is
//! never filtered: the veth delivers in order, so once the marker arrives
//! every datagram of the flow that got through has arrived too (and a
//! short grace catches one reordered behind it).
//!
//! [`send`] is the one flow every test sends; [`Probe`] is a sink with its
//! marker source, for tests that only ask "passes or dropped?".

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{Lab, recv_until_marker};

/// Payload bytes of every flow datagram: fixed, so byte counters are exact
/// (a datagram is Ethernet + IP + UDP headers and this).
pub const PAYLOAD: usize = 24;

/// Every flow's payloads and markers start with this.
const TAG: &str = "flow";

/// What a flow sent, and what arrived at the sink meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Flow {
    /// The payloads sent, in order (each [`PAYLOAD`] bytes).
    pub sent: Vec<Vec<u8>>,
    /// This flow's datagrams that arrived.
    pub received: Vec<Vec<u8>>,
    /// Anything else that arrived before the marker (or in the grace after
    /// it): its source and payload.
    pub stray: Vec<(SocketAddr, Vec<u8>)>,
}

impl Flow {
    /// How many of the flow's datagrams arrived.
    pub fn arrived(&self) -> usize {
        self.received.len()
    }

    /// Whether `payload` (one of [`Flow::sent`]) arrived.
    pub fn delivered(&self, payload: &[u8]) -> bool {
        self.received.iter().any(|p| p == payload)
    }

    /// The stray datagrams as `SOURCE PAYLOAD` lines.
    pub fn stray_lines(&self) -> Vec<String> {
        self.stray
            .iter()
            .map(|(from, p)| format!("{from} {}", String::from_utf8_lossy(p)))
            .collect()
    }

    /// The stray datagrams that are no flow's (a late datagram of an
    /// earlier flow is one of ours).
    pub fn foreign(&self) -> Vec<String> {
        self.stray
            .iter()
            .filter(|(_, p)| !p.starts_with(TAG.as_bytes()))
            .map(|(from, p)| format!("{from} {}", String::from_utf8_lossy(p)))
            .collect()
    }
}

/// Send `n` datagrams of [`PAYLOAD`] bytes from `src` to `dst`, then a
/// marker from `marker_src` to `sink`'s own address, and take what `sink`
/// received until the marker (plus a 20 ms grace for a datagram reordered
/// behind it). `dst` need not be the sink's address: datagrams to a port
/// nobody listens on are still seen, and counted, by the filter.
pub fn send(
    lab: &Lab,
    sink: &UdpSocket,
    src: SocketAddr,
    dst: SocketAddr,
    marker_src: SocketAddr,
    n: usize,
) -> Flow {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let s = SEQ.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("{TAG}{s}#");
    let sent: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("{:<PAYLOAD$}", format!("{prefix}{i}")).into_bytes())
        .collect();
    assert!(sent.iter().all(|p| p.len() == PAYLOAD), "payload too long");
    lab.send_udp(src, dst, &sent);
    let marker = format!("{TAG}-marker{s}").into_bytes();
    let to = sink.local_addr().expect("sink address");
    lab.send_udp(marker_src, to, std::slice::from_ref(&marker));
    let mut got = recv_until_marker(sink, &marker, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(20));
    let mut buf = [0u8; 2048];
    sink.set_nonblocking(true).expect("nonblocking");
    while let Ok((len, from)) = sink.recv_from(&mut buf) {
        got.push((from, buf[..len].to_vec()));
    }
    sink.set_nonblocking(false).expect("blocking");
    let (received, stray): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|(from, p)| from.ip() == src.ip() && p.starts_with(prefix.as_bytes()));
    Flow {
        sent,
        received: received.into_iter().map(|(_, p)| p).collect(),
        stray,
    }
}

/// A UDP sink on the receiver and the source of its markers.
pub struct Probe {
    sink: UdpSocket,
    dst: SocketAddr,
    marker_src: IpAddr,
}

impl Probe {
    /// A sink on `dst` (a receiver address) and markers sent from
    /// `marker_src` (a sender address no entry may match).
    pub fn new(lab: &Lab, dst: SocketAddr, marker_src: IpAddr) -> Probe {
        Probe {
            sink: lab.udp_sink(dst),
            dst,
            marker_src,
        }
    }

    /// The sink's address.
    pub fn addr(&self) -> SocketAddr {
        self.dst
    }

    /// [`send`] `n` datagrams from `src` to this sink.
    pub fn send(&self, lab: &Lab, src: SocketAddr, n: usize) -> Flow {
        self.send_to(lab, src, self.dst, n)
    }

    /// [`send`] `n` datagrams from `src` to `dst` (a port of the receiver
    /// nobody may listen on), the marker to this sink.
    pub fn send_to(&self, lab: &Lab, src: SocketAddr, dst: SocketAddr, n: usize) -> Flow {
        send(
            lab,
            &self.sink,
            src,
            dst,
            SocketAddr::new(self.marker_src, 0),
            n,
        )
    }

    /// Send `n` datagrams from `src` (an ephemeral port) and return how many
    /// arrived. Panics on datagrams that are no flow's.
    pub fn flow(&self, lab: &Lab, src: IpAddr, n: usize) -> usize {
        let f = self.send(lab, SocketAddr::new(src, 0), n);
        let foreign = f.foreign();
        assert!(
            foreign.is_empty(),
            "unexpected datagrams on {}: {foreign:?}",
            self.dst
        );
        f.arrived()
    }

    /// Whether one datagram from `src` gets through.
    pub fn passes(&self, lab: &Lab, src: IpAddr) -> bool {
        self.flow(lab, src, 1) == 1
    }

    /// Poll until every source's pass (`true`) or drop state is as given, or
    /// `timeout`; returns how long it took, or what was seen instead.
    pub fn wait_for(
        &self,
        lab: &Lab,
        want: &[(IpAddr, bool)],
        timeout: Duration,
    ) -> Result<Duration, String> {
        wait_for(want, timeout, |ip| self.passes(lab, ip))
    }
}

/// Poll (every 100 ms) until `passes` says of every source what `want`
/// says (`true`: passes), or `timeout`; returns how long it took, or what
/// was seen instead ([`describe`]).
pub fn wait_for(
    want: &[(IpAddr, bool)],
    timeout: Duration,
    mut passes: impl FnMut(IpAddr) -> bool,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let now: Vec<(IpAddr, bool)> = want.iter().map(|&(ip, _)| (ip, passes(ip))).collect();
        if now == want {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return Err(describe(&now));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `192.0.2.1: passes, 192.0.2.2: dropped`.
pub fn describe(states: &[(IpAddr, bool)]) -> String {
    states
        .iter()
        .map(|(ip, p)| format!("{ip}: {}", if *p { "passes" } else { "dropped" }))
        .collect::<Vec<_>>()
        .join(", ")
}
