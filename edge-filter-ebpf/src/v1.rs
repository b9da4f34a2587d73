//! The entry maps of today's program (one hash map or LPM trie per entry
//! kind and family, see `edge-filter-common`'s crate docs), its config and
//! its per-entry counters. Shared by the production program and the
//! single-lookup benchmark programs.

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
