//! `edge-filter features`.

use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::kernel::features::{self, Need, Status};

/// `features --help`.
pub const LONG_ABOUT: &str = "\
Probe the running kernel for every BPF feature edge-filter uses and print
what it has.

Each probe makes the real system call with a tiny map or program (a
pass-everything program attached, for a moment, to the loopback device of a
private network namespace for the bpf_link probe), so backported features
count and version numbers do not matter. `run` and `replay` run the probes
they need before touching anything and refuse with the missing feature's
name.

Needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON; the bpf_link probe also
needs CAP_SYS_ADMIN, else it is reported as unknown). Exit status 1 when a
feature that `run` requires is missing.

Examples:
  edge-filter features
  edge-filter features --json | jq '.features[] | select(.status != \"present\")'";

/// Options of `edge-filter features`.
#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Print one JSON object: {kernel, features: [{id, title, since, why,
    /// need, required_by, status, detail}]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: FeaturesArgs) -> anyhow::Result<()> {
    let report = features::probe_all();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kernel {}", report.kernel);
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY);
        t.set_header(["feature", "linux", "status", "required by", "without it"]);
        let mut details = Vec::new();
        for p in &report.features {
            let f = &p.feature;
            let status = match &p.status {
                Status::Present => "present",
                Status::Missing(d) => {
                    details.push(format!("{}: missing: {d}", f.id));
                    "MISSING"
                }
                Status::Unknown(d) => {
                    details.push(format!("{}: unknown: {d}", f.id));
                    "unknown"
                }
            };
            let needed_by = if f.required_by.is_empty() {
                "-".to_string()
            } else {
                f.required_by
                    .iter()
                    .map(|u| u.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let without = match f.need {
                Need::Required => "those commands refuse to start".to_string(),
                Need::Fallback(s) | Need::Optional(s) => s.to_string(),
            };
            t.add_row([
                f.id.to_string(),
                format!("{}+", f.since),
                status.to_string(),
                needed_by,
                without,
            ]);
        }
        println!("{t}");
        for d in details {
            println!("{d}");
        }
    }
    if let Some(p) = report.missing_for(features::Use::Run) {
        anyhow::bail!(
            "this kernel lacks {} (Linux {}+), which `edge-filter run` requires",
            p.feature.title,
            p.feature.since
        );
    }
    Ok(())
}
