//! The command line: one file per subcommand.

pub mod check_config;
pub mod completions;
pub mod detach;
pub mod events;
pub mod explain;
pub mod features;
pub mod force_feed;
pub mod replay;
pub mod run;
pub mod stats;
pub mod status;
pub mod top;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use edge_filter::intel::config::Config;
use edge_filter::kernel::paths::{DEFAULT_ROOT, Paths};

/// XDP edge filter: drops packets from blocklisted sources at the driver.
///
/// Quick start (as root):
///   edge-filter run --iface eth1 --blocklist blocklist.txt
///   edge-filter stats --iface eth1
///   edge-filter detach --iface eth1
#[derive(Debug, Parser)]
#[command(
    name = "edge-filter",
    version,
    about,
    long_about,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every subcommand that touches pins.
#[derive(Debug, Args, Clone)]
pub struct PinArgs {
    /// Root directory of edge-filter's pins on bpffs (mounted when missing).
    #[arg(long, env = "EDGE_FILTER_BPFFS", default_value = edge_filter::kernel::paths::DEFAULT_ROOT, global = true)]
    pub bpffs: PathBuf,
}

/// The pins a reading subcommand (`stats`, `top`, `events`, `status`,
/// `explain`) works on: the loaded `--config` (if given), the pin root, and
/// the interfaces to read.
///
/// One helper instead of a copy in each subcommand, so that they cannot
/// drift apart (they had started to: two wordings of the "nothing attached"
/// error). Every one of them resolves the root the same way: `--bpffs` (or
/// `EDGE_FILTER_BPFFS`), else the `bpffs` of `--config`, else
/// [`DEFAULT_ROOT`]; and reads the named `--iface`, else every interface
/// with a pinned link under that root.
pub struct Pins {
    /// The configuration file given with `--config`, loaded.
    pub config: Option<Config>,
    /// Paths below the resolved pin root.
    pub paths: Paths,
}

impl Pins {
    /// Load `config` (when given) and resolve the pin root from `bpffs`,
    /// the config and the default, in that order.
    pub fn resolve(config: Option<&Path>, bpffs: Option<&Path>) -> anyhow::Result<Pins> {
        let config = config.map(Config::load).transpose()?;
        let root = bpffs
            .map(Path::to_path_buf)
            .or_else(|| config.as_ref().map(|c| c.bpffs.clone()))
            .unwrap_or_else(|| DEFAULT_ROOT.into());
        Ok(Pins {
            config,
            paths: Paths::new(root),
        })
    }

    /// The pin root.
    pub fn root(&self) -> &Path {
        self.paths.root()
    }

    /// The interfaces to read: `iface` when named (opening its pins then
    /// says whether it is attached), else every interface with a pinned
    /// link under the root, sorted (possibly none).
    pub fn ifaces(&self, iface: Option<&str>) -> Vec<String> {
        match iface {
            Some(i) => vec![i.to_string()],
            None => self.paths.attached(),
        }
    }

    /// [`Pins::ifaces`] for subcommands that have nothing to show without
    /// an attachment: none is an error naming the root looked at.
    pub fn ifaces_required(&self, iface: Option<&str>) -> anyhow::Result<Vec<String>> {
        let ifaces = self.ifaces(iface);
        if ifaces.is_empty() {
            anyhow::bail!("{}", no_attachment_message(self.root()));
        }
        Ok(ifaces)
    }
}

/// What [`Pins::ifaces_required`] says when nothing is attached under `root`.
fn no_attachment_message(root: &Path) -> String {
    format!(
        "no edge-filter attachment found under {} (start one with `edge-filter run`; \
         if one is running with another pin root, pass that root with --bpffs)",
        root.display()
    )
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the filter to an interface and keep its maps equal to a blocklist file.
    #[command(long_about = run::LONG_ABOUT)]
    Run(run::RunArgs),
    /// Show counters by reason from the pinned maps.
    Stats(stats::StatsArgs),
    /// Remove the filter from an interface (and its pins).
    Detach(detach::DetachArgs),
    /// Apply a feed update that the shrink guard is holding.
    ForceFeed(force_feed::ForceFeedArgs),
    /// Validate a configuration file and show what it would enforce (no kernel, no network).
    CheckConfig(check_config::CheckConfigArgs),
    /// Replay captures through the real XDP program (private maps) and report what an entry set would do.
    #[command(long_about = replay::LONG_ABOUT)]
    Replay(replay::ReplayArgs),
    /// Show attached interfaces (mode, program, map occupancy), feed health and whether the agent is up.
    #[command(long_about = status::LONG_ABOUT)]
    Status(status::StatusArgs),
    /// Explain the verdict a packet from an address would get, and every entry, feed and indicator behind it.
    #[command(long_about = explain::LONG_ABOUT)]
    Explain(explain::ExplainArgs),
    /// Probe the kernel for the BPF features edge-filter uses.
    #[command(long_about = features::LONG_ABOUT)]
    Features(features::FeaturesArgs),
    /// The entries deciding the most packets (per-entry kernel counters), with feeds and indicators.
    #[command(long_about = top::LONG_ABOUT)]
    Top(top::TopArgs),
    /// Stream sampled dropped and monitored packets (ring buffer), as text or JSON Lines.
    #[command(long_about = events::LONG_ABOUT)]
    Events(events::EventsArgs),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff), generated from these definitions.
    Man(completions::ManArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_root_precedence_is_bpffs_then_default() {
        let p = Pins::resolve(None, Some(Path::new("/tmp/ef-pins-x"))).unwrap();
        assert_eq!(p.root(), Path::new("/tmp/ef-pins-x"));
        assert!(p.config.is_none());
        let p = Pins::resolve(None, None).unwrap();
        assert_eq!(p.root(), Path::new(DEFAULT_ROOT));
    }

    #[test]
    fn pin_root_of_the_config_yields_to_bpffs() {
        let dir = std::env::temp_dir().join(format!("ef-pins-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("edge-filter.toml");
        std::fs::write(
            &cfg,
            "bpffs = \"/tmp/ef-pins-from-config\"\n[[interface]]\nname = \"eth1\"\n",
        )
        .unwrap();
        let p = Pins::resolve(Some(&cfg), None).unwrap();
        assert_eq!(p.root(), Path::new("/tmp/ef-pins-from-config"));
        assert_eq!(p.config.as_ref().unwrap().interfaces[0].name, "eth1");
        let p = Pins::resolve(Some(&cfg), Some(Path::new("/tmp/ef-pins-flag"))).unwrap();
        assert_eq!(p.root(), Path::new("/tmp/ef-pins-flag"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn named_interface_is_read_even_without_pins() {
        let p = Pins::resolve(None, Some(Path::new("/nonexistent/ef-pins"))).unwrap();
        assert_eq!(p.ifaces(Some("eth9")), vec!["eth9".to_string()]);
        assert!(p.ifaces(None).is_empty());
        let e = p.ifaces_required(None).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/ef-pins")
                && e.contains("edge-filter run")
                && e.contains("--bpffs"),
            "{e}"
        );
    }
}
