//! edge-filter: the agent and operator CLI of an XDP source-address filter.
//!
//! One module per concern: [`entry`] (what is matched), [`blocklist`] and
//! [`feeds`] (inputs), [`reference`] (the plain-Rust classifier the kernel
//! program is tested against).
pub mod blocklist;
pub mod entry;
pub mod feeds;
pub mod reference;
