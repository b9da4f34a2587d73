//! Rebuild the eBPF object when `bpf-linker` changes: cargo cannot see that
//! dependency otherwise (it is a linker, not a crate).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup` first"
        ),
    }
}
