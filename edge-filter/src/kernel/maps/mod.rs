//! The entry maps: what they must hold (pure, unit-tested) and making the
//! kernel's maps hold it (I/O).
//!
//! Contents, as plain data:
//! - `contents`: [`Desired`] (every entry map's contents by typed key),
//!   built from an [`EntrySet`](crate::entry::EntrySet) with stable ids,
//!   read back as entries, counted and compared ([`drift`]);
//! - `trie`: flattening the LPM tries so one lookup sees the strongest
//!   covering action, and the per-length probe filter;
//! - `ids`: entry ids (lowest free first, released only once committed);
//! - `changes`: the key-level changes between two sets ([`SetChanges`])
//!   and applying them to a shadow copy, with the trie probe filters that
//!   keep that in proportion to the change.
//!
//! Imports run one way: `trie` and `ids` know nothing of the others,
//! `contents` builds on them, `changes` on `contents`, and the two I/O
//! files on all of them.
//!
//! The kernel's maps:
//! - `entry_maps`: [`EntryMaps`], the production program's maps (datapath
//!   v2, written by the sync engine `kernel::v2sync`): read back through
//!   the catalog, sync, tier growth, counters, stats, last hits, config;
//! - `v1_maps` and `delta`: [`V1Maps`], the v1 hash maps and tries of the
//!   benchmark's "before" programs: full sync as a diff, incremental
//!   updates in proportion to the change.

mod changes;
mod contents;
mod delta;
mod entry_maps;
mod ids;
mod trie;
mod v1_maps;

pub use changes::SetChanges;
#[cfg(test)]
pub(crate) use contents::normalized;
pub use contents::{Census, Desired, KeyMap, SlotKey, drift, ids_of};
pub use entry_maps::{EntryMaps, Fresh, Home, SyncStats, possible_cpus};
pub use ids::IdAlloc;
pub use v1_maps::V1Maps;
