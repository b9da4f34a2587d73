//! The kernel side: the embedded XDP program and everything that talks to
//! the kernel about it (bpf(2), bpffs pins, rtnetlink, the per-interface
//! lock), plus the pure model of what its maps hold.
//!
//! Imports only the foundation (`entry`, `error`, `escape`, `trust`) and
//! `edge-filter-common`: nothing here knows feeds, configs or the agent.

pub mod attach;
pub mod classifier;
pub mod clock;
pub mod counters;
pub mod events;
pub mod features;
pub mod layout;
pub mod lock;
pub mod maps;
pub mod netlink;
pub mod paths;
pub mod program;
pub mod sys;
pub mod v2maps;
pub mod v2sync;
