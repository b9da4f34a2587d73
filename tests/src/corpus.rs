//! The packet corpus of the differential tests: every frame the XDP program
//! and the reference classifier are compared on, plus the entry sets they
//! are compared under.
//!
//! Three sources of frames:
//! - [`pcap_corpus`]: the real captures under `../shared/data/pcaps` (every
//!   Ethernet packet of every readable file; broken files are reported, not
//!   fatal);
//! - [`generated_corpus`]: hand-built protocol stacks (VLAN/QinQ, IPv4
//!   options and fragments, IPv6 extension-header chains, ARP, mismatched IP
//!   versions), each truncated at every byte up to the end of its L4 header,
//!   plus seeded random header mutations;
//! - [`entry_sets`]: named [`EntrySet`](edge_filter::entry::EntrySet)s with
//!   hits and misses of every entry kind, sampled from the packets.
//!
//! Every packet carries a `name` saying where it came from, so a mismatch can
//! be reproduced: `pcap:<file>#<frame>` (1-based frame number, as Wireshark
//! numbers them), `gen:<stack>/<variant>` or
//! `gen:rand@<seed>#<index>/<stack>/<mutations>`.

use std::path::PathBuf;

mod entries;
mod generate;
mod pcap;

pub use entries::entry_sets;
pub use generate::{
    GEN_PORTS, GEN_V4_DESTS, GEN_V4_SOURCES, GEN_V6_DESTS, GEN_V6_SOURCES, RANDOM_PACKETS,
    generated_corpus, generated_corpus_with, stack_names,
};
pub use pcap::{PcapCorpus, pcap_corpus};

/// Largest frame [`generated_corpus`] produces. `BPF_PROG_TEST_RUN` copies
/// the frame into one linear buffer of about 3.5 KB (a page minus XDP
/// headroom and `skb_shared_info`); larger frames need XDP frags. The real
/// captures do contain larger frames (see [`Packet::fits_test_run`]).
pub const MAX_FRAME: usize = 3000;

/// One frame and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Origin, e.g. `pcap:tcpdump/foo.pcap#12` or `gen:ipv6-frag+udp/trunc@57`.
    pub name: String,
    /// The frame, starting at the Ethernet destination address.
    pub data: Vec<u8>,
}

impl Packet {
    /// Whether the frame is at most [`MAX_FRAME`] bytes (what a
    /// `BPF_PROG_TEST_RUN` without XDP frags accepts with margin).
    pub fn fits_test_run(&self) -> bool {
        self.data.len() <= MAX_FRAME
    }
}

/// Environment variable overriding the location of the shared test data.
pub const SHARED_DATA_ENV: &str = "EDGE_FILTER_SHARED_DATA";

/// Environment variable fixing the seed [`random_seed`] returns (to replay a
/// failing run).
pub const SEED_ENV: &str = "EDGE_FILTER_SEED";

/// The shared real-world test data (`<workspace>/../shared/data`, or
/// `$EDGE_FILTER_SHARED_DATA`), or `None` when it is absent: tests then print
/// that they skip.
pub fn shared_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(SHARED_DATA_ENV) {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    // CARGO_MANIFEST_DIR is <workspace>/tests.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    dir.is_dir().then_some(dir)
}

/// A fresh seed for the "new seed every run" part of the tests: from the OS
/// RNG, unless `$EDGE_FILTER_SEED` (decimal or `0x` hex) fixes it. Print it
/// so a failure can be replayed.
pub fn random_seed() -> u64 {
    if let Some(seed) = std::env::var(SEED_ENV).ok().and_then(|s| parse_seed(&s)) {
        return seed;
    }
    rand::random()
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests;
