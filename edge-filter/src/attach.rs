//! Attaching the program to an interface, adopting an existing attachment,
//! and detaching. All state lives in bpffs pins (see [`crate::paths`]).

use std::path::Path;

use aya::{
    maps::{Map, MapData},
    programs::{
        XdpMode,
        links::{FdLink, PinnedLink},
    },
};

use crate::entry::EntrySet;
use crate::error::{Error, Result, is_permission};
use crate::maps::{ALL_MAPS, EntryMaps, SyncStats};
use crate::paths::Paths;
use crate::program::{self, Capacities};

/// How to attach.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native (driver) mode; fails if the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Skb,
    /// Native, falling back to generic with a warning.
    #[default]
    Auto,
}

/// An attachment the agent manages.
pub struct Attachment {
    /// Its maps.
    pub maps: EntryMaps,
    /// True when an existing pinned attachment was adopted.
    pub adopted: bool,
    /// The mode used when this agent attached (None when adopted).
    pub mode: Option<&'static str>,
    /// What the initial sync did.
    pub initial_sync: SyncStats,
}

/// Interface index, or a clear error when it does not exist.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).map_err(|_| Error::NoInterface(iface.into()))?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::NoInterface(iface.into()));
    }
    Ok(idx)
}

/// Open the pinned maps of an interface's attachment.
pub fn open_pinned(paths: &Paths, iface: &str) -> Result<EntryMaps> {
    if !paths.link(iface).exists() && !paths.maps_dir(iface).exists() {
        return Err(Error::NotAttached {
            iface: iface.into(),
            path: paths.iface_dir(iface),
        });
    }
    EntryMaps::from_fn(|name| open_map(&paths.map(iface, name)))
}

fn open_map(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).map_err(|source| {
        let perm = crate::program::io_source(&source).is_some_and(is_permission);
        if perm {
            Error::Permission {
                op: format!("opening {}", path.display()),
            }
        } else {
            Error::Map {
                op: format!("opening pinned map {}", path.display()),
                source,
            }
        }
    })?;
    Map::from_map_data(data).map_err(|source| Error::Map {
        op: format!("opening pinned map {}", path.display()),
        source,
    })
}

/// Adopt the pinned attachment of `iface` if there is one; otherwise load
/// the program, pin its maps, fill them with `set`, and only then attach and
/// pin the link, so the first packet the program sees is already filtered.
pub fn attach_or_adopt(
    paths: &Paths,
    iface: &str,
    mode: Mode,
    caps: &Capacities,
    set: &EntrySet,
    flags: u32,
) -> Result<Attachment> {
    ifindex(iface)?;
    paths.ensure()?;
    if paths.link(iface).exists() {
        // Validate the link pin before trusting it.
        PinnedLink::from_pin(paths.link(iface)).map_err(|e| Error::Pin {
            op: format!("opening pinned link {}", paths.link(iface).display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut maps = open_pinned(paths, iface)?;
        let initial_sync = maps.apply(set, flags)?;
        return Ok(Attachment {
            maps,
            adopted: true,
            mode: None,
            initial_sync,
        });
    }
    // A half-made attachment (maps pinned, no link) from a crash: start over.
    remove_pins(paths, iface)?;
    let mut ebpf = program::load(caps)?;
    let dir = paths.maps_dir(iface);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Pin {
        op: format!("creating {}", dir.display()),
        source,
    })?;
    let result = (|| {
        EntryMaps::pin_all(&ebpf, &dir)?;
        let mut maps = open_pinned(paths, iface)?;
        maps.assume_fresh_stats();
        let initial_sync = maps.apply(set, flags)?;
        let used = attach_link(&mut ebpf, paths, iface, mode)?;
        Ok(Attachment {
            maps,
            adopted: false,
            mode: Some(used),
            initial_sync,
        })
    })();
    if result.is_err() {
        let _ = remove_pins(paths, iface);
    }
    result
}

fn attach_link(
    ebpf: &mut aya::Ebpf,
    paths: &Paths,
    iface: &str,
    mode: Mode,
) -> Result<&'static str> {
    let prog = program::xdp_mut(ebpf)?;
    let attempt = |prog: &mut aya::programs::Xdp, m: XdpMode| prog.attach(iface, m);
    let (id, used) = match mode {
        Mode::Native => (
            attempt(prog, XdpMode::Driver).map_err(|e| attach_err(iface, e))?,
            "native",
        ),
        Mode::Skb => (
            attempt(prog, XdpMode::Skb).map_err(|e| attach_err(iface, e))?,
            "skb",
        ),
        Mode::Auto => match attempt(prog, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(e) => {
                log::warn!(
                    "native XDP attach on {iface} failed ({e}); falling back to generic (skb) mode, which is slower"
                );
                (
                    attempt(prog, XdpMode::Skb).map_err(|e| attach_err(iface, e))?,
                    "skb",
                )
            }
        },
    };
    let link = prog.take_link(id).map_err(|source| Error::Program {
        op: "taking the XDP link".into(),
        source,
    })?;
    let fd_link: FdLink = link.try_into().map_err(|e| Error::Pin {
        op: "converting the XDP attachment to a bpf_link (kernel 5.9+ needed)".into(),
        source: std::io::Error::other(format!("{e}")),
    })?;
    fd_link.pin(paths.link(iface)).map_err(|e| Error::Pin {
        op: format!("pinning the link at {}", paths.link(iface).display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(used)
}

fn attach_err(iface: &str, e: aya::programs::ProgramError) -> Error {
    if let aya::programs::ProgramError::UnknownInterface { .. } = e {
        return Error::NoInterface(iface.into());
    }
    if crate::program::io_source(&e).is_some_and(is_permission) {
        return Error::Permission {
            op: format!("attaching XDP to {iface}"),
        };
    }
    Error::Program {
        op: format!("attaching XDP to {iface}"),
        source: e,
    }
}

/// Detach the filter from `iface` and remove its pins.
pub fn detach(paths: &Paths, iface: &str) -> Result<()> {
    let link = paths.link(iface);
    if !link.exists() && !paths.iface_dir(iface).exists() {
        return Err(Error::NotAttached {
            iface: iface.into(),
            path: paths.iface_dir(iface),
        });
    }
    if link.exists() {
        let pinned = PinnedLink::from_pin(&link).map_err(|e| Error::Pin {
            op: format!("opening pinned link {}", link.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        // Unpinning drops the last reference: the kernel detaches the program.
        let fd = pinned.unpin().map_err(|source| Error::Pin {
            op: format!("unpinning {}", link.display()),
            source,
        })?;
        drop(fd);
    }
    remove_pins(paths, iface)
}

/// Remove every pin of an interface (maps, link) and its directories.
fn remove_pins(paths: &Paths, iface: &str) -> Result<()> {
    for name in ALL_MAPS {
        let p = paths.map(iface, name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|source| Error::Pin {
                op: format!("removing {}", p.display()),
                source,
            })?;
        }
    }
    for p in [paths.link(iface)] {
        if p.exists() {
            std::fs::remove_file(&p).map_err(|source| Error::Pin {
                op: format!("removing {}", p.display()),
                source,
            })?;
        }
    }
    for d in [paths.maps_dir(iface), paths.iface_dir(iface)] {
        if d.exists() {
            std::fs::remove_dir(&d).map_err(|source| Error::Pin {
                op: format!("removing {}", d.display()),
                source,
            })?;
        }
    }
    Ok(())
}
