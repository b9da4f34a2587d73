//! `cargo xtask setup`: makes a Debian machine able to build and test the
//! workspace, idempotently. Each step first checks whether its piece is
//! already there and only then installs it; the online route (rustup,
//! crates.io) comes first and the offline cache (`../shared/toolchain`) is
//! the fallback for rust-src.
use std::{
    env,
    fs::{self, File},
    io::{self, Read as _},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::ValueEnum;
use sha2::{Digest as _, Sha256};

use crate::util::{self, capture, find_on_path, human, output, workspace_root};

/// The bpf-linker release the eBPF build is known to work with (see
/// `../shared/toolchain/README.md`); any 0.13.x already installed is accepted.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_SERIES: &str = "0.13.";

/// Who needs a Debian package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Group {
    /// Building the agent: `tikv-jemalloc-sys` configures and builds
    /// jemalloc's bundled C source with make (and the C compiler Rust
    /// already links with). Always installed.
    Build,
    /// The integration tests (network namespaces, veth pairs, ping). Always installed.
    Test,
    /// `cargo xtask bench`: the nftables/iptables/ipset baselines and ethtool
    /// (GRO on the veth receiver). Always installed.
    Bench,
    /// The VM tests (`cargo xtask test` runs them): a throwaway kernel under
    /// qemu with a busybox initramfs. Always installed.
    Vm,
}

/// Every Debian package the project's tests use, by group: the one list setup
/// installs from.
pub const DEBIAN_PACKAGES: &[(Group, &str)] = &[
    (Group::Build, "make"),
    (Group::Test, "iproute2"),
    (Group::Test, "iputils-ping"),
    (Group::Test, CROWDSEC),
    (Group::Test, "python3-venv"),
    (Group::Bench, "nftables"),
    (Group::Bench, "iptables"),
    (Group::Bench, "ipset"),
    (Group::Bench, "ethtool"),
    (Group::Vm, "qemu-system-x86"),
    (Group::Vm, "busybox-static"),
    (Group::Vm, "cpio"),
];

/// Debian's CrowdSec (the LAPI the crowdsec feed tests run on loopback).
const CROWDSEC: &str = "crowdsec";

/// Its post-install script registers with CrowdSec's Central API (online)
/// when this file is empty or missing, and fails the install without a
/// network. A non-empty file is its documented way to skip that.
const CROWDSEC_CAPI: &str = "/etc/crowdsec/online_api_credentials.yaml";

/// PyPI packages the tests run (exact versions), installed into one
/// virtual environment, [`python_venv`]: medallion, the OASIS TAXII 2.1
/// reference server, and taxii2-client, which posts objects to it (the
/// TAXII feed test); stix2-patterns, OASIS's STIX pattern validator (the
/// grammar oracle of the STIX pattern parser's tests); pymisp, which
/// writes the MISP feed the misp tests serve.
pub const PYTHON_PACKAGES: &[&str] = &[
    "medallion==3.0.0",
    "taxii2-client==2.3.0",
    "stix2-patterns==2.1.2",
    "pymisp==2.5.34.4",
];

/// Where setup puts the tests' Python environment
/// (`~/.cache/edge-filter/python`); the tests look there too, or where
/// `EDGE_FILTER_PYTHON_VENV` says.
pub fn python_venv() -> Result<PathBuf> {
    if let Some(p) = env::var_os("EDGE_FILTER_PYTHON_VENV") {
        return Ok(PathBuf::from(p));
    }
    Ok(util::home()?
        .join(".cache")
        .join("edge-filter")
        .join("python"))
}

const LONG_ABOUT: &str = "\
Make this machine able to build and test edge-filter.

Idempotent: each step checks first and prints one line saying what it did or \
that it was already done, so a second run takes about a second. Steps:

  nightly     a nightly toolchain (the eBPF program builds only with nightly);
              `rustup toolchain install nightly` if missing
  lint tools  rustfmt and clippy for the default toolchain, clippy for nightly
  rust-src    the library sources `-Z build-std=core` compiles for
              bpfel-unknown-none: `rustup component add rust-src`, or, without
              network access, Debian's rust-src_*.deb from the toolchain cache
              (checked against its SHA256SUMS, unpacked into
              ~/.cache/edge-filter/rust-src and linked into the nightly sysroot)
  bpf-linker  the linker of the eBPF object: `cargo install bpf-linker` built
              against the LLVM that ships with the nightly toolchain
  packages    Debian packages the build, tests and benchmarks use (make for
              the bundled jemalloc; iproute2, iputils-ping, crowdsec,
              python3-venv; qemu-system-x86, busybox-static, cpio
              for the kernel matrix; nftables, iptables, ipset for the
              baselines), installed with apt-get (needs root). crowdsec is
              installed without registering with CrowdSec's Central API (the
              tests run its Local API alone, on loopback); no service is
              started where systemd does not run
  python      the PyPI packages the tests run, pinned, in a virtual
              environment of Debian's python3 at ~/.cache/edge-filter/python
              (or EDGE_FILTER_PYTHON_VENV): medallion 3.0.0 (the TAXII 2.1
              reference server) and taxii2-client 2.3.0, stix2-patterns 2.1.2
              (OASIS's STIX pattern validator, the parser's grammar oracle)
              and pymisp 2.5.34.4 (writes the MISP feed the misp tests serve)

Any step that cannot finish stops setup with a message naming what is missing \
and how to provide it, and a non-zero exit status.";

#[derive(clap::Args, Debug)]
#[command(
    about = "Install what building and testing need: nightly, rust-src, bpf-linker, Debian packages (idempotent)",
    long_about = LONG_ABOUT
)]
pub struct Args {
    /// Print only the steps that changed something (and errors), no summary.
    #[arg(short, long)]
    pub quiet: bool,

    /// Also install the Debian packages of these groups (comma-separated).
    /// Every group is installed already; kept so older command lines work.
    #[arg(long = "with", value_name = "GROUP", value_enum, value_delimiter = ',')]
    pub with: Vec<Group>,

    /// Skip the Debian packages step (machines without apt: install iproute2
    /// and ping yourself).
    #[arg(long)]
    pub no_packages: bool,

    /// Offline toolchain cache: a folder with Debian's
    /// `rust-src_<version>_all.deb` and a `SHA256SUMS` listing it. Used only
    /// when rustup cannot install rust-src. [default:
    /// <workspace>/../shared/toolchain]
    #[arg(long, value_name = "DIR", env = "EDGE_FILTER_TOOLCHAIN_CACHE")]
    pub toolchain_cache: Option<PathBuf>,
}

/// What a step found or did.
struct Outcome {
    changed: bool,
    text: String,
}

impl Outcome {
    fn already(detail: impl std::fmt::Display) -> Self {
        Self {
            changed: false,
            text: format!("already present ({detail})"),
        }
    }

    fn done(text: impl Into<String>) -> Self {
        Self {
            changed: true,
            text: text.into(),
        }
    }
}

/// Prints step results and counts them.
struct Report {
    quiet: bool,
    steps: usize,
    changed: usize,
}

impl Report {
    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<Outcome>) -> Result<()> {
        let outcome = f().with_context(|| format!("setup step `{name}` failed"))?;
        self.steps += 1;
        if outcome.changed {
            self.changed += 1;
        }
        if outcome.changed || !self.quiet {
            println!("{name}: {}", outcome.text);
        }
        Ok(())
    }
}

/// A line announcing a slow action before it starts (printed even with
/// `--quiet`: something is about to change).
fn progress(line: impl std::fmt::Display) {
    println!("{line}");
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let cache_root = util::home()?.join(".cache").join("edge-filter");
    let toolchain_cache = args
        .toolchain_cache
        .clone()
        .unwrap_or_else(|| workspace_root().join("..").join("shared").join("toolchain"));
    // Everything the README's test and bench commands use is installed by
    // default, so a fresh machine needs this one command.
    let mut groups = vec![Group::Build, Group::Test, Group::Vm, Group::Bench];
    for g in &args.with {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }

    let mut report = Report {
        quiet: args.quiet,
        steps: 0,
        changed: 0,
    };
    let mut nightly_release = String::new();
    report.step("nightly", || {
        let (outcome, release) = nightly()?;
        nightly_release = release;
        Ok(outcome)
    })?;
    let sysroot = nightly_sysroot().context("cannot find the nightly sysroot")?;
    report.step("lint tools", lint_tools)?;
    report.step("rust-src", || {
        rust_src(
            &sysroot,
            &nightly_release,
            &toolchain_cache,
            &cache_root.join("rust-src"),
        )
    })?;
    report.step("bpf-linker", || {
        bpf_linker(&sysroot, &cache_root.join("llvm"), &cargo_install_root()?)
    })?;
    if args.no_packages {
        if !args.quiet {
            println!("packages: skipped (--no-packages)");
        }
    } else {
        report.step("packages", || packages(&groups))?;
        report.step("python", python_tools)?;
    }
    if !args.quiet {
        println!(
            "setup: ready in {} ({} steps: {} changed, {} already done)",
            human(start.elapsed()),
            report.steps,
            report.changed,
            report.steps - report.changed
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- nightly

/// Whether `rustup toolchain list` output has the undated nightly of some
/// host (what `+nightly` resolves to).
fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list.lines().any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|name| name.strip_prefix("nightly-"))
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root());
    cmd
}

/// Ensures a nightly toolchain; returns the outcome and its release
/// (`1.97.0-nightly`).
fn nightly() -> Result<(Outcome, String)> {
    let list = output(rustup().args(["toolchain", "list"])).context(
        "rustup is needed to manage the nightly toolchain the eBPF program builds with: \
         install it from https://rustup.rs",
    )?;
    let mut installed_in = None;
    if !has_nightly(&list) {
        progress("nightly: not installed; running `rustup toolchain install nightly`…");
        let start = Instant::now();
        let mut cmd = rustup();
        cmd.args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "clippy",
        ]);
        let c = capture(&mut cmd, Some(Duration::from_secs(30 * 60)))?;
        if !c.status.success() {
            bail!(
                "no nightly toolchain, and `{}` failed:\n{}\n\
                 The eBPF program builds only with a nightly rustc. Install one with \
                 `rustup toolchain install nightly` (needs access to static.rust-lang.org) \
                 and re-run `cargo xtask setup`.",
                util::display(&cmd),
                c.tail(5)
            );
        }
        installed_in = Some(start.elapsed());
    }
    let vv = output(rustup().args(["run", "nightly", "rustc", "-vV"]))
        .context("the nightly toolchain is listed but its rustc does not run")?;
    let field = |key: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("?")
            .to_string()
    };
    let release = field("release:");
    let detail = format!(
        "rustc {release} ({}), LLVM {}",
        field("commit-date:"),
        field("LLVM version:")
    );
    let outcome = match installed_in {
        Some(t) => Outcome::done(format!("installed {detail} in {}", human(t))),
        None => Outcome::already(detail),
    };
    Ok((outcome, release))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    Ok(PathBuf::from(out.trim()))
}

// ------------------------------------------------------------- lint tools

/// rustfmt and clippy for the default toolchain (`cargo xtask check`), and
/// clippy for nightly (it lints the eBPF crate for bpfel-unknown-none).
fn lint_tools() -> Result<Outcome> {
    let version = |cmd: &mut Command| -> Option<String> {
        let c = capture(cmd, Some(Duration::from_secs(60))).ok()?;
        c.status.success().then(|| {
            c.stdout
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    let probe = || {
        [
            version(util::cargo().args(["fmt", "--version"])),
            version(util::cargo().args(["clippy", "--version"])),
            version(util::nightly_cargo().args(["clippy", "--version"])),
        ]
    };
    let found = probe();
    if found.iter().all(Option::is_some) {
        let [fmt, clippy, nightly] = found.map(Option::unwrap_or_default);
        return Ok(Outcome::already(format!(
            "{fmt}, {clippy}, nightly {nightly}"
        )));
    }
    let start = Instant::now();
    let mut added = Vec::new();
    let mut stable = Vec::new();
    if found[0].is_none() {
        stable.push("rustfmt");
    }
    if found[1].is_none() {
        stable.push("clippy");
    }
    let mut commands = Vec::new();
    if !stable.is_empty() {
        let mut cmd = rustup();
        cmd.args(["component", "add"]).args(&stable);
        commands.push(cmd);
        added.extend(stable.iter().map(|s| s.to_string()));
    }
    if found[2].is_none() {
        let mut cmd = rustup();
        cmd.args(["component", "add", "clippy", "--toolchain", "nightly"]);
        commands.push(cmd);
        added.push("nightly clippy".into());
    }
    for mut cmd in commands {
        progress(format!("lint tools: running `{}`…", util::display(&cmd)));
        let c = capture(&mut cmd, Some(Duration::from_secs(10 * 60)))?;
        if !c.status.success() {
            bail!(
                "missing {}; `{}` failed: {}\n`cargo xtask check` needs rustfmt and clippy \
                 (and clippy for nightly): install them with rustup, which needs access to \
                 static.rust-lang.org",
                added.join(", "),
                util::display(&cmd),
                c.error_line()
            );
        }
    }
    if probe().iter().any(Option::is_none) {
        bail!(
            "installed {} with rustup, but they still do not run",
            added.join(", ")
        );
    }
    Ok(Outcome::done(format!(
        "installed {} in {}",
        added.join(", "),
        human(start.elapsed())
    )))
}

// --------------------------------------------------------------- rust-src

/// Where rustup (and `-Z build-std`) expect the library sources.
fn rust_src_dest(sysroot: &Path) -> PathBuf {
    sysroot.join("lib/rustlib/src/rust")
}

/// A description of the rust-src installation at `dest`, if it is usable.
fn rust_src_present(dest: &Path) -> Option<String> {
    if !dest.join("library/core").is_dir() {
        return None;
    }
    Some(match fs::read_link(dest) {
        Ok(target) => format!("{} -> {}", dest.display(), target.display()),
        Err(_) => format!("{}, from rustup", dest.display()),
    })
}

fn rust_src(
    sysroot: &Path,
    nightly_release: &str,
    toolchain_cache: &Path,
    unpack_dir: &Path,
) -> Result<Outcome> {
    let dest = rust_src_dest(sysroot);
    if let Some(detail) = rust_src_present(&dest) {
        return Ok(Outcome::already(detail));
    }
    progress(
        "rust-src: missing for nightly; trying `rustup component add rust-src --toolchain nightly`…",
    );
    let start = Instant::now();
    let mut cmd = rustup();
    cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    let rustup_error = match capture(&mut cmd, Some(Duration::from_secs(10 * 60))) {
        Ok(c) if c.status.success() && rust_src_present(&dest).is_some() => {
            return Ok(Outcome::done(format!(
                "installed with rustup in {}",
                human(start.elapsed())
            )));
        }
        Ok(c) if c.status.success() => format!(
            "it succeeded but {} still has no library/core",
            dest.display()
        ),
        Ok(c) => c.error_line(),
        Err(e) => format!("{e:#}"),
    };
    progress(format!(
        "rust-src: rustup could not install it ({rustup_error}); using the offline cache {}…",
        toolchain_cache.display()
    ));
    let minor = rust_minor(nightly_release);
    match install_rust_src_from_cache(toolchain_cache, unpack_dir, &dest, minor) {
        Ok(how) => Ok(Outcome::done(format!(
            "{how} in {}",
            human(start.elapsed())
        ))),
        Err(cache_error) => Err(anyhow!(
            "rust-src is missing for the nightly toolchain ({}): `-Z build-std=core` needs it \
             to build the eBPF program.\n\
             - rustup: `rustup component add rust-src --toolchain nightly` failed: {rustup_error}\n\
             - offline cache: {cache_error:#}\n\
             Provide one of them: network access to static.rust-lang.org for rustup, or a \
             folder holding Debian's rust-src_<version>_all.deb (version 1.{}.x, matching \
             nightly {nightly_release}) and a SHA256SUMS listing it, named by \
             --toolchain-cache or EDGE_FILTER_TOOLCHAIN_CACHE (default: \
             <workspace>/../shared/toolchain).",
            dest.display(),
            minor.map_or_else(|| "?".to_string(), |m| m.to_string()),
        )),
    }
}

/// The minor version of a rustc release or Debian version: `1.97.0-nightly`
/// and `1.97.1+dfsg1-1` give 97.
fn rust_minor(version: &str) -> Option<u32> {
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    let mut parts = version.split(['.', '-', '+', '~']);
    parts.next()?;
    parts.next()?.parse().ok()
}

/// A `rust-src_<version>_all.deb` in the toolchain cache.
#[derive(Debug)]
struct Deb {
    path: PathBuf,
    /// Debian version: `1.97.1+dfsg1-1`.
    version: String,
}

impl Deb {
    /// Upstream version (`1.97.1`), the suffix of `usr/src/rustc-<upstream>`.
    fn upstream(&self) -> &str {
        let v = self
            .version
            .split_once(':')
            .map_or(&*self.version, |(_, v)| v);
        v.split(['+', '-', '~']).next().unwrap_or(v)
    }

    fn sort_key(&self) -> Vec<u32> {
        self.upstream()
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    }
}

/// The rust-src .deb to use: the newest whose minor version matches the
/// nightly's, else the newest.
fn pick_deb(cache_dir: &Path, want_minor: Option<u32>) -> Result<Deb> {
    let entries = fs::read_dir(cache_dir)
        .with_context(|| format!("cannot read the toolchain cache {}", cache_dir.display()))?;
    let mut debs = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(rest) = name
            .strip_prefix("rust-src_")
            .and_then(|r| r.strip_suffix(".deb"))
        {
            let version = rest.split('_').next().unwrap_or(rest).to_string();
            debs.push(Deb { path, version });
        }
    }
    debs.sort_by_key(Deb::sort_key);
    let matching = debs
        .iter()
        .rposition(|d| want_minor.is_some() && rust_minor(&d.version) == want_minor);
    match matching.or_else(|| debs.len().checked_sub(1)) {
        Some(i) => Ok(debs.swap_remove(i)),
        None => bail!("no rust-src_*.deb in {}", cache_dir.display()),
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The expected SHA-256 of `file_name` in `sha256sum` output format
/// (`<hex>  <name>` or `<hex> *<name>`).
fn expected_sha256(sums: &str, file_name: &str) -> Option<String> {
    sums.lines().find_map(|line| {
        let (hash, name) = line.trim().split_once(char::is_whitespace)?;
        let name = name.trim_start();
        let name = name.strip_prefix('*').unwrap_or(name);
        (name == file_name).then(|| hash.to_ascii_lowercase())
    })
}

/// Checks `deb` against the `SHA256SUMS` beside it.
fn verify_deb(deb: &Path) -> Result<()> {
    let name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .context("deb without a file name")?;
    let sums_path = deb.with_file_name("SHA256SUMS");
    let sums = fs::read_to_string(&sums_path)
        .with_context(|| format!("cannot read {} to verify {name}", sums_path.display()))?;
    let expected = expected_sha256(&sums, name)
        .with_context(|| format!("{} does not list {name}", sums_path.display()))?;
    let actual = sha256_file(deb)?;
    if actual != expected {
        bail!(
            "{} has SHA-256 {actual}, but {} says {expected}: the file is damaged or not \
             the one the cache was made with; replace it",
            deb.display(),
            sums_path.display()
        );
    }
    Ok(())
}

/// `<unpack_dir>/usr/src/rustc-<upstream>` if it holds `library/core`.
fn unpacked_source(unpack_dir: &Path, upstream: &str) -> Option<PathBuf> {
    let dir = unpack_dir.join("usr/src").join(format!("rustc-{upstream}"));
    dir.join("library/core").is_dir().then_some(dir)
}

/// Unpacks `deb` with `dpkg -x` into `unpack_dir`, replacing it. Unpacks
/// beside it first, so an interrupted run never leaves a half-filled
/// `unpack_dir` that a later run would take as complete.
fn unpack_deb(deb: &Path, unpack_dir: &Path) -> Result<()> {
    if find_on_path("dpkg").is_none() {
        bail!(
            "dpkg is not installed, so {} cannot be unpacked (this fallback needs a Debian \
             system)",
            deb.display()
        );
    }
    let parent = unpack_dir
        .parent()
        .context("unpack folder without a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let partial = parent.join(format!(
        "{}.partial-{}",
        unpack_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("rust-src"),
        std::process::id()
    ));
    remove_dir_if_exists(&partial)?;
    fs::create_dir_all(&partial)?;
    let mut cmd = Command::new("dpkg");
    cmd.arg("-x").arg(deb).arg(&partial);
    let c = capture(&mut cmd, Some(Duration::from_secs(10 * 60)))?;
    if !c.status.success() {
        let _ = fs::remove_dir_all(&partial);
        bail!("`{}` failed: {}", util::display(&cmd), c.tail(5));
    }
    remove_dir_if_exists(unpack_dir)?;
    fs::rename(&partial, unpack_dir).with_context(|| {
        format!(
            "cannot move {} to {}",
            partial.display(),
            unpack_dir.display()
        )
    })
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Makes `link` a symlink to `target`, replacing an existing symlink (or an
/// empty folder). Anything else at `link` is left alone and is an error.
fn replace_symlink(link: &Path, target: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(link).is_ok_and(|t| t == target) {
                return Ok(());
            }
            fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir(link).map_err(|e| {
                anyhow!(
                    "{} exists but is not a usable installation ({e}); setup did not make \
                     it, so it leaves it alone: remove it and re-run",
                    link.display()
                )
            })?;
        }
        Ok(_) => bail!(
            "{} exists and is not a symlink; remove it and re-run",
            link.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", link.display())),
    }
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

/// The offline route: verify, unpack and link Debian's rust-src. Returns what
/// it did.
fn install_rust_src_from_cache(
    cache_dir: &Path,
    unpack_dir: &Path,
    dest: &Path,
    want_minor: Option<u32>,
) -> Result<String> {
    let deb = pick_deb(cache_dir, want_minor)?;
    let mut how = Vec::new();
    if want_minor.is_some() && rust_minor(&deb.version) != want_minor {
        how.push(format!(
            "warning: {} is not the nightly's minor version",
            deb.version
        ));
    }
    let source = match unpacked_source(unpack_dir, deb.upstream()) {
        Some(dir) => {
            how.push(format!("reused {}", dir.display()));
            dir
        }
        None => {
            verify_deb(&deb.path)?;
            unpack_deb(&deb.path, unpack_dir)?;
            how.push(format!(
                "verified and unpacked {} into {}",
                deb.path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                unpack_dir.display()
            ));
            unpacked_source(unpack_dir, deb.upstream()).with_context(|| {
                format!(
                    "{} holds no usr/src/rustc-{}/library/core",
                    deb.path.display(),
                    deb.upstream()
                )
            })?
        }
    };
    replace_symlink(dest, &source)?;
    if rust_src_present(dest).is_none() {
        bail!("linked {} but it has no library/core", dest.display());
    }
    how.push(format!("linked {} -> {}", dest.display(), source.display()));
    Ok(how.join(", "))
}

// ------------------------------------------------------------- bpf-linker

/// Where `cargo install` puts binaries: `CARGO_INSTALL_ROOT`, else
/// `CARGO_HOME`, else `~/.cargo`.
fn cargo_install_root() -> Result<PathBuf> {
    for var in ["CARGO_INSTALL_ROOT", "CARGO_HOME"] {
        if let Some(dir) = env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
    }
    Ok(util::home()?.join(".cargo"))
}

/// `bpf-linker --version` of `binary`: `Ok("0.13.0")`, or why it does not run.
fn bpf_linker_version(binary: &Path) -> Result<String, String> {
    let c = capture(
        Command::new(binary).arg("--version"),
        Some(Duration::from_secs(30)),
    )
    .map_err(|e| format!("{e:#}"))?;
    if !c.status.success() {
        return Err(c.error_line());
    }
    c.stdout
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("unexpected --version output {:?}", c.stdout.trim()))
}

/// The nightly's LLVM shared library: its file name
/// (`libLLVM.so.22.1-rust-1.97.0-nightly`) and major version (22).
#[derive(Debug, PartialEq, Eq)]
struct RustLlvm {
    file_name: String,
    major: u32,
}

fn llvm_major(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix("libLLVM.so.")?;
    if !rest.contains("-rust-") {
        return None;
    }
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn find_rust_llvm(sysroot: &Path) -> Result<RustLlvm> {
    let lib = sysroot.join("lib");
    let mut found: Vec<RustLlvm> = fs::read_dir(&lib)
        .with_context(|| format!("cannot read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file_name = e.file_name().into_string().ok()?;
            let major = llvm_major(&file_name)?;
            Some(RustLlvm { file_name, major })
        })
        .collect();
    found.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    found.pop().with_context(|| {
        format!(
            "no libLLVM.so.*-rust-* in {}: bpf-linker is built against the LLVM shared \
             library of the nightly toolchain, and this one ships none",
            lib.display()
        )
    })
}

/// Makes `<prefix>/lib/{libLLVM.so, <file_name>}` symlinks to the nightly's
/// LLVM, the layout bpf-linker's build (`LLVM_PREFIX`) expects.
fn link_rust_llvm(sysroot: &Path, prefix: &Path) -> Result<RustLlvm> {
    let llvm = find_rust_llvm(sysroot)?;
    let target = sysroot.join("lib").join(&llvm.file_name);
    let lib = prefix.join("lib");
    replace_symlink(&lib.join("libLLVM.so"), &target)?;
    replace_symlink(&lib.join(&llvm.file_name), &target)?;
    Ok(llvm)
}

fn bpf_linker_install_command(llvm_prefix: &Path, llvm_major: u32) -> Command {
    let mut cmd = util::cargo();
    cmd.env("LLVM_PREFIX", llvm_prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{llvm_major}"),
    ]);
    cmd
}

fn not_on_path(binary: &Path, version: &str) -> anyhow::Error {
    let dir = binary.parent().unwrap_or(binary);
    anyhow!(
        "bpf-linker {version} is installed at {}, but {} is not on PATH, where the eBPF \
         build looks for it: add it (`export PATH=\"{}:$PATH\"`) and re-run",
        binary.display(),
        dir.display(),
        dir.display()
    )
}

fn bpf_linker(sysroot: &Path, llvm_prefix: &Path, install_root: &Path) -> Result<Outcome> {
    let installed = install_root.join("bin").join("bpf-linker");
    let on_path = find_on_path("bpf-linker");
    let reason = match &on_path {
        Some(path) => match bpf_linker_version(path) {
            Ok(v) if v.starts_with(BPF_LINKER_SERIES) => {
                return Ok(Outcome::already(format!(
                    "bpf-linker {v} at {}",
                    path.display()
                )));
            }
            Ok(v) => format!("{} is version {v}", path.display()),
            Err(e) => format!("{} does not run ({e})", path.display()),
        },
        None => {
            if let Ok(v) = bpf_linker_version(&installed)
                && v.starts_with(BPF_LINKER_SERIES)
            {
                return Err(not_on_path(&installed, &v));
            }
            "not on PATH".to_string()
        }
    };
    progress(format!(
        "bpf-linker: {reason}; installing {BPF_LINKER_VERSION} with cargo install against the \
         nightly's LLVM (about 75 s on 2 cores)…"
    ));
    let start = Instant::now();
    let llvm = link_rust_llvm(sysroot, llvm_prefix)?;
    let mut cmd = bpf_linker_install_command(llvm_prefix, llvm.major);
    let c = capture(&mut cmd, Some(Duration::from_secs(60 * 60)))?;
    if !c.status.success() {
        bail!(
            "`{}` failed:\n{}\nbpf-linker links the eBPF object; it is built against the LLVM \
             of the nightly toolchain ({}), linked from {}. It needs crates.io and a C++ \
             toolchain (cc).",
            util::display(&cmd),
            c.tail(25),
            llvm.file_name,
            llvm_prefix.join("lib").display()
        );
    }
    let version = bpf_linker_version(&installed).map_err(|e| {
        anyhow!(
            "cargo install finished, but {} does not run: {e}",
            installed.display()
        )
    })?;
    if !version.starts_with(BPF_LINKER_SERIES) {
        bail!(
            "cargo install finished, but {} is version {version}",
            installed.display()
        );
    }
    match find_on_path("bpf-linker") {
        Some(p) if bpf_linker_version(&p).is_ok_and(|v| v == version) => {}
        Some(p) => bail!(
            "installed bpf-linker {version} at {}, but {} comes first on PATH and is not \
             usable: remove it or put {} first",
            installed.display(),
            p.display(),
            install_root.join("bin").display()
        ),
        None => return Err(not_on_path(&installed, &version)),
    }
    Ok(Outcome::done(format!(
        "installed {version} in {}",
        human(start.elapsed())
    )))
}

// --------------------------------------------------------------- packages

/// Make crowdsec's post-install skip the Central API registration (see
/// [`CROWDSEC_CAPI`]); a half-configured package from an earlier failed
/// install is configured again by the apt-get install that follows.
fn skip_crowdsec_capi() -> Result<()> {
    let path = Path::new(CROWDSEC_CAPI);
    if fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .with_context(|| format!("creating {}", path.display()))?;
    fs::write(
        path,
        concat!(
            "# Written by `cargo xtask setup`: no CrowdSec Central API registration\n",
            "# (the tests run the Local API alone). `cscli capi register` registers.\n",
        ),
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn deb_installed(package: &str) -> Result<bool> {
    let c = capture(
        Command::new("dpkg-query").args(["-W", "-f=${Status}", package]),
        Some(Duration::from_secs(60)),
    )?;
    Ok(c.status.success() && c.stdout.split_whitespace().last() == Some("installed"))
}

fn packages(groups: &[Group]) -> Result<Outcome> {
    let wanted: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(g, _)| groups.contains(g))
        .map(|(_, p)| *p)
        .collect();
    if find_on_path("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: this step installs Debian packages ({}) with apt-get; on \
             other systems install their equivalents yourself and re-run with --no-packages",
            wanted.join(", ")
        );
    }
    let mut missing = Vec::new();
    for p in &wanted {
        if !deb_installed(p)? {
            missing.push(*p);
        }
    }
    if missing.is_empty() {
        return Ok(Outcome::already(wanted.join(", ")));
    }
    let list = missing.join(" ");
    if !util::is_root() {
        bail!(
            "missing Debian packages: {list}; installing them needs root: run \
             `sudo apt-get install -y {list}`, or `cargo xtask setup` as root"
        );
    }
    progress(format!("packages: installing {list} with apt-get…"));
    let start = Instant::now();
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        let c = capture(&mut cmd, Some(Duration::from_secs(30 * 60)))?;
        if !c.status.success() {
            bail!(
                "`{}` failed:\n{}\nmissing Debian packages: {list}",
                util::display(&cmd),
                c.tail(15)
            );
        }
        Ok(())
    };
    if missing.contains(&CROWDSEC) {
        skip_crowdsec_capi()?;
    }
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    // A package left half-configured by an earlier failed install (the
    // crowdsec one without network, before the file above) is not
    // configured again by apt-get install: finish it.
    if missing.iter().any(|p| !deb_installed(p).unwrap_or(false)) {
        let mut cmd = Command::new("dpkg");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["--configure", "--pending"]);
        let c = capture(&mut cmd, Some(Duration::from_secs(10 * 60)))?;
        if !c.status.success() {
            bail!("`{}` failed:\n{}", util::display(&cmd), c.tail(15));
        }
    }
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !deb_installed(p).unwrap_or(false))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished, but {} is still not installed",
            still.join(", ")
        );
    }
    Ok(Outcome::done(format!(
        "installed {} in {}",
        missing.join(", "),
        human(start.elapsed())
    )))
}

// ----------------------------------------------------------------- python

/// The pinned versions `pip freeze` of the environment lacks.
fn python_missing(venv: &Path) -> Result<Vec<&'static str>> {
    let pip = venv.join("bin").join("pip");
    if !pip.exists() {
        return Ok(PYTHON_PACKAGES.to_vec());
    }
    let c = capture(
        Command::new(&pip).args(["freeze", "--disable-pip-version-check"]),
        Some(Duration::from_secs(120)),
    )?;
    let have: Vec<String> = c
        .stdout
        .lines()
        .map(|l| l.trim().to_ascii_lowercase().replace('_', "-"))
        .collect();
    Ok(PYTHON_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.iter().any(|h| h == &p.to_ascii_lowercase()))
        .collect())
}

/// The tests' Python packages in their virtual environment: created with
/// Debian's `python3 -m venv` (python3-venv, from the packages step) when
/// missing, then `pip install` of the pinned versions not there yet.
fn python_tools() -> Result<Outcome> {
    let venv = python_venv()?;
    let missing = python_missing(&venv)?;
    if missing.is_empty() {
        return Ok(Outcome::already(format!(
            "{} in {}",
            PYTHON_PACKAGES.join(", "),
            venv.display()
        )));
    }
    let start = Instant::now();
    let python = ["/usr/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| find_on_path("python3"))
        .ok_or_else(|| anyhow!("python3 not found: install Debian's python3 and python3-venv"))?;
    if !venv.join("bin").join("pip").exists() {
        progress(format!("python: creating {}…", venv.display()));
        if let Some(parent) = venv.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "venv", "--clear"]).arg(&venv);
        let c = capture(&mut cmd, Some(Duration::from_secs(10 * 60)))?;
        if !c.status.success() {
            bail!(
                "`{}` failed:\n{}\nthe TAXII feed test needs a Python virtual environment \
                 (Debian: apt-get install python3-venv)",
                util::display(&cmd),
                c.tail(10)
            );
        }
    }
    progress(format!(
        "python: installing {} with pip…",
        missing.join(" ")
    ));
    let mut cmd = Command::new(venv.join("bin").join("pip"));
    cmd.args(["install", "-q", "--disable-pip-version-check"])
        .args(&missing);
    let c = capture(&mut cmd, Some(Duration::from_secs(20 * 60)))?;
    if !c.status.success() {
        bail!(
            "`{}` failed:\n{}\nmissing PyPI packages: {} (pip needs access to PyPI)",
            util::display(&cmd),
            c.tail(15),
            missing.join(", ")
        );
    }
    let still = python_missing(&venv)?;
    if !still.is_empty() {
        bail!("pip finished, but {} is still missing", still.join(", "));
    }
    Ok(Outcome::done(format!(
        "installed {} into {} in {}",
        missing.join(", "),
        venv.display(),
        human(start.elapsed())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty folder under the system temp folder.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn nightly_in_toolchain_list() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2026-05-19-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly(""));
    }

    #[test]
    fn minor_versions() {
        assert_eq!(rust_minor("1.97.0-nightly"), Some(97));
        assert_eq!(rust_minor("1.97.1+dfsg1-1"), Some(97));
        assert_eq!(rust_minor("1:1.80.0+dfsg-2"), Some(80));
        assert_eq!(rust_minor("garbage"), None);
    }

    #[test]
    fn llvm_file_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.19.1-rust-1.84.0-nightly"), Some(19));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(llvm_major("librustc_driver-b5a965480ee51f9a.so"), None);
    }

    #[test]
    fn sha256sums_lines() {
        let sums = "D0637F8F  rust-src_1.97.1+dfsg1-1_all.deb\nabcd *other.deb\n";
        assert_eq!(
            expected_sha256(sums, "rust-src_1.97.1+dfsg1-1_all.deb").as_deref(),
            Some("d0637f8f")
        );
        assert_eq!(expected_sha256(sums, "other.deb").as_deref(), Some("abcd"));
        assert_eq!(expected_sha256(sums, "missing.deb"), None);
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = temp_dir("sha");
        let f = dir.join("abc");
        fs::write(&f, "abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn picks_the_deb_of_the_nightly_minor() {
        let dir = temp_dir("pick");
        for name in [
            "rust-src_1.96.0+dfsg1-1_all.deb",
            "rust-src_1.97.1+dfsg1-1_all.deb",
            "rust-src_1.98.0+dfsg1-1_all.deb",
            "SHA256SUMS",
        ] {
            fs::write(dir.join(name), "").unwrap();
        }
        let deb = pick_deb(&dir, Some(97)).unwrap();
        assert_eq!(deb.version, "1.97.1+dfsg1-1");
        assert_eq!(deb.upstream(), "1.97.1");
        assert_eq!(pick_deb(&dir, Some(99)).unwrap().upstream(), "1.98.0");
        fs::remove_dir_all(&dir).unwrap();
        assert!(pick_deb(&dir, Some(97)).is_err());
    }

    #[test]
    fn links_the_nightly_llvm() {
        let dir = temp_dir("llvm");
        let sysroot = dir.join("sysroot");
        fs::create_dir_all(sysroot.join("lib")).unwrap();
        let lib = "libLLVM.so.22.1-rust-1.97.0-nightly";
        fs::write(sysroot.join("lib").join(lib), "elf").unwrap();
        fs::write(
            sysroot.join("lib/libLLVM-22-rust-1.97.0-nightly.so"),
            "INPUT(...)",
        )
        .unwrap();
        let prefix = dir.join("llvm");
        for _ in 0..2 {
            // Twice: the second run finds the links in place.
            let llvm = link_rust_llvm(&sysroot, &prefix).unwrap();
            assert_eq!(
                llvm,
                RustLlvm {
                    file_name: lib.into(),
                    major: 22
                }
            );
            for link in ["libLLVM.so", lib] {
                assert_eq!(
                    fs::read_link(prefix.join("lib").join(link)).unwrap(),
                    sysroot.join("lib").join(lib)
                );
            }
        }
        let cmd = util::display(&bpf_linker_install_command(&prefix, 22));
        assert!(
            cmd.ends_with(
                "install bpf-linker --version 0.13.0 --locked --force --no-default-features \
                 --features llvm-22"
            ),
            "{cmd}"
        );
        assert!(
            cmd.starts_with(&format!("LLVM_PREFIX={} ", prefix.display())),
            "{cmd}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bpf_linker_on_path_is_recognised() {
        // The machine-level check: only meaningful where setup already ran.
        let Some(path) = find_on_path("bpf-linker") else {
            return;
        };
        let v = bpf_linker_version(&path).unwrap();
        assert!(v.chars().next().is_some_and(|c| c.is_ascii_digit()), "{v}");
    }

    /// The offline rust-src route end to end, on a small .deb built here with
    /// the layout of Debian's rust-src and a fake sysroot.
    #[test]
    fn rust_src_from_cache() {
        if find_on_path("dpkg-deb").is_none() {
            eprintln!("skipped: dpkg-deb not installed");
            return;
        }
        let dir = temp_dir("rust-src");
        let pkg = dir.join("pkg");
        fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        fs::write(
            pkg.join("DEBIAN/control"),
            "Package: rust-src\nVersion: 1.97.1+dfsg1-1\nArchitecture: all\n\
             Maintainer: test <t@example.org>\nDescription: test\n",
        )
        .unwrap();
        let core = pkg.join("usr/src/rustc-1.97.1/library/core/src");
        fs::create_dir_all(&core).unwrap();
        fs::write(core.join("lib.rs"), "#![no_std]\n").unwrap();
        let cache = dir.join("cache");
        fs::create_dir_all(&cache).unwrap();
        let deb = cache.join("rust-src_1.97.1+dfsg1-1_all.deb");
        let c = capture(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&pkg)
                .arg(&deb),
            None,
        )
        .unwrap();
        assert!(c.status.success(), "{}", c.tail(5));

        let sysroot = dir.join("sysroot");
        let dest = rust_src_dest(&sysroot);
        let unpack = dir.join("home/.cache/edge-filter/rust-src");

        // A wrong checksum is refused and leaves nothing behind.
        fs::write(
            cache.join("SHA256SUMS"),
            format!(
                "{}  {}\n",
                "0".repeat(64),
                deb.file_name().unwrap().to_string_lossy()
            ),
        )
        .unwrap();
        let err = install_rust_src_from_cache(&cache, &unpack, &dest, Some(97)).unwrap_err();
        assert!(format!("{err:#}").contains("SHA-256"), "{err:#}");
        assert!(!unpack.exists() && !dest.exists());

        // The right checksum: verified, unpacked, linked.
        fs::write(
            cache.join("SHA256SUMS"),
            format!(
                "{}  {}\n",
                sha256_file(&deb).unwrap(),
                deb.file_name().unwrap().to_string_lossy()
            ),
        )
        .unwrap();
        let how = install_rust_src_from_cache(&cache, &unpack, &dest, Some(97)).unwrap();
        assert!(how.contains("verified and unpacked"), "{how}");
        assert!(rust_src_present(&dest).is_some());
        assert_eq!(
            fs::read_link(&dest).unwrap(),
            unpack.join("usr/src/rustc-1.97.1")
        );
        assert!(
            rust_src(&sysroot, "1.97.0-nightly", &cache, &unpack)
                .unwrap()
                .text
                .starts_with("already present")
        );

        // A dangling link (sysroot reinstalled elsewhere, cache kept) is
        // replaced without unpacking again.
        fs::remove_file(&dest).unwrap();
        symlink(dir.join("gone"), &dest).unwrap();
        assert!(rust_src_present(&dest).is_none());
        let how = install_rust_src_from_cache(&cache, &unpack, &dest, Some(97)).unwrap();
        assert!(how.starts_with("reused"), "{how}");
        assert!(rust_src_present(&dest).is_some());

        fs::remove_dir_all(dir).unwrap();
    }

    /// The offline route with the real cached Debian package (45 MB, a few
    /// seconds): `cargo test -p xtask -- --ignored`.
    #[test]
    #[ignore = "needs ../shared/toolchain (or EDGE_FILTER_TOOLCHAIN_CACHE)"]
    fn rust_src_from_the_real_cache() {
        let cache = env::var_os("EDGE_FILTER_TOOLCHAIN_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("../shared/toolchain"));
        let dir = temp_dir("real-rust-src");
        let dest = rust_src_dest(&dir.join("sysroot"));
        let unpack = dir.join("rust-src");
        let how = install_rust_src_from_cache(&cache, &unpack, &dest, Some(97)).unwrap();
        assert!(how.contains("verified and unpacked"), "{how}");
        assert!(dest.join("library/core/src/lib.rs").is_file());
        assert!(
            dest.join("library/compiler-builtins").is_dir() || dest.join("library/alloc").is_dir()
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
