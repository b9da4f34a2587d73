//! The feed-driven sync engine's pure parts: what should be enforced and
//! whether a feed update may be applied. Nothing here touches the kernel or
//! the network, so all of it is tested as plain functions.
//!
//! - [`desired`]: merging feed snapshots into the desired state, with
//!   provenance, expiry, the breadth limit and the allowlist;
//! - [`guard`]: the shrink guard that holds a suspicious drop in a feed's
//!   size until it persists;
//! - [`check`]: what `edge-filter check-config` reports (reads `file:`
//!   feeds, never fetches).

pub mod check;
#[cfg(test)]
mod data_tests;
pub mod desired;
pub mod guard;

pub use desired::{
    DesiredState, FeedCounts, FeedSnapshot, KindCounts, Provenance, RejectedEntry, merge,
};
pub use guard::{GuardDecision, HeldShrink, ShrinkGuard, shrink_fraction};
