//! The README's first run ("A first run on a veth pair"), run top to bottom
//! as an operator would paste it, so that the README cannot drift from the
//! program (issue 18).
//!
//! - `readme_first_run`: every `sh` block of that section is run, in order,
//!   by one `bash` with `set -euo pipefail` (so `%1` of the first block is
//!   the agent the last one kills, and any command that fails fails the
//!   test). What the runner changes, and nothing else: `B=` names this
//!   build's binary, `/tmp/` becomes a private directory, and
//!   `EDGE_FILTER_BPFFS` puts the pins under a private root (the README's
//!   commands take it from the environment). The README's names `ef-a` and
//!   `ef-b` are used as written: the test removes namespaces of those names
//!   before and after it runs.
//!
//!   Checked against what the README says: the first ping is answered (3
//!   received), the second is not (0 received), and the `stats` output
//!   equals the README's `text` block after it, table rows and all, except
//!   the pass counts, which the README says depend on what else crossed
//!   the link (ARP, IPv6 neighbour discovery). After the last block the
//!   pins are gone and no agent is left.
//!
//! - `readme_operating_session`: the session of "Operating it" (its `sh`
//!   block: two namespaces `tour-a`/`tour-b`, a config agent with two
//!   feeds, pings from four sources), then every `$ ` command of the
//!   section's `text` blocks in the same shell, then its clean-up block.
//!   Each command's output (stdout and stderr) must equal the lines the
//!   README shows under it, table rows and words alike; numbers are
//!   compared too, except on lines that carry a time, an age, a pid, kernel
//!   object ids or pass counts (which ARP and IPv6 neighbour discovery
//!   move), where only the words are.
//!
//! Root only (`skipping: needs root` otherwise). Build the binary first, in
//! the same profile:
//!
//! ```text
//! cargo build -p edge-filter
//! cargo test -p edge-filter-tests --test readme_tour -- --nocapture
//! ```

use std::io::Read as _;
use std::net::IpAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_filter_tests::netns;

/// A whole tour may take this long (agent start, pings, events).
const TIMEOUT: Duration = Duration::from_secs(180);

/// A fenced block of the README: its info string (`sh`, `text`) and body.
#[derive(Debug)]
struct Block {
    lang: String,
    body: String,
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced blocks of the section whose heading line is `title`, in
/// order (up to the next heading of the same or a higher level).
fn section_blocks(readme: &str, title: &str) -> Vec<Block> {
    let start = readme
        .find(&format!("\n{title}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {title:?}"));
    let level = title.split(' ').next().unwrap();
    let rest = &readme[start + title.len() + 2..];
    let mut blocks = Vec::new();
    let mut lines = rest.lines();
    while let Some(line) = lines.next() {
        if line.starts_with('#') && line.split(' ').next().unwrap().len() <= level.len() {
            break;
        }
        let Some(lang) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        blocks.push(Block {
            lang: lang.trim().to_string(),
            body,
        });
    }
    blocks
}

/// Whether a line's numbers change from run to run: it carries a time, an
/// age, a pid, a duration, kernel program/link ids (the status row of an
/// attached interface) or pass counts.
fn volatile(tokens: &[String]) -> bool {
    let age = |t: &str| {
        let t = t.trim_start_matches('(').trim_end_matches([',', ')']);
        t.strip_suffix('s')
            .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
    };
    tokens
        .first()
        .is_some_and(|t| t.starts_with("pass_") || t.starts_with('{'))
        || tokens.iter().any(|t| {
            (t.contains('T') && t.contains('Z') && t.contains(':'))
                || age(t)
                || t == "pid"
                || t == "ms),"
                || t == "native"
                || t == "skb"
        })
}

/// Rows of CLI output (box drawing stripped, one token list per non-empty
/// line) with what changes between runs masked: on [`volatile`] lines
/// every number that is not an address, and everywhere the total of passed
/// packets.
fn normalized(text: &str) -> Vec<Vec<String>> {
    let ip = |t: &str| {
        t.trim_matches(|c: char| "(),;".contains(c))
            .parse::<IpAddr>()
            .is_ok()
    };
    let mask = |t: &str| {
        let mut out = String::new();
        let mut in_digits = false;
        for c in t.chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    out.push('N');
                }
                in_digits = true;
            } else {
                in_digits = false;
                out.push(c);
            }
        }
        out
    };
    text.lines()
        .map(|l| {
            l.chars()
                .map(|c| {
                    if "│┌┐└┘╞╡═─├┤┬┴┼".contains(c) {
                        ' '
                    } else {
                        c
                    }
                })
                .collect::<String>()
        })
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .map(|row| {
            let v = volatile(&row);
            (0..row.len())
                .map(|i| {
                    let t = &row[i];
                    let passed_total = row.get(i + 1).is_some_and(|n| n.starts_with("passed"));
                    if (v && !ip(t)) || passed_total {
                        mask(t)
                    } else {
                        t.clone()
                    }
                })
                .collect()
        })
        .collect()
}

/// A tour's private places and what to remove afterwards, whatever happens.
struct Tour {
    bin: PathBuf,
    /// Pin root (`EDGE_FILTER_BPFFS` of every command).
    pins: PathBuf,
    /// Stands in for `/tmp/`.
    dir: PathBuf,
    /// Namespaces the README creates, removed before and after.
    namespaces: &'static [&'static str],
    /// The filtered interface and its namespace (for a detach on failure).
    iface: (&'static str, &'static str),
}

/// What one tour script printed.
struct Ran {
    out: String,
    context: String,
}

impl Tour {
    fn new(namespaces: &'static [&'static str], iface: (&'static str, &'static str)) -> Tour {
        netns::require_tools();
        netns::ensure_bpffs();
        let tag = netns::unique_tag();
        let tour = Tour {
            bin: netns::edge_filter_bin(),
            pins: Path::new("/sys/fs/bpf").join(format!("{}{tag}", netns::BPFFS_PREFIX)),
            dir: std::env::temp_dir().join(format!("{}{tag}", netns::NETNS_PREFIX)),
            namespaces,
            iface,
        };
        tour.remove_namespaces();
        std::fs::create_dir_all(&tour.dir).expect("create the private /tmp");
        // The agent refuses files in a directory others can write.
        std::fs::set_permissions(
            &tour.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the private /tmp");
        tour
    }

    fn remove_namespaces(&self) {
        for ns in self.namespaces {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }

    /// A README block as this tour runs it: `B=` names this build's binary
    /// and `/tmp/` is the private directory.
    fn adapt(&self, block: &str) -> String {
        // `/tmp/` first: the binary itself may live under /tmp (a clone
        // there), and its path must not be rewritten.
        let b = format!("B={}\n", self.bin.display());
        block
            .replace("/tmp/", &format!("{}/", self.dir.display()))
            .replace("B=target/release/edge-filter\n", &b)
            .replace("B=$PWD/target/release/edge-filter\n", &b)
    }

    /// Run `script` with bash (`set -euo pipefail` first) in a process
    /// group of its own, killed when it ends or times out; panics unless it
    /// exits 0.
    fn run(&self, script: &str) -> Ran {
        let script = format!("set -euo pipefail\n{script}");
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("EDGE_FILTER_BPFFS", &self.pins)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run bash");
        let pgid = child.id() as i32;
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for bash") {
                break Some(s);
            }
            if started.elapsed() > TIMEOUT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Kill what is left (an agent, if the clean-up did not run) before
        // joining the readers: it holds the pipes open.
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        let out = out_reader.join().unwrap();
        let err = err_reader.join().unwrap();
        let context = format!("script:\n{script}\nstdout:\n{out}\nstderr:\n{err}");
        let status = status.unwrap_or_else(|| panic!("still running after {TIMEOUT:?}\n{context}"));
        assert!(status.success(), "the tour failed ({status})\n{context}");
        // The clean-up stops the agent before it detaches: `detach` and the
        // agent both say so when the agent is still running.
        assert!(
            !out.contains("still manages") && !err.contains("enforcement gap started"),
            "the README's clean-up detached the filter while its agent still ran\n{context}"
        );
        Ran { out, context }
    }

    /// What the README's clean-up must have removed.
    fn assert_clean(&self) {
        assert!(
            !self.pins.join(self.iface.0).exists(),
            "the README's clean-up left pins under {}",
            self.pins.display()
        );
        for ns in self.namespaces {
            assert!(
                !Path::new("/run/netns").join(ns).exists(),
                "the README's clean-up left namespace {ns}"
            );
        }
    }
}

impl Drop for Tour {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.iface.1))
            .arg(&self.bin)
            .args(["detach", "--iface", self.iface.0, "--bpffs"])
            .arg(&self.pins)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.remove_namespaces();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn readme_first_run() {
    if netns::skip_unless_root("readme_first_run") {
        return;
    }
    let blocks = section_blocks(&readme(), "## A first run on a veth pair");
    let sh: Vec<&Block> = blocks.iter().filter(|b| b.lang == "sh").collect();
    assert!(
        sh.len() >= 2,
        "the first run should have its commands and its clean-up: {blocks:?}"
    );
    assert!(
        sh[0].body.contains("B=target/release/edge-filter\n"),
        "the first block should name the binary as B=target/release/edge-filter:\n{}",
        sh[0].body
    );
    // The text block right after the first sh block: what `stats` printed.
    let first = blocks.iter().position(|b| b.lang == "sh").unwrap();
    let want_stats = blocks
        .get(first + 1)
        .filter(|b| b.lang == "text")
        .unwrap_or_else(|| panic!("no text block after the first sh block: {blocks:?}"));

    let tour = Tour::new(&["ef-a", "ef-b"], ("ef-b0", "ef-b"));
    let mut script = String::new();
    for (i, b) in sh.iter().enumerate() {
        script.push_str(&tour.adapt(&b.body));
        script.push_str(&format!("echo '@@ block {i} done @@'\n"));
    }
    let Ran { out, context } = tour.run(&script);

    // Block 0's output: the agent's ready line, two pings, then `stats`.
    let block0 = out
        .split("@@ block 0 done @@")
        .next()
        .expect("block 0's output");
    assert!(
        block0.contains("3 packets transmitted, 3 received"),
        "the ping from 10.77.0.1 should be answered\n{context}"
    );
    assert!(
        block0.contains("3 packets transmitted, 0 received") && block0.contains("\nblocked\n"),
        "the ping from the blocked 10.77.0.2 should get no answer\n{context}"
    );
    let stats = &block0[block0
        .find("ef-b0: ")
        .unwrap_or_else(|| panic!("no stats output\n{context}"))..];
    assert_eq!(
        normalized(stats),
        normalized(&want_stats.body),
        "`stats` does not print what README.md shows (pass counts aside)\nprinted:\n{stats}\nREADME:\n{}",
        want_stats.body
    );
    assert!(
        out.contains(&format!("@@ block {} done @@", sh.len() - 1)),
        "{context}"
    );
    tour.assert_clean();
}

/// One `$ ` command of a README transcript and the lines shown under it.
struct Transcript {
    command: String,
    output: String,
}

fn transcripts(blocks: &[Block]) -> Vec<Transcript> {
    let mut all: Vec<Transcript> = Vec::new();
    for b in blocks.iter().filter(|b| b.lang == "text") {
        let mut current: Option<Transcript> = None;
        for line in b.body.lines() {
            if let Some(cmd) = line.strip_prefix("$ ") {
                all.extend(current.take());
                current = Some(Transcript {
                    command: cmd.to_string(),
                    output: String::new(),
                });
            } else if let Some(t) = current.as_mut() {
                t.output.push_str(line);
                t.output.push('\n');
            }
        }
        all.extend(current);
    }
    all
}

#[test]
fn readme_operating_session() {
    if netns::skip_unless_root("readme_operating_session") {
        return;
    }
    let blocks = section_blocks(
        &readme(),
        "### Operating it: `status`, `stats`, `explain`, `top`, `events`",
    );
    let sh: Vec<&Block> = blocks.iter().filter(|b| b.lang == "sh").collect();
    assert!(
        sh.len() == 2,
        "the session should have its set-up and its clean-up blocks: {blocks:?}"
    );
    let shown = transcripts(&blocks);
    assert!(
        shown.len() >= 6,
        "the section should show status, stats, explain, top and events: {} commands",
        shown.len()
    );

    let tour = Tour::new(&["tour-a", "tour-b"], ("tour-b0", "tour-b"));
    let mut script = tour.adapt(&sh[0].body);
    script.push_str("echo '@@ set-up done @@'\n");
    for (i, t) in shown.iter().enumerate() {
        script.push_str(&format!(
            "echo '@@ command {i} @@'\n{{ {} ; }} 2>&1\n",
            t.command
        ));
    }
    script.push_str("echo '@@ commands done @@'\n");
    script.push_str(&tour.adapt(&sh[1].body));
    script.push_str("echo '@@ clean-up done @@'\n");
    let Ran { out, context } = tour.run(&script);
    assert!(out.contains("@@ clean-up done @@"), "{context}");

    let printed = out
        .split("@@ set-up done @@")
        .nth(1)
        .and_then(|s| s.split("@@ commands done @@").next())
        .expect("the commands' output");
    let pins = tour.pins.display().to_string();
    let mut wrong = Vec::new();
    for (i, t) in shown.iter().enumerate() {
        let got = printed
            .split(&format!("@@ command {i} @@\n"))
            .nth(1)
            .and_then(|s| s.split("@@ command ").next())
            .unwrap_or_default()
            .replace(&pins, "/sys/fs/bpf/edge-filter");
        if normalized(&got) != normalized(&t.output) {
            wrong.push(format!(
                "$ {}\n--- README.md shows:\n{}--- printed:\n{got}",
                t.command, t.output
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} commands print other than README.md shows:\n\n{}",
        wrong.len(),
        shown.len(),
        wrong.join("\n")
    );
    tour.assert_clean();
}
