//! The process's allocator, and giving freed memory back to the system.
//!
//! A sync at 1M entries allocates and frees hundreds of MB of temporaries
//! (the parse, the old desired state, the compile), much of it on the
//! runtime's worker threads. glibc's malloc kept those pages: each thread
//! allocates in its own arena, and `malloc_trim` returns only whole free
//! pages, which small allocations left behind pin. Measured on the agent
//! bench's 1.1M-entry feed (RssAnon, after each of four 1% refreshes):
//! glibc 131 MB after the first sync, then 182, 208, 209 MB; jemalloc
//! (what this module installs) 121 MB, then 134 MB after every refresh
//! (122-127 MB since the compiler frees its overlay and rebuilds its
//! records' B-tree).
//!
//! jemalloc is `tikv-jemallocator`, the maintained Rust binding (TiKV,
//! also used by rustc). Its configuration: [`release_freed`] purges every
//! arena once a sync and its parse are freed; what is freed later goes
//! back after ten seconds (`dirty_decay_ms:10000`, jemalloc's default) by
//! a background thread, straight to the system (`muzzy_decay_ms:0`:
//! `MADV_FREE`d pages would still count as resident). A one-second decay
//! returned the same memory but cost about a tenth more CPU a sync (pages
//! freed mid-sync were purged and faulted again); no time decay at all
//! (`-1`) cost no CPU but left 5 MB more resident.

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it initialises (the symbol carries
/// the prefix `tikv-jemalloc-sys` gives every jemalloc symbol).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
// SAFETY: jemalloc reads this NUL-terminated string once, before the first
// allocation; nothing else has this name.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(unsafe {
    // A byte string's first byte as a C char: the union is how a static
    // gets a `*const c_char` to a literal without a runtime conversion.
    CONF.c
});

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
union Conf {
    b: &'static u8,
    c: &'static std::ffi::c_char,
}

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
const CONF: Conf = Conf {
    b: &b"background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0\0"[0],
};

/// Give the pages freed by a sync or a reconcile pass back to the system
/// now: a purge of every jemalloc arena (a walk of their dirty pages,
/// milliseconds), rather than ten seconds of decay.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", not(target_env = "musl")))]
    {
        // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena at once.
        const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
        // SAFETY: a write-less, read-less mallctl call with a
        // NUL-terminated name.
        let _ = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
    }
}
