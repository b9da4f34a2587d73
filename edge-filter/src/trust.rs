//! Whether a path the agent reads or writes as a privileged process can be
//! changed by another user.
//!
//! The agent runs as root. What it reads from its state directory (the
//! last-known-good copy of a feed, the shrink guard's state) it enforces,
//! and what it finds under its bpffs pin root it adopts or detaches. If
//! another user can write any of those, that user decides what root
//! enforces (a planted last-known-good file), or can hide the pins so a
//! restarted agent cannot adopt the filter and `detach` cannot find it.
//! So before using such a path the agent checks it, and refuses with what
//! to fix.
//!
//! # Who is trusted
//!
//! Root (uid 0) and the effective uid of this process (the same as root
//! when run as root; a non-root operator running a read-only command trusts
//! their own files). Nobody else, and no group: group ownership is ignored
//! and group write permission counts as writable by others.
//!
//! # The rules
//!
//! For a path P, every component from `/` down to P is looked at with
//! `lstat` (a relative P is taken from the working directory):
//!
//! - every directory on the way must be owned by a trusted user and must
//!   not be writable by group or others, unless it has the sticky bit (like
//!   `/tmp`): there another user can add names but cannot rename or remove
//!   ours, and the next component is checked to be ours anyway;
//! - a symbolic link on the way must be owned by a trusted user (in a
//!   sticky directory its owner could replace it); its target is followed
//!   and checked by the same rules, component by component, so a link
//!   cannot lead out of them;
//! - P itself (a directory the agent keeps files or pins in, or a file it
//!   reads) must be owned by a trusted user and must not be writable by
//!   group or others at all, sticky or not: in a sticky directory others
//!   can still create new names, such as a last-known-good file for a feed
//!   that has none yet.
//!
//! Files in a directory that passed are opened with `O_NOFOLLOW` and checked
//! on the open descriptor ([`open_file`]), so what is checked is what is
//! read. Directories the agent creates are made one component at a time
//! ([`create_dir`]) with the mode of their role, and each is checked after
//! `mkdir`: a name another user planted first (a symlink, or their own
//! directory) is refused, never followed.
//!
//! # Feed files are data
//!
//! A `file:` feed (or `run --blocklist`) is input like an HTTP download:
//! parsed with the same limits, breadth checks and shrink guard. Whoever can
//! write it decides what the feed lists, which can be a deliberate
//! delegation (a download job running as its own user). So for them
//! [`check_file`] with [`Role::FeedFile`] gives a warning to log, not a
//! refusal; see README.md ("Files and directories the agent trusts").

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Most symbolic links followed while resolving one path (as the kernel's
/// limit): more is a loop.
const MAX_LINKS: usize = 40;

/// What a checked path is to the agent: names it in messages, and decides
/// the mode it is created with and the fix suggested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The state directory or one of its subdirectories (`lkg/`, `force/`).
    StateDir,
    /// A file in the state directory (last-known-good copy, guard state).
    StateFile,
    /// The root of the bpffs pins (`--bpffs`, `bpffs =`).
    PinRoot,
    /// An interface's pin directory or its `maps/` directory.
    PinDir,
    /// A pinned link or map.
    Pin,
    /// The agent's configuration file.
    Config,
    /// A `file:` feed or a `--blocklist`/`--allowlist` file (data: warned
    /// about, not refused).
    FeedFile,
    /// The runtime directory of the agents' locks (`/run/edge-filter`).
    RunDir,
}

impl Role {
    /// How messages name it.
    pub fn label(self) -> &'static str {
        match self {
            Role::StateDir => "state directory",
            Role::StateFile => "state file",
            Role::PinRoot => "bpffs pin root",
            Role::PinDir => "pin directory",
            Role::Pin => "pin",
            Role::Config => "configuration file",
            Role::FeedFile => "feed file",
            Role::RunDir => "runtime directory",
        }
    }

    fn is_dir(self) -> bool {
        matches!(
            self,
            Role::StateDir | Role::PinRoot | Role::PinDir | Role::RunDir
        )
    }

    /// The mode the agent creates it with (and a fix restores).
    pub fn mode(self) -> u32 {
        match self {
            Role::StateDir => 0o700,
            Role::PinRoot | Role::PinDir | Role::RunDir => 0o755,
            Role::StateFile | Role::Pin => 0o600,
            Role::Config | Role::FeedFile => 0o644,
        }
    }

    /// What another user who can write it could do.
    fn threat(self) -> &'static str {
        match self {
            Role::StateDir => "plant or replace the files the agent enforces at start",
            Role::StateFile => "write what the agent reads as its own state",
            Role::PinRoot | Role::PinDir => "hide or replace the filter's pins",
            Role::Pin => "change or remove what the filter enforces",
            Role::Config => "change what the agent enforces and which files it reads as root",
            Role::FeedFile => "decide what this feed lists",
            Role::RunDir => "take or fake the locks that keep a second agent off an interface",
        }
    }

    /// The setting to move when a parent directory is the problem.
    fn setting(self) -> &'static str {
        match self {
            Role::StateDir | Role::StateFile => "state_dir",
            Role::PinRoot | Role::PinDir | Role::Pin => "bpffs root",
            Role::Config => "configuration file",
            Role::FeedFile => "feed file",
            Role::RunDir => "EDGE_FILTER_RUN_DIR",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Role::StateDir | Role::StateFile => " (such as /var/lib/edge-filter)",
            Role::PinRoot | Role::PinDir | Role::Pin => " (such as /sys/fs/bpf/edge-filter)",
            Role::Config | Role::FeedFile => " (such as /etc/edge-filter)",
            Role::RunDir => " (such as /run/edge-filter)",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a path is not trusted. Every variant names the path checked
/// (`path`), the component at fault (`at`: the path itself, a directory on
/// its way, or a symbolic link), what was found, and the command that
/// fixes it.
#[derive(Debug, Error)]
pub enum TrustError {
    /// `at` is owned by a user who is not trusted (see the module docs).
    #[error(
        "{role} {}: {} is owned by {}, not {}, so that user could {}; fix: {fix}",
        .path.display(),
        subject(.path, .at, *.itself),
        user(*.uid),
        trusted_users(),
        threat(*.role, *.itself)
    )]
    Owner {
        /// What `path` is to the agent.
        role: Role,
        /// The path checked.
        path: PathBuf,
        /// The component at fault.
        at: PathBuf,
        /// Whether `at` is what `path` names (itself, or the target of its
        /// links) rather than a directory or link on its way.
        itself: bool,
        /// Its owner.
        uid: u32,
        /// The command(s) that fix it.
        fix: String,
    },
    /// `at` is writable by group or others (and, for a directory on the
    /// way, not sticky).
    #[error(
        "{role} {}: {} is writable by {} (mode {:04o}{}), so another user could {}; fix: {fix}",
        .path.display(),
        subject(.path, .at, *.itself),
        writers(*.mode),
        .mode & 0o7777,
        if *.itself { "" } else { ", not sticky" },
        threat(*.role, *.itself)
    )]
    Writable {
        /// What `path` is to the agent.
        role: Role,
        /// The path checked.
        path: PathBuf,
        /// The component at fault.
        at: PathBuf,
        /// Whether `at` is what `path` names (itself, or the target of its
        /// links) rather than a directory on its way.
        itself: bool,
        /// Its mode (permission bits).
        mode: u32,
        /// The command(s) that fix it.
        fix: String,
    },
    /// `at` is not what it must be: a file where a directory belongs, a
    /// symbolic link where none is followed, a device.
    #[error("{role} {}: {} is {found}, not {expected}; fix: {fix}", .path.display(), subject(.path, .at, .path == .at))]
    Kind {
        /// What `path` is to the agent.
        role: Role,
        /// The path checked.
        path: PathBuf,
        /// The component at fault.
        at: PathBuf,
        /// What it is.
        found: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What to do.
        fix: String,
    },
    /// More than 40 symbolic links on the way: a loop.
    #[error("{role} {}: more than {MAX_LINKS} symbolic links on its way (a loop?)", .path.display())]
    Loop {
        /// What `path` is to the agent.
        role: Role,
        /// The path checked.
        path: PathBuf,
    },
    /// Looking at, opening or creating `at` failed.
    #[error("{role} {}: {op} {}: {source}", .path.display(), .at.display())]
    Io {
        /// What `path` is to the agent.
        role: Role,
        /// The path checked.
        path: PathBuf,
        /// The component it failed on.
        at: PathBuf,
        /// What was done.
        op: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

impl TrustError {
    /// Whether the path (or a directory on its way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TrustError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// Whether looking at or creating the path was not permitted.
    pub fn is_permission(&self) -> bool {
        matches!(self, TrustError::Io { source, .. } if is_permission(source))
    }
}

/// Whether an io error means "not permitted" (`EPERM`, `EACCES`): this
/// process may not look at or change a path, or make a syscall.
pub fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

fn subject(path: &Path, at: &Path, itself: bool) -> String {
    if path == at {
        "it".to_string()
    } else if itself {
        format!("its target {}", at.display())
    } else if path.starts_with(at) {
        format!("its parent directory {}", at.display())
    } else {
        format!("{} (on its way)", at.display())
    }
}

fn threat(role: Role, itself: bool) -> &'static str {
    if itself {
        role.threat()
    } else {
        "replace what lies below it"
    }
}

fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether files owned by `uid` are trusted: root's, and this process's
/// effective uid's.
pub fn is_trusted(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

fn trusted_users() -> String {
    match euid() {
        0 => "root".to_string(),
        me => format!("root or {} (who runs edge-filter)", user(me)),
    }
}

/// `uid N (name)`, or `uid N` when it has no name.
fn user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: passwd is plain old data (integers and pointers); all zero is
    // a valid value that getpwuid_r overwrites.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the given sizes; getpwuid_r writes
    // only into pwd and buf and sets out to &pwd or null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `root:root`, or this process's uid when not root (who `chown` can make
/// the owner).
fn owner_arg() -> String {
    match euid() {
        0 => "root:root".to_string(),
        me => me.to_string(),
    }
}

/// Shell-quote a path for a fix command (only when needed).
fn sh(p: &Path) -> String {
    let s = p.display().to_string();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a file type is, for messages.
fn kind_of(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "neither a file nor a directory"
    }
}

/// Check what may be on the way to a path: owner trusted, not writable by
/// others unless sticky.
fn check_on_way(role: Role, path: &Path, at: &Path, m: &Metadata) -> Result<(), TrustError> {
    if !is_trusted(m.uid()) {
        return Err(TrustError::Owner {
            role,
            path: path.into(),
            at: at.into(),
            itself: false,
            uid: m.uid(),
            fix: format!(
                "choose a {} below directories only root can write{}, or `chown {} {} && chmod go-w {}`",
                role.setting(),
                role.example(),
                owner_arg(),
                sh(at),
                sh(at)
            ),
        });
    }
    let mode = m.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(TrustError::Writable {
            role,
            path: path.into(),
            at: at.into(),
            itself: false,
            mode,
            fix: format!(
                "`chmod go-w {}` (or, for a shared directory like /tmp, `chmod +t {}`)",
                sh(at),
                sh(at)
            ),
        });
    }
    Ok(())
}

/// Check the path itself: owner trusted, not writable by group or others.
fn check_final(
    role: Role,
    path: &Path,
    at: &Path,
    m: &Metadata,
    itself: bool,
) -> Result<(), TrustError> {
    let is_dir = m.is_dir();
    if !is_trusted(m.uid()) {
        let fix = if is_dir {
            format!(
                "check what it holds (another user could have put files there), then `chown -R {o} {p} && chmod {mode:04o} {p} && chmod -R go-w {p}`",
                o = owner_arg(),
                p = sh(at),
                mode = role.mode()
            )
        } else {
            format!(
                "check it (or delete it), then `chown {o} {p} && chmod {mode:04o} {p}`",
                o = owner_arg(),
                p = sh(at),
                mode = role.mode()
            )
        };
        return Err(TrustError::Owner {
            role,
            path: path.into(),
            at: at.into(),
            itself,
            uid: m.uid(),
            fix,
        });
    }
    let mode = m.mode();
    if mode & 0o022 != 0 {
        let fix = if is_dir {
            format!(
                "check what it holds (another user could have put files there), then `chmod {:04o} {p} && chmod -R go-w {p}`",
                role.mode(),
                p = sh(at)
            )
        } else {
            format!("check it, then `chmod go-w {}`", sh(at))
        };
        return Err(TrustError::Writable {
            role,
            path: path.into(),
            at: at.into(),
            itself,
            mode,
            fix,
        });
    }
    Ok(())
}

/// What [`walk`] found.
enum Walked {
    /// The path exists: its resolved location and `lstat` (of the target,
    /// when the last component was a link).
    Found(PathBuf, Metadata),
    /// It does not exist: the deepest existing directory (resolved) and the
    /// names below it still to create.
    Missing(PathBuf, Vec<OsString>),
}

/// Resolve `path` component by component from `/`, checking every
/// directory and link on the way with [`check_on_way`] (the last component
/// is left to the caller).
fn walk(role: Role, path: &Path) -> Result<Walked, TrustError> {
    let io_err = |at: &Path, op: &'static str| {
        let at = at.to_path_buf();
        move |source| TrustError::Io {
            role,
            path: path.into(),
            at,
            op,
            source,
        }
    };
    let abs = std::path::absolute(path).map_err(io_err(path, "resolving"))?;
    // Components still to visit, the next one last.
    let mut todo: Vec<OsString> = abs
        .components()
        .rev()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let root = PathBuf::from("/");
    let mut cur = root.clone();
    let mut links = 0;
    let meta = fs::symlink_metadata(&root).map_err(io_err(&root, "looking at"))?;
    check_on_way(role, path, &root, &meta)?;
    let mut last_meta = meta;
    while let Some(name) = todo.pop() {
        match Path::new(&name).components().next() {
            Some(Component::RootDir) => {
                cur = root.clone();
                last_meta = fs::symlink_metadata(&root).map_err(io_err(&root, "looking at"))?;
                continue;
            }
            Some(Component::ParentDir) => {
                // `cur` has no links in it, so its parent is the real one.
                cur.pop();
                last_meta = fs::symlink_metadata(&cur).map_err(io_err(&cur, "looking at"))?;
                continue;
            }
            Some(Component::CurDir) | None => continue,
            Some(_) => {}
        }
        let next = cur.join(&name);
        let m = match fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut rest = vec![name];
                rest.extend(todo.into_iter().rev());
                return Ok(Walked::Missing(cur, rest));
            }
            Err(e) => return Err(io_err(&next, "looking at")(e)),
        };
        if m.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(TrustError::Loop {
                    role,
                    path: path.into(),
                });
            }
            if !is_trusted(m.uid()) {
                return Err(TrustError::Owner {
                    role,
                    path: path.into(),
                    at: next.clone(),
                    itself: false,
                    uid: m.uid(),
                    fix: format!(
                        "replace the symbolic link {} by one root owns (`ln -sfn TARGET {}` as root), or use the real path",
                        sh(&next),
                        sh(&next)
                    ),
                });
            }
            let target = fs::read_link(&next).map_err(io_err(&next, "reading the link"))?;
            todo.extend(
                target
                    .components()
                    .rev()
                    .map(|c| c.as_os_str().to_os_string()),
            );
            continue;
        }
        if !todo.is_empty() {
            if !m.is_dir() {
                return Err(TrustError::Kind {
                    role,
                    path: path.into(),
                    at: next,
                    found: kind_of(&m),
                    expected: "a directory",
                    fix: "correct the path".into(),
                });
            }
            check_on_way(role, path, &next, &m)?;
        }
        cur = next;
        last_meta = m;
    }
    Ok(Walked::Found(cur, last_meta))
}

/// Check that the directory `path` exists, is trusted on its whole way and
/// is owned by a trusted user and writable by nobody else. Returns it
/// resolved (no links).
pub fn check_dir(path: &Path, role: Role) -> Result<PathBuf, TrustError> {
    match walk(role, path)? {
        Walked::Found(at, m) => {
            if !m.is_dir() {
                return Err(TrustError::Kind {
                    role,
                    path: path.into(),
                    at,
                    found: kind_of(&m),
                    expected: "a directory",
                    fix: "remove it or choose another path".into(),
                });
            }
            check_final(role, path, &at, &m, true)?;
            Ok(at)
        }
        Walked::Missing(parent, rest) => Err(TrustError::Io {
            role,
            path: path.into(),
            at: parent.join(&rest[0]),
            op: "looking at",
            source: io::ErrorKind::NotFound.into(),
        }),
    }
}

/// [`check_dir`] when `path` exists; otherwise check what exists of its
/// way, as [`create_dir`] would before creating the rest. For reports that
/// must not create anything (`check-config`).
pub fn check_creatable(path: &Path, role: Role) -> Result<(), TrustError> {
    match walk(role, path)? {
        Walked::Found(..) => check_dir(path, role).map(drop),
        Walked::Missing(..) => Ok(()),
    }
}

/// Create the directory `path` and the missing directories above it, each
/// with [`Role::mode`] (less the umask), one `mkdir` at a time, and check
/// the result as [`check_dir`] does. An existing untrusted directory, or a
/// name another user planted while we create (a symbolic link, their own
/// directory), is refused, never followed.
pub fn create_dir(path: &Path, role: Role) -> Result<PathBuf, TrustError> {
    if let Walked::Missing(mut cur, rest) = walk(role, path)? {
        let last = rest.len() - 1;
        for (i, name) in rest.into_iter().enumerate() {
            if matches!(
                Path::new(&name).components().next(),
                Some(Component::ParentDir | Component::CurDir)
            ) {
                // `missing/..`: nothing sensible to create.
                return Err(TrustError::Io {
                    role,
                    path: path.into(),
                    at: cur,
                    op: "creating",
                    source: io::ErrorKind::NotFound.into(),
                });
            }
            cur.push(&name);
            match fs::DirBuilder::new().mode(role.mode()).create(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(TrustError::Io {
                        role,
                        path: path.into(),
                        at: cur,
                        op: "creating",
                        source,
                    });
                }
            }
            let m = fs::symlink_metadata(&cur).map_err(|source| TrustError::Io {
                role,
                path: path.into(),
                at: cur.clone(),
                op: "looking at",
                source,
            })?;
            if !m.is_dir() {
                return Err(TrustError::Kind {
                    role,
                    path: path.into(),
                    at: cur,
                    found: kind_of(&m),
                    expected: "a directory",
                    fix: "remove what is there (someone else created it first) and retry".into(),
                });
            }
            check_final(role, path, &cur, &m, i == last)?;
        }
    }
    check_dir(path, role)
}

/// Open the file `path` for reading when it is trusted: a regular file (a
/// symbolic link is refused, not followed), owned by a trusted user and
/// writable by nobody else, checked on the open descriptor. `None` when it
/// does not exist. Only the file is checked: its directory must have been
/// checked with [`check_dir`] (as the state directory is when it is opened).
pub fn open_file(path: &Path, role: Role) -> Result<Option<File>, TrustError> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(TrustError::Kind {
                role,
                path: path.into(),
                at: path.into(),
                found: "a symbolic link",
                expected: "a regular file",
                fix: format!(
                    "check where it points, then remove it (`rm {}`); the agent never creates links there",
                    sh(path)
                ),
            });
        }
        Err(source) => {
            return Err(TrustError::Io {
                role,
                path: path.into(),
                at: path.into(),
                op: "opening",
                source,
            });
        }
    };
    let m = file.metadata().map_err(|source| TrustError::Io {
        role,
        path: path.into(),
        at: path.into(),
        op: "looking at",
        source,
    })?;
    if !m.is_file() {
        return Err(TrustError::Kind {
            role,
            path: path.into(),
            at: path.into(),
            found: kind_of(&m),
            expected: "a regular file",
            fix: format!("remove it (`rm -r {}`)", sh(path)),
        });
    }
    check_final(role, path, path, &m, true)?;
    Ok(Some(file))
}

/// Check the file `path` and its whole way (for files the agent does not
/// own the directory of: the configuration, feed files). A final symbolic
/// link is followed (after checking its owner); the target must be a
/// regular file, owned by a trusted user and writable by nobody else.
pub fn check_file(path: &Path, role: Role) -> Result<(), TrustError> {
    match walk(role, path)? {
        Walked::Found(at, m) => {
            if !m.is_file() {
                return Err(TrustError::Kind {
                    role,
                    path: path.into(),
                    at,
                    found: kind_of(&m),
                    expected: "a regular file",
                    fix: "correct the path".into(),
                });
            }
            check_final(role, path, &at, &m, true)
        }
        Walked::Missing(parent, rest) => Err(TrustError::Io {
            role,
            path: path.into(),
            at: parent.join(&rest[0]),
            op: "looking at",
            source: io::ErrorKind::NotFound.into(),
        }),
    }
}

/// Check one pin (or any entry of a directory that was checked): not a
/// symbolic link, owned by a trusted user, writable by nobody else. A pin
/// that does not exist is fine.
pub fn check_entry(path: &Path, role: Role) -> Result<(), TrustError> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(TrustError::Io {
                role,
                path: path.into(),
                at: path.into(),
                op: "looking at",
                source,
            });
        }
    };
    if m.file_type().is_symlink() {
        return Err(TrustError::Kind {
            role,
            path: path.into(),
            at: path.into(),
            found: "a symbolic link",
            expected: if role.is_dir() {
                "a directory"
            } else {
                "a pinned object"
            },
            fix: format!(
                "check where it points, then remove it (`rm {}`); edge-filter never creates links there",
                sh(path)
            ),
        });
    }
    check_final(role, path, path, &m, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An unprivileged uid that owns nothing here.
    const NOBODY: u32 = 65534;

    fn root() -> bool {
        euid() == 0
    }

    /// A fresh directory under the temporary directory (mode 0755, ours),
    /// removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "ef-trust-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::DirBuilder::new().mode(0o755).create(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            Scratch(p)
        }
        fn dir(&self, name: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            fs::create_dir_all(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
        fn file(&self, name: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, b"x\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn chown(p: &Path, uid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn trust_own_directories_pass_and_resolve_links() {
        let s = Scratch::new();
        let d = s.dir("state", 0o700);
        assert_eq!(check_dir(&d, Role::StateDir).unwrap(), d);
        // A link of ours to a directory of ours: resolved and checked.
        let l = s.0.join("link");
        symlink(&d, &l).unwrap();
        assert_eq!(check_dir(&l, Role::StateDir).unwrap(), d);
        // A relative link through `..`.
        let sub = s.dir("a/b", 0o755);
        let rel = sub.join("up");
        symlink("../../state", &rel).unwrap();
        assert_eq!(check_dir(&rel, Role::StateDir).unwrap(), d);
        // /tmp-like sticky parents are fine on the way.
        let sticky = s.dir("sticky", 0o1777);
        let below = sticky.join("mine");
        fs::DirBuilder::new().mode(0o700).create(&below).unwrap();
        check_dir(&below, Role::StateDir).unwrap();
        // A file is not a directory.
        let f = s.file("f", 0o600);
        let e = check_dir(&f, Role::StateDir).unwrap_err();
        assert!(matches!(e, TrustError::Kind { .. }), "{e}");
        // Missing.
        let e = check_dir(&s.0.join("nope"), Role::StateDir).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        check_creatable(&s.0.join("nope/deeper"), Role::StateDir).unwrap();
    }

    #[test]
    fn trust_writable_directories_are_refused_with_the_fix() {
        let s = Scratch::new();
        let d = s.dir("state", 0o777);
        let e = check_dir(&d, Role::StateDir).unwrap_err();
        let TrustError::Writable { mode, at, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!((mode & 0o777, at), (0o777, &d));
        let msg = e.to_string();
        for want in [
            &format!(
                "state directory {}: it is writable by group and others (mode 0777)",
                d.display()
            ),
            "plant or replace the files the agent enforces at start",
            &format!("chmod 0700 {}", d.display()),
        ] {
            assert!(msg.contains(want), "{want:?} not in: {msg}");
        }
        // Sticky does not help the directory itself: others could still
        // add files to it.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(
            check_dir(&d, Role::StateDir),
            Err(TrustError::Writable { .. })
        ));
        // Group-writable is writable too.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o770)).unwrap();
        let e = check_dir(&d, Role::PinRoot).unwrap_err();
        assert!(
            e.to_string().contains("writable by its group (mode 0770)"),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 0755"), "{e}");
        // A writable, not sticky, parent.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&s.0, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&d, Role::StateDir).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "its parent directory {} is writable by group and others (mode 0777, not sticky)",
                s.0.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("chmod go-w {}", s.0.display())),
            "{msg}"
        );
        fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn trust_other_owners_are_refused() {
        if !root() {
            println!("skipping: needs root to chown");
            return;
        }
        let s = Scratch::new();
        let d = s.dir("state", 0o700);
        chown(&d, NOBODY);
        let e = check_dir(&d, Role::StateDir).unwrap_err();
        let TrustError::Owner { uid, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*uid, NOBODY);
        let msg = e.to_string();
        assert!(msg.contains("it is owned by uid 65534"), "{msg}");
        assert!(msg.contains("not root"), "{msg}");
        assert!(
            msg.contains(&format!(
                "chown -R root:root {p} && chmod 0700 {p}",
                p = d.display()
            )),
            "{msg}"
        );
        // A parent owned by another user: everything below is theirs.
        chown(&d, 0);
        let parent = s.dir("home", 0o755);
        chown(&parent, NOBODY);
        let below = parent.join("state");
        fs::DirBuilder::new().mode(0o700).create(&below).unwrap();
        let e = check_dir(&below, Role::StateDir).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "its parent directory {} is owned by uid 65534",
                parent.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("choose a state_dir below directories only root can write"),
            "{msg}"
        );
        // ...and create_dir refuses to create below it.
        let e = create_dir(&parent.join("new"), Role::StateDir).unwrap_err();
        assert!(matches!(e, TrustError::Owner { .. }), "{e}");
        assert!(!parent.join("new").exists());
        // A symlink another user owns (in a sticky directory they could
        // replace it at will), even to a good directory.
        let sticky = s.dir("tmp", 0o1777);
        let l = sticky.join("state");
        symlink(&d, &l).unwrap();
        chown(&l, NOBODY);
        let e = check_dir(&l, Role::StateDir).unwrap_err();
        let TrustError::Owner { at, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(at, &l);
        assert!(e.to_string().contains("replace the symbolic link"), "{e}");
        // A root-owned link whose target lies below a directory another
        // user owns: the target's way is checked too.
        let l2 = s.0.join("to-home");
        symlink(&below, &l2).unwrap();
        let e = check_dir(&l2, Role::StateDir).unwrap_err();
        let TrustError::Owner { at, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(at, &parent);
    }

    #[test]
    fn trust_create_dir_makes_trusted_directories() {
        let s = Scratch::new();
        let d = s.0.join("a/b/state");
        assert_eq!(create_dir(&d, Role::StateDir).unwrap(), d);
        for p in [s.0.join("a"), s.0.join("a/b"), d.clone()] {
            assert_eq!(mode(&p) & 0o077, 0, "{}", p.display());
        }
        // Again: nothing to do.
        create_dir(&d, Role::StateDir).unwrap();
        let pins = s.0.join("pins");
        create_dir(&pins, Role::PinRoot).unwrap();
        assert_eq!(mode(&pins) & 0o022, 0);
        // Nothing is created below a directory others can write.
        let world = s.dir("world", 0o777);
        let e = create_dir(&world.join("state"), Role::StateDir).unwrap_err();
        assert!(matches!(e, TrustError::Writable { .. }), "{e}");
        assert!(!world.join("state").exists());
        // A regular file where the directory would be.
        let f = s.file("file", 0o600);
        let e = create_dir(&f.join("x"), Role::StateDir).unwrap_err();
        assert!(matches!(e, TrustError::Kind { .. }), "{e}");
    }

    #[test]
    fn trust_planted_link_is_not_followed_on_create() {
        if !root() {
            println!("skipping: needs root to chown");
            return;
        }
        let s = Scratch::new();
        let sticky = s.dir("tmp", 0o1777);
        let victim = s.dir("victim", 0o755);
        // Another user plants `tmp/state` -> victim/made before the agent
        // creates tmp/state.
        let planted = sticky.join("state");
        symlink(victim.join("made"), &planted).unwrap();
        chown(&planted, NOBODY);
        let e = create_dir(&planted, Role::StateDir).unwrap_err();
        assert!(matches!(e, TrustError::Owner { .. }), "{e}");
        assert!(!victim.join("made").exists(), "followed a planted link");
        // Their directory in the sticky directory: refused, not adopted.
        let theirs = sticky.join("other");
        fs::DirBuilder::new().mode(0o700).create(&theirs).unwrap();
        chown(&theirs, NOBODY);
        let e = create_dir(&theirs, Role::StateDir).unwrap_err();
        assert!(matches!(e, TrustError::Owner { .. }), "{e}");
    }

    #[test]
    fn trust_open_file_checks_the_descriptor() {
        let s = Scratch::new();
        let good = s.file("good.json", 0o600);
        let mut text = String::new();
        io::Read::read_to_string(
            &mut open_file(&good, Role::StateFile).unwrap().unwrap(),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "x\n");
        assert!(
            open_file(&s.0.join("none"), Role::StateFile)
                .unwrap()
                .is_none()
        );
        let ww = s.file("ww.json", 0o666);
        let e = open_file(&ww, Role::StateFile).unwrap_err();
        assert!(matches!(e, TrustError::Writable { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("chmod go-w {}", ww.display())),
            "{e}"
        );
        // A link is refused, not followed, even to a good file.
        let l = s.0.join("link.json");
        symlink(&good, &l).unwrap();
        let e = open_file(&l, Role::StateFile).unwrap_err();
        assert!(
            matches!(
                e,
                TrustError::Kind {
                    found: "a symbolic link",
                    ..
                }
            ),
            "{e}"
        );
        let d = s.dir("dir.json", 0o700);
        assert!(matches!(
            open_file(&d, Role::StateFile),
            Err(TrustError::Kind { .. })
        ));
        if root() {
            let theirs = s.file("theirs.json", 0o600);
            chown(&theirs, NOBODY);
            let e = open_file(&theirs, Role::StateFile).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("owned by uid 65534"), "{msg}");
            assert!(
                msg.contains(&format!(
                    "chown root:root {p} && chmod 0600 {p}",
                    p = theirs.display()
                )),
                "{msg}"
            );
        }
    }

    #[test]
    fn trust_check_file_and_entries() {
        let s = Scratch::new();
        let f = s.file("feed.txt", 0o644);
        check_file(&f, Role::FeedFile).unwrap();
        let l = s.0.join("feed-link.txt");
        symlink(&f, &l).unwrap();
        check_file(&l, Role::FeedFile).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_file(&l, Role::FeedFile).unwrap_err();
        let TrustError::Writable { at, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(at, &f);
        assert!(e.to_string().contains("decide what this feed lists"), "{e}");
        assert!(
            check_file(&s.0.join("none"), Role::Config)
                .unwrap_err()
                .is_not_found()
        );
        assert!(matches!(
            check_file(&s.0, Role::Config),
            Err(TrustError::Kind { .. })
        ));
        // Pins: absent is fine, a link is refused.
        check_entry(&s.0.join("none"), Role::Pin).unwrap();
        assert!(matches!(
            check_entry(&l, Role::Pin),
            Err(TrustError::Kind { .. })
        ));
        let pin = s.file("pin", 0o600);
        check_entry(&pin, Role::Pin).unwrap();
        fs::set_permissions(&pin, fs::Permissions::from_mode(0o622)).unwrap();
        assert!(matches!(
            check_entry(&pin, Role::Pin),
            Err(TrustError::Writable { .. })
        ));
    }

    #[test]
    fn trust_loops_and_quoting() {
        let s = Scratch::new();
        let a = s.0.join("a");
        let b = s.0.join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        assert!(matches!(
            check_dir(&a, Role::StateDir),
            Err(TrustError::Loop { .. })
        ));
        assert_eq!(
            sh(Path::new("/var/lib/edge-filter")),
            "/var/lib/edge-filter"
        );
        assert_eq!(sh(Path::new("/tmp/a b'c")), r"'/tmp/a b'\''c'");
        assert_eq!(user(0), "uid 0 (root)");
        assert!(is_trusted(0) && is_trusted(euid()));
    }
}
