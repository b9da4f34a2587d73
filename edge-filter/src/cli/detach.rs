//! `edge-filter detach`.

use clap::Args;
use edge_filter::kernel::{attach, lock};

use super::pins::PinSource;

/// Detach the filter from IFACE and remove its pinned maps.
///
/// The pin root is --bpffs, else the `bpffs` of --config, else
/// /sys/fs/bpf/edge-filter. An agent managing IFACE keeps running: it
/// reports an enforcement gap and does not attach the filter again until
/// it is restarted (detach names its pid).
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
    // An agent managing the interface keeps running: say what it does.
    if let Some(pid) = lock::holder(pins.root(), &a.iface) {
        println!(
            "agent pid {pid} still manages {iface}: it reports an enforcement gap (status, metrics, log) and does not attach the filter again; traffic on {iface} passes unfiltered until you restart that agent (or stop it: `kill {pid}`)",
            iface = a.iface
        );
    }
    Ok(())
}
