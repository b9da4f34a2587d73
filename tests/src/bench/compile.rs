//! `ef-bench compile`: the v2 compiler (`edge_filter::kernel::layout`) alone, in
//! userspace, no kernel: a full build and a 1% delta of generated sets
//! from 1K to 1M IPv4 /32 entries, with prefixes and address+port entries
//! (`docs/datapath-v2.md`, section 7 item 6; the sync target is a
//! full sync of 1M /32 + 100k prefixes in <= 300 ms and a 1% delta in
//! <= 3% of it).
//!
//! Per case and round: the ids of a fresh set (`assign_ids`), the build
//! (`counts`, `Geometry::for_counts`, `Compiler::build`, `fit_heap`: what a
//! full sync computes before it copies the image), then a 1% delta on that
//! compiler (1% of the entries of each kind removed, as many new ones
//! added: `assign_ids` against the previous ids and `Compiler::update`,
//! which returns the plan). Medians over the rounds; the delta ratio is the
//! median of the per-round ratios. Never a test: nothing is asserted.
//!
//! `EF_COMPILE_FLIP=<n>` also takes each case's compiler back and forth
//! through the delta `n` times (`update_changes` of the reverse, then of
//! the delta) and prints each time to stderr, then the median of each
//! direction: the cost of a long run of 1% changes, which a single delta
//! on a fresh build does not show (the model rebuilds its B-tree of
//! records once a 64th of it has been inserted, so at 1M about every
//! other 1% change pays the rebuild; see `Family::compact`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhow::{Context as _, Result};
use edge_filter::entry::EntryKey;
use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter::kernel::layout::{Compiler, Geometry, IdKey, Ids, KeyValue, assign_ids, counts};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::json;

use super::{Opts, Pool, PoolSizes, Stat, met, stat};

/// Target of a full sync of 1M /32 + 100k prefixes (the issue's), seconds.
const TARGET_FULL: f64 = 0.300;
/// Target of a 1% delta, as a fraction of the full sync.
const TARGET_DELTA: f64 = 0.03;

/// How many of each kind a case holds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Case {
    name: &'static str,
    v4: usize,
    prefixes: usize,
    ports: usize,
    v6: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "1K /32",
        v4: 1_000,
        prefixes: 0,
        ports: 0,
        v6: 0,
    },
    Case {
        name: "100K /32",
        v4: 100_000,
        prefixes: 0,
        ports: 0,
        v6: 0,
    },
    Case {
        name: "1M /32",
        v4: 1_000_000,
        prefixes: 0,
        ports: 0,
        v6: 0,
    },
    Case {
        name: "1M /32 + 100k prefixes",
        v4: 1_000_000,
        prefixes: 100_000,
        ports: 0,
        v6: 0,
    },
    Case {
        name: "all: 1M /32 + 100k prefixes + 100k addr+port",
        v4: 1_000_000,
        prefixes: 100_000,
        ports: 100_000,
        v6: 0,
    },
    Case {
        name: "1M /32 + 1M /128",
        v4: 1_000_000,
        prefixes: 0,
        ports: 0,
        v6: 1_000_000,
    },
];

/// The cases of `--quick`: the small ones and "all" at a tenth.
const QUICK: &[Case] = &[
    Case {
        name: "1K /32",
        v4: 1_000,
        prefixes: 0,
        ports: 0,
        v6: 0,
    },
    Case {
        name: "100K /32",
        v4: 100_000,
        prefixes: 0,
        ports: 0,
        v6: 0,
    },
    Case {
        name: "100K /32 + 10k prefixes + 10k addr+port",
        v4: 100_000,
        prefixes: 10_000,
        ports: 10_000,
        v6: 0,
    },
];

fn drop_entry(net: IpNet, port: Option<u16>) -> Entry {
    Entry::new(
        net,
        port.map(|p| PortMatch {
            proto: Proto::Udp,
            port: p,
            side: Side::Src,
        }),
        Action::Drop,
    )
}

/// The entries of kind `k` (0 /32, 1 prefix, 2 addr+port, 3 /128) of the
/// pool, index `i`.
fn entry(pool: &Pool, k: usize, i: usize) -> Entry {
    match k {
        0 => drop_entry(
            IpNet::V4(Ipv4Net::from(Ipv4Addr::from(pool.v4_addrs[i]))),
            None,
        ),
        1 => drop_entry(IpNet::V4(pool.v4_prefixes[i]), None),
        2 => {
            let (a, p) = pool.v4_ports[i];
            drop_entry(IpNet::V4(Ipv4Net::from(Ipv4Addr::from(a))), Some(p))
        }
        _ => drop_entry(
            IpNet::V6(Ipv6Net::from(Ipv6Addr::from(pool.v6_addrs[i]))),
            None,
        ),
    }
}

/// The set of a case and the set after its 1% delta (from a pool with
/// 1% more of each kind: every 100th entry of each kind removed, as many
/// of the pool's extra ones added).
fn sets(case: &Case, seed: u64) -> (EntrySet, EntrySet, Vec<Entry>, Vec<Entry>) {
    let sizes = [case.v4, case.prefixes, case.ports, case.v6];
    let extra = sizes.map(|n| n.div_ceil(100));
    let pool = Pool::generate(
        seed,
        PoolSizes {
            v4_addrs: sizes[0] + extra[0],
            v4_prefixes: sizes[1] + extra[1],
            v4_ports: sizes[2] + extra[2],
            v6_addrs: sizes[3] + extra[3],
            v6_prefixes: 0,
            v6_ports: 0,
        },
    );
    let mut full = EntrySet::default();
    let mut after = EntrySet::default();
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for k in 0..4 {
        for i in 0..sizes[k] {
            let e = entry(&pool, k, i);
            if i % 100 == 50 || (sizes[k] < 100 && i == 0) {
                removed.push(e);
            } else {
                after.entries.push(e);
            }
            full.entries.push(e);
        }
        for i in sizes[k]..sizes[k] + extra[k] {
            after.entries.push(entry(&pool, k, i));
            added.push(entry(&pool, k, i));
        }
    }
    (full, after, removed, added)
}

/// Times of one round, seconds.
#[derive(Clone, Copy, Default)]
struct Times {
    ids: f64,
    counts: f64,
    build: f64,
    delta_ids: f64,
    delta_set: f64,
    delta_changes: f64,
}

/// One round of a case: its times, and the plan's stores and grace
/// periods.
fn round(
    full: &EntrySet,
    after: &EntrySet,
    removed: &[Entry],
    added: &[Entry],
    seed: u64,
) -> Result<(Times, usize, usize)> {
    let mut x = Times::default();
    let t = Instant::now();
    let ids: Ids = assign_ids(full, &Ids::default());
    x.ids = t.elapsed().as_secs_f64();
    // The geometry from the counts the build finds (no separate pass).
    let t = Instant::now();
    let mut comp = Compiler::build_for(full, &ids, |c| {
        let mut g = Geometry::for_counts(c, 1.0, seed);
        // Room for the delta's new ids (a freed id is reused only by a
        // later sync, so the delta's adds take ids past the set's).
        g.ids = ((c.ids + c.ids / 50 + 1).div_ceil(4096) * 4096) as u32;
        g
    })
    .context("full build")?;
    comp.fit_heap(1.25);
    x.build = t.elapsed().as_secs_f64();
    // `counts` alone, for comparison (not part of the sync).
    let t = Instant::now();
    let _ = counts(full, &ids)?;
    x.counts = t.elapsed().as_secs_f64();
    let mut comp2 = comp.clone();
    let t = Instant::now();
    let ids2 = assign_ids(after, &ids);
    x.delta_ids = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let plan = comp.update(after, &ids2).context("1% delta")?;
    x.delta_set = t.elapsed().as_secs_f64();
    // The same delta as key changes (what the agent's diff yields).
    let key = |e: &Entry| {
        IdKey::Entry(EntryKey {
            net: e.net,
            port: e.port,
        })
    };
    // `gone` removed, `new` added with their ids in `ids`.
    let changes_of = |gone: &[Entry], new: &[Entry], ids: &Ids| -> Vec<(IdKey, Option<KeyValue>)> {
        gone.iter()
            .map(|e| (key(e), None))
            .chain(new.iter().map(|e| {
                let k = key(e);
                let id = ids[&k];
                (k, Some(KeyValue::Entry { drop: true, id }))
            }))
            .collect()
    };
    let changes = changes_of(removed, added, &ids2);
    let t = Instant::now();
    let plan2 = comp2
        .update_changes(&changes)
        .context("1% delta, changes")?;
    x.delta_changes = t.elapsed().as_secs_f64();
    anyhow::ensure!(plan == plan2, "the two deltas differ");
    if let Ok(n) = std::env::var("EF_COMPILE_FLIP") {
        let back = changes_of(added, removed, &ids);
        let mut ms = [Vec::new(), Vec::new()];
        for _ in 0..n.parse::<usize>().unwrap_or(5).max(1) {
            for (i, c) in [&back, &changes].into_iter().enumerate() {
                let t = Instant::now();
                comp2.update_changes(c).context("back and forth")?;
                ms[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        eprintln!(
            "compile: back and forth, ms: back {:.0?}, forth {:.0?}",
            ms[0], ms[1]
        );
        for m in &mut ms {
            m.sort_by(f64::total_cmp);
        }
        eprintln!(
            "compile: back and forth, medians: back {:.1} ms, forth {:.1} ms",
            ms[0][ms[0].len() / 2],
            ms[1][ms[1].len() / 2]
        );
    }
    Ok((x, plan.writes(), plan.graces()))
}

/// Run the section.
pub fn run(o: &Opts) -> Result<()> {
    let cases = if o.quick { QUICK } else { CASES };
    let mut md = String::from(
        "## Compiler (v2 layout, userspace)\n\n\
         `edge_filter::kernel::layout` alone, no kernel. Full: `assign_ids` of the set (ids) and \
         the build (`Compiler::build_for` with `Geometry::for_counts` of the counts it \
         finds, `fit_heap`). `counts` (a separate pass, which `build_for` makes \
         unnecessary) is shown alone. 1% delta on it (1% of each \
         kind removed, as many added): from the whole set (`assign_ids` against the previous \
         ids + `Compiler::update`) and from the key changes (`Compiler::update_changes`, \
         what the agent's `SetChanges` gives; both return the same plan, checked). Prefixes \
         /16../24, address+port entries UDP source ports. Medians (min-max) over the rounds, \
         ms; ratios are medians of the rounds' ratios to full = ids + build.\n\n\
         | set | entries | ids | counts | build | full | delta: ids + update(set) | delta: update_changes | set / full | changes / full | plan stores | graces |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut jrows = Vec::new();
    let mut target_rows = Vec::new();
    let fmt = |s: Stat| {
        format!(
            "{:.1} ({:.1}-{:.1})",
            s.median * 1e3,
            s.min * 1e3,
            s.max * 1e3
        )
    };
    let only = std::env::var("EF_COMPILE_ONLY").ok();
    for case in cases {
        if only
            .as_ref()
            .is_some_and(|o| !case.name.starts_with(o.as_str()))
        {
            continue;
        }
        eprintln!("compile: {} ...", case.name);
        let (full, after, removed, added) = sets(case, o.seed);
        let mut rows: Vec<Times> = Vec::new();
        let (mut writes, mut graces) = (0, 0);
        for r in 0..o.rounds {
            let (x, w, g) = round(&full, &after, &removed, &added, o.seed ^ r as u64)?;
            (writes, graces) = (w, g);
            eprintln!(
                "compile: {} round {r}: ids {:.1} ms, counts {:.1} ms, build {:.1} ms, \
                 delta {:.1} + {:.1} ms, changes {:.1} ms",
                case.name,
                x.ids * 1e3,
                x.counts * 1e3,
                x.build * 1e3,
                x.delta_ids * 1e3,
                x.delta_set * 1e3,
                x.delta_changes * 1e3
            );
            rows.push(x);
        }
        let col = |f: fn(&Times) -> f64| stat(&rows.iter().map(f).collect::<Vec<_>>());
        let full_of = |x: &Times| x.ids + x.build;
        let (s_ids, s_counts, s_build) = (col(|x| x.ids), col(|x| x.counts), col(|x| x.build));
        let s_full = col(full_of);
        let s_set = col(|x| x.delta_ids + x.delta_set);
        let s_changes = col(|x| x.delta_changes);
        let r_set = col(|x| (x.delta_ids + x.delta_set) / (x.ids + x.build));
        let r_changes = col(|x| x.delta_changes / (x.ids + x.build));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1}% | {:.2}% | {} | {} |\n",
            case.name,
            full.entries.len(),
            fmt(s_ids),
            fmt(s_counts),
            fmt(s_build),
            fmt(s_full),
            fmt(s_set),
            fmt(s_changes),
            r_set.median * 100.0,
            r_changes.median * 100.0,
            writes,
            graces
        ));
        if case.name.starts_with("1M /32 + 100k prefixes") || case.name.starts_with("all") {
            target_rows.push(format!(
                "| {} | {:.1} ms | {} | {:.2}% | {} |\n",
                case.name,
                s_full.median * 1e3,
                met(s_full.median <= TARGET_FULL),
                r_changes.median * 100.0,
                met(r_changes.median <= TARGET_DELTA)
            ));
        }
        jrows.push(json!({
            "case": case, "entries": full.entries.len(),
            "removed": removed.len(), "added": added.len(),
            "ids": s_ids, "counts": s_counts, "build": s_build, "full": s_full,
            "delta_set": s_set, "delta_changes": s_changes,
            "delta_set_ratio": r_set, "delta_changes_ratio": r_changes,
            "plan_writes": writes, "plan_graces": graces,
        }));
    }
    if !target_rows.is_empty() {
        md.push_str(&format!(
            "\nTargets (compile only; a sync also copies the image and waits grace periods): \
             full <= {:.0} ms, delta (changes) <= {:.0}% of full.\n\n\
             | set | full | <= {:.0} ms | delta / full | <= {:.0}% |\n|---|---:|---|---:|---|\n",
            TARGET_FULL * 1e3,
            TARGET_DELTA * 100.0,
            TARGET_FULL * 1e3,
            TARGET_DELTA * 100.0
        ));
        for r in target_rows {
            md.push_str(&r);
        }
    }
    md.push('\n');
    let js = json!({"section": "compile", "rounds": o.rounds, "cases": jrows});
    o.emit(&md, &js)
}
