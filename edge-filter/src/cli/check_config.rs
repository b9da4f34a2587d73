//! `edge-filter check-config`.

use std::path::PathBuf;

use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::escape::{self, Escaped};
use edge_filter::intel::check::{self, CheckReport, FeedStatus};
use edge_filter::intel::config::{self, Config};
use edge_filter::trust::{self, Role, TrustError};
use serde::Serialize;

/// Validate a configuration file and show what the agent would enforce.
///
/// Loads and validates FILE (unknown keys, ranges, feed names, allowlist
/// feeds), reads and parses every file: feed exactly as the agent would,
/// merges them and prints per feed the format, entries (drop/monitor),
/// rejected lines and unsupported indicators, then the totals per kind and
/// family, the allowlist and entries rejected as too broad.
///
/// Never touches the kernel and never uses the network: http(s) feeds are
/// listed as "not fetched (http)" and left out of the totals.
///
/// A file: feed where no line parses, or where more rejected lines than
/// [safety] max_rejected_share allows, is FAILED (the agent would keep its
/// last-known-good copy), with its first rejected lines.
///
/// Also checks, without creating anything, that no other user can write
/// the configuration file, the state_dir or the bpffs pin root (the agent
/// refuses to start otherwise), and warns about file: feeds another user
/// can write, about [safety] values that weaken a guard, and about
/// interfaces that do not exist on this host (in this network namespace).
///
/// The verdict comes last, once: "FILE: configuration is valid" on stdout,
/// or one error line on stderr listing every problem.
///
/// Exit status: 0 when everything loads; 1 when the configuration is
/// invalid, a file: feed cannot be loaded or is not usable, a map would
/// overflow, or the agent would refuse a path.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CheckConfigArgs {
    /// The configuration file (TOML; see examples/edge-filter.toml).
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Accepted for scripts: check-config is always offline (http feeds are
    /// never fetched).
    #[arg(long)]
    pub offline: bool,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    /// The verdict: no problem at all (the exit status is 0).
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Every problem, one line each (empty when valid).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    settings: Option<&'a Config>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<&'a CheckReport>,
}

pub fn run(a: CheckConfigArgs) -> anyhow::Result<()> {
    let name = a.file.display().to_string();
    let cfg = match config::load(&a.file) {
        Ok(c) => c,
        Err(e) => {
            if a.json {
                let out = JsonOut {
                    valid: false,
                    error: Some(e.to_string()),
                    problems: Vec::new(),
                    settings: None,
                    report: None,
                };
                println!("{}", escape::json(serde_json::to_string_pretty(&out)?));
            }
            return Err(e.into());
        }
    };
    let mut report = check::check(&cfg, &name, time::OffsetDateTime::now_utc());
    // `run --config` refuses a configuration file another user could write.
    if let Some(e) = config_file_problem(&a.file) {
        report.path_problems.insert(0, e);
    }
    // A note, not a problem: the config may be checked on another host
    // (CI) than the one it is for.
    for i in &cfg.interfaces {
        if edge_filter::kernel::attach::ifindex(&i.name).is_err() {
            report.warnings.push(format!(
                "interface {} does not exist on this host (in this network namespace): `run --config` here would fail to attach to it",
                i.name
            ));
        }
    }
    let problems = report.problems();
    if a.json {
        let out = JsonOut {
            valid: problems.is_empty(),
            error: None,
            problems: problems.clone(),
            settings: Some(&cfg),
            report: Some(&report),
        };
        println!("{}", escape::json(serde_json::to_string_pretty(&out)?));
    } else {
        print_text(&cfg, &report);
    }
    // The verdict, once, after every finding.
    if !problems.is_empty() {
        anyhow::bail!(
            "{name}: configuration has {} problem{}: {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("; ")
        );
    }
    if !a.json {
        match report.warnings.len() {
            0 => println!("{name}: configuration is valid"),
            n => println!(
                "{name}: configuration is valid, with {n} warning{} above",
                if n == 1 { "" } else { "s" }
            ),
        }
    }
    Ok(())
}

/// Why `run --config FILE` would refuse `file` ([`trust::check_file`]),
/// `None` when it would not (or the file cannot be looked at: loading it
/// then already failed).
fn config_file_problem(file: &std::path::Path) -> Option<String> {
    match trust::check_file(file, Role::Config) {
        Ok(()) | Err(TrustError::Io { .. }) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn print_text(cfg: &Config, r: &CheckReport) {
    let d = |t: std::time::Duration| humantime_serde::re::humantime::format_duration(t).to_string();
    println!("configuration file {}", r.config);
    println!("  interfaces: {}", r.interfaces.join(", "));
    println!(
        "  state_dir {}, bpffs {}, reconcile every {}, malformed packets: {}, per-entry counters: {}",
        cfg.state_dir.display(),
        cfg.bpffs.display(),
        d(cfg.reconcile_interval),
        if cfg.malformed_drop() { "drop" } else { "pass" },
        cfg.entry_counters.name()
    );
    let s = &cfg.safety;
    println!(
        "  safety: hold shrinks over {:.1}% for {} refreshes; prefixes broader than /{} (IPv4), /{} (IPv6) rejected",
        s.max_shrink * 100.0,
        s.hold_refreshes,
        s.broadest_v4,
        s.broadest_v6
    );
    println!();
    if r.feeds.is_empty() {
        println!("no feeds configured");
    }
    for (f, fc) in r.feeds.iter().zip(&cfg.feeds) {
        let mut opts = vec![format!("refresh {}", d(fc.refresh))];
        if fc.is_allow() {
            opts.push("allowlist".into());
        } else {
            opts.push(format!("action {}", fc.action.name()));
        }
        if let Some(t) = fc.confidence_threshold {
            opts.push(format!("confidence threshold {t}"));
        }
        if let Some(t) = fc.ttl {
            opts.push(format!("ttl {}", d(t)));
        }
        if fc.allow_broad {
            opts.push("allow_broad".into());
        }
        println!("feed {} ({})", f.name, opts.join(", "));
        println!("  source {}", f.source);
        match f.status {
            FeedStatus::NotFetched => {
                println!("  {}", f.status.describe());
                continue;
            }
            FeedStatus::Failed => {
                println!(
                    "  FAILED: {}",
                    Escaped(f.error.as_deref().unwrap_or("unknown error"))
                );
                // Refused for its rejected lines: show them.
                print_examples(&f.rejected_examples, f.rejected_lines, "rejected");
                continue;
            }
            FeedStatus::Loaded => {}
        }
        println!(
            "  format {}{}",
            f.format.as_deref().unwrap_or("?"),
            if f.format_detected { " (detected)" } else { "" }
        );
        let c = &f.counts;
        if fc.is_allow() {
            println!(
                "  {} entries parsed, {} distinct allowlisted",
                f.parsed, c.entries
            );
        } else {
            println!(
                "  {} entries parsed, {} distinct: {} drop, {} monitor",
                f.parsed, c.entries, c.drop, c.monitor
            );
        }
        let mut left_out = Vec::new();
        for (n, what) in [
            (c.expired, "expired"),
            (c.pending, "not yet valid"),
            (c.rejected, "rejected as too broad or invalid here"),
        ] {
            if n > 0 {
                left_out.push(format!("{n} {what}"));
            }
        }
        if !left_out.is_empty() {
            println!("  left out: {}", left_out.join(", "));
        }
        println!(
            "  {} rejected lines, {} unsupported, {} skipped (revoked or expired)",
            f.rejected_lines, f.unsupported, f.skipped
        );
        print_examples(&f.rejected_examples, f.rejected_lines, "rejected");
        print_examples(&f.ignored_examples, f.unsupported + f.skipped, "ignored");
        if f.partial > 0 {
            println!(
                "  {} partial (indicators enforced for some OR alternatives only)",
                f.partial
            );
            print_examples(&f.partial_examples, f.partial, "partial");
        }
    }
    println!();
    println!(
        "desired state: {} entries ({} drop, {} monitor), {} allowlisted nets",
        r.entries, r.drop, r.monitor, r.allowlist.nets
    );
    let k = &r.kinds;
    // The maps are sized from the set (datapath v2 capacity tiers): no
    // capacity to hold the counts against.
    let cell = |n: usize, _cap: u32| n.to_string();
    let caps = &cfg.capacities;
    if let Some(w) = caps.ignored() {
        println!("note: {w}");
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(["kind", "IPv4 entries", "IPv6 entries"]);
    t.add_row([
        "addresses".to_string(),
        cell(k.addr_v4, caps.addr_v4),
        cell(k.addr_v6, caps.addr_v6),
    ]);
    t.add_row([
        "prefixes".to_string(),
        cell(k.prefix_v4, caps.prefix_v4),
        cell(k.prefix_v6, caps.prefix_v6),
    ]);
    t.add_row([
        "address+port".to_string(),
        cell(k.addr_port_v4, caps.port_v4),
        cell(k.addr_port_v6, caps.port_v6),
    ]);
    t.add_row([
        "prefix+port".to_string(),
        cell(k.prefix_port_v4, caps.port_v4),
        cell(k.prefix_port_v6, caps.port_v6),
    ]);
    t.add_row([
        "allowlist".to_string(),
        cell(k.allow_v4, caps.allow),
        cell(k.allow_v6, caps.allow),
    ]);
    println!("{t}");
    let a = &r.allowlist;
    println!(
        "allowlist: {} nets ({} inline, {} from feeds); {} entries shadowed by it (they never match)",
        a.nets, a.inline, a.from_feeds, a.shadowed
    );
    println!(
        "rejected as too broad (or with a port on an allow feed): {}",
        r.rejected_entries.len()
    );
    for x in r.rejected_entries.iter().take(check::EXAMPLES) {
        println!("    {}: {}: {}", x.feed, x.entry, Escaped(&x.reason));
    }
    if r.rejected_entries.len() > check::EXAMPLES {
        println!(
            "    ... and {} more",
            r.rejected_entries.len() - check::EXAMPLES
        );
    }
    if let Some(t) = r.next_change {
        let when = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string());
        println!("next change by expiry or activation: {when}");
    }
    if r.incomplete {
        println!("note: http(s) feeds were not fetched; the totals do not include them");
    }
    if !r.warnings.is_empty() {
        println!();
        println!("warnings:");
        for w in &r.warnings {
            println!("  {w}");
        }
    }
}

fn print_examples(examples: &[String], total: usize, what: &str) {
    if examples.is_empty() {
        return;
    }
    println!("  first {what}:");
    for e in examples {
        println!("    {}", Escaped(e));
    }
    if total > examples.len() {
        println!("    ... and {} more", total - examples.len());
    }
}
