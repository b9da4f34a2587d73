//! One array of [`Tables`](super::Tables): the compiler's own vector, or
//! the kernel map's memory itself with the stores of a pending plan on
//! top.
//!
//! Why: the compiler plans ordered stores against an image of what the
//! kernel holds. Kept as a private copy, that image was a fifth of the
//! agent's memory at 1M entries (54 MB), a second copy of the mmapped
//! arrays. Once the kernel holds the image, [`Arr::rebase`] drops the copy
//! and reads the map's memory instead; an update's stores go to a small
//! overlay (what the plan will store, with what was there before), since
//! the kernel must not see them before the plan's grace periods. Once the
//! plan is applied, [`Arr::settle`] checks the kernel holds every overlay
//! word and drops the overlay.
//!
//! Drift (another writer) can no longer be found by comparing the kernel
//! with the copy, so a mapped array keeps a checksum of what it should
//! hold, updated at every settle: [`Arr::drifted`] recomputes it from the
//! kernel. The kernel's program only reads these arrays.

use std::ops::{Deref, Index, IndexMut};
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Memory an array may live in: a shared `mmap` of a map
/// (`BPF_F_MMAPABLE`), kept mapped while anything points into it.
pub trait Backing: Send + Sync {
    /// Start of the mapping (page aligned).
    fn base(&self) -> *mut u8;
    /// Bytes mapped.
    fn bytes(&self) -> usize;
}

/// The memory of every array of the tables (the tries and config stay
/// in the compiler: they are small).
#[derive(Clone)]
pub struct Backings {
    /// `V2_SUM4`.
    pub sum4: Arc<dyn Backing>,
    /// `V2_EXACT4`.
    pub exact4: Arc<dyn Backing>,
    /// `V2_DIR4` (its 64-byte lines are the directory's words in order).
    pub dir4: Arc<dyn Backing>,
    /// `V2_HEAP`.
    pub heap: Arc<dyn Backing>,
    /// `V2_SUM6`.
    pub sum6: Arc<dyn Backing>,
    /// `V2_EXACT6`.
    pub exact6: Arc<dyn Backing>,
    /// `V2_CATALOG`.
    pub catalog: Arc<dyn Backing>,
    /// `V2_CATADDR6`.
    pub catalog6: Arc<dyn Backing>,
}

/// An array of plain-old-data elements (words, buckets, lines): owned, or
/// the kernel's memory plus the overlay of a pending plan.
pub struct Arr<T: Copy>(Repr<T>);

enum Repr<T: Copy> {
    Owned(Vec<T>),
    Mapped(Box<Mapped<T>>),
}

struct Mapped<T: Copy> {
    back: Arc<dyn Backing>,
    ptr: *const T,
    len: usize,
    /// Elements a pending plan stores: (before, after).
    over: FxHashMap<u32, (T, T)>,
    /// [`checksum`] of what the kernel should hold once the pending plan
    /// is applied, without the overlay's elements' contribution.
    sum: u64,
}

// SAFETY: the pointer is into `back`, which is Send + Sync and outlives
// it; the memory is only written through `&mut Arr` (the overlay) or by
// the plan's atomic stores, never while an `&Arr` reads it.
unsafe impl<T: Copy + Send> Send for Mapped<T> {}
// SAFETY: see above.
unsafe impl<T: Copy + Sync> Sync for Mapped<T> {}

/// One 4-byte unit's share of a checksum: a bijective mix of its index
/// and value (splitmix64's finaliser), so a moved or changed unit changes
/// the sum.
fn mix(unit: u64, v: u32) -> u64 {
    let mut z = (unit << 32 | v as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checksum of element `i`'s bytes (every element type is a whole number
/// of 4-byte units).
fn elem_sum<T: Copy>(i: usize, v: &T) -> u64 {
    let units = size_of::<T>() / 4;
    // SAFETY: plain-old-data, read as bytes.
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) };
    bytes.chunks_exact(4).enumerate().fold(0u64, |s, (k, c)| {
        let u = u32::from_ne_bytes(c.try_into().expect("4 bytes"));
        s.wrapping_add(mix((i * units + k) as u64, u))
    })
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain-old-data slices as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Checksum of a whole array: the wrapping sum of every 4-byte unit's
/// mix (unit `k` of element `i` is unit `i * units + k` of the array, as
/// in [`elem_sum`]).
pub fn checksum<T: Copy>(v: &[T]) -> u64 {
    as_bytes(v)
        .chunks_exact(4)
        .enumerate()
        .fold(0u64, |s, (j, c)| {
            s.wrapping_add(mix(
                j as u64,
                u32::from_ne_bytes(c.try_into().expect("4 bytes")),
            ))
        })
}

/// Why an array cannot be rebased, or a settle found the kernel short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The map is smaller than the array.
    #[error("a v2 map is smaller than the compiled array")]
    TooSmall,
    /// The map does not hold the array (rebase) or what the plan stored
    /// (settle).
    #[error("a v2 map does not hold what the compiler stored there")]
    Differs,
}

impl<T: Copy> Arr<T> {
    /// An owned array.
    pub fn owned(v: Vec<T>) -> Arr<T> {
        Arr(Repr::Owned(v))
    }

    /// Elements.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Owned(v) => v.len(),
            Repr::Mapped(m) => m.len,
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it reads the kernel's memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Repr::Mapped(_))
    }

    /// Keep the first `n` elements (an owned array: a fresh build being
    /// fitted; a mapped one is the map's size and stays).
    pub fn truncate(&mut self, n: usize) {
        if let Repr::Owned(v) = &mut self.0 {
            v.truncate(n);
            v.shrink_to_fit();
        }
    }

    /// Drop the owned copy and read `back` instead, which must hold
    /// exactly the same elements (checked, by checksum).
    pub fn rebase(&mut self, back: Arc<dyn Backing>) -> Result<(), ImageError> {
        let Repr::Owned(v) = &self.0 else {
            return Ok(());
        };
        if back.bytes() < std::mem::size_of_val(v.as_slice()) {
            return Err(ImageError::TooSmall);
        }
        let ptr = back.base().cast::<T>().cast_const();
        // SAFETY: in bounds (checked) and aligned (page-aligned mapping).
        let kernel = unsafe { std::slice::from_raw_parts(ptr, v.len()) };
        if as_bytes(kernel) != as_bytes(v) {
            return Err(ImageError::Differs);
        }
        let sum = checksum(v);
        self.0 = Repr::Mapped(Box::new(Mapped {
            back,
            ptr,
            len: v.len(),
            over: FxHashMap::default(),
            sum,
        }));
        Ok(())
    }

    /// Start of the kernel memory it reads (`None` when owned).
    pub fn mapped_base(&self) -> Option<*const u8> {
        match &self.0 {
            Repr::Owned(_) => None,
            Repr::Mapped(m) => Some(m.ptr.cast()),
        }
    }

    /// Elements a pending plan stores (0 when owned).
    pub fn pending(&self) -> usize {
        match &self.0 {
            Repr::Owned(_) => 0,
            Repr::Mapped(m) => m.over.len(),
        }
    }

    /// The pending plan has been applied: check the kernel holds every
    /// element it stored, then drop the overlay. On a difference the
    /// overlay is dropped too and the checksum no longer matches (the
    /// array reads as drifted).
    pub fn settle(&mut self) -> Result<(), ImageError> {
        let Repr::Mapped(m) = &mut self.0 else {
            return Ok(());
        };
        let mut ok = true;
        // Taken, not drained: a drained map keeps its table, and a 1% change
        // of a 1M-entry set left 6 MB of overlay allocated for good.
        for (i, (before, after)) in std::mem::take(&mut m.over) {
            let i = i as usize;
            // SAFETY: i < len (only indexes below it enter the overlay).
            let now = unsafe { m.ptr.add(i).read_volatile() };
            ok &= elem_sum(i, &now) == elem_sum(i, &after);
            m.sum = m
                .sum
                .wrapping_add(elem_sum(i, &after))
                .wrapping_sub(elem_sum(i, &before));
        }
        if ok { Ok(()) } else { Err(ImageError::Differs) }
    }

    /// Whether the kernel's memory no longer holds what the plans so far
    /// stored (a pass over the whole array; `false` when owned: compare
    /// the copy instead).
    pub fn drifted(&self) -> bool {
        match &self.0 {
            Repr::Owned(_) => false,
            // A plan left pending was never applied whole: the kernel is
            // not what the compiler plans against.
            Repr::Mapped(m) if !m.over.is_empty() => true,
            Repr::Mapped(m) => {
                // SAFETY: in bounds, aligned.
                let now = checksum(unsafe { std::slice::from_raw_parts(m.ptr, m.len) });
                now != m.sum
            }
        }
    }
}

impl<T: Copy> From<Vec<T>> for Arr<T> {
    fn from(v: Vec<T>) -> Arr<T> {
        Arr::owned(v)
    }
}

impl<T: Copy> Index<usize> for Arr<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        match &self.0 {
            Repr::Owned(v) => &v[i],
            Repr::Mapped(m) => match m.over.get(&(i as u32)) {
                Some((_, after)) => after,
                None => {
                    assert!(i < m.len, "index {i} out of a mapped array of {}", m.len);
                    // SAFETY: in bounds; the kernel only reads this memory.
                    unsafe { &*m.ptr.add(i) }
                }
            },
        }
    }
}

impl<T: Copy> IndexMut<usize> for Arr<T> {
    /// A store: into the owned vector, or into the overlay (the kernel
    /// sees it when the plan is applied).
    fn index_mut(&mut self, i: usize) -> &mut T {
        match &mut self.0 {
            Repr::Owned(v) => &mut v[i],
            Repr::Mapped(m) => {
                assert!(i < m.len, "index {i} out of a mapped array of {}", m.len);
                let ptr = m.ptr;
                &mut m
                    .over
                    .entry(i as u32)
                    .or_insert_with(|| {
                        // SAFETY: in bounds.
                        let v = unsafe { ptr.add(i).read_volatile() };
                        (v, v)
                    })
                    .1
            }
        }
    }
}

impl<T: Copy> Deref for Arr<T> {
    type Target = [T];

    /// The whole array as a slice: owned, or mapped with no plan pending
    /// (a pending plan's stores are only in the overlay: reading the
    /// kernel's memory then would miss them).
    fn deref(&self) -> &[T] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => {
                assert!(
                    m.over.is_empty(),
                    "a mapped array read whole while a plan is pending"
                );
                // SAFETY: in bounds, aligned; the kernel only reads it.
                unsafe { std::slice::from_raw_parts(m.ptr, m.len) }
            }
        }
    }
}

impl<'a, T: Copy> IntoIterator for &'a Arr<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.deref().iter()
    }
}

impl<T: Copy> Clone for Arr<T> {
    /// A mapped array's clone reads the same kernel memory.
    fn clone(&self) -> Arr<T> {
        match &self.0 {
            Repr::Owned(v) => Arr(Repr::Owned(v.clone())),
            Repr::Mapped(m) => Arr(Repr::Mapped(Box::new(Mapped {
                back: Arc::clone(&m.back),
                ptr: m.ptr,
                len: m.len,
                over: m.over.clone(),
                sum: m.sum,
            }))),
        }
    }
}

impl<T: Copy + PartialEq> PartialEq for Arr<T> {
    fn eq(&self, o: &Arr<T>) -> bool {
        self.len() == o.len() && (0..self.len()).all(|i| self[i] == o[i])
    }
}

impl<T: Copy + Eq> Eq for Arr<T> {}

impl<T: Copy> std::fmt::Debug for Arr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Owned(v) => write!(f, "Arr::Owned(len {})", v.len()),
            Repr::Mapped(m) => write!(f, "Arr::Mapped(len {}, pending {})", m.len, m.over.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heap memory standing in for a map's mapping (leaked: tests only).
    struct Mem(*mut u64, usize);
    // SAFETY: tests use it from one thread.
    unsafe impl Sync for Mem {}
    // SAFETY: see above.
    unsafe impl Send for Mem {}
    impl Backing for Mem {
        fn base(&self) -> *mut u8 {
            self.0.cast()
        }
        fn bytes(&self) -> usize {
            self.1 * 8
        }
    }

    fn mem(v: Vec<u64>) -> Arc<Mem> {
        let n = v.len();
        Arc::new(Mem(Box::leak(v.into_boxed_slice()).as_mut_ptr(), n))
    }

    fn store(m: &Mem, i: usize, v: u64) {
        assert!(i < m.1);
        // SAFETY: in bounds, test memory, one thread.
        unsafe { m.0.add(i).write(v) }
    }

    fn load(m: &Mem, i: usize) -> u64 {
        assert!(i < m.1);
        // SAFETY: as store.
        unsafe { m.0.add(i).read() }
    }

    /// Stores go to the overlay until settled; the kernel's memory then
    /// holds them and the checksum follows; a store behind the array's
    /// back reads as drift, and so does a plan that did not land.
    #[test]
    fn overlay_settle_and_drift() {
        let v: Vec<u64> = (0..64).map(|i| i * 3).collect();
        let kmem = mem(v.clone());
        let mut a = Arr::owned(v.clone());
        // A map that does not hold the array is refused.
        let other = mem(vec![0; 64]);
        assert_eq!(a.clone().rebase(other), Err(ImageError::Differs));
        let short = mem(vec![0; 8]);
        assert_eq!(a.clone().rebase(short), Err(ImageError::TooSmall));
        a.rebase(kmem.clone()).unwrap();
        assert!(a.is_mapped() && !a.drifted());
        assert_eq!(a[5], 15);
        a[5] = 99;
        assert_eq!((a[5], a.pending()), (99, 1), "the overlay answers");
        assert_eq!(load(&kmem, 5), 15, "the kernel has not seen it");
        // The plan lands, then settles.
        store(&kmem, 5, 99);
        a.settle().unwrap();
        assert_eq!((a[5], a.pending(), a.drifted()), (99, 0, false));
        assert_eq!(a.to_vec(), [&v[..5], &[99], &v[6..]].concat());
        // Someone else's store: drift.
        store(&kmem, 9, 1);
        assert!(a.drifted());
        store(&kmem, 9, 27);
        assert!(!a.drifted());
        // A plan that did not land: settle says so, and it reads as drift.
        a[7] = 5;
        assert_eq!(a.settle(), Err(ImageError::Differs));
        assert!(a.drifted());
        // The whole-array sum is the sum of the elements' (which settles
        // update), for every element size the tables use.
        fn by_elements<T: Copy>(v: &[T]) -> u64 {
            (v.iter().enumerate()).fold(0u64, |s, (i, e)| s.wrapping_add(elem_sum(i, e)))
        }
        let words: Vec<u32> = (0..33).map(|i| i * 7919).collect();
        assert_eq!(checksum(&words), by_elements(&words));
        let addrs: Vec<[u8; 16]> = (0..9u8).map(|i| [i; 16]).collect();
        assert_eq!(checksum(&addrs), by_elements(&addrs));
        let lines: Vec<[u64; 8]> = (0..5u64).map(|i| [i << 40 | 3; 8]).collect();
        assert_eq!(checksum(&lines), by_elements(&lines));
        // Moving a value between indexes changes the checksum too.
        let swapped: Vec<u64> = [1u64, 0].to_vec();
        assert_ne!(checksum(&swapped), checksum(&[0u64, 1]));
    }
}
