//! Interfaces as the kernel reports them over rtnetlink: which XDP programs
//! run on one (for `status`), and a stream of link events (an interface
//! created, changed or removed) so the agent notices at once when the
//! interface it filters goes away or comes back.
//!
//! Messages are built and parsed by the rust-netlink crates
//! (`netlink-packet-route`, `netlink-sys`); the sockets are plain blocking
//! ones: a query is one request and its answer, and the event stream runs on
//! a thread of its own.

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, XdpAttached};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// What `IFLA_XDP` of an interface says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XdpInfo {
    /// `XDP_ATTACHED_*`: 0 none, 1 driver, 2 generic, 3 offload, 4 several.
    pub attached: u8,
    /// The program, when one runs in a single mode.
    pub prog_id: Option<u32>,
    /// The program in driver (native) mode.
    pub drv: Option<u32>,
    /// The program in generic (skb) mode.
    pub skb: Option<u32>,
    /// The program offloaded to the NIC.
    pub hw: Option<u32>,
}

impl XdpInfo {
    fn from_attrs(nlas: &[LinkXdp]) -> XdpInfo {
        let mut x = XdpInfo::default();
        for n in nlas {
            match n {
                LinkXdp::Attached(a) => {
                    x.attached = match a {
                        XdpAttached::None => 0,
                        XdpAttached::Driver => 1,
                        XdpAttached::SocketBuffer => 2,
                        XdpAttached::Hardware => 3,
                        XdpAttached::Multiple => 4,
                        XdpAttached::Other(v) => *v,
                        _ => 4,
                    }
                }
                LinkXdp::ProgId(v) => x.prog_id = Some(*v),
                LinkXdp::DrvProgId(v) => x.drv = Some(*v),
                LinkXdp::SkbProgId(v) => x.skb = Some(*v),
                LinkXdp::HwProgId(v) => x.hw = Some(*v),
                _ => {}
            }
        }
        x
    }

    /// Every program attached, with its mode.
    pub fn programs(&self) -> Vec<(u32, &'static str)> {
        let slots = [(self.drv, "native"), (self.skb, "skb"), (self.hw, "hw")];
        let mut out: Vec<(u32, &'static str)> = slots
            .iter()
            .filter_map(|(id, m)| id.map(|id| (id, *m)))
            .collect();
        // Older kernels report only IFLA_XDP_PROG_ID and the mode.
        if out.is_empty()
            && let (Some(id), Some(m)) = (self.prog_id, self.single_mode())
        {
            out.push((id, m));
        }
        out
    }

    fn single_mode(&self) -> Option<&'static str> {
        match self.attached {
            1 => Some("native"),
            2 => Some("skb"),
            3 => Some("hw"),
            _ => None,
        }
    }

    /// The mode our program (`ours`) runs in, or why that is unknown.
    pub fn mode_of(&self, ours: Option<u32>) -> (Option<&'static str>, Option<String>) {
        let programs = self.programs();
        if let Some(ours) = ours
            && let Some((_, m)) = programs.iter().find(|(id, _)| *id == ours)
        {
            return (Some(m), None);
        }
        let note = match (self.attached, programs.is_empty(), self.prog_id) {
            (0, _, _) => "no XDP program on this interface in this network namespace (the pinned link may belong to an interface elsewhere, or the interface was recreated)".to_string(),
            (_, false, _) => format!("not our program: {}", describe(&programs)),
            (_, true, Some(id)) => format!("not our program: program {id}"),
            _ => "the kernel does not report the XDP program".to_string(),
        };
        (None, Some(note))
    }
}

/// `program 12 in native mode, program 14 in skb mode`.
pub fn describe(programs: &[(u32, &'static str)]) -> String {
    programs
        .iter()
        .map(|(id, m)| format!("program {id} in {m} mode"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// Ask the kernel (`RTM_GETLINK` for one interface) about its XDP programs.
pub fn xdp_info(ifindex: u32) -> std::io::Result<XdpInfo> {
    Ok(get_link(ifindex)?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Xdp(x) => Some(XdpInfo::from_attrs(x)),
            _ => None,
        })
        .unwrap_or_default())
}

/// Whether the interface is administratively up (`IFF_UP`), in the network
/// namespace of the caller. The metrics endpoint asks this of `lo`: a new
/// namespace starts with its loopback down, and a listener bound to
/// 127.0.0.1 there binds fine but nobody can ever connect to it.
pub fn is_up(ifindex: u32) -> std::io::Result<bool> {
    Ok(get_link(ifindex)?.header.flags.contains(LinkFlags::Up))
}

/// One `RTM_GETLINK` request and its answer.
fn get_link(ifindex: u32) -> std::io::Result<LinkMessage> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_timeout(&socket, 2)?;
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = 0x6566_0001;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[off..n]).map_err(|e| io_err("netlink reply", e))?;
            let len = m.header.length as usize;
            if m.header.sequence_number == packet.header.sequence_number {
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(std::io::Error::from_raw_os_error(-code.get()));
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => return Ok(l),
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn set_timeout(socket: &Socket, secs: libc::time_t) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let timeout = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size given, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A change of one network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: the interface exists (created, or its state changed).
    Present {
        /// Its name.
        name: String,
        /// Its index.
        index: u32,
    },
    /// `RTM_DELLINK`: the interface is gone (deleted, or moved to another
    /// network namespace).
    Removed {
        /// Its name.
        name: String,
        /// Its index.
        index: u32,
    },
    /// Events were lost (the socket's buffer overflowed): everything must
    /// be checked again.
    Lost,
}

/// The link events of this network namespace, read on a thread of their own
/// and handed to the agent's loop through a channel.
pub struct LinkMonitor {
    rx: tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
}

impl LinkMonitor {
    /// Subscribe to `RTMGRP_LINK` (before the agent attaches anything, so no
    /// event after that point is missed).
    pub fn start() -> std::io::Result<LinkMonitor> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
        // Wake up now and then to notice that the agent has gone.
        set_timeout(&socket, 1)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("link-monitor".into())
            .spawn(move || monitor(socket, tx))?;
        Ok(LinkMonitor { rx })
    }

    /// The next event (cancel-safe: usable in `tokio::select!`). `None` once
    /// the monitor thread has stopped (it logs why).
    pub async fn next(&mut self) -> Option<LinkEvent> {
        self.rx.recv().await
    }
}

fn monitor(socket: Socket, tx: tokio::sync::mpsc::UnboundedSender<LinkEvent>) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if tx.is_closed() {
            return;
        }
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                if tx.send(LinkEvent::Lost).is_err() {
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!(
                    "link monitor stopped: reading netlink: {e}; interface changes are now noticed only by the periodic check"
                );
                return;
            }
        };
        for ev in events(&buf[..n]) {
            if tx.send(ev).is_err() {
                return;
            }
        }
    }
}

/// The link events in one datagram.
fn events(b: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < b.len() {
        let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b[off..]) else {
            // A message we cannot parse: check everything rather than guess.
            out.push(LinkEvent::Lost);
            break;
        };
        let len = m.header.length as usize;
        let (l, present) = match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, true),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, false),
            _ => (LinkMessage::default(), true),
        };
        if let Some(name) = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) {
            let index = l.header.index;
            out.push(if present {
                LinkEvent::Present { name, index }
            } else {
                LinkEvent::Removed { name, index }
            });
        }
        if len == 0 {
            break;
        }
        off += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_modes_and_notes() {
        let x = XdpInfo {
            attached: 4,
            drv: Some(7),
            skb: Some(9),
            ..Default::default()
        };
        assert_eq!(x.mode_of(Some(9)), (Some("skb"), None));
        let (m, note) = x.mode_of(Some(3));
        assert_eq!(m, None);
        assert_eq!(
            note.unwrap(),
            "not our program: program 7 in native mode, program 9 in skb mode"
        );
        // Older kernels: one program, its mode in IFLA_XDP_ATTACHED.
        let old = XdpInfo {
            attached: 2,
            prog_id: Some(5),
            ..Default::default()
        };
        assert_eq!(old.mode_of(Some(5)), (Some("skb"), None));
        assert_eq!(old.programs(), vec![(5, "skb")]);
        assert!(
            XdpInfo::default()
                .mode_of(Some(1))
                .1
                .unwrap()
                .contains("no XDP program")
        );
    }

    /// Events as the kernel sends them, built with the same crate.
    #[test]
    fn link_events_from_datagrams() {
        let msg = |new: bool, name: &str, index: u32| {
            let mut l = LinkMessage::default();
            l.header.index = index;
            l.attributes.push(LinkAttribute::IfName(name.to_string()));
            let inner = if new {
                RouteNetlinkMessage::NewLink(l)
            } else {
                RouteNetlinkMessage::DelLink(l)
            };
            let mut p = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(inner));
            p.finalize();
            let mut b = vec![0; p.buffer_len()];
            p.serialize(&mut b);
            b
        };
        let mut dgram = msg(false, "ef-rcv", 7);
        dgram.extend(msg(true, "ef-rcv", 9));
        assert_eq!(
            events(&dgram),
            vec![
                LinkEvent::Removed {
                    name: "ef-rcv".into(),
                    index: 7
                },
                LinkEvent::Present {
                    name: "ef-rcv".into(),
                    index: 9
                },
            ]
        );
        assert_eq!(events(&[1, 2, 3]), vec![LinkEvent::Lost]);
    }

    /// A real query against the kernel: loopback exists in every namespace
    /// and carries no XDP program here.
    #[test]
    fn loopback_has_no_xdp_program() {
        let x = xdp_info(1).expect("RTM_GETLINK for lo");
        assert!(x.programs().is_empty() || x.attached != 0, "{x:?}");
        let e = xdp_info(0x7fff_fff0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}
