//! The `agent` section: the real agent process at 100k..10M entries.
//!
//! `edge-filter run --config` (the release binary next to `ef-bench`) runs
//! in a private network namespace, attached in skb mode to one end of a
//! veth pair, with one plain HTTP feed served on that namespace's loopback
//! ([`HttpServer`], no `ETag`: an unchanged refresh is caught by the body's
//! digest alone). A feed of N entries is N random IPv4 `/32`s plus N/10
//! random prefixes (`/16`..`/28`). Per size and round:
//!
//! 1. start with no state: the time and CPU to the first sync (fetch,
//!    parse, merge, compile, program load and map writes) are the
//!    baseline the refreshes are compared with;
//! 2. steady memory three seconds later (`/proc/PID/status`: `VmRSS`, and
//!    `RssAnon`, the agent's own heap; `RssFile` holds the binary and the
//!    mmapped v2 arrays, which the memory section counts as kernel bytes);
//! 3. unchanged refreshes (SIGHUP, same body): CPU seconds, the mean of
//!    five in one window;
//! 4. a refresh with 1% of the `/32`s replaced: CPU seconds and the peak
//!    RSS during it (`VmHWM` after a `clear_refs` reset); then another
//!    1% and `RssAnon` once it has settled (what a long-running agent
//!    holds);
//! 5. the last-known-good file's bytes per entry;
//! 6. the agent stopped and the filter detached, the feed server stopped,
//!    the agent started again: the time until it attaches with the
//!    last-known-good entries.
//!
//! The agent's periodic reconcile (every 30 s by default: the maps read
//! back and compared with the desired state) is set to an hour, so it
//! falls in none of the windows: at 10M, one caught in the 4 s idle
//! window made the idle rate 25% of a CPU, and so the refresh figures net
//! of it meaningless.
//!
//! Figures are medians over the rounds (at most three: each round is a
//! whole agent life per size).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{Opts, stat};
use crate::httpd::{HttpServer, Reply};
use crate::netns::{Agent, Netns, edge_filter_bin, unique_tag};

/// Sizes (IPv4 `/32`s; prefixes add a tenth) without `--sizes`.
const DEFAULT_SIZES: &[usize] = &[100_000, 1_000_000];
/// `--quick`.
const QUICK_SIZES: &[usize] = &[100_000];
/// At most this many rounds (each is a whole agent life per size).
const MAX_ROUNDS: usize = 3;
/// How long the idle CPU rate is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(4);
/// Unchanged refreshes measured together (their mean is reported).
const UNCHANGED_REFRESHES: u32 = 5;
/// The feed's name in the agent's configuration.
const FEED: &str = "bench";
/// The filtered interface inside the namespace.
const IFACE: &str = "efa0";

/// One round at one size.
#[derive(Clone, Copy, Debug, Default)]
struct Round {
    entries: usize,
    first_sync_s: f64,
    first_sync_cpu_s: f64,
    steady_rss: u64,
    steady_anon: u64,
    steady_file: u64,
    idle_cpu: f64,
    unchanged_cpu_s: f64,
    changed_cpu_s: f64,
    changed_peak_rss: u64,
    /// RssAnon once a second 1% refresh has settled: what a long-running
    /// agent holds (the first sync's figure alone hid an allocator that
    /// kept what refreshes freed).
    refreshed_anon: u64,
    lkg_bytes: u64,
    lkg_start_s: f64,
}

/// A feed body: `n` random /32s and `n / 10` random prefixes, one per
/// line, and the /32 lines (for the 1% change).
fn feed_body(rng: &mut StdRng, n: usize) -> (Vec<String>, Vec<String>) {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    while addrs.len() < n {
        let a: u32 = rng.random();
        // Keep clear of 0/8, 127/8 and multicast and above.
        if a >> 24 == 0 || a >> 24 == 127 || a >> 28 >= 0xe {
            continue;
        }
        if seen.insert(a) {
            addrs.push(std::net::Ipv4Addr::from(a).to_string());
        }
    }
    let prefixes = (0..n / 10)
        .map(|_| {
            let len = rng.random_range(16..=28u8);
            let a: u32 = rng.random_range(0x0100_0000..0x7f00_0000);
            let net = ipnet::Ipv4Net::new(a.into(), len).expect("valid length");
            net.trunc().to_string()
        })
        .collect();
    (addrs, prefixes)
}

fn join(addrs: &[String], prefixes: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity((addrs.len() + prefixes.len()) * 16);
    for l in addrs.iter().chain(prefixes) {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `/proc/PID/status` fields in bytes.
fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU seconds of a process.
fn cpu_s(pid: u32) -> Result<f64> {
    // The process's CPU clock: every thread, live or exited, to the
    // nanosecond. `/proc/PID/stat` counts in clock ticks (10 ms), as coarse
    // as an unchanged refresh itself.
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain syscalls writing into locals.
    let (rc, ts) = unsafe {
        let rc = libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock);
        let mut ts: libc::timespec = std::mem::zeroed();
        if rc != 0 {
            (rc, ts)
        } else if libc::clock_gettime(clock, &mut ts) != 0 {
            (*libc::__errno_location(), ts)
        } else {
            (0, ts)
        }
    };
    if rc != 0 {
        bail!(
            "reading the CPU clock of pid {pid}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// CPU seconds the process spent from `since` (a [`cpu_s`] reading at
/// `at`) until now, less what it spends idle at `idle` CPU seconds per
/// second (the once-a-second last-hit pass and the link checks never
/// stop, so a refresh's cost is measured against that rate).
fn cpu_since(pid: u32, since: f64, at: Instant, idle: f64) -> Result<f64> {
    Ok((cpu_s(pid)? - since - idle * at.elapsed().as_secs_f64()).max(0.0))
}

/// Count of `needle` in the agent's log.
fn count(agent: &Agent, needle: &str) -> usize {
    agent.stderr_text().matches(needle).count()
}

/// Wait until `needle` has appeared more than `before` times.
fn wait_log(agent: &Agent, needle: &str, before: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while count(agent, needle) <= before {
        if !agent.is_running() {
            bail!("the agent exited before `{needle}`\n{}", agent.tail(20));
        }
        if Instant::now() > deadline {
            bail!("no `{needle}` within {timeout:?}\n{}", agent.tail(20));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The agent's configuration and private directories.
struct Setup {
    dir: PathBuf,
    config: PathBuf,
    bpffs: PathBuf,
}

impl Setup {
    fn new(url: &str, entries: usize) -> Result<Setup> {
        let tag = unique_tag();
        let dir = std::env::temp_dir().join(format!("ef-bench-agent-{tag}"));
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        for d in [&dir, &state] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/ef-bench-{tag}"));
        let config = dir.join("agent.toml");
        let text = format!(
            "state_dir = \"{}\"\nbpffs = \"{}\"\n\
             reconcile_interval = \"1h\"\n\
             [metrics]\nlisten = \"off\"\n\
             [limits]\nmax_bytes = \"{}MiB\"\nmax_entries = {}\n\
             [[interface]]\nname = \"{IFACE}\"\nmode = \"skb\"\n\
             [[feed]]\nname = \"{FEED}\"\nsource = \"{url}\"\nformat = \"plain\"\nrefresh = \"24h\"\n",
            state.display(),
            bpffs.display(),
            (entries * 20 / (1 << 20)).max(16),
            entries * 2,
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&config)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        Ok(Setup { dir, config, bpffs })
    }

    fn start(&self, ns: &Netns) -> Agent {
        let mut cmd = ns.command(edge_filter_bin());
        cmd.arg("run").arg("--config").arg(&self.config);
        Agent::spawn(cmd, IFACE)
    }

    fn detach(&self, ns: &Netns) {
        let _ = ns
            .command(edge_filter_bin())
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
    }

    fn lkg_bytes(&self) -> u64 {
        let path = self.dir.join("state/lkg").join(format!("{FEED}.lkg"));
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

/// Reset the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

fn stop(agent: &Agent) {
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
}

fn one_round(n: usize, seed: u64) -> Result<Round> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut addrs, prefixes) = feed_body(&mut rng, n);
    let entries = addrs.len() + prefixes.len();
    let ns = Netns::create(&format!("efba-{}", unique_tag()));
    ns.ip_batch(&format!(
        "link add {IFACE} type veth peer name {IFACE}p\nlink set {IFACE} up\nlink set {IFACE}p up\nlink set lo up\n"
    ));
    let server = HttpServer::start_in(&ns, Reply::ok(join(&addrs, &prefixes)));
    let setup = Setup::new(&server.url("/feed.txt"), entries)?;
    let mut r = Round {
        entries,
        ..Round::default()
    };
    let big = Duration::from_secs(60 + (n / 20_000) as u64);
    let applied = format!("feed {FEED}: ");

    // 1. First sync from nothing.
    let t = Instant::now();
    let agent = setup.start(&ns);
    wait_log(&agent, &applied, 0, big)?;
    r.first_sync_s = t.elapsed().as_secs_f64();
    r.first_sync_cpu_s = cpu_s(agent.pid())?;

    // 2. Steady, and the idle CPU rate. The sync's tail (the last-known-
    // good copy's write, freeing memory) outlasts its log line by about a
    // second per million entries: at 11M a 3 s settle measured it as idle.
    std::thread::sleep(Duration::from_secs(3 + (n / 1_000_000) as u64));
    let (c, t) = (cpu_s(agent.pid())?, Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    r.idle_cpu = (cpu_s(agent.pid())? - c) / t.elapsed().as_secs_f64();
    r.steady_rss = status_bytes(agent.pid(), "VmRSS")?;
    r.steady_anon = status_bytes(agent.pid(), "RssAnon")?;
    r.steady_file = status_bytes(agent.pid(), "RssFile")?;

    // 3. Unchanged refreshes: the body is fetched and hashed, not parsed.
    // Several in one window, so the 10 ms ticks of the CPU counters and
    // the idle rate's noise are shared among them.
    let (before, at) = (cpu_s(agent.pid())?, Instant::now());
    for _ in 0..UNCHANGED_REFRESHES {
        let asked = server.request_count();
        agent.signal(libc::SIGHUP);
        let deadline = Instant::now() + big;
        while server.request_count() == asked {
            if Instant::now() > deadline {
                bail!("no refetch after SIGHUP\n{}", agent.tail(20));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(400 + (n / 10_000) as u64));
    }
    std::thread::sleep(Duration::from_secs(1));
    r.unchanged_cpu_s =
        cpu_since(agent.pid(), before, at, r.idle_cpu)? / UNCHANGED_REFRESHES as f64;

    // 4. 1% of the /32s replaced.
    for a in addrs.iter_mut().step_by(100) {
        let x: u32 = rng.random_range(0x0100_0000..0x7f00_0000);
        *a = std::net::Ipv4Addr::from(x).to_string();
    }
    server.set(Reply::ok(join(&addrs, &prefixes)));
    reset_peak(agent.pid())?;
    let (before, at) = (cpu_s(agent.pid())?, Instant::now());
    let seen = count(&agent, &applied);
    agent.signal(libc::SIGHUP);
    wait_log(&agent, &applied, seen, big)?;
    std::thread::sleep(Duration::from_secs(1));
    r.changed_cpu_s = cpu_since(agent.pid(), before, at, r.idle_cpu)?;
    r.changed_peak_rss = status_bytes(agent.pid(), "VmHWM")?;

    // 4b. Another 1% replaced, then steady memory again.
    for a in addrs.iter_mut().skip(50).step_by(100) {
        let x: u32 = rng.random_range(0x0100_0000..0x7f00_0000);
        *a = std::net::Ipv4Addr::from(x).to_string();
    }
    server.set(Reply::ok(join(&addrs, &prefixes)));
    let seen = count(&agent, &applied);
    agent.signal(libc::SIGHUP);
    wait_log(&agent, &applied, seen, big)?;
    std::thread::sleep(Duration::from_secs(3 + (n / 1_000_000) as u64));
    r.refreshed_anon = status_bytes(agent.pid(), "RssAnon")?;

    // 5. The last-known-good copy.
    r.lkg_bytes = setup.lkg_bytes();

    // 6. Start from it with the feed down and nothing attached.
    stop(&agent);
    setup.detach(&ns);
    server.stop();
    let t = Instant::now();
    let agent = setup.start(&ns);
    wait_log(&agent, &format!("attached to {IFACE} with "), 0, big)?;
    r.lkg_start_s = t.elapsed().as_secs_f64();
    let log = agent.stderr_text();
    if !log.contains("from last-known-good copy") {
        bail!(
            "the restarted agent did not use its last-known-good copy\n{}",
            agent.tail(20)
        );
    }
    stop(&agent);
    setup.detach(&ns);
    Ok(r)
}

fn mib(b: f64) -> String {
    format!("{:.0}", b / f64::from(1 << 20))
}

/// Run the section.
pub fn run(o: &Opts) -> Result<()> {
    let sizes: &[usize] = if !o.sizes.is_empty() {
        &o.sizes
    } else if o.quick {
        QUICK_SIZES
    } else {
        DEFAULT_SIZES
    };
    let rounds = o.rounds.min(MAX_ROUNDS);
    edge_filter_bin();
    let mut md = String::new();
    md.push_str("## Agent: the real process at 100k..10M entries\n\n");
    md.push_str(&format!(
        "`edge-filter run --config` (release) in a private netns, skb mode on a veth, one plain HTTP feed on loopback without ETag; N random /32 + N/10 prefixes. Medians of {rounds} round(s). RssAnon is the agent's own memory; RssFile is the binary plus the mmapped v2 arrays (kernel memory, see the memory section). Peak: VmHWM during the 1% refresh. CPU ratios are against the first sync's CPU (fetch, parse, merge, compile, load, write); refresh CPU is net of the idle rate (the once-a-second last-hit pass), measured just before; the unchanged refresh is the mean of five in one window. The 30 s reconcile is set to an hour so that it falls in no window.\n\n"
    ));
    md.push_str("| entries | first sync s | first sync CPU s | steady RSS MiB | RssAnon MiB | RssFile MiB | RSS B/entry | RssAnon B/entry | RssAnon after 2 refreshes MiB (B/entry) | peak / steady | idle CPU | unchanged refresh CPU | 1% change CPU | LKG B/entry | start from LKG s |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut jrows = Vec::new();
    for &n in sizes {
        let mut all = Vec::new();
        for round in 0..rounds {
            eprintln!(
                "agent: {n} /32 (+10% prefixes), round {}/{rounds}",
                round + 1
            );
            let r = one_round(n, o.seed.wrapping_add(round as u64))
                .with_context(|| format!("the agent at {n} /32, round {}", round + 1))?;
            eprintln!("  {r:?}");
            all.push(r);
        }
        let m = |f: fn(&Round) -> f64| stat(&all.iter().map(f).collect::<Vec<f64>>()).median;
        let entries = all[0].entries as f64;
        let first_cpu = m(|r| r.first_sync_cpu_s);
        let steady = m(|r| r.steady_rss as f64);
        let anon = m(|r| r.steady_anon as f64);
        let file = m(|r| r.steady_file as f64);
        let peak = m(|r| r.changed_peak_rss as f64);
        let refreshed = m(|r| r.refreshed_anon as f64);
        let unchanged = m(|r| r.unchanged_cpu_s);
        let changed = m(|r| r.changed_cpu_s);
        let lkg = m(|r| r.lkg_bytes as f64);
        let start = m(|r| r.lkg_start_s);
        let first = m(|r| r.first_sync_s);
        let idle = m(|r| r.idle_cpu);
        md.push_str(&format!(
            "| {} | {first:.2} | {first_cpu:.2} | {} | {} | {} | {:.0} | {:.0} | {} ({:.0}) | {:.2}x | {:.1}% | {unchanged:.3} s ({:.1}%) | {changed:.2} s ({:.1}%) | {:.1} | {start:.2} |\n",
            all[0].entries,
            mib(steady),
            mib(anon),
            mib(file),
            steady / entries,
            anon / entries,
            mib(refreshed),
            refreshed / entries,
            peak / steady,
            100.0 * idle,
            100.0 * unchanged / first_cpu,
            100.0 * changed / first_cpu,
            lkg / entries,
        ));
        jrows.push(json!({
            "entries": all[0].entries,
            "first_sync_s": first,
            "first_sync_cpu_s": first_cpu,
            "steady_rss_bytes": steady,
            "steady_rss_anon_bytes": anon,
            "steady_rss_file_bytes": file,
            "rss_bytes_per_entry": steady / entries,
            "rss_anon_bytes_per_entry": anon / entries,
            "refreshed_rss_anon_bytes": refreshed,
            "refreshed_rss_anon_bytes_per_entry": refreshed / entries,
            "peak_rss_bytes": peak,
            "peak_over_steady": peak / steady,
            "idle_cpu_share": idle,
            "unchanged_refresh_cpu_s": unchanged,
            "unchanged_share": unchanged / first_cpu,
            "changed_1pct_cpu_s": changed,
            "changed_share": changed / first_cpu,
            "lkg_bytes_per_entry": lkg / entries,
            "start_from_lkg_s": start,
            "rounds": all.len(),
        }));
    }
    md.push_str(
        "\nTargets (issue 16): steady RSS <= 120 B per entry at 1M (<= 150 MiB in all), linear to 10M (judged on RssAnon after the refreshes, what the agent holds for good); peak <= 2x steady; unchanged refresh <= 2% and 1% change <= 5% of a full parse's CPU; LKG <= 12 B per /32; start from LKG at 1M <= 1 s.\n\n",
    );
    o.emit(&md, &json!({ "section": "agent", "rows": jrows }))
}
