//! `--live`: send the capture's frames through a real interface and compare
//! the program's counters with the in-kernel (`BPF_PROG_TEST_RUN`) replay.
//!
//! Setup, all private to this process:
//!
//! - two fresh network namespaces, `ef-replay-<pid>-<n>-s` (sender) and
//!   `-r` (receiver), joined by a veth pair `efr-snd` / `efr-rcv`; both ends
//!   have IPv6 disabled and ARP off and no addresses, so the kernel itself
//!   sends nothing across: only the replayed frames cross;
//! - the XDP program loaded with its own maps (nothing pinned), filled with
//!   the entry set and attached in native mode to `efr-rcv` through a
//!   bpf_link held by this process (closing it detaches);
//! - an `AF_PACKET` raw socket bound to `efr-snd`, created by a thread that
//!   entered the sender namespace (the socket stays bound to it).
//!
//! Each frame is sent as captured; after every [`BATCH`] frames the
//! counters are polled until they account for every frame sent, so the
//! veth's ring never overflows. Frames the veth cannot carry (shorter than
//! an Ethernet header, or longer than MTU + 14 bytes) are excluded from
//! both sides and counted. The namespaces are deleted when [`Live`] is
//! dropped, on error too; namespaces left by a killed process (named after
//! a pid that no longer runs) are swept at the next start.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aya::programs::XdpMode;
use aya::programs::links::FdLink;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter_common::{self as abi, Counter};
use serde::Serialize;

use super::{Packet, ReplayError, Result, Sink, verdict_of};
use crate::entry::EntrySet;
use crate::kernel::counters::reason_name;
use crate::kernel::maps::EntryMaps;

/// Prefix of the namespaces `--live` creates.
pub const NETNS_PREFIX: &str = "ef-replay-";
/// The sending end of the veth pair (inside its namespace).
pub const SENDER_IF: &str = "efr-snd";
/// The receiving, filtered end.
pub const RECEIVER_IF: &str = "efr-rcv";
/// The veth MTU: the largest that native XDP on veth accepts for a program
/// without fragment support (a page minus XDP headroom and
/// `skb_shared_info`, minus the Ethernet header), so frames up to
/// [`crate::kernel::classifier::MAX_FRAME`] bytes go through.
pub const MTU: usize = crate::kernel::classifier::MAX_FRAME - 14;
/// Frames sent between two waits for the counters to catch up.
pub const BATCH: u64 = 64;
/// How long the counters may lag behind the frames sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One reason of the comparison.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LiveRow {
    /// Reason name.
    pub reason: String,
    /// `pass`, `drop` or `monitor`.
    pub verdict: &'static str,
    /// Packets by the in-kernel (test run) replay of the same frames.
    pub in_kernel_packets: u64,
    /// Packets counted by the program on the veth.
    pub live_packets: u64,
    /// Bytes by the in-kernel replay.
    pub in_kernel_bytes: u64,
    /// Bytes counted on the veth.
    pub live_bytes: u64,
}

/// What `--live` found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LiveReport {
    /// The namespaces used (deleted since).
    pub namespaces: Vec<String>,
    /// The filtered interface.
    pub interface: String,
    /// Its MTU.
    pub mtu: usize,
    /// Frames sent.
    pub sent: u64,
    /// Frames left out: shorter than an Ethernet header.
    pub excluded_short: u64,
    /// Frames left out: longer than MTU + 14 bytes.
    pub excluded_long: u64,
    /// Reasons with packets on either side.
    pub by_reason: Vec<LiveRow>,
    /// Whether every reason has equal packets and bytes.
    pub equal: bool,
    /// What differs.
    pub differences: Vec<String>,
}

fn live_err(msg: impl Into<String>) -> ReplayError {
    ReplayError::Live(msg.into())
}

/// Run `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        live_err(format!(
            "cannot run `ip` ({e}): install iproute2 (`cargo xtask setup` does)"
        ))
    })?;
    if !out.status.success() {
        return Err(live_err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Run `f` on a new thread that entered network namespace `ns` first (the
/// calling thread's namespace never changes).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).map_err(|e| live_err(format!("opening {path}: {e}")))?;
            // SAFETY: a valid namespace fd; only this thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(live_err(format!(
                    "entering network namespace {ns}: {}",
                    std::io::Error::last_os_error()
                )));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(live_err("a namespace thread panicked")))
    })
}

/// The namespaces, deleted on drop.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.drain(..) {
            if let Err(e) = ip(&["netns", "del", &n]) {
                log::warn!("cleaning up: {e}");
            }
        }
    }
}

/// Delete namespaces left by `--live` runs whose process is gone.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            log::info!("removing namespace {name} left by a previous run (pid {pid})");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

fn disable_ipv6(iface: &str) -> Result<()> {
    let p = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    match std::fs::write(&p, "1") {
        Ok(()) => Ok(()),
        // No IPv6 in this kernel: nothing to disable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(live_err(format!("writing {p}: {e}"))),
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).map_err(|_| live_err("bad interface name"))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(live_err(format!(
            "interface {iface} not found: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(idx)
}

/// A raw packet socket bound to `iface` (in the calling thread's namespace),
/// receiving nothing (protocol 0).
fn packet_socket(iface: &str) -> Result<OwnedFd> {
    let idx = ifindex(iface)?;
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(live_err(format!(
            "creating an AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd was just returned by socket(2) and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; the fields set below complete it.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = 0;
    sll.sll_ifindex = idx as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(live_err(format!(
            "binding the packet socket to {iface}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(fd)
}

/// The live replay in progress (a [`Sink`]). Field order is drop order:
/// the socket closes, the program detaches, then the namespaces go.
pub struct Live {
    sock: OwnedFd,
    link: Option<FdLink>,
    maps: EntryMaps,
    expected: Vec<Counter>,
    sent: u64,
    pending: u64,
    excluded_short: u64,
    excluded_long: u64,
    namespaces: Vec<String>,
    _netns: Namespaces,
}

impl Live {
    /// Build the namespaces and veth pair, and attach the program with `set`.
    pub fn start(set: &EntrySet, malformed_drop: bool) -> Result<Live> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(live_err(
                "needs root: it creates network namespaces, a veth pair and attaches XDP \
                 (run it as root; without --live, replay only needs CAP_BPF)",
            ));
        }
        sweep_stale();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NETNS_PREFIX}{}-{n}", std::process::id());
        let (ns_s, ns_r) = (format!("{base}-s"), format!("{base}-r"));
        let mut netns = Namespaces { names: Vec::new() };
        netns.add(&ns_s)?;
        netns.add(&ns_r)?;
        ip(&[
            "link",
            "add",
            SENDER_IF,
            "netns",
            &ns_s,
            "type",
            "veth",
            "peer",
            "name",
            RECEIVER_IF,
            "netns",
            &ns_r,
        ])?;
        let mtu = MTU.to_string();
        for (ns, iface) in [(&ns_s, SENDER_IF), (&ns_r, RECEIVER_IF)] {
            in_netns(ns, || disable_ipv6(iface))?;
            ip(&[
                "-n", ns, "link", "set", "dev", iface, "arp", "off", "mtu", &mtu, "up",
            ])?;
        }

        let flags = if malformed_drop {
            abi::CONFIG_MALFORMED_DROP
        } else {
            0
        };
        // A private instance whose maps are a tier for the set, holding it.
        let mut maps = EntryMaps::private(set, flags)?;
        let prog = maps.xdp_mut()?;
        let link = in_netns(&ns_r, || {
            let id = prog
                .attach(RECEIVER_IF, XdpMode::Driver)
                .map_err(|e| live_err(format!("attaching XDP (native) to {RECEIVER_IF}: {e}")))?;
            let link = prog
                .take_link(id)
                .map_err(|e| live_err(format!("taking the XDP link: {e}")))?;
            // A netlink attachment would be detached by ifindex from
            // whatever namespace drops it: insist on a bpf_link.
            FdLink::try_from(link).map_err(|e| {
                live_err(format!(
                    "the kernel attached XDP without a bpf_link ({e}); Linux 5.9+ is needed"
                ))
            })
        })?;
        let sock = in_netns(&ns_s, || packet_socket(SENDER_IF))?;
        let live = Live {
            sock,
            link: Some(link),
            maps,
            expected: vec![Counter::default(); abi::REASON_COUNT as usize],
            sent: 0,
            pending: 0,
            excluded_short: 0,
            excluded_long: 0,
            namespaces: vec![ns_s, ns_r],
            _netns: netns,
        };
        let before = live.counted()?;
        if before != 0 {
            return Err(live_err(format!(
                "{before} packets crossed {RECEIVER_IF} before any was sent"
            )));
        }
        Ok(live)
    }

    /// Packets the program has counted so far.
    fn counted(&self) -> Result<u64> {
        Ok(self.maps.counters()?.iter().map(|c| c.packets).sum())
    }

    /// Wait until the counters account for every frame sent.
    fn drain(&mut self, timeout: Duration) -> Result<u64> {
        let start = Instant::now();
        loop {
            let c = self.counted()?;
            if c >= self.sent || start.elapsed() > timeout {
                self.pending = 0;
                return Ok(c);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<()> {
        let mut tries = 0;
        loop {
            // SAFETY: a valid socket and buffer.
            let n = unsafe {
                libc::send(
                    self.sock.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            let retry = matches!(
                e.raw_os_error(),
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR)
            );
            tries += 1;
            if !retry || tries > 100 {
                return Err(live_err(format!(
                    "sending a {}-byte frame on {SENDER_IF}: {e}",
                    frame.len()
                )));
            }
            self.drain(Duration::from_millis(100))?;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Wait for the last frames, read the counters and compare.
    pub fn finish(mut self) -> Result<LiveReport> {
        self.drain(DRAIN_TIMEOUT)?;
        // Frames the program counted late would still show as differences:
        // give stragglers a moment, then read once more.
        std::thread::sleep(Duration::from_millis(50));
        let live = self.maps.counters()?;
        drop(self.link.take());
        let mut rows = Vec::new();
        let mut differences = Vec::new();
        for r in 0..abi::REASON_COUNT {
            let (k, l) = (self.expected[r as usize], live[r as usize]);
            if k.packets == 0 && l.packets == 0 {
                continue;
            }
            let name = reason_name(r);
            if k.packets != l.packets || k.bytes != l.bytes {
                differences.push(format!(
                    "{name}: in-kernel {} packets / {} bytes, live {} packets / {} bytes",
                    k.packets, k.bytes, l.packets, l.bytes
                ));
            }
            rows.push(LiveRow {
                reason: name,
                verdict: verdict_of(r),
                in_kernel_packets: k.packets,
                live_packets: l.packets,
                in_kernel_bytes: k.bytes,
                live_bytes: l.bytes,
            });
        }
        Ok(LiveReport {
            namespaces: self.namespaces.clone(),
            interface: RECEIVER_IF.into(),
            mtu: MTU,
            sent: self.sent,
            excluded_short: self.excluded_short,
            excluded_long: self.excluded_long,
            by_reason: rows,
            equal: differences.is_empty(),
            differences,
        })
    }
}

impl Sink for Live {
    fn packet(&mut self, p: &Packet<'_>) -> Result<()> {
        if p.frame.len() < crate::kernel::classifier::MIN_FRAME {
            self.excluded_short += 1;
            return Ok(());
        }
        if p.wire_len > MTU + 14 {
            self.excluded_long += 1;
            return Ok(());
        }
        let c = &mut self.expected[p.decision.reason as usize];
        c.packets += 1;
        c.bytes += p.frame.len() as u64;
        self.send(p.frame)?;
        self.sent += 1;
        self.pending += 1;
        if self.pending >= BATCH {
            self.drain(DRAIN_TIMEOUT)?;
        }
        Ok(())
    }
}

/// Print the comparison.
pub fn print_human(l: &LiveReport, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "live: {} frames sent through a veth pair ({} in namespace {}, MTU {}); {} excluded from both sides ({} shorter than 14 bytes, {} longer than {} bytes)",
        l.sent,
        l.interface,
        l.namespaces.last().map_or("", String::as_str),
        l.mtu,
        l.excluded_short + l.excluded_long,
        l.excluded_short,
        l.excluded_long,
        l.mtu + 14
    )?;
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header([
        "reason",
        "verdict",
        "in-kernel packets",
        "live packets",
        "in-kernel bytes",
        "live bytes",
        "",
    ]);
    for r in &l.by_reason {
        let same = r.in_kernel_packets == r.live_packets && r.in_kernel_bytes == r.live_bytes;
        t.add_row([
            r.reason.clone(),
            r.verdict.to_string(),
            r.in_kernel_packets.to_string(),
            r.live_packets.to_string(),
            r.in_kernel_bytes.to_string(),
            r.live_bytes.to_string(),
            if same { "" } else { "DIFFERS" }.to_string(),
        ]);
    }
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "live counters {} the in-kernel replay",
        if l.equal { "equal" } else { "DIFFER from" }
    )?;
    Ok(())
}
