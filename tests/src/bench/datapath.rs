//! `ef-bench datapath`: what edge-filter's XDP program costs per packet in
//! the kernel, against baselines measured in the same run.
//!
//! Every program runs under BPF_PROG_TEST_RUN behind bench-ebpf's `rewrite`
//! harness: for each run the harness writes the next source address (and
//! source port) of a 65,536-slot table into the frame and tail-calls the
//! measured program. The table mixes hits (drawn from the case's entries)
//! and misses (10.0.0.0/8 or fd00::/8, never in a set) at [`HIT_PERCENT`]%,
//! so consecutive runs look up different keys spread over the whole map,
//! as a stream of different senders would, instead of one warm key. Every
//! row includes the harness (its cost alone is the first column), so
//! differences between rows are the programs' own costs.
//!
//! One round runs every case × program once (A B C … A B C …); figures are
//! medians over rounds, ratios medians of per-round ratios.

use std::time::Instant;

use super::v1maps::V1Maps;
use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{ProgramFd, TestRun as _, TestRunOptions},
};
use edge_filter::entry::EntrySet;
use edge_filter::kernel::program::{self, Capacities};
use edge_filter_common::{
    self as abi, ACTION_DROP, EntryKind, MAPBIT_ADDR_V4, MAPBIT_ADDR_V6, MAPBIT_PORT_V4,
    MAPBIT_PORT_V6, MAPBIT_PREFIX_V4, MAPBIT_PREFIX_V6,
};
use serde_json::json;

use super::{
    BenchObj, HitKind, Opts, Pool, PoolSizes, Stat, TABLE, frame, met, read_object, stat,
    table_len, table_n,
};

/// Share of the table that hits an entry.
pub const HIT_PERCENT: u32 = 50;
/// Targets (reported, never asserted).
const TARGET_1M_OVER_1K: f64 = 1.5;
const TARGET_LOOKUPS_OVER_SUM: f64 = 1.2;
const TARGET_STATS: f64 = 1.10;

/// One loaded edge-filter program with its own maps.
struct Ef {
    label: &'static str,
    _ebpf: Ebpf,
    maps: V1Maps,
    fd: ProgramFd,
}

fn load_ef(label: &'static str, object: Option<&[u8]>, set: &EntrySet) -> Result<Ef> {
    let caps = Capacities::default();
    let mut ebpf = match object {
        Some(_) => super::load_v1(super::V1_PROGRAM_NOSTATS, &caps)?,
        None => super::load_v1(super::V1_PROGRAM, &caps)?,
    };
    let mut maps = V1Maps::from_ebpf(&mut ebpf)?;
    let t = Instant::now();
    let st = maps.apply(set, 0)?;
    if st.refused != 0 {
        bail!("{label}: {} entries refused: {:?}", st.refused, st.refusals);
    }
    eprintln!(
        "datapath: {label}: {} entries loaded in {:.1} s",
        set.entries.len(),
        t.elapsed().as_secs_f64()
    );
    let name = if object.is_some() {
        super::V1_PROGRAM_NOSTATS
    } else {
        super::V1_PROGRAM
    };
    let fd = program::xdp_named(&mut ebpf, name)?.fd()?.try_clone()?;
    Ok(Ef {
        label,
        _ebpf: ebpf,
        maps,
        fd,
    })
}

/// What one measurement runs behind the harness.
#[derive(Clone, Debug)]
enum Target {
    /// Nothing: the harness alone (the tail call finds no program).
    Harness,
    /// A bench-ebpf program.
    Bench(&'static str),
    /// An edge-filter instance (index into the instances).
    Ef(usize),
}

/// One row of the report: a frame shape, an entry set, what hits.
struct Case {
    name: String,
    family: &'static str,
    vlan: bool,
    entries: String,
    /// Entry count on the x axis of the plot (exact-address cases).
    plot_n: Option<usize>,
    kind: HitKind,
    ef: usize,
    nostats: Option<usize>,
    /// `Config::nonempty` for the instance: which maps the program consults.
    mask: u32,
    /// Single-lookup programs and how often edge-filter does that lookup.
    lookups: Vec<(&'static str, u32)>,
    /// The case's source table ([`table_len`] slots: every hit entry once).
    table: Vec<super::Slot>,
}

impl Case {
    fn targets(&self) -> Vec<(String, Target)> {
        let mut t = vec![
            ("harness".to_string(), Target::Harness),
            ("bare XDP_DROP".to_string(), Target::Bench("bare_drop")),
            ("parse-only".to_string(), Target::Bench("parse_only")),
            ("edge-filter".to_string(), Target::Ef(self.ef)),
        ];
        if let Some(n) = self.nostats {
            t.push(("edge-filter no-entry-stats".to_string(), Target::Ef(n)));
        }
        for (p, _) in &self.lookups {
            t.push((p.to_string(), Target::Bench(p)));
        }
        t
    }
}

fn human_n(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}K", n / 1000)
    } else {
        n.to_string()
    }
}

/// Drop-verdict reasons (any entry kind).
fn drop_reasons() -> Vec<usize> {
    [
        EntryKind::Prefix,
        EntryKind::Addr,
        EntryKind::PrefixPort,
        EntryKind::AddrPort,
    ]
    .iter()
    .map(|k| abi::reason_entry(*k, ACTION_DROP) as usize)
    .collect()
}

fn totals(maps: &V1Maps) -> Result<(u64, u64)> {
    let c = maps.counters()?;
    let all = c.iter().map(|c| c.packets).sum();
    let dropped = drop_reasons().iter().map(|&r| c[r].packets).sum();
    Ok((all, dropped))
}

pub fn run(o: &Opts) -> Result<()> {
    let start = Instant::now();
    let bench_obj = super::bench_object(o)?;
    let nostats_obj = read_object(&o.nostats_object, "the no-entry-stats edge-filter object")?;
    let sizes = PoolSizes::standard(o.quick);
    eprintln!("datapath: generating entry sets ({sizes:?})");
    let pool = Pool::generate(o.seed, sizes);
    let small = 1000;
    let full_set = pool.entry_set(sizes.v4_addrs, sizes.v6_addrs, true);
    let small_set = pool.entry_set(small, small, false);
    let mut mid: Vec<usize> = vec![10_000, 100_000];
    mid.retain(|&n| n > small && n < sizes.v4_addrs);

    let mut efs = vec![
        load_ef("edge-filter 1K", None, &small_set)?,
        load_ef(
            "edge-filter 1K no-entry-stats",
            Some(&nostats_obj),
            &small_set,
        )?,
        load_ef("edge-filter full", None, &full_set)?,
        load_ef(
            "edge-filter full no-entry-stats",
            Some(&nostats_obj),
            &full_set,
        )?,
    ];
    let (e1k, e1k_ns, efull, efull_ns) = (0, 1, 2, 3);
    let mut mid_idx = Vec::new();
    for &n in &mid {
        let label: &'static str = Box::leak(format!("edge-filter {}", human_n(n)).into_boxed_str());
        efs.push(load_ef(label, None, &pool.entry_set(n, 0, false))?);
        mid_idx.push((n, efs.len() - 1));
    }
    let mut bench = BenchObj::load(&bench_obj, &Capacities::default())?;
    bench.load_entries(&full_set)?;

    // The cases.
    let mut cases: Vec<Case> = Vec::new();
    let shapes: Vec<(bool, bool)> = if o.quick {
        vec![(false, false), (true, false)]
    } else {
        vec![(false, false), (false, true), (true, false), (true, true)]
    };
    for &(v6, vlan) in &shapes {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let (m_addr, m_prefix, m_port) = if v6 {
            (MAPBIT_ADDR_V6, MAPBIT_PREFIX_V6, MAPBIT_PORT_V6)
        } else {
            (MAPBIT_ADDR_V4, MAPBIT_PREFIX_V4, MAPBIT_PORT_V4)
        };
        let sfx = if v6 { "v6" } else { "v4" };
        let l_addr: &'static str = if v6 {
            "lookup_addr_v6"
        } else {
            "lookup_addr_v4"
        };
        let l_prefix: &'static str = if v6 {
            "lookup_prefix_v6"
        } else {
            "lookup_prefix_v4"
        };
        let l_port: &'static str = if v6 {
            "lookup_port_v6"
        } else {
            "lookup_port_v4"
        };
        let (n_addr, n_prefix, n_port) = if v6 {
            (sizes.v6_addrs, sizes.v6_prefixes, sizes.v6_ports)
        } else {
            (sizes.v4_addrs, sizes.v4_prefixes, sizes.v4_ports)
        };
        let tag = format!("{sfx}{}", if vlan { " vlan" } else { "" });
        let mut push = |name: String,
                        entries: String,
                        plot_n: Option<usize>,
                        kind,
                        ef,
                        nostats,
                        mask,
                        lookups| {
            cases.push(Case {
                name,
                family,
                vlan,
                entries,
                plot_n,
                kind,
                ef,
                nostats,
                mask,
                lookups,
                table: Vec::new(),
            })
        };
        push(
            format!("{tag} addr 1K"),
            format!("{} /{}", human_n(small), if v6 { 128 } else { 32 }),
            Some(small),
            HitKind::Addr(small),
            e1k,
            Some(e1k_ns),
            m_addr,
            vec![],
        );
        if !v6 && !vlan {
            for &(n, i) in &mid_idx {
                push(
                    format!("{tag} addr {}", human_n(n)),
                    format!("{} /32", human_n(n)),
                    Some(n),
                    HitKind::Addr(n),
                    i,
                    None,
                    m_addr,
                    vec![],
                );
            }
        }
        push(
            format!("{tag} addr {}", human_n(n_addr)),
            format!("{} /{}", human_n(n_addr), if v6 { 128 } else { 32 }),
            Some(n_addr),
            HitKind::Addr(n_addr),
            efull,
            Some(efull_ns),
            m_addr,
            vec![(l_addr, 1)],
        );
        push(
            format!("{tag} prefix {}", human_n(n_prefix)),
            format!("{} prefixes", human_n(n_prefix)),
            None,
            HitKind::Prefix,
            efull,
            Some(efull_ns),
            m_prefix,
            vec![(l_prefix, 1)],
        );
        push(
            format!("{tag} addr+port {}", human_n(n_port)),
            format!("{} address+port", human_n(n_port)),
            None,
            HitKind::Port,
            efull,
            Some(efull_ns),
            m_port,
            vec![(l_port, 2)],
        );
        push(
            format!("{tag} all"),
            format!(
                "{} addr + {} prefixes + {} addr+port",
                human_n(n_addr),
                human_n(n_prefix),
                human_n(n_port)
            ),
            None,
            HitKind::All,
            efull,
            Some(efull_ns),
            m_addr | m_prefix | m_port,
            vec![(l_addr, 1), (l_prefix, 1), (l_port, 2)],
        );
    }
    // Each case's table: as many hit slots as its set has entries of the
    // kind it hits, so every one of them is looked up.
    for (i, c) in cases.iter_mut().enumerate() {
        let v6 = c.family == "IPv6";
        let hits = match c.kind {
            HitKind::Addr(n) => n.min(if v6 { sizes.v6_addrs } else { sizes.v4_addrs }),
            HitKind::Prefix => {
                if v6 {
                    sizes.v6_prefixes
                } else {
                    sizes.v4_prefixes
                }
            }
            HitKind::Port => {
                if v6 {
                    sizes.v6_ports
                } else {
                    sizes.v4_ports
                }
            }
            HitKind::All => {
                if v6 {
                    sizes.v6_addrs
                } else {
                    sizes.v4_addrs
                }
            }
        };
        let len = table_len(hits, HIT_PERCENT);
        c.table = table_n(&pool, v6, c.kind, HIT_PERCENT, o.seed ^ (i as u64 + 1), len);
    }
    eprintln!(
        "datapath: {} cases, {} rounds, set-up in {:.1} s",
        cases.len(),
        o.rounds,
        start.elapsed().as_secs_f64()
    );

    let min_repeat = if o.quick { TABLE } else { 4 * TABLE };
    let mac_a = [2, 0, 0, 0, 0, 1];
    let mac_b = [2, 0, 0, 0, 0, 2];
    // Results[case][target] = ns per round.
    let targets: Vec<Vec<(String, Target)>> = cases.iter().map(Case::targets).collect();
    let mut ns: Vec<Vec<Vec<f64>>> = targets
        .iter()
        .map(|t| vec![Vec::with_capacity(o.rounds); t.len()])
        .collect();
    let mut hit_ratio: Vec<f64> = vec![f64::NAN; cases.len()];
    let mut bench_fds = std::collections::HashMap::new();
    for t in targets.iter().flatten() {
        if let Target::Bench(p) = t.1 {
            bench_fds.entry(p).or_insert(bench.fd(p)?);
        }
    }
    for round in 0..o.rounds {
        for (ci, c) in cases.iter().enumerate() {
            let f = frame(c.family == "IPv6", c.vlan, mac_b, mac_a);
            let len = c.table.len() as u32;
            bench.fill(0, &c.table)?;
            bench.rewrite.set(0, f.rewrite_n(0, len, false), 0)?;
            let repeat = min_repeat.max(len);
            efs[c.ef].maps.set_config(0, c.mask)?;
            if let Some(n) = c.nostats {
                efs[n].maps.set_config(0, c.mask)?;
            }
            for (ti, (label, t)) in targets[ci].iter().enumerate() {
                match t {
                    Target::Harness => {
                        let _ = bench.jump.clear_index(&0);
                    }
                    Target::Bench(p) => bench.jump.set(0, &bench_fds[p], 0)?,
                    Target::Ef(i) => bench.jump.set(0, &efs[*i].fd, 0)?,
                }
                let before = match t {
                    Target::Ef(i) if round == 0 && *i == c.ef => Some(totals(&efs[*i].maps)?),
                    _ => None,
                };
                let rewrite = bench.prog("rewrite")?;
                let res = rewrite
                    .test_run(TestRunOptions {
                        data_in: Some(&f.bytes),
                        repeat,
                        ..Default::default()
                    })
                    .with_context(|| format!("BPF_PROG_TEST_RUN of {label} ({})", c.name))?;
                if res.return_value == 0 {
                    bail!(
                        "{} / {label}: the harness aborted (frame too short?)",
                        c.name
                    );
                }
                ns[ci][ti].push(res.duration.as_nanos() as f64);
                if let (Some((a0, d0)), Target::Ef(i)) = (before, t) {
                    let (a1, d1) = totals(&efs[*i].maps)?;
                    if a1 - a0 != repeat as u64 {
                        bail!(
                            "{}: edge-filter counted {} packets for {repeat} runs",
                            c.name,
                            a1 - a0
                        );
                    }
                    hit_ratio[ci] = (d1 - d0) as f64 / (a1 - a0) as f64;
                }
            }
        }
        eprintln!("datapath: round {}/{} done", round + 1, o.rounds);
    }
    let _ = bench.jump.clear_index(&0);
    let _ = &efs.iter().map(|e| e.label).collect::<Vec<_>>();

    let report = Report::build(&cases, &targets, &ns, &hit_ratio);
    let mut md = report.markdown(o, min_repeat, start.elapsed().as_secs_f64());
    drop(efs);
    drop(bench);
    let (v2_md, v2_json) = super::datapath_v2::run(o, &bench_obj, &nostats_obj)?;
    md.push_str(&v2_md);
    let mut json = report.json.clone();
    json["v2"] = v2_json;
    if let Some(svg) = &o.svg_out {
        let series = report.plot_series(&cases);
        super::plot::ns_per_packet(svg, &series)?;
        eprintln!("datapath: plot written to {}", svg.display());
    }
    o.emit(&md, &json)
}

/// Per-round values of one target, by label.
fn series<'a>(targets: &[(String, Target)], ns: &'a [Vec<f64>], label: &str) -> Option<&'a [f64]> {
    targets
        .iter()
        .position(|(l, _)| l == label)
        .map(|i| ns[i].as_slice())
}

/// Per-round `f(a, b)`, then the statistics.
fn per_round(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Stat {
    let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
    stat(&v)
}

struct Report {
    rows: Vec<String>,
    lookup_rows: Vec<String>,
    targets_rows: Vec<String>,
    json: serde_json::Value,
    medians: Vec<Vec<(String, Stat)>>,
}

fn fmt_ns(s: &Stat) -> String {
    if s.median.is_nan() {
        "–".into()
    } else {
        format!("{:.1}", s.median)
    }
}

impl Report {
    fn build(
        cases: &[Case],
        targets: &[Vec<(String, Target)>],
        ns: &[Vec<Vec<f64>>],
        hit_ratio: &[f64],
    ) -> Report {
        let mut rows = Vec::new();
        let mut lookup_rows = Vec::new();
        let mut targets_rows = Vec::new();
        let mut jcases = Vec::new();
        let mut medians = Vec::new();
        for (ci, c) in cases.iter().enumerate() {
            let t = &targets[ci];
            let get = |l: &str| series(t, &ns[ci], l).unwrap_or(&[]);
            let st = |l: &str| stat(get(l));
            let ef = get("edge-filter");
            let parse = get("parse-only");
            let lookup_cost = per_round(ef, parse, |a, b| a - b);
            let stats_ratio = c
                .nostats
                .map(|_| per_round(ef, get("edge-filter no-entry-stats"), |a, b| a / b));
            rows.push(format!(
                "| {} | {} | {:.0}% | {} | {} | {} | {} | {} | {} | {} |",
                c.name,
                c.entries,
                hit_ratio[ci] * 100.0,
                fmt_ns(&st("harness")),
                fmt_ns(&st("bare XDP_DROP")),
                fmt_ns(&st("parse-only")),
                fmt_ns(&st("edge-filter")),
                fmt_ns(&st("edge-filter no-entry-stats")),
                fmt_ns(&lookup_cost),
                stats_ratio.map_or("–".into(), |s| format!("{:.2}x", s.median)),
            ));
            medians.push(t.iter().map(|(l, _)| (l.clone(), st(l))).collect());
            let mut jl = serde_json::Map::new();
            for (l, _) in t {
                jl.insert(l.clone(), json!(st(l)));
            }
            let mut sum_stat = None;
            if c.lookups.len() > 1 {
                // Per round: (ef - parse) / sum(mult * (lookup - parse)).
                let rounds = ef.len();
                let mut ratio = Vec::with_capacity(rounds);
                let mut sums = Vec::with_capacity(rounds);
                for r in 0..rounds {
                    let sum: f64 = c
                        .lookups
                        .iter()
                        .map(|(p, m)| *m as f64 * (get(p)[r] - parse[r]))
                        .sum();
                    sums.push(sum);
                    ratio.push((ef[r] - parse[r]) / sum);
                }
                let s = stat(&ratio);
                let parts: Vec<String> = c
                    .lookups
                    .iter()
                    .map(|(p, m)| {
                        let one = per_round(get(p), parse, |a, b| a - b);
                        format!("{}{} {:.1}", if *m > 1 { "2× " } else { "" }, p, one.median)
                    })
                    .collect();
                lookup_rows.push(format!(
                    "| {} | {} | {:.1} | {:.1} | {:.2}x | ≤ {TARGET_LOOKUPS_OVER_SUM}x | {} |",
                    c.name,
                    parts.join(" + "),
                    stat(&sums).median,
                    lookup_cost.median,
                    s.median,
                    met(s.median <= TARGET_LOOKUPS_OVER_SUM)
                ));
                targets_rows.push(format!(
                    "| {}: edge-filter's lookups / sum of single lookups | {:.2}x ({:.2}–{:.2}) | ≤ {TARGET_LOOKUPS_OVER_SUM}x | {} |",
                    c.name,
                    s.median,
                    s.min,
                    s.max,
                    met(s.median <= TARGET_LOOKUPS_OVER_SUM)
                ));
                sum_stat = Some(s);
            }
            if let (Some(s), true) = (&stats_ratio, c.lookups.len() > 1) {
                targets_rows.push(format!(
                    "| {}: with / without per-entry stats | {:.3}x ({:.3}–{:.3}) | ≤ {TARGET_STATS}x | {} |",
                    c.name,
                    s.median,
                    s.min,
                    s.max,
                    met(s.median <= TARGET_STATS)
                ));
            }
            jcases.push(json!({
                "case": c.name,
                "family": c.family,
                "vlan": c.vlan,
                "entries": c.entries,
                "measured_drop_ratio": hit_ratio[ci],
                "ns_per_packet": jl,
                "lookup_cost_over_parse": lookup_cost,
                "with_over_without_entry_stats": stats_ratio,
                "lookups_over_sum_of_single": sum_stat,
            }));
        }
        // 1M / 1K: the biggest exact-address case against the 1K one, per
        // family and frame shape.
        let mut scale = Vec::new();
        for (ci, c) in cases.iter().enumerate() {
            if c.plot_n.is_none() || c.kind == HitKind::Addr(1000) {
                continue;
            }
            let biggest = cases
                .iter()
                .filter(|d| d.family == c.family && d.vlan == c.vlan && d.plot_n.is_some())
                .map(|d| d.plot_n.unwrap_or(0))
                .max();
            if biggest != c.plot_n {
                continue;
            }
            let Some(k) = cases.iter().position(|d| {
                d.family == c.family && d.vlan == c.vlan && d.kind == HitKind::Addr(1000)
            }) else {
                continue;
            };
            let g = |i: usize, l: &str| series(&targets[i], &ns[i], l).unwrap_or(&[]).to_vec();
            let gross = per_round(&g(ci, "edge-filter"), &g(k, "edge-filter"), |a, b| a / b);
            let net_big: Vec<f64> = g(ci, "edge-filter")
                .iter()
                .zip(g(ci, "harness"))
                .map(|(a, h)| a - h)
                .collect();
            let net_small: Vec<f64> = g(k, "edge-filter")
                .iter()
                .zip(g(k, "harness"))
                .map(|(a, h)| a - h)
                .collect();
            let net = per_round(&net_big, &net_small, |a, b| a / b);
            targets_rows.push(format!(
                "| {} / {}: edge-filter ns/packet (net of harness: {:.2}x) | {:.2}x ({:.2}–{:.2}) | ≤ {TARGET_1M_OVER_1K}x | {} |",
                c.name,
                cases[k].name,
                net.median,
                gross.median,
                gross.min,
                gross.max,
                met(gross.median <= TARGET_1M_OVER_1K)
            ));
            scale.push(json!({"big": c.name, "small": cases[k].name, "gross": gross, "net_of_harness": net}));
        }
        let json = json!({
            "section": "datapath",
            "hit_percent": HIT_PERCENT,
            "cases": jcases,
            "scale": scale,
        });
        Report {
            rows,
            lookup_rows,
            targets_rows,
            json,
            medians,
        }
    }

    fn plot_series(&self, cases: &[Case]) -> Vec<(String, Vec<(f64, f64)>)> {
        let mut out = Vec::new();
        for prog in ["bare XDP_DROP", "parse-only", "edge-filter"] {
            let mut pts = Vec::new();
            for (ci, c) in cases.iter().enumerate() {
                if c.family != "IPv4" || c.vlan {
                    continue;
                }
                let Some(n) = c.plot_n else { continue };
                if let Some((_, s)) = self.medians[ci].iter().find(|(l, _)| l == prog) {
                    pts.push((n as f64, s.median));
                }
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            out.push((format!("{prog} (IPv4 /32)"), pts));
        }
        out
    }

    fn markdown(&self, o: &Opts, repeat: u32, secs: f64) -> String {
        let mut s = String::new();
        s.push_str("\n## Datapath in the kernel (BPF_PROG_TEST_RUN)\n\n");
        s.push_str(&format!(
            "ns/packet, median of {} rounds (each round runs every case × program once, \
             interleaved), {} runs per measurement. Each run goes through a tiny XDP \
             *rewriter* harness (`bench-ebpf`'s `rewrite`): it writes the next source \
             address and port from the case's table into the frame and tail-calls the \
             measured program, so every run looks up a different key ({HIT_PERCENT}% hits \
             drawn from the case's entries, the rest misses from 10.0.0.0/8 or fd00::/8). \
             BPF_PROG_TEST_RUN alone repeats one frame, whose single key stays warm in the \
             cache; the rewriter keeps the access pattern of real traffic from many senders. \
             The harness column is the rewriter alone (its tail call finds no program); \
             every other column includes it, so differences between columns are the \
             programs' own costs. Frames are 60-byte UDP (IPv4) / 80-byte (IPv6), plus 4 \
             with one 802.1Q tag. Maps have the agent's default capacities (1,048,576 IPv4 \
             addresses, 262,144 of the others) whatever the entry count. \"Dropped\" is \
             the share of runs edge-filter dropped in round 1 (read from its counters; \
             the table's hit share is {HIT_PERCENT}%). Lookup cost = edge-filter − \
             parse-only. Section took {secs:.0} s.\n\n",
            o.rounds, repeat
        ));
        s.push_str("| case | entries | dropped | harness | bare XDP_DROP | parse-only | edge-filter | edge-filter no-entry-stats | lookup cost | with / without stats |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            s.push_str(r);
            s.push('\n');
        }
        s.push_str(
            "\n### Edge-filter's lookups against the single lookups it needs\n\n\
             Each single-lookup program is the same parser plus exactly one map lookup \
             (`lookup_*` in `bench-ebpf`); its cost alone is its ns/packet minus \
             parse-only's, in the same round. For a UDP packet edge-filter does one \
             address lookup, one prefix (LPM) lookup and two address+port lookups (source \
             and destination side; the entries are source-side, so the second one always \
             misses and is priced with the source-side program). edge-filter's lookups = \
             edge-filter − parse-only, which also holds its config read, verdict ranking \
             and counter update.\n\n\
             | case | single lookups (ns) | sum (ns) | edge-filter's lookups (ns) | ratio | target | met |\n\
             |---|---|---:|---:|---:|---|---|\n",
        );
        for r in &self.lookup_rows {
            s.push_str(r);
            s.push('\n');
        }
        s.push_str(
            "\n### Datapath targets\n\n| figure | value (min–max over rounds) | target | met |\n|---|---|---|---|\n",
        );
        for r in &self.targets_rows {
            s.push_str(r);
            s.push('\n');
        }
        if o.svg_out.is_some() {
            s.push_str(
                "\n![ns/packet against entry count](datapath.svg)\n\n\
                 *ns/packet (median) against the number of IPv4 /32 entries, bare XDP_DROP, \
                 parse-only and edge-filter, all behind the rewriter harness.*\n",
            );
        }
        s
    }
}
