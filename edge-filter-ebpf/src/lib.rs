//! What the edge-filter XDP programs share, declared once: the parser, the
//! per-reason counters and event sampling ([`common`]), the v1 entry maps
//! ([`v1`], feature `v1`: the benchmark's "before" programs) and the v2
//! maps and classifier ([`v2`], feature `v2`: the production program). The production program (`src/main.rs`) and the
//! benchmark programs (`bench-ebpf`) link this library.
//!
//! bpf-linker keeps every map a linked crate declares, referenced or not,
//! so the map sets are behind cargo features: the production object
//! (default features: `v2`) carries no v1 map, and only objects built with
//! `v1` carry them.
#![no_std]

pub mod common;
pub mod parse;
#[cfg(feature = "v1")]
pub mod v1;
#[cfg(feature = "v2")]
pub mod v2;
