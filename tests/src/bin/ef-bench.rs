//! `ef-bench`: benchmarks of edge-filter, run by `cargo xtask bench` (which
//! collects their Markdown into `docs/bench/REPORT.md`). Never a test: the
//! numbers are reported against targets, not asserted.
//!
//! ```text
//! ef-bench sync [--rounds N] [--seed S] [--json] [--json-out FILE]
//! ef-bench delta-loop [--rounds N] [--seed S]
//! ef-bench datapath | live | memory [--rounds N] [--seed S] [--quick] [--json]
//!     [--json-out FILE] [--bench-object FILE] [--nostats-object FILE] [--svg-out FILE]
//! ```
//!
//! The command line is [`edge_filter_tests::bench::Cli`] (`ef-bench --help`);
//! `datapath`, `live` and `memory` live in [`edge_filter_tests::bench`].
//!
//! `sync` measures the agent's map sync with the real XDP program's maps
//! (private maps, loaded through `KernelClassifier`; needs root): a full
//! sync of 1,000,000 IPv4 /32 entries and 100,000 IPv4 prefixes into empty
//! maps through the batch path and the per-element path, a 1% churn delta on
//! top of the full set, the read-back of the full maps, and the agent's peak
//! RSS (in a child process that re-executes this binary). Each round runs
//! every measurement once, interleaved (A B A B …), on freshly loaded maps;
//! the report gives medians, minima and maxima, and ratios as the median of
//! the per-round ratios.
//!
//! Markdown goes to stdout (or JSON with `--json`); progress to stderr.
//! `ef-bench delta-loop --rounds N` repeats the delta for `perf record`
//! (see `docs/bench/SYNC-PROFILE.md`).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use edge_filter::entry::{Action, Entry, EntrySet};
use edge_filter::kernel::maps::{Desired, SetChanges};
use edge_filter::kernel::program::Capacities;
use edge_filter_tests::bench::v1maps::V1Maps;
use edge_filter_tests::bench::{self, Cli, Command as Bench, Opts};
use ipnet::{IpNet, Ipv4Net};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Exact IPv4 addresses in the full set.
const ADDRS: usize = 1_000_000;
/// IPv4 prefixes (/9../31) in the full set.
const PREFIXES: usize = 100_000;
/// Churn of the delta: this many adds and as many removes (1% of the set).
const CHURN: usize = 10_000;
/// Default seed of the generated sets (fixed, so runs compare); also the
/// fixed seed of the profile's shuffle.
const SEED: u64 = bench::DEFAULT_SEED;
/// Targets (reported, never asserted).
const TARGET_FULL_SECS: f64 = 1.0;
const TARGET_DELTA_FRACTION: f64 = 0.03;
/// Share of monitor-only entries (the rest drop).
const MONITOR_PERCENT: u32 = 10;
/// The hidden subcommand the RSS measurement re-executes this binary with.
const RSS_CHILD: &str = bench::RSS_CHILD;

/// Prefix-length distribution of the IPv4 prefixes, /9../31: how often each
/// length occurs in the real netsets under `../shared/data/feeds`
/// (firehol_level1/level2, spamhaus_drop/edrop, dshield, Spamhaus DROP,
/// fullbogons, cidr_report_bogons; 12,938 prefixes in all).
const PREFIX_LENGTHS: [(u8, u32); 23] = [
    (9, 1),
    (10, 7),
    (11, 1),
    (12, 15),
    (13, 8),
    (14, 29),
    (15, 53),
    (16, 509),
    (17, 54),
    (18, 186),
    (19, 351),
    (20, 564),
    (21, 958),
    (22, 2626),
    (23, 2470),
    (24, 4732),
    (25, 53),
    (26, 33),
    (27, 32),
    (28, 12),
    (29, 16),
    (30, 35),
    (31, 194),
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ef-bench: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  because: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Bench::Sync(o) => sync_bench(&o),
        Bench::SyncV2(o) => sync_v2(&o),
        Bench::SyncRssChild(o) => rss_child(&o),
        Bench::DeltaLoop(o) => delta_loop(&o),
        // The datapath, live and memory sections live in `edge_filter_tests::bench`.
        Bench::Datapath(o) => bench::datapath::run(&o),
        Bench::Live(o) => bench::live::run(&o),
        Bench::Memory(o) => bench::memory::run(&o),
        Bench::Agent(o) => bench::agent::run(&o),
        Bench::Compile(o) => bench::compile::run(&o),
        Bench::Verify(o) => {
            if bench::verify::run(&o)? {
                Ok(())
            } else {
                bail!("the kernel rejected a program")
            }
        }
    }
}

// ------------------------------------------------------------ entry sets

/// The full set, the set after the churn delta, and what the delta is.
struct Sets {
    full: EntrySet,
    after: EntrySet,
    /// (exact addresses, prefixes) added and removed, each.
    churn_split: (usize, usize),
}

fn action(rng: &mut StdRng) -> Action {
    if rng.random_range(0..100) < MONITOR_PERCENT {
        Action::Monitor
    } else {
        Action::Drop
    }
}

fn prefix_len(rng: &mut StdRng) -> u8 {
    let total: u32 = PREFIX_LENGTHS.iter().map(|&(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for &(len, w) in &PREFIX_LENGTHS {
        if x < w {
            return len;
        }
        x -= w;
    }
    unreachable!("weights sum to total")
}

fn net(addr: u32, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).expect("length <= 32")).trunc()
}

/// `n` distinct exact addresses and `p` distinct prefixes (no host bits)
/// that are not in `seen`, which they join.
fn fresh(rng: &mut StdRng, n: usize, p: usize, seen: &mut HashSet<IpNet>) -> Vec<Entry> {
    let mut out = Vec::with_capacity(n + p);
    while out.len() < n {
        let a = net(rng.random(), 32);
        if seen.insert(a) {
            out.push(Entry::new(a, None, action(rng)));
        }
    }
    while out.len() < n + p {
        let len = prefix_len(rng);
        let a = net(rng.random(), len);
        if seen.insert(a) {
            out.push(Entry::new(a, None, action(rng)));
        }
    }
    out
}

fn generate(seed: u64) -> Sets {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(ADDRS + PREFIXES + CHURN);
    let full_entries = fresh(&mut rng, ADDRS, PREFIXES, &mut seen);
    // The churn is split between exact addresses and prefixes in
    // proportion to the set: 9,091 and 909.
    let churn_addrs = (CHURN * ADDRS + (ADDRS + PREFIXES) / 2) / (ADDRS + PREFIXES);
    let churn_prefixes = CHURN - churn_addrs;
    let added = fresh(&mut rng, churn_addrs, churn_prefixes, &mut seen);
    let mut removed_addr: Vec<usize> = (0..ADDRS).collect();
    removed_addr.shuffle(&mut rng);
    let mut removed_prefix: Vec<usize> = (ADDRS..ADDRS + PREFIXES).collect();
    removed_prefix.shuffle(&mut rng);
    let removed: HashSet<usize> = removed_addr[..churn_addrs]
        .iter()
        .chain(&removed_prefix[..churn_prefixes])
        .copied()
        .collect();
    let mut after: Vec<Entry> = full_entries
        .iter()
        .enumerate()
        .filter(|(i, _)| !removed.contains(i))
        .map(|(_, e)| *e)
        .collect();
    after.extend(added);
    // Sorted by key, one entry per key: what the agent's desired state
    // (`intel::desired::merge`) hands to `V1Maps::rebuild`.
    let mut full_entries = full_entries;
    full_entries.sort_unstable_by_key(Entry::key);
    after.sort_unstable_by_key(Entry::key);
    Sets {
        full: EntrySet {
            allow: Vec::new(),
            entries: full_entries,
        },
        after: EntrySet {
            allow: Vec::new(),
            entries: after,
        },
        churn_split: (churn_addrs, churn_prefixes),
    }
}

// ----------------------------------------------------------- datapath v2

/// `ef-bench sync-v2`: the production agent's path over the `sync` sets.
fn sync_v2(o: &Opts) -> Result<()> {
    use edge_filter::kernel::maps::{EntryMaps, Fresh};
    eprintln!("generating the sets (seed {})", o.seed);
    let sets = generate(o.seed);
    let there = SetChanges::between(&sets.full, &sets.after);
    let back = SetChanges::between(&sets.after, &sets.full);
    let mut rows: Vec<[f64; 6]> = Vec::new();
    let mut bytes = 0u64;
    for round in 0..o.rounds.max(1) {
        let t = Instant::now();
        let fresh = Fresh::for_set(&sets.full)?;
        let compile = t.elapsed();
        let t = Instant::now();
        let mut maps = EntryMaps::private(&sets.full, 0)?;
        let first = t.elapsed();
        drop(fresh);
        bytes = maps.sizes().array_bytes();
        let t = Instant::now();
        let st = maps.apply_changes(&sets.after, &there, 0)?;
        let delta = t.elapsed();
        anyhow::ensure!(st.tiers == 0, "the 1% delta changed tiers: {st:?}");
        let t = Instant::now();
        maps.apply_changes(&sets.full, &back, 0)?;
        let delta_back = t.elapsed();
        // A restart: the agent adopts the kernel's tables and, as they are
        // placed otherwise than a fresh build, brings a new tier in.
        maps.forget_shadow();
        let t = Instant::now();
        let st = maps.apply(&sets.full, 0)?;
        let restart = t.elapsed();
        let t = Instant::now();
        let _ = maps.read()?;
        let read = t.elapsed();
        eprintln!(
            "round {round}: compile {:.0} ms, first sync {:.0} ms, delta {:.0} ms, back {:.0} ms, \
             restart {:.0} ms ({} tier), read-back {:.0} ms",
            secs(compile) * 1e3,
            secs(first) * 1e3,
            secs(delta) * 1e3,
            secs(delta_back) * 1e3,
            secs(restart) * 1e3,
            st.tiers,
            secs(read) * 1e3
        );
        rows.push([
            secs(compile),
            secs(first),
            secs(delta),
            secs(delta_back),
            secs(restart),
            secs(read),
        ]);
    }
    let med = |i: usize| {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let entries = sets.full.entries.len();
    println!(
        "**Sync, datapath v2 (the agent's path), {} /32 + {} prefixes, median of {} rounds**\n",
        ADDRS,
        PREFIXES,
        rows.len()
    );
    println!("| phase | ms |\n|---|---:|");
    for (i, what) in [
        "tier compile alone (`Fresh::for_set`: ids, build, heap fit)",
        "first sync: compile + program load (verifier) + image (`EntryMaps::private`)",
        "1% delta (`apply_changes`)",
        "1% delta back",
        "restart: adoption + new tier (compile, load, image, counters)",
        "read-back (`read`: tables, decode, contents model)",
    ]
    .iter()
    .enumerate()
    {
        println!("| {what} | {:.0} |", med(i));
    }
    println!(
        "\nKernel bytes of the tier's arrays: {} ({:.1} B per entry)",
        bytes,
        bytes as f64 / entries as f64
    );
    // The tier a set of n /32s gets (what `program::load` sizes the maps
    // to), array bytes (`Sizes::array_bytes`: page rounding and the
    // one-entry tries aside) on this machine's possible CPUs.
    println!("\n| /32 entries | tier array bytes | B per entry |\n|---:|---:|---:|");
    let mut rng = StdRng::seed_from_u64(o.seed);
    for n in [1_000usize, 100_000, 1_000_000] {
        let mut seen = HashSet::with_capacity(n);
        let mut entries = fresh(&mut rng, n, 0, &mut seen);
        entries.sort_unstable_by_key(Entry::key);
        let set = EntrySet {
            allow: Vec::new(),
            entries,
        };
        let b = Fresh::for_set(&set)?.sizes()?.array_bytes();
        println!("| {n} | {b} | {:.1} |", b as f64 / n as f64);
    }
    Ok(())
}

// ----------------------------------------------------------- measurement

/// Maps big enough for the set and the delta's transient (adds land before
/// removes): 1,048,576 exact addresses, 262,144 prefixes.
fn capacities() -> Capacities {
    let caps = Capacities::default();
    assert!(caps.addr_v4 as usize >= ADDRS + CHURN);
    assert!(caps.prefix_v4 as usize >= PREFIXES + CHURN);
    caps
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A full sync into empty maps, phase by phase, as `V1Maps::rebuild`
/// does it: read the maps back, build (`Desired::build_from`), sync.
/// (`rebuild` also normalises the set first when it is not sorted by key
/// with one entry per key; the agent's always is.)
struct FullSync {
    read: f64,
    build: f64,
    sync: f64,
}

fn full_sync(maps: &mut V1Maps, set: &EntrySet) -> Result<FullSync> {
    let t0 = Instant::now();
    let current = maps.read()?;
    let t1 = Instant::now();
    let desired = Desired::build_from(set, &current);
    let t2 = Instant::now();
    let st = maps.sync_owned(&current, desired, 0)?;
    let t3 = Instant::now();
    if st.refused != 0 || st.added != ADDRS + PREFIXES {
        bail!("full sync: unexpected outcome {st:?}");
    }
    Ok(FullSync {
        read: secs(t1 - t0),
        build: secs(t2 - t1),
        sync: secs(t3 - t2),
    })
}

/// One round's figures, all in seconds (ratios are derived).
#[derive(Default)]
struct Round {
    /// Full sync through `V1Maps::rebuild`, batch (the feed agent's path).
    full_apply: f64,
    batch_read: f64,
    batch_build: f64,
    batch_sync: f64,
    elem_read: f64,
    elem_build: f64,
    elem_sync: f64,
    delta_apply: f64,
    delta_back: f64,
    read_back_batch: f64,
    read_back_elem: f64,
    prof_build_addrs: f64,
    prof_build_prefixes: f64,
    prof_sync_lpm: f64,
    prof_sync_hash_batch: f64,
    prof_shadow_clone: f64,
    prof_sort: f64,
    rss_set_mib: f64,
    rss_peak_mib: f64,
}

impl Round {
    fn batch_phases(&self) -> f64 {
        self.batch_read + self.batch_build + self.batch_sync
    }

    fn elem_phases(&self) -> f64 {
        self.elem_read + self.elem_build + self.elem_sync
    }
}

/// The v1 program (the "before": hash maps and tries) of the bench
/// object with private maps of `caps`.
struct V1 {
    _ebpf: aya::Ebpf,
    maps: V1Maps,
}

impl V1 {
    fn maps_mut(&mut self) -> &mut V1Maps {
        &mut self.maps
    }
}

fn load(caps: &Capacities) -> Result<V1> {
    let mut ebpf = edge_filter_tests::bench::load_v1(edge_filter_tests::bench::V1_PROGRAM, caps)
        .context("loading the v1 XDP program")?;
    let maps = V1Maps::from_ebpf(&mut ebpf)?;
    Ok(V1 { _ebpf: ebpf, maps })
}

/// The feed agent's path on a feed change: the changes between the
/// previous and the new desired set (`SetChanges::between`), applied with
/// `V1Maps::apply_changes`; both timed.
fn delta(
    maps: &mut V1Maps,
    prev: &EntrySet,
    new: &EntrySet,
) -> Result<edge_filter::kernel::maps::SyncStats> {
    let changes = SetChanges::between(prev, new);
    Ok(maps.apply_changes(new, &changes, 0)?)
}

/// A: the agent's path on fresh maps: a full sync through
/// `V1Maps::rebuild`, the 1% delta as the feed agent applies it
/// ([`delta`]), the same-sized delta back, then a read-back of the full
/// maps.
fn round_apply(caps: &Capacities, sets: &Sets, r: &mut Round) -> Result<()> {
    let mut kc = load(caps)?;
    let maps = kc.maps_mut();
    let t = Instant::now();
    let st = maps.rebuild(&sets.full, 0)?;
    r.full_apply = secs(t.elapsed());
    if st.refused != 0 || st.added != ADDRS + PREFIXES {
        bail!("full sync: unexpected outcome {st:?}");
    }
    let (a, p) = sets.churn_split;
    let t = Instant::now();
    let st = delta(maps, &sets.full, &sets.after)?;
    r.delta_apply = secs(t.elapsed());
    if st.added != a + p || st.removed != a + p || st.refused != 0 {
        bail!("delta: unexpected outcome {st:?}");
    }
    let t = Instant::now();
    let st = delta(maps, &sets.after, &sets.full)?;
    r.delta_back = secs(t.elapsed());
    if st.added != a + p || st.removed != a + p || st.refused != 0 {
        bail!("delta back: unexpected outcome {st:?}");
    }
    let t = Instant::now();
    let read = maps.read()?;
    r.read_back_batch = secs(t.elapsed());
    if read.addr_v4.len() != ADDRS || read.prefix_v4.len() != PREFIXES {
        bail!(
            "read-back: {} addresses, {} prefixes",
            read.addr_v4.len(),
            read.prefix_v4.len()
        );
    }
    Ok(())
}

/// B: full sync phase by phase, batch path, on fresh maps.
fn round_batch(caps: &Capacities, sets: &Sets, r: &mut Round) -> Result<()> {
    let mut kc = load(caps)?;
    let f = full_sync(kc.maps_mut(), &sets.full)?;
    r.batch_read = f.read;
    r.batch_build = f.build;
    r.batch_sync = f.sync;
    Ok(())
}

/// C: full sync phase by phase, per-element path, on fresh maps; then a
/// per-element read-back.
fn round_elem(caps: &Capacities, sets: &Sets, r: &mut Round) -> Result<()> {
    let mut kc = load(caps)?;
    let maps = kc.maps_mut();
    maps.set_batch(false);
    let f = full_sync(maps, &sets.full)?;
    r.elem_read = f.read;
    r.elem_build = f.build;
    r.elem_sync = f.sync;
    let t = Instant::now();
    let read = maps.read()?;
    r.read_back_elem = secs(t.elapsed());
    if read.addr_v4.len() != ADDRS {
        bail!("read-back: {} addresses", read.addr_v4.len());
    }
    Ok(())
}

/// P (profile): where a batch full sync spends its time. Build of the
/// /32 entries alone and of the prefixes alone (the latter includes the trie
/// flattening); then, on fresh maps, the kernel apply of the prefixes alone
/// (per-element LPM inserts) and of the /32 entries on top (the batch hash
/// update, plus the shadow copy of the full state, timed on its own too).
fn round_profile(caps: &Capacities, sets: &Sets, r: &mut Round) -> Result<()> {
    let (addrs, prefixes): (Vec<Entry>, Vec<Entry>) = sets
        .full
        .entries
        .iter()
        .partition(|e| e.net.prefix_len() == 32);
    let only = |entries| EntrySet {
        allow: Vec::new(),
        entries,
    };
    let (addrs, prefixes) = (only(addrs), only(prefixes));
    let mut shuffled = sets.full.entries.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(SEED));
    let t = Instant::now();
    shuffled.sort_unstable_by_key(Entry::key);
    r.prof_sort = secs(t.elapsed());
    drop(shuffled);
    let empty = Desired::default();
    let t = Instant::now();
    let d_addrs = Desired::build_from(&addrs, &empty);
    r.prof_build_addrs = secs(t.elapsed());
    let t = Instant::now();
    let d_prefixes = Desired::build_from(&prefixes, &empty);
    r.prof_build_prefixes = secs(t.elapsed());
    drop((d_addrs, d_prefixes));
    let full = Desired::build_from(&sets.full, &empty);
    let prefix_part = Desired {
        prefix_v4: full.prefix_v4.clone(),
        ..Default::default()
    };
    let mut kc = load(caps)?;
    let maps = kc.maps_mut();
    let (prefix_copy, full_copy) = (prefix_part.clone(), full.clone());
    let t = Instant::now();
    maps.sync_owned(&empty, prefix_copy, 0)?;
    r.prof_sync_lpm = secs(t.elapsed());
    let t = Instant::now();
    maps.sync_owned(&prefix_part, full_copy, 0)?;
    r.prof_sync_hash_batch = secs(t.elapsed());
    // What `sync` (by reference) costs on top: a copy for the shadow.
    let t = Instant::now();
    let copy = full.clone();
    r.prof_shadow_clone = secs(t.elapsed());
    drop(copy);
    Ok(())
}

/// `delta-loop`: a steady stream of deltas to profile with `perf record`.
fn delta_loop(o: &Opts) -> Result<()> {
    let sets = generate(o.seed);
    let mut kc = load(&capacities())?;
    let maps = kc.maps_mut();
    maps.rebuild(&sets.full, 0)?;
    for i in 0..o.rounds {
        let t = Instant::now();
        let changes = SetChanges::between(&sets.full, &sets.after);
        let diff = secs(t.elapsed());
        maps.apply_changes(&sets.after, &changes, 0)?;
        let there = secs(t.elapsed());
        let t = Instant::now();
        delta(maps, &sets.after, &sets.full)?;
        let back = secs(t.elapsed());
        eprintln!(
            "delta {}: {:.1} ms there ({:.1} ms of it `SetChanges::between`), {:.1} ms back",
            i + 1,
            there * 1e3,
            diff * 1e3,
            back * 1e3
        );
    }
    Ok(())
}

/// `VmHWM` and `VmRSS` of this process, in KiB.
fn self_rss_kib() -> Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/self/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// The child: what the agent does for a full sync (`V1Maps::rebuild`)
/// plus a delta ([`delta`]), holding the two entry sets as the agent holds the
/// previous and the new desired state. The generator's temporaries must not
/// count, so the peak is reset (`/proc/self/clear_refs`, 5) once the sets
/// exist. Prints the RSS then (the sets) and the peak at the end.
fn rss_child(o: &Opts) -> Result<()> {
    let sets = generate(o.seed);
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let (_, base) = self_rss_kib()?;
    let mut kc = load(&capacities())?;
    kc.maps_mut().rebuild(&sets.full, 0)?;
    delta(kc.maps_mut(), &sets.full, &sets.after)?;
    let (hwm, _) = self_rss_kib()?;
    println!("base_kib={base} hwm_kib={hwm}");
    drop(sets);
    Ok(())
}

/// D: run the child and read its peak RSS: its own `VmHWM`, read at its
/// end. (`getrusage(RUSAGE_CHILDREN)` would not do: the child's mm before
/// `exec` is a copy of this process, whose RSS holds the sets too, and
/// `ru_maxrss` keeps that high-water mark.)
fn round_rss(o: &Opts, r: &mut Round) -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = Command::new(&exe)
        .args([RSS_CHILD, "--seed", &o.seed.to_string()])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "the RSS child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no {name} in the child's output {text:?}"))
    };
    r.rss_set_mib = field("base_kib=")? / 1024.0;
    r.rss_peak_mib = field("hwm_kib=")? / 1024.0;
    Ok(())
}

// --------------------------------------------------------------- summary

#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Ratio,
    Percent,
    Mib,
}

impl Unit {
    fn fmt(self, x: f64) -> String {
        match self {
            Unit::Secs if x >= 1.0 => format!("{x:.2} s"),
            Unit::Secs if x >= 0.01 => format!("{:.0} ms", x * 1e3),
            Unit::Secs => format!("{:.1} ms", x * 1e3),
            Unit::Ratio => format!("{x:.2}x"),
            Unit::Percent => format!("{:.1}%", x * 100.0),
            Unit::Mib => format!("{x:.0} MiB"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Secs => "s",
            Unit::Ratio => "ratio",
            Unit::Percent => "fraction",
            Unit::Mib => "MiB",
        }
    }
}

struct Row {
    key: &'static str,
    label: &'static str,
    unit: Unit,
    stat: bench::Stat,
    /// Target text and whether the median meets it.
    target: Option<(String, bool)>,
}

type Figure = (&'static str, &'static str, Unit, fn(&Round) -> f64);

/// The headline figures (the issue's questions).
const HEADLINE: &[Figure] = &[
    (
        "full_apply",
        "**Full sync, batch: total (`V1Maps::rebuild` into empty maps)**",
        Unit::Secs,
        |r| r.full_apply,
    ),
    (
        "full_batch_build",
        "Full sync, batch: build (`Desired::build_from`)",
        Unit::Secs,
        |r| r.batch_build,
    ),
    (
        "full_batch_sync",
        "Full sync, batch: kernel apply (`V1Maps::sync_owned`)",
        Unit::Secs,
        |r| r.batch_sync,
    ),
    (
        "full_batch_phases",
        "Full sync, batch: read + build + sync",
        Unit::Secs,
        |r| r.batch_phases(),
    ),
    (
        "full_elem_build",
        "Full sync, per-element: build (`Desired::build_from`)",
        Unit::Secs,
        |r| r.elem_build,
    ),
    (
        "full_elem_sync",
        "Full sync, per-element: kernel apply (`V1Maps::sync_owned`)",
        Unit::Secs,
        |r| r.elem_sync,
    ),
    (
        "full_elem_phases",
        "Full sync, per-element: read + build + sync",
        Unit::Secs,
        |r| r.elem_phases(),
    ),
    (
        "elem_over_batch_sync",
        "**Per-element / batch, kernel apply**",
        Unit::Ratio,
        |r| r.elem_sync / r.batch_sync,
    ),
    (
        "elem_over_batch_phases",
        "Per-element / batch, read + build + sync",
        Unit::Ratio,
        |r| r.elem_phases() / r.batch_phases(),
    ),
    (
        "delta_apply",
        "**1% delta (`SetChanges::between` + `V1Maps::apply_changes`, the feed agent's path)**",
        Unit::Secs,
        |r| r.delta_apply,
    ),
    (
        "delta_over_full",
        "**1% delta / full sync**",
        Unit::Percent,
        |r| r.delta_apply / r.full_apply,
    ),
    (
        "rss_peak",
        "**Agent peak RSS (full sync + delta)**",
        Unit::Mib,
        |r| r.rss_peak_mib,
    ),
];

/// Where the time goes.
const PROFILE: &[Figure] = &[
    (
        "sort_unsorted_set",
        "Sorting the 1.1M entries by key (what `apply` adds when its input is not sorted)",
        Unit::Secs,
        |r| r.prof_sort,
    ),
    (
        "full_batch_read",
        "Full sync: read-back of the empty maps (`V1Maps::read`)",
        Unit::Secs,
        |r| r.batch_read,
    ),
    (
        "build_addrs_only",
        "Build, the 1M /32 entries alone",
        Unit::Secs,
        |r| r.prof_build_addrs,
    ),
    (
        "build_prefixes_only",
        "Build, the 100k prefixes alone (incl. trie flattening)",
        Unit::Secs,
        |r| r.prof_build_prefixes,
    ),
    (
        "sync_lpm_only",
        "Kernel apply, the 100k prefixes alone (LPM, per-element)",
        Unit::Secs,
        |r| r.prof_sync_lpm,
    ),
    (
        "sync_hash_batch",
        "Kernel apply, the 1M /32 on top (hash, batch)",
        Unit::Secs,
        |r| r.prof_sync_hash_batch,
    ),
    (
        "shadow_clone",
        "Copy of the full state (`Desired::clone`; `sync_owned` moves it into the shadow instead)",
        Unit::Secs,
        |r| r.prof_shadow_clone,
    ),
    (
        "delta_back",
        "1% delta back to the full set (same path, same size)",
        Unit::Secs,
        |r| r.delta_back,
    ),
    (
        "read_back_batch",
        "Read-back of the full maps, batch (`V1Maps::read`)",
        Unit::Secs,
        |r| r.read_back_batch,
    ),
    (
        "read_back_elem",
        "Read-back of the full maps, per-element",
        Unit::Secs,
        |r| r.read_back_elem,
    ),
    (
        "rss_sync",
        "Agent peak RSS increase from the sync itself (peak − before)",
        Unit::Mib,
        |r| r.rss_peak_mib - r.rss_set_mib,
    ),
    (
        "rss_set",
        "Agent RSS before the sync: the two entry sets (1.1M entries each) and the binary",
        Unit::Mib,
        |r| r.rss_set_mib,
    ),
];

fn rows(rounds: &[Round], figures: &[Figure]) -> Vec<Row> {
    figures
        .iter()
        .map(|&(key, label, unit, f)| {
            let stat = bench::stat(&rounds.iter().map(f).collect::<Vec<_>>());
            let target = match key {
                "full_apply" => Some((
                    format!("≤ {TARGET_FULL_SECS:.1} s"),
                    stat.median <= TARGET_FULL_SECS,
                )),
                "delta_over_full" => Some((
                    format!("≤ {:.0}%", TARGET_DELTA_FRACTION * 100.0),
                    stat.median <= TARGET_DELTA_FRACTION,
                )),
                _ => None,
            };
            Row {
                key,
                label,
                unit,
                stat,
                target,
            }
        })
        .collect()
}

fn table(rows: &[Row], targets: bool) -> String {
    let mut s = String::new();
    if targets {
        s.push_str("| Measurement | Median | Min | Max | Target | Met |\n");
        s.push_str("|---|---:|---:|---:|---|---|\n");
    } else {
        s.push_str("| Measurement | Median | Min | Max |\n");
        s.push_str("|---|---:|---:|---:|\n");
    }
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} |",
            r.label,
            r.unit.fmt(r.stat.median),
            r.unit.fmt(r.stat.min),
            r.unit.fmt(r.stat.max),
        ));
        if targets {
            match &r.target {
                Some((t, ok)) => {
                    s.push_str(&format!(" {t} | {} |", if *ok { "yes" } else { "**no**" }))
                }
                None => s.push_str(" | |"),
            }
        }
        s.push('\n');
    }
    s
}

fn markdown(o: &Opts, sets: &Sets, headline: &[Row], profile: &[Row], elapsed: Duration) -> String {
    let (a, p) = sets.churn_split;
    let mut s = String::new();
    s.push_str("## Agent: map sync\n\n");
    s.push_str(&format!(
        "Full sync of 1,000,000 IPv4 /32 entries and 100,000 IPv4 prefixes (/9../31, lengths \
         distributed as in the real netsets under `shared/data/feeds`, no host bits, \
         {MONITOR_PERCENT}% monitor; sorted by key with one entry per key, as the agent's merged \
         desired state is) into empty maps of the real XDP program (private maps, \
         loaded fresh for every full sync, outside the timed region), then a 1% churn delta on \
         top of it: {} adds + {} removes ({a} /32 and {p} prefixes each). Total = \
         `V1Maps::rebuild`, what the feed agent calls for a full sync; its phases, timed separately on other fresh \
         maps: read = `V1Maps::read` of the empty maps, build = `Desired::build_from` \
         (userspace), kernel apply = `V1Maps::sync_owned` (the diff and the syscalls; the \
         built state becomes the shadow copy without a copy). The delta is what the feed agent \
         does on a feed change after the full sync: `SetChanges::between` (one merge pass over \
         the previous and the new sorted set, which also tells adds from changes) and \
         `V1Maps::apply_changes` (touches only the changed keys: ids for the adds first; then \
         two threads, one updating the hash maps' shadow copy, the other the tries' and writing \
         the trie nodes, both taking 1024-key jobs of hash-map writes; then both share the \
         removals), timed together. Batch = `BPF_MAP_*_BATCH` for \
         the hash maps; the LPM tries have no batch support and are per-element on both paths. Peak RSS = `VmHWM` of \
         a child process (this binary re-executed) doing a full sync (`V1Maps::rebuild`) and the \
         delta (the feed agent's path), holding the two entry sets as the agent holds the previous and \
         the new desired state (the peak is reset once the sets exist, so the generator's \
         temporaries do not count).\n\n",
        a + p,
        a + p
    ));
    s.push_str(&format!(
        "{} rounds in {:.0} s, each running in turn, on freshly loaded maps: A (full sync \
         through `V1Maps::rebuild`, the delta, the delta back, read-back), B (full sync phase \
         by phase, batch), C (the same, per-element; read-back), P (profile), D (RSS child); \
         seed {}. Ratios are medians of the per-round ratios.\n\n",
        o.rounds,
        elapsed.as_secs_f64(),
        o.seed,
    ));
    s.push_str(&table(headline, true));
    s.push_str("\n### Where the time goes\n\n");
    s.push_str(&table(profile, false));
    s
}

fn to_json(o: &Opts, sets: &Sets, headline: &[Row], profile: &[Row]) -> serde_json::Value {
    let figures = |rows: &[Row]| {
        let mut m = serde_json::Map::new();
        for r in rows {
            let mut v = json!({
                "label": r.label.replace("**", "").replace('`', ""),
                "unit": r.unit.name(),
                "median": r.stat.median,
                "min": r.stat.min,
                "max": r.stat.max,
            });
            if let Some((t, ok)) = &r.target {
                v["target"] = json!(t);
                v["met"] = json!(ok);
            }
            m.insert(r.key.to_string(), v);
        }
        serde_json::Value::Object(m)
    };
    json!({
        "bench": "sync",
        "rounds": o.rounds,
        "seed": o.seed,
        "set": {
            "addr_v4": ADDRS,
            "prefix_v4": PREFIXES,
            "churn_adds": sets.churn_split.0 + sets.churn_split.1,
            "churn_removes": sets.churn_split.0 + sets.churn_split.1,
        },
        "figures": figures(headline),
        "profile": figures(profile),
    })
}

fn sync_bench(o: &Opts) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("ef-bench sync loads BPF programs and maps: run it as root");
    }
    let start = Instant::now();
    eprintln!(
        "ef-bench sync: generating the entry sets (seed {})…",
        o.seed
    );
    let sets = generate(o.seed);
    let caps = capacities();
    let mut rounds = Vec::with_capacity(o.rounds);
    for i in 0..o.rounds {
        let mut r = Round::default();
        round_apply(&caps, &sets, &mut r)?;
        settle();
        round_batch(&caps, &sets, &mut r)?;
        settle();
        round_elem(&caps, &sets, &mut r)?;
        settle();
        round_profile(&caps, &sets, &mut r)?;
        settle();
        round_rss(o, &mut r)?;
        settle();
        eprintln!(
            "round {}/{}: full sync {:.3} s (phases: build {:.3} + sync {:.3}), per-element \
             phases {:.3} s, delta {:.3} s, peak RSS {:.0} MiB",
            i + 1,
            o.rounds,
            r.full_apply,
            r.batch_build,
            r.batch_sync,
            r.elem_phases(),
            r.delta_apply,
            r.rss_peak_mib
        );
        rounds.push(r);
    }
    let headline = rows(&rounds, HEADLINE);
    let profile = rows(&rounds, PROFILE);
    let json = to_json(o, &sets, &headline, &profile);
    if let Some(path) = &o.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!(
            "{}",
            markdown(o, &sets, &headline, &profile, start.elapsed())
        );
    }
    Ok(())
}

/// Let the kernel free the last round's maps (deferred work) before the
/// next measurement starts.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}
