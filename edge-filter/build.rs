//! Builds the XDP program (`edge-filter-ebpf`) for `bpfel-unknown-none` with
//! the nightly toolchain and `-Z build-std=core`, and leaves the object in
//! `OUT_DIR/edge-filter` where `src/kernel/program.rs` embeds it.
//!
//! With `AYA_BUILD_SKIP=1` (handy for quick `cargo clippy`/`cargo doc` runs
//! that need no object) an empty object is written instead; the loader then
//! refuses to run with a message that says so.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "edge-filter-ebpf")
        .ok_or_else(|| anyhow!("edge-filter-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .to_string();
    // The object also depends on the shared ABI crate.
    println!("cargo:rerun-if-changed={root_dir}/../edge-filter-common/src");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?).join("edge-filter");
        fs::write(&out, []).with_context(|| format!("writing stub {}", out.display()))?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (it installs bpf-linker and rust-src)"
        ));
    }
    aya_build::build_ebpf(
        [Package {
            name: "edge-filter-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the eBPF object (run `cargo xtask setup` if the toolchain is missing)")
}

fn which_bpf_linker() -> Option<PathBuf> {
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    })
}
