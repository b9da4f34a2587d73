//! Reference classifier: a plain-Rust implementation of `docs/semantics.md`.
//!
//! The XDP program is differentially tested against this module packet by
//! packet, so it is written to be *obviously* faithful to the contract rather
//! than fast or clever:
//!
//! - [`parse`](fn@parse) follows the numbered parsing steps of the spec literally, one
//!   check per line, in the spec's order, using plain slice indexing with
//!   explicit bounds checks (no packet-parsing crate whose notion of
//!   "malformed" could differ from ours);
//! - [`Reference::classify`] ranks *all* matching entries and takes the head
//!   of the ranking, instead of reproducing the kernel's trie flattening. The
//!   entries are indexed in hash maps (one key per prefix length present) so a
//!   million-entry set still classifies a packet in a few hundred lookups.
//!
//! It shares no code with `edge-filter-ebpf` and uses no BPF maps; the only
//! things it takes from the rest of the workspace are the ABI constants
//! (`edge-filter-common`) and the [`crate::entry`] model.

mod classify;
mod parse;
#[cfg(test)]
mod testframes;

pub use classify::{Reference, Verdict};
pub use parse::{PacketInfo, Parsed, parse};
