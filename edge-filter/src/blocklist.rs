//! The simple blocklist text format.
