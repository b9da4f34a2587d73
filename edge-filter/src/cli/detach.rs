//! `edge-filter detach`.

use clap::Args;
use edge_filter::kernel::attach;

use super::pins::PinSource;

/// Detach the filter from IFACE and remove its pinned maps.
///
/// The pin root is --bpffs, else the `bpffs` of --config, else
/// /sys/fs/bpf/edge-filter.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to remove the filter from.
    #[arg(long, short)]
    pub iface: String,
    #[command(flatten)]
    pub pins: PinSource,
}

pub fn run(a: DetachArgs) -> anyhow::Result<()> {
    let pins = a.pins.resolve()?;
    attach::detach(&pins.paths, &a.iface)?;
    println!("detached edge-filter from {}", a.iface);
    Ok(())
}
