//! What the operator sees: the agent's status record, why a packet gets
//! its verdict, per-entry hits joined with provenance, and the Prometheus
//! endpoint. Reads the kernel (through [`crate::kernel`]) and the
//! intelligence (through [`crate::intel`]); changes neither.

pub mod explain;
pub mod hits;
pub mod knowledge;
pub mod metrics;
pub mod overview;
pub mod status;
