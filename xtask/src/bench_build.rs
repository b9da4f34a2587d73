//! The eBPF objects `cargo xtask bench` needs besides the one embedded in
//! the agent: the benchmark-only programs (`bench-ebpf`) and edge-filter
//! built with `--features no-entry-stats`. Built exactly as
//! `edge-filter/build.rs` builds the real one through aya-build: nightly
//! cargo, `-Z build-std=core`, target `bpfel-unknown-none`, bpf-linker with
//! BTF, `--cfg bpf_target_arch`; each in its own target folder so the
//! feature builds never overwrite each other.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::util;

/// Paths of the built objects.
pub struct Objects {
    /// `bench-ebpf` (`ef-bench-progs`).
    pub bench: PathBuf,
    /// edge-filter without per-entry stats.
    pub nostats: PathBuf,
}

/// (package, features, binary, sub-folder of `<target>/bench-ebpf`).
const BUILDS: [(&str, &str, &str, &str); 2] = [
    (
        "edge-filter-bench-ebpf",
        "",
        "ef-bench-progs",
        "bench-progs",
    ),
    (
        "edge-filter-ebpf",
        "no-entry-stats",
        "edge-filter",
        "no-entry-stats",
    ),
];

/// Build both objects under `target/bench-ebpf`.
pub fn build(target: &Path) -> Result<Objects> {
    let mut out = Vec::new();
    for (package, features, bin, sub) in BUILDS {
        let dir = target.join("bench-ebpf").join(sub);
        let mut cmd = util::nightly_cargo();
        cmd.args([
            "build",
            "--package",
            package,
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--features",
            features,
            "--target-dir",
        ])
        .arg(&dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!(
                "--cfg=bpf_target_arch=\"{}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
                std::env::consts::ARCH
            ),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
        util::run(&mut cmd)?;
        let obj = dir.join("bpfel-unknown-none").join("release").join(bin);
        if !obj.is_file() {
            bail!("{} was not built", obj.display());
        }
        out.push(obj);
    }
    let nostats = out.pop().expect("two builds");
    let bench = out.pop().expect("two builds");
    Ok(Objects { bench, nostats })
}
