//! Does a source get through the filter? One UDP sink in the receiving
//! namespace, datagrams from the sender, and a marker from a source that
//! is never filtered: the veth delivers in order, so once the marker
//! arrives every datagram of the flow that got through has arrived too.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{Lab, recv_until_marker};

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

    /// Send `n` datagrams from `src` (an ephemeral port) and return how many
    /// arrived. Panics on datagrams from anyone else.
    pub fn flow(&self, lab: &Lab, src: IpAddr, n: usize) -> usize {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let s = SEQ.fetch_add(1, Ordering::Relaxed);
        let payloads: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("probe{s}#{i}").into_bytes())
            .collect();
        lab.send_udp(SocketAddr::new(src, 0), self.dst, &payloads);
        let marker = format!("probe-marker{s}").into_bytes();
        lab.send_udp(
            SocketAddr::new(self.marker_src, 0),
            self.dst,
            std::slice::from_ref(&marker),
        );
        let mut got = recv_until_marker(&self.sink, &marker, Duration::from_secs(5));
        // Grace for a datagram reordered behind the marker.
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 2048];
        self.sink.set_nonblocking(true).expect("nonblocking");
        while let Ok((len, from)) = self.sink.recv_from(&mut buf) {
            got.push((from, buf[..len].to_vec()));
        }
        self.sink.set_nonblocking(false).expect("blocking");
        let prefix = format!("probe{s}#");
        let ours = got
            .iter()
            .filter(|(from, p)| from.ip() == src && p.starts_with(prefix.as_bytes()))
            .count();
        // Late datagrams of earlier probes may still trickle in; anything
        // else is a test bug.
        let stray: Vec<String> = got
            .iter()
            .filter(|(_, p)| !p.starts_with(b"probe"))
            .map(|(from, p)| format!("{from} {}", String::from_utf8_lossy(p)))
            .collect();
        assert!(
            stray.is_empty(),
            "unexpected datagrams on {}: {stray:?}",
            self.dst
        );
        ours
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
        let t0 = Instant::now();
        loop {
            let now: Vec<(IpAddr, bool)> = want
                .iter()
                .map(|&(ip, _)| (ip, self.passes(lab, ip)))
                .collect();
            if now == want {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return Err(now
                    .iter()
                    .map(|(ip, p)| format!("{ip}: {}", if *p { "passes" } else { "dropped" }))
                    .collect::<Vec<_>>()
                    .join(", "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
