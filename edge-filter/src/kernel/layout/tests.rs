//! Property tests of the compiler: the simulated datapath against the
//! reference classifier, deltas against fresh builds, decoding, and every
//! interleaving of a plan's stores against the old and new verdicts.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edge_filter_common::{
    NO_ENTRY,
    v2::{DIR_BLOCK, DIR_LINE_MASK, META_INDIRECT, META_PAYLOAD, PORT_TREE, dir_depth},
};
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::sim::outcomes;
use super::*;
use crate::entry::{Action, Entry, EntryKey, EntrySet, PortMatch, Proto, Side};
use crate::reference::{PacketInfo, Reference};

const PORTS: [u16; 4] = [53, 80, 443, 4444];

fn v4(rng: &mut StdRng) -> IpAddr {
    // A few /16s, so nets overlap and share /16 blocks.
    IpAddr::V4(Ipv4Addr::new(
        10,
        rng.random_range(0..3),
        rng.random_range(0..4),
        rng.random_range(0..16),
    ))
}

fn v6(rng: &mut StdRng) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        rng.random_range(0..3),
        0,
        0,
        0,
        rng.random_range(0..2),
        rng.random_range(0..8),
    ))
}

fn random_net(rng: &mut StdRng, six: bool) -> IpNet {
    let (a, lens): (IpAddr, &[u8]) = if six {
        (
            v6(rng),
            &[0, 16, 32, 40, 48, 64, 112, 124, 127, 128, 128, 128],
        )
    } else {
        (
            v4(rng),
            &[0, 8, 12, 15, 16, 17, 20, 24, 28, 30, 31, 32, 32, 32],
        )
    };
    IpNet::new(a, lens[rng.random_range(0..lens.len())])
        .unwrap()
        .trunc()
}

fn random_entry(rng: &mut StdRng) -> Entry {
    let six = rng.random_bool(0.4);
    let net = random_net(rng, six);
    let port = rng.random_bool(0.4).then(|| PortMatch {
        proto: if rng.random_bool(0.5) {
            Proto::Tcp
        } else {
            Proto::Udp
        },
        port: PORTS[rng.random_range(0..PORTS.len())],
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

pub(crate) fn random_set(rng: &mut StdRng, n: usize) -> EntrySet {
    let mut s = EntrySet::default();
    for _ in 0..n {
        if rng.random_bool(0.08) {
            let six = rng.random_bool(0.4);
            s.allow.push(random_net(rng, six));
        } else {
            s.entries.push(random_entry(rng));
        }
    }
    s
}

/// Add `n` exact addresses of each family (dense enough to fill buckets).
pub(crate) fn add_exact(rng: &mut StdRng, s: &mut EntrySet, n: usize) {
    for _ in 0..n {
        for six in [false, true] {
            let a = if six { v6(rng) } else { v4(rng) };
            let action = if rng.random_bool(0.5) {
                Action::Drop
            } else {
                Action::Monitor
            };
            s.entries.push(Entry::new(IpNet::from(a), None, action));
        }
    }
}

/// `set` with some entries dropped, some actions flipped, some added.
pub(crate) fn mutate(rng: &mut StdRng, set: &EntrySet, n: usize) -> EntrySet {
    let mut s = set.clone();
    for _ in 0..n {
        match rng.random_range(0..5) {
            0 if !s.entries.is_empty() => {
                let i = rng.random_range(0..s.entries.len());
                s.entries.swap_remove(i);
            }
            1 if !s.entries.is_empty() => {
                let i = rng.random_range(0..s.entries.len());
                let e = &mut s.entries[i];
                e.action = match e.action {
                    Action::Drop => Action::Monitor,
                    Action::Monitor => Action::Drop,
                };
            }
            2 if !s.allow.is_empty() && rng.random_bool(0.5) => {
                let i = rng.random_range(0..s.allow.len());
                s.allow.swap_remove(i);
            }
            3 if rng.random_bool(0.3) => {
                let six = rng.random_bool(0.4);
                s.allow.push(random_net(rng, six));
            }
            _ => s.entries.push(random_entry(rng)),
        }
    }
    s
}

fn random_packet(rng: &mut StdRng) -> PacketInfo {
    let src = if rng.random_bool(0.5) {
        v6(rng)
    } else {
        v4(rng)
    };
    let proto = [6u8, 17, 1][rng.random_range(0..3)];
    let ports = (proto != 1 && rng.random_bool(0.9)).then(|| {
        (
            PORTS[rng.random_range(0..PORTS.len())],
            PORTS[rng.random_range(0..PORTS.len())],
        )
    });
    PacketInfo {
        src,
        dst: src,
        proto,
        ports,
        vlan_tags: 0,
        non_first_fragment: false,
    }
}

/// The reference's verdict as (reason, id).
fn expected(r: &Reference, ids: &Ids, p: &PacketInfo) -> SimVerdict {
    let v = r.decide(p);
    let id = if let Some(e) = v.entry {
        ids[&IdKey::Entry(EntryKey {
            net: e.net,
            port: e.port,
        })]
    } else if let Some(a) = v.allow {
        ids[&IdKey::Allow(a)]
    } else {
        NO_ENTRY
    };
    SimVerdict {
        reason: v.reason,
        id,
    }
}

fn sim(t: &Tables, p: &PacketInfo, trie4: bool) -> SimVerdict {
    let ports = p.ports.map(|(s, d)| (p.proto, s, d));
    let mut r = t;
    lookup(&mut r, p.src, ports, trie4)
}

/// A geometry for `sets` (all of them fit), small enough to spill.
pub(crate) fn geometry(sets: &[(&EntrySet, &Ids)], seed: u64) -> Geometry {
    let mut c = Counts::default();
    for (s, ids) in sets {
        c = c.at_least(&counts(s, ids).unwrap());
    }
    let mut g = Geometry::for_counts(&c, 1.0, seed);
    g.trie4 = true;
    // Tiny exact tables (load up to about 1, with `build_lax`), so keys
    // spill to their second bucket.
    g.buckets4 = (c.records4.max(1) / 8).next_power_of_two().max(2) as u32;
    g.buckets6 = (c.records6.max(1) / 3).next_power_of_two().max(2) as u32;
    g
}

#[test]
fn simulation_equals_reference() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..300 {
        let n = rng.random_range(0..40);
        let mut set = random_set(&mut rng, n);
        if round % 3 == 0 {
            let k = rng.random_range(8..18);
            add_exact(&mut rng, &mut set, k);
        }
        let ids = assign_ids(&set, &Ids::default());
        let g = geometry(&[(&set, &ids)], rng.random());
        let c = match Compiler::build_lax(&set, &ids, g) {
            Ok(c) => c,
            Err(LayoutError::Full { .. }) => continue,
            Err(e) => panic!("round {round} (seed {seed}): {e}"),
        };
        let reference = Reference::new(&set);
        for _ in 0..200 {
            let p = random_packet(&mut rng);
            let want = expected(&reference, &ids, &p);
            for trie4 in [false, true] {
                let got = sim(c.tables(), &p, trie4);
                assert_eq!(
                    got, want,
                    "round {round} (seed {seed}) trie4={trie4} packet {p:?}\nset {set:?}"
                );
            }
        }
    }
}

/// Many port entries on one address and one prefix: lists past seven
/// entries become B-trees, and the lookups still match the reference.
#[test]
fn long_port_lists_are_trees() {
    let mut set = EntrySet::default();
    let a: IpNet = "10.1.2.3/32".parse().unwrap();
    let p: IpNet = "10.1.0.0/16".parse().unwrap();
    for port in 1..=300u16 {
        for (net, side) in [(a, Side::Src), (p, Side::Dst)] {
            set.entries.push(Entry::new(
                net,
                Some(PortMatch {
                    proto: if port % 3 == 0 {
                        Proto::Tcp
                    } else {
                        Proto::Udp
                    },
                    port: port * 7,
                    side,
                }),
                if port % 5 == 0 {
                    Action::Monitor
                } else {
                    Action::Drop
                },
            ));
        }
    }
    set.entries.push(Entry::new(
        "10.0.0.0/8".parse().unwrap(),
        None,
        Action::Monitor,
    ));
    let ids = assign_ids(&set, &Ids::default());
    let g = geometry(&[(&set, &ids)], 1);
    let c = Compiler::build_lax(&set, &ids, g).unwrap();
    let t = c.tables();
    let trees = t
        .heap
        .iter()
        .filter(|l| l[0] & PORT_TREE != 0 && l[1..].iter().all(|&e| e == u64::MAX))
        .count();
    assert!(trees >= 2, "expected B-tree port lists, found {trees}");
    let reference = Reference::new(&set);
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..5000 {
        let src = if rng.random_bool(0.5) {
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 1, rng.random(), rng.random()))
        };
        let p = PacketInfo {
            src,
            dst: src,
            proto: if rng.random_bool(0.5) { 6 } else { 17 },
            ports: Some((rng.random_range(0..2200), rng.random_range(0..2200))),
            vlan_tags: 0,
            non_first_fragment: false,
        };
        assert_eq!(sim(t, &p, false), expected(&reference, &ids, &p), "{p:?}");
        assert_eq!(sim(t, &p, true), expected(&reference, &ids, &p), "{p:?}");
    }
}

/// Lines reachable from the tables' decision words.
fn reachable_lines(t: &Tables) -> HashSet<u32> {
    let mut out = HashSet::new();
    let list = |m: u32, out: &mut HashSet<u32>| {
        if m & META_INDIRECT == 0 {
            return;
        }
        let head = m & META_PAYLOAD;
        out.insert(head);
        let h = t.heap[head as usize][0];
        if h & PORT_TREE != 0 {
            let mut level = vec![(h >> 36) as u32];
            for _ in 0..edge_filter_common::v2::PORT_TREE_DEPTH {
                let mut next = Vec::new();
                for l in level {
                    out.insert(l);
                    next.extend(t.heap[l as usize].iter().map(|&e| e as u32));
                }
                level = next;
            }
            out.extend(level);
        }
    };
    for b in &t.exact4 {
        for s in &b.slots {
            list(s.meta, &mut out);
        }
    }
    for b in &t.exact6 {
        for &m in &b.metas {
            list(m, &mut out);
        }
    }
    for &w in &t.dir4 {
        if w & DIR_BLOCK == 0 {
            list(w, &mut out);
            continue;
        }
        let mut level = vec![w & DIR_LINE_MASK];
        for _ in 0..dir_depth(w) {
            let mut next = Vec::new();
            for l in level {
                out.insert(l);
                next.extend(t.heap[l as usize].iter().map(|&e| e as u32));
            }
            level = next;
        }
        for l in level {
            out.insert(l);
            for &e in &t.heap[l as usize] {
                list(e as u32, &mut out);
            }
        }
    }
    for f in 0..2 {
        for g in 0..2 {
            for &v in t.trie[f][g].values() {
                list(v as u32, &mut out);
            }
        }
    }
    out
}

#[test]
fn delta_equals_fresh_build_and_decodes() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..60 {
        let n = rng.random_range(0..40);
        let mut a = random_set(&mut rng, n);
        if round % 2 == 0 {
            let k = rng.random_range(8..18);
            add_exact(&mut rng, &mut a, k);
        }
        let ids_a = assign_ids(&a, &Ids::default());
        let mut sets = vec![(a.clone(), ids_a.clone())];
        for _ in 0..4 {
            let (prev, prev_ids) = sets.last().unwrap();
            let k = rng.random_range(1..12);
            let next = mutate(&mut rng, prev, k);
            let ids = assign_ids(&next, prev_ids);
            sets.push((next, ids));
        }
        let refs: Vec<(&EntrySet, &Ids)> = sets.iter().map(|(s, i)| (s, i)).collect();
        let g = geometry(&refs, rng.random());
        let mut c = match Compiler::build_lax(&sets[0].0, &sets[0].1, g) {
            Ok(c) => c,
            Err(LayoutError::Full { .. }) => continue,
            Err(e) => panic!("{e}"),
        };
        for (i, (set, ids)) in sets.iter().enumerate().skip(1) {
            let before = c.tables().clone();
            let plan = match c.update(set, ids) {
                Ok(p) => p,
                Err(LayoutError::Full { .. }) => break,
                Err(e) => panic!("round {round} step {i} (seed {seed}): {e}"),
            };
            // The plan takes the old tables to the compiler's image.
            let mut applied = before.clone();
            plan.apply_to(&mut applied);
            assert_eq!(&applied, c.tables(), "round {round} step {i} (seed {seed})");
            // Lines are written only where no reader can be.
            let live = reachable_lines(&before);
            for s in &plan.steps {
                if let Step::Writes(ws) = s {
                    for w in ws {
                        if let Write::Line { line, .. } = w {
                            assert!(
                                !live.contains(line),
                                "round {round} step {i} (seed {seed}): line {line} written while reachable"
                            );
                        }
                    }
                }
            }
            // Same content as a fresh build of the new set.
            let fresh = match Compiler::build_lax(set, ids, g) {
                Ok(f) => f,
                Err(LayoutError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            };
            let (got, want) = (canonical(c.tables()), canonical(fresh.tables()));
            assert!(got.tries_in_sync, "round {round} step {i} (seed {seed})");
            if got != want {
                panic!(
                    "round {round} step {i} (seed {seed}): delta differs from a fresh build: {}\nfrom {:?}\nto {set:?}",
                    canon_diff(&got, &want),
                    sets[i - 1].0
                );
            }
            // And it decodes back to the set.
            let (dset, dids) = decode(c.tables()).unwrap();
            assert_eq!(&dids, ids, "round {round} step {i} (seed {seed})");
            let norm = |s: &EntrySet| -> BTreeSet<String> {
                let mut out: BTreeSet<String> =
                    s.allow.iter().map(|n| format!("allow {n}")).collect();
                let mut best: std::collections::BTreeMap<EntryKey, Action> = Default::default();
                for e in &s.entries {
                    let k = EntryKey {
                        net: e.net,
                        port: e.port,
                    };
                    let a = best.entry(k).or_insert(e.action);
                    *a = (*a).max(e.action);
                }
                out.extend(best.iter().map(|(k, a)| format!("{k:?} {a:?}")));
                out
            };
            assert_eq!(
                norm(&dset),
                norm(set),
                "round {round} step {i} (seed {seed})"
            );
        }
    }
}

/// A set's keys and values (duplicates merged, drop wins).
fn values(set: &EntrySet, ids: &Ids) -> std::collections::BTreeMap<IdKey, KeyValue> {
    let mut out = std::collections::BTreeMap::new();
    for n in &set.allow {
        let k = IdKey::Allow(n.trunc());
        out.insert(k, KeyValue::Allow(ids[&k]));
    }
    for e in &set.entries {
        let k = IdKey::Entry(EntryKey {
            net: e.net.trunc(),
            port: e.port,
        });
        let drop = e.action == Action::Drop;
        let v = out
            .entry(k)
            .or_insert(KeyValue::Entry { drop, id: ids[&k] });
        if let KeyValue::Entry { drop: d, .. } = v {
            *d |= drop;
        }
    }
    out
}

/// An update from key changes is the update from the whole set: the same
/// plan and the same tables; a change to an id another key holds is
/// refused and leaves the compiler as it was.
#[test]
fn changes_equal_set_updates() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..40 {
        let n = rng.random_range(0..40);
        let mut a = random_set(&mut rng, n);
        if round % 2 == 0 {
            let k = rng.random_range(8..18);
            add_exact(&mut rng, &mut a, k);
        }
        let ids_a = assign_ids(&a, &Ids::default());
        let mut sets = vec![(a.clone(), ids_a.clone())];
        for _ in 0..4 {
            let (prev, prev_ids) = sets.last().unwrap();
            let k = rng.random_range(1..12);
            let next = mutate(&mut rng, prev, k);
            let ids = assign_ids(&next, prev_ids);
            sets.push((next, ids));
        }
        let refs: Vec<(&EntrySet, &Ids)> = sets.iter().map(|(s, i)| (s, i)).collect();
        let g = geometry(&refs, rng.random());
        let Ok(mut by_set) = Compiler::build_lax(&sets[0].0, &sets[0].1, g) else {
            continue;
        };
        let mut by_changes = by_set.clone();
        for i in 1..sets.len() {
            let (old, new) = (
                values(&sets[i - 1].0, &sets[i - 1].1),
                values(&sets[i].0, &sets[i].1),
            );
            let mut changes: Vec<(IdKey, Option<KeyValue>)> = new
                .iter()
                .filter(|(k, v)| old.get(k) != Some(v))
                .map(|(k, v)| (*k, Some(*v)))
                .collect();
            changes.extend(
                old.keys()
                    .filter(|k| !new.contains_key(k))
                    .map(|k| (*k, None)),
            );
            // A key listed twice takes its last value.
            if let Some(&(k, _)) = changes.first() {
                changes.insert(0, (k, None));
            }
            let p1 = match by_set.update(&sets[i].0, &sets[i].1) {
                Ok(p) => p,
                Err(LayoutError::Full { .. }) => break,
                Err(e) => panic!("round {round} step {i} (seed {seed}): {e}"),
            };
            // Refused: an id held by a key that stays.
            if let Some((held, hv)) = old.iter().next()
                && let Some((other, _)) = new.iter().find(|(k, _)| *k != held)
            {
                let id = hv.id();
                let stolen = match other {
                    IdKey::Allow(_) => KeyValue::Allow(id),
                    IdKey::Entry(_) => KeyValue::Entry { drop: true, id },
                };
                let before = by_changes.tables().clone();
                let r = by_changes.update_changes(&[(*other, Some(stolen))]);
                assert!(
                    matches!(r, Err(LayoutError::DuplicateId { .. })),
                    "round {round} step {i} (seed {seed}): {r:?}"
                );
                assert_eq!(&before, by_changes.tables());
            }
            let p2 = by_changes
                .update_changes(&changes)
                .unwrap_or_else(|e| panic!("round {round} step {i} (seed {seed}): {e}"));
            assert_eq!(p1, p2, "round {round} step {i} (seed {seed})");
            assert_eq!(by_set.tables(), by_changes.tables());
        }
    }
}

/// The first differences between two canonical forms, briefly.
fn canon_diff(a: &Canonical, b: &Canonical) -> String {
    let mut out = Vec::new();
    if a.flags != b.flags {
        out.push(format!("flags {:#x} vs {:#x}", a.flags, b.flags));
    }
    for (name, x, y) in [("sum4", &a.sum4, &b.sum4), ("sum6", &a.sum6, &b.sum6)] {
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            if p != q {
                out.push(format!("{name}[{i}] {p:#x} vs {q:#x}"));
            }
        }
    }
    for (k, v) in &a.records4 {
        if b.records4.get(k) != Some(v) {
            out.push(format!("record4 {k:#x}: {v:?} vs {:?}", b.records4.get(k)));
        }
    }
    for k in b.records4.keys() {
        if !a.records4.contains_key(k) {
            out.push(format!("record4 {k:#x} missing"));
        }
    }
    for (k, v) in &a.records6 {
        if b.records6.get(k) != Some(v) {
            out.push(format!("record6 {k:#x}: {v:?} vs {:?}", b.records6.get(k)));
        }
    }
    for k in b.records6.keys() {
        if !a.records6.contains_key(k) {
            out.push(format!("record6 {k:#x} missing"));
        }
    }
    for (i, (p, q)) in a.dir4.iter().zip(&b.dir4).enumerate() {
        if p != q {
            out.push(format!("dir4[{i}] {p:?} vs {q:?}"));
        }
    }
    for f in 0..2 {
        if a.trie[f] != b.trie[f] {
            out.push(format!("trie{f} {:?} vs {:?}", a.trie[f], b.trie[f]));
        }
    }
    if a.catalog != b.catalog {
        out.push("catalog".into());
    }
    out.truncate(12);
    out.join("\n  ")
}

/// Check every interleaving of the plan from `a` to `b` against the old
/// and new verdicts of `packets`; returns (windows checked, windows with
/// more than one outcome, the plan), or `None` when the tier was full.
fn check_interleavings(
    a: &EntrySet,
    ids_a: &Ids,
    b: &EntrySet,
    ids_b: &Ids,
    g: Geometry,
    packets: &[PacketInfo],
    what: &str,
) -> Option<(usize, usize, Plan)> {
    let mut c = match Compiler::build_lax(a, ids_a, g) {
        Ok(c) => c,
        Err(LayoutError::Full { .. }) => return None,
        Err(e) => panic!("{e}"),
    };
    let old = c.tables().clone();
    let plan = match c.update(b, ids_b) {
        Ok(p) => p,
        Err(LayoutError::Full { .. }) => return None,
        Err(e) => panic!("{e}"),
    };
    let new = c.tables().clone();
    // Flatten the stores; windows are the runs between grace periods.
    let mut writes = Vec::new();
    let mut windows = Vec::new();
    let mut start = 0;
    for s in &plan.steps {
        match s {
            Step::Writes(ws) => writes.extend(ws.iter().copied()),
            Step::Grace => {
                windows.push((start, writes.len()));
                start = writes.len();
            }
        }
    }
    windows.push((start, writes.len()));
    let (mut checked, mut mixed) = (0, 0);
    for p in packets {
        for trie4 in [false, true] {
            let v_old = sim(&old, p, trie4);
            let v_new = sim(&new, p, trie4);
            for &(lo, hi) in &windows {
                checked += 1;
                let ports = p.ports.map(|(s, d)| (p.proto, s, d));
                let seen = outcomes(&old, &writes, lo, hi, |r| lookup(r, p.src, ports, trie4));
                if seen.len() > 1 {
                    mixed += 1;
                }
                for v in seen {
                    assert!(
                        v == v_old || v == v_new,
                        "{what} trie4={trie4}: packet {p:?} saw {v:?} in window {lo}..{hi}, old {v_old:?}, new {v_new:?}\nplan {plan:?}\nold set {a:?}\nnew set {b:?}"
                    );
                }
            }
        }
    }
    Some((checked, mixed, plan))
}

/// Every reader running during a plan (each load seeing any state of its
/// window no earlier than the load before) gets the old or the new
/// verdict, for every packet.
#[test]
fn interleaved_readers_see_old_or_new() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut windows_checked = 0usize;
    let mut mixed = 0usize;
    // What the plans exercised: IPv6 addresses staged, directory
    // switches, trie generation flips, plans with 3+ graces.
    let mut seen = [0usize; 4];
    for round in 0..100 {
        let n = rng.random_range(0..25);
        let mut a = random_set(&mut rng, n);
        if round % 2 == 0 {
            let k = rng.random_range(8..18);
            add_exact(&mut rng, &mut a, k);
        }
        let ids_a = assign_ids(&a, &Ids::default());
        let k = rng.random_range(1..8);
        let mut b = mutate(&mut rng, &a, k);
        if round % 2 == 0 {
            // Remove some exact addresses and add others.
            b.entries.retain(|e| !e.is_exact() || rng.random_bool(0.7));
            let k = rng.random_range(2..8);
            add_exact(&mut rng, &mut b, k);
        }
        let ids_b = assign_ids(&b, &ids_a);
        let g = geometry(&[(&a, &ids_a), (&b, &ids_b)], rng.random());
        let packets: Vec<PacketInfo> = (0..60).map(|_| random_packet(&mut rng)).collect();
        let what = format!("round {round} (seed {seed})");
        let Some((c, m, plan)) = check_interleavings(&a, &ids_a, &b, &ids_b, g, &packets, &what)
        else {
            continue;
        };
        windows_checked += c;
        mixed += m;
        for s in &plan.steps {
            if let Step::Writes(ws) = s {
                for w in ws {
                    match w {
                        Write::Addr6 { .. } => seen[0] += 1,
                        Write::Dir4 { .. } => seen[1] += 1,
                        Write::Generation(_) => seen[2] += 1,
                        _ => {}
                    }
                }
            }
        }
        if plan.graces() >= 3 {
            seen[3] += 1;
        }
    }
    assert!(
        windows_checked > 1000 && mixed > 0,
        "{windows_checked} {mixed}"
    );
    assert!(
        seen.iter().all(|&n| n > 0),
        "coverage {seen:?} (seed {seed})"
    );
}

/// Keys spill to their second bucket and back while readers run: the
/// spill bit is set after the spilled slot and cleared after it empties.
#[test]
fn spills_come_and_go_under_readers() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = Geometry::for_counts(&Counts::default(), 1.0, seed);
    g.buckets4 = 4;
    g.buckets6 = 4;
    let mask4 = g.buckets4 - 1;
    // Addresses whose first bucket is 0, so that bucket overflows.
    let mut crowd = Vec::new();
    let mut x = 0u32;
    while crowd.len() < 14 {
        let a = Ipv4Addr::from(0x0a01_0000 + x);
        x += 1;
        let (b1, b2) = edge_filter_common::v2::bucket_pair4(u32::from(a), g.seed4, mask4);
        if b1 == 0 && b2 != 0 {
            crowd.push(a);
        }
    }
    let entry = |a: Ipv4Addr| Entry::new(IpNet::from(IpAddr::V4(a)), None, Action::Drop);
    let mut spill_flips = 0;
    for round in 0..20 {
        let a_set = EntrySet {
            allow: Vec::new(),
            entries: crowd[..10].iter().map(|&a| entry(a)).collect(),
        };
        // Keep a random subset and add others; every other round drop
        // the two keys that spilled (inserted last, in address order).
        let mut b_set = EntrySet::default();
        for (i, &a) in crowd.iter().enumerate() {
            // (Keys added in the same update are placed before the removals,
            // so in those rounds they spill too and the bit stays.)
            let keep = if round % 2 == 0 && i >= 8 {
                false
            } else {
                rng.random_bool(0.5)
            };
            if keep {
                b_set.entries.push(entry(a));
            }
        }
        let ids_a = assign_ids(&a_set, &Ids::default());
        let ids_b = assign_ids(&b_set, &ids_a);
        let packets: Vec<PacketInfo> = crowd
            .iter()
            .map(|&a| PacketInfo {
                src: IpAddr::V4(a),
                dst: IpAddr::V4(a),
                proto: 6,
                ports: Some((80, 80)),
                vlan_tags: 0,
                non_first_fragment: false,
            })
            .collect();
        let what = format!("round {round} (seed {seed})");
        let spilled = |v: u64| {
            edge_filter_common::v2::Slot4::from_word(v).meta & edge_filter_common::v2::META_SPILL
                != 0
        };
        let r = check_interleavings(&a_set, &ids_a, &b_set, &ids_b, g, &packets, &what);
        if let Some((_, _, plan)) = r {
            let mut bits = Vec::new();
            for s in &plan.steps {
                if let Step::Writes(ws) = s {
                    for w in ws {
                        if let Write::Slot4 {
                            bucket: 0,
                            slot: 7,
                            value,
                        } = w
                        {
                            bits.push(spilled(*value));
                        }
                    }
                }
            }
            // Ten keys of bucket 0 before: it spilled; a flip shows as a
            // slot-7 store without the bit.
            if bits.contains(&false) {
                spill_flips += 1;
            }
        }
    }
    assert!(spill_flips > 0, "no spill bit changed (seed {seed})");
}

/// Both buckets of a new key are full: one of their keys moves to its
/// other bucket first (steps before the plan, with grace periods), and
/// readers never miss it.
#[test]
fn relocation_makes_room_under_readers() {
    for six in [false, true] {
        let seed = 0x5eed_u64 + six as u64;
        let mut g = Geometry::for_counts(&Counts::default(), 1.0, seed);
        g.buckets4 = 4;
        g.buckets6 = 4;
        let slots = if six { 3 } else { 8 };
        let pair = |a: IpAddr| match a {
            IpAddr::V4(x) => edge_filter_common::v2::bucket_pair4(u32::from(x), g.seed4, 3),
            IpAddr::V6(x) => edge_filter_common::v2::bucket_pair6(
                edge_filter_common::v2::v6_words(&x.octets()),
                g.seed6,
                3,
            ),
        };
        let addr = |i: u32| {
            if six {
                IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128))
            } else {
                IpAddr::V4(Ipv4Addr::from(0x0a02_0000 + i))
            }
        };
        // `slots` keys homed in bucket 0 (their other bucket 2), as many
        // homed in 1 (other bucket 3), and one more that wants 0 or 1.
        let (mut zero, mut one, mut extra) = (Vec::new(), Vec::new(), None);
        let mut i = 0;
        while zero.len() < slots || one.len() < slots || extra.is_none() {
            let a = addr(i);
            i += 1;
            match pair(a) {
                (0, 2) if zero.len() < slots => zero.push(a),
                (1, 3) if one.len() < slots => one.push(a),
                (0, 1) | (1, 0) if extra.is_none() => extra = Some(a),
                _ => {}
            }
        }
        let entry = |a: IpAddr| Entry::new(IpNet::from(a), None, Action::Drop);
        let a_set = EntrySet {
            allow: Vec::new(),
            entries: zero.iter().chain(&one).map(|&a| entry(a)).collect(),
        };
        let mut b_set = a_set.clone();
        b_set.entries.push(entry(extra.unwrap()));
        let ids_a = assign_ids(&a_set, &Ids::default());
        let ids_b = assign_ids(&b_set, &ids_a);
        let packets: Vec<PacketInfo> = zero
            .iter()
            .chain(&one)
            .chain(extra.as_ref())
            .map(|&src| PacketInfo {
                src,
                dst: src,
                proto: 17,
                ports: Some((53, 53)),
                vlan_tags: 0,
                non_first_fragment: false,
            })
            .collect();
        let (_, _, plan) =
            check_interleavings(&a_set, &ids_a, &b_set, &ids_b, g, &packets, "relocation")
                .expect("room was made");
        assert!(
            plan.graces() >= if six { 3 } else { 1 },
            "six={six}: {plan:?}"
        );
        // And the result is what a fresh build of the new set holds.
        let mut c = Compiler::build_lax(&a_set, &ids_a, g).unwrap();
        c.update(&b_set, &ids_b).unwrap();
        let fresh = Compiler::build_lax(&b_set, &ids_b, g).unwrap();
        let (x, y) = (canonical(c.tables()), canonical(fresh.tables()));
        assert_eq!(x.records4, y.records4);
        assert_eq!(x.records6, y.records6);
    }
}

/// A fresh build at load 1/2 (the tier policy's most) fits: keys whose two
/// buckets are full make room by relocation.
#[test]
fn full_load_builds() {
    let mut rng = StdRng::seed_from_u64(0xf111);
    let mut set = EntrySet::default();
    let mut seen = HashSet::new();
    // 131,072 IPv4 and 98,304 IPv6 addresses: exactly load 1/2.
    while seen.len() < 131_072 {
        let a: u32 = rng.random();
        if seen.insert(a) {
            set.entries.push(Entry::new(
                IpNet::from(IpAddr::V4(Ipv4Addr::from(a))),
                None,
                Action::Drop,
            ));
        }
    }
    let mut seen6 = HashSet::new();
    while seen6.len() < 98_304 {
        let a: u128 = rng.random();
        if seen6.insert(a) {
            set.entries.push(Entry::new(
                IpNet::from(IpAddr::V6(Ipv6Addr::from(a))),
                None,
                Action::Monitor,
            ));
        }
    }
    let ids = assign_ids(&set, &Ids::default());
    let g = Geometry::for_counts(&counts(&set, &ids).unwrap(), 1.0, 42);
    assert_eq!(g.capacity4(), 131_072);
    assert_eq!(g.capacity6(), 98_304);
    let c = Compiler::build(&set, &ids, g).expect("a full tier builds");
    assert_eq!(c.records(), [131_072, 98_304]);
}

/// The counts a build sizes its geometry by (`Compiler::build_for`, one
/// pass) are the counts of the separate pass (`counts`), on sets with
/// duplicates, allowlist nets, prefixes, ports and both families.
#[test]
fn build_counts_equal_counts() {
    let mut rng = StdRng::seed_from_u64(0xc0_47);
    for round in 0..200 {
        let n = [0, 1, 5, 40, 300][round % 5];
        let set = random_set(&mut rng, n);
        let ids = assign_ids(&set, &Ids::default());
        let want = counts(&set, &ids).expect("counts");
        let mut got = None;
        let g = Geometry::for_counts(&want, 2.0, 7);
        // Only the counts matter here: a heap sized by the counts alone
        // may still run out (the tier policy grows it and builds again).
        let _ = Compiler::build_for(&set, &ids, |c| {
            got = Some(*c);
            g
        });
        assert_eq!(got, Some(want), "round {round}: {set:?}");
    }
}

/// `assign_ids` as it was before the exact IPv4 keys took a radix sort and
/// a merge: every key sorted, previous ids kept, the lowest free ids for
/// the rest in key order.
fn assign_ids_reference(set: &EntrySet, previous: &Ids) -> Ids {
    let mut keys: Vec<IdKey> = set.allow.iter().map(|n| IdKey::Allow(n.trunc())).collect();
    keys.extend(set.entries.iter().map(|e| {
        IdKey::Entry(EntryKey {
            net: e.net.trunc(),
            port: e.port,
        })
    }));
    keys.sort_unstable();
    keys.dedup();
    let used: HashSet<u32> = previous.values().copied().collect();
    let mut out = Ids::default();
    let mut next = 0u32;
    for k in keys {
        let id = match previous.get(&k) {
            Some(&id) => id,
            None => {
                while used.contains(&next) {
                    next += 1;
                }
                next += 1;
                next - 1
            }
        };
        out.insert(k, id);
    }
    out
}

/// `n` random IPv4 /32 entries over a range of `span` addresses (so some
/// repeat), both actions.
fn random_exact4(rng: &mut StdRng, n: usize, span: u32) -> Vec<Entry> {
    (0..n)
        .map(|_| {
            let a = Ipv4Addr::from(0x0a00_0000 + rng.random_range(0..span));
            let action = if rng.random_bool(0.5) {
                Action::Drop
            } else {
                Action::Monitor
            };
            Entry::new(IpNet::from(IpAddr::V4(a)), None, action)
        })
        .collect()
}

#[test]
fn assign_ids_equals_reference() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // Small mixed sets, with a chain of previous ids, and big sets of
    // mostly exact IPv4 keys (the merge with previous ids and the table
    // filled in hash order).
    for round in 0..40 {
        let big = round % 10 == 9;
        let n = if big { 0 } else { rng.random_range(0..60) };
        let mut set = random_set(&mut rng, n);
        // 120,000 draws of 200,000 addresses: about 90,000 distinct.
        let m = if big {
            120_000
        } else {
            rng.random_range(0..40)
        };
        set.entries.extend(random_exact4(&mut rng, m, 200_000));
        let mut prev = Ids::default();
        for step in 0..3 {
            let got = assign_ids(&set, &prev);
            let want = assign_ids_reference(&set, &prev);
            assert!(
                got == want,
                "round {round} step {step} (seed {seed}): ids differ"
            );
            prev = got;
            let k = if big { 2_000 } else { rng.random_range(1..12) };
            set = mutate(&mut rng, &set, k);
            set.entries.extend(random_exact4(&mut rng, k, 200_000));
        }
    }
}

#[test]
fn build_errors_name_the_first_key_in_set_order() {
    let key = |e: &Entry| {
        IdKey::Entry(EntryKey {
            net: e.net,
            port: e.port,
        })
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut set = random_set(&mut rng, 30);
    set.entries.extend(random_exact4(&mut rng, 300, 1_000));
    let ids = assign_ids(&set, &Ids::default());
    let g = Geometry::for_counts(&counts(&set, &ids).unwrap(), 2.0, 1);
    // Exact IPv4 keys in the order of their first entry; an early one and
    // a later one of a lower address (a build may look keys up in address
    // order): ids missing for both, the early one is named.
    let mut seen = HashSet::new();
    let exact: Vec<(u32, IdKey)> = set
        .entries
        .iter()
        .filter_map(|e| match (e.net, e.port) {
            (IpNet::V4(n), None) if n.prefix_len() == 32 && seen.insert(key(e)) => {
                Some((u32::from(n.addr()), key(e)))
            }
            _ => None,
        })
        .collect();
    let (i, j) = (0..exact.len())
        .flat_map(|i| (i + 1..exact.len()).map(move |j| (i, j)))
        .find(|&(i, j)| exact[j].0 < exact[i].0)
        .expect("a later key of a lower address");
    let (early, late) = (exact[i].1, exact[j].1);
    let mut missing = ids.clone();
    missing.remove(&early);
    missing.remove(&late);
    match Compiler::build(&set, &missing, g) {
        Err(LayoutError::MissingId(k)) => assert_eq!(k, early),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("built without ids"),
    }
    // An id past the datapath's, then the same id for two keys.
    let mut large = ids.clone();
    large.insert(late, MAX_IDS_FOR_TESTS);
    match Compiler::build(&set, &large, g) {
        Err(LayoutError::IdTooLarge { key, .. }) => assert_eq!(key, late),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("built with a large id"),
    }
    let mut dup = ids.clone();
    dup.insert(late, ids[&early]);
    match Compiler::build(&set, &dup, g) {
        Err(LayoutError::DuplicateId { id, a, b }) => {
            assert_eq!(id, ids[&early]);
            assert_eq!((a, b), (early, late));
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("built with a duplicate id"),
    }
}

/// Beyond the ids a decision word carries.
const MAX_IDS_FOR_TESTS: u32 = edge_filter_common::v2::MAX_IDS;
