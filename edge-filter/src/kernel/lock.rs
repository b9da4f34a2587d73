//! One agent per interface.
//!
//! Two agents managing the same pins fight: each applies its own set, and a
//! blocklist agent started by mistake beside a feed agent wipes the feed
//! agent's million entries at its first sync. So an agent holds an exclusive
//! `flock(2)` on a lock file for the pins it manages (pin root + interface)
//! for its whole life; a second agent fails to take it and refuses, naming
//! the holder's pid. The kernel drops the lock when the holder exits, however
//! it exits (SIGKILL included), so a stale file never blocks a restart.
//!
//! The lock files live in `/run/edge-filter/locks` (tmpfs, root's; the
//! systemd unit's `RuntimeDirectory=`), not under bpffs: bpffs holds no
//! regular files, and the lock must outlive `detach` removing the pins. The
//! holder's pid is read from the kernel (`/proc/locks`), so `status` finds a
//! running agent even when its state directory cannot be written.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where lock files live unless [`RUN_DIR_ENV`] says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/edge-filter";
/// Environment variable naming another runtime directory.
pub const RUN_DIR_ENV: &str = "EDGE_FILTER_RUN_DIR";

/// The runtime directory: `$EDGE_FILTER_RUN_DIR` or [`DEFAULT_RUN_DIR`].
pub fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
}

/// The lock file of the attachment of `iface` under the pin root `root`,
/// in `run_dir`. Both are percent-encoded (`%`, `/`, `@`) into one file
/// name, so that every (root, interface) pair has its own file and the name
/// stays readable.
fn lock_path_in(run_dir: &Path, root: &Path, iface: &str) -> PathBuf {
    fn enc(s: &str) -> String {
        s.replace('%', "%25")
            .replace('/', "%2F")
            .replace('@', "%40")
    }
    run_dir.join("locks").join(format!(
        "{}@{}.lock",
        enc(&root.to_string_lossy()),
        enc(iface)
    ))
}

/// An agent's claim on one interface's pins; released when dropped (or when
/// the process dies).
#[derive(Debug)]
pub struct AgentLock {
    file: File,
    path: PathBuf,
    iface: String,
}

impl AgentLock {
    /// Take the lock for `iface`'s pins under `root`, or fail with
    /// [`Error::AlreadyManaged`] naming the agent that holds it.
    pub fn acquire(root: &Path, iface: &str) -> Result<AgentLock> {
        Self::acquire_in(&run_dir(), root, iface)
    }

    fn acquire_in(run_dir: &Path, root: &Path, iface: &str) -> Result<AgentLock> {
        let path = lock_path_in(run_dir, root, iface);
        let err = |op: &str, source: std::io::Error| {
            if crate::trust::is_permission(&source) {
                Error::Permission {
                    op: format!("{op} {}", path.display()),
                }
            } else {
                Error::Lock {
                    op: format!("{op} {}", path.display()),
                    source,
                }
            }
        };
        // Created as ours, and refused when another user could write it
        // (and so take or fake the locks).
        let dir = path.parent().expect("lock path has a directory");
        crate::trust::create_dir(dir, crate::trust::Role::RunDir).map_err(|e| {
            if e.is_permission() {
                Error::Permission {
                    op: format!("creating {}", dir.display()),
                }
            } else {
                Error::Untrusted(e)
            }
        })?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // A planted symlink must not make root write elsewhere.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| err("opening", e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = holder_of(&file).or_else(|| pid_in(&mut file));
                return Err(Error::AlreadyManaged {
                    iface: iface.to_string(),
                    pid,
                    lock: path,
                });
            }
            return Err(err("locking", e));
        }
        // Ours now: say who we are (for people; tools ask the kernel).
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| err("writing", e))?;
        Ok(AgentLock {
            file,
            path,
            iface: iface.to_string(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interface it guards.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The locked file (still open).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The pid of the agent managing `iface`'s pins under `root`, from the
/// kernel's lock table; `None` when no agent holds the lock.
pub fn holder(root: &Path, iface: &str) -> Option<u32> {
    holder_in_dir(&run_dir(), root, iface)
}

fn holder_in_dir(run_dir: &Path, root: &Path, iface: &str) -> Option<u32> {
    let file = File::open(lock_path_in(run_dir, root, iface)).ok()?;
    holder_of(&file)
}

/// The pid holding a `flock` on `file`, from `/proc/locks`.
fn holder_of(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// The pid in `/proc/locks` text holding a FLOCK on the inode `ino` of the
/// device `dev` (`st_dev`).
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    // "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; blocked waiters
    // are listed as "1: -> FLOCK ..." and are not holders.
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = f.get(4)?.parse().ok()?;
        let mut id = f.get(5)?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino).then_some(pid)
    })
}

/// The pid written in the lock file (a fallback when `/proc/locks` is not
/// readable).
fn pid_in(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_readable() {
        let a = lock_path_in(
            Path::new("/run/x"),
            Path::new("/sys/fs/bpf/edge-filter"),
            "eth1",
        );
        assert!(
            a.ends_with("locks/%2Fsys%2Ffs%2Fbpf%2Fedge-filter@eth1.lock"),
            "{}",
            a.display()
        );
        // '/' and '%' cannot make two pairs collide.
        let p = |root: &str, iface: &str| lock_path_in(Path::new("/run/x"), Path::new(root), iface);
        assert_ne!(p("/a%2Fb", "x"), p("/a/b", "x"));
        assert_ne!(p("/a", "b@c"), p("/a@b", "c"));
    }

    #[test]
    fn proc_locks_lines() {
        let text = "\
1: POSIX  ADVISORY  WRITE 77 00:1a:99 0 EOF
2: FLOCK  ADVISORY  WRITE 4321 00:1a:5678 0 EOF
2: -> FLOCK  ADVISORY  WRITE 999 00:1a:5678 0 EOF
3: FLOCK  ADVISORY  WRITE 55 fd:01:5678 0 EOF
";
        let dev = libc::makedev(0, 0x1a);
        assert_eq!(holder_in(text, dev, 5678), Some(4321));
        assert_eq!(holder_in(text, dev, 99), None, "POSIX locks are not ours");
        assert_eq!(holder_in(text, libc::makedev(0xfd, 1), 5678), Some(55));
        assert_eq!(holder_in(text, dev, 1), None);
    }

    /// A second lock on the same pins is refused with the holder's pid (this
    /// process: flock locks are per open file, so one process can conflict
    /// with itself), and is free again once the first is dropped.
    #[test]
    fn second_agent_is_refused_until_the_first_goes() {
        let dir = std::env::temp_dir().join(format!("ef-lock-test-{}", std::process::id()));
        let root = Path::new("/sys/fs/bpf/ef-lock-test");
        let lock = |root: &Path, iface: &str| AgentLock::acquire_in(&dir, root, iface);
        let first = lock(root, "ef0").unwrap();
        assert_eq!(holder_in_dir(&dir, root, "ef0"), Some(std::process::id()));
        let e = lock(root, "ef0").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("already managed by") && text.contains(&std::process::id().to_string()),
            "{text}"
        );
        // Another interface or another pin root is another lock.
        let other = lock(root, "ef1").unwrap();
        let other_root = lock(Path::new("/elsewhere"), "ef0").unwrap();
        drop(first);
        assert_eq!(holder_in_dir(&dir, root, "ef0"), None);
        let again = lock(root, "ef0").unwrap();
        drop((again, other, other_root));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
