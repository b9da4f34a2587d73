//! The pin root and interfaces a subcommand works on: `--bpffs` and the
//! reading subcommands' resolution of it ([`Pins`]).

use std::path::{Path, PathBuf};

use clap::Args;
use edge_filter::intel::config::Config;
use edge_filter::kernel::paths::{DEFAULT_ROOT, Paths};

/// Options shared by every subcommand that touches pins.
#[derive(Debug, Args, Clone)]
pub struct PinArgs {
    /// Root directory of edge-filter's pins on bpffs (mounted when missing).
    /// With --config it overrides the config's `bpffs`, as it does for the
    /// reading subcommands. [default: /sys/fs/bpf/edge-filter]
    #[arg(long, env = "EDGE_FILTER_BPFFS", value_name = "DIR", global = true)]
    pub bpffs: Option<PathBuf>,
}

impl PinArgs {
    /// The pin root: `--bpffs` (or `EDGE_FILTER_BPFFS`), else [`DEFAULT_ROOT`].
    pub fn root(&self) -> PathBuf {
        self.bpffs
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }
}

/// `--config` and `--bpffs` of the subcommands that find pins the way
/// [`Pins::resolve`] does (`stats`, `detach`): a config with its own
/// `bpffs` is then enough to find its interfaces.
#[derive(Debug, Args, Clone)]
pub struct PinSource {
    /// The agent's configuration: the pin root is its `bpffs`.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Root of the pins (overrides the config's bpffs; default /sys/fs/bpf/edge-filter).
    #[arg(long, env = "EDGE_FILTER_BPFFS", value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
}

impl PinSource {
    /// [`Pins::resolve`] of these options.
    pub fn resolve(&self) -> anyhow::Result<Pins> {
        Pins::resolve(self.config.as_deref(), self.bpffs.as_deref())
    }
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
