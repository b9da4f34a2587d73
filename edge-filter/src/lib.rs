//! edge-filter: the agent and operator CLI of an XDP source-address filter.
//!
//! The modules stand in layers, each importing only the layers below it
//! (and `edge-filter-common`, the ABI shared with the XDP program); the
//! binary (`main.rs`, `cli/`) stands on top, one file per subcommand:
//!
//! - [`agent`]: the agents of `edge-filter run` (blocklist files; config and feeds);
//! - [`ops`]: what the operator sees: status record, provenance, explain, hits, metrics;
//! - [`replay`]: `edge-filter replay`: captures through the real XDP program;
//! - [`intel`]: intelligence in: blocklist and feed formats, fetch, config, state, merge;
//! - [`kernel`]: the XDP program, its maps, pins and interfaces, and the syscalls;
//! - [`mod@reference`]: the plain-Rust classifier the XDP program is tested against;
//! - [`entry`]: the vocabulary: what an entry matches and what it does;
//! - [`error`]: the library's error type, one variant per thing an operator can fix;
//! - [`escape`]: feed text made safe for logs and terminals;
//! - [`memory`]: the allocator, and freed memory given back after a sync;
//! - [`radix`]: the radix sort of packed keys that big sets are sorted with;
//! - [`trust`]: refusing paths another user could write.
pub mod agent;
pub mod entry;
pub mod error;
pub mod escape;
pub mod intel;
pub mod kernel;
pub mod memory;
pub mod ops;
pub mod radix;
pub mod reference;
pub mod replay;
#[cfg(test)]
mod testing;
pub mod trust;
