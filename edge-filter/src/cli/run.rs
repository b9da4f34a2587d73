//! `edge-filter run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use edge_filter::agent;
use edge_filter::intel::config::EntryCounters;
use edge_filter::kernel::{attach::Mode, paths::Paths, program::Capacities};
use edge_filter::trust::{self, Role};

use super::pins::PinArgs;

/// `run --help`: the blocklist format and the agent's life cycle.
pub const LONG_ABOUT: &str = "\
Attach the XDP filter to IFACE and keep it in sync with the blocklist.

The blocklist has one entry per line:
  203.0.113.7                     exact address
  198.51.100.0/24                 prefix
  tcp 192.0.2.1:443               address + protocol + source port
  udp [2001:db8::1]:53 dst        ... + destination port
  198.51.100.0/24 monitor         count and let through instead of drop
  # comment

With --config FILE the agent instead pulls threat-intelligence feeds (files
or HTTP(S)), merges them with provenance and keeps every configured
interface in sync; check a config first with `edge-filter check-config`.

The file is re-read when it changes and on SIGHUP; bad lines are reported
with file and line and the rest applies. A change that removes more than
--max-shrink of the entries (an emptied or truncated file) is held until
you confirm it with SIGHUP. Stopping the agent leaves the filter attached;
a new agent adopts it. `edge-filter detach` removes it. One agent per
interface: a second `run` on it refuses, naming the first one's pid.

The agent follows its interface: when it is deleted the filter is gone and
the agent reports an enforcement gap; when an interface of that name
appears again the agent attaches the filter to it again with the same
entries and counters, and reports how long the gap lasted.

Example (as root):
  edge-filter run --iface eth1 --blocklist /etc/edge-filter/blocklist.txt";

/// Options of `edge-filter run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run from a TOML config file (feeds, several interfaces, safety
    /// limits); see examples/edge-filter.toml. Replaces the options below.
    #[arg(long, short, conflicts_with_all = ["iface", "blocklist", "allowlist"])]
    pub config: Option<PathBuf>,
    /// Interface to filter (never your only uplink while testing).
    #[arg(long, short, required_unless_present = "config")]
    pub iface: Option<String>,
    /// Blocklist file (see above).
    #[arg(long, short, required_unless_present = "config")]
    pub blocklist: Option<PathBuf>,
    /// Allowlist file: addresses or prefixes that always pass.
    #[arg(long, short)]
    pub allowlist: Option<PathBuf>,
    /// Attach mode: native (driver), skb (generic) or auto (native, else skb).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Drop malformed IP packets instead of passing them (they are counted either way).
    #[arg(long)]
    pub drop_malformed: bool,
    /// Per-entry hit counters (top, explain, per-feed metrics, last hit):
    /// exact counts every hit (one more cache line per hit), sampled one
    /// in 16 per CPU as 16 (estimates, almost free), off none. With
    /// --config use its `entry_counters`.
    #[arg(long, value_enum, default_value_t = EntryCounters::Exact, conflicts_with = "config")]
    pub entry_counters: EntryCounters,
    /// Seconds between checks of the files for changes.
    #[arg(long, default_value_t = 1.0)]
    pub poll_seconds: f64,
    /// Ignored (with a warning): datapath v2 sizes its maps from the entry
    /// set and grows them (capacity tiers). Was the exact IPv4 map's size.
    #[arg(long, default_value_t = Capacities::default().addr_v4)]
    pub max_addr_v4: u32,
    /// Ignored (with a warning), as --max-addr-v4.
    #[arg(long, default_value_t = Capacities::default().addr_v6)]
    pub max_addr_v6: u32,
    /// Ignored (with a warning), as --max-addr-v4.
    #[arg(long, default_value_t = Capacities::default().prefix_v4)]
    pub max_prefixes: u32,
    /// Ignored (with a warning), as --max-addr-v4.
    #[arg(long, default_value_t = Capacities::default().port_v4)]
    pub max_ports: u32,
    /// Ignored (with a warning), as --max-addr-v4.
    #[arg(long, default_value_t = Capacities::default().allow)]
    pub max_allow: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT, or
    /// "off"). Unset: 127.0.0.1:9436 when that port is free. With --config
    /// use its [metrics] listen instead.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    pub metrics_listen: Option<String>,
    /// Hold a reload that removes more than this fraction of the
    /// blocklist's entries (an emptied or truncated file) until you confirm
    /// it with SIGHUP. 1 never holds. With --config use [safety] max_shrink.
    #[arg(
        long,
        default_value_t = 0.5,
        value_name = "FRACTION",
        conflicts_with = "config"
    )]
    pub max_shrink: f64,
    /// Refuse a reload where more than this share of the lines are rejected
    /// (or none parses): the previous entries stay enforced. With --config
    /// use [safety] max_rejected_share.
    #[arg(
        long,
        default_value_t = 0.5,
        value_name = "SHARE",
        conflicts_with = "config"
    )]
    pub max_rejected_share: f64,
    /// Ignored (with a warning): with datapath v2 every entry has its own
    /// hit counter. Was the number of ids counted individually.
    #[arg(long, default_value_t = Capacities::default().entry_stats, value_name = "N")]
    pub max_entry_stats: u32,
    #[command(flatten)]
    pub pins: PinArgs,
}

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    if let Some(path) = &a.config {
        // The config decides what root enforces and which files it reads:
        // one another user could write is refused before it is parsed.
        trust::check_file(path, Role::Config).or_else(|e| {
            if e.is_not_found() || e.is_permission() {
                Ok(()) // loading it says so
            } else {
                Err(e)
            }
        })?;
        let mut cfg = edge_filter::intel::config::Config::load(path)?;
        // `--bpffs`/`EDGE_FILTER_BPFFS` wins over the config's `bpffs`, as
        // it does for status, stats, top, events and explain: otherwise an
        // agent started with it pins where those commands do not look.
        if let Some(root) = a.pins.bpffs {
            if root != cfg.bpffs {
                log::info!(
                    "pins under {} (--bpffs or EDGE_FILTER_BPFFS; the config says {})",
                    root.display(),
                    cfg.bpffs.display()
                );
            }
            cfg.bpffs = root;
        }
        for w in cfg.warnings() {
            log::warn!("{}: {w}", path.display());
        }
        for f in &cfg.feeds {
            if let edge_filter::intel::config::Source::File(p) = &f.source {
                warn_data_file(&format!("feed {}", f.name), p);
            }
        }
        edge_filter::kernel::features::require(edge_filter::kernel::features::Use::Run)?;
        agent::feeds::run(cfg, path).await?;
        return Ok(());
    }
    let (Some(iface), Some(blocklist)) = (a.iface, a.blocklist) else {
        anyhow::bail!("--iface and --blocklist are required without --config");
    };
    warn_data_file("--blocklist", &blocklist);
    if let Some(allow) = &a.allowlist {
        warn_data_file("--allowlist", allow);
    }
    let caps = Capacities {
        addr_v4: a.max_addr_v4,
        addr_v6: a.max_addr_v6,
        prefix_v4: a.max_prefixes,
        prefix_v6: a.max_prefixes,
        port_v4: a.max_ports,
        port_v6: a.max_ports,
        allow: a.max_allow,
        entry_stats: a.max_entry_stats,
    };
    if a.poll_seconds.is_nan() || a.poll_seconds <= 0.0 {
        anyhow::bail!("--poll-seconds must be positive");
    }
    if !(0.0..=1.0).contains(&a.max_rejected_share) {
        anyhow::bail!(
            "--max-rejected-share {} is out of range (0 to 1)",
            a.max_rejected_share
        );
    }
    if !(a.max_shrink > 0.0 && a.max_shrink <= 1.0) {
        anyhow::bail!(
            "--max-shrink {} is out of range (more than 0, at most 1)",
            a.max_shrink
        );
    }
    let metrics = edge_filter::intel::config::MetricsConfig {
        listen: a.metrics_listen,
    };
    if let Err(e) = metrics.listen_addr() {
        anyhow::bail!("--metrics-listen: {e}");
    }
    edge_filter::kernel::features::require(edge_filter::kernel::features::Use::Run)?;
    agent::files::run(agent::files::RunOptions {
        iface,
        blocklist,
        allowlist: a.allowlist,
        mode: a.mode,
        caps,
        malformed_drop: a.drop_malformed,
        entry_counters: a.entry_counters,
        paths: Paths::new(a.pins.root()),
        poll: Duration::from_secs_f64(a.poll_seconds),
        metrics,
        max_shrink: a.max_shrink,
        max_rejected_share: a.max_rejected_share,
    })
    .await?;
    Ok(())
}

/// Log (once, at start) that another user could write a feed, blocklist or
/// allowlist file. A warning, not a refusal: its content is parsed as
/// untrusted input like a download (limits, breadth check, shrink guard),
/// and a file kept by another user (a download job) can be deliberate; but
/// that user decides what it lists. A missing file is reported when read.
fn warn_data_file(what: &str, path: &std::path::Path) {
    match trust::check_file(path, Role::FeedFile) {
        Ok(()) => {}
        Err(e) if e.is_not_found() || e.is_permission() => {}
        Err(e) => log::warn!("{what}: {e} (read anyway: feed content is checked like a download)"),
    }
}
