//! The v2 datapath in the kernel (docs/datapath-v2.md): bench-ebpf's
//! `edge_filter_v2` and `edge_filter_v2_trie` programs under
//! BPF_PROG_TEST_RUN, their maps filled by the `layout` compiler through
//! `mmap`, against the reference classifier.
//!
//! - Every packet of the shared captures and the generated corpora under
//!   every named entry set (installed one after the other as update
//!   plans): the same reason, XDP action and *exactly* the deciding id the
//!   reference names, and per-entry counters that moved by exactly the
//!   hits; the maps read back equal the compiler's image and decode to the
//!   set and its ids.
//! - One thread classifies continuously while another applies 1,000
//!   random updates through `mmap` (with real grace periods): every
//!   verdict is one of the sets' verdicts between the last update finished
//!   before the run and the last started after it.
//!
//! Needs root; prints "skipping" otherwise.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter::kernel::layout::{
    Compiler, Counts, Geometry, Ids, LayoutError, assign_ids, canonical, counts, decode,
};
use edge_filter::reference::Reference;
use edge_filter_common::{self as abi, NO_ENTRY};
use edge_filter_tests::bench::v2kernel::{BenchSizes, LAYOUT_FLAGS, TestRunner, V2Maps, expected};
use edge_filter_tests::corpus::{
    Packet, entry_sets, generated_corpus, pcap_corpus, random_seed, shared_data_dir,
};
use edge_filter_tests::frames;
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FIXED_SEED: u64 = 0x00ed_9ef1_17e7;
const PROGRAMS: [&str; 2] = ["edge_filter_v2", "edge_filter_v2_trie"];
fn load(g: &Geometry) -> (TestRunner, V2Maps) {
    TestRunner::load(BenchSizes::of(g).expect("sizes"), &PROGRAMS)
}

/// A geometry every set fits, with the IPv4 tries for the trie program.
fn geometry_for(sets: &[(&EntrySet, &Ids)], seed: u64) -> Geometry {
    let mut c = Counts::default();
    for (s, ids) in sets {
        c = c.at_least(&counts(s, ids).unwrap());
    }
    let mut g = Geometry::for_counts(&c, 2.0, seed);
    g.trie4 = true;
    // Short prefix+port nets put a port list in every /16 they cover.
    g.heap_lines = g.heap_lines.max(1 << 16);
    g
}

#[test]
fn v2_kernel_agrees_with_reference_on_every_packet() {
    if !edge_filter_tests::netns::is_root() {
        eprintln!("skipping: needs root to load the XDP program");
        return;
    }
    let fresh_seed = random_seed();
    let mut all: Vec<Packet> = Vec::new();
    match shared_data_dir() {
        Some(dir) => {
            let pc = pcap_corpus(&dir);
            assert!(pc.packets.len() > 40_000, "shared captures too small");
            all.extend(pc.packets);
        }
        None => println!("skipping the pcap corpus: ../shared/data not present"),
    }
    all.extend(generated_corpus(FIXED_SEED));
    all.extend(generated_corpus(fresh_seed));
    let frames: Vec<(&str, &[u8])> = all
        .iter()
        .filter(|p| p.data.len() >= edge_filter::kernel::classifier::MIN_FRAME)
        .map(|p| {
            let n = p.data.len().min(edge_filter::kernel::classifier::MAX_FRAME);
            (p.name.as_str(), &p.data[..n])
        })
        .collect();
    let named = entry_sets(&all);
    // The sets are installed one after the other, ids kept per key.
    let mut chain: Vec<(String, EntrySet, Ids)> = Vec::new();
    let mut prev = Ids::default();
    for (name, set) in named {
        let ids = assign_ids(&set, &prev);
        prev = ids.clone();
        chain.push((name, set, ids));
    }
    let refs: Vec<(&EntrySet, &Ids)> = chain.iter().map(|(_, s, i)| (s, i)).collect();
    let mut g = geometry_for(&refs, fresh_seed);
    println!("v2 differential: fresh seed {fresh_seed:#x}");
    let (mut k, mut maps) = load(&g);
    let mut comp = Compiler::build(&chain[0].1, &chain[0].2, g).expect("compiling");
    let mut tiers = 1;
    maps.write_image(comp.tables()).unwrap();
    let mut checked = 0usize;
    let mut mismatches: Vec<String> = Vec::new();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut grace_count = 0;
    for (i, (name, set, ids)) in chain.iter().enumerate() {
        if i > 0 {
            match comp.update(set, ids) {
                Ok(plan) => grace_count += maps.apply(&plan).unwrap().grace_count,
                // Both buckets of a key full (rare at load 1/2): what the
                // agent does, a fresh instance of the next size up.
                Err(LayoutError::Full { what }) => {
                    println!("set {name}: {what} is full: next tier");
                    g.buckets4 *= 2;
                    g.buckets6 *= 2;
                    comp = Compiler::build(set, ids, g).expect("compiling the next tier");
                    (k, maps) = load(&g);
                    maps.write_image(comp.tables()).unwrap();
                    tiers += 1;
                }
                Err(e) => panic!("plan to {name}: {e}"),
            }
        }
        // The kernel holds what the compiler says, and it decodes.
        let mut read = maps.read().unwrap();
        // The agent's runtime flags are not the compiler's business.
        read.config.flags &= LAYOUT_FLAGS;
        let (a, b) = (canonical(&read), canonical(comp.tables()));
        if a != b {
            let t = comp.tables();
            panic!(
                "set {name}: the maps differ from the compiler's image: config {} sum4 {} sum6 {} records4 {} records6 {} dir4 {} trie {} catalog {} exact4 {} heap {} exact6 {} tries {}",
                read.config == t.config,
                a.sum4 == b.sum4,
                a.sum6 == b.sum6,
                a.records4 == b.records4,
                a.records6 == b.records6,
                a.dir4 == b.dir4,
                a.trie == b.trie,
                a.catalog == b.catalog,
                read.exact4 == t.exact4,
                read.heap == t.heap,
                read.exact6 == t.exact6,
                read.trie == t.trie,
            );
        }
        let (_, dids) = decode(&read).unwrap();
        assert_eq!(&dids, ids, "set {name}: decoded ids");
        let reference = Reference::new(set);
        let settings: &[bool] = if name == "none" || name == "all" {
            &[false, true]
        } else {
            &[false]
        };
        for &md in settings {
            let flags = abi::CONFIG_RECORD_LAST | if md { abi::CONFIG_MALFORMED_DROP } else { 0 };
            maps.set_runtime_flags(flags);
            let stats_before = stats_sum(&maps, g.ids);
            let mut hits: HashMap<u32, (u64, u64)> = HashMap::new();
            for (pname, frame) in &frames {
                let r = reference.classify(frame, md);
                let want = expected(&r, ids);
                *by_reason
                    .entry(edge_filter::kernel::counters::reason_name(r.reason))
                    .or_default() += 1;
                for prog in PROGRAMS {
                    let got = k.classify(prog, frame);
                    checked += 1;
                    if got != want {
                        mismatches.push(format!(
                            "set {name} md={md} {prog} {pname}: kernel (action, reason, id) {got:?}, reference {want:?}"
                        ));
                    }
                    if got.2 != NO_ENTRY {
                        let h = hits.entry(got.2).or_default();
                        h.0 += 1;
                        h.1 += frame.len() as u64;
                    }
                }
            }
            // Per-entry counters moved by exactly the verdicts' ids.
            let after = stats_sum(&maps, g.ids);
            for (id, (a, b)) in after.iter().zip(&stats_before).enumerate() {
                let got = (a.0 - b.0, a.1 - b.1);
                let want = hits.get(&(id as u32)).copied().unwrap_or_default();
                if got != want {
                    mismatches.push(format!(
                        "set {name} md={md}: per-entry counter of id {id} moved by {got:?}, the verdicts say {want:?}"
                    ));
                }
            }
        }
    }
    println!(
        "v2 differential: {checked} verdicts over {} sets ({} frames, fresh seed {fresh_seed:#x}, {grace_count} grace periods, {tiers} tiers); {} disagreements",
        chain.len(),
        frames.len(),
        mismatches.len()
    );
    for (r, n) in &by_reason {
        println!("  {r}: {n}");
    }
    for m in mismatches.iter().take(25) {
        eprintln!("MISMATCH {m}");
    }
    assert!(mismatches.is_empty(), "{} disagreements", mismatches.len());
    for must in [
        "pass_allowlist",
        "drop_addr",
        "drop_prefix",
        "drop_addr_port",
        "drop_prefix_port",
        "monitor_addr",
        "monitor_prefix",
        "monitor_addr_port",
        "monitor_prefix_port",
    ] {
        assert!(
            by_reason.get(must).copied().unwrap_or(0) > 0,
            "no packet was classified {must}"
        );
    }
}

/// Per id: packets and bytes summed over CPUs.
fn stats_sum(maps: &V2Maps, ids: u32) -> Vec<(u64, u64)> {
    maps.stats(ids)
}

// ------------------------------------------------------------ concurrency

/// A TCP or UDP frame from `src`, padded as a NIC delivers it.
fn frame(src: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    frames::padded(frames::l4_frame(src, proto, sport, dport, None))
}

const CPORTS: [u16; 3] = [53, 80, 4444];

fn caddr(rng: &mut StdRng) -> IpAddr {
    if rng.random_bool(0.5) {
        IpAddr::V4(Ipv4Addr::new(
            10,
            9,
            rng.random_range(0..4),
            rng.random_range(0..32),
        ))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            rng.random_range(0..2),
            0,
            0,
            0,
            0,
            rng.random_range(0..32),
        ))
    }
}

fn centry(rng: &mut StdRng) -> Entry {
    let a = caddr(rng);
    let lens: &[u8] = if a.is_ipv4() {
        &[8, 16, 22, 24, 28, 32, 32, 32, 32]
    } else {
        &[32, 48, 64, 120, 128, 128, 128]
    };
    let net = IpNet::new(a, lens[rng.random_range(0..lens.len())]).unwrap();
    let port = rng.random_bool(0.3).then(|| PortMatch {
        proto: if rng.random_bool(0.5) {
            Proto::Tcp
        } else {
            Proto::Udp
        },
        port: CPORTS[rng.random_range(0..CPORTS.len())],
        side: if rng.random_bool(0.5) {
            Side::Src
        } else {
            Side::Dst
        },
    });
    Entry::new(
        net,
        port,
        if rng.random_bool(0.6) {
            Action::Drop
        } else {
            Action::Monitor
        },
    )
}

#[test]
fn v2_updates_under_concurrent_readers() {
    if !edge_filter_tests::netns::is_root() {
        eprintln!("skipping: needs root to load the XDP program");
        return;
    }
    const UPDATES: usize = 1000;
    let seed = random_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // The sets: a base, then small random changes.
    let mut set = EntrySet::default();
    for _ in 0..150 {
        set.entries.push(centry(&mut rng));
    }
    let mut chain: Vec<(EntrySet, Ids)> = vec![(set.clone(), assign_ids(&set, &Ids::default()))];
    for _ in 0..UPDATES {
        let mut s = chain.last().unwrap().0.clone();
        for _ in 0..rng.random_range(1..5) {
            match rng.random_range(0..6) {
                0 | 1 if !s.entries.is_empty() => {
                    let i = rng.random_range(0..s.entries.len());
                    s.entries.swap_remove(i);
                }
                2 if !s.entries.is_empty() => {
                    let i = rng.random_range(0..s.entries.len());
                    let e = &mut s.entries[i];
                    e.action = if e.action == Action::Drop {
                        Action::Monitor
                    } else {
                        Action::Drop
                    };
                }
                3 => {
                    if s.allow.len() < 3 && rng.random_bool(0.5) {
                        let a = caddr(&mut rng);
                        let len = if a.is_ipv4() { 28 } else { 120 };
                        s.allow.push(IpNet::new(a, len).unwrap().trunc());
                    } else if !s.allow.is_empty() {
                        s.allow.pop();
                    }
                }
                _ => s.entries.push(centry(&mut rng)),
            }
        }
        let ids = assign_ids(&s, &chain.last().unwrap().1);
        chain.push((s, ids));
    }
    // Packets aimed at the changing entries, and every set's verdict on them.
    let packets: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let proto = if rng.random_bool(0.5) { 6 } else { 17 };
            frame(
                caddr(&mut rng),
                proto,
                CPORTS[rng.random_range(0..CPORTS.len())],
                CPORTS[rng.random_range(0..CPORTS.len())],
            )
        })
        .collect();
    let expect: Vec<Vec<(u32, u32, u32)>> = chain
        .iter()
        .map(|(s, ids)| {
            let r = Reference::new(s);
            packets
                .iter()
                .map(|f| expected(&r.classify(f, false), ids))
                .collect()
        })
        .collect();
    let refs: Vec<(&EntrySet, &Ids)> = chain.iter().map(|(s, i)| (s, i)).collect();
    let g = geometry_for(&refs, seed);
    let (mut k, mut maps) = load(&g);
    let mut comp = Compiler::build(&chain[0].0, &chain[0].1, g).unwrap();
    maps.write_image(comp.tables()).unwrap();
    maps.set_runtime_flags(abi::CONFIG_RECORD_LAST);

    let started = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (runs, during, bad, graces) = std::thread::scope(|s| {
        let writer = {
            let (started, done, stop) = (started.clone(), done.clone(), stop.clone());
            let chain = &chain;
            s.spawn(move || {
                let mut graces = 0;
                for (i, (set, ids)) in chain.iter().enumerate().skip(1) {
                    started.store(i, Ordering::SeqCst);
                    let plan = comp.update(set, ids).expect("plan");
                    graces += maps.apply(&plan).expect("applying a plan").grace_count;
                    done.store(i, Ordering::SeqCst);
                }
                stop.store(true, Ordering::SeqCst);
                graces
            })
        };
        let (mut runs, mut during, mut bad) = (0usize, 0usize, Vec::new());
        'outer: loop {
            for (p, f) in packets.iter().enumerate() {
                if stop.load(Ordering::SeqCst) {
                    break 'outer;
                }
                let d0 = done.load(Ordering::SeqCst);
                let got = k.classify(PROGRAMS[runs % 2], f);
                let s1 = started.load(Ordering::SeqCst);
                runs += 1;
                if s1 > d0 {
                    during += 1;
                }
                if !(d0..=s1).any(|i| expect[i][p] == got) && bad.len() < 20 {
                    bad.push(format!(
                        "packet {p} ({}) during updates {d0}..={s1}: kernel {got:?}, allowed {:?}",
                        PROGRAMS[(runs - 1) % 2],
                        (d0..=s1).map(|i| expect[i][p]).collect::<Vec<_>>()
                    ));
                }
            }
        }
        (runs, during, bad, writer.join().unwrap())
    });
    println!(
        "v2 concurrency: {runs} runs ({during} while an update was in progress) across {UPDATES} updates with {graces} grace periods (seed {seed:#x}); {} verdicts neither old nor new",
        bad.len()
    );
    for b in &bad {
        eprintln!("BAD {b}");
    }
    assert!(
        bad.is_empty(),
        "verdicts that are neither old nor new (seed {seed:#x})"
    );
    assert!(during > 1000, "too few runs overlapped an update: {during}");
}
