//! Every bpffs path the agent uses, in one place.
//!
//! Layout under the root (default `/sys/fs/bpf/edge-filter`):
//! ```text
//! <root>/<iface>/link          the XDP bpf_link (keeps the program attached)
//! <root>/<iface>/maps/<NAME>   every map of that attachment
//! ```
//! Nothing about an attachment lives only in the agent's memory: a new agent
//! (or `stats`, `detach`) finds everything from these pins.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where bpffs is normally mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Default root of edge-filter's pins.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/edge-filter";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Pin paths below one root.
#[derive(Clone, Debug)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// Paths under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of one interface's attachment.
    pub fn iface_dir(&self, iface: &str) -> PathBuf {
        self.root.join(iface)
    }

    /// The pinned XDP link of an interface.
    pub fn link(&self, iface: &str) -> PathBuf {
        self.iface_dir(iface).join("link")
    }

    /// Directory of the pinned maps of an interface.
    pub fn maps_dir(&self, iface: &str) -> PathBuf {
        self.iface_dir(iface).join("maps")
    }

    /// One pinned map.
    pub fn map(&self, iface: &str, name: &str) -> PathBuf {
        self.maps_dir(iface).join(name)
    }

    /// Interfaces that have a pinned link, sorted.
    pub fn attached(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("link").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        out.sort();
        out
    }

    /// Make sure the filesystem holding the root is bpffs: mount one at
    /// `/sys/fs/bpf` when the root lies below it and nothing is mounted
    /// there, then create the root directory.
    pub fn ensure(&self) -> Result<()> {
        let mount = Path::new(BPFFS_MOUNT);
        if self.root.starts_with(mount) && !is_bpffs(mount) {
            std::fs::create_dir_all(mount).map_err(|source| Error::BpffsMount {
                path: mount.into(),
                source,
            })?;
            mount_bpffs(mount)?;
        }
        let existed = self.root.exists();
        std::fs::create_dir_all(&self.root).map_err(|source| {
            if crate::error::is_permission(&source) {
                Error::Permission {
                    op: format!("creating {}", self.root.display()),
                }
            } else {
                Error::Pin {
                    op: format!("creating {}", self.root.display()),
                    source,
                }
            }
        })?;
        let parent = self.root.parent().unwrap_or(&self.root);
        if !is_bpffs(&self.root) && !is_bpffs(parent) {
            if !existed {
                let _ = std::fs::remove_dir(&self.root);
            }
            return Err(Error::BpffsMount {
                path: self.root.clone(),
                source: std::io::Error::other("not on a bpf filesystem"),
            });
        }
        Ok(())
    }
}

/// Whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).expect("no NUL");
    let src = c"bpf";
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let source = std::io::Error::last_os_error();
        if crate::error::is_permission(&source) {
            return Err(Error::Permission {
                op: format!("mounting bpffs at {}", at.display()),
            });
        }
        return Err(Error::BpffsMount {
            path: at.into(),
            source,
        });
    }
    log::info!("mounted bpffs at {}", at.display());
    Ok(())
}
