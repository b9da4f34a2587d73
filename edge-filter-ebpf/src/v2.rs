//! The v2 maps and classifier (`edge_filter_common::v2`,
//! `docs/datapath-v2.md`): a miss reads one summary word, an exact hit one
//! bucket line more, whatever the set size.
//!
//! Every structure is an array the agent writes through `mmap` with
//! aligned word stores; every read that decides something is one aligned
//! load (`read_volatile`, so the compiler neither splits nor reorders it),
//! and the order of the loads is the one the update protocol relies on.
//! The userspace compiler (`edge-filter/src/layout`) builds the tables and
//! simulates exactly this lookup; the differential tests hold the two to
//! the reference classifier.
//!
//! The classifiers are *global* BPF functions ([`v2_classify4`],
//! [`v2_classify6`]): the verifier checks each once, with scalar
//! arguments, instead of once per parser path. Inside, no loop's index
//! reaches a pointer offset (the only variable offsets pick one of eight
//! words of a line), so the verifier's state pruning keeps the loops
//! linear.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};
use edge_filter_common::{
    CONFIG_COUNT_OFF, CONFIG_COUNT_SAMPLED, CONFIG_MALFORMED_DROP, CONFIG_RECORD_LAST,
    CONFIG_SAMPLE_EVENTS, ENTRY_SAMPLE_EVERY, NO_ENTRY, REASON_DROP_BASE, REASON_MONITOR_BASE,
    REASON_PASS_ALLOWLIST, REASON_PASS_NO_MATCH, REASON_PASS_NON_IP, Reason, SIDE_DST, SIDE_SRC,
    reason_malformed,
    v2::{
        BPF_F_MMAPABLE, BTREE_MAX_DEPTH, Bucket4, Bucket6, CODE_ALLOW, CatalogWord, ConfigV2,
        DIR_BLOCK, DIR_LINE_MASK, DIR4_LINES, DirLine, EntryCounter, Line, META_INDIRECT,
        META_PAYLOAD, META_PORT_DST, META_PORT_SRC, META_SPILL, Meta, PORT_EMPTY, PORT_KEY_SHIFT,
        PORT_TREE, PORT_TREE_DEPTH, SEED2_XOR, SLOTS4, SLOTS6, SUM_P, SUM_X, Slot4, TrieValue,
        V2_SHORT6, code_rank, dir_depth, hash32, hash128, meta_code, port_entry_rank, port_key,
        summary_block6, summary_pos, summary_words, v6_words,
    },
};

use crate::{
    common::{count_reason, record_last, sample},
    parse::{Parsed, Source, parse},
};

/// Runtime configuration (slot 0).
#[map]
pub static V2_CONFIG: Array<ConfigV2> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// IPv4 summary: two bits per `/s` block. Sized by the loader.
#[map]
pub static V2_SUM4: Array<u64> = Array::with_max_entries(summary_words(16), BPF_F_MMAPABLE);
/// IPv4 exact records. Sized by the loader.
#[map]
pub static V2_EXACT4: Array<Bucket4> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// IPv4 `/16` directory.
#[map]
pub static V2_DIR4: Array<DirLine> = Array::with_max_entries(DIR4_LINES, BPF_F_MMAPABLE);
/// B-tree nodes and port lists. Sized by the loader.
#[map]
pub static V2_HEAP: Array<Line> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// IPv6 summary: two bits per hashed `/32`. Sized by the loader.
#[map]
pub static V2_SUM6: Array<u64> = Array::with_max_entries(summary_words(16), BPF_F_MMAPABLE);
/// IPv6 exact records. Sized by the loader.
#[map]
pub static V2_EXACT6: Array<Bucket6> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// IPv6 folded prefix trie, generation 0.
#[map]
pub static V2_TRIE6_A: LpmTrie<[u8; 16], TrieValue> = LpmTrie::with_max_entries(1, 0);
/// IPv6 folded prefix trie, generation 1.
#[map]
pub static V2_TRIE6_B: LpmTrie<[u8; 16], TrieValue> = LpmTrie::with_max_entries(1, 0);
/// IPv4 folded prefix trie, generation 0 (the trie variant only).
#[map]
pub static V2_TRIE4_A: LpmTrie<[u8; 4], TrieValue> = LpmTrie::with_max_entries(1, 0);
/// IPv4 folded prefix trie, generation 1 (the trie variant only).
#[map]
pub static V2_TRIE4_B: LpmTrie<[u8; 4], TrieValue> = LpmTrie::with_max_entries(1, 0);
/// Hits per CPU and entry id (`cpu * stats_stride + id`). Sized by the
/// loader to possible CPUs x the stride.
#[map]
pub static V2_STATS: Array<EntryCounter> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Every entry's own identity by id (for the agent; never read here).
#[map]
pub static V2_CATALOG: Array<CatalogWord> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// IPv6 addresses of catalog entries.
#[map]
pub static V2_CATADDR6: Array<[u8; 16]> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// When each id was last hit, as the agent derives it from the counters
/// (`LastHit`; never touched here). Sized by the loader to the stride.
#[map]
pub static V2_LASTHIT: Array<edge_filter_common::v2::LastHit> =
    Array::with_max_entries(1, BPF_F_MMAPABLE);

/// `(reason, deciding id, drop?)`.
type Verdict = (Reason, u32, bool);

const NO_MATCH: Verdict = (REASON_PASS_NO_MATCH, NO_ENTRY, false);

/// A verdict as the one scalar a global function returns.
#[inline(always)]
fn pack(v: Verdict) -> u64 {
    ((v.1 as u64) << 32) | ((v.2 as u64) << 8) | v.0 as u64
}

#[inline(always)]
fn unpack(x: u64) -> Verdict {
    ((x & 0xff) as u32, (x >> 32) as u32, (x >> 8) & 1 == 1)
}

/// The transport of a packet as one scalar: 0 without ports, else
/// bit 63 | proto << 32 | sport << 16 | dport (host order).
#[inline(always)]
fn pack_ports(p: &Option<Source>) -> u64 {
    match p {
        Some(p) => {
            (1 << 63)
                | ((p.proto as u64) << 32)
                | ((u16::from_be_bytes(p.sport) as u64) << 16)
                | u16::from_be_bytes(p.dport) as u64
        }
        None => 0,
    }
}

/// Per-entry counting: none (the benchmark's baseline).
pub const STATS_NONE: u8 = 0;
/// Per-entry counting as the runtime flags say: every hit (one cache line
/// per hit), one in [`ENTRY_SAMPLE_EVERY`] with [`CONFIG_COUNT_SAMPLED`],
/// none with [`CONFIG_COUNT_OFF`].
pub const STATS_EXACT: u8 = 1;

/// The whole program: parse, classify, count, record, return. `STATS`
/// (`STATS_*`) counts hits on [`V2_STATS`]; `TRIE4` takes IPv4 prefixes
/// from the tries instead of the directory.
#[inline(always)]
pub fn run<const STATS: u8, const TRIE4: bool>(ctx: &XdpContext) -> u32 {
    let (flags, stride) = match V2_CONFIG.get(0) {
        Some(c) => (load(&c.flags), load(&c.stats_stride)),
        // Cannot happen for an array map.
        None => return xdp_action::XDP_PASS,
    };
    let parsed = parse(ctx);
    let (reason, id, drop) = match parsed {
        Parsed::NonIp => (REASON_PASS_NON_IP, NO_ENTRY, false),
        Parsed::Malformed(class) => {
            let drop = flags & CONFIG_MALFORMED_DROP != 0;
            (reason_malformed(class, drop), NO_ENTRY, drop)
        }
        Parsed::V4 { src, ports, .. } => unpack(v2_classify4(
            u32::from_be_bytes(src),
            pack_ports(&ports),
            TRIE4 as u32,
        )),
        Parsed::V6 { src, ports, .. } => {
            let [lo, hi] = halves(&src);
            unpack(v2_classify6(lo, hi, pack_ports(&ports)))
        }
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    let seen = count_reason(reason, len);
    if STATS == STATS_EXACT && id != NO_ENTRY && flags & CONFIG_COUNT_OFF == 0 {
        if flags & CONFIG_COUNT_SAMPLED == 0 {
            count_entry(stride, id, 1, len);
        } else if seen & (ENTRY_SAMPLE_EVERY as u64 - 1) == 0 {
            // The reason's own per-CPU counter (a line just written) is
            // the tick.
            let n = ENTRY_SAMPLE_EVERY as u64;
            count_entry(stride, id, n, len * n);
        }
    }
    if flags & CONFIG_SAMPLE_EVENTS != 0 && reason >= REASON_DROP_BASE {
        sample(&parsed, reason, id, len);
    }
    if flags & CONFIG_RECORD_LAST != 0 {
        record_last(reason, id);
    }
    if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// One line per hit: packets and bytes of the deciding id on this CPU
/// (this CPU's region of [`V2_STATS`], which no other CPU writes).
#[inline(always)]
fn count_entry(stride: u32, id: u32, packets: u64, bytes: u64) {
    if id >= stride {
        return;
    }
    // SAFETY: a helper without arguments or preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if let Some(s) = V2_STATS.get_ptr_mut(cpu.wrapping_mul(stride).wrapping_add(id)) {
        // SAFETY: this CPU's element; XDP runs with preemption disabled.
        unsafe {
            (*s).packets += packets;
            (*s).bytes += bytes;
        }
    }
}

/// An aligned load the compiler keeps whole and in program order.
#[inline(always)]
fn load<T: Copy>(p: &T) -> T {
    // SAFETY: a reference is valid and aligned for reads.
    unsafe { core::ptr::read_volatile(p) }
}

/// All ones when `a == b`, else 0, without a branch (a branch per compare
/// would multiply the paths the verifier walks).
#[inline(always)]
fn eq_mask(a: u64, b: u64) -> u64 {
    let d = a ^ b;
    ((d | d.wrapping_neg()) >> 63).wrapping_sub(1)
}

/// 1 when `a <= b` (both below 2^63), else 0, without a branch.
#[inline(always)]
fn le_bit(a: u64, b: u64) -> u64 {
    (b.wrapping_sub(a) >> 63) ^ 1
}

/// Classify an IPv4 source (`addr` as `u32::from_be_bytes`); `ports` as
/// [`pack_ports`]; `trie` != 0 takes prefixes from the folded tries.
/// Returns a packed verdict. A global function: verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn v2_classify4(addr: u32, ports: u64, trie: u32) -> u64 {
    let Some(c) = V2_CONFIG.get(0) else {
        return pack(NO_MATCH);
    };
    let shift = load(&c.shift4) & 31;
    let (w, sh) = summary_pos(addr >> shift);
    let bits = match V2_SUM4.get(w) {
        Some(x) => (load(x) >> sh) & 3,
        // A summary smaller than the config says: look everywhere.
        None => SUM_X | SUM_P,
    };
    let mut m: Meta = 0;
    let mut found = false;
    if bits & SUM_X != 0 {
        let seed = load(&c.seed4);
        let mask = load(&c.mask4);
        if let Some(b1) = V2_EXACT4.get(hash32(addr, seed) & mask) {
            let (hit, spill) = find4(b1, addr);
            if let Some(x) = hit {
                (m, found) = (x, true);
            } else if spill
                && let Some(b2) = V2_EXACT4.get(hash32(addr, seed ^ SEED2_XOR) & mask)
                && let Some(x) = find4(b2, addr).0
            {
                (m, found) = (x, true);
            }
        }
    }
    if !found && bits & SUM_P != 0 {
        m = if trie != 0 {
            let gen_ = load(&c.generation);
            let k = Key::new(32, addr.to_be_bytes());
            let v = if gen_ & 1 == 0 {
                V2_TRIE4_A.get(&k)
            } else {
                V2_TRIE4_B.get(&k)
            };
            v.map_or(0, |v| *v as u32)
        } else {
            dir4(addr)
        };
    }
    pack(decide(m, ports, 32))
}

/// `(record of a, spill bit)` of one bucket; each slot one 8-byte load,
/// all eight read (no early exit: one path for the verifier).
#[inline(always)]
fn find4(b: &Bucket4, a: u32) -> (Option<Meta>, bool) {
    let mut m = 0u64;
    let mut last = 0u64;
    for i in 0..SLOTS4 {
        // SAFETY: Slot4 is 8 bytes at an 8-aligned offset of the bucket.
        let w = load(unsafe { &*(&b.slots[i] as *const Slot4 as *const u64) });
        let s = Slot4::from_word(w);
        let live = (s.meta & !META_SPILL) as u64;
        // The record of `a` if this slot holds it (a live meta is never 0).
        m |= live & eq_mask(s.addr as u64, a as u64);
        last = w;
    }
    let spill = Slot4::from_word(last).meta & META_SPILL != 0;
    let m = m as u32;
    (if m != 0 { Some(m) } else { None }, spill)
}

/// The `/16` directory word of `a`, then its B-tree.
#[inline(always)]
fn dir4(a: u32) -> Meta {
    let hi = a >> 16;
    let Some(d) = V2_DIR4.get(hi >> 4) else {
        return 0;
    };
    let w = load(&d[(hi & 15) as usize]);
    if w & DIR_BLOCK == 0 {
        return w;
    }
    let key = a & 0xffff;
    let depth = dir_depth(w);
    let mut line = w & DIR_LINE_MASK;
    for level in 0..BTREE_MAX_DEPTH {
        if level >= depth {
            break;
        }
        let Some(l) = V2_HEAP.get(line) else {
            return 0;
        };
        line = btree_pick(l, key, 48) as u32;
    }
    match V2_HEAP.get(line) {
        Some(l) => btree_pick(l, key, 48) as u32,
        None => 0,
    }
}

/// The entry of a node that covers `key`: the last whose key (the word's
/// bits from `shift` up) is <= `key`. Entries are sorted; the first covers
/// the node's smallest key. One pass over the eight words with masks: no
/// variable offset, whose precision would make the verifier walk each
/// possible index separately.
#[inline(always)]
fn btree_pick(l: &Line, key: u32, shift: u32) -> u64 {
    let mut chosen = load(&l[0]);
    for x in &l[1..] {
        let w = load(x);
        let take = le_bit((w >> shift) & 0xffff_ffff, key as u64).wrapping_neg();
        chosen = (w & take) | (chosen & !take);
    }
    chosen
}

/// Classify an IPv6 source (its 16 bytes as two native-endian words);
/// `ports` as [`pack_ports`]. Returns a packed verdict. A global function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn v2_classify6(lo: u64, hi: u64, ports: u64) -> u64 {
    let Some(c) = V2_CONFIG.get(0) else {
        return pack(NO_MATCH);
    };
    let mut src = [0u8; 16];
    src[..8].copy_from_slice(&lo.to_ne_bytes());
    src[8..].copy_from_slice(&hi.to_ne_bytes());
    let w = v6_words(&src);
    let seed = load(&c.seed6);
    let (word, sh) = summary_pos(summary_block6(w[0], seed, load(&c.shift6) & 31));
    let mut bits = match V2_SUM6.get(word) {
        Some(x) => (load(x) >> sh) & 3,
        None => SUM_X | SUM_P,
    };
    if load(&c.flags) & V2_SHORT6 != 0 {
        bits |= SUM_P;
    }
    let mut m: Meta = 0;
    let mut found = false;
    if bits & SUM_X != 0 {
        let mask = load(&c.mask6);
        if let Some(b1) = V2_EXACT6.get(hash128(w, seed) & mask) {
            if let Some(x) = find6(b1, [lo, hi]) {
                (m, found) = (x, true);
            } else if load(&b1.hdr) & META_SPILL != 0
                && let Some(b2) = V2_EXACT6.get(hash128(w, seed ^ SEED2_XOR) & mask)
                && let Some(x) = find6(b2, [lo, hi])
            {
                (m, found) = (x, true);
            }
        }
    }
    if !found && bits & SUM_P != 0 {
        let k = Key::new(128, src);
        let v = if load(&c.generation) & 1 == 0 {
            V2_TRIE6_A.get(&k)
        } else {
            V2_TRIE6_B.get(&k)
        };
        m = v.map_or(0, |v| *v as u32);
    }
    pack(decide(m, ports, 128))
}

/// An address as two native-endian words (compared, never interpreted).
#[inline(always)]
fn halves(a: &[u8; 16]) -> [u64; 2] {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&a[..8]);
    hi.copy_from_slice(&a[8..]);
    [u64::from_ne_bytes(lo), u64::from_ne_bytes(hi)]
}

/// The record of an address in one bucket: each meta is loaded before its
/// address (see the update protocol); all three slots read, no early exit.
#[inline(always)]
fn find6(b: &Bucket6, want: [u64; 2]) -> Option<Meta> {
    let mut m = 0u64;
    for i in 0..SLOTS6 {
        let meta = load(&b.metas[i]) as u64;
        // SAFETY: each address is 16 bytes at a 16-aligned offset.
        let p = &b.addrs[i] as *const [u8; 16] as *const u64;
        let (lo, hi) = unsafe { (load(&*p), load(&*p.add(1))) };
        m |= meta & eq_mask(lo, want[0]) & eq_mask(hi, want[1]);
    }
    let m = m as u32;
    if m != 0 { Some(m) } else { None }
}

/// A decision word to a verdict: the flattened portless decision, then the
/// port list's best source- and destination-side entries when the flags
/// say they may outrank it (`full` = 32 or 128: the prefix length of an
/// address+port entry).
#[inline(always)]
fn decide(m: Meta, ports: u64, full: u32) -> Verdict {
    let code = meta_code(m);
    if code == CODE_ALLOW {
        return (REASON_PASS_ALLOWLIST, m & META_PAYLOAD, false);
    }
    let mut rank = code_rank(code);
    let mut id = m & META_PAYLOAD;
    if m & META_INDIRECT != 0 {
        let Some(l) = V2_HEAP.get(m & META_PAYLOAD) else {
            return NO_MATCH;
        };
        id = load(&l[0]) as u32;
        if ports >> 63 != 0 {
            let proto = (ports >> 32) as u8;
            let sides = [
                (META_PORT_SRC, SIDE_SRC, (ports >> 16) as u16),
                (META_PORT_DST, SIDE_DST, ports as u16),
            ];
            for (flag, side, port) in sides {
                if m & flag == 0 {
                    continue;
                }
                let e = port_find(l, port_key(proto, side, port));
                // Strictly better (a tie keeps the source side); PORT_EMPTY
                // never is. Selected without a branch.
                let r = port_entry_rank(e, full) as u64 & !eq_mask(e, PORT_EMPTY);
                let better = (rank as u64).wrapping_sub(r) >> 63;
                let keep = better.wrapping_sub(1);
                rank = ((rank as u64 & keep) | (r & !keep)) as u32;
                id = ((id as u64 & keep) | ((e as u32 & META_PAYLOAD) as u64 & !keep)) as u32;
            }
        }
    }
    if rank == 0 {
        return NO_MATCH;
    }
    // Arithmetic, not a `match`: LLVM turns a match into a table load,
    // which would make the verifier track the rank precisely.
    let drop = rank >> 10 == 2;
    let base = if drop {
        REASON_DROP_BASE
    } else {
        REASON_MONITOR_BASE
    };
    (base + ((rank >> 8) & 3), id, drop)
}

/// The entry for `key` in the port list whose header line is `l`, or
/// [`PORT_EMPTY`]: the seven inline entries, or the fixed-depth B-tree.
#[inline(always)]
fn port_find(l: &Line, key: u32) -> u64 {
    let hdr = load(&l[0]);
    let e = if hdr & PORT_TREE == 0 {
        let mut e = 0u64;
        let mut any = 0u64;
        for w in &l[1..] {
            let x = load(w);
            let hit = eq_mask(x >> PORT_KEY_SHIFT, key as u64);
            e |= x & hit;
            any |= hit;
        }
        e | !any
    } else {
        let mut line = (hdr >> 36) as u32;
        for _ in 0..PORT_TREE_DEPTH {
            let Some(n) = V2_HEAP.get(line) else {
                return PORT_EMPTY;
            };
            line = btree_pick(n, key, PORT_KEY_SHIFT) as u32;
        }
        match V2_HEAP.get(line) {
            Some(n) => btree_pick(n, key, PORT_KEY_SHIFT),
            None => PORT_EMPTY,
        }
    };
    e | !eq_mask(e >> PORT_KEY_SHIFT, key as u64)
}
