//! The long-running agents (`edge-filter run`): each keeps the kernel's maps
//! equal to what it is told to enforce, on every interface it filters,
//! until stopped.
//!
//! - [`files`]: the blocklist-file agent (`run --iface IF --blocklist
//!   FILE`): one interface, a blocklist and an allowlist file, reloaded on
//!   change or SIGHUP;
//! - [`feeds`]: the config agent (`run --config FILE`): every interface and
//!   feed of the config, each feed fetched on its own schedule, merged,
//!   guarded and kept as last-known-good copies;
//! - [`watch`]: what both do while they run: keep the filter in force on an
//!   interface that is deleted and recreated, and account for the gaps.

pub mod feeds;
pub mod files;
pub mod watch;
