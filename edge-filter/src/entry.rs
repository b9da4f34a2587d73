//! Entries: what the filter matches on, independent of how maps store them.
//!
//! Every input format (the simple blocklist text, feeds) produces [`Entry`]
//! values; the map writer turns an [`EntrySet`] into kernel map contents and
//! the reference classifier evaluates the same set directly.

use std::fmt;
use std::net::IpAddr;

use edge_filter_common::EntryKind;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What a matching entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Count and let through.
    Monitor,
    /// Drop. Stronger than [`Action::Monitor`] (`Drop > Monitor`).
    Drop,
}

impl Action {
    /// The ABI byte (`ACTION_*`).
    pub fn abi(self) -> u8 {
        match self {
            Action::Monitor => edge_filter_common::ACTION_MONITOR,
            Action::Drop => edge_filter_common::ACTION_DROP,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Action::Monitor => "monitor",
            Action::Drop => "drop",
        }
    }
}

/// Transport protocol of a port entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => edge_filter_common::PROTO_TCP,
            Proto::Udp => edge_filter_common::PROTO_UDP,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Which of the packet's ports a port entry matches.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The packet's source port: the remote endpoint (a C2 server's ip:port).
    #[default]
    Src,
    /// The packet's destination port: the local service being targeted.
    Dst,
}

impl Side {
    /// The ABI byte (`SIDE_*`).
    pub fn abi(self) -> u8 {
        match self {
            Side::Src => edge_filter_common::SIDE_SRC,
            Side::Dst => edge_filter_common::SIDE_DST,
        }
    }
}

/// Protocol + port qualifier of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortMatch {
    /// TCP or UDP.
    pub proto: Proto,
    /// The port number.
    pub port: u16,
    /// Which port of the packet it is compared with.
    pub side: Side,
}

/// One block or monitor entry.
///
/// `net` is normalised (host bits cleared); a full-length prefix (/32, /128)
/// is an exact address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    /// Source address or prefix.
    pub net: IpNet,
    /// Optional protocol and port.
    pub port: Option<PortMatch>,
    /// Drop or monitor.
    pub action: Action,
}

impl Entry {
    /// Build an entry, normalising the prefix.
    pub fn new(net: IpNet, port: Option<PortMatch>, action: Action) -> Self {
        Entry {
            net: net.trunc(),
            port,
            action,
        }
    }

    /// Whether `net` is a single address.
    pub fn is_exact(&self) -> bool {
        self.net.prefix_len() == self.net.max_prefix_len()
    }

    /// The entry kind (decides the map and the specificity rank).
    pub fn kind(&self) -> EntryKind {
        match (self.port.is_some(), self.is_exact()) {
            (true, true) => EntryKind::AddrPort,
            (true, false) => EntryKind::PrefixPort,
            (false, true) => EntryKind::Addr,
            (false, false) => EntryKind::Prefix,
        }
    }

    /// The match key without the action (entries with equal keys merge).
    pub fn key(&self) -> EntryKey {
        EntryKey {
            net: self.net,
            port: self.port,
        }
    }

    /// Whether this entry matches a packet from `src` with the given
    /// transport (`None` when the packet has no ports).
    pub fn matches(&self, src: IpAddr, ports: Option<(Proto, u16, u16)>) -> bool {
        if !self.net.contains(&src) {
            return false;
        }
        match (self.port, ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pm), Some((proto, sport, dport))) => {
                pm.proto == proto
                    && match pm.side {
                        Side::Src => pm.port == sport,
                        Side::Dst => pm.port == dport,
                    }
            }
        }
    }
}

/// The identity of an entry: prefix plus optional port qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    /// Source address or prefix (normalised).
    pub net: IpNet,
    /// Optional protocol and port.
    pub port: Option<PortMatch>,
}

impl fmt::Display for Entry {
    /// Formats in the blocklist text syntax, so output can be pasted back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = if self.is_exact() {
            self.net.addr().to_string()
        } else {
            self.net.to_string()
        };
        match self.port {
            None => write!(f, "{addr}")?,
            Some(pm) => {
                let host = match self.net {
                    IpNet::V6(_) => format!("[{addr}]"),
                    IpNet::V4(_) => addr,
                };
                write!(f, "{} {host}:{}", pm.proto.name(), pm.port)?;
                if pm.side == Side::Dst {
                    write!(f, " dst")?;
                }
            }
        }
        if self.action == Action::Monitor {
            write!(f, " monitor")?;
        }
        Ok(())
    }
}

/// Everything the filter enforces: the allowlist and the entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySet {
    /// Sources that always pass (addresses or prefixes, normalised).
    pub allow: Vec<IpNet>,
    /// Block and monitor entries (duplicates allowed; drop wins).
    pub entries: Vec<Entry>,
}

/// A set is its own set (what a holder shares with the sync engine, as
/// `Arc<dyn AsRef<EntrySet>>`, may be just the set).
impl AsRef<EntrySet> for EntrySet {
    fn as_ref(&self) -> &EntrySet {
        self
    }
}

/// Name of an IP protocol number (`udp`, `tcp`, `icmpv6`, ...; the
/// decimal number when it has none here): the one vocabulary of `replay`
/// and `events` output.
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        41 => "ipv6".into(),
        44 => "ipv6-frag".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        58 => "icmpv6".into(),
        59 => "ipv6-nonxt".into(),
        103 => "pim".into(),
        112 => "vrrp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}
