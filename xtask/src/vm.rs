//! `cargo xtask vm-test`: the kernel matrix. Boots Debian kernels (fetched
//! by package name and cached) and kernel images of the user's under QEMU,
//! and runs the verifier, the differential replay and `edge-filter replay`
//! inside each guest. See `docs/kernels.md`.
//!
//! The guest is an initramfs: busybox-static, the host's glibc builds of
//! `edge-filter` and `ef-vmcheck` with the shared libraries `ldd` names, the
//! capture corpus, and the replay fixture (a blocklist sampled from the
//! corpus and the expectations the host kernel wrote for it). Results come
//! back over the serial console as lines starting with `EFVM `.
use std::{
    collections::VecDeque,
    env, fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::util::{self, capture, find_on_path, human, workspace_root};

/// The Debian meta-package whose dependency names the newest cloud kernel of
/// a suite (the cloud flavour boots fastest: few drivers, BTF included).
const META: &str = "linux-image-cloud-amd64";

/// The matrix when no `--kernel` or `--kernel-image` is given.
pub const DEFAULT_KERNELS: &[&str] = &["bookworm", "trixie", "newest"];

/// The Debian archive keyring (debian-archive-keyring) the private apt
/// configurations trust.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Lists younger than this are not refreshed (unless `--refresh`).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A name `--kernel` accepts besides package names: the newest cloud kernel
/// of these Debian suites (the highest version of [`META`] among them).
struct Release {
    name: &'static str,
    aliases: &'static [&'static str],
    /// Suites of the main archive.
    suites: &'static [&'static str],
    /// The suite of the security archive, if any.
    security: Option<&'static str>,
}

const RELEASES: &[Release] = &[
    Release {
        name: "bullseye",
        aliases: &["5.10"],
        suites: &["bullseye"],
        security: Some("bullseye-security"),
    },
    Release {
        name: "bookworm",
        aliases: &["6.1"],
        suites: &["bookworm", "bookworm-updates"],
        security: Some("bookworm-security"),
    },
    Release {
        name: "trixie",
        aliases: &["6.12"],
        suites: &["trixie", "trixie-updates"],
        security: Some("trixie-security"),
    },
    Release {
        name: "trixie-backports",
        aliases: &[],
        suites: &["trixie-backports"],
        security: None,
    },
    Release {
        name: "sid",
        aliases: &["unstable"],
        suites: &["sid"],
        security: None,
    },
    Release {
        name: "experimental",
        aliases: &[],
        suites: &["experimental"],
        security: None,
    },
    Release {
        name: "newest",
        aliases: &["latest"],
        suites: &["sid", "trixie-backports"],
        security: None,
    },
];

/// Debian suite names, to tell a Debian source from others in this
/// machine's apt configuration.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
    "experimental",
];

const LONG_ABOUT: &str = "\
Boot each kernel of a matrix under QEMU (software emulation, -accel tcg) and, \
inside the guest: load the XDP program (the verifier; loaded or rejected with \
its message), read the verifier's instruction count from the kernel's \
program info, run the differential replay (kernel verdicts vs the reference \
model over the capture corpus and generated packets), and run `edge-filter \
replay --expect` on the corpus with the expectations the host kernel wrote. \
Prints one row per kernel and exits non-zero if any kernel fails.

Kernels (--kernel, repeatable; default: bookworm, trixie, newest):
  bullseye | 5.10      Debian 11's cloud kernel (5.10)
  bookworm | 6.1       Debian 12's cloud kernel (6.1)
  trixie   | 6.12      Debian 13's cloud kernel (6.12)
  newest   | latest    the highest cloud kernel in sid and trixie-backports
  sid, trixie-backports, experimental
  a package name       e.g. linux-image-6.1.0-56-cloud-amd64, or with a *:
                       'linux-image-6.1.0-*-cloud-amd64' (the highest match)
Release names resolve through private apt configurations under the cache \
folder, with the mirrors of this machine's apt sources (nothing in /etc/apt \
changes); package names are looked up in this machine's apt first (after an \
`apt-get update` if unknown), then in those. The vmlinuz is extracted with \
dpkg-deb and cached; the package is then deleted.

--kernel-image PATH adds a kernel image of your own (an x86-64 bzImage with \
BPF, BTF, the 8250 serial console and initramfs support built in).

Needs qemu-system-x86, busybox-static and cpio (`cargo xtask setup --with vm`) \
and root for writing the replay expectations on the host (without root the \
replay step is skipped). Builds edge-filter and ef-vmcheck (--profile).";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `cargo build --release` (a cold build takes 7 to 12 min on 2 cores).
    Release,
    /// The dev profile (what `cargo xtask test` already built).
    Dev,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Boot other kernels under QEMU and run the verifier, differential and replay checks in each",
    long_about = LONG_ABOUT
)]
pub struct Args {
    /// A kernel of the matrix: a Debian release name or a package name (see
    /// above). Repeatable.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,

    /// A kernel image (bzImage/vmlinuz) of your own to add to the matrix.
    /// Repeatable.
    #[arg(long = "kernel-image", value_name = "PATH")]
    pub kernel_images: Vec<PathBuf>,

    /// Time limit per guest, in seconds; QEMU is killed after it.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub timeout: u64,

    /// Guests run at once (each is one emulated CPU). [default: the number
    /// of CPUs, at most the number of kernels]
    #[arg(long, short, value_name = "N")]
    pub jobs: Option<usize>,

    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory: u32,

    /// Entry sets of the differential replay (comma-separated names from
    /// tests/src/corpus/entries.rs) [default: all of them]
    #[arg(long, value_name = "NAMES")]
    pub sets: Option<String>,

    /// Build profile of the binaries put in the guest.
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    pub profile: Profile,

    /// Only fetch the kernels into the cache (no build, no boot).
    #[arg(long)]
    pub fetch_only: bool,

    /// Refresh the cached package lists even if less than a day old.
    #[arg(long)]
    pub refresh: bool,

    /// Cache folder for package lists, kernel images and run files.
    /// [default: ~/.cache/edge-filter/kernels]
    #[arg(long, value_name = "DIR", env = "EDGE_FILTER_KERNEL_CACHE")]
    pub cache: Option<PathBuf>,

    /// Debian archive mirror for the release names. [default: the Debian
    /// source of this machine's apt configuration]
    #[arg(long, value_name = "URI")]
    pub mirror: Option<String>,

    /// Debian security archive mirror. [default: the `*-security` source of
    /// this machine's apt configuration]
    #[arg(long, value_name = "URI")]
    pub security_mirror: Option<String>,

    /// Test data folder holding pcaps/. [default: <workspace>/../shared/data,
    /// or $EDGE_FILTER_SHARED_DATA]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

// ----------------------------------------------------------------- driver

/// A kernel image ready to boot.
#[derive(Clone, Debug)]
struct Kernel {
    /// What the user named (`bookworm`, a package, an image's file name).
    label: String,
    /// Package and version, or the image path.
    source: String,
    image: PathBuf,
}

/// One row of the summary.
#[derive(Debug, Default)]
struct Outcome {
    label: String,
    source: String,
    guest: Guest,
    /// Failures found outside the guest's own verdict (fetch, boot, timeout).
    problems: Vec<String>,
    boot_secs: Option<f64>,
    secs: f64,
    log: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let cache = match &args.cache {
        Some(c) => c.clone(),
        None => util::home()?
            .join(".cache")
            .join("edge-filter")
            .join("kernels"),
    };
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut names = args.kernels.clone();
    if names.is_empty() && args.kernel_images.is_empty() {
        names = DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect();
    }
    require_tools(!names.is_empty(), args.fetch_only)?;

    // 1. Kernels, in the order given: fetched images, or the reason why not.
    let fetcher = Fetcher::new(&cache, &args)?;
    let mut slots: Vec<std::result::Result<Kernel, Outcome>> = Vec::new();
    for name in &names {
        let t = Instant::now();
        match fetcher.kernel(name) {
            Ok(k) => {
                println!(
                    "vm-test: kernel {name}: {} ({})",
                    k.source,
                    human(t.elapsed())
                );
                slots.push(Ok(k));
            }
            Err(e) => {
                let why = format!("{e:#}");
                println!("vm-test: kernel {name}: cannot fetch: {why}");
                slots.push(Err(Outcome {
                    label: name.clone(),
                    source: "not fetched".into(),
                    problems: vec![format!("not fetched: {why}")],
                    ..Default::default()
                }));
            }
        }
    }
    for path in &args.kernel_images {
        let label = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        slots.push(match check_bzimage(path) {
            Ok(()) => Ok(Kernel {
                label,
                source: path.display().to_string(),
                image: path.clone(),
            }),
            Err(e) => Err(Outcome {
                label,
                source: path.display().to_string(),
                problems: vec![format!("{e:#}")],
                ..Default::default()
            }),
        });
    }
    let kernels: Vec<Kernel> = slots
        .iter()
        .filter_map(|s| s.as_ref().ok().cloned())
        .collect();
    if args.fetch_only {
        for k in &kernels {
            println!("{}\t{}\t{}", k.label, k.source, k.image.display());
        }
        let failed = slots.len() - kernels.len();
        if failed > 0 {
            bail!("{failed} kernel(s) could not be fetched");
        }
        return Ok(());
    }

    // 2. Binaries, replay fixture, initramfs.
    let (ef, vmcheck) = build(args.profile)?;
    let run_dir = cache.join("run");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(run_dir.join("logs"))?;
    let data = args
        .data
        .clone()
        .or_else(|| env::var_os("EDGE_FILTER_SHARED_DATA").map(PathBuf::from))
        .unwrap_or_else(|| workspace_root().join("..").join("shared").join("data"));
    let data = data.join("pcaps").is_dir().then_some(data);
    if data.is_none() {
        println!("vm-test: no capture corpus (../shared/data/pcaps): generated packets only");
    }
    let replay = replay_fixture(&ef, &vmcheck, data.as_deref(), &run_dir.join("replay"))?;
    let seed = seed()?;
    println!(
        "vm-test: fresh seed of the generated corpus {seed:#x} (EDGE_FILTER_SEED={seed:#x} repeats it)"
    );
    let t = Instant::now();
    let initrd = build_initramfs(&InitramfsSpec {
        dir: &run_dir,
        binaries: &[&ef, &vmcheck],
        data: data.as_deref(),
        replay: &replay,
        seed,
        sets: args.sets.as_deref(),
    })?;
    println!(
        "vm-test: initramfs {} ({:.0} MiB) in {}",
        initrd.display(),
        fs::metadata(&initrd)?.len() as f64 / 1048576.0,
        human(t.elapsed())
    );

    // 3. Boot.
    let jobs = args
        .jobs
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, kernels.len().max(1));
    let mut booted = boot_all(&kernels, &initrd, &run_dir.join("logs"), &args, jobs).into_iter();
    let outcomes: Vec<Outcome> = slots
        .into_iter()
        .filter_map(|s| match s {
            Ok(_) => booted.next(),
            Err(o) => Some(o),
        })
        .collect();

    // 4. Summary.
    println!();
    print!("{}", summary_table(&outcomes));
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed()).collect();
    for o in &failed {
        println!("\n{}: FAILED", o.label);
        for p in o.failures() {
            println!("  {p}");
        }
        if let Some(log) = &o.log {
            println!("  console log: {}", log.display());
        }
    }
    println!(
        "\nvm-test: {} kernel(s), {} failed, in {}",
        outcomes.len(),
        failed.len(),
        human(start.elapsed())
    );
    if !failed.is_empty() {
        bail!(
            "vm-test failed on {}",
            failed
                .iter()
                .map(|o| o.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn require_tools(fetching: bool, fetch_only: bool) -> Result<()> {
    let mut need = vec![("dpkg-deb", "dpkg")];
    if fetching {
        need.push(("apt-get", "apt"));
        need.push(("apt-cache", "apt"));
    }
    if !fetch_only {
        need.extend([
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("cpio", "cpio"),
            ("ldd", "libc-bin"),
        ]);
    }
    let missing: Vec<String> = need
        .iter()
        .filter(|(bin, _)| find_on_path(bin).is_none())
        .map(|(bin, pkg)| format!("{bin} (Debian package {pkg})"))
        .collect();
    if !fetch_only && busybox().is_none() {
        bail!("busybox not found: run `cargo xtask setup --with vm` (installs busybox-static)");
    }
    if !missing.is_empty() {
        bail!(
            "missing {}: run `cargo xtask setup --with vm`",
            missing.join(", ")
        );
    }
    Ok(())
}

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_on_path("busybox"))
}

/// The fresh seed of the generated corpus: `$EDGE_FILTER_SEED` or random.
fn seed() -> Result<u64> {
    if let Ok(s) = env::var("EDGE_FILTER_SEED") {
        let s = s.trim();
        let v = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        };
        return v.with_context(|| format!("EDGE_FILTER_SEED={s:?} is not a number"));
    }
    let mut b = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(u64::from_le_bytes(b))
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` or `<workspace>/target`.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

/// Builds `edge-filter` and `ef-vmcheck`; their paths.
fn build(profile: Profile) -> Result<(PathBuf, PathBuf)> {
    let mut cmd = util::cargo();
    cmd.arg("build");
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    cmd.args([
        "-p",
        "edge-filter",
        "-p",
        "edge-filter-tests",
        "--bin",
        "edge-filter",
        "--bin",
        "ef-vmcheck",
    ]);
    let t = Instant::now();
    util::run(&mut cmd)?;
    let dir = target_dir().join(match profile {
        Profile::Release => "release",
        Profile::Dev => "debug",
    });
    let (ef, check) = (dir.join("edge-filter"), dir.join("ef-vmcheck"));
    for p in [&ef, &check] {
        if !p.is_file() {
            bail!("{} was not built", p.display());
        }
    }
    println!("vm-test: binaries built in {}", human(t.elapsed()));
    Ok((ef, check))
}

// ---------------------------------------------------------------- fetching

/// Where Debian packages come from: this machine's apt configuration, or a
/// private one (own sources, lists and cache under the cache folder) for a
/// set of suites.
#[derive(Clone, Debug)]
struct Apt {
    name: String,
    /// The private configuration's folder; `None` for this machine's apt.
    root: Option<PathBuf>,
}

impl Apt {
    fn host() -> Self {
        Apt {
            name: "this machine's apt sources".into(),
            root: None,
        }
    }

    /// A private configuration for `release`, writing its sources file.
    fn private(cache: &Path, release: &Release, mirrors: &Mirrors) -> Result<Self> {
        let root = cache.join("apt").join(release.name);
        for d in ["lists/partial", "cache/archives/partial", "parts"] {
            fs::create_dir_all(root.join(d))?;
        }
        let archive = mirrors.archive.as_deref().ok_or_else(|| {
            anyhow!(
                "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d: \
                 pass --mirror URI"
            )
        })?;
        let signed = if Path::new(KEYRING).is_file() {
            format!("[signed-by={KEYRING}] ")
        } else {
            String::new()
        };
        let mut text = String::new();
        for s in release.suites {
            text.push_str(&format!("deb {signed}{archive} {s} main\n"));
        }
        if let (Some(sec), Some(uri)) = (release.security, &mirrors.security) {
            text.push_str(&format!("deb {signed}{uri} {sec} main\n"));
        }
        let file = root.join("sources.list");
        if fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            fs::write(&file, &text)?;
            // Other sources: the lists must be fetched again.
            let _ = fs::remove_file(root.join("lists").join("updated"));
        }
        Ok(Apt {
            name: format!("Debian {}", release.suites.join(" + ")),
            root: Some(root),
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(r) = &self.root {
            for (k, v) in [
                ("Dir::Etc::SourceList", r.join("sources.list")),
                ("Dir::Etc::SourceParts", r.join("parts")),
                ("Dir::Etc::Preferences", r.join("preferences")),
                ("Dir::Etc::PreferencesParts", r.join("parts")),
                ("Dir::State::Lists", r.join("lists")),
                ("Dir::Cache", r.join("cache")),
            ] {
                c.arg("-o").arg(format!("{k}={}", v.display()));
            }
            c.args([
                "-o",
                "APT::Architectures=amd64",
                "-o",
                "Acquire::Languages=none",
            ]);
        }
        c
    }

    /// `apt-get update`, for a private configuration only when its lists are
    /// older than a day (or `force`).
    fn update(&self, force: bool) -> Result<()> {
        let stamp = self.root.as_ref().map(|r| r.join("lists").join("updated"));
        if !force
            && let Some(s) = &stamp
            && fs::metadata(s)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age < LISTS_MAX_AGE)
        {
            return Ok(());
        }
        if self.root.is_none() && !util::is_root() {
            bail!("`apt-get update` needs root");
        }
        let mut c = self.cmd("apt-get");
        c.args(["-q", "update"]);
        let out = capture(&mut c, Some(Duration::from_secs(600)))?;
        if !out.status.success() || out.stdout.contains("Failed to fetch") {
            bail!("`apt-get update` ({}) failed:\n{}", self.name, out.tail(6));
        }
        if let Some(s) = stamp {
            fs::write(s, "")?;
        }
        Ok(())
    }

    fn text(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut c = self.cmd(program);
        c.args(args);
        let out = capture(&mut c, Some(Duration::from_secs(120)))?;
        Ok(out.stdout)
    }

    /// Whether apt knows a package of this name.
    fn knows(&self, package: &str) -> Result<bool> {
        Ok(!self.versions(package)?.is_empty())
    }

    /// The versions of a package the sources offer (`apt-cache madison`).
    fn versions(&self, package: &str) -> Result<Vec<String>> {
        Ok(parse_madison(
            &self.text("apt-cache", &["madison", package])?,
        ))
    }

    /// Package names matching a pattern with `*`, highest version first.
    fn matching(&self, pattern: &str) -> Result<Vec<String>> {
        let regex = format!(
            "^{}$",
            pattern
                .split('*')
                .map(regex_escape)
                .collect::<Vec<_>>()
                .join(".*")
        );
        let out = self.text("apt-cache", &["search", "--names-only", &regex])?;
        let mut names: Vec<String> = out
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && !n.ends_with("-dbg") && !n.ends_with("-unsigned"))
            .collect();
        names.sort_by(|a, b| version_cmp(b, a));
        names.dedup();
        Ok(names)
    }

    /// The kernel image package `META` of the highest version depends on.
    fn newest_image(&self) -> Result<(String, String)> {
        let mut versions = self.versions(META)?;
        if versions.is_empty() {
            bail!("{} offers no {META}", self.name);
        }
        versions.sort_by(|a, b| deb_version_cmp(b, a));
        let v = &versions[0];
        let show = self.text("apt-cache", &["show", &format!("{META}={v}")])?;
        let depends = show
            .lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .ok_or_else(|| anyhow!("{META} {v} has no Depends"))?;
        let image = dependency_names(depends)
            .into_iter()
            .find(|d| d.starts_with("linux-image-") && d != META)
            .ok_or_else(|| anyhow!("{META} {v} depends on no linux-image-* package"))?;
        Ok((image, v.clone()))
    }

    /// Downloads `package` (or `package=version`) into `dir`; the .deb.
    fn download(&self, spec: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let package = spec.split('=').next().unwrap_or(spec);
        let mut c = self.cmd("apt-get");
        c.args(["-q", "-o", "APT::Sandbox::User=root", "download", spec])
            .current_dir(dir);
        let out = capture(&mut c, Some(Duration::from_secs(900)))?;
        if !out.status.success() {
            bail!(
                "`apt-get download {spec}` ({}) failed:\n{}",
                self.name,
                out.tail(5)
            );
        }
        newest_file(dir, &format!("{package}_"), ".deb")
            .ok_or_else(|| anyhow!("apt-get download {spec} left no .deb in {}", dir.display()))
    }
}

/// The mirrors of this machine's Debian sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Mirrors {
    archive: Option<String>,
    security: Option<String>,
}

impl Mirrors {
    /// From /etc/apt/sources.list and sources.list.d/*.{list,sources}.
    fn of_host() -> Self {
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            more.sort();
            files.extend(more);
        }
        let mut m = Mirrors::default();
        for f in files {
            let Ok(text) = fs::read_to_string(&f) else {
                continue;
            };
            let name = f.to_string_lossy();
            let entries = if name.ends_with(".sources") {
                parse_deb822_sources(&text)
            } else if name.ends_with(".list") {
                parse_one_line_sources(&text)
            } else {
                continue;
            };
            m.learn(&entries);
        }
        m
    }

    fn learn(&mut self, entries: &[(String, String)]) {
        for (uri, suite) in entries {
            let base = suite.split(['-', '/']).next().unwrap_or(suite);
            if !DEBIAN_SUITES.contains(&base) {
                continue;
            }
            let slot = if suite.ends_with("-security") || suite.ends_with("/updates") {
                &mut self.security
            } else {
                &mut self.archive
            };
            if slot.is_none() {
                *slot = Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
}

/// `(uri, suite)` of every `deb` line of a one-line-style sources file.
fn parse_one_line_sources(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(i) => rest = rest[i + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
    out
}

/// `(uri, suite)` of every enabled `deb` stanza of a deb822 sources file.
fn parse_deb822_sources(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let uncommented: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    for stanza in uncommented.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push((uri.to_string(), suite.to_string()));
            }
        }
    }
    out
}

/// Resolves `--kernel` names to cached kernel images, downloading what is
/// missing.
struct Fetcher {
    cache: PathBuf,
    mirrors: Mirrors,
    refresh: bool,
}

impl Fetcher {
    fn new(cache: &Path, args: &Args) -> Result<Self> {
        let mut mirrors = Mirrors::of_host();
        if let Some(m) = &args.mirror {
            mirrors.archive = Some(m.clone());
        }
        if let Some(m) = &args.security_mirror {
            mirrors.security = Some(m.clone());
        }
        Ok(Fetcher {
            cache: cache.to_path_buf(),
            mirrors,
            refresh: args.refresh,
        })
    }

    fn release(name: &str) -> Option<&'static Release> {
        RELEASES
            .iter()
            .find(|r| r.name == name || r.aliases.contains(&name))
    }

    fn kernel(&self, name: &str) -> Result<Kernel> {
        if let Some(release) = Self::release(name) {
            return self.release_kernel(name, release);
        }
        if !name.starts_with("linux-") {
            let known: Vec<&str> = RELEASES.iter().map(|r| r.name).collect();
            bail!(
                "unknown kernel {name:?}: give a Debian release ({}), a version alias (5.10, 6.1, \
                 6.12), or a package name (linux-image-…); for an image file use --kernel-image",
                known.join(", ")
            );
        }
        self.package_kernel(name)
    }

    /// The newest cloud kernel of a release; with the lists unreachable, the
    /// one resolved last time.
    fn release_kernel(&self, name: &str, release: &Release) -> Result<Kernel> {
        let resolved = self.cache.join("resolved").join(release.name);
        let apt = Apt::private(&self.cache, release, &self.mirrors)?;
        let found = apt.update(self.refresh).and_then(|()| apt.newest_image());
        let (package, version) = match found {
            Ok(pv) => pv,
            Err(e) => {
                let Some((p, v)) = fs::read_to_string(&resolved)
                    .ok()
                    .and_then(|s| s.trim().split_once(' ').map(|(a, b)| (a.into(), b.into())))
                else {
                    return Err(e);
                };
                println!(
                    "vm-test: kernel {name}: {e:#}\n  using the cached {p} {v} resolved earlier"
                );
                (p, v)
            }
        };
        let k = self.image(&apt, name, &package)?;
        fs::create_dir_all(resolved.parent().unwrap_or(&self.cache))?;
        fs::write(&resolved, format!("{package} {version}\n"))?;
        Ok(k)
    }

    /// A package by name (or pattern): this machine's apt first (after
    /// `apt-get update` if it does not know it), then the releases' private
    /// configurations.
    fn package_kernel(&self, name: &str) -> Result<Kernel> {
        let images = self.cache.join("images");
        if !name.contains('*') && images.join(name).join("vmlinuz").is_file() {
            return self.image(&Apt::host(), name, name);
        }
        let host = Apt::host();
        let lookup = |apt: &Apt| -> Result<Option<String>> {
            if name.contains('*') {
                Ok(apt.matching(name)?.into_iter().next())
            } else {
                Ok(apt.knows(name)?.then(|| name.to_string()))
            }
        };
        if let Some(p) = lookup(&host)? {
            return self.image(&host, name, &p);
        }
        if util::is_root() {
            println!("vm-test: kernel {name}: unknown to apt; running apt-get update");
            if let Err(e) = host.update(true) {
                println!("vm-test: {e:#}");
            } else if let Some(p) = lookup(&host)? {
                return self.image(&host, name, &p);
            }
        }
        let mut tried = vec![host.name.clone()];
        for release in RELEASES.iter().filter(|r| r.name != "newest") {
            let apt = Apt::private(&self.cache, release, &self.mirrors)?;
            if let Err(e) = apt.update(self.refresh) {
                println!("vm-test: {e:#}");
                continue;
            }
            if let Some(p) = lookup(&apt)? {
                return self.image(&apt, name, &p);
            }
            tried.push(apt.name.clone());
        }
        bail!("no package {name} in {}", tried.join(", "))
    }

    /// The cached vmlinuz of `package`, downloading and extracting it (and,
    /// when the image lives in a dependency such as linux-binary-*, that).
    fn image(&self, apt: &Apt, label: &str, package: &str) -> Result<Kernel> {
        let dir = self.cache.join("images").join(package);
        let vmlinuz = dir.join("vmlinuz");
        if !vmlinuz.is_file() {
            let debs = self.cache.join("debs");
            println!(
                "vm-test: kernel {label}: downloading {package} ({})…",
                apt.name
            );
            let version = extract_vmlinuz(apt, package, &debs, &dir, 0)?;
            fs::write(dir.join("package"), format!("{package} {version}\n"))?;
            let _ = fs::remove_dir_all(&debs);
        }
        check_bzimage(&vmlinuz)?;
        let version = fs::read_to_string(dir.join("package"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
            .unwrap_or_default();
        Ok(Kernel {
            label: label.to_string(),
            source: format!("{package} {version}").trim().to_string(),
            image: vmlinuz,
        })
    }
}

/// Downloads `package`, finds its vmlinuz (following `linux-binary-*` and
/// `linux-image-*` dependencies up to two levels) and copies it (and the
/// kernel config) into `out`. The package's version.
fn extract_vmlinuz(
    apt: &Apt,
    package: &str,
    debs: &Path,
    out: &Path,
    depth: u32,
) -> Result<String> {
    let deb = apt.download(package, debs)?;
    let field = |f: &str| -> Result<String> {
        Ok(
            util::output(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f))?
                .trim()
                .to_string(),
        )
    };
    let version = field("Version")?;
    let tree = debs.join(format!("x-{package}"));
    let _ = fs::remove_dir_all(&tree);
    let mut x = Command::new("dpkg-deb");
    x.arg("-x").arg(&deb).arg(&tree);
    let c = capture(&mut x, Some(Duration::from_secs(300)))?;
    if !c.status.success() {
        bail!("`{}` failed: {}", util::display(&x), c.tail(5));
    }
    let found = find_in_tree(&tree, |rel| {
        let s = rel.to_string_lossy();
        (s.starts_with("boot/vmlinuz-"))
            || ((s.starts_with("usr/lib/modules/") || s.starts_with("lib/modules/"))
                && s.ends_with("/vmlinuz"))
    });
    if let Some(vmlinuz) = found {
        fs::create_dir_all(out)?;
        fs::copy(&vmlinuz, out.join("vmlinuz"))
            .with_context(|| format!("copying {}", vmlinuz.display()))?;
        if let Some(cfg) = find_in_tree(&tree, |rel| {
            let s = rel.to_string_lossy();
            s.starts_with("boot/config-") || (s.contains("/modules/") && s.ends_with("/config"))
        }) {
            let _ = fs::copy(cfg, out.join("config"));
        }
        let _ = fs::remove_dir_all(&tree);
        return Ok(version);
    }
    let _ = fs::remove_dir_all(&tree);
    if depth >= 2 {
        bail!("no vmlinuz in {package} nor in its linux-binary-*/linux-image-* dependencies");
    }
    let depends = field("Depends").unwrap_or_default();
    for dep in dependency_names(&depends) {
        if dep != package
            && (dep.starts_with("linux-binary-") || dep.starts_with("linux-image-"))
            && extract_vmlinuz(apt, &dep, debs, out, depth + 1).is_ok()
        {
            return Ok(version);
        }
    }
    bail!(
        "no vmlinuz in {package} (looked in boot/ and usr/lib/modules/*/) nor in its dependencies"
    )
}

/// The first file below `root` whose path relative to it satisfies `want`.
fn find_in_tree(root: &Path, want: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && let Ok(rel) = p.strip_prefix(root)
                && want(rel)
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files.into_iter().next()
}

fn newest_file(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// Package names in a `Depends` field (alternatives included, versions
/// dropped).
fn dependency_names(depends: &str) -> Vec<String> {
    depends
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_string())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Versions from `apt-cache madison` output.
fn parse_madison(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    v.dedup();
    v
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if ".+?()[]{}^$|\\".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Debian version order, by `dpkg --compare-versions`; falls back to
/// [`version_cmp`] if dpkg cannot be run.
fn deb_version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    if a == b {
        return Equal;
    }
    match Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
    {
        Ok(s) if s.success() => Greater,
        Ok(s) if s.code() == Some(1) => Less,
        _ => version_cmp(a, b),
    }
}

/// Natural order: runs of digits compare as numbers (`6.1.0-9` < `6.1.0-10`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match out.last_mut() {
                Some((kind, text)) if *kind == d => text.push(c),
                _ => out.push((d, c.to_string())),
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let o = if x.0 && y.0 {
            let (nx, ny) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
            nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny))
        } else {
            x.1.cmp(&y.1)
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

/// Refuses files that are not x86 bzImages (the "HdrS" magic of the boot
/// protocol at offset 0x202).
fn check_bzimage(path: &Path) -> Result<()> {
    let mut head = Vec::with_capacity(0x206);
    fs::File::open(path)
        .and_then(|f| f.take(0x206).read_to_end(&mut head))
        .with_context(|| format!("reading kernel image {}", path.display()))?;
    if head.len() < 0x206 || &head[0x202..0x206] != b"HdrS" {
        bail!(
            "{} is not an x86 kernel image (bzImage/vmlinuz): no HdrS boot header",
            path.display()
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ replay

/// What the guest's `edge-filter replay` step gets.
#[derive(Debug)]
enum ReplayFixture {
    /// blocklist, allowlist and expectations, in this folder.
    Ready(PathBuf),
    NotAvailable(String),
}

/// Writes the replay fixture: the `all` entry set sampled from the corpus
/// (by `ef-vmcheck lists`) and the expectations this machine's kernel writes
/// for it (`edge-filter replay --write-expect`, needs root).
fn replay_fixture(
    ef: &Path,
    vmcheck: &Path,
    data: Option<&Path>,
    dir: &Path,
) -> Result<ReplayFixture> {
    let help = capture(
        Command::new(ef).args(["replay", "--help"]),
        Some(Duration::from_secs(30)),
    )?;
    if !help.status.success() {
        return Ok(ReplayFixture::NotAvailable(
            "this edge-filter has no replay subcommand".into(),
        ));
    }
    let Some(data) = data else {
        return Ok(ReplayFixture::NotAvailable("no capture corpus".into()));
    };
    if !util::is_root() {
        return Ok(ReplayFixture::NotAvailable(
            "the expectations are written by this machine's kernel, which needs root".into(),
        ));
    }
    fs::create_dir_all(dir)?;
    let (bl, al, ex) = (
        dir.join("blocklist.txt"),
        dir.join("allowlist.txt"),
        dir.join("expect.json"),
    );
    util::output(
        Command::new(vmcheck)
            .arg("lists")
            .arg("--data")
            .arg(data)
            .arg("--blocklist")
            .arg(&bl)
            .arg("--allowlist")
            .arg(&al),
    )?;
    let mut w = Command::new(ef);
    // The corpus holds captures that are unreadable on purpose: allowed
    // explicitly, here and in the guest.
    w.arg("replay")
        .arg(data.join("pcaps"))
        .arg("--allow-unreadable")
        .arg("--blocklist")
        .arg(&bl)
        .arg("--allowlist")
        .arg(&al)
        .arg("--write-expect")
        .arg(&ex);
    let c = capture(&mut w, Some(Duration::from_secs(600)))?;
    if !c.status.success() {
        bail!(
            "writing the replay expectations with this machine's kernel failed: `{}`:\n{}",
            util::display(&w),
            c.tail(10)
        );
    }
    println!(
        "vm-test: replay fixture: {} ({})",
        dir.display(),
        c.stdout.lines().next().unwrap_or("").trim()
    );
    Ok(ReplayFixture::Ready(dir.to_path_buf()))
}

// --------------------------------------------------------------- initramfs

struct InitramfsSpec<'a> {
    dir: &'a Path,
    binaries: &'a [&'a Path],
    data: Option<&'a Path>,
    replay: &'a ReplayFixture,
    seed: u64,
    sets: Option<&'a str>,
}

/// Builds `dir/initrd.cpio` (uncompressed newc: every kernel unpacks it, and
/// unpacking is faster than decompressing under emulation).
fn build_initramfs(spec: &InitramfsSpec<'_>) -> Result<PathBuf> {
    let root = spec.dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "ef", "proc", "sys", "dev", "tmp", "run"] {
        fs::create_dir_all(root.join(d))?;
    }
    let bb = busybox().ok_or_else(|| anyhow!("busybox not found"))?;
    let ldd = capture(Command::new("ldd").arg(&bb), Some(Duration::from_secs(30)))?;
    if ldd.stdout.contains("=>") {
        bail!(
            "{} is dynamically linked: install busybox-static (`cargo xtask setup --with vm`)",
            bb.display()
        );
    }
    fs::copy(&bb, root.join("bin/busybox"))?;
    let mut libs: Vec<PathBuf> = Vec::new();
    for bin in spec.binaries {
        let name = bin.file_name().ok_or_else(|| anyhow!("bad path"))?;
        fs::copy(bin, root.join("ef").join(name))
            .with_context(|| format!("copying {}", bin.display()))?;
        let out = util::output(Command::new("ldd").arg(bin))?;
        for lib in parse_ldd(&out) {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in &libs {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(lib));
        fs::create_dir_all(dest.parent().unwrap_or(&root))?;
        fs::copy(lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    if let Some(data) = spec.data {
        copy_tree(&data.join("pcaps"), &root.join("ef/data/pcaps"))?;
    }
    if let ReplayFixture::Ready(dir) = spec.replay {
        copy_tree(dir, &root.join("ef/replay"))?;
    }
    let script = init_script(spec);
    fs::write(root.join("init"), script)?;
    set_mode(&root.join("init"), 0o755)?;

    // cpio wants the file list on stdin, parents first.
    let mut list = Vec::new();
    walk(&root, Path::new("."), &mut list)?;
    let out = spec.dir.join("initrd.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&out)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start cpio")?;
    {
        let mut stdin = cpio.stdin.take().ok_or_else(|| anyhow!("cpio stdin"))?;
        for p in &list {
            writeln!(stdin, "{}", p.display())?;
        }
    }
    let o = cpio.wait_with_output()?;
    if !o.status.success() {
        bail!("cpio failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(out)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(rel.to_path_buf());
    let full = root.join(rel);
    if fs::symlink_metadata(&full)?.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(&full)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for e in entries {
            walk(root, &rel.join(e), out)?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else if fs::metadata(&src).is_ok_and(|m| m.is_file()) {
            fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Library paths from `ldd` output (the dynamic loader included, the vDSO
/// left out).
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Strips what would break out of a double-quoted shell string.
fn shell_safe(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '"' | '\\' | '$' | '`' | '\n'))
        .collect()
}

fn init_script(spec: &InitramfsSpec<'_>) -> String {
    let mut check = format!("/ef/ef-vmcheck check --attach-lo --seed {:#x}", spec.seed);
    if spec.data.is_some() {
        check.push_str(" --data /ef/data");
    }
    if let Some(sets) = spec.sets {
        check.push_str(&format!(" --sets \"{}\"", shell_safe(sets)));
    }
    let replay = match spec.replay {
        ReplayFixture::Ready(_) => "\
/ef/edge-filter replay /ef/data/pcaps --allow-unreadable --blocklist /ef/replay/blocklist.txt \\
    --allowlist /ef/replay/allowlist.txt --expect /ef/replay/expect.json >/tmp/replay.out 2>&1
rc=$?
head -n 3 /tmp/replay.out | sed 's/^/EFVM replay-out: /'
if [ $rc -ne 0 ]; then tail -n 12 /tmp/replay.out | sed 's/^/EFVM replay-out: /'; fi
if [ $rc -eq 0 ]; then echo \"EFVM replay: ok\"; else echo \"EFVM replay: fail (exit $rc)\"; fi"
            .to_string(),
        ReplayFixture::NotAvailable(why) => {
            format!("echo \"EFVM replay: not available ({})\"", shell_safe(why))
        }
    };
    format!(
        "#!/bin/busybox sh
# The vm-test guest (written by `cargo xtask vm-test`).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf || echo \"EFVM bpffs: cannot mount\"
ip link set lo up 2>/dev/null
echo \"EFVM boot: $(cut -d' ' -f1 /proc/uptime) s\"
{check}
echo \"EFVM check-exit: $?\"
{replay}
echo \"EFVM end: $(cut -d' ' -f1 /proc/uptime) s\"
poweroff -f
sleep 5
echo o >/proc/sysrq-trigger
"
    )
}

// -------------------------------------------------------------------- boot

/// The `EFVM key: value` lines a guest printed, in order.
#[derive(Debug, Default)]
struct Guest {
    lines: Vec<(String, String)>,
    /// The last console lines that were not results (for failures).
    tail: VecDeque<String>,
    panic: Option<String>,
}

impl Guest {
    fn feed(&mut self, line: &str) {
        if let Some((k, v)) = parse_efvm(line) {
            self.lines.push((k, v));
        } else {
            if self.panic.is_none() && line.contains("Kernel panic") {
                self.panic = Some(line.trim().to_string());
            }
            self.tail.push_back(line.to_string());
            if self.tail.len() > 15 {
                self.tail.pop_front();
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A `name=value` field of a result line.
    fn field(&self, key: &str, name: &str) -> Option<String> {
        self.get(key)?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    }
}

/// `EFVM key: value` (or the continuation `EFVM key+ value`) anywhere in a
/// console line (kernel messages may precede it).
fn parse_efvm(line: &str) -> Option<(String, String)> {
    let at = line.find("EFVM ")?;
    let rest = &line[at + 5..];
    let end = rest.find([':', '+'])?;
    let key = &rest[..end];
    if key.is_empty() || key.contains(' ') {
        return None;
    }
    let value = rest[end + 1..]
        .strip_prefix(' ')
        .unwrap_or(&rest[end + 1..]);
    Some((key.to_string(), value.trim_end().to_string()))
}

impl Outcome {
    fn failures(&self) -> Vec<String> {
        let mut out = self.problems.clone();
        let g = &self.guest;
        if !out.is_empty() {
            if g.get("end").is_none() && !g.tail.is_empty() {
                out.push("last console lines:".into());
                out.extend(g.tail.iter().map(|l| format!("  | {l}")));
            }
            return out;
        }
        if let Some(p) = &g.panic {
            out.push(format!("kernel panic: {p}"));
        }
        if g.get("kernel").is_none() {
            if g.tail.iter().all(|l| l.trim().is_empty()) {
                out.push(
                    "the checks did not start and the console stayed silent: the kernel never \
                     reached its serial console (not an x86-64 kernel for a PC, no 8250 serial \
                     console built in, too little --memory, or it reset while booting)"
                        .into(),
                );
            } else {
                out.push("the checks did not start in the guest; last console lines:".into());
                out.extend(g.tail.iter().map(|l| format!("  | {l}")));
            }
            return out;
        }
        match g.get("load") {
            Some(l) if l.starts_with("loaded") => {}
            Some("rejected") => {
                out.push("the verifier rejected the program:".into());
                out.extend(g.all("verifier").iter().map(|l| format!("  | {l}")));
            }
            Some(other) => out.push(format!("loading the program: {other}")),
            None => out.push("the guest printed no load result".into()),
        }
        if let Some(e) = g.get("error") {
            out.push(format!("ef-vmcheck: {e}"));
        }
        if let Some(a) = g.get("attach")
            && !a.starts_with("ok")
        {
            out.push(format!("attach: {a}"));
        }
        if let Some(f) = g.get("features")
            && !f.starts_with("ok")
        {
            out.push(format!("kernel feature probes: {f}"));
        }
        for m in g.all("mismatch") {
            out.push(format!("disagreement: {m}"));
        }
        for m in g.all("counter-mismatch") {
            out.push(format!("counters: {m}"));
        }
        match g.get("v2-load") {
            Some("rejected") => {
                out.push("the verifier rejected datapath v2's program:".into());
                out.extend(g.all("v2-verifier").iter().map(|l| format!("  | {l}")));
            }
            Some(_) => {
                if g.field("v2-differential", "disagreements").as_deref() != Some("0") {
                    out.push(format!(
                        "datapath v2 differential: {}",
                        g.get("v2-differential").unwrap_or("did not finish")
                    ));
                }
                for m in g.all("v2-mismatch") {
                    out.push(format!("datapath v2 disagreement: {m}"));
                }
            }
            None => {}
        }
        if g.get("load").is_some_and(|l| l.starts_with("loaded")) && g.get("result") != Some("ok") {
            out.push(format!(
                "differential: {}",
                g.get("differential").unwrap_or("did not finish")
            ));
        }
        match g.get("replay") {
            Some(r) if r.starts_with("ok") || r.starts_with("not available") => {}
            Some(r) => {
                out.push(format!("edge-filter replay --expect: {r}"));
                out.extend(g.all("replay-out").iter().map(|l| format!("  | {l}")));
            }
            None => out.push("edge-filter replay did not run".into()),
        }
        if g.get("end").is_none() && out.is_empty() {
            out.push("the guest stopped before the end of the checks".into());
        }
        out
    }

    fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

/// Boots every kernel, `jobs` at a time.
fn boot_all(
    kernels: &[Kernel],
    initrd: &Path,
    logs: &Path,
    args: &Args,
    jobs: usize,
) -> Vec<Outcome> {
    let queue: Arc<Mutex<VecDeque<(usize, Kernel)>>> =
        Arc::new(Mutex::new(kernels.iter().cloned().enumerate().collect()));
    let (tx, rx) = mpsc::channel();
    let timeout = Duration::from_secs(args.timeout);
    let memory = args.memory;
    thread::scope(|s| {
        for _ in 0..jobs {
            let queue = Arc::clone(&queue);
            let tx = tx.clone();
            s.spawn(move || {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).ok().flatten();
                    let Some((i, k)) = next else { break };
                    let o = boot(&k, initrd, logs, timeout, memory);
                    let _ = tx.send((i, o));
                }
            });
        }
    });
    drop(tx);
    let mut results: Vec<(usize, Outcome)> = rx.into_iter().collect();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

/// The QEMU command line for one guest.
fn qemu_command(image: &Path, initrd: &Path, memory: u32) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m"])
        .arg(memory.to_string())
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-kernel",
        ])
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off rdinit=/init",
        ]);
    c
}

/// Boots one kernel; reads its console until it powers off, stopping QEMU
/// after `timeout`.
fn boot(k: &Kernel, initrd: &Path, logs: &Path, timeout: Duration, memory: u32) -> Outcome {
    let start = Instant::now();
    let safe: String = k
        .label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let log_path = logs.join(format!("{safe}.log"));
    let mut o = Outcome {
        label: k.label.clone(),
        source: k.source.clone(),
        log: Some(log_path.clone()),
        ..Default::default()
    };
    let mut cmd = qemu_command(&k.image, initrd, memory);
    println!("[{}] $ {}", k.label, util::display(&cmd));
    let mut log = match fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => {
            o.problems
                .push(format!("cannot create {}: {e}", log_path.display()));
            return o;
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            o.problems
                .push(format!("cannot start qemu-system-x86_64: {e}"));
            return o;
        }
    };
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .replace('\r', "");
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        }));
    }
    drop(tx);
    let deadline = start + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                if let Some((key, value)) = parse_efvm(&line) {
                    if key == "boot" && o.boot_secs.is_none() {
                        o.boot_secs = Some(start.elapsed().as_secs_f64());
                    }
                    if !matches!(key.as_str(), "replay-out" | "verifier" | "mismatch") {
                        println!("[{}] {key}: {value}", k.label);
                    }
                }
                o.guest.feed(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                    break;
                }
            }
        }
    }
    if timed_out {
        let _ = child.kill();
        o.problems.push(format!(
            "timed out after {} (QEMU stopped); raise --timeout if the guest was still working",
            human(timeout)
        ));
    }
    // QEMU exits on poweroff; bound the wait anyway.
    let wait_until = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() && !timed_out && o.guest.get("end").is_none() {
                    o.problems
                        .push(format!("qemu-system-x86_64 exited with {status}"));
                }
                break;
            }
            Ok(None) if Instant::now() < wait_until => thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    for r in readers {
        let _ = r.join();
    }
    o.secs = start.elapsed().as_secs_f64();
    println!(
        "[{}] {} in {}",
        k.label,
        if o.passed() { "passed" } else { "FAILED" },
        human(Duration::from_secs_f64(o.secs))
    );
    o
}

// ----------------------------------------------------------------- summary

fn summary_table(outcomes: &[Outcome]) -> String {
    let header = [
        "kernel",
        "package / image",
        "release",
        "load",
        "verifier insns",
        "missing features",
        "checked",
        "disagree",
        "v2",
        "replay",
        "boot",
        "total",
        "result",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for o in outcomes {
        let g = &o.guest;
        let load = match g.get("load") {
            Some(l) if l.starts_with("loaded") => "loaded".to_string(),
            Some(l) => l.split_whitespace().next().unwrap_or(l).to_string(),
            None => "-".into(),
        };
        let insns = g
            .get("insns")
            .map(|v| v.split_whitespace().next().unwrap_or(v).to_string())
            .unwrap_or_else(|| "-".into());
        let replay = match g.get("replay") {
            Some(r) if r.starts_with("not available") => "n/a".to_string(),
            Some(r) => r.split_whitespace().next().unwrap_or(r).to_string(),
            None => "-".into(),
        };
        rows.push(vec![
            o.label.clone(),
            o.source.clone(),
            g.get("kernel").unwrap_or("-").to_string(),
            load,
            insns,
            match g.get("features") {
                Some(f) if f.starts_with("ok") => {
                    g.field("features", "missing").unwrap_or_default()
                }
                Some(_) => "FAIL".into(),
                None => "-".into(),
            },
            g.field("differential", "checked")
                .unwrap_or_else(|| "-".into()),
            g.field("differential", "disagreements")
                .unwrap_or_else(|| "-".into()),
            match (
                g.get("v2-load"),
                g.field("v2-differential", "disagreements"),
            ) {
                (Some("rejected"), _) => "rejected".into(),
                (Some(_), Some(d)) if d == "0" => "ok".into(),
                (Some(_), _) => "FAIL".into(),
                (None, _) => "-".into(),
            },
            replay,
            o.boot_secs.map_or("-".into(), |s| format!("{s:.1} s")),
            if o.secs > 0.0 {
                human(Duration::from_secs_f64(o.secs))
            } else {
                "-".into()
            },
            if o.passed() { "ok" } else { "FAIL" }.into(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    let notes: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let r = o.guest.get("replay")?;
            r.starts_with("not available")
                .then(|| format!("{}: replay {r}", o.label))
        })
        .collect();
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_files_are_read() {
        let one = "# comment\ndeb [signed-by=/k.gpg arch=amd64] http://m.example/debian bookworm main\n\
                   deb-src http://m.example/debian bookworm main\n\
                   deb http://s.example/debian-security bookworm-security main\n";
        assert_eq!(
            parse_one_line_sources(one),
            vec![
                ("http://m.example/debian".into(), "bookworm".into()),
                (
                    "http://s.example/debian-security".into(),
                    "bookworm-security".into()
                )
            ]
        );
        let deb822 = "Types: deb\n# http://snapshot.example/x\nURIs: http://m.example/debian\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://s.example/debian-security/\nSuites: bookworm-security\n\n\
                      Types: deb\nURIs: https://other.example/node\nSuites: nodistro\n\n\
                      Types: deb\nEnabled: no\nURIs: http://off.example\nSuites: sid\n";
        let entries = parse_deb822_sources(deb822);
        assert_eq!(entries.len(), 4, "{entries:?}");
        let mut m = Mirrors::default();
        m.learn(&entries);
        assert_eq!(
            m,
            Mirrors {
                archive: Some("http://m.example/debian".into()),
                security: Some("http://s.example/debian-security".into()),
            }
        );
    }

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f59)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f59)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f59)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn depends_and_madison() {
        assert_eq!(
            dependency_names(
                "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                 linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)"
            ),
            vec![
                "dracut",
                "initramfs-tools",
                "linux-initramfs-tool",
                "linux-binary-7.2.13+deb14-cloud-amd64"
            ]
        );
        let madison = "linux-image-cloud-amd64 |  6.1.192-2 | http://m/debian-security bookworm-security/main amd64 Packages\n\
                       linux-image-cloud-amd64 |  6.1.176-1 | http://m/debian bookworm/main amd64 Packages\n";
        assert_eq!(parse_madison(madison), vec!["6.1.192-2", "6.1.176-1"]);
    }

    #[test]
    fn versions_order_naturally() {
        use std::cmp::Ordering::*;
        assert_eq!(
            version_cmp(
                "linux-image-6.1.0-9-cloud-amd64",
                "linux-image-6.1.0-10-cloud-amd64"
            ),
            Less
        );
        assert_eq!(version_cmp("6.12.117", "6.12.107"), Greater);
        if find_on_path("dpkg").is_some() {
            assert_eq!(deb_version_cmp("7.3~rc7-1~exp1", "7.3.4-1~bpo13+1"), Less);
            assert_eq!(deb_version_cmp("6.1.192-2", "6.1.176-1"), Greater);
        }
        assert_eq!(regex_escape("linux-image-6.1.0-"), "linux-image-6\\.1\\.0-");
    }

    #[test]
    fn efvm_lines() {
        assert_eq!(
            parse_efvm("EFVM load: loaded in 0.8 s"),
            Some(("load".into(), "loaded in 0.8 s".into()))
        );
        assert_eq!(
            parse_efvm("[    4.1] random: crng init doneEFVM insns: 51193 (xlated 10776 bytes)"),
            Some(("insns".into(), "51193 (xlated 10776 bytes)".into()))
        );
        assert_eq!(
            parse_efvm("EFVM verifier+ R1 invalid mem access"),
            Some(("verifier".into(), "R1 invalid mem access".into()))
        );
        assert_eq!(parse_efvm("[    4.2] reboot: Power down"), None);

        let mut g = Guest::default();
        for l in [
            "EFVM kernel: 6.1.0-56-cloud-amd64",
            "EFVM load: loaded in 0.8 s",
            "EFVM differential: checked=377388 disagreements=0 runs=4 packets=98488 time=12.2 s",
            "EFVM result: ok",
            "EFVM replay: ok",
            "EFVM end: 20.4 s",
        ] {
            g.feed(l);
        }
        assert_eq!(
            g.field("differential", "checked").as_deref(),
            Some("377388")
        );
        let o = Outcome {
            label: "bookworm".into(),
            guest: g,
            ..Default::default()
        };
        assert!(o.passed(), "{:?}", o.failures());
        let table = summary_table(&[o]);
        assert!(table.contains("377388") && table.contains("ok"), "{table}");
    }

    #[test]
    fn datapath_v2_failures_fail() {
        let base = [
            "EFVM kernel: 5.10.0",
            "EFVM load: loaded in 0.8 s",
            "EFVM differential: checked=10 disagreements=0 runs=1 packets=10 time=1 s",
            "EFVM replay: ok",
            "EFVM end: 9.0 s",
        ];
        let outcome = |extra: &[&str]| {
            let mut g = Guest::default();
            for l in base.iter().chain(extra) {
                g.feed(l);
            }
            Outcome {
                guest: g,
                ..Default::default()
            }
        };
        let ok = outcome(&[
            "EFVM v2-load: loaded in 0.3 s",
            "EFVM v2-differential: checked=10 disagreements=0 set=all time=1 s",
            "EFVM result: ok",
        ]);
        assert!(ok.failures().is_empty(), "{:?}", ok.failures());
        assert!(summary_table(&[ok]).contains(" ok "));
        let rejected = outcome(&[
            "EFVM v2-load: rejected",
            "EFVM v2-verifier: loading edge_filter_v2: back-edge",
            "EFVM result: fail",
        ]);
        let f = rejected.failures().join("\n");
        assert!(f.contains("datapath v2") && f.contains("back-edge"), "{f}");
        assert!(summary_table(&[rejected]).contains("rejected"));
        let wrong = outcome(&[
            "EFVM v2-load: loaded in 0.3 s",
            "EFVM v2-differential: checked=10 disagreements=1 set=all time=1 s",
            "EFVM v2-mismatch: set all x: kernel (1, 2, 3), reference (2, 2, 3)",
            "EFVM result: fail",
        ]);
        let f = wrong.failures().join("\n");
        assert!(f.contains("datapath v2 disagreement"), "{f}");
    }

    #[test]
    fn rejections_and_silence_fail() {
        let mut g = Guest::default();
        for l in [
            "EFVM kernel: 5.4.0",
            "EFVM load: rejected",
            "EFVM verifier: the kernel verifier rejected the XDP program (Invalid argument)",
            "EFVM verifier+ back-edge from insn 12 to 4",
        ] {
            g.feed(l);
        }
        let o = Outcome {
            guest: g,
            ..Default::default()
        };
        let f = o.failures().join("\n");
        assert!(f.contains("rejected") && f.contains("back-edge"), "{f}");

        let mut g = Guest::default();
        g.feed("[    1.0] Kernel panic - not syncing: No working init found.");
        let o = Outcome {
            guest: g,
            ..Default::default()
        };
        let f = o.failures().join("\n");
        assert!(
            f.contains("Kernel panic") && f.contains("did not start"),
            "{f}"
        );
    }

    #[test]
    fn bzimage_magic() {
        let dir = env::temp_dir().join(format!("xtask-vm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("vmlinuz");
        let mut img = vec![0u8; 0x300];
        fs::write(&p, &img).unwrap();
        assert!(check_bzimage(&p).is_err());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(&p, &img).unwrap();
        assert!(check_bzimage(&p).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn init_script_names_the_steps() {
        let spec = InitramfsSpec {
            dir: Path::new("/nonexistent"),
            binaries: &[],
            data: Some(Path::new("/data")),
            replay: &ReplayFixture::NotAvailable("no \"replay\" $here".into()),
            seed: 0x1234,
            sets: Some("none,all"),
        };
        let s = init_script(&spec);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(
            s.contains("--seed 0x1234 --data /ef/data --sets \"none,all\""),
            "{s}"
        );
        assert!(
            s.contains("EFVM replay: not available (no replay here)"),
            "{s}"
        );
        assert!(s.contains("mount -t bpf bpf /sys/fs/bpf"));
    }
}
