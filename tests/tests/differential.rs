//! Differential test: the real XDP program (through BPF_PROG_TEST_RUN) and
//! the plain-Rust reference classifier must agree on the verdict and reason
//! of every packet of every corpus, under every entry set.
//!
//! Needs root (loading BPF programs); prints "skipping" otherwise.

use std::collections::{BTreeMap, HashMap};

use edge_filter::entry::EntrySet;
use edge_filter::kernel::classifier::{KernelClassifier, MAX_FRAME, MIN_FRAME};
use edge_filter::kernel::maps::SlotKey;
use edge_filter::kernel::program::Capacities;
use edge_filter::reference::Reference;
use edge_filter_common as abi;
use edge_filter_tests::corpus::{
    Packet, entry_sets, generated_corpus, pcap_corpus, random_seed, shared_data_dir,
};
use edge_filter_tests::differential::{MATCH_REASONS, compare, keys_by_id};
use edge_filter_tests::netns::is_root;

const FIXED_SEED: u64 = 0x00ed_9ef1_17e7;

/// One disagreement, described well enough to reproduce it.
struct Mismatch {
    set: String,
    malformed_drop: bool,
    packet: String,
    what: String,
    hex: String,
}

fn hex(data: &[u8]) -> String {
    data.iter().take(96).map(|b| format!("{b:02x}")).collect()
}

#[test]
fn kernel_agrees_with_reference_on_every_packet() {
    if !is_root() {
        eprintln!("skipping: needs root to load the XDP program");
        return;
    }
    let fresh_seed = random_seed();
    let mut corpora: Vec<(String, Vec<Packet>)> = Vec::new();
    match shared_data_dir() {
        Some(dir) => {
            let pc = pcap_corpus(&dir);
            println!(
                "pcap corpus: {} packets from {} files ({} files or tails skipped)",
                pc.packets.len(),
                pc.files_read,
                pc.files_skipped.len()
            );
            for (f, why) in &pc.files_skipped {
                println!("  skipped {f}: {why}");
            }
            assert!(
                pc.packets.len() > 40_000,
                "expected the shared captures to hold > 40,000 Ethernet packets, read {}",
                pc.packets.len()
            );
            corpora.push(("pcap".into(), pc.packets));
        }
        None => println!("skipping the pcap corpus: ../shared/data not present"),
    }
    corpora.push((
        format!("generated(seed={FIXED_SEED:#x})"),
        generated_corpus(FIXED_SEED),
    ));
    corpora.push((
        format!("generated(seed={fresh_seed:#x}, fresh)"),
        generated_corpus(fresh_seed),
    ));
    let all: Vec<Packet> = corpora
        .iter()
        .flat_map(|(_, p)| p.iter().cloned())
        .collect();
    let sets: Vec<(String, EntrySet)> = entry_sets(&all);

    let mut kernel =
        KernelClassifier::new(&Capacities::small()).unwrap_or_else(|e| panic!("loading: {e}"));
    let mut mismatches: Vec<Mismatch> = Vec::new();
    let mut checked = 0usize;
    let mut untestable = 0usize;
    let mut truncated = 0usize;
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for (set_name, set) in &sets {
        // The malformed-drop setting only changes malformed verdicts: run it
        // on two sets, not all.
        let settings: &[bool] = if set_name == "none" || set_name == "all" {
            &[false, true]
        } else {
            &[false]
        };
        for &md in settings {
            kernel
                .set_entries(set, md)
                .unwrap_or_else(|e| panic!("loading entry set {set_name}: {e}"));
            assert_eq!(
                kernel.last_sync.refused, 0,
                "entry set {set_name} did not fit: {:?}",
                kernel.last_sync.refusals
            );
            let reference = Reference::new(set);
            let ids = keys_by_id(&kernel).unwrap_or_else(|e| panic!("reading maps: {e}"));
            let before = kernel.maps().counters().expect("counters");
            let mut expected = vec![(0u64, 0u64); abi::REASON_COUNT as usize];
            // Per-entry counters: every verdict an entry (or allowlist net)
            // decided moves exactly that entry's counter; nothing else
            // moves any. Ids beyond the capacity move the overflow slot.
            let cap = kernel.maps().entry_stats_capacity();
            let stats_before = kernel.maps().entry_stats().expect("entry stats");
            let overflow_before = kernel.maps().stats_overflow().expect("overflow");
            let mut expected_hits: HashMap<u32, (u64, u64)> = HashMap::new();
            for p in corpora.iter().flat_map(|(_, p)| p) {
                if p.data.len() < MIN_FRAME {
                    // BPF_PROG_TEST_RUN refuses frames shorter than an
                    // Ethernet header; no NIC delivers them either.
                    untestable += 1;
                    continue;
                }
                // XDP without frags sees only the linear part of a frame.
                let frame = &p.data[..p.data.len().min(MAX_FRAME)];
                if frame.len() < p.data.len() {
                    truncated += 1;
                }
                let k = kernel
                    .classify(frame)
                    .unwrap_or_else(|e| panic!("test run of {}: {e}", p.name));
                let r = reference.classify(frame, md);
                checked += 1;
                *by_reason
                    .entry(edge_filter::kernel::counters::reason_name(r.reason))
                    .or_default() += 1;
                expected[r.reason as usize].0 += 1;
                expected[r.reason as usize].1 += frame.len() as u64;
                let decided_by_entry = matches!(
                    abi::ReasonInfo::decode(r.reason),
                    Some(abi::ReasonInfo::Entry { .. } | abi::ReasonInfo::Allowlisted)
                );
                if k.reason == r.reason {
                    if decided_by_entry {
                        let h = expected_hits.entry(k.entry_id).or_default();
                        h.0 += 1;
                        h.1 += frame.len() as u64;
                        if r.reason == abi::REASON_PASS_ALLOWLIST {
                            let ok = matches!(
                                (ids.get(&k.entry_id), r.info.as_ref()),
                                (Some(SlotKey::Allow(net)), Some(info)) if net.contains(&info.src)
                            );
                            if !ok {
                                mismatches.push(Mismatch {
                                    set: set_name.clone(),
                                    malformed_drop: md,
                                    packet: p.name.clone(),
                                    what: format!(
                                        "allowlisted by id {}, not an allowlist net containing the source",
                                        k.entry_id
                                    ),
                                    hex: hex(frame),
                                });
                            }
                        }
                    } else if k.entry_id != abi::NO_ENTRY {
                        mismatches.push(Mismatch {
                            set: set_name.clone(),
                            malformed_drop: md,
                            packet: p.name.clone(),
                            what: format!(
                                "no entry decides, but the kernel names id {}",
                                k.entry_id
                            ),
                            hex: hex(frame),
                        });
                    }
                }
                if let Some(what) = compare(&k, &r, &reference, &ids) {
                    mismatches.push(Mismatch {
                        set: set_name.clone(),
                        malformed_drop: md,
                        packet: p.name.clone(),
                        what,
                        hex: hex(frame),
                    });
                }
            }
            let stats_after = kernel.maps().entry_stats().expect("entry stats");
            let overflow_after = kernel.maps().stats_overflow().expect("overflow");
            let mut want_overflow = (0u64, 0u64);
            for (id, h) in &expected_hits {
                if *id >= cap {
                    want_overflow.0 += h.0;
                    want_overflow.1 += h.1;
                }
            }
            for (id, (a, b)) in stats_after.iter().zip(&stats_before).enumerate() {
                let got = (a.packets - b.packets, a.bytes - b.bytes);
                let want = expected_hits.get(&(id as u32)).copied().unwrap_or_default();
                assert_eq!(
                    got,
                    want,
                    "set {set_name} (malformed_drop={md}): entry id {id} ({:?}) counted {got:?} packets/bytes, expected {want:?}",
                    ids.get(&(id as u32))
                );
                if want.0 > 0 {
                    assert!(
                        a.last_jiffies != 0 && a.last_jiffies >= b.last_jiffies,
                        "entry id {id}: no last hit recorded"
                    );
                }
            }
            assert_eq!(
                (
                    overflow_after.packets - overflow_before.packets,
                    overflow_after.bytes - overflow_before.bytes
                ),
                want_overflow,
                "set {set_name}: overflow counter"
            );
            // The per-reason counters must have moved by exactly what the
            // reference expects.
            let after = kernel.maps().counters().expect("counters");
            for (i, (pk, by)) in expected.iter().enumerate() {
                let dp = after[i].packets - before[i].packets;
                let db = after[i].bytes - before[i].bytes;
                assert_eq!(
                    (dp, db),
                    (*pk, *by),
                    "set {set_name} (malformed_drop={md}): counter {} moved by {dp} packets/{db} bytes, expected {pk}/{by}",
                    edge_filter::kernel::counters::reason_name(i as u32)
                );
            }
        }
    }
    println!(
        "differential: {checked} packet verdicts checked over {} entry-set runs ({} distinct packets; fixed seed {FIXED_SEED:#x}, fresh seed {fresh_seed:#x}); {} disagreements",
        sets.len() + 2,
        all.len(),
        mismatches.len()
    );
    println!(
        "  {untestable} frame runs shorter than 14 bytes not runnable in the kernel; {truncated} frame runs longer than {MAX_FRAME} bytes cut to the linear part"
    );
    for (r, n) in &by_reason {
        println!("  {r}: {n}");
    }
    if !mismatches.is_empty() {
        for m in mismatches.iter().take(25) {
            eprintln!(
                "MISMATCH set={} malformed_drop={} packet={}: {}\n  frame: {}",
                m.set, m.malformed_drop, m.packet, m.what, m.hex
            );
        }
        panic!(
            "{} disagreements between the kernel and the reference (first 25 above); fresh seed was {fresh_seed:#x} (rerun with EDGE_FILTER_SEED={fresh_seed:#x})",
            mismatches.len()
        );
    }
    // Every reason class the corpus can reach must have been reached, so the
    // test cannot pass by never exercising a path.
    for must in MATCH_REASONS {
        assert!(
            by_reason.get(must).copied().unwrap_or(0) > 0,
            "no packet was classified {must}: the corpus or the entry sets lost coverage"
        );
    }
    for class in abi::MalformedClass::ALL {
        for d in ["pass", "drop"] {
            let name = format!("malformed_{d}_{}", class.name());
            assert!(
                by_reason.get(&name).copied().unwrap_or(0) > 0,
                "no packet was classified {name}: the generated corpus lost coverage"
            );
        }
    }
}
