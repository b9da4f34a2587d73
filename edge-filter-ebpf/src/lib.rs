//! What the edge-filter XDP programs share, declared once: the parser, the
//! per-reason counters and event sampling ([`common`]), the entry maps of
//! today's program ([`v1`], feature `v1`) and the v2 maps and classifier
//! ([`v2`], feature `v2`). The production program (`src/main.rs`) and the
//! benchmark programs (`bench-ebpf`) link this library.
//!
//! bpf-linker keeps every map a linked crate declares, referenced or not,
//! so the map sets are behind cargo features: the production object
//! (default features: `v1`) carries no v2 map, and only objects built with
//! `v2` carry them.
#![no_std]

pub mod common;
pub mod parse;
#[cfg(feature = "v1")]
pub mod v1;
#[cfg(feature = "v2")]
pub mod v2;
