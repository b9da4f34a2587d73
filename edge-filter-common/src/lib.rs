//! The ABI shared by the edge-filter XDP program and its userspace agent.
//!
//! Everything that crosses a BPF map lives here, once, as `#[repr(C)]` types
//! with compile-time size assertions, so the kernel program and the agent can
//! never disagree about a layout. The crate is `no_std`; the `user` feature
//! adds the `aya::Pod` impls the agent needs to read and write the maps.
//!
//! # Maps
//! | name | type | key | value |
//! |---|---|---|---|
//! | [`MAP_ALLOW_V4`] / [`MAP_ALLOW_V6`] | LPM trie | `Key<[u8; 4]>` / `Key<[u8; 16]>` | [`EntryValue`] |
//! | [`MAP_ADDR_V4`] / [`MAP_ADDR_V6`] | hash | `[u8; 4]` / `[u8; 16]` | [`EntryValue`] |
//! | [`MAP_PREFIX_V4`] / [`MAP_PREFIX_V6`] | LPM trie | `Key<[u8; 4]>` / `Key<[u8; 16]>` | [`EntryValue`] |
//! | [`MAP_PORT_V4`] / [`MAP_PORT_V6`] | hash | [`PortKeyV4`] / [`PortKeyV6`] | [`EntryValue`] |
//! | [`MAP_PPREFIX_V4`] / [`MAP_PPREFIX_V6`] | LPM trie | `Key<PortPrefixV4>` / `Key<PortPrefixV6>` | [`EntryValue`] |
//! | [`MAP_CONFIG`] | array, 1 slot | `u32` | [`Config`] |
//! | [`MAP_COUNTERS`] | per-CPU array | `u32` ([`Reason`]) | [`Counter`] |
//! | [`MAP_LAST`] | per-CPU array, 1 slot | `u32` | [`LastVerdict`] |
//! | [`MAP_ENTRY_STATS`] | per-CPU array | `u32` (entry id) | [`EntryStat`] |
//! | [`MAP_STATS_OVERFLOW`] | per-CPU array, 1 slot | `u32` | [`EntryStat`] |
//! | [`MAP_EVENTS`] | ring buffer | - | [`Event`] records |
//! | [`MAP_SAMPLE`] | array, 1 slot | `u32` | [`SampleConfig`] |
//! | [`MAP_SAMPLE_STATE`] | per-CPU array, 1 slot | `u32` | [`SampleState`] |
//!
//! LPM tries return only the longest match, but the verdict semantics say that
//! *any* matching drop entry wins over a more specific monitor entry. The agent
//! therefore stores in every trie node the strongest action of that node and
//! all shorter prefixes covering it (see the agent's `maps::flatten`), so one
//! longest-match lookup per trie is exact.
#![no_std]

pub mod v2;

/// Action of an entry that says "count it, let it through".
pub const ACTION_MONITOR: u8 = 1;
/// Action of an entry that says "drop it".
pub const ACTION_DROP: u8 = 2;

/// Port entry matches the packet's source port (the remote endpoint: a C2
/// server's `ip:port`). The default.
pub const SIDE_SRC: u8 = 0;
/// Port entry matches the packet's destination port (the local service an
/// attacker targets).
pub const SIDE_DST: u8 = 1;

/// IP protocol numbers that carry ports we parse.
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// Value of every entry map (allowlist included).
///
/// Trie nodes are *flattened* (see the crate docs): `action` is the strongest
/// action of this node and every shorter prefix covering it in the same map,
/// and `decider` is the id of the entry that action comes from. `own_action`
/// and `id` describe the entry itself, so the agent can rebuild the entry set
/// from the maps alone (adoption after a restart, drift checks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryValue {
    /// Effective action: [`ACTION_DROP`] or [`ACTION_MONITOR`].
    pub action: u8,
    /// The entry's own action (before flattening).
    pub own_action: u8,
    /// Explicit padding so the layout has no hidden bytes.
    pub _pad: [u8; 2],
    /// Agent-assigned id of this entry (stable for the life of its key).
    pub id: u32,
    /// Id of the entry whose action is `action` (equals `id` unless inherited).
    pub decider: u32,
}

/// Key of the IPv4 address+port hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKeyV4 {
    /// Source address, network byte order.
    pub addr: [u8; 4],
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SIDE_SRC`] or [`SIDE_DST`].
    pub side: u8,
    /// Port, network byte order.
    pub port: [u8; 2],
}

/// Key of the IPv6 address+port hash map. See [`PortKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKeyV6 {
    /// Source address, network byte order.
    pub addr: [u8; 16],
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SIDE_SRC`] or [`SIDE_DST`].
    pub side: u8,
    /// Port, network byte order.
    pub port: [u8; 2],
}

/// Data of the IPv4 prefix+port LPM trie key.
///
/// Protocol, side and port come first so that they are always fully covered:
/// the trie prefix length is `32 + address prefix length`
/// ([`PORT_PREFIX_FIXED_BITS`] + address bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPrefixV4 {
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SIDE_SRC`] or [`SIDE_DST`].
    pub side: u8,
    /// Port, network byte order.
    pub port: [u8; 2],
    /// Address, network byte order.
    pub addr: [u8; 4],
}

/// Data of the IPv6 prefix+port LPM trie key. See [`PortPrefixV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPrefixV6 {
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SIDE_SRC`] or [`SIDE_DST`].
    pub side: u8,
    /// Port, network byte order.
    pub port: [u8; 2],
    /// Address, network byte order.
    pub addr: [u8; 16],
}

/// Bits of a prefix+port trie key that precede the address.
pub const PORT_PREFIX_FIXED_BITS: u32 = 32;

/// Runtime settings the agent writes into [`MAP_CONFIG`] slot 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `CONFIG_*` flags.
    pub flags: u32,
    /// Bit `MAPBIT_*` set when that map holds at least one entry; the program
    /// skips lookups in empty maps so small sets stay fast.
    pub nonempty: u32,
}

/// Drop malformed IP packets instead of passing them.
pub const CONFIG_MALFORMED_DROP: u32 = 1 << 0;
/// Record every verdict in [`MAP_LAST`] (replay and differential tests only:
/// the production datapath leaves it off).
pub const CONFIG_RECORD_LAST: u32 = 1 << 1;

/// Emit sampled drop/monitor [`Event`]s into [`MAP_EVENTS`] as
/// [`MAP_SAMPLE`] says. Off by default: with the bit clear the datapath
/// does not even look at the sampling maps. `edge-filter events --sample`
/// sets it for its own lifetime; the agent preserves it across syncs.
pub const CONFIG_SAMPLE_EVENTS: u32 = 1 << 2;

/// Per-entry hit counters (`V2_STATS`) count one hit in
/// [`ENTRY_SAMPLE_EVERY`] per CPU and verdict reason, as that many packets
/// (and that many times its bytes): an estimate that spares most hits the
/// counter's cache line, the largest cost of a hit after the lookup.
/// Ignored when [`CONFIG_COUNT_OFF`] is set.
pub const CONFIG_COUNT_SAMPLED: u32 = 1 << 3;
/// Per-entry hit counters are not written at all (verdict counters still
/// are).
pub const CONFIG_COUNT_OFF: u32 = 1 << 4;
/// See [`CONFIG_COUNT_SAMPLED`]. A power of two (the datapath tests it with
/// a mask).
pub const ENTRY_SAMPLE_EVERY: u32 = 16;
const _: () = assert!(ENTRY_SAMPLE_EVERY.is_power_of_two());

/// [`Config::nonempty`] bits, one per entry map.
pub const MAPBIT_ALLOW_V4: u32 = 1 << 0;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_ALLOW_V6: u32 = 1 << 1;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_ADDR_V4: u32 = 1 << 2;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_ADDR_V6: u32 = 1 << 3;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_PREFIX_V4: u32 = 1 << 4;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_PREFIX_V6: u32 = 1 << 5;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_PORT_V4: u32 = 1 << 6;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_PORT_V6: u32 = 1 << 7;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_PPREFIX_V4: u32 = 1 << 8;
/// See [`MAPBIT_ALLOW_V4`].
pub const MAPBIT_PPREFIX_V6: u32 = 1 << 9;

/// Per-CPU packet and byte counter, one per [`Reason`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as seen by XDP).
    pub bytes: u64,
}

/// The last verdict on this CPU, written only with [`CONFIG_RECORD_LAST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastVerdict {
    /// [`Reason`] as `u32`.
    pub reason: u32,
    /// [`EntryValue::id`] of the deciding entry, or [`NO_ENTRY`].
    pub entry_id: u32,
}

/// [`LastVerdict::entry_id`] when no entry decided.
pub const NO_ENTRY: u32 = u32::MAX;

/// Per-CPU hit counter of one entry id ([`MAP_ENTRY_STATS`]): every packet
/// whose verdict an entry decided (drop, monitor, or allowlist pass) counts
/// on that entry's id (the trie node's `decider`, not the longest match).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryStat {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as seen by XDP).
    pub bytes: u64,
    /// `bpf_jiffies64()` at the last hit on this CPU; 0 = never.
    /// Userspace converts it to wall-clock time (tick resolution).
    pub last_jiffies: u64,
}

/// Sampling settings in [`MAP_SAMPLE`] slot 0 (read only while
/// [`CONFIG_SAMPLE_EVENTS`] is set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleConfig {
    /// Emit one in `every` drop/monitor verdicts per CPU (0 = none).
    pub every: u32,
    /// At most this many events per second per CPU (0 = no cap), so an
    /// attack cannot flood the ring buffer or its reader.
    pub cap_per_sec: u32,
}

/// Per-CPU sampling state and outcome counters ([`MAP_SAMPLE_STATE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleState {
    /// Drop/monitor verdicts still to skip before the next sample.
    pub skip: u32,
    /// Events emitted in the current one-second window.
    pub in_window: u32,
    /// Start of the current window (`bpf_ktime_get_ns`).
    pub window_start: u64,
    /// Events written to the ring buffer.
    pub emitted: u64,
    /// Samples not emitted because the ring buffer was full.
    pub lost: u64,
    /// Samples not emitted because of the per-second cap.
    pub capped: u64,
}

/// A sampled packet, as written to [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` when the verdict was made.
    pub time_ns: u64,
    /// Source address (IPv4 in the first 4 bytes), network byte order.
    pub src: [u8; 16],
    /// Destination address, as `src`.
    pub dst: [u8; 16],
    /// Frame length.
    pub len: u32,
    /// [`Reason`] of the verdict.
    pub reason: u32,
    /// Deciding entry id.
    pub entry_id: u32,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol when `has_ports` (TCP or UDP), else 0.
    pub proto: u8,
    /// 1 when `sport`/`dport` are valid.
    pub has_ports: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Source port, network byte order.
    pub sport: [u8; 2],
    /// Destination port, network byte order.
    pub dport: [u8; 2],
    /// Explicit padding to a multiple of 8 bytes.
    pub _pad2: [u8; 4],
}

/// Entry kinds, ordered by specificity (higher is more specific).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// CIDR prefix.
    Prefix = 0,
    /// Exact address.
    Addr = 1,
    /// CIDR prefix plus protocol and port.
    PrefixPort = 2,
    /// Exact address plus protocol and port.
    AddrPort = 3,
}

impl EntryKind {
    /// All kinds, least specific first.
    pub const ALL: [EntryKind; 4] = [
        EntryKind::Prefix,
        EntryKind::Addr,
        EntryKind::PrefixPort,
        EntryKind::AddrPort,
    ];

    /// Stable lowercase name, used in output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            EntryKind::Prefix => "prefix",
            EntryKind::Addr => "addr",
            EntryKind::PrefixPort => "prefix_port",
            EntryKind::AddrPort => "addr_port",
        }
    }
}

/// Why a malformed packet is malformed. No lookups are made for them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedClass {
    /// Frame shorter than an Ethernet header, or a VLAN tag that does not fit.
    L2Truncated = 0,
    /// A third VLAN tag.
    VlanDepth = 1,
    /// The IP version field does not match the ethertype.
    IpVersion = 2,
    /// IPv4: fewer than 20 bytes, IHL < 5, or IHL*4 bytes do not fit.
    Ipv4Header = 3,
    /// IPv4: total length smaller than the header or larger than the frame.
    Ipv4Length = 4,
    /// IPv6: the 40-byte fixed header does not fit.
    Ipv6Header = 5,
    /// IPv6: 40 + payload length is larger than the frame.
    Ipv6Length = 6,
    /// IPv6: an extension header does not fit in the frame.
    Ipv6ExtTruncated = 7,
    /// IPv6: a seventh extension header.
    Ipv6ExtChain = 8,
}

/// Number of [`MalformedClass`] values.
pub const MALFORMED_CLASSES: u32 = 9;

impl MalformedClass {
    /// All classes in index order.
    pub const ALL: [MalformedClass; MALFORMED_CLASSES as usize] = [
        MalformedClass::L2Truncated,
        MalformedClass::VlanDepth,
        MalformedClass::IpVersion,
        MalformedClass::Ipv4Header,
        MalformedClass::Ipv4Length,
        MalformedClass::Ipv6Header,
        MalformedClass::Ipv6Length,
        MalformedClass::Ipv6ExtTruncated,
        MalformedClass::Ipv6ExtChain,
    ];

    /// Stable lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            MalformedClass::L2Truncated => "l2_truncated",
            MalformedClass::VlanDepth => "vlan_depth",
            MalformedClass::IpVersion => "ip_version",
            MalformedClass::Ipv4Header => "ipv4_header",
            MalformedClass::Ipv4Length => "ipv4_length",
            MalformedClass::Ipv6Header => "ipv6_header",
            MalformedClass::Ipv6Length => "ipv6_length",
            MalformedClass::Ipv6ExtTruncated => "ipv6_ext_truncated",
            MalformedClass::Ipv6ExtChain => "ipv6_ext_chain",
        }
    }
}

/// Why a packet got its verdict: the index into [`MAP_COUNTERS`].
///
/// Layout: 3 pass reasons, then the malformed classes passed, then the
/// malformed classes dropped, then drops per [`EntryKind`], then monitors per
/// [`EntryKind`].
pub type Reason = u32;

/// Passed: no entry matched.
pub const REASON_PASS_NO_MATCH: Reason = 0;
/// Passed: the source is allowlisted.
pub const REASON_PASS_ALLOWLIST: Reason = 1;
/// Passed: not IPv4 or IPv6 (ARP, LLDP, MPLS, PPPoE, ...).
pub const REASON_PASS_NON_IP: Reason = 2;
/// First malformed-and-passed reason; add the [`MalformedClass`].
pub const REASON_MALFORMED_PASS_BASE: Reason = 3;
/// First malformed-and-dropped reason; add the [`MalformedClass`].
pub const REASON_MALFORMED_DROP_BASE: Reason = REASON_MALFORMED_PASS_BASE + MALFORMED_CLASSES;
/// First dropped-by-entry reason; add the [`EntryKind`].
pub const REASON_DROP_BASE: Reason = REASON_MALFORMED_DROP_BASE + MALFORMED_CLASSES;
/// First monitored-by-entry reason; add the [`EntryKind`].
pub const REASON_MONITOR_BASE: Reason = REASON_DROP_BASE + 4;
/// Number of reasons: the size of [`MAP_COUNTERS`].
pub const REASON_COUNT: u32 = REASON_MONITOR_BASE + 4;

/// Reason for a malformed packet of `class`, passed or dropped.
#[inline(always)]
pub const fn reason_malformed(class: MalformedClass, drop: bool) -> Reason {
    (if drop {
        REASON_MALFORMED_DROP_BASE
    } else {
        REASON_MALFORMED_PASS_BASE
    }) + class as u32
}

/// Reason for a packet decided by an entry of `kind` with `action`.
#[inline(always)]
pub const fn reason_entry(kind: EntryKind, action: u8) -> Reason {
    (if action == ACTION_DROP {
        REASON_DROP_BASE
    } else {
        REASON_MONITOR_BASE
    }) + kind as u32
}

/// What a reason means, decoded (userspace helper; also usable in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReasonInfo {
    /// No entry matched.
    NoMatch,
    /// Allowlisted.
    Allowlisted,
    /// Not IP.
    NonIp,
    /// Malformed, passed or dropped.
    Malformed {
        /// Its class.
        class: MalformedClass,
        /// Dropped (the malformed-drop setting was on).
        dropped: bool,
    },
    /// Decided by an entry.
    Entry {
        /// The kind of the deciding entry.
        kind: EntryKind,
        /// [`ACTION_DROP`] or [`ACTION_MONITOR`].
        action: u8,
    },
}

impl ReasonInfo {
    /// Decode a reason index; `None` if out of range.
    pub const fn decode(reason: Reason) -> Option<ReasonInfo> {
        if reason == REASON_PASS_NO_MATCH {
            Some(ReasonInfo::NoMatch)
        } else if reason == REASON_PASS_ALLOWLIST {
            Some(ReasonInfo::Allowlisted)
        } else if reason == REASON_PASS_NON_IP {
            Some(ReasonInfo::NonIp)
        } else if reason < REASON_MALFORMED_DROP_BASE {
            Some(ReasonInfo::Malformed {
                class: MalformedClass::ALL[(reason - REASON_MALFORMED_PASS_BASE) as usize],
                dropped: false,
            })
        } else if reason < REASON_DROP_BASE {
            Some(ReasonInfo::Malformed {
                class: MalformedClass::ALL[(reason - REASON_MALFORMED_DROP_BASE) as usize],
                dropped: true,
            })
        } else if reason < REASON_MONITOR_BASE {
            Some(ReasonInfo::Entry {
                kind: EntryKind::ALL[(reason - REASON_DROP_BASE) as usize],
                action: ACTION_DROP,
            })
        } else if reason < REASON_COUNT {
            Some(ReasonInfo::Entry {
                kind: EntryKind::ALL[(reason - REASON_MONITOR_BASE) as usize],
                action: ACTION_MONITOR,
            })
        } else {
            None
        }
    }

    /// Whether the packet is dropped (XDP_DROP) under this reason.
    pub const fn is_drop(self) -> bool {
        match self {
            ReasonInfo::Malformed { dropped, .. } => dropped,
            ReasonInfo::Entry { action, .. } => action == ACTION_DROP,
            _ => false,
        }
    }

    /// The verdict word: `pass`, `drop` or `monitor`.
    pub const fn verdict(self) -> &'static str {
        match self {
            ReasonInfo::Entry { action, .. } if action == ACTION_MONITOR => "monitor",
            _ if self.is_drop() => "drop",
            _ => "pass",
        }
    }
}

/// Map names (the symbol names in the eBPF object; at most 15 bytes, the
/// kernel's limit).
pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
/// See the table in the crate docs.
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
/// See the table in the crate docs.
pub const MAP_ADDR_V4: &str = "ADDR_V4";
/// See the table in the crate docs.
pub const MAP_ADDR_V6: &str = "ADDR_V6";
/// See the table in the crate docs.
pub const MAP_PREFIX_V4: &str = "PREFIX_V4";
/// See the table in the crate docs.
pub const MAP_PREFIX_V6: &str = "PREFIX_V6";
/// See the table in the crate docs.
pub const MAP_PORT_V4: &str = "PORT_V4";
/// See the table in the crate docs.
pub const MAP_PORT_V6: &str = "PORT_V6";
/// See the table in the crate docs.
pub const MAP_PPREFIX_V4: &str = "PPREFIX_V4";
/// See the table in the crate docs.
pub const MAP_PPREFIX_V6: &str = "PPREFIX_V6";
/// See the table in the crate docs.
pub const MAP_CONFIG: &str = "CONFIG";
/// See the table in the crate docs.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// See the table in the crate docs.
pub const MAP_LAST: &str = "LAST";

/// See the table in the crate docs.
pub const MAP_ENTRY_STATS: &str = "ENTRY_STATS";
/// See the table in the crate docs: hits on ids at or beyond the capacity
/// of [`MAP_ENTRY_STATS`] (counted here, never lost).
pub const MAP_STATS_OVERFLOW: &str = "STATS_OVERFLOW";
/// See the table in the crate docs.
pub const MAP_EVENTS: &str = "EVENTS";
/// See the table in the crate docs.
pub const MAP_SAMPLE: &str = "SAMPLE";
/// See the table in the crate docs.
pub const MAP_SAMPLE_STATE: &str = "SAMPLE_STATE";

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "edge_filter";

/// Default capacities. The agent can override each at load time.
pub const DEFAULT_ADDR_V4_ENTRIES: u32 = 1 << 20;
/// See [`DEFAULT_ADDR_V4_ENTRIES`].
pub const DEFAULT_ADDR_V6_ENTRIES: u32 = 1 << 18;
/// See [`DEFAULT_ADDR_V4_ENTRIES`].
pub const DEFAULT_PREFIX_ENTRIES: u32 = 1 << 18;
/// See [`DEFAULT_ADDR_V4_ENTRIES`].
pub const DEFAULT_PORT_ENTRIES: u32 = 1 << 18;
/// See [`DEFAULT_ADDR_V4_ENTRIES`].
pub const DEFAULT_ALLOW_ENTRIES: u32 = 1 << 16;

/// Default capacity of [`MAP_ENTRY_STATS`]: entry ids below it are counted
/// individually. Memory: capacity x 24 bytes x possible CPUs (6 MiB per CPU).
pub const DEFAULT_ENTRY_STATS_ENTRIES: u32 = 1 << 18;
/// Size of the [`MAP_EVENTS`] ring buffer in bytes (4096 events).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// IPv6 extension headers walked before giving up (a seventh is malformed).
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;
/// VLAN tags accepted (a third is malformed).
pub const MAX_VLAN_TAGS: u32 = 2;

const _: () = {
    assert!(core::mem::size_of::<EntryValue>() == 12);
    assert!(core::mem::size_of::<PortKeyV4>() == 8);
    assert!(core::mem::size_of::<PortKeyV6>() == 20);
    assert!(core::mem::size_of::<PortPrefixV4>() == 8);
    assert!(core::mem::size_of::<PortPrefixV6>() == 20);
    assert!(core::mem::size_of::<Config>() == 8);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<LastVerdict>() == 8);
    assert!(REASON_COUNT == 29);
    assert!(core::mem::size_of::<EntryStat>() == 24);
    assert!(core::mem::size_of::<SampleConfig>() == 8);
    assert!(core::mem::size_of::<SampleState>() == 40);
    assert!(core::mem::size_of::<Event>() == 64);
};

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for every map type: all are `#[repr(C)]`, `Copy`, with no
    //! padding bytes and every bit pattern valid.
    use super::*;

    // SAFETY: see module docs.
    unsafe impl aya::Pod for EntryValue {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for PortKeyV4 {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for PortKeyV6 {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for PortPrefixV4 {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for PortPrefixV6 {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for Config {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for LastVerdict {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for EntryStat {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for SampleConfig {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for SampleState {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for Event {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for crate::v2::ConfigV2 {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for crate::v2::Bucket4 {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for crate::v2::Bucket6 {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for crate::v2::EntryCounter {}
    // SAFETY: see module docs.
    unsafe impl aya::Pod for crate::v2::LastHit {}
}

/// The entry maps by name, in the one order userspace lists them per map
/// (contents, counts, capacities, occupancy): allowlist, exact addresses,
/// prefixes, address+port, prefix+port; IPv4 before IPv6 in each. The map
/// at index `i` has the [`Config::nonempty`] bit [`entry_map_bit`]`(i)`.
pub const ENTRY_MAPS: [&str; 10] = [
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_ADDR_V4,
    MAP_ADDR_V6,
    MAP_PREFIX_V4,
    MAP_PREFIX_V6,
    MAP_PORT_V4,
    MAP_PORT_V6,
    MAP_PPREFIX_V4,
    MAP_PPREFIX_V6,
];

/// The maps every program build shares: the per-reason counters, the last
/// verdict, the event ring and its sampling state. A tier change
/// (`kernel::attach::grow`) reuses them by pin.
pub const COMMON_MAPS: [&str; 5] = [
    MAP_COUNTERS,
    MAP_LAST,
    MAP_EVENTS,
    MAP_SAMPLE,
    MAP_SAMPLE_STATE,
];

/// Every map of the production program (datapath v2), in pin order: the
/// [`COMMON_MAPS`], then the v2 maps ([`v2::V2_MAP_NAMES`]). A pinned
/// attachment has a pin for each. (The [`ENTRY_MAPS`] names are the v1
/// maps, kept by the benchmark's before/after programs, and the logical
/// maps the operator commands count entries by.)
pub const ALL_MAPS: [&str; 20] = {
    let mut all = [""; 20];
    let mut i = 0;
    while i < COMMON_MAPS.len() {
        all[i] = COMMON_MAPS[i];
        i += 1;
    }
    let mut j = 0;
    while j < v2::V2_MAP_NAMES.len() {
        all[COMMON_MAPS.len() + j] = v2::V2_MAP_NAMES[j];
        j += 1;
    }
    all
};

/// Every map of the v1 program (`bench-ebpf`'s before/after programs), in
/// pin order: the [`ENTRY_MAPS`], then the runtime config, the counters and
/// per-entry statistics, the event ring and its sampling state.
pub const V1_MAPS: [&str; 18] = {
    let mut all = [""; 18];
    let mut i = 0;
    while i < ENTRY_MAPS.len() {
        all[i] = ENTRY_MAPS[i];
        i += 1;
    }
    let rest = [
        MAP_CONFIG,
        MAP_COUNTERS,
        MAP_LAST,
        MAP_ENTRY_STATS,
        MAP_STATS_OVERFLOW,
        MAP_EVENTS,
        MAP_SAMPLE,
        MAP_SAMPLE_STATE,
    ];
    let mut j = 0;
    while j < rest.len() {
        all[ENTRY_MAPS.len() + j] = rest[j];
        j += 1;
    }
    all
};

/// The `MAPBIT_*` of `ENTRY_MAPS[i]`.
pub const fn entry_map_bit(i: usize) -> u32 {
    1 << i
}

const _: () = {
    // The bits follow the table's order.
    assert!(entry_map_bit(0) == MAPBIT_ALLOW_V4);
    assert!(entry_map_bit(1) == MAPBIT_ALLOW_V6);
    assert!(entry_map_bit(2) == MAPBIT_ADDR_V4);
    assert!(entry_map_bit(3) == MAPBIT_ADDR_V6);
    assert!(entry_map_bit(4) == MAPBIT_PREFIX_V4);
    assert!(entry_map_bit(5) == MAPBIT_PREFIX_V6);
    assert!(entry_map_bit(6) == MAPBIT_PORT_V4);
    assert!(entry_map_bit(7) == MAPBIT_PORT_V6);
    assert!(entry_map_bit(8) == MAPBIT_PPREFIX_V4);
    assert!(entry_map_bit(9) == MAPBIT_PPREFIX_V6);
};
