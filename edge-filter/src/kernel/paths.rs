//! Every bpffs path the agent uses, in one place.
//!
//! Layout under the root (default `/sys/fs/bpf/edge-filter`):
//! ```text
//! <root>/<iface>/link          the XDP bpf_link (keeps the program attached)
//! <root>/<iface>/maps/<NAME>   every map of that attachment
//! ```
//! Nothing about an attachment lives only in the agent's memory: a new agent
//! (or `stats`, `detach`) finds everything from these pins. So another user
//! must not be able to write any of them: the root and the interface
//! directories are created owned by the agent, mode 0755, and checked with
//! [`crate::trust`] before pins are adopted, read or removed.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::trust::{self, Role, TrustError};

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

    /// The command that removes the filter from `iface` under this root,
    /// ready to paste: `edge-filter detach --iface IFACE`, with `--bpffs
    /// ROOT` unless the root is [`DEFAULT_ROOT`].
    pub fn detach_command(&self, iface: &str) -> String {
        let mut cmd = format!(
            "edge-filter detach --iface {}",
            crate::escape::shell_word(iface)
        );
        if self.root != Path::new(DEFAULT_ROOT) {
            cmd.push_str(" --bpffs ");
            cmd.push_str(&crate::escape::shell_word(&self.root.to_string_lossy()));
        }
        cmd
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
        // bpffs refuses names with a dot (EPERM, which would read as missing
        // privileges).
        if let Ok(below) = self.root.strip_prefix(mount)
            && below.iter().any(|c| c.to_string_lossy().contains('.'))
        {
            return Err(Error::Pin {
                op: format!("using {} as the pin root", self.root.display()),
                source: std::io::Error::other(
                    "bpffs does not allow a '.' in a file or directory name: choose a root without one",
                ),
            });
        }
        let existed = self.root.exists();
        // Created as ours (never through a link or directory another user
        // planted) and refused when another user can write it.
        trust::create_dir(&self.root, Role::PinRoot).map_err(|e| {
            if e.is_permission() {
                Error::Permission {
                    op: format!("creating {}", self.root.display()),
                }
            } else {
                Error::Untrusted(e)
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

impl Paths {
    /// Check that no other user can write the pins of `iface`: the root, the
    /// interface's directories and every entry in them (see
    /// [`crate::trust`]). What does not exist is not checked.
    pub fn check_iface(&self, iface: &str) -> Result<(), TrustError> {
        if std::fs::symlink_metadata(&self.root).is_err() {
            return Ok(());
        }
        trust::check_dir(&self.root, Role::PinRoot)?;
        for dir in [self.iface_dir(iface), self.maps_dir(iface)] {
            match trust::check_dir(&dir, Role::PinDir) {
                Err(e) if e.is_not_found() => continue,
                r => r?,
            };
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path == self.maps_dir(iface) {
                    continue;
                }
                trust::check_entry(&path, Role::Pin)?;
            }
        }
        Ok(())
    }

    /// Create the interface's pin directories (as [`Paths::ensure`] creates
    /// the root).
    pub fn create_iface_dirs(&self, iface: &str) -> Result<(), TrustError> {
        trust::create_dir(&self.maps_dir(iface), Role::PinDir).map(drop)
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
        if trust::is_permission(&source) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A pin root in the temporary directory (the checks look at owners
    /// and modes only, which work the same on any filesystem), removed on
    /// drop.
    struct Root(Paths);

    impl Root {
        fn new(tag: &str) -> Root {
            let p = std::env::temp_dir().join(format!("ef-paths-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Root(Paths::new(p))
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.root());
        }
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn pins_others_can_write_are_refused() {
        let r = Root::new("trust");
        let paths = &r.0;
        // Nothing there yet: nothing to refuse.
        paths.check_iface("eth9").unwrap();
        trust::create_dir(paths.root(), Role::PinRoot).unwrap();
        paths.create_iface_dirs("eth9").unwrap();
        for d in [
            paths.root(),
            &paths.iface_dir("eth9"),
            &paths.maps_dir("eth9"),
        ] {
            let m = std::fs::metadata(d).unwrap();
            assert!(m.is_dir() && m.mode() & 0o022 == 0, "{}", d.display());
        }
        std::fs::write(paths.link("eth9"), "").unwrap();
        std::fs::write(paths.map("eth9", "ADDR_V4"), "").unwrap();
        paths.check_iface("eth9").unwrap();

        // A world-writable root: another user could hide the pins.
        chmod(paths.root(), 0o1777);
        let e = paths.check_iface("eth9").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "bpffs pin root {}: it is writable by group and others (mode 1777)",
                paths.root().display()
            )),
            "{msg}"
        );
        assert!(msg.contains("hide or replace the filter's pins"), "{msg}");
        assert!(
            msg.contains(&format!("chmod 0755 {}", paths.root().display())),
            "{msg}"
        );
        chmod(paths.root(), 0o755);

        // A writable maps directory, a writable map pin, a link where a
        // pin should be.
        chmod(&paths.maps_dir("eth9"), 0o777);
        assert!(matches!(
            paths.check_iface("eth9"),
            Err(TrustError::Writable { .. })
        ));
        chmod(&paths.maps_dir("eth9"), 0o755);
        chmod(&paths.map("eth9", "ADDR_V4"), 0o666);
        let e = paths.check_iface("eth9").unwrap_err();
        assert!(e.to_string().starts_with("pin "), "{e}");
        chmod(&paths.map("eth9", "ADDR_V4"), 0o600);
        std::fs::remove_file(paths.link("eth9")).unwrap();
        std::os::unix::fs::symlink("/dev/null", paths.link("eth9")).unwrap();
        assert!(matches!(
            paths.check_iface("eth9"),
            Err(TrustError::Kind { .. })
        ));
        std::fs::remove_file(paths.link("eth9")).unwrap();
        paths.check_iface("eth9").unwrap();

        // Another user's interface directory.
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(paths.iface_dir("eth9"), Some(65534), Some(65534)).unwrap();
            let e = paths.check_iface("eth9").unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            // Refused by the library's entry points too.
            let e = crate::kernel::attach::detach(paths, "eth9").unwrap_err();
            assert!(matches!(e, Error::Untrusted(_)), "{e}");
            let e = crate::kernel::attach::open_pinned(paths, "eth9")
                .err()
                .unwrap();
            assert!(matches!(e, Error::Untrusted(_)), "{e}");
            assert!(
                paths.maps_dir("eth9").exists(),
                "detach removed untrusted pins"
            );
        }
    }
}
