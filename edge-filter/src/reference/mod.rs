//! Reference classifier (see docs/semantics.md).
