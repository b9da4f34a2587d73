//! `edge-filter detach`.

use clap::Args;
use edge_filter::kernel::{attach, paths::Paths};

use super::pins::PinArgs;

/// Detach the filter from IFACE and remove its pinned maps.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to remove the filter from.
    #[arg(long, short)]
    pub iface: String,
    #[command(flatten)]
    pub pins: PinArgs,
}

pub fn run(a: DetachArgs) -> anyhow::Result<()> {
    attach::detach(&Paths::new(&a.pins.bpffs), &a.iface)?;
    println!("detached edge-filter from {}", a.iface);
    Ok(())
}
