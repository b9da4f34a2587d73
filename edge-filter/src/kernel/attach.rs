//! Attaching the program to an interface, adopting an existing attachment,
//! and detaching. All state lives in bpffs pins (see [`crate::kernel::paths`]).

use std::path::Path;

use aya::{
    maps::{Map, MapData},
    programs::{
        XdpMode,
        links::{FdLink, PinnedLink},
    },
};

use edge_filter_common as abi;

use crate::entry::EntrySet;
use crate::error::{Error, Result};
use crate::kernel::maps::{EntryMaps, Home, SyncStats};
use crate::kernel::paths::Paths;
use crate::kernel::program::{self, Capacities};
use crate::kernel::v2maps::{V2_MAPS, V2Maps};
use crate::kernel::v2sync::{Tier, V2Sync};
use crate::trust::is_permission;

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
    /// The mode used when this agent attached (None when adopted as is).
    pub mode: Option<&'static str>,
    /// The pinned link was found not attached to the interface (it was
    /// deleted or recreated while no agent ran) and the program was
    /// attached again with the pinned maps: nothing was filtered before.
    pub reattached: bool,
    /// What the initial sync did.
    pub initial_sync: SyncStats,
    /// How the adopted attachment differs from the mode asked for (it is
    /// kept as it is), one item each; empty otherwise.
    pub differs: Vec<String>,
}

impl Attachment {
    /// What to tell the operator when the adopted attachment differs from
    /// what was asked ([`Attachment::differs`]), naming the command that
    /// makes a new one; `None` when it does not differ.
    pub fn differs_message(&self, paths: &Paths, iface: &str) -> Option<String> {
        if self.differs.is_empty() {
            return None;
        }
        Some(format!(
            "{iface}: adopted the pinned filter as it is, which differs from what was asked: {}. \
             The mode of an attachment cannot change in place: to apply it, stop this agent, \
             run `{}` and start it again (traffic on {iface} passes unfiltered in between)",
            self.differs.join("; "),
            paths.detach_command(iface)
        ))
    }
}

/// How the pinned attachment of `iface` differs from `mode`: the attach
/// mode the kernel reports against a `native` or `skb` asked for (`auto`
/// accepts either). (Map sizes follow the entry set: capacity tiers.)
fn adopted_differences(paths: &Paths, iface: &str, mode: Mode) -> Vec<String> {
    let mut out = Vec::new();
    let asked = match mode {
        Mode::Native => Some("native"),
        Mode::Skb => Some("skb"),
        Mode::Auto => None,
    };
    if let (
        Some(asked),
        Ok(LinkHealth::Attached {
            prog_id, ifindex, ..
        }),
    ) = (asked, link_health(paths, iface))
        && let Ok(x) = crate::kernel::netlink::xdp_info(ifindex)
        && let (Some(used), _) = x.mode_of(Some(prog_id))
        && used != asked
    {
        out.push(format!("it runs in {used} mode, {asked} was asked"));
    }
    out
}

/// Whether a pinned filter is in force on its interface, as the kernel says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkHealth {
    /// The pinned link holds the program on the interface of that name in
    /// this network namespace.
    Attached {
        /// The bpf_link's id.
        link_id: u32,
        /// The program's id.
        prog_id: u32,
        /// The interface's index.
        ifindex: u32,
    },
    /// No link is pinned for the interface.
    NotPinned,
    /// A link is pinned but filters nothing here: its interface was deleted
    /// (the kernel detached the program; `link_ifindex` 0) or the link is
    /// on another interface than the one with this name now (recreated, or
    /// in another network namespace).
    Defunct {
        /// The interface the link is attached to (0: none).
        link_ifindex: u32,
        /// The index of the interface with this name here, if there is one.
        iface_ifindex: Option<u32>,
    },
}

impl LinkHealth {
    /// The filter is in force.
    pub fn is_attached(&self) -> bool {
        matches!(self, LinkHealth::Attached { .. })
    }

    /// Why the filter is not in force, for an operator.
    pub fn describe(&self, iface: &str) -> String {
        match self {
            LinkHealth::Attached { .. } => format!("attached to {iface}"),
            LinkHealth::NotPinned => format!("no filter is pinned for {iface}"),
            LinkHealth::Defunct {
                iface_ifindex: None,
                ..
            } => format!("interface {iface} does not exist (deleted?): nothing is filtered"),
            LinkHealth::Defunct {
                link_ifindex: 0,
                iface_ifindex: Some(_),
            } => format!(
                "the pinned filter is detached from {iface} (the interface was deleted and created again): nothing is filtered"
            ),
            LinkHealth::Defunct {
                link_ifindex,
                iface_ifindex: Some(i),
            } => format!(
                "the pinned filter is attached to interface index {link_ifindex}, not to {iface} (index {i}): the interface was recreated or the link lives in another network namespace"
            ),
        }
    }
}

/// `struct bpf_link_info` up to the XDP member of its union.
#[repr(C)]
#[derive(Default)]
struct BpfLinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// `xdp.ifindex` for an XDP link (the union starts 8-byte aligned).
    ifindex: u32,
    _rest: [u32; 11],
}

/// `union bpf_attr`'s `info` member.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// Is the filter pinned for `iface` in force there? Asks the kernel about the
/// pinned link (`BPF_OBJ_GET_INFO_BY_FD`: which interface the XDP link is
/// on; 0 once its interface is gone) and compares with the interface of
/// that name in this network namespace.
pub fn link_health(paths: &Paths, iface: &str) -> Result<LinkHealth> {
    use std::os::fd::AsRawFd;
    let pin = paths.link(iface);
    if !pin.exists() {
        return Ok(LinkHealth::NotPinned);
    }
    let link = obj_get(&pin).map_err(|source| {
        if is_permission(&source) {
            Error::Permission {
                op: format!("opening pinned link {}", pin.display()),
            }
        } else {
            Error::Pin {
                op: format!("opening pinned link {}", pin.display()),
                source,
            }
        }
    })?;
    let mut info = BpfLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<BpfLinkInfo>() as u32,
        info: &mut info as *mut BpfLinkInfo as u64,
    };
    crate::kernel::sys::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| Error::Pin {
        op: format!("reading the link info of {}", pin.display()),
        source,
    })?;
    if info.type_ != BPF_LINK_TYPE_XDP {
        return Err(Error::Pin {
            op: format!("checking {}", pin.display()),
            source: std::io::Error::other(format!(
                "the pinned object is a bpf_link of type {}, not an XDP link",
                info.type_
            )),
        });
    }
    let here = ifindex(iface).ok();
    if info.ifindex != 0 && here == Some(info.ifindex) {
        return Ok(LinkHealth::Attached {
            link_id: info.id,
            prog_id: info.prog_id,
            ifindex: info.ifindex,
        });
    }
    Ok(LinkHealth::Defunct {
        link_ifindex: info.ifindex,
        iface_ifindex: here,
    })
}

/// Replace the program on the XDP link pinned at `link_pin` by the
/// (loaded) program `prog`: `BPF_LINK_UPDATE` (Linux 5.9+), one syscall,
/// every packet sees the old program or the new one. For a new capacity
/// tier of the v2 maps: a new program instance on new maps, swapped in
/// without a gap.
pub fn swap_program(link_pin: &Path, prog: &aya::programs::Xdp) -> Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    #[repr(C)]
    #[derive(Default)]
    struct UpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let link = obj_get(link_pin).map_err(|source| Error::Pin {
        op: format!("opening pinned link {}", link_pin.display()),
        source,
    })?;
    let fd = prog.fd().map_err(|source| Error::Program {
        op: "the new program's fd".into(),
        source,
    })?;
    let mut attr = UpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: fd.as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    crate::kernel::sys::bpf(BPF_LINK_UPDATE, &mut attr).map_err(|source| Error::Pin {
        op: format!(
            "replacing the program on the link {} (BPF_LINK_UPDATE, Linux 5.9+)",
            link_pin.display()
        ),
        source,
    })?;
    Ok(())
}

/// Where an attachment's pins live, for [`grow`].
pub struct TierPins<'a> {
    /// The directory of the pinned maps.
    pub maps_dir: &'a Path,
    /// The pinned XDP link.
    pub link: &'a Path,
    /// Maps the new instance reuses by pin (their contents stay): the
    /// per-reason counters, the last verdict, events, sampling.
    pub reuse: &'a [&'a str],
}

/// Bring a new capacity tier live on a pinned attachment, without a gap:
/// load `program` of `object` on new v2 maps of the tier's sizes (reusing
/// the maps `pins.reuse` names), write the tier's image into them (the
/// per-entry counters of kept ids carried over), pin them beside the old
/// ones, swap the program on the link ([`swap_program`]), then rename the
/// new pins over the old. `extra`: `max_entries` of the object's other maps.
///
/// A reader that opens the pins while they are renamed may see maps of
/// both tiers for that moment; the link never runs without a program.
pub fn grow(
    sync: &mut V2Sync,
    tier: Tier,
    set: &EntrySet,
    object: &[u8],
    program: &str,
    pins: &TierPins<'_>,
    extra: &[(&str, u32)],
) -> Result<()> {
    let sizes = tier.sizes()?;
    let reuse: Vec<(&str, std::path::PathBuf)> = pins
        .reuse
        .iter()
        .map(|n| (*n, pins.maps_dir.join(n)))
        .collect();
    let mut ebpf = program::load_v2_object(object, program, &sizes, &reuse, extra)?;
    let maps = V2Maps::take(&mut ebpf)?;
    // No dot in the name: bpffs refuses those.
    let staging = pins.maps_dir.join("v2-next");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|source| Error::Pin {
            op: format!("removing {}", staging.display()),
            source,
        })?;
    }
    std::fs::create_dir(&staging).map_err(|source| Error::Pin {
        op: format!("creating {}", staging.display()),
        source,
    })?;
    maps.pin(&staging)?;
    let _old = sync.replace(maps, tier, set)?;
    let prog: &aya::programs::Xdp = ebpf
        .program(program)
        .ok_or_else(|| Error::Load(aya::EbpfError::NoBTF))?
        .try_into()
        .map_err(|source| Error::Program {
            op: format!("finding the XDP program {program}"),
            source,
        })?;
    swap_program(pins.link, prog)?;
    for name in V2_MAPS {
        let (from, to) = (staging.join(name), pins.maps_dir.join(name));
        std::fs::rename(&from, &to).map_err(|source| Error::Pin {
            op: format!("replacing {} with {}", to.display(), from.display()),
            source,
        })?;
    }
    let _ = std::fs::remove_dir(&staging);
    // The link holds the new program, which holds its maps; the old
    // instance goes with `_old` and the old program.
    Ok(())
}

/// `BPF_OBJ_GET`: open the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    #[repr(C)]
    #[derive(Default)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = crate::kernel::sys::bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
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
    let home = Home::Pinned {
        maps_dir: paths.maps_dir(iface),
        link: paths.link(iface),
    };
    EntryMaps::from_fn(|name| open_map(&paths.map(iface, name)), home)
        .map_err(|e| incompatible_pins(paths, iface).unwrap_or(e))
}

/// The error for an attachment pinned by a build with another set of maps:
/// some of [`abi::ALL_MAPS`] are pinned for `iface` and others are not (a
/// build of datapath v1 pinned its hash maps and tries and the common maps,
/// none of the v2 maps). `None` when every
/// map is pinned, or none is (then the error of opening the first map says
/// more). Only looked at after opening a map failed, so the usual path
/// costs nothing.
pub(crate) fn incompatible_pins(paths: &Paths, iface: &str) -> Option<Error> {
    let missing: Vec<String> = abi::ALL_MAPS
        .iter()
        .filter(|name| !paths.map(iface, name).exists())
        .map(|name| name.to_string())
        .collect();
    if missing.is_empty() || missing.len() == abi::ALL_MAPS.len() {
        return None;
    }
    let detach = paths.detach_command(iface);
    Some(Error::IncompatiblePins {
        iface: iface.into(),
        dir: paths.iface_dir(iface),
        missing,
        detach,
    })
}

fn open_map(path: &Path) -> Result<Map> {
    let data = MapData::from_pin(path).map_err(|source| {
        let perm = crate::kernel::program::io_source(&source).is_some_and(is_permission);
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
    let root_existed = paths.root().exists();
    paths.ensure()?;
    // Pins another user could have replaced are neither adopted nor removed.
    paths.check_iface(iface)?;
    if let Some(w) = caps.ignored() {
        log::warn!("{iface}: {w}");
    }
    if paths.link(iface).exists() {
        // Adopt only a link that is in force: one left behind by an
        // interface that was deleted (and perhaps created again) filters
        // nothing, so the program is attached again with the same maps
        // (first, so that a new tier the sync may need swaps onto a link
        // that is attached).
        let health = link_health(paths, iface)?;
        let (used, reattached) = if health.is_attached() {
            (None, false)
        } else {
            log::warn!("{}: re-attaching", health.describe(iface));
            (Some(reattach(paths, iface, mode, caps)?), true)
        };
        let mut maps = open_pinned(paths, iface)?;
        let initial_sync = maps.apply(set, flags)?;
        return Ok(Attachment {
            maps,
            adopted: true,
            mode: used,
            reattached,
            initial_sync,
            differs: adopted_differences(paths, iface, mode),
        });
    }
    // A half-made attachment (maps pinned, no link) from a crash: start over.
    remove_pins(paths, iface)?;
    let fresh = crate::kernel::maps::Fresh::for_set(set)?;
    let mut ebpf = program::load(&fresh.sizes()?, &[])?;
    let dir = paths.maps_dir(iface);
    paths.create_iface_dirs(iface)?;
    let result = (|| {
        EntryMaps::pin_all(&ebpf, &dir)?;
        let home = Home::Pinned {
            maps_dir: dir.clone(),
            link: paths.link(iface),
        };
        let added = fresh.keys();
        let maps = EntryMaps::fresh(&mut ebpf, fresh, flags, home)?;
        let used = attach_link(&mut ebpf, iface, mode, &paths.link(iface))?;
        Ok(Attachment {
            maps,
            adopted: false,
            mode: Some(used),
            reattached: false,
            initial_sync: SyncStats {
                added,
                ..SyncStats::default()
            },
            differs: Vec::new(),
        })
    })();
    if result.is_err() {
        let _ = remove_pins(paths, iface);
        // Leave no trace: the pin root too, when this call made it (and
        // nothing else is in it).
        if !root_existed {
            let _ = std::fs::remove_dir(paths.root());
        }
    }
    result
}

/// Attach the program again to `iface` with the maps pinned for it (their
/// contents, counters and ids stay), and pin the new link over the old one.
/// For a pinned link that filters nothing because its interface was deleted
/// or recreated ([`LinkHealth::Defunct`]). Returns the mode used.
pub fn reattach(
    paths: &Paths,
    iface: &str,
    mode: Mode,
    _caps: &Capacities,
) -> Result<&'static str> {
    ifindex(iface)?;
    let pins: Vec<(&'static str, std::path::PathBuf)> = abi::ALL_MAPS
        .iter()
        .map(|name| (*name, paths.map(iface, name)))
        .collect();
    if let Some((name, p)) = pins.iter().find(|(_, p)| !p.exists()) {
        return Err(Error::Pin {
            op: format!(
                "re-attaching to {iface}: map {name} is not pinned at {}",
                p.display()
            ),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    // The pinned maps are reused whole; their sizes are the tier's.
    let sizes = open_pinned(paths, iface)?.sizes();
    let mut ebpf = program::load(&sizes, &pins)?;
    // Pin beside the old link, then rename over it: the link pin is never
    // missing, and the old (detached) link is released with its pin. (No
    // dot in the name: bpffs refuses those.)
    let fresh = paths.iface_dir(iface).join("link-new");
    if fresh.exists() {
        std::fs::remove_file(&fresh).map_err(|source| Error::Pin {
            op: format!("removing {}", fresh.display()),
            source,
        })?;
    }
    let used = attach_link(&mut ebpf, iface, mode, &fresh)?;
    std::fs::rename(&fresh, paths.link(iface)).map_err(|source| Error::Pin {
        op: format!(
            "replacing {} with {}",
            paths.link(iface).display(),
            fresh.display()
        ),
        source,
    })?;
    Ok(used)
}

/// Attach the XDP program of `ebpf` to `iface` and pin the link at `pin`.
fn attach_link(ebpf: &mut aya::Ebpf, iface: &str, mode: Mode, pin: &Path) -> Result<&'static str> {
    // Another XDP program on the interface makes every attach fail (and
    // Auto's fallback to skb mode fail the same way): say which one.
    if let Ok(idx) = ifindex(iface)
        && let Ok(x) = crate::kernel::netlink::xdp_info(idx)
    {
        let others = x.programs();
        if !others.is_empty() {
            return Err(Error::XdpBusy {
                iface: iface.to_string(),
                holders: crate::kernel::netlink::describe(&others),
            });
        }
    }
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
    fd_link.pin(pin).map_err(|e| Error::Pin {
        op: format!("pinning the link at {}", pin.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(used)
}

fn attach_err(iface: &str, e: aya::programs::ProgramError) -> Error {
    if let aya::programs::ProgramError::UnknownInterface { .. } = e {
        return Error::NoInterface(iface.into());
    }
    if crate::kernel::program::io_source(&e).is_some_and(is_permission) {
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
        // Ask the kernel first: a plain errno says whether privileges lack.
        obj_get(&link).map_err(|source| {
            if is_permission(&source) {
                Error::Permission {
                    op: format!("opening pinned link {}", link.display()),
                }
            } else {
                Error::Pin {
                    op: format!("opening pinned link {}", link.display()),
                    source,
                }
            }
        })?;
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
    // The v1 names too: pins an older build left.
    for name in abi::ALL_MAPS.iter().chain(abi::V1_MAPS.iter()) {
        let p = paths.map(iface, name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|source| Error::Pin {
                op: format!("removing {}", p.display()),
                source,
            })?;
        }
    }
    // A tier change cut short leaves its staging directory.
    let staging = paths.maps_dir(iface).join("v2-next");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|source| Error::Pin {
            op: format!("removing {}", staging.display()),
            source,
        })?;
    }
    for p in [paths.link(iface), paths.iface_dir(iface).join("link-new")] {
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

    /// Pins as a build of datapath v1 left them: a link and its eighteen
    /// maps (the common ones among them, no v2 map). Plain files in a
    /// temporary directory do: the check looks only at which pins exist,
    /// and opening a plain file as a map fails as a missing pin does.
    fn old_build_pins(tag: &str) -> (Paths, &'static str) {
        let root = std::env::temp_dir().join(format!("ef-old-pins-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = Paths::new(&root);
        let iface = "ef-old0";
        std::fs::create_dir_all(paths.maps_dir(iface)).unwrap();
        std::fs::write(paths.link(iface), "").unwrap();
        for name in abi::V1_MAPS {
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
        assert_eq!(missing, &abi::v2::V2_MAP_NAMES);
        let text = e.to_string();
        for want in [
            "pinned on ef-old0",
            "older (or different) edge-filter build",
            "lacks the maps V2_CONFIG, V2_SUM4",
            &format!(
                "`edge-filter detach --iface ef-old0 --bpffs {}`",
                paths.root().display()
            ),
            "re-run this command",
        ] {
            assert!(text.contains(want), "{want:?} not in: {text}");
        }
        // `edge-filter events` opens the ring buffer first: same message.
        let Err(e) = crate::kernel::events::open_ring(&paths, iface) else {
            panic!("a plain file opened as a ring buffer");
        };
        assert!(matches!(e, Error::IncompatiblePins { .. }), "{e:?}");
        // Starting over (or detaching) removes the old build's pins too.
        remove_pins(&paths, iface).expect("old pins removed");
        assert!(!paths.iface_dir(iface).exists());
        std::fs::remove_dir_all(paths.root()).unwrap();
    }

    #[test]
    fn one_missing_map_and_the_default_root() {
        let e = Error::IncompatiblePins {
            iface: "eth1".into(),
            dir: Path::new(crate::kernel::paths::DEFAULT_ROOT).join("eth1"),
            missing: vec!["SAMPLE_STATE".into()],
            detach: "edge-filter detach --iface eth1".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("lacks the map SAMPLE_STATE that")
                && text.contains("`edge-filter detach --iface eth1`"),
            "{text}"
        );
        let paths = Paths::new(crate::kernel::paths::DEFAULT_ROOT);
        assert!(incompatible_pins(&paths, "ef-no-such-iface0").is_none());
    }

    #[test]
    fn complete_or_absent_map_pins_keep_the_open_error() {
        let (paths, iface) = old_build_pins("full");
        for name in abi::ALL_MAPS {
            std::fs::write(paths.map(iface, name), "").unwrap();
        }
        assert!(incompatible_pins(&paths, iface).is_none());
        let e = open_pinned(&paths, iface)
            .err()
            .expect("plain files are no maps");
        assert!(!matches!(e, Error::IncompatiblePins { .. }), "{e:?}");
        for name in abi::ALL_MAPS.iter().chain(abi::V1_MAPS.iter()) {
            let _ = std::fs::remove_file(paths.map(iface, name));
        }
        assert!(incompatible_pins(&paths, iface).is_none());
        std::fs::remove_dir_all(paths.root()).unwrap();
    }
}
