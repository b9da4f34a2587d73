//! Threat intelligence in: what the agent is told to enforce, and deciding
//! what that means. Reads files and fetches feeds; never touches the
//! kernel's maps (it knows the kernel only for the names of its settings:
//! attach modes, map capacities, the pin root).
//!
//! - inputs: [`blocklist`] (the `run --blocklist` format), [`feeds`] (feed
//!   formats), [`fetch`] (a feed's bytes from a file or over HTTP(S)),
//!   [`crowdsec`] (polling a CrowdSec LAPI as a bouncer), [`taxii`]
//!   (polling a TAXII 2.1 collection), [`misp`] (a MISP feed's manifest
//!   and events, or a MISP server's restSearch), [`secret`] (credential
//!   files),
//!   [`config`] (the agent's TOML), [`state`] (last-known-good copies on
//!   disk);
//! - the sync engine's pure parts: [`desired`] (merging feed snapshots into
//!   the desired state, with provenance, expiry, the breadth limit and the
//!   allowlist) and [`guard`] (the shrink guard that holds a suspicious drop
//!   in a feed's size until it persists);
//! - [`intake`]: a feed's fetched body parsed as its config says, and every
//!   feed of a config read once and merged;
//! - [`check`]: what `edge-filter check-config` reports (reads `file:`
//!   feeds, never fetches).

pub mod blocklist;
pub mod check;
pub mod config;
pub mod crowdsec;
#[cfg(test)]
mod data_tests;
pub mod desired;
pub mod feed_entries;
pub mod feeds;
pub mod fetch;
pub mod guard;
pub mod intake;
pub mod misp;
pub mod provenance;
pub mod secret;
pub mod state;
pub mod taxii;
