//! The datapath v2 compiler (`docs/datapath-v2.md`): pure userspace, no
//! kernel I/O.
//!
//! - [`Compiler::build`]: an [`EntrySet`](crate::entry::EntrySet) and its
//!   ids ([`Ids`], kept stable by the caller; [`assign_ids`] hands out the
//!   lowest free ones) to [`Tables`], the memory of the v2 maps
//!   (`edge_filter_common::v2`), for a [`Geometry`] (capacity tier).
//! - [`Compiler::update`]: the next set as a [`Plan`]: stores in phases
//!   separated by grace periods, ordered so that a packet classified
//!   while it is applied gets its verdict under the old set or the new one.
//! - [`decode`]: tables back to the entry set and ids (adoption), from the
//!   catalog; [`canonical`] resolves tables to their logical content, so a
//!   kernel copy can be checked against a fresh compile.
//! - [`sim`]: the eBPF lookup over [`Tables`], load for load, for the
//!   property tests against the reference classifier and for the
//!   interleaving checks of plans.
//!
//! Addresses and prefixes are flattened here, not in the kernel: an exact
//! record carries the decision of its address (own entry, covering
//! prefixes, allowlist), a `/16` range or trie node that of its nets, each
//! with the port entries (address+port and prefix+port) that may outrank
//! it. The cost model: a prefix change rewrites the records inside it
//! (one aligned store each), and a prefix+port entry is copied into the
//! port list of every record and range it covers.

mod alloc;
mod canon;
mod compile;
mod ids;
mod image;
mod model;
mod records;
pub mod sim;
mod tables;
#[cfg(test)]
pub(crate) mod tests;

pub use canon::{Canonical, Resolved, canonical, decode, resolve};
pub use compile::{Compiler, KeyValue, assign_ids, counts};
pub use ids::Ids;
pub use image::{Arr, Backing, Backings, ImageError};
pub use model::Decision;
pub use sim::{Reader, SimVerdict, lookup};
pub use tables::{Counts, Geometry, Plan, Step, Tables, Write};

use ipnet::IpNet;

use crate::entry::EntryKey;

/// What an id names: an allowlist net or an entry key (the id space is
/// shared, as today's per-entry counters share it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKey {
    /// An allowlist net (normalised).
    Allow(IpNet),
    /// An entry key (normalised).
    Entry(EntryKey),
}

/// Why a set cannot be compiled into a tier.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The ids given do not cover a key of the set.
    #[error("no id for {0:?}")]
    MissingId(IdKey),
    /// An id beyond the 24 bits a decision word carries.
    #[error("id {id} of {key:?} is beyond the largest the datapath carries ({max})")]
    IdTooLarge {
        /// The key.
        key: IdKey,
        /// Its id.
        id: u32,
        /// The largest id allowed.
        max: u32,
    },
    /// Two keys with one id.
    #[error("id {id} is given to both {a:?} and {b:?}")]
    DuplicateId {
        /// The id.
        id: u32,
        /// One key.
        a: IdKey,
        /// The other key.
        b: IdKey,
    },
    /// The set needs more than the tier holds: build the next tier.
    #[error("{what}: {need} needed, the tier holds {have}; build the next tier")]
    Capacity {
        /// What ran out.
        what: &'static str,
        /// How many the set needs.
        need: u64,
        /// How many the tier holds.
        have: u64,
    },
    /// A table ran out part-way (both buckets of a key full, or the heap
    /// fragmented): build the next tier.
    #[error("{what} is full; build the next tier")]
    Full {
        /// What is full.
        what: &'static str,
    },
    /// More port entries apply to one address or range than a port list holds.
    #[error("{count} port entries apply to one address or range; at most {max} are supported")]
    PortList {
        /// How many apply.
        count: usize,
        /// The most a list holds.
        max: usize,
    },
    /// A previous update failed part-way: the compiler no longer matches
    /// the tables. Build the next tier.
    #[error("a previous update failed part-way; build the tables again")]
    Poisoned,
    /// The kernel's maps do not hold what the compiler planned against
    /// ([`Compiler::rebase`], [`Compiler::settle`]): build the next tier.
    #[error("{0}; build the tables again")]
    Image(#[from] ImageError),
    /// Tables that do not decode (adoption of foreign or damaged maps).
    #[error("the tables do not decode: {0}")]
    Decode(String),
}

/// Results of this module.
pub type Result<T> = std::result::Result<T, LayoutError>;
