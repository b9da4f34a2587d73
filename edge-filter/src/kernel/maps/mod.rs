//! The entry maps: what they must hold (pure, unit-tested) and making the
//! kernel's maps hold it (I/O).
//!
//! Contents, as plain data:
//! - `contents`: [`Desired`] (every entry map's contents by typed key),
//!   built from an [`EntrySet`](crate::entry::EntrySet) with stable ids,
//!   read back as entries, counted and compared ([`drift`]): the ops'
//!   view of the maps;
//! - `trie`: flattening the LPM tries so one lookup sees the strongest
//!   covering action;
//! - `ids`: entry ids (lowest free first, released only once committed);
//! - `changes`: the key-level changes between two sets ([`SetChanges`]),
//!   the feed agent's deltas ([`SetChanges::key_changes`]).
//!
//! Imports run one way: `trie` and `ids` know nothing of the others,
//! `contents` builds on them, `changes` on `contents`, and `entry_maps`
//! on all of them.
//!
//! The kernel's maps:
//! - `entry_maps`: [`EntryMaps`], the production program's maps (datapath
//!   v2, written by the sync engine `kernel::v2sync`): read back through
//!   the catalog, sync, tier growth, counters, stats, last hits, config.
//!
//! The v1 writer (`V1Maps`: the hash maps and tries of the benchmark's
//! "before" programs, full sync as a diff, incremental updates in
//! proportion to the change) lives in the bench, `tests/src/bench/v1maps/`;
//! [`Slot`], [`Change`], [`SetChanges::slots`], [`Desired::get`],
//! [`Desired::put`], [`normalized`] and [`value`] are public for it.

mod changes;
mod contents;
mod entry_maps;
mod ids;
mod trie;

pub use changes::{Change, SetChanges};
pub use contents::{Census, Desired, KeyMap, Slot, SlotKey, drift, ids_of, normalized};
pub use entry_maps::{EntryMaps, Fresh, Home, SyncStats, possible_cpus};
pub use ids::IdAlloc;
pub use trie::value;
