//! The STIX pattern parser against the OASIS validator (`stix2-patterns`,
//! installed by `cargo xtask setup` into its Python environment): over a
//! corpus of patterns (every indicator pattern of the STIX files in
//! `../shared/data/feeds/stix`, hand-written edge cases, and cut and
//! altered copies of them), `stix_pattern::parse` accepts exactly what the
//! validator accepts. The validator's checks of hash formats (values, not
//! grammar; hashes are never enforced) do not count as rejections.
//!
//! Skipped with a message when the validator is missing, except under CI
//! (`CI` set), where setup has run and a missing validator is a failure.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::stix_pattern;

/// The Python that has `stix2patterns`: the environment `cargo xtask
/// setup` makes (`~/.cache/edge-filter/python`, or where
/// `EDGE_FILTER_PYTHON_VENV` says).
fn python() -> Option<PathBuf> {
    let venv = match std::env::var_os("EDGE_FILTER_PYTHON_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/edge-filter/python"),
    };
    let p = venv.join("bin/python3");
    p.exists().then_some(p)
}

const ORACLE: &str = r#"
import json, sys
from stix2patterns.validator import validate
out = []
for p in json.load(sys.stdin):
    try:
        ok, errs = validate(p, stix_version="2.1", ret_errs=True)
        # Hash formats are a check of values, not of the grammar (and hashes
        # are never enforced): a pattern failing only those is well-formed.
        ok = ok or all("is not a valid" in e and "hash" in e for e in errs)
    except Exception:
        ok = False
    out.append(ok)
json.dump(out, sys.stdout)
"#;

/// The validator's verdicts, or why it cannot give them.
fn oracle(patterns: &[String]) -> Result<Vec<bool>, String> {
    let py = python().ok_or("no Python environment (run `cargo xtask setup`)")?;
    let mut child = Command::new(&py)
        .args(["-c", ORACLE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", py.display()))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(patterns).unwrap().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Every `pattern` of the indicators in the STIX data files.
fn data_patterns() -> Vec<String> {
    let dir = std::env::var_os("EDGE_FILTER_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
        .join("feeds/stix");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!("{}: absent, data patterns not in the corpus", dir.display());
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap())
        else {
            continue;
        };
        collect(&v, &mut out);
    }
    out
}

fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if o.get("type").and_then(|t| t.as_str()) == Some("indicator")
                && o.get("pattern_type")
                    .and_then(|t| t.as_str())
                    .is_none_or(|t| t == "stix")
                && let Some(p) = o.get("pattern").and_then(|p| p.as_str())
            {
                out.push(p.to_string());
            }
            o.values().for_each(|x| collect(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// Hand-written edge cases, valid and not.
const EDGE_CASES: &[&str] = &[
    "[ipv4-addr:value = '198.51.100.1']",
    "[ipv4-addr:value = '198.51.100.0/24']",
    "[domain-name:value = 'x.example' OR ipv4-addr:value = '198.51.100.7']",
    "[ipv4-addr:value = '1.2.3.4'] OR [domain-name:value = 'x.org']",
    "[ipv4-addr:value = '1.2.3.4'] AND [ipv4-addr:value = '5.6.7.8']",
    "[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [ipv4-addr:value = '5.6.7.8']",
    "[ipv4-addr:value = '1.2.3.4'] WITHIN 10 SECONDS",
    "[ipv4-addr:value = '1.2.3.4'] REPEATS 5 TIMES",
    "[ipv4-addr:value = '1.2.3.4'] START t'2020-01-01T00:00:00Z' STOP t'2021-01-01T00:00:00Z'",
    "([ipv4-addr:value = '1.2.3.4'] OR [ipv4-addr:value = '5.6.7.8']) WITHIN 5 SECONDS",
    "[ipv4-addr:value IN ('198.51.100.1', '198.51.100.2')]",
    "[ipv4-addr:value ISSUBSET '198.51.100.0/24']",
    "[ipv4-addr:value ISSUPERSET '198.51.100.1']",
    "[ipv4-addr:value NOT = '1.2.3.4']",
    "[ipv4-addr:value != '1.2.3.4']",
    "[file:name LIKE 'a%']",
    "[file:name MATCHES '^a.*$']",
    "[file:size > 10 AND file:size <= 20]",
    "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']",
    "[file:hashes.MD5 = '79054025255fb1a26e4bc422aef54eb4']",
    "[network-traffic:src_ref.value = '1.2.3.4' AND network-traffic:dst_port = 22]",
    "[network-traffic:protocols[*] = 'tcp' AND network-traffic:dst_ref.value = '5.6.7.8']",
    "[network-traffic:protocols[0] = 'tcp']",
    "[x-custom-thing:some_prop = 'v']",
    "[windows-registry-key:key = 'HKEY_LOCAL_MACHINE\\\\SYSTEM']",
    "[artifact:payload_bin = b'dGVzdA==']",
    "[file:hashes.MD5 = h'79054025']",
    "[email-message:from_ref.value MATCHES '.+\\\\@example\\\\.com$']",
    "[user-account:is_privileged = true]",
    "[process:pid = 4]",
    "[ipv4-addr:value = '1.2.3.4' OR (ipv4-addr:value = '5.6.7.8' AND ipv4-addr:value = '9.9.9.9')]",
    "(([ipv4-addr:value = '1.2.3.4']))",
    "[(ipv4-addr:value = '1.2.3.4')]",
    "[EXISTS file:name]",
    "",
    "[]",
    "[ipv4-addr:value = '1.2.3.4'",
    "ipv4-addr:value = '1.2.3.4'",
    "[ipv4-addr:value '1.2.3.4']",
    "[ipv4-addr:value = '1.2.3.4'] ]",
    "[ipv4-addr:value = ]",
    "[ipv4-addr: = 'x']",
    "[ipv4-addr:value = '1.2.3.4' OR]",
    "[ipv4-addr:value = '1.2.3.4'] OR",
    "[ipv4-addr:value = '1.2.3.4'] WITHIN SECONDS",
    "[ipv4-addr:value IN ()]",
    "[ipv4-addr:value = '1.2.3.4]",
    "[ipv4-addr:value = @]",
    "{ipv4-addr:value = '1.2.3.4'}",
    "[ipv4-addr:value = '1.2.3.4'] [ipv4-addr:value = '5.6.7.8']",
];

/// Cut and altered copies of `p`: every prefix at a token boundary-ish
/// position, and a few substitutions.
fn mutations(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = p.chars().collect();
    let step = (chars.len() / 12).max(1);
    for cut in (1..chars.len()).step_by(step) {
        out.push(chars[..cut].iter().collect());
    }
    for (from, to) in [
        ("]", ""),
        ("[", "("),
        (" = ", " "),
        (" = ", " == "),
        ("'", "\""),
        (" OR ", " OR OR "),
        (" AND ", " "),
        (":value", ".value"),
    ] {
        if p.contains(from) {
            out.push(p.replacen(from, to, 1));
        }
    }
    out
}

#[test]
fn parser_agrees_with_the_oasis_validator() {
    let mut corpus: Vec<String> = data_patterns();
    let from_data = corpus.len();
    corpus.extend(EDGE_CASES.iter().map(|s| s.to_string()));
    let seeds = corpus.clone();
    for p in &seeds {
        corpus.extend(mutations(p));
    }
    corpus.sort();
    corpus.dedup();
    let verdicts = match oracle(&corpus) {
        Ok(v) => v,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: the OASIS stix2-patterns validator is not available: {e}");
            return;
        }
        Err(e) => panic!("the OASIS stix2-patterns validator is not available under CI: {e}"),
    };
    assert_eq!(verdicts.len(), corpus.len());
    let mut disagree = Vec::new();
    for (p, valid) in corpus.iter().zip(&verdicts) {
        let ours = stix_pattern::parse(p);
        if ours.is_ok() != *valid {
            disagree.push(format!(
                "{p:?}: validator {}, ours {:?}",
                if *valid { "accepts" } else { "rejects" },
                ours.err()
            ));
        }
    }
    let accepted = verdicts.iter().filter(|v| **v).count();
    eprintln!(
        "{} patterns ({from_data} from the data files): the validator accepts {accepted}, rejects {}",
        corpus.len(),
        corpus.len() - accepted
    );
    assert!(
        from_data == 0 || accepted > from_data / 2,
        "the corpus is mostly invalid?"
    );
    assert!(
        disagree.is_empty(),
        "{} disagreements:\n{}",
        disagree.len(),
        disagree.join("\n")
    );
}
