//! `ef-bench verify`: load every program of the bench-ebpf object (the
//! verifier) and print what the kernel says about each: loaded or
//! rejected (with the tail of the verifier log), the verifier's processed
//! instruction count (`verified_insns`, Linux 5.16+) and the translated
//! and JIT-compiled sizes. Runs on the kernel it finds, so `cargo xtask
//! vm-test`-style guests can run it on 5.10 and 6.1; lines start with
//! `EFV2 ` for a serial console to pick out.

use anyhow::{Context as _, Result};
use aya::{EbpfLoader, programs::Xdp};

use super::{BENCH_PROGRAMS, Opts, bench_object};
use edge_filter::kernel::program::Capacities;

/// Load and report; `Ok(false)` if any program was rejected.
pub fn run(o: &Opts) -> Result<bool> {
    let object = bench_object(o)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("EFV2 kernel: {}", release.trim());
    let mut loader = EbpfLoader::new();
    for (name, n) in Capacities::small().per_map() {
        loader.map_max_entries(name, n);
    }
    super::v2kernel::BenchSizes::small().apply(&mut loader);
    let mut ebpf = loader
        .load(&object)
        .context("creating the bench object's maps")?;
    let mut ok = true;
    for name in BENCH_PROGRAMS {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        match prog.load() {
            Ok(()) => {
                let info = prog.info()?;
                println!(
                    "EFV2 prog {name}: loaded verified_insns={} xlated_insns={} jited_bytes={}",
                    info.verified_instruction_count()
                        .map_or("n/a".to_string(), |n| n.to_string()),
                    info.size_translated().map_or(0, |b| b / 8),
                    info.size_jitted()
                );
            }
            Err(e) => {
                ok = false;
                let text = format!("{e}");
                if let Some(dir) = std::env::var_os("EFV2_LOG_DIR") {
                    let _ = std::fs::write(
                        std::path::Path::new(&dir).join(format!("{name}.log")),
                        &text,
                    );
                }
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(12)..].join(" | ");
                println!("EFV2 prog {name}: rejected: {tail}");
            }
        }
    }
    println!("EFV2 result: {}", if ok { "ok" } else { "rejected" });
    Ok(ok)
}
