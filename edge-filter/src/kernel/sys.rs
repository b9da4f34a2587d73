//! BPF batch map operations through the raw `bpf(2)` syscall.
//!
//! aya 0.14 has no batch API. `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`
//! and `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+) move thousands of hash-map
//! elements per syscall instead of one. LPM tries do not implement them: the
//! callers fall back to per-element operations when the kernel answers
//! `EINVAL`/`ENOTSUPP`/`EOPNOTSUPP`, which [`unsupported`] recognises.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel-internal "not supported" errno that leaks to userspace.
const ENOTSUPP: i32 = 524;

/// Elements per syscall: large enough to amortise the syscall, small enough
/// that the kernel's copy buffers stay modest.
pub const CHUNK: usize = 16 * 1024;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    bpf(cmd, attr).map(drop)
}

/// `bpf(cmd, attr, sizeof attr)`. `T` is the prefix of `union bpf_attr` that
/// `cmd` reads (kernels treat the rest as zero); shared with the kernel
/// feature probes.
pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: callers pass a fully initialised #[repr(C)] bpf_attr prefix for
    // `cmd` whose pointers reference live buffers of the declared sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether an error means the map type has no batch support.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(ENOTSUPP) | Some(libc::EOPNOTSUPP)
    )
}

/// Outcome of a batch write: how many elements landed before an error, and
/// that error (the element at index `done` is the one that failed).
pub struct Partial {
    /// Elements processed successfully.
    pub done: usize,
    /// The error that stopped the batch, if any.
    pub error: Option<io::Error>,
}

/// Update `keys[i] -> values[i]`, one chunk per syscall, stopping at the
/// first failing element.
pub fn update<K: Pod, V: Pod>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Partial {
    assert_eq!(keys.len(), values.len());
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        done += (attr.count as usize).min(n);
        if let Err(e) = r {
            return Partial {
                done,
                error: Some(e),
            };
        }
    }
    Partial { done, error: None }
}

/// Delete `keys`, one chunk per syscall, stopping at the first failure.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Partial {
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        done += (attr.count as usize).min(n);
        if let Err(e) = r {
            return Partial {
                done,
                error: Some(e),
            };
        }
    }
    Partial { done, error: None }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// `union bpf_attr`'s single-element member.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Update one element by fd (`BPF_ANY`): the per-element fallback for
/// callers that share a map's fd between threads rather than the aya map.
pub fn update_one<K: Pod, V: Pod>(fd: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Delete one element by fd; see [`update_one`].
pub fn delete_one<K: Pod>(fd: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// Walk a whole map with `BPF_MAP_LOOKUP_BATCH`, `keys.len()` keys per
/// syscall; `got(n, keys, vals)` sees each chunk's first `n` keys and their
/// values.
fn lookup_chunks<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &mut [K],
    vals: &mut [V],
    mut got: impl FnMut(usize, &[K], &[V]),
) -> io::Result<()> {
    // Hash maps use a u32 bucket cursor, arrays a u32 index; give it room
    // for any key size.
    let mut cursor_in = [0u8; 64];
    let mut cursor_out = [0u8; 64];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                cursor_in.as_mut_ptr() as u64
            },
            out_batch: cursor_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: vals.as_mut_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        got((attr.count as usize).min(keys.len()), keys, vals);
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
        cursor_in = cursor_out;
        first = false;
    }
}

/// Read every element of a hash map.
pub fn lookup_all<K: Pod + Default, V: Pod + Default>(
    fd: BorrowedFd<'_>,
) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys = vec![K::default(); CHUNK];
    let mut vals = vec![V::default(); CHUNK];
    lookup_chunks(fd, &mut keys, &mut vals, |n, k, v| {
        out.extend(k[..n].iter().copied().zip(v[..n].iter().copied()))
    })?;
    Ok(out)
}

/// Read elements `0..` of a per-CPU array: `(keys, values)` where the value
/// of `keys[i]` on CPU `c` is `values[i * ncpus + c]` (`V`'s size must be a
/// multiple of 8, as the kernel lays per-CPU values out in 8-byte steps).
pub fn lookup_all_percpu<V: Pod + Default>(
    fd: BorrowedFd<'_>,
    ncpus: usize,
) -> io::Result<(Vec<u32>, Vec<V>)> {
    assert_eq!(std::mem::size_of::<V>() % 8, 0);
    let (mut out_k, mut out_v) = (Vec::new(), Vec::new());
    let mut keys = vec![0u32; CHUNK];
    let mut vals = vec![V::default(); CHUNK * ncpus];
    lookup_chunks(fd, &mut keys, &mut vals, |n, k, v| {
        out_k.extend_from_slice(&k[..n]);
        out_v.extend_from_slice(&v[..n * ncpus]);
    })?;
    Ok((out_k, out_v))
}

/// Write `values[i * ncpus .. (i + 1) * ncpus]` (one value per CPU) to
/// `keys[i]` of a per-CPU map, one chunk per syscall.
pub fn update_percpu<V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[u32],
    values: &[V],
    ncpus: usize,
) -> Partial {
    assert_eq!(std::mem::size_of::<V>() % 8, 0);
    assert_eq!(keys.len() * ncpus, values.len());
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done * ncpus..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        done += (attr.count as usize).min(n);
        if let Err(e) = r {
            return Partial {
                done,
                error: Some(e),
            };
        }
    }
    Partial { done, error: None }
}
