//! Root trusts nothing another user could write (issue #13, item 8): the
//! real binary, as root, refuses a state directory or a pin root that
//! another user owns or can write, and attaches nothing; a last-known-good
//! copy another user owns is not enforced. Each refusal names the path,
//! what was found and the command that fixes it, and each test then
//! applies that fix and sees the agent start (so the refusal is the check's
//! doing, not some other failure).
//!
//! Needs root (skips without); everything lives in a [`Lab`], whose `Drop`
//! removes pins, namespaces and files also when a test fails.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_filter::entry::{Action, Entry};
use edge_filter::intel::feeds::FeedEntry;
use edge_filter::intel::state::{LastKnownGood, StateDir};
use edge_filter_tests::config::AgentConfig;
use edge_filter_tests::netns::{self, Agent, Lab};
use edge_filter_tests::wait;

/// An unprivileged uid that owns nothing here.
const NOBODY: u32 = 65534;
const READY: &str = "ready: ef-rcv";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// A config agent's config in the lab: the receiver's veth, the lab's pin
/// root, `state`, and one plain file feed per `(name, path)`.
fn write_config(lab: &Lab, state: &Path, feeds: &[(&str, &Path)]) -> PathBuf {
    let mut c = AgentConfig::new(lab, state).table("[metrics]\nlisten = \"off\"");
    for (name, path) in feeds {
        c = c.file_feed(name, path, "plain", "1s");
    }
    c.write(lab)
}

/// Wait for `agent` to exit (it must, by itself, within 30 s) and return
/// its stderr; panics if it succeeded.
fn refused(agent: &Agent) -> String {
    let status = agent.wait_exit(Duration::from_secs(30), "(the agent did not refuse)");
    assert!(!status.success(), "the agent exited 0:\n{}", agent.tail(30));
    agent.stderr_text()
}

/// Nothing attached and nothing pinned for the receiver's veth.
fn assert_nothing_attached(lab: &Lab, what: &str) {
    assert_eq!(
        lab.xdp_prog_id(),
        None,
        "{what}: an XDP program is attached:\n{}",
        lab.receiver_link()
    );
    assert!(
        !lab.pin_dir().join("link").exists(),
        "{what}: a link was pinned under {}",
        lab.pin_dir().display()
    );
}

fn has(set: &edge_filter::entry::EntrySet, net: &str) -> bool {
    let net = net.parse().unwrap();
    set.entries.iter().any(|e| e.net == net)
}

/// Wait until the kernel enforces `net` on the receiver.
fn wait_enforced(lab: &Lab, agent: &Agent, net: &str) {
    wait::poll(
        &format!("{net} enforced"),
        Duration::from_secs(15),
        agent,
        || lab.try_enforced().is_ok_and(|s| has(&s, net)).then_some(()),
    );
}

#[test]
fn trust_state_dir_another_user_could_write_is_refused() {
    if netns::skip_unless_root("trust_state_dir_another_user_could_write_is_refused") {
        return;
    }
    let lab = Lab::create();
    let feed = lab.write_file("list.txt", "203.0.113.7\n");
    let state = lab.dir.join("state");
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o700);
    let cfg = write_config(&lab, &state, &[("list", &feed)]);

    // Owned by another user.
    chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = refused(&lab.start_config_agent(&cfg));
    for want in [
        format!(
            "state directory {}: it is owned by uid 65534",
            state.display()
        ),
        format!("chown -R root:root {}", state.display()),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
    assert_nothing_attached(&lab, "state_dir owned by uid 65534");

    // Root's, but writable by everyone.
    chown(&state, Some(0), Some(0)).unwrap();
    chmod(&state, 0o777);
    let err = refused(&lab.start_config_agent(&cfg));
    for want in [
        format!(
            "state directory {}: it is writable by group and others (mode 0777)",
            state.display()
        ),
        format!("chmod 0700 {}", state.display()),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
    assert_nothing_attached(&lab, "state_dir mode 0777");
    // Refused, not repaired behind the operator's back.
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o777
    );

    // The fix the message names: the agent starts and enforces the feed.
    chmod(&state, 0o700);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    wait_enforced(&lab, &agent, "203.0.113.7/32");
    assert!(
        agent
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
            .success()
    );
}

#[test]
fn trust_planted_last_known_good_is_not_enforced() {
    if netns::skip_unless_root("trust_planted_last_known_good_is_not_enforced") {
        return;
    }
    let lab = Lab::create();
    let state_path = lab.dir.join("state");
    let state = StateDir::open(&state_path).unwrap();
    let lkg = |feed: &str, net: &str| {
        let mut l: LastKnownGood = serde_json::from_value(serde_json::json!({
            "feed": feed,
            "fetched_at": "2025-06-01T10:00:00Z",
            "entries": [],
        }))
        .unwrap();
        l.entries = std::sync::Arc::new(
            vec![FeedEntry::new(Entry::new(
                net.parse().unwrap(),
                None,
                Action::Drop,
            ))]
            .into(),
        );
        l
    };
    // The agent's own copy, and one "planted" by another user (written as
    // root, then given to uid 65534: the same file as far as the check is
    // concerned).
    state.save_lkg(&lkg("good", "203.0.113.1/32")).unwrap();
    state.save_lkg(&lkg("planted", "203.0.113.77/32")).unwrap();
    let planted = state.lkg_path("planted").unwrap();
    chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
    // Both feeds' files are missing: their last-known-good copies are all
    // the agent could enforce.
    let cfg = write_config(
        &lab,
        &state_path,
        &[
            ("good", &lab.dir.join("good-missing.txt")),
            ("planted", &lab.dir.join("planted-missing.txt")),
        ],
    );
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    let set = lab.enforced();
    assert!(
        has(&set, "203.0.113.1/32"),
        "the agent's own copy is not enforced: {:?}\n{}",
        set.entries,
        agent.tail(30)
    );
    assert!(
        !has(&set, "203.0.113.77/32"),
        "the planted copy is enforced: {:?}",
        set.entries
    );
    let err = agent.stderr_text();
    for want in [
        format!("state file {}: it is owned by uid 65534", planted.display()),
        format!("chown root:root {}", planted.display()),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
    assert!(
        agent
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
            .success()
    );

    // Fixed as the message says: the copy is enforced at the next start.
    chown(&planted, Some(0), Some(0)).unwrap();
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    wait_enforced(&lab, &agent, "203.0.113.77/32");
    assert!(
        agent
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
            .success()
    );
}

#[test]
fn trust_world_writable_pin_root_is_refused() {
    if netns::skip_unless_root("trust_world_writable_pin_root_is_refused") {
        return;
    }
    let lab = Lab::create();
    let feed = lab.write_file("list.txt", "203.0.113.9\n");
    let state = lab.dir.join("state");
    let cfg = write_config(&lab, &state, &[("list", &feed)]);
    std::fs::create_dir(&lab.bpffs).unwrap();
    for mode in [0o777, 0o1777] {
        chmod(&lab.bpffs, mode);
        let want = [
            format!(
                "bpffs pin root {}: it is writable by group and others (mode {mode:04o})",
                lab.bpffs.display()
            ),
            "so another user could hide or replace the filter's pins".to_string(),
            format!("chmod 0755 {}", lab.bpffs.display()),
        ];
        // The feed agent and the blocklist agent alike, one after the
        // other: started together, one could find the other holding the
        // interface's lock (taken before the pin root is checked) and be
        // refused for that instead.
        for what in ["run --config", "run --blocklist"] {
            let agent = if what == "run --config" {
                lab.start_config_agent(&cfg)
            } else {
                lab.start_agent(&["--blocklist", feed.to_str().unwrap()])
            };
            let err = refused(&agent);
            for w in &want {
                assert!(err.contains(w.as_str()), "{what}: {w:?} not in:\n{err}");
            }
            assert_nothing_attached(&lab, what);
        }
    }
    // The fix: the agent starts.
    chmod(&lab.bpffs, 0o755);
    let agent = lab.start_config_agent(&cfg);
    agent.wait_ready_line(READY);
    wait_enforced(&lab, &agent, "203.0.113.9/32");
    assert!(
        agent
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
            .success()
    );

    // Pins another user could rewrite are neither adopted nor detached:
    // make the interface's pin directory writable by everyone.
    chmod(&lab.pin_dir(), 0o777);
    let err = refused(&lab.start_config_agent(&cfg));
    assert!(
        err.contains(&format!(
            "pin directory {}: it is writable by group and others (mode 0777)",
            lab.pin_dir().display()
        )),
        "{err}"
    );
    let out = lab.detach();
    assert!(!out.status.success(), "detach used pins others can write");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("chmod 0755 {}", lab.pin_dir().display())),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab.xdp_prog_id().is_some(), "the filter went away");
    // Fixed: detach works (the lab's cleanup would also remove the pins).
    chmod(&lab.pin_dir(), 0o755);
    let out = lab.detach();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_attached(&lab, "after detach");
}
