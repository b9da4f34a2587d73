//! XDP programs used only by `cargo xtask bench` (`ef-bench datapath` and
//! `ef-bench live`), never by the agent.
//!
//! - Baselines for the in-kernel datapath numbers: [`bare_drop`] (the
//!   cheapest XDP program there is), [`parse_only`] (edge-filter's own parser,
//!   `edge-filter-ebpf/src/parse.rs` compiled in unchanged, no lookups) and
//!   one program per map kind doing the parse plus exactly one lookup
//!   ([`lookup_addr_v4`] …), so the cost of each lookup alone is known.
//! - [`rewrite`]: the harness every measured program runs behind. It writes a
//!   different source address (and source port) into the frame on every run,
//!   taken from a table of addresses that the benchmark fills with hits and
//!   misses, then tail-calls the measured program through `JUMP[0]`.
//!   BPF_PROG_TEST_RUN repeats one frame; without the rewrite every repeat
//!   would look up the same key, always warm in the cache.
//! - [`generate`]: the same rewrite for the live benchmark, plus the IPv4 header
//!   checksum (the kernel stack drops bad ones before netfilter), returning
//!   `XDP_TX`: run in live-frames mode it sends every frame out of a veth.
//! - [`count_drop`]: the live receivers' ceiling, `XDP_DROP` with a counter.
//!
//! - [`edge_filter_v2`] and its variants: the v2 classifier
//!   (`edge_filter_ebpf::v2`) with and without per-entry stats, and with the
//!   folded LPM trie instead of the `/16` directory for IPv4 prefixes.
//! - [`one_load`]: the physical limit: the parser plus exactly one load
//!   from an array as large as the v2 structure, at a uniformly random
//!   index (the source address hashed).
//!
//! The entry maps the single lookups read, and the v2 maps, are the
//! declarations of `edge-filter-ebpf` (its library); `ef-bench` fills them
//! with what the agent's sync / the v2 compiler builds.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray, lpm_trie::Key},
    programs::XdpContext,
};
use edge_filter_common::{
    PortKeyV4, PortKeyV6, SIDE_SRC,
    v2::{BPF_F_MMAPABLE, Line, hash32},
};
use edge_filter_ebpf::{
    parse::{Parsed, parse},
    v1::{ADDR_V4, ADDR_V6, PORT_V4, PORT_V6, PREFIX_V4, PREFIX_V6},
    v2,
};

/// One source the rewriter writes into the frame (layout shared with
/// `tests/src/bench/mod.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    /// Source address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// Source port, network byte order.
    pub port: [u8; 2],
    /// Padding to the 8-byte multiple the kernel stores array elements at
    /// (the table is written through an mmap).
    pub _pad: [u8; 6],
}

/// Where and what the rewriter writes (layout shared with userspace).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rewrite {
    /// First slot of the current table in `SLOTS`.
    pub base: u32,
    /// Table length minus one (a power of two).
    pub mask: u32,
    /// Offset of the source address in the frame.
    pub addr_off: u32,
    /// 4 (IPv4) or 16 (IPv6).
    pub addr_len: u32,
    /// Offset of the source port, 0 for none.
    pub port_off: u32,
    /// Offset of the IPv4 header ([`generate`] rewrites its checksum), 0 for none.
    pub csum_off: u32,
}

/// Tables of sources, one region per benchmark case; mmapable, so a case's
/// table (up to 2^21 sources) is written with one copy.
#[map]
static SLOTS: Array<Slot> = Array::with_max_entries(1 << 21, BPF_F_MMAPABLE);
#[map]
static REWRITE: Array<Rewrite> = Array::with_max_entries(1, 0);
/// Per-CPU run counter: which slot the next run takes.
#[map]
static SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// The measured program [`rewrite`] hands each frame to.
#[map]
static JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// Frames [`count_drop`] dropped.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Every frame offset is masked with this, so the verifier knows its bounds
/// on the very register it adds to the packet pointer (a comparison may be
/// rewritten by the compiler into one the verifier cannot use).
const OFF_MASK: u32 = 0xff;

/// Write the next slot's source into the frame; `false` if it does not fit.
#[inline(always)]
fn rewrite_frame(ctx: &XdpContext) -> bool {
    let Some(rw) = REWRITE.get(0) else {
        return false;
    };
    let Some(seq) = SEQ.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, XDP runs with preemption disabled.
    let i = unsafe {
        let v = *seq;
        *seq = v.wrapping_add(1);
        v
    };
    let Some(slot) = SLOTS.get(rw.base.wrapping_add(i & rw.mask)) else {
        return false;
    };
    let start = ctx.data();
    let end = ctx.data_end();
    let off = (rw.addr_off & OFF_MASK) as usize;
    if rw.addr_len == 16 {
        if start + off + 16 > end {
            return false;
        }
        // SAFETY: bounds checked against data_end just above.
        unsafe { core::ptr::write_unaligned((start + off) as *mut [u8; 16], slot.addr) };
    } else {
        if start + off + 4 > end {
            return false;
        }
        let a = [slot.addr[0], slot.addr[1], slot.addr[2], slot.addr[3]];
        // SAFETY: bounds checked against data_end just above.
        unsafe { core::ptr::write_unaligned((start + off) as *mut [u8; 4], a) };
    }
    if rw.port_off != 0 {
        let poff = (rw.port_off & OFF_MASK) as usize;
        if start + poff + 2 <= end {
            // SAFETY: bounds checked against data_end just above.
            unsafe { core::ptr::write_unaligned((start + poff) as *mut [u8; 2], slot.port) };
        }
    }
    true
}

/// Recompute the IPv4 header checksum at `REWRITE.csum_off` (no options).
#[inline(always)]
fn fix_ipv4_checksum(ctx: &XdpContext) {
    let Some(rw) = REWRITE.get(0) else {
        return;
    };
    if rw.csum_off == 0 {
        return;
    }
    let off = (rw.csum_off & OFF_MASK) as usize;
    let start = ctx.data();
    if start + off + 20 > ctx.data_end() {
        return;
    }
    // SAFETY: bounds checked against data_end just above.
    let mut h: [u8; 20] = unsafe { core::ptr::read_unaligned((start + off) as *const [u8; 20]) };
    h[10] = 0;
    h[11] = 0;
    let mut sum: u32 = 0;
    for w in 0..10 {
        sum += u16::from_be_bytes([h[2 * w], h[2 * w + 1]]) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let c = !(sum as u16);
    // SAFETY: within the 20 bytes checked above.
    unsafe { core::ptr::write_unaligned((start + off + 10) as *mut [u8; 2], c.to_be_bytes()) };
}

/// The harness: rewrite the source, then run the measured program.
#[xdp]
pub fn rewrite(ctx: XdpContext) -> u32 {
    if !rewrite_frame(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a tail call either jumps (never returns) or fails; both fine.
    unsafe { JUMP.tail_call(&ctx, 0) };
    // No program in JUMP[0]: the harness alone.
    xdp_action::XDP_DROP
}

/// Live traffic generator: rewrite the source, fix the checksum, send.
#[xdp]
pub fn generate(ctx: XdpContext) -> u32 {
    if !rewrite_frame(&ctx) {
        return xdp_action::XDP_ABORTED;
    }
    fix_ipv4_checksum(&ctx);
    xdp_action::XDP_TX
}

/// The v2 classifier with per-entry stats (`/16` directory for IPv4 prefixes).
#[xdp]
pub fn edge_filter_v2(ctx: XdpContext) -> u32 {
    edge_filter_ebpf::v2::run::<{ v2::STATS_EXACT }, false>(&ctx)
}

/// [`edge_filter_v2`] without per-entry stats (prices them).
#[xdp]
pub fn edge_filter_v2_nostats(ctx: XdpContext) -> u32 {
    edge_filter_ebpf::v2::run::<{ v2::STATS_NONE }, false>(&ctx)
}

/// [`edge_filter_v2`] with the folded LPM trie for IPv4 prefixes (the
/// other candidate of `docs/datapath-v2.md`).
#[xdp]
pub fn edge_filter_v2_trie(ctx: XdpContext) -> u32 {
    edge_filter_ebpf::v2::run::<{ v2::STATS_EXACT }, true>(&ctx)
}

/// The array [`one_load`] reads: as many lines as the v2 structure it
/// stands for (set by the loader).
#[map]
static ONE_LOAD: Array<Line> = Array::with_max_entries(1, 0);
/// Lines of [`ONE_LOAD`] minus one (a power of two minus one), slot 0.
#[map]
static ONE_LOAD_MASK: Array<u32> = Array::with_max_entries(1, 0);

/// The physical limit of a lookup: parse, then exactly one load from
/// [`ONE_LOAD`] at a uniformly random line (the source address hashed).
#[xdp]
pub fn one_load(ctx: XdpContext) -> u32 {
    let (key, salt) = match parse(&ctx) {
        Parsed::V4 { src, .. } => (u32::from_be_bytes(src), 0),
        Parsed::V6 { src, .. } => (
            u32::from_be_bytes([src[12], src[13], src[14], src[15]]),
            u32::from_be_bytes([src[8], src[9], src[10], src[11]]),
        ),
        _ => return xdp_action::XDP_PASS,
    };
    let mask = ONE_LOAD_MASK.get(0).copied().unwrap_or(0);
    match ONE_LOAD.get(hash32(key ^ salt, 0x5eed) & mask) {
        // SAFETY: a reference is valid for reads.
        Some(l) => verdict(unsafe { core::ptr::read_volatile(&l[0]) } == 0xa5),
        None => xdp_action::XDP_PASS,
    }
}

/// The cheapest XDP program.
#[xdp]
pub fn bare_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// `XDP_DROP` with a per-CPU counter (the live receivers' ceiling).
#[xdp]
pub fn count_drop(_ctx: XdpContext) -> u32 {
    if let Some(c) = DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, XDP runs with preemption disabled.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

/// Edge-filter's parser and nothing else. The verdict depends on what was
/// parsed so the compiler cannot drop the parse.
#[xdp]
pub fn parse_only(ctx: XdpContext) -> u32 {
    let x = match parse(&ctx) {
        Parsed::V4 { src, ports, .. } => {
            src[0] ^ src[3] ^ ports.map_or(0, |p| p.sport[1] ^ p.dport[1])
        }
        Parsed::V6 { src, ports, .. } => {
            src[0] ^ src[15] ^ ports.map_or(0, |p| p.sport[1] ^ p.dport[1])
        }
        _ => return xdp_action::XDP_PASS,
    };
    verdict(x == 0xa5)
}

#[inline(always)]
fn verdict(hit: bool) -> u32 {
    if hit {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Parse + one lookup in `ADDR_V4`.
#[xdp]
pub fn lookup_addr_v4(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        // SAFETY: read-only use of the value.
        Parsed::V4 { src, .. } => verdict(unsafe { ADDR_V4.get(src) }.is_some()),
        _ => xdp_action::XDP_PASS,
    }
}

/// Parse + one lookup in `PREFIX_V4`.
#[xdp]
pub fn lookup_prefix_v4(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        Parsed::V4 { src, .. } => verdict(PREFIX_V4.get(Key::new(32, src)).is_some()),
        _ => xdp_action::XDP_PASS,
    }
}

/// Parse + one lookup in `PORT_V4` (source side).
#[xdp]
pub fn lookup_port_v4(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        Parsed::V4 {
            src,
            ports: Some(p),
            ..
        } => {
            let k = PortKeyV4 {
                addr: src,
                proto: p.proto,
                side: SIDE_SRC,
                port: p.sport,
            };
            // SAFETY: read-only use of the value.
            verdict(unsafe { PORT_V4.get(k) }.is_some())
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// Parse + one lookup in `ADDR_V6`.
#[xdp]
pub fn lookup_addr_v6(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        // SAFETY: read-only use of the value.
        Parsed::V6 { src, .. } => verdict(unsafe { ADDR_V6.get(src) }.is_some()),
        _ => xdp_action::XDP_PASS,
    }
}

/// Parse + one lookup in `PREFIX_V6`.
#[xdp]
pub fn lookup_prefix_v6(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        Parsed::V6 { src, .. } => verdict(PREFIX_V6.get(Key::new(128, src)).is_some()),
        _ => xdp_action::XDP_PASS,
    }
}

/// Parse + one lookup in `PORT_V6` (source side).
#[xdp]
pub fn lookup_port_v6(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        Parsed::V6 {
            src,
            ports: Some(p),
            ..
        } => {
            let k = PortKeyV6 {
                addr: src,
                proto: p.proto,
                side: SIDE_SRC,
                port: p.sport,
            };
            // SAFETY: read-only use of the value.
            verdict(unsafe { PORT_V6.get(k) }.is_some())
        }
        _ => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The v1 program (hash maps and LPM tries; the production program before
/// datapath v2): the "before" of the before/after report.
#[xdp]
pub fn edge_filter_v1(ctx: XdpContext) -> u32 {
    edge_filter_ebpf::v1::run::<true>(&ctx)
}

/// [`edge_filter_v1`] without per-entry stats (prices them).
#[xdp]
pub fn edge_filter_v1_nostats(ctx: XdpContext) -> u32 {
    edge_filter_ebpf::v1::run::<false>(&ctx)
}
