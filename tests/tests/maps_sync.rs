//! Map sync against real kernel maps (private, via a loaded program):
//! contents read back equal what was asked, batch and per-element paths
//! agree, deltas touch only what changed, a full map refuses the overflow
//! and applies the rest, and reconcile repairs drift. Root only.

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

#[test]
fn batch_and_per_element_paths_agree() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let s = set(3000, 7);
    let mut a = classifier();
    a.set_entries(&s, false).expect("batch");
    let mut b = classifier();
    b.maps_mut().set_batch(false);
    b.set_entries(&s, false).expect("per element");
    let (ra, rb) = (a.maps().read().unwrap(), b.maps().read().unwrap());
    assert_eq!(ra.to_entry_set(), rb.to_entry_set());
    assert_eq!(a.last_sync, b.last_sync);
}

#[test]
fn full_map_refuses_overflow_and_applies_the_rest() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let caps = Capacities {
        addr_v4: 1000,
        ..Capacities::small()
    };
    let mut k = KernelClassifier::new(&caps).expect("load");
    k.set_entries(&set(1500, 0), false).expect("apply");
    assert_eq!(k.last_sync.refused, 500, "{:?}", k.last_sync);
    assert!(
        k.last_sync.refusals[0].contains("ADDR_V4"),
        "{:?}",
        k.last_sync.refusals
    );
    let back = k.maps().read().unwrap();
    assert_eq!(back.addr_v4.len(), 1000);
    // The other maps got everything.
    assert_eq!(back.prefix_v4.len(), 2);
    assert_eq!(back.port_v4.len(), 1);
    assert_eq!(back.allow_v6.len(), 1);
}

/// Issue #13, bug 1: a set rotated to as many *different* keys at (near)
/// capacity used to add before it removed, fill the map and keep only a
/// fraction; and a sync after a crash in the middle of such a rotation
/// (the kernel holding a mix) refused the same way. Removals that make
/// room now go first, on every path: `apply` (diff of sets), a full
/// rebuild, and `apply_changes` (the feed agent's delta).
#[test]
fn rotation_at_capacity_lands_whole() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let caps = Capacities {
        addr_v4: 1000,
        prefix_v4: 8,
        ..Capacities::small()
    };
    // 990 addresses (+ 2 v4 prefixes of 8) rotated to 990 others.
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
    };

    // The simple agent's path: apply() diffs the two sets.
    let mut k = KernelClassifier::new(&caps).expect("load");
    k.set_entries(&old, false).expect("old");
    check(&k, &old, "old set");
    k.set_entries(&new, false).expect("rotation");
    check(&k, &new, "apply() rotation");
    assert_eq!(k.last_sync.removed, 990, "{:?}", k.last_sync);

    // The feed agent's path: apply_changes() with the delta.
    let mut k = KernelClassifier::new(&caps).expect("load");
    k.set_entries(&old, false).expect("old");
    let changes =
        edge_filter::kernel::maps::SetChanges::between(&normalise(&old), &normalise(&new));
    let st = k
        .maps_mut()
        .apply_changes(&normalise(&new), &changes, 0)
        .expect("delta");
    assert_eq!(st.refused, 0, "{st:?}");
    k.last_sync = st;
    check(&k, &new, "apply_changes() rotation");

    // After a crash in the middle: the kernel holds half of each set (the
    // agent's shadow is gone: a new agent reads the kernel back).
    let mut k = KernelClassifier::new(&caps).expect("load");
    let mut mixed = set(495, 0);
    mixed.entries.extend(set(495, 10_000).entries);
    k.set_entries(&mixed, false).expect("mixed");
    k.maps_mut().forget_shadow();
    k.maps_mut()
        .rebuild(&new, 0)
        .map(|st| k.last_sync = st)
        .expect("restart");
    check(&k, &new, "rebuild after a crash");

    // A set that does not fit still refuses only its overflow.
    let mut k = KernelClassifier::new(&caps).expect("load");
    k.set_entries(&old, false).expect("old");
    k.set_entries(&set(1200, 10_000), false).expect("too big");
    assert_eq!(k.last_sync.refused, 200, "{:?}", k.last_sync);
    let back = k.maps().read().unwrap();
    assert_eq!(back.addr_v4.len(), 1000);
    assert_eq!(back.census(&set(1200, 10_000)).missing, 200);
}

#[test]
fn reconcile_repairs_drift() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let flags = edge_filter_common::CONFIG_RECORD_LAST;
    let mut k = classifier();
    k.set_entries(&set(200, 0), false).expect("apply");
    let good = k.maps().read().unwrap();
    assert_eq!(k.maps_mut().reconcile(flags).unwrap(), 0, "no drift yet");
    // Behind the agent's back: one address removed, one value changed, one
    // bogus key added.
    k.maps_mut()
        .tamper(|d| {
            d.addr_v4.remove(&[11, 0, 0, 1]);
            d.addr_v4.get_mut(&[11, 0, 0, 2]).unwrap().action = edge_filter_common::ACTION_MONITOR;
            let v = d.addr_v4[&[11, 0, 0, 3]];
            d.addr_v4.insert([203, 0, 113, 9], v);
        })
        .unwrap();
    assert_eq!(drift(&k.maps().read().unwrap(), &good), 3);
    let drifted = k.maps_mut().reconcile(flags).unwrap();
    assert_eq!(drifted, 3, "reconcile must count every drifted key");
    assert_eq!(
        drift(&k.maps().read().unwrap(), &good),
        0,
        "reconcile must restore the contents"
    );
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
        assert_eq!(a.maps().shadow(), Some(&k), "{what}: shadow (seed {seed})");
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
