//! `ef-bench memory`: the kernel's own accounting of edge-filter's map
//! memory (`memlock` in `/proc/self/fdinfo/<map fd>`, which on Linux >= 6.4
//! is the map type's `map_mem_usage()`), with 1,000,000 IPv4 /32 entries
//! loaded, per entry and against the formula of each map type.

use std::fs;

use super::v1maps::V1Maps;
use anyhow::{Context as _, Result};
use aya::maps::MapInfo;
use edge_filter::kernel::program::Capacities;
use serde_json::json;

use super::{Opts, Pool, PoolSizes};

/// `sizeof(struct htab_elem)` on 64-bit kernels (hash node + LRU/per-CPU
/// union + hash, 8-aligned).
const HTAB_ELEM: u64 = 48;
/// `sizeof(struct bucket)`: list head + lock, padded.
const HTAB_BUCKET: u64 = 16;
/// `HASHTAB_MAP_LOCK_COUNT`: per-CPU lock-depth counters per map.
const HTAB_LOCKS: u64 = 8;
/// `sizeof(struct lpm_trie_node)` without its data: two child pointers,
/// prefix length, flags.
const LPM_NODE: u64 = 24;

fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

fn possible_cpus() -> u64 {
    super::v2kernel::possible_cpus().map_or(1, u64::from)
}

/// One map's fdinfo.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct MapMem {
    name: String,
    map_type: u32,
    key_size: u64,
    value_size: u64,
    max_entries: u64,
    memlock: u64,
}

fn scan() -> Result<Vec<MapMem>> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc/self/fd")? {
        let e = e?;
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))?;
        let field = |k: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field("map_id:") as u32;
        let name = MapInfo::from_id(id)
            .ok()
            .and_then(|m| m.name_as_str().map(str::to_string))
            .unwrap_or_default();
        out.push(MapMem {
            name,
            map_type: field("map_type:") as u32,
            key_size: field("key_size:"),
            value_size: field("value_size:"),
            max_entries: field("max_entries:"),
            memlock: field("memlock:"),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The formula's bytes and its statement.
fn formula(m: &MapMem, entries: u64, cpus: u64) -> Option<(u64, String)> {
    match m.map_type {
        // BPF_MAP_TYPE_HASH, preallocated.
        1 => {
            let elem = HTAB_ELEM + round8(m.key_size) + round8(m.value_size);
            let buckets = m.max_entries.next_power_of_two();
            let bytes = buckets * HTAB_BUCKET
                + HTAB_LOCKS * 4 * cpus
                + elem * (m.max_entries + cpus)
                + 8 * cpus;
            Some((
                bytes,
                format!(
                    "{buckets} buckets × {HTAB_BUCKET} + ({} + {cpus} CPUs) × {elem} B elements \
                     ({HTAB_ELEM} + key {}→{} + value {}→{}) + per-CPU bits",
                    m.max_entries,
                    m.key_size,
                    round8(m.key_size),
                    m.value_size,
                    round8(m.value_size)
                ),
            ))
        }
        // BPF_MAP_TYPE_LPM_TRIE: nodes allocated per entry.
        11 => {
            let data = m.key_size - 4;
            let node = LPM_NODE + data + m.value_size;
            Some((
                node * entries,
                format!(
                    "{entries} entries × {node} B nodes ({LPM_NODE} + data {data} + value {})",
                    m.value_size
                ),
            ))
        }
        _ => None,
    }
}

pub fn run(o: &Opts) -> Result<()> {
    let sizes = PoolSizes::standard(o.quick);
    let pool = Pool::generate(o.seed, sizes);
    let set = pool.entry_set(sizes.v4_addrs, sizes.v6_addrs, true);
    let mut ebpf = super::load_v1(super::V1_PROGRAM, &Capacities::default())?;
    let mut maps = V1Maps::from_ebpf(&mut ebpf)?;
    maps.apply(&set, 0)?;
    let counts = maps.read()?.counts();
    let cpus = possible_cpus();
    let mems = scan().context("reading the maps' fdinfo")?;
    let mut rows = Vec::new();
    let mut jrows = Vec::new();
    let (mut total, mut total_entries) = (0u64, 0u64);
    for m in &mems {
        let entries = counts
            .iter()
            .find(|(n, _)| *n == m.name)
            .map_or(0, |(_, c)| *c as u64);
        total += m.memlock;
        total_entries += entries;
        let f = formula(m, entries, cpus);
        let per = |b: u64| {
            if entries == 0 {
                "–".to_string()
            } else {
                format!("{:.1}", b as f64 / entries as f64)
            }
        };
        let kind = match m.map_type {
            1 => "hash",
            2 => "array",
            6 => "per-CPU array",
            11 => "LPM trie",
            _ => "other",
        };
        rows.push(format!(
            "| {} | {kind} | {} / {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            m.name,
            m.key_size,
            m.value_size,
            m.max_entries,
            entries,
            m.memlock as f64 / 1048576.0,
            per(m.memlock),
            f.as_ref().map_or("–".into(), |(b, _)| format!(
                "{:.2}",
                *b as f64 / 1048576.0
            )),
            f.as_ref().map_or("–".into(), |(b, _)| per(*b)),
            f.as_ref().map_or("–".into(), |(_, s)| s.clone()),
        ));
        jrows.push(json!({
            "map": m, "entries": entries, "formula_bytes": f.as_ref().map(|x| x.0),
            "formula": f.as_ref().map(|x| x.1.clone()),
        }));
    }
    let mut md = String::from("\n## Map memory\n\n");
    md.push_str(&format!(
        "Kernel accounting (`memlock:` in the map fds' fdinfo, i.e. the map type's \
         `map_mem_usage()`) with {} entries loaded through the agent's sync: {} IPv4 /32, \
         {} IPv4 prefixes, {} IPv4 address+port, {} IPv6 /128, {} IPv6 prefixes, {} IPv6 \
         address+port; default capacities; {cpus} possible CPUs. Hash maps are \
         preallocated, so their memory follows their capacity, not their fill; LPM tries \
         allocate one node per entry (the kernel's usage counts entries, not the \
         intermediate nodes it may add). Formula: hash = `roundup_pow2(max_entries)` × \
         16 B buckets + (max_entries + CPUs) × (48 B `htab_elem` + key and value each \
         rounded up to 8) + per-CPU lock counters; LPM trie = entries × (24 B \
         `lpm_trie_node` + key data + value).\n\n",
        set.entries.len(),
        sizes.v4_addrs,
        sizes.v4_prefixes,
        sizes.v4_ports,
        sizes.v6_addrs,
        sizes.v6_prefixes,
        sizes.v6_ports
    ));
    md.push_str("| map | type | key / value B | max_entries | entries | memlock MiB | B/entry | formula MiB | formula B/entry | formula |\n");
    md.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in &rows {
        md.push_str(r);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nAll maps: {:.1} MiB for {} entries = {:.1} B/entry (capacity reserved for \
         growth included).\n",
        total as f64 / 1048576.0,
        total_entries,
        total as f64 / total_entries.max(1) as f64
    ));
    drop(maps);
    drop(ebpf);
    let (v2_md, v2_json) = v2_memory(o, cpus)?;
    md.push_str(&v2_md);
    let js = json!({"section": "memory", "possible_cpus": cpus, "maps": jrows, "total_bytes": total, "total_entries": total_entries, "v2": v2_json});
    o.emit(&md, &js)
}

/// Kernel memory of today's maps and of the v2 maps for 1K, 100K and 1M
/// IPv4 /32 entries (one object alive at a time, so the fd scan sees only
/// its maps).
fn v2_memory(o: &Opts, cpus: u64) -> Result<(String, serde_json::Value)> {
    use edge_filter::kernel::layout::{Compiler, Geometry, Ids, assign_ids, counts};
    use edge_filter_common::v2::MAP_V2_STATS;

    const TARGET_PER_ADDR: f64 = 32.0;
    const TARGET_1K_TOTAL: f64 = 2.0 * 1048576.0;
    let bench_obj = super::bench_object(o)?;
    let ns: &[usize] = if o.quick {
        &[1000, 10_000, 100_000]
    } else {
        &[1000, 100_000, 1_000_000]
    };
    let pool = Pool::generate(
        o.seed,
        PoolSizes {
            v4_addrs: *ns.last().expect("sizes"),
            v4_prefixes: 0,
            v4_ports: 0,
            v6_addrs: 0,
            v6_prefixes: 0,
            v6_ports: 0,
        },
    );
    // The maps the v2 program needs (the bench object also holds today's
    // entry maps, the rewriter's and the baselines', which v2 does not).
    let v2_map = |name: &str| {
        name.starts_with("V2_")
            || ["COUNTERS", "LAST", "EVENTS", "SAMPLE", "SAMPLE_STATE"].contains(&name)
    };
    let mut rows = Vec::new();
    let mut jrows = Vec::new();
    let mut targets = Vec::new();
    for &n in ns {
        let set = pool.entry_set(n, 0, false);
        // Today's program, default capacities (what the agent loads).
        let old_total = {
            let mut ebpf = super::load_v1(super::V1_PROGRAM, &Capacities::default())?;
            let mut maps = V1Maps::from_ebpf(&mut ebpf)?;
            maps.apply(&set, 0)?;
            scan()?.iter().map(|m| m.memlock).sum::<u64>()
        };
        // v2, its tier fitted to the set (no IPv4 trie: the directory).
        let ids: Ids = assign_ids(&set, &Ids::default());
        let c = counts(&set, &ids)?;
        let mut g = Geometry::for_counts(&c, 1.0, o.seed);
        g.heap_lines = g.heap_lines.max(1 << 16);
        let mut comp = Compiler::build(&set, &ids, g)?;
        comp.fit_heap(1.25);
        let sizes = super::v2kernel::BenchSizes::of(comp.geometry())?;
        let mut bench = super::BenchObj::load_with(&bench_obj, &Capacities::small(), &sizes)?;
        let mut v2 = super::v2kernel::V2Maps::take(&mut bench.ebpf)?;
        v2.write_image(comp.tables())?;
        let mems: Vec<MapMem> = scan()?.into_iter().filter(|m| v2_map(&m.name)).collect();
        drop(v2);
        drop(bench);
        let total: u64 = mems.iter().map(|m| m.memlock).sum();
        let stats: u64 = mems
            .iter()
            .filter(|m| m.name == MAP_V2_STATS)
            .map(|m| m.memlock)
            .sum();
        let classifier = total - stats;
        let per = |b: u64| b as f64 / n as f64;
        let breakdown: Vec<String> = mems
            .iter()
            .filter(|m| m.memlock >= 64 * 1024)
            .map(|m| format!("{} {:.2}", m.name, m.memlock as f64 / 1048576.0))
            .collect();
        rows.push(format!(
            "| {} | {:.1} MiB ({:.0} B) | {:.2} MiB ({:.1} B) | {:.2} MiB ({:.1} B) | {:.2} MiB ({:.1} B) | {} |",
            super::datapath_v2::human(n),
            old_total as f64 / 1048576.0,
            per(old_total),
            total as f64 / 1048576.0,
            per(total),
            classifier as f64 / 1048576.0,
            per(classifier),
            stats as f64 / 1048576.0,
            per(stats),
            breakdown.join(", ")
        ));
        jrows.push(json!({"entries": n, "old_bytes": old_total, "v2_bytes": total, "v2_without_stats_bytes": classifier, "v2_stats_bytes": stats, "v2_maps": mems}));
        if n == 1000 {
            targets.push(format!(
                "| v2 at 1K: all maps | {:.2} MiB | ≤ 2 MiB | {} |",
                total as f64 / 1048576.0,
                super::met(total as f64 <= TARGET_1K_TOTAL)
            ));
        }
        if n == *ns.last().expect("sizes") {
            targets.push(format!(
                "| v2 at {}: bytes per /32 without per-entry counters | {:.1} B | ≤ {TARGET_PER_ADDR} B | {} |",
                super::datapath_v2::human(n),
                per(classifier),
                super::met(per(classifier) <= TARGET_PER_ADDR)
            ));
            targets.push(format!(
                "| v2 at {}: bytes per /32 with per-entry counters ({cpus} CPUs) | {:.1} B | ≤ {TARGET_PER_ADDR} B | {} |",
                super::datapath_v2::human(n),
                per(total),
                super::met(per(total) <= TARGET_PER_ADDR)
            ));
        }
    }
    let mut md = String::from("\n### Old layout against v2, by set size\n\n");
    md.push_str(&format!(
        "IPv4 /32 entries only. Old: today's program with the agent's default capacities \
         (every map, memlock summed). v2: the maps `edge_filter_v2` uses (every `V2_*` map \
         plus the per-reason counters, last verdict and event sampling maps), its tier \
         fitted to the set (exact table at load <= 1/2, summary of `clamp(ceil(log2(32 x \
         entries)), 16, 24)` bits, heap fitted to 1.25x its use, per-entry counters for \
         the next power of two of ids on {cpus} possible CPUs, the catalog). Per-entry \
         counters are shown apart: they grow with the CPUs, not the classifier.\n\n"
    ));
    md.push_str("| entries | old: all maps (per entry) | v2: all maps (per entry) | v2 without per-entry counters (per entry) | v2 per-entry counters (per entry) | v2 maps >= 64 KiB (MiB) |\n|---|---:|---:|---:|---:|---|\n");
    for r in &rows {
        md.push_str(r);
        md.push('\n');
    }
    md.push_str("\n| figure | value | target | met |\n|---|---|---|---|\n");
    for t in &targets {
        md.push_str(t);
        md.push('\n');
    }
    Ok((md, json!(jrows)))
}
