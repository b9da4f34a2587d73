//! Fixtures for end-to-end tests through a real interface: two fresh network
//! namespaces joined by a veth pair, the `edge-filter` binary run inside the
//! receiving one, and sockets, TCP connects and `ping` from the sending one.
//!
//! # Safety rules these helpers keep
//!
//! - Nothing touches the host's interfaces: every interface, address and
//!   neighbor lives in a namespace created here, and the agent only ever sees
//!   the receiving namespace's veth.
//! - Names are unique per process and fixture: namespaces are
//!   `ef-e2e-<pid>-<n>-s` / `-r`, pins live under `/sys/fs/bpf/ef-test-<pid>-<n>`,
//!   files under `$TMPDIR/ef-e2e-<pid>-<n>`; tests can run in parallel.
//! - [`Lab`]'s `Drop` (which also runs when a test panics) kills the agents it
//!   started, runs `edge-filter detach`, removes the pins, unmounts the tmpfs
//!   it mounted ([`Lab::mount_tmpfs`]), deletes both namespaces and the
//!   temporary directory. Agents are spawned with
//!   `PR_SET_PDEATHSIG(SIGKILL)`, so they die with the test process even when
//!   `Drop` never runs (SIGKILL, Ctrl-C); the namespaces, pins and files such
//!   a process leaves behind are swept by the next [`Lab::create`] (their names
//!   carry the dead process's pid; mounts below its directory are unmounted
//!   first).
//! - The agent runs under `nsenter --net=/run/netns/NAME`, never under
//!   `ip netns exec`, which remounts `/sys` and would hide the pins.
//!
//! # The binary under test
//!
//! `CARGO_BIN_EXE_edge-filter` only exists for tests of the crate that owns
//! the binary, so [`edge_filter_bin`] looks for `<target>/<profile>/edge-filter`
//! next to the test executable's `deps/` directory (or takes the path from
//! `EDGE_FILTER_BIN`).
//!
//! `cargo test` of the workspace (and `cargo xtask test`) builds it: cargo
//! builds a package's binaries for tests when that package's own
//! integration tests are built, and `edge-filter` has some
//! (`edge-filter/tests/`). `cargo test -p edge-filter-tests` alone does not:
//! this crate depends on the `edge-filter` *library* only. Then build it
//! first, in the same profile: `cargo build -p edge-filter`. A binary older
//! than any of its inputs (the files cargo's `edge-filter.d` lists next to
//! it) is refused, so the tests never exercise stale code.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of every namespace these fixtures create.
pub const NETNS_PREFIX: &str = "ef-e2e-";
/// Prefix of every pin root these fixtures use, below [`BPFFS_MOUNT`].
pub const BPFFS_PREFIX: &str = "ef-test-";
/// Where bpffs is mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Name of the sending side of the veth pair (inside its namespace).
pub const SENDER_IF: &str = "ef-snd";
/// Name of the receiving (filtered) side of the veth pair.
pub const RECEIVER_IF: &str = "ef-rcv";
/// MAC address of [`SENDER_IF`] (locally administered).
pub const SENDER_MAC: &str = "02:ef:00:00:00:01";
/// MAC address of [`RECEIVER_IF`] (locally administered).
pub const RECEIVER_MAC: &str = "02:ef:00:00:00:02";
/// How long to wait for an agent's `ready:` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

const SETUP_HINT: &str = "run `cargo xtask setup` to install the test tools";

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// When not root, print `skipping: needs root` and return true: the caller
/// returns (and passes).
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("skipping: needs root ({test})");
    true
}

/// The `edge-filter` binary of this build: `$EDGE_FILTER_BIN`, else
/// `<target>/<profile>/edge-filter` derived from the running test executable
/// (`<target>/<profile>/deps/<test>-<hash>`). Panics with instructions when
/// it is missing or older than one of its inputs as listed in cargo's
/// `<bin>.d` (not checked for `EDGE_FILTER_BIN`).
pub fn edge_filter_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_FILTER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "EDGE_FILTER_BIN={} does not exist",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().expect("deps/ has a parent");
    }
    let bin = dir.join("edge-filter");
    assert!(
        bin.is_file(),
        "the edge-filter binary is missing at {} (looked next to the test executable {}). \
         Build it first, in the same profile as the tests: `cargo build -p edge-filter` \
         (`cargo test -p edge-filter-tests` alone does not build it); or point EDGE_FILTER_BIN at one",
        bin.display(),
        exe.display()
    );
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .expect("binary mtime");
    if let Some((changed, src)) = newest_input(&bin)
        && changed > built
    {
        panic!(
            "the edge-filter binary at {} is older than {}: rebuild it with \
             `cargo build -p edge-filter` (same profile as the tests), or set \
             EDGE_FILTER_BIN to test a binary of your choice",
            bin.display(),
            src.display()
        );
    }
    bin
}

/// The most recently modified input of `bin`, from the dep-info file cargo
/// writes next to it (`<bin>.d`: every source file, the eBPF crate, the
/// built eBPF object). None when there is no dep-info file.
fn newest_input(bin: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    fn walk(p: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            if p.file_name() == Some(OsStr::new("target")) {
                return;
            }
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), newest);
            }
        } else if let Ok(t) = meta.modified()
            && newest.as_ref().is_none_or(|(n, _)| t > *n)
        {
            *newest = Some((t, p.to_path_buf()));
        }
    }
    let text = std::fs::read_to_string(bin.with_extension("d")).ok()?;
    let (_, deps) = text.lines().next()?.split_once(": ")?;
    let mut newest = None;
    // Paths are separated by spaces; a space inside a path is `\ `.
    for dep in deps.replace("\\ ", "\0").split_whitespace() {
        walk(Path::new(&dep.replace('\0', " ")), &mut newest);
    }
    newest
}

fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(name);
            p.is_file() && std::fs::metadata(&p).is_ok_and(|m| m.len() > 0)
        })
    })
}

/// Panic with a setup hint unless `ip`, `nsenter` and `ping` are on PATH.
pub fn require_tools() {
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("ping", "iputils-ping"),
    ] {
        assert!(
            have_tool(tool),
            "`{tool}` is not installed (Debian package {package}): {SETUP_HINT}"
        );
    }
}

/// Run a command to completion, panicking with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A unique `<pid>-<n>` tag for names of this process.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `<prefix><pid>-...` → pid, when the name has that shape.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Remove namespaces, pin roots and temporary directories left by test
/// processes that no longer exist (killed before their `Drop` ran).
pub fn sweep_stale() {
    let stale = |name: &str, prefix: &str| {
        owner_pid(name, prefix).is_some_and(|pid| pid != std::process::id() && !pid_alive(pid))
    };
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    };
    for n in names("/run/netns") {
        if stale(&n, NETNS_PREFIX) {
            eprintln!("sweeping stale namespace {n}");
            let _ = Command::new("ip").args(["netns", "del", &n]).output();
        }
    }
    for n in names(BPFFS_MOUNT) {
        if stale(&n, BPFFS_PREFIX) {
            eprintln!("sweeping stale pins {BPFFS_MOUNT}/{n}");
            let _ = std::fs::remove_dir_all(Path::new(BPFFS_MOUNT).join(&n));
        }
    }
    let tmp = std::env::temp_dir();
    for n in names(&tmp.to_string_lossy()) {
        if stale(&n, NETNS_PREFIX) {
            for m in mounts_below(&tmp.join(&n)) {
                eprintln!("sweeping stale mount {}", m.display());
                let _ = unmount(&m);
            }
            let _ = std::fs::remove_dir_all(tmp.join(&n));
        }
    }
}

/// Whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0xcafe4a11
    }
}

/// A private pin root below [`BPFFS_MOUNT`] (bpffs mounted first), named
/// `ef-test-PID-N-WHAT` so that [`sweep_stale`] finds it when the process
/// dies, and removed with everything pinned below it on drop, however the
/// test ends.
pub struct PinRoot(PathBuf);

impl PinRoot {
    /// Create the root; `what` names the test in the directory's name.
    pub fn new(what: &str) -> PinRoot {
        ensure_bpffs();
        let p = Path::new(BPFFS_MOUNT).join(format!("{BPFFS_PREFIX}{}-{what}", unique_tag()));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        PinRoot(p)
    }

    /// The root.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mount bpffs at [`BPFFS_MOUNT`] when nothing is mounted there.
pub fn ensure_bpffs() {
    let mount = Path::new(BPFFS_MOUNT);
    if is_bpffs(mount) {
        return;
    }
    std::fs::create_dir_all(mount).expect("create /sys/fs/bpf");
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert!(
        rc == 0 || is_bpffs(mount),
        "mounting bpffs at {BPFFS_MOUNT}: {}",
        std::io::Error::last_os_error()
    );
}

/// One named network namespace (`/run/netns/NAME`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`.
    pub fn create(name: &str) -> Netns {
        run_ok(Command::new("ip").args(["netns", "add", name]));
        Netns { name: name.into() }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Run `f` on a thread that joined this namespace (`setns(CLONE_NEWNET)`)
    /// and return its result; a panic in `f` is re-raised here. Sockets
    /// created by `f` belong to this namespace for their whole life, so they
    /// may be returned and used from any thread.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns =
                    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: a valid namespace fd; only this thread changes namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert!(
                    rc == 0,
                    "setns({}): {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A command that runs `program` in this namespace with the host's
    /// mounts: `nsenter --net=/run/netns/NAME -- program`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// `ip -n NAME ARGS...`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NAME -batch -` with `commands` (one per line) on stdin,
    /// panicking on failure.
    pub fn ip_batch(&self, commands: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ip -batch: {e}"));
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(commands.as_bytes())
            .expect("write to ip -batch");
        let out = child.wait_with_output().expect("wait for ip -batch");
        assert!(
            out.status.success(),
            "ip -n {} -batch failed ({}): {}\ncommands:\n{commands}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Write a sysctl of this namespace (`key` with dots, e.g. `net.ipv6.conf.all.accept_dad`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| {
            std::fs::write(&path, value)
                .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name))
        });
    }

    /// A counter of this namespace's `/proc/net/snmp` or `/proc/net/netstat`
    /// (`file` is `snmp` or `netstat`, `group` e.g. `TcpExt`, `name` e.g. `TCPSynRetrans`).
    pub fn net_counter(&self, file: &str, group: &str, name: &str) -> u64 {
        self.enter(|| read_net_counter(file, group, name))
    }
}

/// Read a counter of the calling thread's namespace (see [`Netns::net_counter`]).
pub fn read_net_counter(file: &str, group: &str, name: &str) -> u64 {
    let path = format!("/proc/thread-self/net/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    for pair in lines.chunks(2) {
        if let [names, values] = pair {
            let names = names.split_whitespace().skip(1);
            let values = values.split_whitespace().skip(1);
            for (n, v) in names.zip(values) {
                if n == name {
                    return v.parse().unwrap_or_else(|_| panic!("{path}: {n}={v}"));
                }
            }
        }
    }
    panic!("{path}: no counter {group}:{name}")
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: ip netns del {}: {e}", self.name),
        }
    }
}

/// A running `edge-filter run`. Killed (SIGKILL) on drop; also dies with the
/// thread that spawned it (`PR_SET_PDEATHSIG`).
pub struct Agent {
    child: Arc<Mutex<Child>>,
    pid: u32,
    iface: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect_lines(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    });
}

impl Agent {
    /// Spawn `cmd` (an `edge-filter run` command for `iface`) with piped output.
    pub fn spawn(mut cmd: Command, iface: &str) -> Agent {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stdout.take().expect("piped"), stdout.clone());
        collect_lines(child.stderr.take().expect("piped"), stderr.clone());
        Agent {
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
            iface: iface.into(),
            stdout,
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Exit status when the agent has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().expect("try_wait")
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Lines the agent printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the agent logged on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The last `n` lines of stdout and stderr, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let tail = |v: &Arc<Mutex<Vec<String>>>| {
            let v = v.lock().unwrap();
            v[v.len().saturating_sub(n)..].join("\n    ")
        };
        format!(
            "agent pid {} ({}):\n  stdout:\n    {}\n  stderr (last {n} lines):\n    {}",
            self.pid,
            match self.try_status() {
                None => "running".to_string(),
                Some(s) => format!("exited: {s}"),
            },
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    /// Wait for `ready: IFACE <how>` on stdout (`how` is `attached` or
    /// `adopted`); panics with the agent's output if it exits, times out or
    /// says the other word.
    pub fn wait_ready(&self, how: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let prefix = format!("ready: {} ", self.iface);
        loop {
            if let Some(line) = self
                .stdout_lines()
                .into_iter()
                .find(|l| l.starts_with(&prefix))
            {
                assert_eq!(
                    line,
                    format!("{prefix}{how}"),
                    "agent reported a different readiness\n{}",
                    self.tail(30)
                );
                return;
            }
            if let Some(st) = self.try_status() {
                // Let the readers drain the pipes before reporting.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "agent exited ({st}) before `{prefix}{how}`\n{}",
                    self.tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "no `{prefix}{how}` within {READY_TIMEOUT:?}\n{}",
                self.tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until stderr contains `needle` (bounded); true when it did.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stderr_text().contains(needle)
    }

    /// Send `sig` to the agent if it has not been reaped (so the pid is
    /// still ours). Returns false when it had already exited.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        let mut child = self.child.lock().unwrap();
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        // SAFETY: the child is not reaped, so the pid names our process.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) == 0 }
    }

    /// Send `sig` and wait (bounded) for the agent to exit.
    pub fn signal_and_wait(&self, sig: libc::c_int, timeout: Duration) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(timeout, &format!("after signal {sig}"))
    }

    /// Wait (at most `timeout`) for the process to exit, then for its
    /// output to drain; panics naming `what` with its last output lines
    /// when it does not.
    pub fn wait_exit(&self, timeout: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                std::thread::sleep(Duration::from_millis(100)); // let readers drain
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {timeout:?} {what}\n{}",
                self.tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One row of `edge-filter stats --json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counters by reason name, from `edge-filter stats --json`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Reason name → count (every reason the binary reports, zeros included).
    pub by_reason: BTreeMap<String, Count>,
    /// The raw JSON, for failure messages.
    pub raw: String,
}

impl Stats {
    /// Parse the output of `stats --iface X --json`.
    pub fn parse(json: &str, iface: &str) -> Stats {
        let v: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("stats --json is not JSON ({e}): {json}"));
        let entry = v
            .as_array()
            .and_then(|a| a.iter().find(|e| e["iface"] == iface))
            .unwrap_or_else(|| panic!("stats --json has no entry for {iface}: {json}"));
        let rows = entry["counters"]
            .as_array()
            .unwrap_or_else(|| panic!("stats --json: no counters array: {json}"));
        let by_reason = rows
            .iter()
            .map(|r| {
                let name = r["reason"]
                    .as_str()
                    .expect("reason is a string")
                    .to_string();
                let c = Count {
                    packets: r["packets"].as_u64().expect("packets is a number"),
                    bytes: r["bytes"].as_u64().expect("bytes is a number"),
                };
                (name, c)
            })
            .collect();
        Stats {
            by_reason,
            raw: json.into(),
        }
    }

    /// The count of one reason (zero when absent).
    pub fn get(&self, reason: &str) -> Count {
        self.by_reason.get(reason).copied().unwrap_or_default()
    }

    /// Packets of one reason.
    pub fn packets(&self, reason: &str) -> u64 {
        self.get(reason).packets
    }

    /// Non-zero rows, one per line, for failure messages.
    pub fn summary(&self) -> String {
        self.by_reason
            .iter()
            .filter(|(_, c)| c.packets > 0)
            .map(|(r, c)| format!("{r}={}p/{}B", c.packets, c.bytes))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Result of `ping`.
#[derive(Clone, Debug)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u64,
    /// Replies received.
    pub received: u64,
    /// ping's output, for failure messages.
    pub output: String,
}

/// Outcome of a TCP connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connect {
    /// The handshake completed.
    Connected,
    /// The server answered with RST.
    Refused,
    /// No answer within the timeout.
    TimedOut,
}

/// Result of [`Lab::tcp_connect`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectResult {
    /// What happened.
    pub outcome: Connect,
    /// SYNs the sender transmitted (1 plus the kernel's SYN retransmissions,
    /// from `TcpExt:TCPSynRetrans` of the sending namespace).
    pub syns: u64,
}

/// Two namespaces joined by a veth pair ([`SENDER_IF`] ↔ [`RECEIVER_IF`]),
/// a private pin root and a private directory for the agent's files. Build it
/// with [`Lab::create`], add addresses, start agents with [`Lab::start_agent`].
pub struct Lab {
    /// `<pid>-<n>`, unique per fixture.
    pub tag: String,
    /// Pin root passed as `--bpffs` (`/sys/fs/bpf/ef-test-<tag>`).
    pub bpffs: PathBuf,
    /// Private directory for blocklists (`$TMPDIR/ef-e2e-<tag>`).
    pub dir: PathBuf,
    /// The sending namespace (`ef-e2e-<tag>-s`).
    pub sender: Netns,
    /// The receiving namespace, where the filter runs (`ef-e2e-<tag>-r`).
    pub receiver: Netns,
    bin: PathBuf,
    agents: Mutex<Vec<Arc<Mutex<Child>>>>,
    /// Addresses added with [`Lab::add_sender_addr`] / [`Lab::add_receiver_addr`]
    /// (`true`: sender side), re-added by [`Lab::add_veth`] after
    /// [`Lab::delete_veth`].
    addrs: Mutex<Vec<(bool, IpAddr, u8)>>,
    /// tmpfs mounts made by [`Lab::mount_tmpfs`], unmounted on cleanup.
    mounts: Mutex<Vec<PathBuf>>,
}

impl Lab {
    /// Create the namespaces and the veth pair, both sides up, with IPv6 DAD,
    /// router solicitations and RA processing off so no background traffic
    /// comes from the test addresses. Panics (after cleaning up what was
    /// made) when something is missing.
    pub fn create() -> Lab {
        require_tools();
        let bin = edge_filter_bin();
        sweep_stale();
        ensure_bpffs();
        let tag = unique_tag();
        // If a step below panics, the namespaces made so far are deleted by
        // their own Drop (or by the partially built Lab's).
        let lab = Lab {
            bpffs: Path::new(BPFFS_MOUNT).join(format!("{BPFFS_PREFIX}{tag}")),
            dir: std::env::temp_dir().join(format!("{NETNS_PREFIX}{tag}")),
            sender: Netns::create(&format!("{NETNS_PREFIX}{tag}-s")),
            receiver: Netns::create(&format!("{NETNS_PREFIX}{tag}-r")),
            tag,
            bin,
            agents: Mutex::new(Vec::new()),
            addrs: Mutex::new(Vec::new()),
            mounts: Mutex::new(Vec::new()),
        };
        std::fs::create_dir_all(&lab.dir).expect("create the test directory");
        // The agent refuses a config, state_dir or pin root others can write
        // (see edge_filter::trust): whatever umask the tests were started
        // with, make the lab's directory and the files tests write into it
        // (with the default modes) writable by root only.
        // SAFETY: umask cannot fail; it only sets the process's mask.
        unsafe { libc::umask(0o022) };
        std::fs::set_permissions(
            &lab.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the test directory");
        for ns in [&lab.sender, &lab.receiver] {
            for (k, v) in [
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_ra", "0"),
                ("net.ipv6.conf.default.router_solicitations", "0"),
                ("net.ipv6.conf.default.ndisc_notify", "0"),
                ("net.ipv4.conf.default.arp_notify", "0"),
            ] {
                ns.sysctl(k, v);
            }
            ns.ip(&["link", "set", "lo", "up"]);
        }
        lab.add_veth();
        lab
    }

    /// Create the veth pair ([`SENDER_IF`] in the sender, [`RECEIVER_IF`]
    /// in the receiver, fixed MACs), bring both ends up, add back every
    /// address and neighbor entry added so far, and wait until the link is
    /// up. [`Lab::create`] calls it; call it again after
    /// [`Lab::delete_veth`] to recreate the interface with the same name.
    pub fn add_veth(&self) {
        self.sender.ip(&[
            "link",
            "add",
            SENDER_IF,
            "address",
            SENDER_MAC,
            "type",
            "veth",
            "peer",
            "name",
            RECEIVER_IF,
            "address",
            RECEIVER_MAC,
            "netns",
            self.receiver.name(),
        ]);
        self.sender.ip(&["link", "set", SENDER_IF, "up"]);
        self.receiver.ip(&["link", "set", RECEIVER_IF, "up"]);
        let addrs = self.addrs.lock().unwrap().clone();
        let (snd, rcv): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.0);
        let pairs = |v: Vec<(bool, IpAddr, u8)>| -> Vec<(IpAddr, u8)> {
            v.into_iter().map(|(_, a, p)| (a, p)).collect()
        };
        add_addrs(
            &self.sender,
            SENDER_IF,
            &self.receiver,
            RECEIVER_IF,
            SENDER_MAC,
            &pairs(snd),
        );
        add_addrs(
            &self.receiver,
            RECEIVER_IF,
            &self.sender,
            SENDER_IF,
            RECEIVER_MAC,
            &pairs(rcv),
        );
        self.wait_link_up();
    }

    /// Delete the veth pair (deleting [`RECEIVER_IF`] deletes both ends):
    /// the interface the filter is attached to is gone until
    /// [`Lab::add_veth`]. Addresses are remembered and added back then.
    pub fn delete_veth(&self) {
        self.receiver.ip(&["link", "del", RECEIVER_IF]);
    }

    fn wait_link_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.sender.ip(&["link", "show", SENDER_IF]);
            let r = self.receiver.ip(&["link", "show", RECEIVER_IF]);
            if s.contains("LOWER_UP") && r.contains("LOWER_UP") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "veth pair did not come up:\n{s}\n{r}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Add `addr/prefix` to the sender's veth (IPv6 with `nodad`), and a
    /// permanent neighbor entry for it in the receiver, so replies need no
    /// ARP or NDP.
    pub fn add_sender_addr(&self, addr: IpAddr, prefix: u8) {
        self.add_sender_addrs(&[(addr, prefix)]);
    }

    /// [`Lab::add_sender_addr`] for many addresses at once (two `ip -batch`
    /// runs instead of two commands per address).
    pub fn add_sender_addrs(&self, addrs: &[(IpAddr, u8)]) {
        add_addrs(
            &self.sender,
            SENDER_IF,
            &self.receiver,
            RECEIVER_IF,
            SENDER_MAC,
            addrs,
        );
        let mut known = self.addrs.lock().unwrap();
        known.extend(addrs.iter().map(|&(a, p)| (true, a, p)));
    }

    /// Add `addr/prefix` to the receiver's veth, and a permanent neighbor
    /// entry for it in the sender.
    pub fn add_receiver_addr(&self, addr: IpAddr, prefix: u8) {
        add_addrs(
            &self.receiver,
            RECEIVER_IF,
            &self.sender,
            SENDER_IF,
            RECEIVER_MAC,
            &[(addr, prefix)],
        );
        self.addrs.lock().unwrap().push((false, addr, prefix));
    }

    /// Mount a tmpfs of `size` (`mount -o size=`, e.g. `"1m"`) on the lab's
    /// directory `name` (created) and return its path: a small file system
    /// to fill up. Unmounted by the lab's cleanup (and by
    /// [`sweep_stale`] when the process died first).
    pub fn mount_tmpfs(&self, name: &str, size: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700"))
                .arg("ef-soak")
                .arg(&dir),
        );
        self.mounts.lock().unwrap().push(dir.clone());
        dir
    }

    /// Write (create or truncate and rewrite in place) a file in the lab's
    /// directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Replace a file atomically (write a temporary file, rename it over).
    pub fn replace_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &p).unwrap_or_else(|e| panic!("rename to {}: {e}", p.display()));
        p
    }

    /// A command running the binary under test in the receiving namespace.
    pub fn edge_filter_cmd(&self) -> Command {
        self.receiver.command(&self.bin)
    }

    /// Start `edge-filter run --iface RECEIVER_IF --bpffs ROOT ARGS...` in
    /// the receiving namespace (not waiting for readiness). Call it from the
    /// test's own thread, not inside [`Netns::enter`]: the agent gets SIGKILL
    /// when the spawning thread exits.
    pub fn start_agent(&self, args: &[&str]) -> Agent {
        let mut cmd = self.edge_filter_cmd();
        cmd.args(["run", "--iface", RECEIVER_IF, "--bpffs"])
            .arg(&self.bpffs)
            .args(args);
        let agent = Agent::spawn(cmd, RECEIVER_IF);
        self.agents.lock().unwrap().push(agent.child.clone());
        agent
    }

    /// Run `edge-filter ARGS... --bpffs ROOT` in the receiving namespace.
    pub fn edge_filter(&self, args: &[&str]) -> Output {
        let mut cmd = self.edge_filter_cmd();
        cmd.args(args).arg("--bpffs").arg(&self.bpffs);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// `edge-filter stats --iface RECEIVER_IF --json`.
    pub fn stats(&self) -> Stats {
        let out = self.edge_filter(&["stats", "--iface", RECEIVER_IF, "--json"]);
        assert!(
            out.status.success(),
            "edge-filter stats failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Stats::parse(&String::from_utf8_lossy(&out.stdout), RECEIVER_IF)
    }

    /// `edge-filter detach --iface RECEIVER_IF`; returns its output.
    pub fn detach(&self) -> Output {
        self.edge_filter(&["detach", "--iface", RECEIVER_IF])
    }

    /// `ip -n RECEIVER link show RECEIVER_IF`.
    pub fn receiver_link(&self) -> String {
        self.receiver.ip(&["link", "show", RECEIVER_IF])
    }

    /// The id of the XDP program attached to the receiver's veth, if any
    /// (from `prog/xdp id N` in `ip link show`).
    pub fn xdp_prog_id(&self) -> Option<u32> {
        let link = self.receiver_link();
        parse_xdp_prog_id(&link)
    }

    /// [`Lab::xdp_prog_id`] without panicking: `Err` (with `ip`'s message)
    /// when [`RECEIVER_IF`] does not exist.
    pub fn try_xdp_prog_id(&self) -> Result<Option<u32>, String> {
        let out = Command::new("ip")
            .args(["-n", self.receiver.name(), "link", "show", RECEIVER_IF])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(parse_xdp_prog_id(&String::from_utf8_lossy(&out.stdout)))
    }

    /// The pin directory of the receiver's veth.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(RECEIVER_IF)
    }

    /// A UDP socket bound to `addr` in the receiving namespace, with a read
    /// timeout.
    pub fn udp_sink(&self, addr: SocketAddr) -> UdpSocket {
        self.receiver.enter(|| {
            let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("set_read_timeout");
            s
        })
    }

    /// A TCP listener on `addr` in the receiving namespace. Connections
    /// complete in the kernel's accept queue; nothing needs to accept them.
    pub fn tcp_listener(&self, addr: SocketAddr) -> TcpListener {
        self.receiver
            .enter(|| TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen tcp {addr}: {e}")))
    }

    /// Send each payload as one UDP datagram from `src` to `dst`, from the
    /// sending namespace.
    pub fn send_udp(&self, src: SocketAddr, dst: SocketAddr, payloads: &[Vec<u8>]) {
        self.sender.enter(|| {
            let s = UdpSocket::bind(src).unwrap_or_else(|e| panic!("bind udp {src}: {e}"));
            for p in payloads {
                let n = s
                    .send_to(p, dst)
                    .unwrap_or_else(|e| panic!("send udp {src} -> {dst}: {e}"));
                assert_eq!(n, p.len(), "short UDP send {src} -> {dst}");
            }
        });
    }

    /// Connect from `src` to `dst` in the sending namespace, waiting at most
    /// `timeout` (keep it well under a second: the kernel retransmits a SYN
    /// after 1 s, and retransmissions are counted in [`ConnectResult::syns`]).
    /// The socket is closed before returning; closing an unanswered connect
    /// sends nothing.
    pub fn tcp_connect(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        timeout: Duration,
    ) -> ConnectResult {
        use socket2::{Domain, SockAddr, Socket, Type};
        self.sender.enter(|| {
            let retrans = || read_net_counter("netstat", "TcpExt", "TCPSynRetrans");
            let before = retrans();
            let sock =
                Socket::new(Domain::for_address(src), Type::STREAM, None).expect("tcp socket");
            sock.set_reuse_address(true).expect("SO_REUSEADDR");
            sock.bind(&SockAddr::from(src))
                .unwrap_or_else(|e| panic!("bind tcp {src}: {e}"));
            let outcome = match sock.connect_timeout(&SockAddr::from(dst), timeout) {
                Ok(()) => Connect::Connected,
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Connect::Refused,
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.raw_os_error() == Some(libc::ETIMEDOUT) =>
                {
                    Connect::TimedOut
                }
                Err(e) => panic!("tcp connect {src} -> {dst}: {e}"),
            };
            drop(sock);
            ConnectResult {
                outcome,
                syns: 1 + retrans() - before,
            }
        })
    }

    /// `ping -c COUNT -I SRC DST` from the sending namespace (56 data bytes,
    /// 50 ms apart, waiting 1 s for the last reply).
    pub fn ping(&self, src: IpAddr, dst: IpAddr, count: u32) -> PingResult {
        let family = if dst.is_ipv6() { "-6" } else { "-4" };
        let mut cmd = self.sender.command("ping");
        cmd.args([
            family, "-n", "-q", "-s", "56", "-i", "0.05", "-W", "1", "-c",
        ])
        .arg(count.to_string())
        .arg("-I")
        .arg(src.to_string())
        .arg(dst.to_string());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} ({SETUP_HINT})"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // "3 packets transmitted, 0 received, 100% packet loss, time 102ms"
        let stats = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("{cmd:?} ({}) printed no summary:\n{text}", out.status));
        let num_before = |word: &str| -> u64 {
            let words: Vec<&str> = stats.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let i = words
                .iter()
                .position(|w| *w == word)
                .unwrap_or_else(|| panic!("no `{word}` in ping summary: {stats}"));
            words[i - 1]
                .parse()
                .unwrap_or_else(|_| panic!("bad ping summary: {stats}"))
        };
        PingResult {
            transmitted: num_before("packets"),
            received: num_before("received"),
            output: text.clone(),
        }
    }

    fn cleanup(&mut self) {
        // 1. Kill every agent this lab started (SIGKILL; the filter stays).
        for child in self.agents.lock().unwrap().drain(..) {
            let mut c = child.lock().unwrap();
            let _ = c.kill();
            let _ = c.wait();
        }
        // 2. Detach through the binary under test, then remove whatever pins
        //    are left (removing the link pin alone detaches the program).
        if self.pin_dir().exists() {
            let o = self.detach();
            if !o.status.success() {
                eprintln!(
                    "cleanup: edge-filter detach failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        if self.bpffs.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.bpffs)
        {
            eprintln!("cleanup: removing {}: {e}", self.bpffs.display());
        }
        // 3. The namespaces go when the fields drop (after this); the veth
        //    pair goes with them. 4. The mounts, then the files.
        for m in self.mounts.lock().unwrap().drain(..) {
            if let Err(e) = unmount(&m) {
                eprintln!("cleanup: umount {}: {e}", m.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Add `addrs` to `iface` of `ns` (IPv6 with `nodad`) and a permanent
/// neighbor entry for each, with `mac`, to `peer_if` of `peer`: one
/// `ip -batch` per namespace.
fn add_addrs(
    ns: &Netns,
    iface: &str,
    peer: &Netns,
    peer_if: &str,
    mac: &str,
    addrs: &[(IpAddr, u8)],
) {
    if addrs.is_empty() {
        return;
    }
    let mut own = String::new();
    let mut neigh = String::new();
    for (addr, prefix) in addrs {
        // (`ip -batch` lines take no global options such as `-6`; the
        // address says its family.)
        let nodad = if addr.is_ipv6() { " nodad" } else { "" };
        own.push_str(&format!("addr add {addr}/{prefix} dev {iface}{nodad}\n"));
        neigh.push_str(&format!(
            "neigh replace {addr} lladdr {mac} dev {peer_if} nud permanent\n"
        ));
    }
    ns.ip_batch(&own);
    peer.ip_batch(&neigh);
}

fn parse_xdp_prog_id(link: &str) -> Option<u32> {
    let rest = link.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Lazily unmount `path` (`umount2(MNT_DETACH)`).
fn unmount(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Mount points at or below `dir` (from `/proc/self/mountinfo`; octal
/// escapes of the kernel decoded), deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(decode_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

fn decode_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Receive datagrams from `sock` until one whose payload equals `marker`
/// arrives (returned datagrams exclude it), or panic after `timeout`.
///
/// Send the marker after a flow, from a source that is never filtered: the
/// veth delivers in order, so once it arrives every datagram of the flow
/// that got through has arrived too.
pub fn recv_until_marker(
    sock: &UdpSocket,
    marker: &[u8],
    timeout: Duration,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if &buf[..n] == marker {
                    return got;
                }
                got.push((from, buf[..n].to_vec()));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv on {:?}: {e}", sock.local_addr()),
        }
        assert!(
            Instant::now() < deadline,
            "marker {:?} did not arrive on {:?} within {timeout:?} (received meanwhile: {:?})",
            String::from_utf8_lossy(marker),
            sock.local_addr(),
            got.iter()
                .map(|(a, p)| format!("{a} {}", String::from_utf8_lossy(p)))
                .collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------
// The feed-driven agent (`edge-filter run --config FILE`).

/// Proxy variables removed from a config agent's environment: feeds served
/// on the namespace's loopback must be fetched directly.
const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

impl Lab {
    /// Start `edge-filter run --config CONFIG` in the receiving namespace,
    /// without the proxy variables (not waiting for readiness: see
    /// [`Agent::wait_ready_line`]). The config names the interfaces and the
    /// pin root: use [`RECEIVER_IF`] and [`Lab::bpffs`] so the lab's cleanup
    /// detaches it. Call it from the test's own thread (see
    /// [`Lab::start_agent`]).
    pub fn start_config_agent(&self, config: &Path) -> Agent {
        let mut cmd = self.edge_filter_cmd();
        cmd.arg("run").arg("--config").arg(config);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let agent = Agent::spawn(cmd, RECEIVER_IF);
        self.agents.lock().unwrap().push(agent.child.clone());
        agent
    }

    /// What the kernel enforces on [`RECEIVER_IF`]: the pinned maps read
    /// back with the library (`open_pinned(..).read()?.to_entry_set()`).
    pub fn enforced(&self) -> edge_filter::entry::EntrySet {
        self.try_enforced().unwrap_or_else(|e| {
            panic!(
                "reading the pinned maps under {}: {e}",
                self.bpffs.display()
            )
        })
    }

    /// [`Lab::enforced`], or why the maps could not be read.
    pub fn try_enforced(&self) -> Result<edge_filter::entry::EntrySet, String> {
        let paths = edge_filter::kernel::paths::Paths::new(&self.bpffs);
        let maps = edge_filter::kernel::attach::open_pinned(&paths, RECEIVER_IF)
            .map_err(|e| e.to_string())?;
        Ok(maps.read().map_err(|e| e.to_string())?.to_entry_set())
    }
}

impl Agent {
    /// Wait for the stdout line `line` exactly (a config agent prints
    /// `ready: IFACE...` once every interface is attached or adopted);
    /// panics with the agent's output if it exits first or after
    /// [`READY_TIMEOUT`].
    pub fn wait_ready_line(&self, line: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.stdout_lines().iter().any(|l| l == line) {
                return;
            }
            if let Some(st) = self.try_status() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("agent exited ({st}) before `{line}`\n{}", self.tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "no `{line}` within {READY_TIMEOUT:?}\n{}",
                self.tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
