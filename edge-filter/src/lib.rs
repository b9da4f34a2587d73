//! edge-filter: the agent and operator CLI of an XDP source-address filter.
//!
//! One module per concern: [`entry`] (what is matched), [`blocklist`] and
//! [`feeds`] (inputs), [`config`], [`fetch`], [`state`] and [`sync`]
//! (the feed-driven agent), [`mod@reference`] (the plain-Rust classifier the kernel
//! program is tested against), [`program`] (the embedded XDP object),
//! [`maps`] (what the maps must hold and syncing them), [`testrun`]
//! (classifying packets in the kernel without an interface).
pub mod agent;
pub mod attach;
pub mod batch;
pub mod blocklist;
pub mod config;
pub mod counters;
pub mod entry;
pub mod error;
pub mod events;
pub mod explain;
pub mod features;
pub mod feed_agent;
pub mod feeds;
pub mod fetch;
pub mod hits;
pub mod layout;
pub mod maps;
pub mod metrics;
pub mod paths;
pub mod program;
pub mod reference;
pub mod replay;
pub mod state;
pub mod sync;
pub mod testrun;
