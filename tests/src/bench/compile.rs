//! `ef-bench compile`: the v2 compiler (`edge_filter::layout`) alone, in
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

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhow::{Context as _, Result};
use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter::layout::{Compiler, Geometry, Ids, assign_ids, counts};
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
fn sets(case: &Case, seed: u64) -> (EntrySet, EntrySet, usize) {
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
    let mut churn = 0;
    for k in 0..4 {
        for i in 0..sizes[k] {
            let e = entry(&pool, k, i);
            if i % 100 == 50 || (sizes[k] < 100 && i == 0) {
                churn += 1;
            } else {
                after.entries.push(e.clone());
            }
            full.entries.push(e);
        }
        for i in sizes[k]..sizes[k] + extra[k] {
            after.entries.push(entry(&pool, k, i));
            churn += 1;
        }
    }
    (full, after, churn)
}

/// One round of a case: (ids, build, delta ids, delta update, counts) in
/// seconds, and the plan's stores and grace periods.
fn round(full: &EntrySet, after: &EntrySet, seed: u64) -> Result<([f64; 5], usize, usize)> {
    let t = Instant::now();
    let ids: Ids = assign_ids(full, &Ids::default());
    let t_ids = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let c = counts(full, &ids)?;
    let t_counts = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut g = Geometry::for_counts(&c, 1.0, seed);
    // Room for the delta's new ids (a freed id is reused only by a later
    // sync, so the delta's adds take ids past the set's).
    g.ids = ((c.ids + c.ids / 50 + 1).div_ceil(4096) * 4096) as u32;
    let mut comp = Compiler::build(full, &ids, g).context("full build")?;
    comp.fit_heap(1.25);
    let t_build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ids2 = assign_ids(after, &ids);
    let t_ids2 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let plan = comp.update(after, &ids2).context("1% delta")?;
    let t_update = t.elapsed().as_secs_f64();
    Ok((
        [t_ids, t_build, t_ids2, t_update, t_counts],
        plan.writes(),
        plan.graces(),
    ))
}

/// Run the section.
pub fn run(o: &Opts) -> Result<()> {
    let cases = if o.quick { QUICK } else { CASES };
    let mut md = String::from(
        "## Compiler (v2 layout, userspace)\n\n\
         `edge_filter::layout` alone, no kernel: ids (`assign_ids` of a fresh set), the \
         full build (`counts`, `Geometry::for_counts`, `Compiler::build`, `fit_heap`) and a \
         1% delta on it (1% of each kind removed, as many added: `assign_ids` against the \
         previous ids, then `Compiler::update`, which returns the plan). Prefixes /16../24, \
         address+port entries UDP source ports. Medians (min-max) over the rounds, ms; the \
         delta ratio is (delta ids + update) / (ids + build), the median of the rounds'.\n\n\
         | set | entries | ids | build | full (ids + build) | delta ids | delta update | delta / full | plan stores | graces |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut jrows = Vec::new();
    let mut target_rows = Vec::new();
    let fmt = |s: Stat| format!("{:.1} ({:.1}-{:.1})", s.median * 1e3, s.min * 1e3, s.max * 1e3);
    let only = std::env::var("EF_COMPILE_ONLY").ok();
    for case in cases {
        if only.as_ref().is_some_and(|o| !case.name.starts_with(o.as_str())) {
            continue;
        }
        eprintln!("compile: {} ...", case.name);
        let (full, after, churn) = sets(case, o.seed);
        let mut t: [Vec<f64>; 5] = Default::default();
        let mut fulls = Vec::new();
        let mut ratios = Vec::new();
        let (mut writes, mut graces) = (0, 0);
        for r in 0..o.rounds {
            let (x, w, g) = round(&full, &after, o.seed ^ r as u64)?;
            for (v, xi) in t.iter_mut().zip(x) {
                v.push(xi);
            }
            fulls.push(x[0] + x[1]);
            ratios.push((x[2] + x[3]) / (x[0] + x[1]));
            (writes, graces) = (w, g);
            eprintln!(
                "compile: {} round {r}: ids {:.1} ms, counts {:.1} ms, build {:.1} ms, delta {:.1} + {:.1} ms",
                case.name,
                x[0] * 1e3,
                x[4] * 1e3,
                x[1] * 1e3,
                x[2] * 1e3,
                x[3] * 1e3
            );
        }
        let s = t.clone().map(|v| stat(&v));
        let sf = stat(&fulls);
        let sr = stat(&ratios);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2}% | {} | {} |\n",
            case.name,
            full.entries.len(),
            fmt(s[0]),
            fmt(s[1]),
            fmt(sf),
            fmt(s[2]),
            fmt(s[3]),
            sr.median * 100.0,
            writes,
            graces
        ));
        if case.name.starts_with("1M /32 + 100k prefixes") || case.name.starts_with("all") {
            target_rows.push(format!(
                "| {} | {:.1} ms | {} | {:.2}% | {} |\n",
                case.name,
                sf.median * 1e3,
                met(sf.median <= TARGET_FULL),
                sr.median * 100.0,
                met(sr.median <= TARGET_DELTA)
            ));
        }
        jrows.push(json!({
            "case": case, "entries": full.entries.len(), "churn": churn,
            "ids": s[0], "build": s[1], "full": sf, "delta_ids": s[2], "delta_update": s[3],
            "delta_ratio": sr, "plan_writes": writes, "plan_graces": graces,
        }));
    }
    if !target_rows.is_empty() {
        md.push_str(&format!(
            "\nTargets (compile only; a sync also copies the image): full <= {:.0} ms, \
             delta <= {:.0}% of full.\n\n| set | full | <= {:.0} ms | delta / full | <= {:.0}% |\n\
             |---|---:|---|---:|---|\n",
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
