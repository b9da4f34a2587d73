//! The datapath v2 ABI: one classifier layout whose cost does not grow with
//! the entry set (see `docs/datapath-v2.md`).
//!
//! Every structure is an array map the agent writes through an `mmap` of
//! the map (`BPF_F_MMAPABLE`), with aligned 4- or 8-byte stores, so every
//! word the datapath reads changes atomically. Per IPv4 source `S`:
//!
//! 1. [`MAP_V2_SUM4`]: two bits per `/s` block of the address space
//!    ([`SUM_X`]: an exact record lives in the block, [`SUM_P`]: the prefix
//!    structure is not uniformly "no match" there). Both clear: no match,
//!    after one cache line.
//! 2. [`MAP_V2_EXACT4`]: 2-choice bucketized hash of 64-byte [`Bucket4`]s,
//!    8 [`Slot4`] `{addr, meta}` each, at [`hash32`]-derived buckets
//!    ([`bucket_pair4`]). A record's [`Meta`] is the *flattened* decision
//!    of that address without ports (its own exact entry, the covering
//!    prefixes and the allowlist ranked as `docs/semantics.md` says),
//!    plus whether port entries may outrank it.
//! 3. Otherwise, with [`SUM_P`]: [`MAP_V2_DIR4`] (one word per `/16`:
//!    a uniform [`Meta`], or a pointer to a small B-tree of ranges in
//!    [`MAP_V2_HEAP`] lines) gives the flattened decision of allow,
//!    prefix and prefix+port nets for `S`.
//! 4. A [`Meta`] with [`META_INDIRECT`] points at a *port list* in the
//!    heap: a header ([`PortListHeader`] word) then sorted [`PortEntry`]
//!    words, the address+port and prefix+port entries that may outrank
//!    the portless decision.
//!
//! IPv6 uses the same record and port-list formats: a summary hashed on
//! the `/32` ([`MAP_V2_SUM6`]), an exact table of [`Bucket6`] (three
//! `/128` slots a line), and a double-buffered folded LPM trie
//! ([`MAP_V2_TRIE6_A`] / [`MAP_V2_TRIE6_B`], [`ConfigV2::generation`] picks one)
//! for prefixes. [`MAP_V2_TRIE4_A`] / [`MAP_V2_TRIE4_B`] are the same for
//! IPv4, the measured alternative to the `/16` directory.
//!
//! Hits count on [`MAP_V2_STATS`] (per-CPU `{packets, bytes}` by id);
//! [`MAP_V2_CATALOG`] (+ [`MAP_V2_CATADDR6`]) holds every entry's own
//! identity by id, for adoption; the datapath never reads it.

/// Runtime configuration, [`MAP_V2_CONFIG`] slot 0 (one line, warm).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigV2 {
    /// `CONFIG_*` flags of the crate root, plus [`V2_SHORT6`].
    pub flags: u32,
    /// Seed of [`hash32`] for the IPv4 exact table.
    pub seed4: u32,
    /// Buckets of [`MAP_V2_EXACT4`] minus one (a power of two minus one).
    pub mask4: u32,
    /// `32 - s`: an IPv4 address's summary block is `addr >> shift4`.
    pub shift4: u32,
    /// Seed of [`hash32`] for the IPv6 exact table and summary.
    pub seed6: u32,
    /// Buckets of [`MAP_V2_EXACT6`] minus one.
    pub mask6: u32,
    /// `32 - s6`: an IPv6 address's summary block is
    /// `hash32(first 32 bits, seed6) >> shift6`.
    pub shift6: u32,
    /// Bit 0: the active prefix trie generation (`_A` = 0, `_B` = 1).
    pub generation: u32,
    /// Counters per CPU in [`MAP_V2_STATS`]: CPU `c`'s counter of id `i`
    /// is element `c * stats_stride + i` (ids at or beyond it are not
    /// counted; the agent sizes it to cover every id).
    pub stats_stride: u32,
    /// Explicit padding to a multiple of 8 bytes.
    pub _pad: u32,
}

/// [`ConfigV2::flags`]: IPv6 nets shorter than `/32` exist, so the `/32`
/// summary cannot exclude prefixes: every IPv6 miss consults the trie.
pub const V2_SHORT6: u32 = 1 << 8;

/// A decision word: records, range values, trie values and uniform
/// directory words all use it.
///
/// | bits | meaning |
/// |---|---|
/// | 0..24 | payload: the deciding entry id, or with [`META_INDIRECT`] the heap line of a port list (whose header holds the id) |
/// | 24..27 | [`Code`]: the flattened portless decision |
/// | 27 | [`META_INDIRECT`] |
/// | 28 | [`META_PORT_SRC`]: source-side port entries may outrank the code |
/// | 29 | [`META_PORT_DST`]: destination-side port entries may |
/// | 30 | [`META_SPILL`] (bucket headers only) |
/// | 31 | [`DIR_BLOCK`] (directory words only) |
pub type Meta = u32;

/// Mask of the payload of a [`Meta`].
pub const META_PAYLOAD: u32 = 0x00ff_ffff;
/// Shift of the [`Code`] in a [`Meta`].
pub const META_CODE_SHIFT: u32 = 24;
/// Mask of the [`Code`] after the shift.
pub const META_CODE_MASK: u32 = 7;
/// The payload is a port list's heap line, not an id.
pub const META_INDIRECT: u32 = 1 << 27;
/// Source-side entries of the port list may outrank the code.
pub const META_PORT_SRC: u32 = 1 << 28;
/// Destination-side entries of the port list may outrank the code.
pub const META_PORT_DST: u32 = 1 << 29;
/// In slot 7 of a [`Bucket4`] / [`Bucket6::hdr`]: some key whose first
/// bucket is this one lives in its second bucket.
pub const META_SPILL: u32 = 1 << 30;
/// A directory word with this bit points at a B-tree
/// ([`dir_block`]) instead of holding a [`Meta`].
pub const DIR_BLOCK: u32 = 1 << 31;
/// Largest id a [`Meta`] can carry (ids are below this).
pub const MAX_IDS: u32 = 1 << 24;

/// The flattened portless decision in a [`Meta`]: the head of the
/// ranking over the allowlist and the port-less entries covering the
/// address. Ordered so that the datapath's rank is a function of it.
pub type Code = u32;
/// No port-less entry matches (an empty record slot when the whole meta
/// is zero).
pub const CODE_NONE: Code = 0;
/// Allowlisted: pass, the payload is the longest allowlist net's id.
pub const CODE_ALLOW: Code = 1;
/// Monitor, decided by a prefix.
pub const CODE_MON_PREFIX: Code = 2;
/// Monitor, decided by the exact address.
pub const CODE_MON_ADDR: Code = 3;
/// Drop, decided by a prefix.
pub const CODE_DROP_PREFIX: Code = 4;
/// Drop, decided by the exact address.
pub const CODE_DROP_ADDR: Code = 5;

/// The [`Code`] of a meta.
#[inline(always)]
pub const fn meta_code(m: Meta) -> Code {
    (m >> META_CODE_SHIFT) & META_CODE_MASK
}

/// A meta from its parts (`flags` = [`META_INDIRECT`] | port bits).
#[inline(always)]
pub const fn meta(code: Code, payload: u32, flags: u32) -> Meta {
    (code << META_CODE_SHIFT) | (payload & META_PAYLOAD) | flags
}

/// Whether a record slot's meta holds a record (the spill bit aside).
#[inline(always)]
pub const fn meta_live(m: Meta) -> bool {
    m & !META_SPILL != 0
}

/// The rank of a portless code for comparison with port entries:
/// `action << 10 | kind << 8` (0 for [`CODE_NONE`] and [`CODE_ALLOW`],
/// which never compete).
#[inline(always)]
pub const fn code_rank(c: Code) -> u32 {
    // Arithmetic rather than a `match`, which LLVM may compile to a table
    // load the verifier then tracks precisely.
    if c >= CODE_MON_PREFIX {
        ((c >> 1) << 10) | ((c & 1) << 8)
    } else {
        0
    }
}

/// One slot of an IPv4 bucket. Written as one aligned 8-byte store.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot4 {
    /// The address as `u32::from_be_bytes(octets)`.
    pub addr: u32,
    /// The record; 0 (bar [`META_SPILL`] in slot 7) = empty.
    pub meta: Meta,
}

impl Slot4 {
    /// The slot as the 8-byte word the agent stores (native endianness,
    /// the layout of this struct).
    #[inline(always)]
    pub const fn word(self) -> u64 {
        let a = self.addr.to_ne_bytes();
        let m = self.meta.to_ne_bytes();
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], m[0], m[1], m[2], m[3]])
    }

    /// The slot an 8-byte word holds.
    #[inline(always)]
    pub const fn from_word(w: u64) -> Slot4 {
        let b = w.to_ne_bytes();
        Slot4 {
            addr: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            meta: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Slots per [`Bucket4`].
pub const SLOTS4: usize = 8;

/// One line of [`MAP_V2_EXACT4`]. [`META_SPILL`] lives in `slots[7].meta`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bucket4 {
    /// The slots, in no order.
    pub slots: [Slot4; SLOTS4],
}

/// Slots per [`Bucket6`].
pub const SLOTS6: usize = 3;

/// One line of [`MAP_V2_EXACT6`]: three `/128` slots, structure of arrays
/// so that every meta is a naturally aligned word. A slot's address is
/// written only while its meta is 0 and at least one grace period before
/// the meta is (see the update protocol).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bucket6 {
    /// The addresses, network byte order.
    pub addrs: [[u8; 16]; SLOTS6],
    /// The records; 0 = empty.
    pub metas: [Meta; SLOTS6],
    /// [`META_SPILL`], nothing else.
    pub hdr: u32,
}

/// One heap line: B-tree nodes and port lists live in runs of these.
pub type Line = [u64; 8];

/// Entries per B-tree node line.
pub const BTREE_FANOUT: usize = 8;
/// Deepest B-tree under a `/16` (inner levels above the leaves): 65,536
/// ranges need 5.
pub const BTREE_MAX_DEPTH: u32 = 5;

/// Directory word of a `/16` whose decisions are not uniform: its B-tree
/// has `depth` inner levels above the leaves, the root at heap `line`.
#[inline(always)]
pub const fn dir_block(line: u32, depth: u32) -> u32 {
    DIR_BLOCK | (depth << 27) | (line & DIR_LINE_MASK)
}
/// Mask of the root line in a [`dir_block`] word.
pub const DIR_LINE_MASK: u32 = (1 << 27) - 1;
/// The depth of a [`dir_block`] word.
#[inline(always)]
pub const fn dir_depth(w: u32) -> u32 {
    (w >> 27) & 7
}

/// A B-tree entry word: the first low-16-bit key it covers in the top 16
/// bits, then a [`Meta`] (leaf) or a child line (inner node) in the low 32.
/// Unused entries of a node repeat its last entry.
#[inline(always)]
pub const fn btree_entry(start: u16, value: u32) -> u64 {
    ((start as u64) << 48) | value as u64
}
/// The key of a [`btree_entry`].
#[inline(always)]
pub const fn btree_start(e: u64) -> u32 {
    (e >> 48) as u32
}

/// Word 0 of a port list (its first heap line): the id of the portless
/// decision ([`crate::NO_ENTRY`] if none) in bits 0..32, [`PORT_TREE`]
/// and the root line of the tree in bits 36..64. Without [`PORT_TREE`]
/// the entries are words 1..=7 of this line, unused ones [`PORT_EMPTY`];
/// with it, a B-tree of exactly [`PORT_TREE_DEPTH`] inner levels (entries
/// [`btree_port_inner`], single-child nodes where the tree is smaller)
/// above leaves of [`PortEntry`] words, eight a line, the last repeated.
/// The fixed depth keeps the datapath's walk free of depth tests, which
/// would multiply the paths the verifier walks.
#[inline(always)]
pub const fn port_list_header(id: u32, tree_root: Option<u32>) -> u64 {
    match tree_root {
        Some(root) => ((root as u64) << 36) | PORT_TREE | id as u64,
        None => id as u64,
    }
}
/// Type alias naming the header word (see [`port_list_header`]).
pub type PortListHeader = u64;
/// Header bit: the entries are in a B-tree.
pub const PORT_TREE: u64 = 1 << 32;
/// Entries a port list holds in its header line.
pub const PORT_INLINE: usize = 7;
/// An unused entry of a header line (its key matches no TCP/UDP packet).
pub const PORT_EMPTY: u64 = u64::MAX;
/// Inner levels of every port B-tree.
pub const PORT_TREE_DEPTH: u32 = 3;
/// Most entries a port list holds (8^4).
pub const PORT_LIST_MAX: usize = 4096;
/// An inner entry of a port B-tree: the smallest key below it, the child line.
#[inline(always)]
pub const fn btree_port_inner(key: u32, child: u32) -> u64 {
    ((key as u64) << PORT_KEY_SHIFT) | child as u64
}

/// The 25-bit key a port entry is sorted and found by.
#[inline(always)]
pub const fn port_key(proto: u8, side: u8, port: u16) -> u32 {
    ((proto as u32) << 17) | (((side & 1) as u32) << 16) | port as u32
}

/// A port entry word (see [`port_entry`]).
pub type PortEntry = u64;
/// Shift of the key in a [`PortEntry`].
pub const PORT_KEY_SHIFT: u32 = 39;
/// A port list entry: the best-ranked entry of that (protocol, side,
/// port) for this address or range: `drop` or monitor, the prefix length
/// of the entry's net (32 / 128: address+port, else prefix+port), its id.
#[inline(always)]
pub const fn port_entry(key: u32, drop: bool, len: u8, id: u32) -> PortEntry {
    ((key as u64) << PORT_KEY_SHIFT)
        | ((drop as u64) << 32)
        | ((len as u64) << 24)
        | (id & META_PAYLOAD) as u64
}
/// The rank of a port entry: `action << 10 | kind << 8 | len` with kind
/// 3 (address+port) when `len == full`, else 2 (prefix+port).
#[inline(always)]
pub const fn port_entry_rank(e: PortEntry, full: u32) -> u32 {
    let action = 1 + ((e >> 32) & 1) as u32;
    let len = ((e >> 24) & 0xff) as u32;
    let kind = if len == full { 3 } else { 2 };
    (action << 10) | (kind << 8) | len
}

/// Summary bit: an exact record lives in the block.
pub const SUM_X: u64 = 1;
/// Summary bit: the prefix structure is not uniformly "no match" in the block.
pub const SUM_P: u64 = 2;
/// Smallest summary block shift `s` (`/16` blocks: 16 KiB).
pub const SUMMARY_MIN_BITS: u32 = 16;
/// Largest `s` (`/24` blocks: 4 MiB).
pub const SUMMARY_MAX_BITS: u32 = 24;

/// `s` for a table of `entries`: `clamp(ceil(log2(32 * entries)), 16, 24)`,
/// about 16 blocks per entry so a miss rarely finds a set bit.
pub const fn summary_bits_for(entries: u64) -> u32 {
    let want = (32 * if entries == 0 { 1 } else { entries }).next_power_of_two();
    let bits = want.trailing_zeros();
    if bits < SUMMARY_MIN_BITS {
        SUMMARY_MIN_BITS
    } else if bits > SUMMARY_MAX_BITS {
        SUMMARY_MAX_BITS
    } else {
        bits
    }
}

/// u64 words of a summary of `2^bits` blocks (two bits each).
pub const fn summary_words(bits: u32) -> u32 {
    1 << (bits - 5)
}

/// (word index, bit shift) of summary block `block`.
#[inline(always)]
pub const fn summary_pos(block: u32) -> (u32, u32) {
    (block >> 5, (block & 31) * 2)
}

/// Buckets of an exact table for `entries` keys at load <= 1/2 with
/// `slots` per bucket: the next power of two >= `2 * entries / slots`.
pub const fn exact_buckets_for(entries: u64, slots: u64) -> u32 {
    let need = (2 * entries).div_ceil(slots);
    let n = if need < 1 { 1 } else { need };
    n.next_power_of_two() as u32
}

/// The one hash of the v2 tables (murmur3's finaliser over `x ^ seed`):
/// buckets, second choices and the IPv6 summary all derive from it, on
/// both sides.
#[inline(always)]
pub const fn hash32(x: u32, seed: u32) -> u32 {
    let mut h = x ^ seed;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// What the second-choice seed differs from the first by.
pub const SEED2_XOR: u32 = 0x9e37_79b9;

/// The two candidate buckets of an IPv4 address (`addr` as
/// `u32::from_be_bytes`) in a table of `mask + 1` buckets.
#[inline(always)]
pub const fn bucket_pair4(addr: u32, seed: u32, mask: u32) -> (u32, u32) {
    (
        hash32(addr, seed) & mask,
        hash32(addr, seed ^ SEED2_XOR) & mask,
    )
}

/// [`hash32`] folded over the four words of an IPv6 address.
#[inline(always)]
pub const fn hash128(a: [u32; 4], seed: u32) -> u32 {
    let h = hash32(a[0], seed);
    let h = hash32(a[1] ^ h, seed);
    let h = hash32(a[2] ^ h, seed);
    hash32(a[3] ^ h, seed)
}

/// The words of an IPv6 address (each `u32::from_be_bytes`).
#[inline(always)]
pub const fn v6_words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_be_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_be_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_be_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The two candidate buckets of an IPv6 address.
#[inline(always)]
pub const fn bucket_pair6(a: [u32; 4], seed: u32, mask: u32) -> (u32, u32) {
    (hash128(a, seed) & mask, hash128(a, seed ^ SEED2_XOR) & mask)
}

/// Summary block of an IPv6 address: its first 32 bits hashed.
#[inline(always)]
pub const fn summary_block6(first: u32, seed: u32, shift: u32) -> u32 {
    // Shift by at least 8 (s <= 24) so the value stays in range.
    hash32(first, seed ^ 0x5bd1_e995) >> shift
}

/// Directory words (one per `/16`).
pub const DIR4_ENTRIES: u32 = 1 << 16;
/// Directory words per element of [`MAP_V2_DIR4`]: array maps store
/// elements at 8-byte multiples, so 4-byte elements would waste half the
/// map; 64-byte elements of sixteen words keep it 256 KiB and line-sized.
pub const DIR4_PER_LINE: u32 = 16;
/// Elements of [`MAP_V2_DIR4`].
pub const DIR4_LINES: u32 = DIR4_ENTRIES / DIR4_PER_LINE;
/// One element of [`MAP_V2_DIR4`]: the words of sixteen consecutive `/16`s.
pub type DirLine = [u32; DIR4_PER_LINE as usize];

/// Value of the folded prefix tries: the [`Meta`] in the low 32 bits.
pub type TrieValue = u64;

/// Hit counter of one entry id on one CPU ([`MAP_V2_STATS`], element
/// `cpu * ConfigV2::stats_stride + id`). A plain array rather than a
/// per-CPU one: a per-CPU array lookup loads the value's per-CPU pointer
/// from a pointer array as large as the id space first, a second cache
/// miss per hit (measured: 2.2x the cost). The last hit is derived by the
/// agent from changes between reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounter {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as seen by XDP).
    pub bytes: u64,
}

/// One entry's own identity by id ([`MAP_V2_CATALOG`]): see
/// [`catalog_word`]. 0 = unused id.
pub type CatalogWord = u64;

/// Catalog bits: the id is in use.
pub const CAT_USED: u64 = 1 << 63;
/// Catalog bits: an IPv6 net (the low 32 bits index [`MAP_V2_CATADDR6`]).
pub const CAT_V6: u64 = 1 << 62;
/// Catalog bits: an allowlist net.
pub const CAT_ALLOW: u64 = 1 << 61;
/// Catalog bits: the entry's own action is drop.
pub const CAT_DROP: u64 = 1 << 60;
/// Catalog bits: the entry has a port qualifier.
pub const CAT_PORT: u64 = 1 << 59;

/// Catalog bits: the port qualifier's protocol is TCP (else UDP).
pub const CAT_TCP: u64 = 1 << 58;
/// Catalog bits: the port qualifier's side is the destination.
pub const CAT_DST: u64 = 1 << 57;

/// The catalog word of an entry: `flags` (`CAT_*`), the prefix length
/// (bits 48..56), the port (bits 32..48) and the IPv4 address (as
/// `u32::from_be_bytes`) or the IPv6 address's index in
/// [`MAP_V2_CATADDR6`] (bits 0..32).
#[inline(always)]
pub const fn catalog_word(flags: u64, len: u8, port: u16, low: u32) -> u64 {
    flags | ((len as u64) << 48) | ((port as u64) << 32) | low as u64
}

/// Map names (at most 15 bytes).
pub const MAP_V2_CONFIG: &str = "V2_CONFIG";
/// See the module docs.
pub const MAP_V2_SUM4: &str = "V2_SUM4";
/// See the module docs.
pub const MAP_V2_EXACT4: &str = "V2_EXACT4";
/// See the module docs.
pub const MAP_V2_DIR4: &str = "V2_DIR4";
/// See the module docs.
pub const MAP_V2_HEAP: &str = "V2_HEAP";
/// See the module docs.
pub const MAP_V2_SUM6: &str = "V2_SUM6";
/// See the module docs.
pub const MAP_V2_EXACT6: &str = "V2_EXACT6";
/// See the module docs.
pub const MAP_V2_TRIE6_A: &str = "V2_TRIE6_A";
/// See the module docs.
pub const MAP_V2_TRIE6_B: &str = "V2_TRIE6_B";
/// See the module docs.
pub const MAP_V2_TRIE4_A: &str = "V2_TRIE4_A";
/// See the module docs.
pub const MAP_V2_TRIE4_B: &str = "V2_TRIE4_B";
/// See the module docs.
pub const MAP_V2_STATS: &str = "V2_STATS";
/// See the module docs.
pub const MAP_V2_CATALOG: &str = "V2_CATALOG";
/// See the module docs.
pub const MAP_V2_CATADDR6: &str = "V2_CATADDR6";
/// See [`LastHit`]: the agent's record of when each id was last hit. The
/// datapath never touches it (a timestamp per hit would be a second line
/// per packet); it is in the object so that it is created, sized and
/// pinned with the tier it belongs to.
pub const MAP_V2_LASTHIT: &str = "V2_LASTHIT";

/// Every v2 map the production object carries, in pin order.
pub const V2_MAP_NAMES: [&str; 15] = [
    MAP_V2_CONFIG,
    MAP_V2_SUM4,
    MAP_V2_EXACT4,
    MAP_V2_DIR4,
    MAP_V2_HEAP,
    MAP_V2_SUM6,
    MAP_V2_EXACT6,
    MAP_V2_TRIE4_A,
    MAP_V2_TRIE4_B,
    MAP_V2_TRIE6_A,
    MAP_V2_TRIE6_B,
    MAP_V2_STATS,
    MAP_V2_CATALOG,
    MAP_V2_CATADDR6,
    MAP_V2_LASTHIT,
];

/// When an id was last hit, as the agent derives it ([`MAP_V2_LASTHIT`],
/// element = id; 8 bytes, the low 32 bits of each value): a pass every
/// second compares each id's packets (summed over CPUs) with `packets`, and
/// where they moved stores the new total and the current `jiffies`. A
/// reader that finds the counters past `packets` knows the hit came after
/// the agent's last pass (at most a pass interval before its own read).
/// 32 bits suffice: a total that moves by a multiple of 2^32 between two
/// passes a second apart does not happen, and `jiffies` is read back as
/// the latest value before now with these low bits (49 days at HZ=1000).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastHit {
    /// The low 32 bits of the id's total packets when the agent last saw
    /// them change.
    pub packets: u32,
    /// The low 32 bits of `jiffies` (the clock `bpf_jiffies64` reads) of
    /// that pass; 0: never hit.
    pub jiffies: u32,
}

/// `BPF_F_MMAPABLE`: array maps the agent writes through `mmap`.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

const _: () = {
    assert!(core::mem::size_of::<ConfigV2>() == 40);
    assert!(core::mem::size_of::<Slot4>() == 8);
    assert!(core::mem::size_of::<Bucket4>() == 64);
    assert!(core::mem::align_of::<Bucket4>() == 64);
    assert!(core::mem::size_of::<Bucket6>() == 64);
    assert!(core::mem::offset_of!(Bucket6, metas) == 48);
    assert!(core::mem::offset_of!(Bucket6, hdr) == 60);
    assert!(core::mem::size_of::<Line>() == 64);
    assert!(core::mem::size_of::<DirLine>() == 64);
    assert!(core::mem::size_of::<EntryCounter>() == 16);
    // Codes fit their field; the flag bits do not overlap the payload.
    assert!(CODE_DROP_ADDR <= META_CODE_MASK);
    assert!(META_PAYLOAD & (META_CODE_MASK << META_CODE_SHIFT) == 0);
    assert!(MAX_IDS == META_PAYLOAD + 1);
    // Geometry examples of the brief.
    assert!(summary_bits_for(1000) == 16);
    assert!(summary_bits_for(1_000_000) == 24);
    assert!(summary_words(16) * 8 == 16 * 1024);
    assert!(summary_words(24) * 8 == 4 * 1024 * 1024);
    assert!(exact_buckets_for(1_000_000, 8) == 1 << 18);
    assert!(exact_buckets_for(1000, 8) == 256);
    // Codes rank as their action and kind.
    assert!(code_rank(CODE_NONE) == 0 && code_rank(CODE_ALLOW) == 0);
    assert!(code_rank(CODE_MON_PREFIX) == 1 << 10);
    assert!(code_rank(CODE_MON_ADDR) == (1 << 10) | (1 << 8));
    assert!(code_rank(CODE_DROP_PREFIX) == 2 << 10);
    assert!(code_rank(CODE_DROP_ADDR) == (2 << 10) | (1 << 8));
    assert!(CODE_DROP_ADDR <= 5);
    // Port entries sort by key, then action, then length.
    assert!(port_entry(1, false, 0, 0) > port_entry(0, true, 128, META_PAYLOAD));
    assert!(port_key(255, 1, 65535) < (1 << 25));
};
