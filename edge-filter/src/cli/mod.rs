//! The command line: one file per subcommand.

pub mod check_config;
pub mod completions;
pub mod detach;
pub mod events;
pub mod explain;
pub mod features;
pub mod force_feed;
pub mod pins;
pub mod replay;
pub mod run;
pub mod stats;
pub mod status;
pub mod top;

use clap::{Parser, Subcommand};

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
