//! The entry maps of the v1 program (one hash map or LPM trie per entry
//! kind and family, see `edge-filter-common`'s crate docs), its config and
//! its per-entry counters. Shared by the v1 program ([`run`], the
//! benchmark's "before") and the single-lookup benchmark programs.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use edge_filter_common::{
    Config, DEFAULT_ADDR_V4_ENTRIES, DEFAULT_ADDR_V6_ENTRIES, DEFAULT_ALLOW_ENTRIES,
    DEFAULT_ENTRY_STATS_ENTRIES, DEFAULT_PORT_ENTRIES, DEFAULT_PREFIX_ENTRIES, EntryStat,
    EntryValue, PortKeyV4, PortKeyV6, PortPrefixV4, PortPrefixV6,
};

/// Runtime settings (slot 0).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Hits per entry id; ids at or beyond its capacity count in
/// `STATS_OVERFLOW` (the lookup fails, nothing else happens).
#[map]
pub static ENTRY_STATS: PerCpuArray<EntryStat> =
    PerCpuArray::with_max_entries(DEFAULT_ENTRY_STATS_ENTRIES, 0);

/// Hits on ids beyond `ENTRY_STATS`' capacity, together.
#[map]
pub static STATS_OVERFLOW: PerCpuArray<EntryStat> = PerCpuArray::with_max_entries(1, 0);

/// Allowlist, IPv4.
#[map]
pub static ALLOW_V4: LpmTrie<[u8; 4], EntryValue> =
    LpmTrie::with_max_entries(DEFAULT_ALLOW_ENTRIES, 0);
/// Allowlist, IPv6.
#[map]
pub static ALLOW_V6: LpmTrie<[u8; 16], EntryValue> =
    LpmTrie::with_max_entries(DEFAULT_ALLOW_ENTRIES, 0);

/// Exact IPv4 addresses.
#[map]
pub static ADDR_V4: HashMap<[u8; 4], EntryValue> =
    HashMap::with_max_entries(DEFAULT_ADDR_V4_ENTRIES, 0);
/// Exact IPv6 addresses.
#[map]
pub static ADDR_V6: HashMap<[u8; 16], EntryValue> =
    HashMap::with_max_entries(DEFAULT_ADDR_V6_ENTRIES, 0);

/// IPv4 prefixes (flattened).
#[map]
pub static PREFIX_V4: LpmTrie<[u8; 4], EntryValue> =
    LpmTrie::with_max_entries(DEFAULT_PREFIX_ENTRIES, 0);
/// IPv6 prefixes (flattened).
#[map]
pub static PREFIX_V6: LpmTrie<[u8; 16], EntryValue> =
    LpmTrie::with_max_entries(DEFAULT_PREFIX_ENTRIES, 0);

/// IPv4 address+port.
#[map]
pub static PORT_V4: HashMap<PortKeyV4, EntryValue> =
    HashMap::with_max_entries(DEFAULT_PORT_ENTRIES, 0);
/// IPv6 address+port.
#[map]
pub static PORT_V6: HashMap<PortKeyV6, EntryValue> =
    HashMap::with_max_entries(DEFAULT_PORT_ENTRIES, 0);

/// IPv4 prefix+port (flattened).
#[map]
pub static PPREFIX_V4: LpmTrie<PortPrefixV4, EntryValue> =
    LpmTrie::with_max_entries(DEFAULT_PORT_ENTRIES, 0);
/// IPv6 prefix+port (flattened).
#[map]
pub static PPREFIX_V6: LpmTrie<PortPrefixV6, EntryValue> =
    LpmTrie::with_max_entries(DEFAULT_PORT_ENTRIES, 0);

// ---------------------------------------------------------------------------
// The v1 program (the production program before datapath v2; now the
// benchmark's "before", `bench-ebpf`'s `edge_filter_v1`).

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key, programs::XdpContext};
use edge_filter_common::{
    ACTION_DROP, CONFIG_MALFORMED_DROP, CONFIG_RECORD_LAST, CONFIG_SAMPLE_EVENTS, EntryKind,
    MAPBIT_ADDR_V4, MAPBIT_ADDR_V6, MAPBIT_ALLOW_V4, MAPBIT_ALLOW_V6, MAPBIT_PORT_V4,
    MAPBIT_PORT_V6, MAPBIT_PPREFIX_V4, MAPBIT_PPREFIX_V6, MAPBIT_PREFIX_V4, MAPBIT_PREFIX_V6,
    NO_ENTRY, PORT_PREFIX_FIXED_BITS, REASON_DROP_BASE, REASON_PASS_ALLOWLIST,
    REASON_PASS_NO_MATCH, REASON_PASS_NON_IP, Reason, SIDE_DST, SIDE_SRC, reason_entry,
    reason_malformed,
};

use crate::{
    common::{count_reason, record_last, sample},
    parse::{Parsed, Source, parse},
};

/// The v1 program: classify, count, record, return. `STATS`: count hits
/// per entry (`ENTRY_STATS`); without, the benchmark's baseline.
#[inline(always)]
pub fn run<const STATS: bool>(ctx: &XdpContext) -> u32 {
    let (flags, nonempty) = match CONFIG.get(0) {
        Some(c) => (c.flags, c.nonempty),
        // Cannot happen for an array map; if it did, look everywhere.
        None => (0, u32::MAX),
    };
    let parsed = parse(ctx);
    let (reason, entry_id, drop) = decide(&parsed, flags, nonempty);
    let len = (ctx.data_end() - ctx.data()) as u64;
    let _ = count_reason(reason, len);
    if STATS && entry_id != NO_ENTRY {
        count_entry(entry_id, len);
    }
    // Drop and monitor verdicts of entries only (their reasons are last).
    if flags & CONFIG_SAMPLE_EVENTS != 0 && reason >= REASON_DROP_BASE {
        sample(&parsed, reason, entry_id, len);
    }
    if flags & CONFIG_RECORD_LAST != 0 {
        record_last(reason, entry_id);
    }
    if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Count one hit on the deciding entry: its own slot, or the overflow slot
/// when the id is beyond the map's capacity.
#[inline(always)]
fn count_entry(id: u32, len: u64) {
    // jiffies, not bpf_ktime_get_ns: a plain load instead of a clock read
    // (measured here: ~0 vs ~40 ns per counted packet); the last hit only
    // needs tick resolution. Linux 5.5+.
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_jiffies64() };
    let slot = match ENTRY_STATS.get_ptr_mut(id) {
        Some(s) => s,
        None => match STATS_OVERFLOW.get_ptr_mut(0) {
            Some(s) => s,
            None => return,
        },
    };
    // SAFETY: per-CPU slot, XDP runs with preemption disabled.
    unsafe {
        (*slot).packets += 1;
        (*slot).bytes += len;
        (*slot).last_jiffies = now;
    }
}

/// Classify one parsed frame: `(reason, deciding entry id, drop?)`. Every
/// outcome, malformed input included, maps to a counted reason.
#[inline(always)]
fn decide(parsed: &Parsed, flags: u32, nonempty: u32) -> (Reason, u32, bool) {
    match *parsed {
        Parsed::NonIp => (REASON_PASS_NON_IP, NO_ENTRY, false),
        Parsed::Malformed(class) => {
            let drop = flags & CONFIG_MALFORMED_DROP != 0;
            (reason_malformed(class, drop), NO_ENTRY, drop)
        }
        Parsed::V4 { src, ports, .. } => decide_v4(src, ports, nonempty),
        Parsed::V6 { src, ports, .. } => decide_v6(src, ports, nonempty),
    }
}

/// Best match so far, ranked by action first and kind second.
struct Best {
    rank: u32,
    id: u32,
}

impl Best {
    #[inline(always)]
    fn new() -> Self {
        Best {
            rank: 0,
            id: NO_ENTRY,
        }
    }

    /// Offer a hit of `kind`; keeps it if it outranks the current best.
    #[inline(always)]
    fn offer(&mut self, kind: EntryKind, v: Option<&EntryValue>) {
        if let Some(v) = v {
            // action is 1 (monitor) or 2 (drop): ranks 4..=7 and 8..=11.
            let rank = (v.action as u32) * 4 + kind as u32;
            if rank > self.rank {
                self.rank = rank;
                self.id = v.decider;
            }
        }
    }

    #[inline(always)]
    fn finish(self) -> (Reason, u32, bool) {
        if self.rank < 4 {
            return (REASON_PASS_NO_MATCH, NO_ENTRY, false);
        }
        let action = (self.rank / 4) as u8;
        let kind = match self.rank % 4 {
            0 => EntryKind::Prefix,
            1 => EntryKind::Addr,
            2 => EntryKind::PrefixPort,
            _ => EntryKind::AddrPort,
        };
        (reason_entry(kind, action), self.id, action == ACTION_DROP)
    }
}

#[inline(always)]
fn decide_v4(src: [u8; 4], ports: Option<Source>, nonempty: u32) -> (Reason, u32, bool) {
    let full = Key::new(32, src);
    if nonempty & MAPBIT_ALLOW_V4 != 0
        && let Some(v) = ALLOW_V4.get(&full)
    {
        return (REASON_PASS_ALLOWLIST, v.decider, false);
    }
    let mut best = Best::new();
    if nonempty & MAPBIT_ADDR_V4 != 0 {
        // SAFETY: entries are only replaced whole by the agent; a torn read
        // of an 8-byte value is not possible for a hash map update.
        best.offer(EntryKind::Addr, unsafe { ADDR_V4.get(src) });
    }
    if nonempty & MAPBIT_PREFIX_V4 != 0 {
        best.offer(EntryKind::Prefix, PREFIX_V4.get(&full));
    }
    if let Some(p) = ports {
        for (side, port) in [(SIDE_SRC, p.sport), (SIDE_DST, p.dport)] {
            if nonempty & MAPBIT_PORT_V4 != 0 {
                let k = PortKeyV4 {
                    addr: src,
                    proto: p.proto,
                    side,
                    port,
                };
                // SAFETY: as above.
                best.offer(EntryKind::AddrPort, unsafe { PORT_V4.get(k) });
            }
            if nonempty & MAPBIT_PPREFIX_V4 != 0 {
                let k = Key::new(
                    PORT_PREFIX_FIXED_BITS + 32,
                    PortPrefixV4 {
                        proto: p.proto,
                        side,
                        port,
                        addr: src,
                    },
                );
                best.offer(EntryKind::PrefixPort, PPREFIX_V4.get(&k));
            }
        }
    }
    best.finish()
}

#[inline(always)]
fn decide_v6(src: [u8; 16], ports: Option<Source>, nonempty: u32) -> (Reason, u32, bool) {
    let full = Key::new(128, src);
    if nonempty & MAPBIT_ALLOW_V6 != 0
        && let Some(v) = ALLOW_V6.get(&full)
    {
        return (REASON_PASS_ALLOWLIST, v.decider, false);
    }
    let mut best = Best::new();
    if nonempty & MAPBIT_ADDR_V6 != 0 {
        // SAFETY: see decide_v4.
        best.offer(EntryKind::Addr, unsafe { ADDR_V6.get(src) });
    }
    if nonempty & MAPBIT_PREFIX_V6 != 0 {
        best.offer(EntryKind::Prefix, PREFIX_V6.get(&full));
    }
    if let Some(p) = ports {
        for (side, port) in [(SIDE_SRC, p.sport), (SIDE_DST, p.dport)] {
            if nonempty & MAPBIT_PORT_V6 != 0 {
                let k = PortKeyV6 {
                    addr: src,
                    proto: p.proto,
                    side,
                    port,
                };
                // SAFETY: see decide_v4.
                best.offer(EntryKind::AddrPort, unsafe { PORT_V6.get(k) });
            }
            if nonempty & MAPBIT_PPREFIX_V6 != 0 {
                let k = Key::new(
                    PORT_PREFIX_FIXED_BITS + 128,
                    PortPrefixV6 {
                        proto: p.proto,
                        side,
                        port,
                        addr: src,
                    },
                );
                best.offer(EntryKind::PrefixPort, PPREFIX_V6.get(&k));
            }
        }
    }
    best.finish()
}
