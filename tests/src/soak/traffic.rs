//! Continuous UDP traffic from every traffic source to a sink in the
//! receiver's namespace, counted per source and per epoch on both ends.
//!
//! One sender thread owns a socket bound to each source address (made in
//! the sender's namespace) and sends one datagram from each in turn,
//! `rate` rounds a second, all the time: through agent restarts and
//! interface recreates too. Each datagram carries the current epoch and
//! its source index. A judged window ([`Traffic::window`]) pauses the
//! sender at both ends (so the kernel's counters, read while paused,
//! bracket exactly the window's packets), gives the window its own epoch,
//! and compares per-source sent and received counts.
//!
//! Sockets bound to an address keep working when the interface is deleted
//! and recreated with the address re-added; sends that fail meanwhile are
//! not counted as sent.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::model::{RECEIVER_ADDR, SINK_PORT, SOURCES, source_addr, source_index};
use crate::netns::Lab;

/// Epochs outside judged windows.
const UNJUDGED: u32 = 0;

#[derive(Default)]
struct Shared {
    epoch: AtomicU32,
    pause: AtomicBool,
    paused: AtomicBool,
    stop: AtomicBool,
    /// (epoch, source) → datagrams sent.
    sent: Mutex<HashMap<(u32, usize), u64>>,
    /// (epoch, source) → datagrams received.
    received: Mutex<HashMap<(u32, usize), u64>>,
    /// Every datagram received, for "has the sink drained".
    total_received: std::sync::atomic::AtomicU64,
    total_sent: std::sync::atomic::AtomicU64,
}

/// The traffic generator and sink.
pub struct Traffic {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    next_epoch: u32,
}

/// Per-source counts of one judged window.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Sent per source.
    pub sent: Vec<u64>,
    /// Received per source.
    pub received: Vec<u64>,
}

impl Traffic {
    /// Start sending from every source at `rate` datagrams per second per
    /// source. The lab must have the source addresses on the sender's veth
    /// and [`RECEIVER_ADDR`] on the receiver's.
    pub fn start(lab: &Lab, rate: u32) -> Traffic {
        let shared = Arc::new(Shared::default());
        let sink_addr = SocketAddr::from((RECEIVER_ADDR, SINK_PORT));
        let sink = lab.receiver.enter(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .expect("udp socket");
            s.set_recv_buffer_size(4 << 20).expect("SO_RCVBUF");
            s.bind(&sink_addr.into())
                .unwrap_or_else(|e| panic!("bind sink {sink_addr}: {e}"));
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("read timeout");
            s
        });
        let sockets: Vec<UdpSocket> = lab.sender.enter(|| {
            (0..SOURCES)
                .map(|i| {
                    let a = SocketAddr::from((source_addr(i), 40000));
                    UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"))
                })
                .collect()
        });
        let sh = shared.clone();
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !sh.stop.load(Ordering::SeqCst) {
                match sink.recv_from(&mut buf) {
                    Ok((n, from)) if n >= 8 => {
                        let epoch = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
                        let idx = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
                        let SocketAddr::V4(from) = from else { continue };
                        // Count by the address the datagram came from; the
                        // payload's index must agree (else it is not ours).
                        if source_index(*from.ip()) == Some(idx as usize) {
                            *sh.received
                                .lock()
                                .unwrap()
                                .entry((epoch, idx as usize))
                                .or_default() += 1;
                        }
                        sh.total_received.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        });
        let sh = shared.clone();
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let sender = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !sh.stop.load(Ordering::SeqCst) {
                if sh.pause.load(Ordering::SeqCst) {
                    sh.paused.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                    next = Instant::now();
                    continue;
                }
                sh.paused.store(false, Ordering::SeqCst);
                let epoch = sh.epoch.load(Ordering::SeqCst);
                let mut sent_now = [0u64; SOURCES];
                for (i, s) in sockets.iter().enumerate() {
                    let mut p = [0u8; 32];
                    p[0..4].copy_from_slice(&epoch.to_be_bytes());
                    p[4..8].copy_from_slice(&(i as u32).to_be_bytes());
                    if s.send_to(&p, sink_addr).is_ok() {
                        sent_now[i] += 1;
                    }
                }
                {
                    let mut sent = sh.sent.lock().unwrap();
                    for (i, n) in sent_now.iter().enumerate() {
                        if *n > 0 {
                            *sent.entry((epoch, i)).or_default() += n;
                        }
                    }
                }
                sh.total_sent
                    .fetch_add(sent_now.iter().sum::<u64>(), Ordering::SeqCst);
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Traffic {
            shared,
            threads: vec![receiver, sender],
            next_epoch: 1,
        }
    }

    /// Pause the sender (returns once it stopped sending) and wait until
    /// the sink has received everything in flight.
    fn pause(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.shared.paused.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Drained: the received count stood still for 30 ms.
        let mut last = self.shared.total_received.load(Ordering::SeqCst);
        let mut still = Instant::now();
        while still.elapsed() < Duration::from_millis(30) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            let now = self.shared.total_received.load(Ordering::SeqCst);
            if now != last {
                last = now;
                still = Instant::now();
            }
        }
    }

    fn resume(&self) {
        self.shared.pause.store(false, Ordering::SeqCst);
    }

    /// A judged window of `length`: `at_edge` runs while the sender is
    /// paused, before and after (read the kernel's counters there).
    /// Returns the per-source counts of the window and both edge results.
    pub fn window<T>(
        &mut self,
        length: Duration,
        mut at_edge: impl FnMut() -> T,
    ) -> (Counts, T, T) {
        self.pause();
        let before = at_edge();
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.shared.epoch.store(epoch, Ordering::SeqCst);
        self.resume();
        std::thread::sleep(length);
        self.pause();
        self.shared.epoch.store(UNJUDGED, Ordering::SeqCst);
        let after = at_edge();
        self.resume();
        let take = |m: &Mutex<HashMap<(u32, usize), u64>>| {
            let mut m = m.lock().unwrap();
            let v: Vec<u64> = (0..SOURCES)
                .map(|i| m.remove(&(epoch, i)).unwrap_or(0))
                .collect();
            // Forget unjudged counts too: only windows are compared.
            m.retain(|(e, _), _| *e != UNJUDGED);
            v
        };
        let counts = Counts {
            sent: take(&self.shared.sent),
            received: take(&self.shared.received),
        };
        (counts, before, after)
    }

    /// Datagrams sent and received so far (all epochs).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.shared.total_sent.load(Ordering::SeqCst),
            self.shared.total_received.load(Ordering::SeqCst),
        )
    }

    /// Stop both threads.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}
