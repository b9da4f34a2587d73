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
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    #[test]
    fn pcap_corpus_reads_everything_and_survives_broken_files() {
        let Some(dir) = shared_data_dir() else {
            eprintln!("skipping: shared test data not found (set {SHARED_DATA_ENV})");
            return;
        };
        let corpus = pcap_corpus(&dir);
        eprintln!(
            "pcap corpus: {} packets from {} files; {} non-Ethernet pcapng packets left out",
            corpus.packets.len(),
            corpus.files_read,
            corpus.non_ethernet_packets
        );
        for (file, reason) in &corpus.files_skipped {
            eprintln!("  skipped {file}: {reason}");
        }
        assert!(
            corpus.packets.len() > 40_000,
            "only {} packets",
            corpus.packets.len()
        );
        assert!(
            corpus.files_read > 80,
            "only {} files read",
            corpus.files_read
        );
        // Non-Ethernet captures are reported, not read.
        let skipped: BTreeMap<&str, &str> = corpus
            .files_skipped
            .iter()
            .map(|(f, r)| (f.as_str(), r.as_str()))
            .collect();
        for f in ["tcpdump/LINKTYPE_IPV6.pcap", "pcapplusplus/sll2.pcap"] {
            assert!(
                skipped.get(f).is_some_and(|r| r.contains("not Ethernet")),
                "{f} not reported as non-Ethernet: {skipped:?}"
            );
        }
        // The file cut mid-record keeps what came before the cut.
        let cut = "suricata-verify/bug-6875-01__fuzz.pcap";
        assert!(skipped.contains_key(cut), "{cut} not reported");
        assert!(
            corpus
                .packets
                .iter()
                .any(|p| p.name.starts_with(&format!("pcap:{cut}#"))),
            "no packet kept from {cut}"
        );
        // Byte orders, nanosecond resolution and pcapng are all read.
        for f in [
            "pcapplusplus/nanosecs_big_endian.pcap",
            "tcpdump/isup.pcap",
            "tcpdump/nhrp.pcapng",
            "pcapplusplus/ipv4-malformed.pcap",
        ] {
            let n = corpus
                .packets
                .iter()
                .filter(|p| p.name.starts_with(&format!("pcap:{f}#")))
                .count();
            assert!(n > 0, "no packets from {f}");
        }
        // Names are unique.
        let names: HashSet<&str> = corpus.packets.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), corpus.packets.len());
    }

    #[test]
    fn pcap_corpus_of_a_missing_directory_is_empty() {
        let corpus = pcap_corpus("/nonexistent/edge-filter-corpus");
        assert!(corpus.packets.is_empty());
        assert_eq!(corpus.files_read, 0);
    }

    #[test]
    fn pcap_corpus_reports_broken_files_without_panicking() {
        // Synthetic damage on top of the shared captures: empty file, bad
        // magic, a record cut short, a pcapng cut inside a block.
        let dir = std::env::temp_dir().join(format!("edge-filter-corpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut pcap = Vec::new();
        pcap.extend_from_slice(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0]);
        pcap.extend_from_slice(&[0; 8]);
        // snaplen 64 < orig_len 1500: fine for libpcap, rejected by the
        // validating pcap-file reader.
        pcap.extend_from_slice(&64u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        for len in [60u32, 14] {
            pcap.extend_from_slice(&[0; 8]);
            pcap.extend_from_slice(&len.to_le_bytes());
            pcap.extend_from_slice(&1500u32.to_le_bytes());
            pcap.extend(std::iter::repeat_n(0xab, len as usize));
        }
        let full = pcap.clone();
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&100u32.to_le_bytes());
        pcap.extend_from_slice(&100u32.to_le_bytes());
        pcap.extend_from_slice(&[1, 2, 3]);
        std::fs::write(dir.join("a-good.pcap"), &full).unwrap();
        std::fs::write(dir.join("b-cut.pcap"), &pcap).unwrap();
        std::fs::write(dir.join("c-empty.pcap"), b"").unwrap();
        std::fs::write(dir.join("d-junk.pcap"), b"not a capture at all").unwrap();
        std::fs::write(
            dir.join("e-cut.pcapng"),
            [0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d],
        )
        .unwrap();
        let corpus = pcap_corpus(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let names: Vec<&str> = corpus.packets.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "pcap:a-good.pcap#1",
                "pcap:a-good.pcap#2",
                "pcap:b-cut.pcap#1",
                "pcap:b-cut.pcap#2"
            ]
        );
        assert_eq!(corpus.packets[1].data.len(), 14);
        let skipped: Vec<&str> = corpus
            .files_skipped
            .iter()
            .map(|(f, _)| f.as_str())
            .collect();
        assert_eq!(
            skipped,
            ["b-cut.pcap", "c-empty.pcap", "d-junk.pcap", "e-cut.pcapng"]
        );
    }

    #[test]
    fn pcapng_takes_only_ethernet_interfaces_per_section() {
        use std::borrow::Cow;
        use std::time::Duration;

        use pcap_file::pcapng::PcapNgWriter;
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
        use pcap_file::{DataLink, Endianness};

        let idb = |linktype| InterfaceDescriptionBlock {
            linktype,
            snaplen: 0,
            options: vec![],
        };
        let epb = |interface_id: u32, byte: u8| EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::ZERO,
            original_len: 60,
            data: Cow::Owned(vec![byte; 60]),
            options: vec![],
        };
        // Section 1 (little endian): Ethernet, raw IP. Section 2 (big
        // endian): raw IP, Ethernet: interface ids restart per section.
        let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
        w.write_pcapng_block(idb(DataLink::ETHERNET)).unwrap();
        w.write_pcapng_block(idb(DataLink::RAW)).unwrap();
        w.write_pcapng_block(epb(0, 1)).unwrap();
        w.write_pcapng_block(epb(1, 2)).unwrap();
        w.write_pcapng_block(epb(0, 3)).unwrap();
        let mut file = w.into_inner();
        let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Big).unwrap();
        w.write_pcapng_block(idb(DataLink::RAW)).unwrap();
        w.write_pcapng_block(idb(DataLink::ETHERNET)).unwrap();
        w.write_pcapng_block(epb(0, 4)).unwrap();
        w.write_pcapng_block(epb(1, 5)).unwrap();
        file.extend(w.into_inner());

        let dir = std::env::temp_dir().join(format!("edge-filter-pcapng-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mixed.pcapng"), &file).unwrap();
        let corpus = pcap_corpus(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let got: Vec<(&str, u8)> = corpus
            .packets
            .iter()
            .map(|p| (p.name.as_str(), p.data[0]))
            .collect();
        assert_eq!(
            got,
            [
                ("pcap:mixed.pcapng#1", 1),
                ("pcap:mixed.pcapng#3", 3),
                ("pcap:mixed.pcapng#5", 5)
            ],
            "skipped: {:?}",
            corpus.files_skipped
        );
        assert_eq!(corpus.non_ethernet_packets, 2);
        assert_eq!(corpus.files_read, 1);
        assert!(corpus.files_skipped.is_empty());
    }

    #[test]
    fn generated_corpus_truncates_every_stack() {
        let corpus = generated_corpus_with(1, 0);
        let names: HashSet<&str> = corpus.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), corpus.len(), "duplicate names");
        for stack in stack_names() {
            let full = corpus
                .iter()
                .find(|p| p.name == format!("gen:{stack}/full"))
                .unwrap_or_else(|| panic!("no full packet of {stack}"));
            let truncs: Vec<&Packet> = corpus
                .iter()
                .filter(|p| p.name.starts_with(&format!("gen:{stack}/trunc@")))
                .collect();
            // Every prefix from 0 bytes through (at least) the Ethernet header.
            assert!(
                truncs.len() >= 15,
                "{stack}: only {} truncations",
                truncs.len()
            );
            for (n, p) in truncs.iter().enumerate() {
                assert_eq!(p.name, format!("gen:{stack}/trunc@{n}"));
                assert_eq!(p.data[..], full.data[..n], "{}", p.name);
            }
        }
        // The stacks the brief asks for are there.
        let stacks = stack_names();
        for wanted in [
            "ipv4+tcp",
            "ipv4+udp",
            "ipv4+icmp",
            "ipv4-ihl6+tcp",
            "ipv4-ihl15+udp",
            "vlan+ipv4+tcp",
            "svlan+vlan+ipv4+udp",
            "vlan+vlan+ipv4+tcp",
            "vlan+vlan+vlan+ipv4+udp",
            "ipv6+tcp",
            "ipv6+udp",
            "ipv6-hbh+udp",
            "ipv6-rt+udp",
            "ipv6-frag+udp",
            "ipv6-frag-nonfirst+udp",
            "ipv6-dst+udp",
            "ipv6-ah+udp",
            "ipv6-hbh-dst-rt-frag-ah-dst+tcp",
            "ipv6-hbh-dst-rt-dst-frag-ah-dst+udp",
            "ipv4-frag+udp",
            "ipv4-frag-nonfirst+udp",
            "ipv6+udp@ethertype0800",
            "ipv4+tcp@ethertype86dd",
            "arp",
        ] {
            assert!(stacks.iter().any(|s| s == wanted), "missing stack {wanted}");
        }
    }

    #[test]
    fn generated_frames_fit_test_run() {
        let corpus = generated_corpus(0xfeed);
        assert!(corpus.len() > RANDOM_PACKETS);
        let too_big: Vec<&str> = corpus
            .iter()
            .filter(|p| !p.fits_test_run())
            .map(|p| p.name.as_str())
            .collect();
        assert!(
            too_big.is_empty(),
            "frames over {MAX_FRAME} bytes: {too_big:?}"
        );
    }

    #[test]
    fn generated_corpus_is_deterministic() {
        let a = generated_corpus_with(42, 3000);
        let b = generated_corpus_with(42, 3000);
        assert_eq!(a, b);
        let c = generated_corpus_with(43, 3000);
        assert_ne!(a, c);
        // The fixed part does not depend on the seed.
        let fixed = generated_corpus_with(42, 0).len();
        assert_eq!(a[..fixed], c[..fixed]);
    }

    #[test]
    fn generated_corpus_exercises_every_class_and_path() {
        use edge_filter::reference::{Parsed, parse};
        use edge_filter_common::MalformedClass;
        let corpus = generated_corpus(7);
        let mut classes = BTreeMap::new();
        let (mut non_ip, mut with_ports, mut without_ports, mut nonfirst) = (0, 0, 0, 0);
        let mut tags = [0usize; 3];
        for p in &corpus {
            match parse(&p.data) {
                Parsed::NonIp { .. } => non_ip += 1,
                Parsed::Malformed(c) => *classes.entry(c).or_insert(0usize) += 1,
                Parsed::Ip(info) => {
                    tags[usize::from(info.vlan_tags)] += 1;
                    if info.ports.is_some() {
                        with_ports += 1;
                    } else {
                        without_ports += 1;
                    }
                    if info.non_first_fragment {
                        nonfirst += 1;
                    }
                }
            }
        }
        eprintln!(
            "generated: {} packets; non-IP {non_ip}, ports {with_ports}, no ports {without_ports}, \
             non-first fragments {nonfirst}, VLAN tags {tags:?}, malformed {classes:?}",
            corpus.len()
        );
        for class in MalformedClass::ALL {
            assert!(
                classes.get(&class).copied().unwrap_or(0) >= 20,
                "class {} barely exercised: {classes:?}",
                class.name()
            );
        }
        assert!(non_ip > 100 && with_ports > 1000 && without_ports > 1000 && nonfirst > 100);
        assert!(tags.iter().all(|&n| n > 100), "VLAN depths {tags:?}");
    }

    #[test]
    fn entry_sets_are_deterministic_and_hit() {
        use edge_filter::entry::Action;
        use edge_filter_common::EntryKind;
        let packets = generated_corpus_with(5, 2000);
        let a = entry_sets(&packets);
        let b = entry_sets(&packets);
        assert_eq!(a, b);
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "none",
                "addr",
                "prefix",
                "port",
                "overlap",
                "allow",
                "wide",
                "generated",
                "all",
                "bulk"
            ]
        );
        for (name, set) in &a {
            // Prefix lengths: >= /8 (v4) and >= /16 (v6), except `wide`.
            for e in &set.entries {
                let min = if e.net.addr().is_ipv4() { 8 } else { 16 };
                assert!(
                    name == "wide" || e.net.prefix_len() >= min,
                    "{name}: {e} is too wide"
                );
                assert_eq!(e.net, e.net.trunc(), "{name}: {e} not normalised");
            }
            for n in &set.allow {
                assert_eq!(*n, n.trunc(), "{name}: allow {n} not normalised");
            }
        }
        // Across the sets: every kind with both actions, both families.
        let all = &a.iter().find(|(n, _)| n == "all").unwrap().1;
        for kind in EntryKind::ALL {
            for action in [Action::Drop, Action::Monitor] {
                for v6 in [false, true] {
                    assert!(
                        all.entries.iter().any(|e| e.kind() == kind
                            && e.action == action
                            && e.net.addr().is_ipv6() == v6),
                        "no {} {} entry (v6: {v6})",
                        action.name(),
                        kind.name()
                    );
                }
            }
        }
        // Some entries hit the packets and some never do.
        use edge_filter::reference::{Parsed, parse};
        let infos: Vec<_> = packets
            .iter()
            .filter_map(|p| match parse(&p.data) {
                Parsed::Ip(info) => Some(info),
                _ => None,
            })
            .collect();
        let hit =
            |e: &edge_filter::entry::Entry| infos.iter().any(|i| e.matches(i.src, i.transport()));
        let hits = all.entries.iter().filter(|e| hit(e)).count();
        let misses = all.entries.len() - hits;
        eprintln!(
            "set all: {} entries, {hits} hit, {misses} never hit",
            all.entries.len()
        );
        assert!(hits > all.entries.len() / 3 && misses > 10);
        for kind in EntryKind::ALL {
            assert!(
                all.entries.iter().any(|e| e.kind() == kind && hit(e)),
                "no {} entry hits",
                kind.name()
            );
        }
    }

    #[test]
    fn generated_corpus_and_sets_reach_every_reason() {
        use edge_filter::reference::Reference;
        use edge_filter_common::{REASON_COUNT, ReasonInfo};
        let packets = generated_corpus_with(11, 5000);
        let sets = entry_sets(&packets);
        // (reason, is IPv6) -> packets.
        let mut seen = BTreeMap::new();
        for (_, set) in &sets {
            let reference = Reference::new(set);
            for p in &packets {
                for malformed_drop in [false, true] {
                    let v = reference.classify(&p.data, malformed_drop);
                    let v6 = v.info.is_some_and(|i| i.src.is_ipv6());
                    *seen.entry((v.reason, v6)).or_insert(0usize) += 1;
                }
            }
        }
        for reason in 0..REASON_COUNT {
            let info = ReasonInfo::decode(reason).unwrap();
            // Decisions on an address are wanted for both families.
            let families: &[bool] = match info {
                ReasonInfo::NoMatch | ReasonInfo::Allowlisted | ReasonInfo::Entry { .. } => {
                    &[false, true]
                }
                _ => &[false],
            };
            for &v6 in families {
                assert!(
                    seen.get(&(reason, v6)).copied().unwrap_or(0) > 0,
                    "reason {reason} ({info:?}, v6 {v6}) never reached"
                );
            }
        }
    }

    #[test]
    fn entry_sets_hit_the_captures() {
        let Some(dir) = shared_data_dir() else {
            eprintln!("skipping: shared test data not found (set {SHARED_DATA_ENV})");
            return;
        };
        let packets = pcap_corpus(&dir).packets;
        let sets = entry_sets(&packets);
        use edge_filter::reference::{Parsed, parse};
        // Distinct (source, transport) tuples: what entries can tell apart.
        let flows: std::collections::BTreeSet<_> = packets
            .iter()
            .filter_map(|p| match parse(&p.data) {
                Parsed::Ip(info) => Some((info.src, info.transport())),
                _ => None,
            })
            .collect();
        for (name, set) in &sets {
            let hits = set
                .entries
                .iter()
                .filter(|e| flows.iter().any(|(src, t)| e.matches(*src, *t)))
                .count();
            eprintln!(
                "{name}: {} entries, {} allow, {hits} hit",
                set.entries.len(),
                set.allow.len()
            );
            if name != "none" {
                assert!(hits > 0, "{name}: no entry hits the captures");
            }
        }
    }

    #[test]
    fn seeds_parse() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2A "), Some(42));
        assert_eq!(parse_seed("nope"), None);
    }
}
