//! The v2 sync engine (`edge_filter::kernel::v2sync`) against the kernel:
//! bench-ebpf's `edge_filter_v2` under BPF_PROG_TEST_RUN on maps the
//! engine fills, judged by the reference classifier.
//!
//! The named entry sets of the generated corpus are installed one after
//! the other, with a set of 20,000 more exact addresses in the middle that
//! does not fit the first tier: the engine must ask for a new tier, take
//! the new instance's maps with every kept id's counters carried over, and
//! keep every key's id. After each set every frame gets the reference's
//! reason, action and exact deciding id. Then the maps are pinned, opened
//! again and adopted: the catalog decodes to the set and ids the engine
//! holds, without drift; a catalog word changed behind its back is drift.
//!
//! Needs root; prints "skipping" otherwise.

use std::net::Ipv4Addr;

use aya::{
    maps::{Map, MapData},
    programs::Xdp,
};
use edge_filter::entry::{Action, Entry, EntrySet};
use edge_filter::kernel::layout::{Ids, Write, assign_ids};
use edge_filter::kernel::program::Capacities;
use edge_filter::kernel::v2sync::{Applied, SharedSet, Tier, V2Sync};
use edge_filter::reference::Reference;
use edge_filter_common::{self as abi};
use edge_filter_tests::bench::v2kernel::{
    BENCH_OBJECT, BenchSizes, Sizes, TestRunner, V2Maps, expected,
};
use edge_filter_tests::corpus::{entry_sets, generated_corpus, random_seed};
use edge_filter_tests::netns::PinRoot;
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const PROGRAM: &str = "edge_filter_v2";
fn load(sizes: Sizes) -> (TestRunner, V2Maps) {
    let (k, maps) = TestRunner::load(
        BenchSizes {
            v2: sizes,
            one_load_lines: 1,
        },
        &[PROGRAM],
    );
    maps.set_runtime_flags(abi::CONFIG_RECORD_LAST);
    (k, maps)
}

#[test]
fn v2_sync_engine_updates_grows_and_adopts() {
    if !edge_filter_tests::netns::is_root() {
        eprintln!("skipping: needs root to load the XDP program");
        return;
    }
    let seed = random_seed();
    let packets = generated_corpus(seed);
    let frames: Vec<&[u8]> = packets
        .iter()
        .filter(|p| p.data.len() >= edge_filter::kernel::classifier::MIN_FRAME)
        .map(|p| &p.data[..p.data.len().min(edge_filter::kernel::classifier::MAX_FRAME)])
        .collect();
    let named = entry_sets(&packets);
    // The chain: every named set, with a big one (the last named set plus
    // 20,000 exact addresses) in the middle.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut big = named.last().unwrap().1.clone();
    for _ in 0..20_000 {
        let a = Ipv4Addr::from(rng.random::<u32>() | 0x0100_0000);
        big.entries.push(Entry::new(
            IpNet::from(std::net::IpAddr::V4(a)),
            None,
            Action::Drop,
        ));
    }
    let mut chain: Vec<(String, EntrySet)> = named.clone();
    let mid = chain.len() / 2;
    chain.insert(mid, ("big".into(), big));

    let first = &chain[0].1;
    let tier = Tier::for_set(first, assign_ids(first, &Ids::default()), seed).unwrap();
    let (mut k, maps) = load(tier.sizes().unwrap());
    let mut sync = V2Sync::install(maps, tier, first, seed).unwrap();
    let mut tiers = 1;
    let mut checked = 0usize;
    let mut mismatches = Vec::new();
    for (name, set) in &chain {
        let prev = sync.ids().clone();
        let n = prev.values().max().map_or(0, |m| m + 1);
        let counters_before = sync.maps().stats(n);
        match sync.apply(set).unwrap() {
            // The compiler plans against the maps themselves: a plan
            // whose stores the maps did not then hold would drop it.
            Applied::Done(_) => assert!(sync.in_place(), "set {name}: updates stopped in place"),
            Applied::NewTier(t) => {
                let (k2, maps2) = load(t.sizes().unwrap());
                let _old = sync.replace(maps2, *t, set).unwrap();
                k = k2;
                tiers += 1;
                // Counters of kept ids carried over, exactly.
                let after = sync.maps().stats(n);
                for (key, id) in prev.iter() {
                    if sync.ids().get(&key) == Some(&id) {
                        assert_eq!(
                            after[id as usize], counters_before[id as usize],
                            "set {name}: counters of id {id} not carried to the new tier"
                        );
                    }
                }
            }
        }
        for (key, id) in sync.ids().iter() {
            if let Some(&p) = prev.get(&key) {
                assert_eq!(p, id, "set {name}: the id of {key:?} changed");
            }
        }
        let reference = Reference::new(set);
        for frame in &frames {
            let want = expected(&reference.classify(frame, false), sync.ids());
            let got = k.classify(PROGRAM, frame);
            checked += 1;
            if got != want {
                mismatches.push(format!(
                    "set {name}: kernel (action, reason, id) {got:?}, reference {want:?}"
                ));
            }
        }
    }
    println!(
        "v2 sync engine: {checked} verdicts over {} sets, {tiers} tiers (seed {seed:#x}); {} disagreements",
        chain.len(),
        mismatches.len()
    );
    for m in mismatches.iter().take(25) {
        eprintln!("MISMATCH {m}");
    }
    assert!(mismatches.is_empty(), "{} disagreements", mismatches.len());
    assert!(tiers >= 2, "the big set did not need a new tier");
    // Drift behind the engine's back shows although it keeps no copy of
    // the tables (a checksum of what the maps should hold).
    assert!(!sync.check_drift().unwrap(), "drift without a store");
    let (_, victim) = sync.ids().iter().next().expect("a key");
    let mut tampered = sync.maps().read().unwrap();
    let word = tampered.catalog[victim as usize];
    tampered.catalog[victim as usize] = 0;
    sync.tamper(&Write::Catalog {
        id: victim,
        value: 0,
    })
    .unwrap();
    assert_eq!(sync.maps().read().unwrap(), tampered, "the store landed");
    // Put back: the same bytes are no drift.
    sync.tamper(&Write::Catalog {
        id: victim,
        value: word,
    })
    .unwrap();
    assert!(
        !sync.check_drift().unwrap(),
        "the word put back is no drift"
    );
    sync.tamper(&Write::Catalog {
        id: victim,
        value: 0,
    })
    .unwrap();
    assert!(
        sync.check_drift().unwrap(),
        "a cleared catalog word went unnoticed"
    );
    assert!(!sync.in_place(), "a drifted engine kept planning in place");
    sync.tamper(&Write::Catalog {
        id: victim,
        value: word,
    })
    .unwrap();

    // Adoption through pins.
    let pins = PinRoot::new("v2sync");
    let dir = pins.path();
    let open = |name: &str| -> edge_filter::error::Result<Map> {
        let d = MapData::from_pin(dir.join(name)).unwrap();
        Ok(Map::from_map_data(d).unwrap())
    };
    sync.maps().pin(dir).unwrap();
    let (adopted, how) = V2Sync::adopt(V2Maps::from_fn(open).unwrap(), seed).unwrap();
    assert!(!how.drift, "freshly synced maps adopted with drift");
    // In place when the maps hold a fresh compile's bytes (after a chain
    // of updates the placement may differ), and then on the maps
    // themselves.
    assert_eq!(
        how.in_place,
        adopted.in_place(),
        "adopted in place: {how:?}"
    );
    assert_eq!(adopted.ids(), sync.ids(), "adopted ids");
    // Tamper with the catalog behind the engine's back: drift.
    let mut raw = V2Maps::from_fn(open).unwrap();
    let (_, victim) = sync.ids().iter().next().expect("a key");
    raw.store(&Write::Catalog {
        id: victim,
        value: 0,
    })
    .unwrap();
    let (_, how) = V2Sync::adopt(V2Maps::from_fn(open).unwrap(), seed).unwrap();
    assert!(how.drift, "a cleared catalog word went unnoticed");
    assert!(!how.in_place);
}

/// Maps adopted right after an install hold a fresh compile's bytes, so
/// the adopter updates them in place, planning against the maps
/// themselves (it keeps no copy of the tables): every later set lands
/// without a new tier and every frame gets the reference's verdict.
#[test]
fn adopted_maps_are_updated_in_place() {
    if !edge_filter_tests::netns::is_root() {
        eprintln!("skipping: needs root to load the XDP program");
        return;
    }
    let seed = random_seed();
    let packets = generated_corpus(seed);
    let frames: Vec<&[u8]> = packets
        .iter()
        .filter(|p| p.data.len() >= edge_filter::kernel::classifier::MIN_FRAME)
        .map(|p| &p.data[..p.data.len().min(edge_filter::kernel::classifier::MAX_FRAME)])
        .collect();
    let named = entry_sets(&packets);
    // One tier that every named set fits: sized for all of them at once.
    let mut all = EntrySet::default();
    for (_, s) in &named {
        all.allow.extend(s.allow.iter().copied());
        all.entries.extend(s.entries.iter().cloned());
    }
    // One entry a key (the engine's sets are normalised so).
    all.allow.sort();
    all.allow.dedup();
    all.entries.sort_by_key(|e| e.key());
    all.entries.dedup_by_key(|e| e.key());
    // Room for every transition, not only every set: going from "all" to
    // "bulk" touches nearly every key, so nothing moves to make room while
    // both sets' slots are held. With the agent's own headroom (2x) the
    // 3-slot IPv6 buckets then fill about one run in nine, and the agent
    // answers with a new tier, which this test rules out.
    let tier = Tier::for_set_with(&all, assign_ids(&all, &Ids::default()), seed, 8.0).unwrap();
    let (mut k, maps) = load(tier.sizes().unwrap());
    let sync = V2Sync::install(maps, tier, &all, seed).unwrap();
    let pins = PinRoot::new("v2adopt");
    let dir = pins.path();
    sync.maps().pin(dir).unwrap();
    let open = |name: &str| -> edge_filter::error::Result<Map> {
        let d = MapData::from_pin(dir.join(name)).unwrap();
        Ok(Map::from_map_data(d).unwrap())
    };
    let (mut adopted, how) = V2Sync::adopt(V2Maps::from_fn(open).unwrap(), seed).unwrap();
    drop(pins);
    assert!(!how.drift && how.in_place, "fresh maps adopted as {how:?}");
    assert!(adopted.in_place());
    // The engine holds a set its caller keeps rather than a copy: one
    // equal to its own, or the one offered to an apply (by address).
    let shared = |s: &EntrySet| -> SharedSet { Arc::new(s.clone()) };
    let same = |a: &EntrySet, b: &SharedSet| std::ptr::eq(a, (**b).as_ref());
    let mine = shared(adopted.set());
    let other = shared(&named[0].1);
    assert_ne!(
        (*other).as_ref(),
        adopted.set(),
        "the first set is not all sets"
    );
    assert!(!adopted.share(&other), "a different set was taken");
    assert!(
        adopted.share(&mine) && same(adopted.set(), &mine),
        "an equal set not shared"
    );
    let mut mismatches = Vec::new();
    for (name, set) in &named {
        let offer = shared(set);
        adopted.offer(offer.clone());
        match adopted.apply((*offer).as_ref()).unwrap() {
            Applied::Done(_) => assert!(adopted.in_place(), "set {name}: no longer in place"),
            Applied::NewTier(_) => panic!("set {name}: a new tier, though the tier holds all sets"),
        }
        adopted.withdraw();
        assert!(
            same(adopted.set(), &offer),
            "set {name}: the offered set was copied"
        );
        let reference = Reference::new(set);
        for frame in &frames {
            let want = expected(&reference.classify(frame, false), adopted.ids());
            let got = k.classify(PROGRAM, frame);
            if got != want {
                mismatches.push(format!("set {name}: kernel {got:?}, reference {want:?}"));
            }
        }
    }
    for m in mismatches.iter().take(25) {
        eprintln!("MISMATCH {m}");
    }
    assert!(mismatches.is_empty(), "{} disagreements", mismatches.len());
    assert!(
        !adopted.check_drift().unwrap(),
        "drift after in-place updates"
    );
}

/// The feed agent's path (`V2Sync::apply_changes` with `SetChanges`)
/// against the whole-set path (`V2Sync::apply`) on two instances given the
/// same first tier (same seed): over a chain of random deltas (adds,
/// removes, changes of action, prefixes, ports, IPv6, allowlist nets) the
/// maps read back byte for byte equal, the ids too, and the delta path was
/// taken (not its whole-set fallback).
#[test]
fn apply_changes_leaves_the_maps_apply_does() {
    if !edge_filter_tests::netns::is_root() {
        eprintln!("skipping: needs root to load the XDP program");
        return;
    }
    use edge_filter::entry::{PortMatch, Proto, Side};
    use edge_filter::kernel::maps::SetChanges;
    let seed = random_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let entry = |rng: &mut StdRng| {
        let v6 = rng.random_bool(0.3);
        let net: IpNet = if v6 {
            let a = std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                rng.random_range(0..4),
                0,
                0,
                0,
                0,
                rng.random_range(0..64),
            );
            IpNet::new(
                a.into(),
                [32u8, 48, 64, 120, 128, 128][rng.random_range(0..6)],
            )
            .unwrap()
        } else {
            let a = Ipv4Addr::new(
                10,
                rng.random_range(0..4),
                rng.random_range(0..8),
                rng.random(),
            );
            IpNet::new(
                a.into(),
                [8u8, 16, 20, 24, 28, 32, 32, 32, 32][rng.random_range(0..9)],
            )
            .unwrap()
        };
        let port = rng.random_bool(0.2).then(|| PortMatch {
            proto: if rng.random_bool(0.5) {
                Proto::Tcp
            } else {
                Proto::Udp
            },
            port: [22, 53, 443][rng.random_range(0..3)],
            side: if rng.random_bool(0.5) {
                Side::Src
            } else {
                Side::Dst
            },
        });
        let action = if rng.random_bool(0.7) {
            Action::Drop
        } else {
            Action::Monitor
        };
        Entry::new(net.trunc(), port, action)
    };
    // As the agent's merge has it: sorted by key, one entry per key (drop
    // wins), the allowlist sorted and unique.
    let normalise = |mut s: EntrySet| {
        s.entries
            .sort_by(|a, b| a.key().cmp(&b.key()).then(b.action.cmp(&a.action)));
        s.entries.dedup_by(|b, a| a.key() == b.key());
        s.allow.sort();
        s.allow.dedup();
        s
    };
    let mut raw = EntrySet::default();
    for _ in 0..3000 {
        raw.entries.push(entry(&mut rng));
    }
    raw.allow.push("10.1.0.0/16".parse().unwrap());
    let mut prev = normalise(raw.clone());
    // Room for the chain's growth: both engines stay in this tier.
    let tier = |s: &EntrySet| Tier::for_set(s, assign_ids(s, &Ids::default()), seed).unwrap();
    let sizes = tier(&prev).sizes().unwrap();
    let (mut _ka, maps_a) = load(sizes);
    let (mut _kb, maps_b) = load(sizes);
    let mut a = V2Sync::install(maps_a, tier(&prev), &prev, seed).unwrap();
    let mut b = V2Sync::install(maps_b, tier(&prev), &prev, seed).unwrap();
    let (mut deltas, mut tiers) = (0, 0);
    for round in 0..30 {
        let ctx = format!("round {round} (seed {seed:#x})");
        raw.entries.retain(|_| rng.random_bool(0.97));
        for e in raw.entries.iter_mut() {
            if rng.random_bool(0.02) {
                e.action = if e.action == Action::Drop {
                    Action::Monitor
                } else {
                    Action::Drop
                };
            }
        }
        for _ in 0..rng.random_range(0..100) {
            raw.entries.push(entry(&mut rng));
        }
        if rng.random_bool(0.3) {
            raw.allow.push(entry(&mut rng).net);
        } else if rng.random_bool(0.3) {
            raw.allow.pop();
        }
        let next = normalise(raw.clone());
        let ch = SetChanges::between(&prev, &next).key_changes();
        let (ca, cb) = match (
            a.apply(&next).unwrap(),
            b.apply_changes(&next, &ch).unwrap(),
        ) {
            (Applied::Done(ca), Applied::Done(cb)) => (ca, cb),
            // A short allowlist net over port entries can fill the heap
            // the first tier fitted: both must then ask for the same tier.
            (Applied::NewTier(ta), Applied::NewTier(tb)) => {
                assert_eq!(ta.geometry(), tb.geometry(), "{ctx}: different tiers");
                let sizes = ta.sizes().unwrap();
                let (ka2, maps_a) = load(sizes);
                let (kb2, maps_b) = load(sizes);
                a.replace(maps_a, *ta, &next).unwrap();
                b.replace(maps_b, *tb, &next).unwrap();
                (_ka, _kb) = (ka2, kb2);
                assert_eq!(a.maps().read().unwrap(), b.maps().read().unwrap(), "{ctx}");
                tiers += 1;
                prev = next;
                continue;
            }
            _ => panic!("{ctx}: one engine needed a new tier, the other did not"),
        };
        assert!(cb.by_changes && !ca.by_changes, "{ctx}: {ca:?} {cb:?}");
        assert_eq!(
            (ca.added, ca.removed, ca.writes, ca.graces),
            (cb.added, cb.removed, cb.writes, cb.graces),
            "{ctx}"
        );
        assert_eq!(a.ids(), b.ids(), "{ctx}: ids");
        assert_eq!(b.set(), &next, "{ctx}: the engine's set");
        let (ta, tb) = (a.maps().read().unwrap(), b.maps().read().unwrap());
        assert!(
            ta == tb,
            "{ctx}: apply_changes and apply left different maps"
        );
        deltas += 1;
        prev = next;
    }
    println!("apply_changes = apply over {deltas} deltas and {tiers} new tiers (seed {seed:#x})");
    assert!(deltas >= 20, "only {deltas} of 30 rounds were deltas");
}

/// A new tier goes live by replacing the program on the pinned link
/// (`attach::swap_program`, `BPF_LINK_UPDATE`): the link then runs the new
/// instance, still attached, and keeps it when the old instance is gone.
#[test]
fn a_new_tier_replaces_the_program_on_the_pinned_link() {
    use aya::programs::{XdpMode, links::FdLink};
    use edge_filter::kernel::attach::{LinkHealth, link_health, swap_program};
    use edge_filter::kernel::paths::Paths;
    use edge_filter_tests::netns::{Netns, unique_tag};
    if !edge_filter_tests::netns::is_root() {
        eprintln!("skipping: needs root to attach XDP");
        return;
    }
    let tag = unique_tag();
    let ns = Netns::create(&format!("efv2swap{tag}"));
    ns.ip_batch("link add efa type veth peer name efb\nlink set efa up\nlink set efb up\n");
    let pins = PinRoot::new("v2swap");
    let paths = Paths::new(pins.path());
    std::fs::create_dir_all(paths.iface_dir("efa")).unwrap();
    ns.enter(|| {
        let (mut old, _old_maps) = load(Sizes::small());
        let p: &mut Xdp = old.ebpf.program_mut(PROGRAM).unwrap().try_into().unwrap();
        let id = p
            .attach("efa", XdpMode::Skb)
            .expect("attaching to the veth");
        let link: FdLink = p.take_link(id).unwrap().try_into().unwrap();
        link.pin(paths.link("efa")).unwrap();
        let prog_id = |k: &TestRunner| {
            let p: &Xdp = k.ebpf.program(PROGRAM).unwrap().try_into().unwrap();
            p.info().unwrap().id()
        };
        let attached_prog = || match link_health(&paths, "efa").unwrap() {
            LinkHealth::Attached { prog_id, .. } => prog_id,
            h => panic!("the link is not attached: {h:?}"),
        };
        assert_eq!(attached_prog(), prog_id(&old));
        let (new, _new_maps) = load(Sizes::small());
        let p: &Xdp = new.ebpf.program(PROGRAM).unwrap().try_into().unwrap();
        swap_program(&paths.link("efa"), p).unwrap();
        assert_eq!(attached_prog(), prog_id(&new), "the link runs the new tier");
        drop(old);
        assert_eq!(attached_prog(), prog_id(&new), "and keeps it");
    });
}

/// A set that outgrows its tier goes live on a pinned attachment
/// (`attach::grow`): the link runs a new program on new v2 maps, pinned
/// where the old ones were, with the per-reason counters reused by pin,
/// and the pins adopt as the engine's set and ids, without drift.
#[test]
fn a_new_tier_goes_live_on_the_pinned_attachment() {
    use aya::programs::{XdpMode, links::FdLink};
    use edge_filter::kernel::attach::{LinkHealth, TierPins, grow, link_health};
    use edge_filter::kernel::paths::Paths;
    use edge_filter::kernel::program::load_v2_object;
    use edge_filter_tests::netns::{Netns, unique_tag};
    if !edge_filter_tests::netns::is_root() {
        eprintln!("skipping: needs root to attach XDP");
        return;
    }
    const REUSE: [&str; 5] = ["COUNTERS", "LAST", "EVENTS", "SAMPLE", "SAMPLE_STATE"];
    let tag = unique_tag();
    let ns = Netns::create(&format!("efv2grow{tag}"));
    ns.ip_batch("link add efa type veth peer name efb\nlink set efa up\nlink set efb up\n");
    let pins = PinRoot::new("v2grow");
    let paths = Paths::new(pins.path());
    let maps_dir = paths.maps_dir("efa");
    std::fs::create_dir_all(&maps_dir).unwrap();
    let mut extra: Vec<(&str, u32)> = Capacities::small().per_map().to_vec();
    extra.push(("ONE_LOAD", 1));
    let seed = random_seed();
    let mut small = EntrySet::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut addr = || {
        let a = Ipv4Addr::from(rng.random::<u32>() | 0x0100_0000);
        Entry::new(IpNet::from(std::net::IpAddr::V4(a)), None, Action::Drop)
    };
    for _ in 0..100 {
        small.entries.push(addr());
    }
    let mut big = small.clone();
    for _ in 0..5000 {
        big.entries.push(addr());
    }
    ns.enter(|| {
        let tier = Tier::for_set(&small, assign_ids(&small, &Ids::default()), seed).unwrap();
        let mut ebpf =
            load_v2_object(BENCH_OBJECT, PROGRAM, &tier.sizes().unwrap(), &[], &extra).unwrap();
        for name in REUSE {
            ebpf.map(name).unwrap().pin(maps_dir.join(name)).unwrap();
        }
        let maps = V2Maps::take(&mut ebpf).unwrap();
        maps.pin(&maps_dir).unwrap();
        let mut sync = V2Sync::install(maps, tier, &small, seed).unwrap();
        let p: &mut Xdp = ebpf.program_mut(PROGRAM).unwrap().try_into().unwrap();
        let old_prog = p.info().unwrap().id();
        let id = p
            .attach("efa", XdpMode::Skb)
            .expect("attaching to the veth");
        let link: FdLink = p.take_link(id).unwrap().try_into().unwrap();
        link.pin(paths.link("efa")).unwrap();
        let map_id = |name: &str| {
            MapData::from_pin(maps_dir.join(name))
                .unwrap()
                .info()
                .unwrap()
        };
        let counters = map_id("COUNTERS").id();
        let old_exact4 = map_id("V2_EXACT4").id();
        let Applied::NewTier(t) = sync.apply(&big).unwrap() else {
            panic!("5,100 addresses fit a tier made for 100");
        };
        let pins = TierPins {
            maps_dir: &maps_dir,
            link: &paths.link("efa"),
            reuse: &REUSE,
        };
        grow(&mut sync, *t, &big, BENCH_OBJECT, PROGRAM, &pins, &extra).unwrap();
        drop(ebpf);
        match link_health(&paths, "efa").unwrap() {
            LinkHealth::Attached { prog_id, .. } => {
                assert_ne!(prog_id, old_prog, "the link still runs the old tier")
            }
            h => panic!("the link is not attached after growing: {h:?}"),
        }
        assert_eq!(map_id("COUNTERS").id(), counters, "COUNTERS reused by pin");
        let exact4 = map_id("V2_EXACT4");
        assert_ne!(exact4.id(), old_exact4, "the new tier's maps are pinned");
        assert_eq!(
            exact4.max_entries(),
            sync.geometry().unwrap().buckets4,
            "pinned at the new tier's size"
        );
        assert!(!maps_dir.join("v2-next").exists(), "staging pins left");
        let open = |name: &str| -> edge_filter::error::Result<Map> {
            Ok(Map::from_map_data(MapData::from_pin(maps_dir.join(name)).unwrap()).unwrap())
        };
        let (adopted, how) = V2Sync::adopt(V2Maps::from_fn(open).unwrap(), seed).unwrap();
        assert!(!how.drift, "the grown tier adopts without drift");
        assert_eq!(adopted.ids(), sync.ids());
    });
}
