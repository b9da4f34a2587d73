//! The datapath section's v2 part: today's program ("old") and the v2
//! classifier side by side, under BPF_PROG_TEST_RUN behind the rewriter,
//! over three traffic mixes and three sets, with the physical-limit
//! baseline (`one_load`) measured in the same rounds.
//!
//! Sets: 1K exact addresses, 1M exact addresses, and "all" (1M exact +
//! 100k prefixes + 100k address+port) of each family (a tenth with
//! `--quick`). Mixes, each a table of sources the rewriter walks:
//!
//! - edge: 99% from 50,000 legitimate sources in no entry, 1% blocked
//!   sources drawn Zipf (s = 1.1) over the set's entries;
//! - flood: 100% blocked sources, Zipf;
//! - worst: uniform over the whole set, every entry once per table pass
//!   (the table is at least as large as the set).
//!
//! One round runs every case x program once; figures are medians over
//! rounds, ratios medians of per-round ratios.

use std::time::Instant;

use anyhow::{Context as _, Result};
use aya::{
    maps::Array,
    programs::{ProgramFd, TestRun as _, TestRunOptions},
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::v1maps::V1Maps;
use edge_filter::entry::EntrySet;
use edge_filter::kernel::layout::{Compiler, Geometry, Ids, assign_ids, counts};
use edge_filter::kernel::program::{self, Capacities};
use edge_filter::reference::{PacketInfo, Reference};
use edge_filter_common::{self as abi, ACTION_DROP, EntryKind, v2::summary_words};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::v2kernel::{BenchSizes, V2Maps};
use super::{BenchObj, Opts, Pool, PoolSizes, Slot, Stat, frame, met, stat};

/// `1000` as `1K`, `1000000` as `1M`.
pub fn human(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}K", n / 1000)
    } else {
        n.to_string()
    }
}

/// Targets (reported, never asserted).
const TARGET_EDGE_SCALE: f64 = 1.3;
const TARGET_WORST_VS_LOAD: f64 = 1.5;
const TARGET_ALL_VS_EXACT: f64 = 1.3;
const TARGET_STATS: f64 = 1.10;
/// Legitimate sources of the edge mix.
const LEGIT: usize = 50_000;
/// Zipf exponent of the blocked sources.
const ZIPF_S: f64 = 1.1;
/// Slots of the edge and flood tables.
const MIX_TABLE: u32 = 1 << 18;

/// The traffic mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// 99% legitimate, 1% blocked (Zipf).
    Edge,
    /// Every source blocked, Zipf.
    Flood,
    /// Uniform over the whole set.
    Worst,
}

impl Mix {
    const ALL: [Mix; 3] = [Mix::Edge, Mix::Flood, Mix::Worst];
    fn name(self) -> &'static str {
        match self {
            Mix::Edge => "edge",
            Mix::Flood => "flood",
            Mix::Worst => "worst",
        }
    }
}

/// A source that hits an entry: address (IPv4 in the first 4 bytes) and
/// source port.
pub type Target = ([u8; 16], u16);

/// One set: its entries, what hits them, its v2 object and old instances.
struct SetRun {
    name: &'static str,
    targets: [Vec<Target>; 2],
    legit: [Vec<Target>; 2],
    bench: BenchObj,
    /// The v2 maps (the runtime flags select sampled counters).
    maps: V2Maps,
    old: (aya::Ebpf, V1Maps, ProgramFd),
    old_ns: (aya::Ebpf, V1Maps, ProgramFd),
    /// Lines of the one-load array for each family.
    load_lines: [u32; 2],
    build_secs: f64,
    v2_bytes: u64,
}

/// The hitting sources of a set's entries, per family, in a shuffled
/// order (the Zipf ranks).
fn targets(set: &EntrySet, seed: u64) -> [Vec<Target>; 2] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: [Vec<Target>; 2] = Default::default();
    for e in &set.entries {
        let (f, addr) = match e.net {
            ipnet::IpNet::V4(n) => {
                let host: u32 = rng.random::<u32>() & !u32::from(n.netmask());
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&(u32::from(n.network()) | host).to_be_bytes());
                (0, a)
            }
            ipnet::IpNet::V6(n) => {
                let host: u128 = rng.random::<u128>() & !u128::from(n.netmask());
                (1, (u128::from(n.network()) | host).to_be_bytes())
            }
        };
        let port = e.port.map_or(rng.random_range(1024..=u16::MAX), |p| p.port);
        out[f].push((addr, port));
    }
    for t in &mut out {
        t.shuffle(&mut rng);
    }
    out
}

/// Cumulative Zipf weights of ranks 1..=n.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut c = Vec::with_capacity(n);
    let mut sum = 0.0;
    for r in 1..=n {
        sum += 1.0 / (r as f64).powf(ZIPF_S);
        c.push(sum);
    }
    for x in &mut c {
        *x /= sum;
    }
    c
}

fn slot(addr: [u8; 16], port: u16) -> Slot {
    Slot {
        addr,
        port: port.to_be_bytes(),
        _pad: [0; 6],
    }
}

/// The table of a mix over `targets` (IPv6 if `v6`).
pub fn mix_table(mix: Mix, targets: &[Target], legit: &[Target], seed: u64) -> Vec<Slot> {
    let mut rng = StdRng::seed_from_u64(seed);
    match mix {
        Mix::Worst => {
            let len = (targets.len() as u32).max(super::TABLE).next_power_of_two();
            let mut t: Vec<Slot> = targets.iter().map(|&(a, p)| slot(a, p)).collect();
            while t.len() < len as usize {
                let (a, p) = targets[rng.random_range(0..targets.len())];
                t.push(slot(a, p));
            }
            t.shuffle(&mut rng);
            t
        }
        Mix::Edge | Mix::Flood => {
            let cdf = zipf_cdf(targets.len());
            let blocked = if mix == Mix::Flood { 100 } else { 1 };
            (0..MIX_TABLE)
                .map(|_| {
                    if rng.random_range(0..100) < blocked {
                        let u: f64 = rng.random();
                        let r = cdf.partition_point(|&c| c < u).min(targets.len() - 1);
                        let (a, p) = targets[r];
                        slot(a, p)
                    } else {
                        let (a, p) = legit[rng.random_range(0..legit.len())];
                        slot(a, p)
                    }
                })
                .collect()
        }
    }
}

/// Legitimate sources: random addresses of the whole unicast space
/// (1.0.0.0-223.255.255.255, 2000::/3) with random ports that no entry of
/// `set` matches (the reference says so), so they spread over the
/// summary as real traffic does.
fn legit_sources(reference: &Reference, v6: bool, seed: u64) -> Vec<Target> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(LEGIT);
    while out.len() < LEGIT {
        let (src, bytes) = if v6 {
            let a: u128 = (rng.random::<u128>() & (u128::MAX >> 3)) | (1u128 << 125);
            (IpAddr::V6(Ipv6Addr::from(a)), a.to_be_bytes())
        } else {
            let a: u32 = rng.random_range(0x0100_0000..0xe000_0000);
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.to_be_bytes());
            (IpAddr::V4(Ipv4Addr::from(a)), b)
        };
        let port = rng.random_range(1024..=u16::MAX);
        let info = PacketInfo {
            src,
            dst: src,
            proto: 17,
            ports: Some((port, 53)),
            vlan_tags: 0,
            non_first_fragment: false,
        };
        if reference.decide(&info).reason == abi::REASON_PASS_NO_MATCH {
            out.push((bytes, port));
        }
    }
    out
}

fn old_instance(
    object: Option<&[u8]>,
    set: &EntrySet,
    caps: &Capacities,
) -> Result<(aya::Ebpf, V1Maps, ProgramFd)> {
    let mut ebpf = match object {
        Some(_) => super::load_v1(super::V1_PROGRAM_NOSTATS, caps)?,
        None => super::load_v1(super::V1_PROGRAM, caps)?,
    };
    let mut maps = V1Maps::from_ebpf(&mut ebpf)?;
    let st = maps.apply(set, 0)?;
    anyhow::ensure!(st.refused == 0, "{} entries refused", st.refused);
    let name = if object.is_some() {
        super::V1_PROGRAM_NOSTATS
    } else {
        super::V1_PROGRAM
    };
    let fd = program::xdp_named(&mut ebpf, name)?.fd()?.try_clone()?;
    Ok((ebpf, maps, fd))
}

/// Compile `set` into a fresh v2 object (its heap fitted to the set).
fn v2_instance(
    object: &[u8],
    set: &EntrySet,
    seed: u64,
) -> Result<(BenchObj, V2Maps, Geometry, f64, [u32; 2])> {
    let ids: Ids = assign_ids(set, &Ids::default());
    let c = counts(set, &ids)?;
    let mut g = Geometry::for_counts(&c, 1.0, seed);
    g.trie4 = true;
    g.heap_lines = g.heap_lines.max(1 << 22);
    let t = Instant::now();
    let mut comp = Compiler::build(set, &ids, g).context("compiling the v2 tables")?;
    comp.fit_heap(1.25);
    let build = t.elapsed().as_secs_f64();
    let g = *comp.geometry();
    let mut sizes = BenchSizes::of(&g)?;
    // The one-load baseline: an array as large as what a hit of each
    // family may touch (its summary and exact table), a power of two.
    let t4 = comp.tables();
    let lines = |bytes: usize| ((bytes / 64).max(1) as u32).next_power_of_two();
    let load_lines = [
        lines(t4.sum4.len() * 8 + t4.exact4.len() * 64),
        lines(t4.sum6.len() * 8 + t4.exact6.len() * 64),
    ];
    sizes.one_load_lines = load_lines[0].max(load_lines[1]);
    let mut bench = BenchObj::load_with(object, &Capacities::small(), &sizes)?;
    let mut maps = V2Maps::take(&mut bench.ebpf)?;
    maps.write_image(comp.tables())?;
    Ok((bench, maps, g, build, load_lines))
}

/// Drops counted by a v2 object's per-reason counters.
fn v2_totals(bench: &BenchObj) -> Result<(u64, u64)> {
    let m = bench.ebpf.map("COUNTERS").context("COUNTERS")?;
    let a: aya::maps::PerCpuArray<_, abi::Counter> = aya::maps::PerCpuArray::try_from(m)?;
    let (mut all, mut drop) = (0, 0);
    for r in 0..abi::REASON_COUNT {
        let n: u64 = a.get(&r, 0)?.iter().map(|c| c.packets).sum();
        all += n;
        if let Some(abi::ReasonInfo::Entry { action, .. }) = abi::ReasonInfo::decode(r)
            && action == ACTION_DROP
        {
            drop += n;
        }
    }
    Ok((all, drop))
}

/// The programs of a case, by label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Harness,
    OneLoad,
    Old,
    OldNs,
    V2,
    V2Ns,
    V2Sampled,
    V2Trie,
}

impl Prog {
    const ALL: [Prog; 8] = [
        Prog::Harness,
        Prog::OneLoad,
        Prog::Old,
        Prog::OldNs,
        Prog::V2,
        Prog::V2Ns,
        Prog::V2Sampled,
        Prog::V2Trie,
    ];
    fn label(self) -> &'static str {
        match self {
            Prog::Harness => "harness",
            Prog::OneLoad => "one load",
            Prog::Old => "old",
            Prog::OldNs => "old no-stats",
            Prog::V2 => "v2",
            Prog::V2Ns => "v2 no-stats",
            Prog::V2Sampled => "v2 sampled stats",
            Prog::V2Trie => "v2 trie",
        }
    }
}

/// The section's v2 part; returns its Markdown and JSON.
pub fn run(o: &Opts, bench_obj: &[u8], nostats_obj: &[u8]) -> Result<(String, serde_json::Value)> {
    let start = Instant::now();
    let big = if o.quick { 100_000 } else { 1_000_000 };
    let sizes = PoolSizes {
        v4_addrs: big,
        v4_prefixes: big / 10,
        v4_ports: big / 10,
        v6_addrs: big,
        v6_prefixes: big / 10,
        v6_ports: big / 10,
    };
    eprintln!("datapath v2: generating entry sets ({sizes:?})");
    let pool = Pool::generate(o.seed ^ 0x5e75, sizes);
    let specs: [(&'static str, EntrySet); 3] = [
        ("1K", pool.entry_set(1000, 1000, false)),
        (
            if o.quick { "100K" } else { "1M" },
            pool.entry_set(big, big, false),
        ),
        ("all", pool.entry_set(big, big, true)),
    ];
    let mut sets: Vec<SetRun> = Vec::new();
    for (i, (name, set)) in specs.into_iter().enumerate() {
        let caps = Capacities {
            addr_v6: (big as u32)
                .next_power_of_two()
                .max(abi::DEFAULT_ADDR_V6_ENTRIES),
            ..Capacities::default()
        };
        let t = Instant::now();
        let old = old_instance(None, &set, &caps)?;
        let old_ns = old_instance(Some(nostats_obj), &set, &caps)?;
        let old_secs = t.elapsed().as_secs_f64();
        let (bench, maps, g, build_secs, load_lines) =
            v2_instance(bench_obj, &set, o.seed ^ i as u64)?;
        let v2_bytes = summary_words(g.sum4_bits) as u64 * 8
            + g.buckets4 as u64 * 64
            + g.heap_lines as u64 * 64
            + summary_words(g.sum6_bits) as u64 * 8
            + g.buckets6 as u64 * 64
            + 65536 * 4;
        eprintln!(
            "datapath v2: set {name}: {} entries; old maps synced in {old_secs:.1} s (two instances); v2 compiled in {build_secs:.2} s ({:.1} MiB of arrays)",
            set.entries.len(),
            v2_bytes as f64 / 1048576.0
        );
        let targets = targets(&set, o.seed ^ 0x7a12 ^ i as u64);
        let reference = Reference::new(&set);
        let legit = [
            legit_sources(&reference, false, o.seed ^ 1),
            legit_sources(&reference, true, o.seed ^ 2),
        ];
        drop(reference);
        drop(set);
        sets.push(SetRun {
            name,
            targets,
            legit,
            bench,
            maps,
            old,
            old_ns,
            load_lines,
            build_secs,
            v2_bytes,
        });
    }
    // Cases: family x set x mix, each with its table.
    struct Case {
        v6: bool,
        set: usize,
        mix: Mix,
        table: Vec<Slot>,
    }
    let mut cases: Vec<Case> = Vec::new();
    for v6 in [false, true] {
        for (si, s) in sets.iter().enumerate() {
            for mix in Mix::ALL {
                let table = mix_table(
                    mix,
                    &s.targets[v6 as usize],
                    &s.legit[v6 as usize],
                    o.seed ^ (cases.len() as u64 + 100),
                );
                cases.push(Case {
                    v6,
                    set: si,
                    mix,
                    table,
                });
            }
        }
    }
    // Every program's fd.
    let fd = |s: &SetRun, p: Prog| -> Result<Option<ProgramFd>> {
        Ok(match p {
            Prog::Harness => None,
            Prog::OneLoad => Some(s.bench.fd("one_load")?),
            Prog::Old => Some(s.old.2.try_clone()?),
            Prog::OldNs => Some(s.old_ns.2.try_clone()?),
            Prog::V2 => Some(s.bench.fd("edge_filter_v2")?),
            Prog::V2Ns => Some(s.bench.fd("edge_filter_v2_nostats")?),
            // The production program with `CONFIG_COUNT_SAMPLED` set.
            Prog::V2Sampled => Some(s.bench.fd("edge_filter_v2")?),
            Prog::V2Trie => Some(s.bench.fd("edge_filter_v2_trie")?),
        })
    };
    let fds: Vec<Vec<Option<ProgramFd>>> = sets
        .iter()
        .map(|s| {
            Prog::ALL
                .iter()
                .map(|&p| fd(s, p))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let mac_a = [2, 0, 0, 0, 0, 1];
    let mac_b = [2, 0, 0, 0, 0, 2];
    // The harness is the "all" object's rewriter.
    let h = sets.len() - 1;
    // ns[case][prog] per round.
    let mut ns = vec![vec![Vec::<f64>::new(); Prog::ALL.len()]; cases.len()];
    let mut dropped = vec![[f64::NAN; 2]; cases.len()];
    for round in 0..o.rounds {
        for (ci, c) in cases.iter().enumerate() {
            // The one-load array as large as this family's structure.
            {
                let mask = sets[c.set].load_lines[c.v6 as usize] - 1;
                let m = sets[c.set]
                    .bench
                    .ebpf
                    .map_mut("ONE_LOAD_MASK")
                    .context("ONE_LOAD_MASK")?;
                let mut a: Array<_, u32> = Array::try_from(m)?;
                a.set(0, mask, 0)?;
            }
            let f = frame(c.v6, false, mac_b, mac_a);
            let len = c.table.len() as u32;
            sets[h].bench.fill(0, &c.table)?;
            sets[h]
                .bench
                .rewrite
                .set(0, f.rewrite_n(0, len, false), 0)?;
            let repeat = len.max(1 << 18);
            let si = c.set;
            for (pi, p) in Prog::ALL.iter().enumerate() {
                if *p == Prog::V2Trie && c.v6 {
                    continue;
                }
                match &fds[c.set][pi] {
                    None => {
                        let _ = sets[h].bench.jump.clear_index(&0);
                    }
                    Some(fd) => sets[h].bench.jump.set(0, fd, 0)?,
                }
                let before = if round == 0 {
                    match p {
                        Prog::V2 => Some(v2_totals(&sets[si].bench)?),
                        Prog::Old => Some(old_totals(&sets[si].old.1)?),
                        _ => None,
                    }
                } else {
                    None
                };
                // Sampled counters are a runtime flag of the same program:
                // set for this measurement only.
                if *p == Prog::V2Sampled {
                    sets[si].maps.set_runtime_flags(abi::CONFIG_COUNT_SAMPLED);
                }
                let res = sets[h]
                    .bench
                    .prog("rewrite")?
                    .test_run(TestRunOptions {
                        data_in: Some(&f.bytes),
                        repeat,
                        ..Default::default()
                    })
                    .with_context(|| format!("test run of {}", p.label()))?;
                if *p == Prog::V2Sampled {
                    sets[si].maps.set_runtime_flags(0);
                }
                anyhow::ensure!(res.return_value != 0, "the harness aborted");
                ns[ci][pi].push(res.duration.as_nanos() as f64);
                if let Some((a0, d0)) = before {
                    let (a1, d1) = match p {
                        Prog::V2 => v2_totals(&sets[si].bench)?,
                        _ => old_totals(&sets[si].old.1)?,
                    };
                    let k = if *p == Prog::V2 { 0 } else { 1 };
                    dropped[ci][k] = (d1 - d0) as f64 / (a1 - a0).max(1) as f64;
                }
            }
        }
        eprintln!("datapath v2: round {}/{} done", round + 1, o.rounds);
    }
    let _ = sets[h].bench.jump.clear_index(&0);

    // Report.
    let st = |ci: usize, p: Prog| stat(&ns[ci][p as usize]);
    let ratio = |a: &[f64], b: &[f64]| -> Stat {
        stat(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>())
    };
    let mut md = String::new();
    md.push_str("\n### Old layout against v2: traffic mixes\n\n");
    md.push_str(&format!(
        "Today's program (\"old\", maps with the agent's default capacities) and the v2 \
         classifier (bench-ebpf's `edge_filter_v2`, its maps filled by the `layout` compiler \
         through mmap; \"v2 trie\" takes IPv4 prefixes from a folded LPM trie instead of the \
         `/16` directory; \"v2 sampled stats\" is the same program with `entry_counters = \"sampled\"`: one \
         hit in 16 per CPU counted sixteen at a time) behind the same rewriter, same rounds. Sets per family: 1K exact \
         addresses, {0} exact addresses, and all = {0} exact + {1} prefixes + {1} \
         address+port. Mixes: edge = 99% from {LEGIT} legitimate sources (random addresses of \
         the whole unicast space and random ports that no entry matches) + 1% \
         blocked sources drawn Zipf (s = {ZIPF_S}) over the set's entries ({MIX_TABLE}-slot \
         table); flood = 100% blocked, Zipf; worst = uniform over the whole set, every entry \
         once per pass of a table at least as large as the set. One load = the parser plus \
         exactly one load from an array as large as the family's summary and exact table at \
         a uniformly random line (the physical limit of one cache miss). \"Dropped\" is the \
         share v2 (old) dropped in round 1. ns/packet, medians of {2} rounds; each \
         measurement runs max(table, 262,144) packets. v2 compile times: {3}.\n\n",
        if o.quick { "100K" } else { "1M" },
        if o.quick { "10K" } else { "100K" },
        o.rounds,
        sets.iter()
            .map(|s| format!(
                "{} {:.2} s ({:.1} MiB)",
                s.name,
                s.build_secs,
                s.v2_bytes as f64 / 1048576.0
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    md.push_str("| family | set | mix | dropped v2 (old) | harness | one load | old | old no-stats | v2 | v2 no-stats | v2 sampled stats | v2 trie | v2 / old | v2 stats cost | sampled stats cost |\n");
    md.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut jrows = Vec::new();
    let f1 = |s: Stat| {
        if s.median.is_nan() {
            "–".to_string()
        } else {
            format!("{:.1}", s.median)
        }
    };
    for (ci, c) in cases.iter().enumerate() {
        let s = &sets[c.set];
        let v2 = &ns[ci][Prog::V2 as usize];
        let vs_old = ratio(v2, &ns[ci][Prog::Old as usize]);
        let stats_cost = ratio(v2, &ns[ci][Prog::V2Ns as usize]);
        let sampled_cost = ratio(
            &ns[ci][Prog::V2Sampled as usize],
            &ns[ci][Prog::V2Ns as usize],
        );
        md.push_str(&format!(
            "| IPv{} | {} | {} | {:.0}% ({:.0}%) | {} | {} | {} | {} | {} | {} | {} | {} | {:.2}x | {:.2}x | {:.2}x |\n",
            if c.v6 { 6 } else { 4 },
            s.name,
            c.mix.name(),
            dropped[ci][0] * 100.0,
            dropped[ci][1] * 100.0,
            f1(st(ci, Prog::Harness)),
            f1(st(ci, Prog::OneLoad)),
            f1(st(ci, Prog::Old)),
            f1(st(ci, Prog::OldNs)),
            f1(st(ci, Prog::V2)),
            f1(st(ci, Prog::V2Ns)),
            f1(st(ci, Prog::V2Sampled)),
            f1(st(ci, Prog::V2Trie)),
            vs_old.median,
            stats_cost.median,
            sampled_cost.median,
        ));
        let mut jp = serde_json::Map::new();
        for p in Prog::ALL {
            jp.insert(p.label().into(), json!(st(ci, p)));
        }
        jrows.push(json!({
            "family": if c.v6 { 6 } else { 4 }, "set": s.name, "mix": c.mix.name(),
            "dropped_v2": dropped[ci][0], "dropped_old": dropped[ci][1],
            "ns_per_packet": jp, "v2_over_old": vs_old, "v2_stats_over_nostats": stats_cost,
            "v2_sampled_over_nostats": sampled_cost,
        }));
    }
    // Targets.
    let find = |v6: bool, set: usize, mix: Mix| {
        cases
            .iter()
            .position(|c| c.v6 == v6 && c.set == set && c.mix == mix)
            .expect("case")
    };
    let mut trows = Vec::new();
    let mut jt = Vec::new();
    let mut target = |name: String, s: Stat, limit: f64, le: bool| {
        let ok = if le {
            s.median <= limit
        } else {
            s.median >= limit
        };
        trows.push(format!(
            "| {name} | {:.2}x ({:.2}–{:.2}) | {} {limit}x | {} |",
            s.median,
            s.min,
            s.max,
            if le { "≤" } else { "≥" },
            met(ok)
        ));
        jt.push(json!({"figure": name, "value": s, "target": limit, "met": ok}));
    };
    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let v2 = |ci: usize| ns[ci][Prog::V2 as usize].clone();
        for big in [1, 2] {
            let (a, b) = (find(v6, big, Mix::Edge), find(v6, 0, Mix::Edge));
            target(
                format!("{fam} edge mix: v2 at {} / v2 at 1K", sets[big].name),
                ratio(&v2(a), &v2(b)),
                TARGET_EDGE_SCALE,
                true,
            );
            let (a, b) = (find(v6, big, Mix::Edge), find(v6, 0, Mix::Edge));
            target(
                format!("{fam} edge mix: old at {} / old at 1K", sets[big].name),
                ratio(&ns[a][Prog::Old as usize], &ns[b][Prog::Old as usize]),
                TARGET_EDGE_SCALE,
                true,
            );
        }
        for big in [1, 2] {
            let w = find(v6, big, Mix::Worst);
            target(
                format!("{fam} worst mix at {}: v2 / one load", sets[big].name),
                ratio(&v2(w), &ns[w][Prog::OneLoad as usize]),
                TARGET_WORST_VS_LOAD,
                true,
            );
        }
        for mix in Mix::ALL {
            let (a, b) = (find(v6, 2, mix), find(v6, 1, mix));
            target(
                format!(
                    "{fam} {} mix: v2 all / v2 {} alone",
                    mix.name(),
                    sets[1].name
                ),
                ratio(&v2(a), &v2(b)),
                TARGET_ALL_VS_EXACT,
                true,
            );
        }
        for big in [1, 2] {
            let w = find(v6, big, Mix::Worst);
            target(
                format!(
                    "{fam} worst mix at {}: v2 with / without per-entry stats",
                    sets[big].name
                ),
                ratio(&v2(w), &ns[w][Prog::V2Ns as usize]),
                TARGET_STATS,
                true,
            );
            target(
                format!(
                    "{fam} worst mix at {}: v2 with sampled (1/16) / without per-entry stats",
                    sets[big].name
                ),
                ratio(
                    &ns[w][Prog::V2Sampled as usize],
                    &ns[w][Prog::V2Ns as usize],
                ),
                TARGET_STATS,
                true,
            );
        }
    }
    md.push_str("\n| figure | value (min–max over rounds) | target | met |\n|---|---|---|---|\n");
    for r in &trows {
        md.push_str(r);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nv2 part took {:.0} s.\n",
        start.elapsed().as_secs_f64()
    ));
    Ok((md, json!({"cases": jrows, "targets": jt})))
}

fn old_totals(maps: &V1Maps) -> Result<(u64, u64)> {
    let c = maps.counters()?;
    let all = c.iter().map(|c| c.packets).sum();
    let dropped = [
        EntryKind::Prefix,
        EntryKind::Addr,
        EntryKind::PrefixPort,
        EntryKind::AddrPort,
    ]
    .iter()
    .map(|k| c[abi::reason_entry(*k, ACTION_DROP) as usize].packets)
    .sum();
    Ok((all, dropped))
}
