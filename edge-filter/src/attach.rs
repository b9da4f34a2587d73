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
    paths.check_iface(iface)?;
    EntryMaps::from_fn(|name| open_map(&paths.map(iface, name)))
        .map_err(|e| incompatible_pins(paths, iface).unwrap_or(e))
}

/// The error for an attachment pinned by a build with another set of maps:
/// some of [`ALL_MAPS`] are pinned for `iface` and others are not (an older
/// build, before `ENTRY_STATS`, `STATS_OVERFLOW`, `EVENTS`, `SAMPLE` and
/// `SAMPLE_STATE` existed, pinned only the maps it had). `None` when every
/// map is pinned, or none is (then the error of opening the first map says
/// more). Only looked at after opening a map failed, so the usual path
/// costs nothing.
pub(crate) fn incompatible_pins(paths: &Paths, iface: &str) -> Option<Error> {
    let missing: Vec<String> = ALL_MAPS
        .iter()
        .filter(|name| !paths.map(iface, name).exists())
        .map(|name| name.to_string())
        .collect();
    if missing.is_empty() || missing.len() == ALL_MAPS.len() {
        return None;
    }
    let mut detach = format!("edge-filter detach --iface {iface}");
    if paths.root() != Path::new(crate::paths::DEFAULT_ROOT) {
        detach.push_str(&format!(" --bpffs {}", paths.root().display()));
    }
    Some(Error::IncompatiblePins {
        iface: iface.into(),
        dir: paths.iface_dir(iface),
        missing,
        detach,
    })
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
    // Pins another user could have replaced are neither adopted nor removed.
    paths.check_iface(iface)?;
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
    paths.create_iface_dirs(iface)?;
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
    paths.check_iface(iface)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins as a build from before the per-entry counters and events
    /// left them: a link and the thirteen maps it had. Plain files in a
    /// temporary directory do: the check looks only at which pins exist,
    /// and opening a plain file as a map fails as a missing pin does.
    fn old_build_pins(tag: &str) -> (Paths, &'static str) {
        let root = std::env::temp_dir().join(format!("ef-old-pins-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = Paths::new(&root);
        let iface = "ef-old0";
        std::fs::create_dir_all(paths.maps_dir(iface)).unwrap();
        std::fs::write(paths.link(iface), "").unwrap();
        for name in &ALL_MAPS[..13] {
            std::fs::write(paths.map(iface, name), "").unwrap();
        }
        (paths, iface)
    }

    #[test]
    fn pins_of_an_older_build_are_named_as_such() {
        let (paths, iface) = old_build_pins("maps");
        let Err(e) = open_pinned(&paths, iface) else {
            panic!("plain files opened as maps");
        };
        let Error::IncompatiblePins { missing, .. } = &e else {
            panic!("want IncompatiblePins, got {e:?}");
        };
        assert_eq!(
            missing,
            &[
                "ENTRY_STATS",
                "STATS_OVERFLOW",
                "EVENTS",
                "SAMPLE",
                "SAMPLE_STATE"
            ]
        );
        let text = e.to_string();
        for want in [
            "pinned on ef-old0",
            "older (or different) edge-filter build",
            "lacks the maps ENTRY_STATS, STATS_OVERFLOW, EVENTS, SAMPLE, SAMPLE_STATE",
            &format!(
                "`edge-filter detach --iface ef-old0 --bpffs {}`",
                paths.root().display()
            ),
            "re-run this command",
        ] {
            assert!(text.contains(want), "{want:?} not in: {text}");
        }
        // `edge-filter events` opens the ring buffer first: same message.
        let Err(e) = crate::events::open_ring(&paths, iface) else {
            panic!("a plain file opened as a ring buffer");
        };
        assert!(matches!(e, Error::IncompatiblePins { .. }), "{e:?}");
        std::fs::remove_dir_all(paths.root()).unwrap();
    }

    #[test]
    fn one_missing_map_and_the_default_root() {
        let e = Error::IncompatiblePins {
            iface: "eth1".into(),
            dir: Path::new(crate::paths::DEFAULT_ROOT).join("eth1"),
            missing: vec!["SAMPLE_STATE".into()],
            detach: "edge-filter detach --iface eth1".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("lacks the map SAMPLE_STATE that")
                && text.contains("`edge-filter detach --iface eth1`"),
            "{text}"
        );
        let paths = Paths::new(crate::paths::DEFAULT_ROOT);
        assert!(incompatible_pins(&paths, "ef-no-such-iface0").is_none());
    }

    #[test]
    fn complete_or_absent_map_pins_keep_the_open_error() {
        let (paths, iface) = old_build_pins("full");
        for name in &ALL_MAPS[13..] {
            std::fs::write(paths.map(iface, name), "").unwrap();
        }
        assert!(incompatible_pins(&paths, iface).is_none());
        let e = open_pinned(&paths, iface)
            .err()
            .expect("plain files are no maps");
        assert!(!matches!(e, Error::IncompatiblePins { .. }), "{e:?}");
        for name in ALL_MAPS {
            std::fs::remove_file(paths.map(iface, name)).unwrap();
        }
        assert!(incompatible_pins(&paths, iface).is_none());
        std::fs::remove_dir_all(paths.root()).unwrap();
    }
}
