//! edge-filter: the agent and operator CLI of an XDP source-address filter.
//!
//! One module per concern: [`entry`] (what is matched), [`blocklist`] and
//! [`feeds`] (inputs), [`config`], [`fetch`], [`state`] and [`sync`]
//! (the feed-driven agent), [`mod@reference`] (the plain-Rust classifier the kernel
//! program is tested against), [`program`] (the embedded XDP object),
//! [`maps`] (what the maps must hold and syncing them), [`testrun`]
//! (classifying packets in the kernel without an interface), [`escape`]
//! (feed text made safe for logs and terminals), [`trust`]
//! (refusing paths another user could write).
pub mod agent;
pub mod entry;
pub mod error;
pub mod escape;
pub mod intel;
pub mod kernel;
pub mod ops;
pub mod reference;
pub mod replay;
pub mod trust;
