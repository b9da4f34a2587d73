//! `edge-filter detach`.

use clap::Args;
use edge_filter::kernel::{attach, lock};

use super::pins::PinSource;

/// Detach the filter from IFACE (with --config and no --iface: from every
/// interface of the config) and remove its pinned maps.
///
/// The pin root is --bpffs, else the `bpffs` of --config, else
/// /sys/fs/bpf/edge-filter. An agent managing IFACE keeps running: it
/// reports an enforcement gap and does not attach the filter again until
/// it is restarted (detach names its pid).
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to remove the filter from [default with --config: every
    /// interface of the config].
    #[arg(long, short, required_unless_present = "config")]
    pub iface: Option<String>,
    #[command(flatten)]
    pub pins: PinSource,
}

pub fn run(a: DetachArgs) -> anyhow::Result<()> {
    let pins = a.pins.resolve()?;
    let ifaces = match (a.iface, &pins.config) {
        (Some(i), _) => vec![i],
        (None, Some(cfg)) => cfg.interfaces.iter().map(|i| i.name.clone()).collect(),
        (None, None) => anyhow::bail!("name the interface (--iface) or give --config"),
    };
    for iface in &ifaces {
        attach::detach(&pins.paths, iface)?;
        println!("detached edge-filter from {iface}");
        // An agent managing the interface keeps running: say what it does.
        if let Some(pid) = lock::holder(pins.root(), iface) {
            println!(
                "agent pid {pid} still manages {iface}: it reports an enforcement gap (status, metrics, log) and does not attach the filter again; traffic on {iface} passes unfiltered until you restart that agent (or stop it: `kill {pid}`)"
            );
        }
    }
    Ok(())
}
