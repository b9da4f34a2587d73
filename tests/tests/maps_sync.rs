//! Map sync against real kernel maps (private, via a loaded program;
//! datapath v2): contents read back (through the catalog) equal what was
//! asked, a tier built for a set and one grown into it hold the same,
//! deltas touch only what changed, a set that outgrows its tier gets the
//! next one (a new program instance: nothing refused), rotations land
//! whole, and reconcile repairs drift. Root only.

use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter::kernel::classifier::KernelClassifier;
use edge_filter::kernel::maps::{Desired, drift};
use edge_filter::kernel::program::Capacities;
use edge_filter_tests::literal::net;
use edge_filter_tests::netns::is_root;
use ipnet::IpNet;

/// `n` exact IPv4 addresses, a few prefixes and port entries, both families.
fn set(n: u32, offset: u32) -> EntrySet {
    let mut entries: Vec<Entry> = (0..n)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x0b00_0000 + offset + i);
            Entry::new(IpNet::from(std::net::IpAddr::V4(a)), None, Action::Drop)
        })
        .collect();
    entries.push(Entry::new(net("198.51.100.0/24"), None, Action::Monitor));
    entries.push(Entry::new(net("198.51.0.0/16"), None, Action::Drop));
    entries.push(Entry::new(net("2001:db8::/32"), None, Action::Drop));
    entries.push(Entry::new(net("2001:db8::1/128"), None, Action::Monitor));
    entries.push(Entry::new(
        net("192.0.2.1/32"),
        Some(PortMatch {
            proto: Proto::Tcp,
            port: 443,
            side: Side::Src,
        }),
        Action::Drop,
    ));
    entries.push(Entry::new(
        net("192.0.2.0/24"),
        Some(PortMatch {
            proto: Proto::Udp,
            port: 53,
            side: Side::Dst,
        }),
        Action::Monitor,
    ));
    EntrySet {
        allow: vec![net("198.51.100.7/32"), net("fd00::/8")],
        entries,
    }
}

fn classifier() -> KernelClassifier {
    KernelClassifier::new(&Capacities::small()).unwrap_or_else(|e| panic!("loading: {e}"))
}

#[test]
fn contents_read_back_and_deltas_are_minimal() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let mut k = classifier();
    let s1 = set(5000, 0);
    k.set_entries(&s1, false).expect("apply");
    assert_eq!(k.last_sync.added, 5000 + 6 + 2, "{:?}", k.last_sync);
    let back = k.maps().read().expect("read");
    assert_eq!(back.to_entry_set().entries.len(), 5006);
    let want = Desired::build_from(&s1, &back);
    assert_eq!(
        drift(&back, &want),
        0,
        "kernel contents differ from the desired state"
    );

    // Shift the window by 100: 100 removed, 100 added, nothing else touched.
    let s2 = set(5000, 100);
    k.set_entries(&s2, false).expect("apply delta");
    assert_eq!(
        (k.last_sync.added, k.last_sync.removed, k.last_sync.changed),
        (100, 100, 0),
        "{:?}",
        k.last_sync
    );
    // Ids of surviving keys are stable.
    let back2 = k.maps().read().expect("read");
    let ids1 = edge_filter::kernel::maps::ids_of(&back);
    let ids2 = edge_filter::kernel::maps::ids_of(&back2);
    let kept = ids2
        .iter()
        .filter(|(key, id)| ids1.get(key) == Some(id))
        .count();
    assert_eq!(kept, 4900 + 6 + 2, "ids of unchanged keys must not change");
}

/// A classifier loaded with a tier for the set and one that starts from
/// the smallest tier and grows into it hold the same entries with the same
/// ids, and their verdicts agree (v1 had batch and per-element paths
/// here; v2 has the fresh build and the growth path).
#[test]
fn a_fresh_tier_and_a_grown_one_agree() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let s = set(3000, 7);
    let mut a = KernelClassifier::with_set(&s, false).expect("fresh tier");
    let mut b = classifier();
    b.set_entries(&s, false).expect("grown");
    assert!(b.last_sync.tiers >= 1, "{:?}", b.last_sync);
    let (ra, rb) = (a.maps().read().unwrap(), b.maps().read().unwrap());
    assert_eq!(ra.to_entry_set(), rb.to_entry_set());
    assert_eq!(ra, rb, "same ids");
    for src in [
        "11.0.0.7",
        "11.0.11.190",
        "198.51.100.9",
        "198.51.100.7",
        "10.9.9.9",
    ] {
        let frame = udp4(src, 40000, 53);
        let (va, vb) = (a.classify(&frame).unwrap(), b.classify(&frame).unwrap());
        assert_eq!(va, vb, "{src}");
    }
}

/// An IPv4/UDP frame from `src`.
fn udp4(src: &str, sport: u16, dport: u16) -> Vec<u8> {
    let src: std::net::Ipv4Addr = src.parse().unwrap();
    let mut f = vec![0u8; 14 + 20 + 8];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&28u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&[192, 0, 2, 200]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&8u16.to_be_bytes());
    f
}

/// What replaced v1's refusals of a full map: a set that outgrows its tier
/// gets the next one (a new program instance with larger maps, the
/// counters of kept ids carried over), and nothing is refused.
#[test]
fn a_set_that_outgrows_its_tier_grows_it() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let mut k = KernelClassifier::with_set(&set(1000, 0), false).expect("load");
    let before = k.maps().sizes();
    // A hit on a kept entry, counted before the growth.
    let frame = udp4("11.0.0.5", 40000, 53);
    let v = k.classify(&frame).unwrap();
    assert_eq!(v.action, 1, "11.0.0.5 is dropped");
    let big = set(50_000, 0);
    k.set_entries(&big, false).expect("apply");
    assert_eq!(k.last_sync.refused, 0, "{:?}", k.last_sync);
    assert!(k.last_sync.tiers >= 1, "{:?}", k.last_sync);
    assert_eq!(k.last_sync.added, 49_000, "{:?}", k.last_sync);
    let after = k.maps().sizes();
    assert!(
        after.buckets4 > before.buckets4 && after.catalog > before.catalog,
        "{before:?} -> {after:?}"
    );
    let back = k.maps().read().unwrap();
    assert_eq!(back.census(&big).missing, 0);
    assert_eq!(back.addr_v4.len(), 50_000);
    // The kept entry's id and hit survived the new tier.
    let id = v.entry_id;
    assert_eq!(k.maps().entry_stats().unwrap()[id as usize].packets, 1);
    assert_eq!(k.classify(&frame).unwrap().entry_id, id);
    assert_eq!(k.maps().stats_overflow().unwrap().packets, 0);
}

/// Issue #13, bug 1 (v1): a set rotated to as many *different* keys at
/// (near) capacity used to add before it removed, fill the map and keep
/// only a fraction. With v2 a rotation is one plan (or a new tier when the
/// old and new keys do not fit together); on every path it lands whole:
/// `apply` (diff of sets), `apply_changes` (the feed agent's delta) and a
/// restart over a kernel holding a mix (adoption).
#[test]
fn rotation_lands_whole() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let old = set(990, 0);
    let new = set(990, 10_000);
    let check = |k: &KernelClassifier, want: &EntrySet, what: &str| {
        assert_eq!(k.last_sync.refused, 0, "{what}: {:?}", k.last_sync);
        let back = k.maps().read().expect("read");
        let census = back.census(want);
        assert_eq!(census.missing, 0, "{what}: {census:?}");
        assert_eq!(
            drift(&back, &Desired::build_from(want, &back)),
            0,
            "{what}: kernel differs from the desired state"
        );
        assert_eq!(back.to_entry_set(), normalise(want), "{what}");
    };

    // The simple agent's path: apply() diffs the two sets.
    let mut k = KernelClassifier::with_set(&old, false).expect("load");
    check(&k, &old, "old set");
    k.set_entries(&new, false).expect("rotation");
    check(&k, &new, "apply() rotation");
    assert_eq!(k.last_sync.removed, 990, "{:?}", k.last_sync);

    // The feed agent's path: apply_changes() with the delta.
    let mut k = KernelClassifier::with_set(&old, false).expect("load");
    let changes =
        edge_filter::kernel::maps::SetChanges::between(&normalise(&old), &normalise(&new));
    let st = k
        .maps_mut()
        .apply_changes(&normalise(&new), &changes, 0)
        .expect("delta");
    assert_eq!((st.added, st.removed), (990, 990), "{st:?}");
    k.last_sync = st;
    check(&k, &new, "apply_changes() rotation");

    // After a crash in the middle: the kernel holds half of each set (the
    // agent's state is gone: a new agent adopts the kernel's tables).
    let mut mixed = set(495, 0);
    mixed.entries.extend(set(495, 10_000).entries);
    let mut k = KernelClassifier::with_set(&mixed, false).expect("mixed");
    k.maps_mut().forget_shadow();
    k.maps_mut()
        .rebuild(&new, 0)
        .map(|st| k.last_sync = st)
        .expect("restart");
    check(&k, &new, "rebuild after a crash");

    // A set twice the tier's headroom lands whole (a new tier).
    k.set_entries(&set(8000, 20_000), false).expect("too big");
    check(&k, &set(8000, 20_000), "a larger set");
}

/// Words changed behind the engine's back (a record slot cleared: an
/// address that would pass; a catalog word cleared) are drift: reconcile
/// notices, counts it and brings the kernel back to the set (a new tier
/// with the same ids), and the next reconcile finds nothing.
#[test]
fn reconcile_repairs_drift() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    use edge_filter::kernel::layout::Write;
    let flags = edge_filter_common::CONFIG_RECORD_LAST;
    let s = set(200, 0);
    let mut k = KernelClassifier::with_set(&s, false).expect("load");
    let good = k.maps().read().unwrap();
    assert_eq!(k.maps_mut().reconcile(flags).unwrap(), 0, "no drift yet");
    // Behind the engine's back: the first record slot and a catalog word.
    let t = k.maps().v2().read().unwrap();
    let (bucket, slot) = t
        .exact4
        .iter()
        .enumerate()
        .find_map(|(b, bk)| {
            (0..7)
                .find(|&i| bk.slots[i].meta != 0)
                .map(|i| (b as u32, i as u32))
        })
        .expect("a record");
    let victim = t.exact4[bucket as usize].slots[slot as usize].addr;
    let frame = udp4(&std::net::Ipv4Addr::from(victim).to_string(), 40000, 53);
    let before = k.classify(&frame).unwrap();
    k.maps_mut()
        .tamper(&Write::Slot4 {
            bucket,
            slot,
            value: 0,
        })
        .unwrap();
    k.maps_mut()
        .tamper(&Write::Catalog { id: 3, value: 0 })
        .unwrap();
    assert_ne!(k.maps().read().unwrap(), good, "the catalog change shows");
    let drifted = k.maps_mut().reconcile(flags).unwrap();
    assert_eq!(drifted, 1, "reconcile must notice the drift");
    assert_eq!(
        k.maps().read().unwrap(),
        good,
        "reconcile must restore the contents"
    );
    assert_eq!(k.classify(&frame).unwrap(), before, "the record is back");
    assert_eq!(k.maps_mut().reconcile(flags).unwrap(), 0, "nothing left");
}

/// The incremental path (diff of sets, re-flattening only covered trie
/// nodes) must leave exactly what a full rebuild with the same ids would:
/// random churn over nested prefixes of mixed actions, ports and allowlist.
#[test]
fn incremental_updates_equal_a_full_rebuild() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut k = classifier();
    let mut set = EntrySet::default();
    for _ in 0..400 {
        set.entries.push(random_entry(&mut rng));
    }
    k.set_entries(&set, false).expect("first apply");
    for round in 0..20 {
        // Remove ~10%, flip ~10% of actions, add ~10%, touch the allowlist.
        set.entries.retain(|_| rng.random_bool(0.9));
        for e in set.entries.iter_mut() {
            if rng.random_bool(0.1) {
                e.action = if e.action == Action::Drop {
                    Action::Monitor
                } else {
                    Action::Drop
                };
            }
        }
        for _ in 0..40 {
            set.entries.push(random_entry(&mut rng));
        }
        if rng.random_bool(0.5) {
            set.allow.push(random_entry(&mut rng).net);
        } else {
            set.allow.pop();
        }
        k.set_entries(&set, false)
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
        let kernel = k.maps().read().unwrap();
        let rebuilt = Desired::build_from(&set, &kernel);
        assert_eq!(
            drift(&kernel, &rebuilt),
            0,
            "round {round}: the incremental update differs from a full rebuild (seed {seed})"
        );
    }
}

/// A random entry over nested prefixes of both families, some with ports.
fn random_entry(rng: &mut rand::rngs::StdRng) -> Entry {
    use rand::Rng;
    let v6 = rng.random_bool(0.3);
    let len = if v6 {
        [16u8, 24, 32, 48, 64, 120, 127, 128][rng.random_range(0..8)]
    } else {
        [8u8, 12, 16, 20, 24, 28, 31, 32][rng.random_range(0..8)]
    };
    let net: IpNet = if v6 {
        let a = std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            rng.random_range(0..4),
            0,
            0,
            0,
            0,
            rng.random_range(0..16),
        );
        IpNet::new(a.into(), len).unwrap()
    } else {
        let a = std::net::Ipv4Addr::new(
            10,
            rng.random_range(0..4),
            rng.random_range(0..4),
            rng.random_range(0..16),
        );
        IpNet::new(a.into(), len).unwrap()
    };
    let port = rng.random_bool(0.3).then(|| PortMatch {
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
    let action = if rng.random_bool(0.5) {
        Action::Drop
    } else {
        Action::Monitor
    };
    Entry::new(net, port, action)
}

/// `set` as the agent's merged desired state has it: entries sorted by key,
/// one per key (drop wins), the allowlist sorted and unique.
fn normalise(set: &EntrySet) -> EntrySet {
    let mut entries = set.entries.clone();
    entries.sort_by(|a, b| a.key().cmp(&b.key()).then(b.action.cmp(&a.action)));
    entries.dedup_by(|b, a| a.key() == b.key());
    let mut allow = set.allow.clone();
    allow.sort();
    allow.dedup();
    EntrySet { allow, entries }
}

/// The feed agent's path (`SetChanges::between` + `apply_changes`) over a
/// random churn sequence must leave the kernel maps byte-identical (values,
/// ids, deciders) to `apply` (its own diff) on other maps, and equal to a
/// full rebuild with the same ids; an empty change set changes nothing.
#[test]
fn apply_changes_equals_apply_and_a_full_rebuild() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    use edge_filter::kernel::maps::SetChanges;
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut a, mut b) = (classifier(), classifier());
    let mut raw = EntrySet::default();
    for _ in 0..400 {
        raw.entries.push(random_entry(&mut rng));
    }
    raw.allow.push(random_entry(&mut rng).net);
    let mut prev = normalise(&raw);
    a.maps_mut().apply(&prev, 0).expect("first apply");
    b.maps_mut().apply(&prev, 0).expect("first apply");
    assert!(a.maps().in_sync());
    for round in 0..25 {
        raw.entries.retain(|_| rng.random_bool(0.9));
        for e in raw.entries.iter_mut() {
            if rng.random_bool(0.1) {
                e.action = if e.action == Action::Drop {
                    Action::Monitor
                } else {
                    Action::Drop
                };
            }
        }
        for _ in 0..rng.random_range(0..60) {
            raw.entries.push(random_entry(&mut rng));
        }
        if rng.random_bool(0.5) {
            raw.allow.push(random_entry(&mut rng).net);
        } else {
            raw.allow.pop();
        }
        let new = normalise(&raw);
        let changes = SetChanges::between(&prev, &new);
        let sa = a
            .maps_mut()
            .apply_changes(&new, &changes, 0)
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
        let sb = b.maps_mut().apply(&new, 0).expect("apply");
        assert_eq!(sa, sb, "round {round}: stats differ (seed {seed})");
        let (ka, kb) = (a.maps().read().unwrap(), b.maps().read().unwrap());
        assert_eq!(
            ka, kb,
            "round {round}: apply_changes and apply left different maps (seed {seed})"
        );
        let rebuilt = Desired::build_from(&new, &ka);
        assert_eq!(
            drift(&ka, &rebuilt),
            0,
            "round {round}: apply_changes differs from a full rebuild (seed {seed})"
        );
        assert_eq!(ka.to_entry_set(), new, "round {round} (seed {seed})");
        prev = new;
    }
    let none = SetChanges::between(&prev, &prev);
    assert!(none.is_empty());
    let st = a.maps_mut().apply_changes(&prev, &none, 0).unwrap();
    assert_eq!((st.added, st.changed, st.removed), (0, 0, 0));
    // Without a shadow (after a failure) it falls back to a full sync.
    a.maps_mut().forget_shadow();
    let st = a.maps_mut().apply_changes(&prev, &none, 0).unwrap();
    assert_eq!((st.added, st.changed, st.removed), (0, 0, 0));
    assert!(a.maps().in_sync());
    assert_eq!(a.maps().read().unwrap().to_entry_set(), prev);

    // Changes computed against another set than the one applied are a
    // caller's bug; where they show, the maps still end up holding the new
    // set (a full sync), with ids a full rebuild keeps.
    let check = |a: &mut KernelClassifier, want: &EntrySet, what: &str| {
        assert!(a.maps().in_sync(), "{what}: not in sync (seed {seed})");
        let k = a.maps().read().unwrap();
        assert_eq!(&k.to_entry_set(), want, "{what} (seed {seed})");
        // The shadow copy the next delta builds on is what the kernel holds.
        assert_eq!(
            a.maps().shadow(),
            Some(k.clone()),
            "{what}: shadow (seed {seed})"
        );
        assert_eq!(
            drift(&k, &Desired::build_from(want, &k)),
            0,
            "{what} (seed {seed})"
        );
    };
    // Adds of keys the maps hold (written with fresh ids first).
    let half = EntrySet {
        allow: vec![],
        entries: prev.entries[..prev.entries.len() / 2].to_vec(),
    };
    let bogus = SetChanges::between(&half, &prev);
    assert!(!bogus.is_empty());
    a.maps_mut().apply_changes(&prev, &bogus, 0).unwrap();
    check(&mut a, &prev, "adds of present keys");
    // A change of action of a key the maps lack (seen before anything is
    // written).
    let extra = loop {
        let e = random_entry(&mut rng);
        if prev.entries.iter().all(|p| p.key() != e.key()) {
            break e;
        }
    };
    let with = |action| {
        let mut s = prev.clone();
        s.entries.push(Entry { action, ..extra });
        normalise(&s)
    };
    let (x, y) = (with(Action::Monitor), with(Action::Drop));
    let bogus = SetChanges::between(&x, &y);
    assert_eq!(bogus.len(), 1);
    a.maps_mut().apply_changes(&y, &bogus, 0).unwrap();
    check(&mut a, &y, "change of an absent key");
}
