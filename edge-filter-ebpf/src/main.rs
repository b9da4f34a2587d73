//! The edge-filter XDP program: datapath v2 (`docs/datapath-v2.md`).
//!
//! Parses Ethernet, up to two VLAN tags, IPv4 (options skipped) or IPv6
//! (up to six extension headers), then TCP/UDP ports, and decides by source
//! address, prefix and port as `docs/semantics.md` specifies, through the
//! v2 layout: a summary word for a miss, one bucket line for an exact
//! record, the `/16` directory (IPv4) or the folded trie (IPv6) for
//! prefixes ([`edge_filter_ebpf::v2`]). Every verdict is counted by reason
//! in `COUNTERS`, and every verdict an entry decided on that entry's id in
//! `V2_STATS` (unless built with the `no-entry-stats` feature, the
//! benchmark's baseline). Drop and monitor verdicts are sampled into the
//! `EVENTS` ring buffer only while `CONFIG_SAMPLE_EVENTS` is set. The
//! userspace reference classifier implements the same contract and the
//! differential tests compare the two on every packet of every corpus.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use edge_filter_ebpf::v2;

/// Per-entry counting of this build.
#[cfg(not(feature = "no-entry-stats"))]
const STATS: u8 = v2::STATS_EXACT;
#[cfg(feature = "no-entry-stats")]
const STATS: u8 = v2::STATS_NONE;

/// The XDP entry point: classify, count, record, return. IPv4 prefixes come
/// from the `/16` directory (the tries stay one-entry maps).
#[xdp]
pub fn edge_filter(ctx: XdpContext) -> u32 {
    v2::run::<STATS, false>(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
