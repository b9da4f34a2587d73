//! Builds the benchmark XDP object (`bench-ebpf`, which also carries the
//! v2 classifier) for `bpfel-unknown-none` the way `edge-filter/build.rs`
//! builds the production one, and leaves it in `OUT_DIR/ef-bench-progs`
//! for the v2 kernel tests and `ef-bench` to embed.
//!
//! With `AYA_BUILD_SKIP=1` an empty object is written instead; the tests
//! that need it then fail with a message that says so.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "edge-filter-bench-ebpf")
        .ok_or_else(|| anyhow!("edge-filter-bench-ebpf not found in the workspace"))?;
    let root_dir = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?
        .to_string();
    // The object also depends on the library it links and the ABI crate.
    println!("cargo:rerun-if-changed={root_dir}/../edge-filter-ebpf/src");
    println!("cargo:rerun-if-changed={root_dir}/../edge-filter-common/src");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?).join("ef-bench-progs");
        fs::write(&out, []).with_context(|| format!("writing stub {}", out.display()))?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    aya_build::build_ebpf(
        [Package {
            name: "edge-filter-bench-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the bench eBPF object (run `cargo xtask setup` if the toolchain is missing)")
}
