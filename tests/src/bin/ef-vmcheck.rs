//! `ef-vmcheck`: the checks `cargo xtask vm-test` runs inside a QEMU guest
//! booting another kernel. Never a test by itself: it reports, and the xtask
//! decides.
//!
//! ```text
//! ef-vmcheck check [--data DIR] [--seed S] [--sets NAME,NAME…] [--attach-lo]
//! ef-vmcheck lists --data DIR --blocklist FILE --allowlist FILE [--set NAME]
//! ```
//!
//! `check` (in the guest, as root): the kernel release and whether it has
//! BTF; loads the XDP program (the verifier) and prints loaded or rejected
//! with the verifier's log; the verifier's instruction count from the
//! kernel's program info (`verified_insns`, Linux 5.16+; `n/a` before);
//! probes batch map operations (Linux 5.6+; the agent falls back to
//! per-element operations without them); with `--attach-lo` (which the
//! xtask passes only inside the guest) attaches the program to `lo` in
//! generic mode and pins the bpf_link the way `edge-filter run` does (Linux
//! 5.9+), then detaches; then the differential replay of `tests/tests/differential.rs`:
//! every packet of the capture corpus (`DIR/pcaps`) and of the generated
//! corpus (a fixed seed and `--seed`) through the kernel program
//! (BPF_PROG_TEST_RUN) and the reference classifier, under every entry set
//! (or those named by `--sets`), comparing verdict, reason, deciding entry
//! and the per-reason counters. Then datapath v2's program (bench-ebpf's
//! `edge_filter_v2`): the verifier and the same corpus under the `all` set
//! (`v2_check`).
//!
//! `lists` (on the host): writes the `all` entry set sampled from the
//! capture corpus (or the set named by `--set`) as a blocklist and an
//! allowlist in the `edge-filter run` syntax, for the guest's
//! `edge-filter replay --expect` step.
//!
//! Every result line starts with `EFVM ` (the xtask reads them from the
//! serial console, where kernel messages may come in between):
//!
//! ```text
//! EFVM kernel: 6.1.0-56-cloud-amd64
//! EFVM load: loaded in 0.9 s
//! EFVM insns: 2764
//! EFVM differential: checked=612345 disagreements=0 runs=12 packets=51023 time=85 s
//! EFVM v2-load: loaded in 0.4 s
//! EFVM v2-insns: 1234
//! EFVM v2-differential: checked=51023 disagreements=0 set=all time=9 s
//! EFVM result: ok
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use edge_filter::entry::EntrySet;
use edge_filter::kernel::attach::{self, Mode};
use edge_filter::kernel::classifier::{KernelClassifier, MAX_FRAME, MIN_FRAME};
use edge_filter::kernel::paths::Paths;
use edge_filter::kernel::program::Capacities;
use edge_filter::reference::Reference;
use edge_filter_common as abi;
use edge_filter_tests::corpus::{Packet, entry_sets, generated_corpus, pcap_corpus};
use edge_filter_tests::differential::{MATCH_REASONS, compare, keys_by_id};

/// The fixed seed of `tests/tests/differential.rs`.
const FIXED_SEED: u64 = 0x00ed_9ef1_17e7;
/// Disagreements printed in full.
const MAX_LISTED: usize = 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("check") => check(&args[1..]),
        Some("lists") => lists(&args[1..]),
        _ => {
            eprintln!(
                "usage: ef-vmcheck check [--data DIR] [--seed S] [--sets NAME,…] [--attach-lo]\n       \
                 ef-vmcheck lists --data DIR --blocklist FILE --allowlist FILE [--set NAME]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            line("error", format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// One result line (flushed at once: the console is the only channel).
fn line(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    for (i, l) in value.to_string().lines().enumerate() {
        // Continuation lines of a multi-line value keep the key.
        let _ = if i == 0 {
            writeln!(out, "EFVM {key}: {l}")
        } else {
            writeln!(out, "EFVM {key}+ {l}")
        };
    }
    let _ = out.flush();
}

fn secs(t: Instant) -> String {
    format!("{:.1} s", t.elapsed().as_secs_f64())
}

fn parse_seed(s: &str) -> Result<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .with_context(|| format!("bad seed {s:?}"))
}

/// `--name VALUE` options; flags (no value) are listed in `flags`.
fn options(args: &[String], flags: &[&str]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            bail!("unexpected argument {a:?}");
        };
        if flags.contains(&name) {
            out.insert(name.to_string(), String::new());
            continue;
        }
        let v = it
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        out.insert(name.to_string(), v.clone());
    }
    Ok(out)
}

// ------------------------------------------------------------------ lists

fn lists(args: &[String]) -> Result<bool> {
    let o = options(args, &[])?;
    let get = |k: &str| {
        o.get(k)
            .map(PathBuf::from)
            .with_context(|| format!("--{k} is required"))
    };
    let data = get("data")?;
    let (block, allow) = (get("blocklist")?, get("allowlist")?);
    let want = o.get("set").map(String::as_str).unwrap_or("all");
    let pc = pcap_corpus(&data);
    if pc.packets.is_empty() {
        bail!("no packets under {}", data.display());
    }
    let sets = entry_sets(&pc.packets);
    let Some((_, set)) = sets.iter().find(|(n, _)| n == want) else {
        let names: Vec<&str> = sets.iter().map(|(n, _)| n.as_str()).collect();
        bail!("no entry set {want:?} (there are {})", names.join(", "));
    };
    let mut b = format!(
        "# entry set {want:?} sampled from {} packets of {} (ef-vmcheck lists)\n",
        pc.packets.len(),
        data.display()
    );
    for e in &set.entries {
        b.push_str(&format!("{e}\n"));
    }
    let mut a = String::from("# allowlist of the same set\n");
    for n in &set.allow {
        a.push_str(&format!("{n}\n"));
    }
    std::fs::write(&block, b).with_context(|| format!("writing {}", block.display()))?;
    std::fs::write(&allow, a).with_context(|| format!("writing {}", allow.display()))?;
    println!(
        "wrote {} entries to {} and {} allowlist nets to {}",
        set.entries.len(),
        block.display(),
        set.allow.len(),
        allow.display()
    );
    Ok(true)
}

// ------------------------------------------------------------------ check

fn check(args: &[String]) -> Result<bool> {
    let o = options(args, &["attach-lo"])?;
    let data = o.get("data").map(PathBuf::from);
    let fresh_seed = match o.get("seed") {
        Some(s) => parse_seed(s)?,
        None => FIXED_SEED ^ 0x5eed,
    };
    let only: Option<Vec<String>> = o
        .get("sets")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    line("kernel", &release);
    line(
        "btf",
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            "present"
        } else {
            "absent"
        },
    );

    // The verifier.
    let t = Instant::now();
    let mut kernel = match KernelClassifier::new(&Capacities::small()) {
        Ok(k) => k,
        Err(e @ edge_filter::error::Error::Verifier { .. }) => {
            line("load", "rejected");
            line("verifier", e.to_string());
            line("result", "fail");
            return Ok(false);
        }
        Err(e) => {
            line("load", format!("failed: {e}"));
            line("result", "fail");
            return Ok(false);
        }
    };
    line("load", format!("loaded in {}", secs(t)));
    line("insns", verified_insns(abi::PROGRAM_NAME));

    line("probe-batch", probe_batch());
    let mut ok = true;
    let (features, features_ok) = check_features();
    line("features", features);
    ok &= features_ok;
    if o.contains_key("attach-lo") {
        match attach_lo() {
            Ok(how) => line("attach", format!("ok ({how})")),
            Err(e) => {
                ok = false;
                line("attach", format!("failed: {e:#}"));
            }
        }
    }

    // The corpus.
    let mut corpora: Vec<Packet> = Vec::new();
    if let Some(dir) = &data {
        let pc = pcap_corpus(dir);
        line(
            "corpus-pcap",
            format!(
                "{} packets from {} files ({} skipped)",
                pc.packets.len(),
                pc.files_read,
                pc.files_skipped.len()
            ),
        );
        if pc.packets.is_empty() {
            ok = false;
            line(
                "differential-error",
                format!("no packets under {}", dir.display()),
            );
        }
        corpora.extend(pc.packets);
    } else {
        line("corpus-pcap", "none (no --data)");
    }
    let generated_fixed = generated_corpus(FIXED_SEED);
    let generated_fresh = generated_corpus(fresh_seed);
    line(
        "corpus-generated",
        format!(
            "{} packets (seed {FIXED_SEED:#x}) + {} (seed {fresh_seed:#x})",
            generated_fixed.len(),
            generated_fresh.len()
        ),
    );
    corpora.extend(generated_fixed);
    corpora.extend(generated_fresh);

    let mut sets = entry_sets(&corpora);
    if let Some(only) = &only {
        sets.retain(|(n, _)| only.contains(n));
        if sets.is_empty() {
            bail!("--sets names no entry set");
        }
    }
    let d = differential(&mut kernel, &corpora, &sets)?;
    line(
        "differential",
        format!(
            "checked={} disagreements={} runs={} packets={} time={}",
            d.checked,
            d.mismatches.len(),
            d.runs,
            corpora.len(),
            fmt_secs(d.seconds)
        ),
    );
    for m in d.mismatches.iter().take(MAX_LISTED) {
        line("mismatch", m);
    }
    for c in &d.counter_errors {
        line("counter-mismatch", c);
    }
    if !d.uncovered.is_empty() {
        line("uncovered", d.uncovered.join(" "));
    }
    ok &= d.mismatches.is_empty() && d.counter_errors.is_empty() && d.checked > 0;
    ok &= v2_check(&corpora, &sets);
    line("result", if ok { "ok" } else { "fail" });
    Ok(ok)
}

/// The program of datapath v2 (docs/datapath-v2.md, bench-ebpf's
/// `edge_filter_v2`, which the agent does not run yet) on this kernel: the
/// verifier, then every packet of the corpus under the `all` entry set
/// (every reason) through BPF_PROG_TEST_RUN, its maps written by the
/// layout compiler through `mmap`, against the reference (action, reason
/// and deciding id). One set, not all: a guest under TCG takes up to a
/// minute per set, and the layout's cases are the host tests' business.
/// Prints `v2-load`, `v2-insns`, `v2-differential` (and `v2-mismatch`).
fn v2_check(corpora: &[Packet], sets: &[(String, EntrySet)]) -> bool {
    use edge_filter::kernel::layout::{Compiler, Geometry, Ids, LayoutError, assign_ids, counts};
    use edge_filter_tests::bench::v2kernel::{BenchSizes, TestRunner, expected};
    const PROGRAM: &str = "edge_filter_v2";
    let Some((name, set)) = sets
        .iter()
        .find(|(n, _)| n == "all")
        .or_else(|| sets.last())
    else {
        line("v2-differential", "no entry set");
        return false;
    };
    let ids = assign_ids(set, &Ids::default());
    let mut g = match counts(set, &ids) {
        Ok(c) => Geometry::for_counts(&c, 2.0, FIXED_SEED),
        Err(e) => {
            line("v2-differential", format!("fail: counting set {name}: {e}"));
            return false;
        }
    };
    g.heap_lines = g.heap_lines.max(1 << 16);
    let comp = loop {
        match Compiler::build(set, &ids, g) {
            Ok(c) => break c,
            // Both buckets of a key full: the next size, as the agent does.
            Err(LayoutError::Full { .. }) => {
                g.buckets4 *= 2;
                g.buckets6 *= 2;
            }
            Err(e) => {
                line(
                    "v2-differential",
                    format!("fail: compiling set {name}: {e}"),
                );
                return false;
            }
        }
    };
    let sizes = match BenchSizes::of(&g) {
        Ok(s) => s,
        Err(e) => {
            line("v2-differential", format!("fail: sizes: {e:#}"));
            return false;
        }
    };
    // TestRunner is a test helper that panics with the loader's error
    // (the verifier log included): a panic here is a rejection to report.
    let t = Instant::now();
    let loaded = std::panic::catch_unwind(|| TestRunner::load(sizes, &[PROGRAM]));
    let (mut k, mut maps) = match loaded {
        Ok(l) => l,
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            line("v2-load", "rejected");
            line("v2-verifier", why);
            return false;
        }
    };
    line("v2-load", format!("loaded in {}", secs(t)));
    line("v2-insns", verified_insns(PROGRAM));
    if let Err(e) = maps.write_image(comp.tables()) {
        line("v2-differential", format!("fail: writing the maps: {e}"));
        return false;
    }
    maps.set_runtime_flags(abi::CONFIG_RECORD_LAST);
    let reference = Reference::new(set);
    let t = Instant::now();
    let mut checked = 0usize;
    let mut mismatches = Vec::new();
    for p in corpora.iter().filter(|p| p.data.len() >= MIN_FRAME) {
        let frame = &p.data[..p.data.len().min(MAX_FRAME)];
        let want = expected(&reference.classify(frame, false), &ids);
        let got = k.classify(PROGRAM, frame);
        checked += 1;
        if got != want {
            mismatches.push(format!(
                "set {name} {}: kernel (action, reason, id) {got:?}, reference {want:?}",
                p.name
            ));
        }
    }
    line(
        "v2-differential",
        format!(
            "checked={checked} disagreements={} set={name} time={}",
            mismatches.len(),
            secs(t)
        ),
    );
    for m in mismatches.iter().take(MAX_LISTED) {
        line("v2-mismatch", m);
    }
    checked > 0 && mismatches.is_empty()
}

fn fmt_secs(s: f64) -> String {
    format!("{s:.1} s")
}

/// `verified_insns` of the loaded program (found by name among the loaded
/// programs: in the guest it is the only one).
fn verified_insns(program: &str) -> String {
    let mut found = None;
    for info in aya::programs::loaded_programs().flatten() {
        // The kernel keeps 15 characters of a program's name.
        if info
            .name_as_str()
            .is_some_and(|n| !n.is_empty() && program.starts_with(n))
        {
            found = Some(info);
        }
    }
    match found {
        None => "n/a (program not found among the loaded programs)".into(),
        Some(info) => match info.verified_instruction_count() {
            Some(n) => format!(
                "{n} (xlated {} bytes)",
                info.size_translated().unwrap_or_default()
            ),
            None => "n/a (no verified_insns in the program info: kernel before 5.16)".into(),
        },
    }
}

/// The start-up probes of `edge-filter` (`edge_filter::kernel::features`) on this
/// kernel, checked against its version: every feature from a release at or
/// before this kernel's must be found, every later one must be found
/// missing (Debian does not backport these), and `require` must refuse the
/// uses that need a missing one, naming it. Prints
/// `ok missing=ID,ID` or `fail: …`.
fn check_features() -> (String, bool) {
    use edge_filter::kernel::features::{self, Status, Use};
    let report = features::probe_all();
    let Some(version) = features::parse_version(&report.kernel) else {
        return (
            format!("fail: cannot parse the kernel release {:?}", report.kernel),
            false,
        );
    };
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for p in &report.features {
        let f = &p.feature;
        if f.id == "kernel-btf" {
            continue; // a build option, not a version
        }
        let since = features::parse_version(f.since).expect("since");
        match (&p.status, version >= since) {
            (Status::Present, true) => {}
            (Status::Missing(_), false) => missing.push(f.id),
            (Status::Present, false) => problems.push(format!(
                "{} (Linux {}+) found on {}",
                f.id, f.since, report.kernel
            )),
            (s, _) => problems.push(format!("{} (Linux {}+): {s:?}", f.id, f.since)),
        }
    }
    for u in [
        Use::Run,
        Use::Replay,
        Use::ReplayLive,
        Use::LiveTraffic,
        Use::Events,
    ] {
        let expect_missing = report.missing_for(u);
        match (features::require(u), expect_missing) {
            (Ok(()), None) => {}
            (Err(e), Some(p)) if e.to_string().contains(p.feature.title) => {}
            (r, m) => problems.push(format!(
                "require({u:?}) = {:?}, expected a refusal naming {:?}",
                r.err().map(|e| e.to_string()),
                m.map(|p| p.feature.id)
            )),
        }
    }
    let missing = if missing.is_empty() {
        "none".to_string()
    } else {
        missing.join(",")
    };
    if problems.is_empty() {
        (format!("ok missing={missing}"), true)
    } else {
        (format!("fail: {}", problems.join("; ")), false)
    }
}

/// Whether `BPF_MAP_UPDATE_BATCH` works on a hash map (Linux 5.6+): the
/// agent's own start-up probe.
fn probe_batch() -> String {
    use edge_filter::kernel::features::{Status, probe};
    match probe("batch-map-ops") {
        Status::Present => "supported".into(),
        Status::Missing(d) => {
            format!("unsupported ({d}): the agent uses per-element map operations")
        }
        Status::Unknown(d) => format!("n/a ({d})"),
    }
}

/// Attach to `lo` in generic mode and pin the bpf_link, as `edge-filter run`
/// does, then detach.
fn attach_lo() -> Result<String> {
    let paths = Paths::new("/sys/fs/bpf/edge-filter-vmcheck");
    let att = attach::attach_or_adopt(
        &paths,
        "lo",
        Mode::Skb,
        &Capacities::small(),
        &EntrySet::default(),
        0,
    )?;
    let how = format!(
        "{} mode on lo, bpf_link pinned at {}",
        att.mode.unwrap_or("adopted"),
        paths.link("lo").display()
    );
    drop(att);
    attach::detach(&paths, "lo")?;
    let _ = std::fs::remove_dir(paths.root());
    Ok(how)
}

// ----------------------------------------------------------- differential

struct Differential {
    checked: usize,
    runs: usize,
    mismatches: Vec<String>,
    counter_errors: Vec<String>,
    uncovered: Vec<String>,
    seconds: f64,
}

fn hex(data: &[u8]) -> String {
    data.iter().take(96).map(|b| format!("{b:02x}")).collect()
}

fn differential(
    kernel: &mut KernelClassifier,
    packets: &[Packet],
    sets: &[(String, EntrySet)],
) -> Result<Differential> {
    let start = Instant::now();
    let mut d = Differential {
        checked: 0,
        runs: 0,
        mismatches: Vec::new(),
        counter_errors: Vec::new(),
        uncovered: Vec::new(),
        seconds: 0.0,
    };
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for (set_name, set) in sets {
        let settings: &[bool] = if set_name == "none" || set_name == "all" {
            &[false, true]
        } else {
            &[false]
        };
        for &md in settings {
            let t = Instant::now();
            kernel
                .set_entries(set, md)
                .with_context(|| format!("loading entry set {set_name}"))?;
            if kernel.last_sync.refused != 0 {
                bail!(
                    "entry set {set_name} did not fit: {:?}",
                    kernel.last_sync.refusals
                );
            }
            let reference = Reference::new(set);
            let ids = keys_by_id(kernel).context("reading the maps")?;
            let before = kernel.maps().counters().context("reading counters")?;
            let mut expected = vec![(0u64, 0u64); abi::REASON_COUNT as usize];
            let mut n = 0usize;
            let mut bad = 0usize;
            for p in packets {
                if p.data.len() < MIN_FRAME {
                    continue;
                }
                let frame = &p.data[..p.data.len().min(MAX_FRAME)];
                let k = kernel
                    .classify(frame)
                    .with_context(|| format!("test run of {}", p.name))?;
                let r = reference.classify(frame, md);
                n += 1;
                *by_reason
                    .entry(edge_filter::kernel::counters::reason_name(r.reason))
                    .or_default() += 1;
                expected[r.reason as usize].0 += 1;
                expected[r.reason as usize].1 += frame.len() as u64;
                if let Some(what) = compare(&k, &r, &reference, &ids) {
                    bad += 1;
                    d.mismatches.push(format!(
                        "set={set_name} malformed_drop={md} packet={}: {what}; frame {}",
                        p.name,
                        hex(frame)
                    ));
                }
            }
            let after = kernel.maps().counters().context("reading counters")?;
            for (i, (pk, by)) in expected.iter().enumerate() {
                let dp = after[i].packets - before[i].packets;
                let db = after[i].bytes - before[i].bytes;
                if (dp, db) != (*pk, *by) {
                    d.counter_errors.push(format!(
                        "set={set_name} malformed_drop={md}: counter {} moved by {dp}/{db}, expected {pk}/{by}",
                        edge_filter::kernel::counters::reason_name(i as u32)
                    ));
                }
            }
            d.checked += n;
            d.runs += 1;
            line(
                "run",
                format!(
                    "set={set_name} malformed_drop={md} checked={n} disagreements={bad} time={}",
                    secs(t)
                ),
            );
        }
    }
    // Coverage, as the differential test asserts it (reported here: with
    // --sets a subset may legitimately miss some).
    let mut must: Vec<String> = MATCH_REASONS.iter().map(|s| s.to_string()).collect();
    for class in abi::MalformedClass::ALL {
        for v in ["pass", "drop"] {
            must.push(format!("malformed_{v}_{}", class.name()));
        }
    }
    d.uncovered = must
        .into_iter()
        .filter(|m| by_reason.get(m).copied().unwrap_or(0) == 0)
        .collect();
    d.seconds = start.elapsed().as_secs_f64();
    Ok(d)
}
