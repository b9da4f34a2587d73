//! A CrowdSec Local API as a feed (`format = "crowdsec"`), against a real
//! LAPI: Debian's `crowdsec` started as `crowdsec -c CFG -no-cs` (the LAPI
//! alone, sqlite, no Central API) on the loopback of the agent's network
//! namespace, driven with `cscli`, and the real agent binary with its
//! kernel maps read back.
//!
//! - `crowdsec_decisions_enforced_and_released`: a bouncer key from
//!   `cscli bouncers add` in a 0600 file; an Ip ban added before the agent
//!   starts (the `startup=true` answer), a Range ban and an Ip `captcha`
//!   (monitor) added after (deltas): the kernel enforces them within a few
//!   refreshes; `cscli decisions delete` releases the address. The LAPI
//!   stopped: the enforced set stays, `status.json` reports the feed failing
//!   with an error naming it; the LAPI back: the feed recovers. A wrong key:
//!   a 403 reported as such, the enforced set unchanged, the key never in
//!   the agent's output. A key file readable by others: the agent refuses
//!   to start, naming the feed.
//!
//! Root only. Needs `crowdsec` (`cargo xtask setup` installs it): without
//! it the test prints why it skips, unless `CI=true`, where it fails.
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test crowdsec -- --nocapture
//! ```

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_filter::entry::{Action, Entry, EntrySet};
use edge_filter::ops::status::{FeedHealth, Status};
use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::literal::net;
use edge_filter_tests::netns::{self, Agent, Lab, Netns};
use edge_filter_tests::wait;

const READY: &str = "ready: ef-rcv";
/// Refresh 1 s: everything shows within a few.
const BOUND: Duration = Duration::from_secs(10);

fn set_of(entries: &[(&str, Action)]) -> EntrySet {
    let mut entries: Vec<Entry> = entries
        .iter()
        .map(|(n, a)| Entry::new(net(n), None, *a))
        .collect();
    entries.sort();
    entries.dedup();
    EntrySet {
        allow: Vec::new(),
        entries,
    }
}

/// Whether crowdsec is here; `None` means skip (printed), a panic under CI.
fn crowdsec_available(test: &str) -> bool {
    let found = ["crowdsec", "cscli"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !ci,
        "{test}: crowdsec/cscli not installed and CI=true (run `cargo xtask setup`)"
    );
    println!("skipping: crowdsec is not installed; `cargo xtask setup` installs it ({test})");
    false
}

/// A CrowdSec LAPI alone, in `ns`, on 127.0.0.1:`port`, its config and
/// sqlite database in `dir`. Killed on drop.
struct Lapi {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    ns_path: PathBuf,
}

impl Lapi {
    fn create(ns: &Netns, dir: &Path) -> Lapi {
        let port = ns.enter(|| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port()
        });
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("hub")).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n\
                 config_paths:\n  config_dir: {d}\n  data_dir: {d}/data\n  hub_dir: {d}/hub\n  index_path: {d}/hub/.index.json\n\
                 db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: false\n\
                 api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n  server:\n    listen_uri: 127.0.0.1:{port}\n    profiles_path: {d}/profiles.yaml\n\
                 prometheus:\n  enabled: false\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )
        .unwrap();
        std::fs::write(dir.join("local_api_credentials.yaml"), "").unwrap();
        let mut lapi = Lapi {
            dir: dir.to_path_buf(),
            port,
            child: None,
            ns_path: ns.path(),
        };
        lapi.start();
        // The machine cscli adds decisions as.
        lapi.cscli(&[
            "machines",
            "add",
            "edge-filter-test",
            "--auto",
            "--force",
            "-f",
            &format!("{d}/local_api_credentials.yaml"),
            "--url",
            &lapi.url(),
        ]);
        lapi
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(program)
            .arg("-c")
            .arg(self.dir.join("config.yaml"));
        c
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.join("lapi.log")).unwrap();
        let child = self
            .command("crowdsec")
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start crowdsec");
        self.child = Some(child);
        let t0 = Instant::now();
        let ns = self.ns_path.clone();
        let port = self.port;
        loop {
            let up = netns_connect(&ns, port);
            if up {
                break;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("crowdsec exited ({st}):\n{}", self.log());
            }
            assert!(
                t0.elapsed() < BOUND,
                "the LAPI does not listen on {} after {BOUND:?}:\n{}",
                self.url(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("LAPI up on {} in {:.1?}", self.url(), t0.elapsed());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lapi.log")).unwrap_or_default()
    }

    /// `cscli -c CFG ARGS`, panicking on failure; returns stdout.
    fn cscli(&self, args: &[&str]) -> String {
        let out = self
            .command("cscli")
            .args(args)
            .output()
            .expect("run cscli");
        assert!(
            out.status.success(),
            "cscli {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether 127.0.0.1:`port` accepts a connection in the namespace at `ns`.
fn netns_connect(ns: &Path, port: u16) -> bool {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("open the netns");
        // SAFETY: setns on a fresh thread with a valid namespace fd.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns");
        TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_millis(200),
        )
        .is_ok()
    })
    .join()
    .unwrap()
}

/// Write `key` into `path`, mode `mode`.
fn write_key(path: &Path, key: &str, mode: u32) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    writeln!(f, "{key}").unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn health(lab: &Lab, feed: &str) -> Option<FeedHealth> {
    let text = std::fs::read_to_string(lab.dir.join("state/status.json")).ok()?;
    let s: Status = serde_json::from_str(&text).ok()?;
    s.feeds.into_iter().find(|f| f.name == feed)
}

fn show(set: &EntrySet) -> String {
    let s: Vec<String> = set.entries.iter().map(|e| e.to_string()).collect();
    format!("[{}]", s.join(", "))
}

fn wait_enforced(what: &str, lab: &Lab, agent: &Agent, want: &EntrySet) -> Duration {
    let context = || {
        format!(
            "enforced: {}\nstatus: {:?}\n",
            lab.try_enforced().map(|s| show(&s)).unwrap_or_else(|e| e),
            health(lab, "cs")
        )
    };
    let (_, took) = wait::poll_with(what, BOUND, agent, context, || {
        (lab.try_enforced().ok().as_ref() == Some(want)).then_some(())
    });
    println!("{what}: {} after {took:.1?}", show(want));
    took
}

/// The kernel enforces exactly `want` on every read for `d`.
fn holds(what: &str, lab: &Lab, agent: &Agent, want: &EntrySet, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        let got = lab.enforced();
        assert!(
            &got == want,
            "{what}: enforced {} instead of {}\n{}",
            show(&got),
            show(want),
            agent.tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crowdsec_decisions_enforced_and_released() {
    let test = "crowdsec_decisions_enforced_and_released";
    if netns::skip_unless_root(test) || !crowdsec_available(test) {
        return;
    }
    let lab = Lab::create();
    let mut lapi = Lapi::create(&lab.receiver, &lab.dir.join("crowdsec"));
    let key = lapi
        .cscli(&["bouncers", "add", "edge-filter", "-o", "raw"])
        .trim()
        .to_string();
    assert!(!key.is_empty(), "cscli printed no key");
    let key_file = lab.dir.join("crowdsec.key");
    write_key(&key_file, &key, 0o600);
    lapi.cscli(&[
        "decisions",
        "add",
        "-i",
        "198.51.100.7",
        "-d",
        "4h",
        "-t",
        "ban",
    ]);
    let cfg = AgentConfig::new(&lab, &lab.dir.join("state"))
        .set("reconcile_interval = \"2s\"")
        .feed("cs", &lapi.url(), "crowdsec", "1s")
        .line(&format!("api_key_file = '{}'", key_file.display()))
        .write(&lab);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);

    // The startup=true answer.
    let one = set_of(&[("198.51.100.7", Action::Drop)]);
    wait_enforced("the Ip ban from the startup answer", &lab, &agent, &one);
    // Deltas: a Range ban and a captcha (monitor).
    lapi.cscli(&[
        "decisions",
        "add",
        "-r",
        "203.0.113.0/24",
        "-d",
        "4h",
        "-t",
        "ban",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "-i",
        "192.0.2.9",
        "-d",
        "1h",
        "-t",
        "captcha",
    ]);
    let three = set_of(&[
        ("198.51.100.7", Action::Drop),
        ("203.0.113.0/24", Action::Drop),
        ("192.0.2.9", Action::Monitor),
    ]);
    wait_enforced("a Range ban and a captcha added", &lab, &agent, &three);
    // status.json is written right after the maps.
    wait::poll_with(
        "status counts 3 entries",
        BOUND,
        &agent,
        || format!("{:?}", health(&lab, "cs")),
        || health(&lab, "cs").filter(|h| h.entries == 3 && h.last_error.is_none()),
    );
    // Released by a delete.
    lapi.cscli(&["decisions", "delete", "-i", "198.51.100.7"]);
    let two = set_of(&[
        ("203.0.113.0/24", Action::Drop),
        ("192.0.2.9", Action::Monitor),
    ]);
    wait_enforced("the Ip ban deleted", &lab, &agent, &two);

    // The LAPI down: the set stays, the feed is reported failing.
    lapi.stop();
    let (h, _) = wait::poll_with(
        "the feed reported failing",
        BOUND,
        &agent,
        || format!("{:?}", health(&lab, "cs")),
        || health(&lab, "cs").filter(|h| h.last_error.is_some() && h.consecutive_failures > 0),
    );
    let err = h.last_error.unwrap();
    assert!(err.contains(&lapi.url()), "{err}");
    println!("LAPI down: {err}");
    assert!(agent.wait_stderr("feed cs: ", BOUND));
    holds("the LAPI down", &lab, &agent, &two, Duration::from_secs(3));
    // Back: resync with startup=true (the cursor is on the server).
    lapi.start();
    wait::poll_with(
        "the feed recovered",
        Duration::from_secs(40),
        &agent,
        || format!("{:?}", health(&lab, "cs")),
        || health(&lab, "cs").filter(|h| h.last_error.is_none()),
    );
    lapi.cscli(&[
        "decisions",
        "add",
        "-i",
        "198.51.100.8",
        "-d",
        "4h",
        "-t",
        "ban",
    ]);
    let again = set_of(&[
        ("203.0.113.0/24", Action::Drop),
        ("192.0.2.9", Action::Monitor),
        ("198.51.100.8", Action::Drop),
    ]);
    wait_enforced("a ban after the LAPI came back", &lab, &agent, &again);
    assert!(
        !agent.stderr_text().contains(&key),
        "the key is in the agent's output"
    );
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    drop(agent);

    // A wrong key: 403, reported, nothing changes.
    let wrong = "0000000000000000ffffffffffffffff";
    write_key(&key_file, wrong, 0o600);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    let (h, _) = wait::poll_with(
        "the wrong key reported",
        BOUND,
        &agent,
        || format!("{:?}", health(&lab, "cs")),
        || health(&lab, "cs").filter(|h| h.last_error.is_some()),
    );
    let err = h.last_error.unwrap();
    assert!(
        err.contains("HTTP 403") && err.contains("refused the bouncer key") && !err.contains(wrong),
        "{err}"
    );
    println!("wrong key: {err}");
    holds("a wrong key", &lab, &agent, &again, Duration::from_secs(3));
    assert!(!agent.stderr_text().contains(wrong));
    agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    drop(agent);

    // A key file others may read: refused at start, naming the feed.
    write_key(&key_file, &key, 0o644);
    let agent = lab.start_config_agent(&cfg);
    let st = agent.wait_exit(BOUND, "refusing a readable key file");
    assert!(!st.success());
    let text = agent.stderr_text();
    assert!(
        text.contains("feed cs: api_key_file")
            && text.contains("mode 0644")
            && !text.contains(&key),
        "{text}"
    );
    assert_eq!(lab.enforced(), again, "the refused start changed the maps");
}
