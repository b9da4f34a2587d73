//! The record the config agent writes and four readers read: [`Status`]
//! (the agent, each feed's [`FeedHealth`], each interface's [`IfaceHealth`])
//! in the state directory as `status.json` ([`STATUS_FILE`]). The agent
//! writes it after every sync and at least once per reconcile interval;
//! `edge-filter status`, `explain`, `force-feed` and the metrics endpoint
//! read it (the blocklist agent publishes the same record to its metrics
//! endpoint without writing it).
//!
//! A plain record: serde, no behaviour beyond reading it back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Name of the status blob in the state directory (read by `status`).
pub const STATUS_FILE: &str = "status";

/// Health of one feed, as `edge-filter status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FeedHealth {
    /// Feed name.
    pub name: String,
    /// Where it comes from (URL credentials redacted).
    pub source: String,
    /// Last fetch attempt.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_attempt: Option<OffsetDateTime>,
    /// Last fetch that returned a usable copy (new or not modified).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    /// The error of the last attempt, if it failed.
    pub last_error: Option<String>,
    /// Distinct entries the enforced copy contributes to the desired state
    /// (`check-config`'s "distinct"): duplicates, rejected lines, and
    /// entries left out as too broad, expired or not yet valid are not
    /// counted.
    pub entries: usize,
    /// Lines or objects of that copy that were rejected.
    pub rejected_lines: usize,
    /// STIX patterns or records that cannot be expressed.
    pub unsupported: usize,
    /// STIX indicators enforced in part (alternatives of an OR that cannot
    /// be expressed left out).
    #[serde(default)]
    pub partial: usize,
    /// First few rejection reasons of the latest copy (`line N: reason`).
    pub rejected_examples: Vec<String>,
    /// A held update, if one is waiting.
    pub held: Option<String>,
    /// Whether the enforced copy came from the state directory at start.
    pub from_last_known_good: bool,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// When the agent fetches (or, for a file, looks at) the feed next.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_attempt: Option<OffsetDateTime>,
    /// Why the enforced copy could not be saved as the last-known-good
    /// copy (a full or read-only state directory), while that lasts: a
    /// restart would then enforce an older copy.
    #[serde(default)]
    pub persist_error: Option<String>,
}

/// Everything the agent reports about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Agent process id.
    pub pid: u32,
    /// When the agent started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started: Option<OffsetDateTime>,
    /// When this status was written.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated: Option<OffsetDateTime>,
    /// Interfaces filtered.
    pub interfaces: Vec<String>,
    /// Per feed.
    pub feeds: Vec<FeedHealth>,
    /// Entries in the desired state.
    pub entries: usize,
    /// Allowlist size.
    pub allowlisted: usize,
    /// Entries rejected by the safety rules (too broad).
    pub rejected_entries: usize,
    /// Syncs applied.
    pub syncs: u64,
    /// Duration of the last sync, milliseconds.
    pub last_sync_ms: f64,
    /// Keys found changed behind the agent's back and repaired.
    pub drift_repairs: u64,
    /// Entries refused because a map was full (last sync).
    pub refused: usize,
    /// Per interface: whether the filter is in force, enforcement gaps, and
    /// what the kernel's maps hold against the desired set.
    #[serde(default)]
    pub ifaces: Vec<IfaceHealth>,
    /// Writes to the state directory (last-known-good copies, guard, this
    /// status) that failed since the agent started.
    #[serde(default)]
    pub persist_failures: u64,
    /// The latest such failure, while writes keep failing.
    #[serde(default)]
    pub persist_error: Option<String>,
}

/// What an agent reports about one interface it filters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IfaceHealth {
    /// Interface name.
    pub name: String,
    /// The filter is in force on it (the kernel's word, checked every
    /// second and on every link event).
    pub attached: bool,
    /// Why not, when it is not.
    pub detail: Option<String>,
    /// Enforcement gaps since the agent started: times the interface was
    /// found unfiltered (deleted, recreated, detached).
    pub gaps: u64,
    /// Their total duration in seconds, the current one included.
    pub gap_seconds: f64,
    /// When the current gap began, while one lasts.
    #[serde(with = "time::serde::rfc3339::option")]
    pub gap_since: Option<OffsetDateTime>,
    /// Block and monitor entries the kernel's maps held at the last count.
    pub kernel_entries: Option<usize>,
    /// Desired entries the kernel's maps lacked (or held with another
    /// action) at the last count; 0 when the kernel enforces the whole set.
    pub missing_entries: Option<usize>,
    /// When the kernel's maps were last counted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub kernel_checked: Option<OffsetDateTime>,
}

impl Status {
    /// Where the config agent keeps its status in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(format!("{STATUS_FILE}.json"))
    }

    /// The status the config agent last wrote to `state_dir`.
    pub fn read(state_dir: &Path) -> Result<Status, StatusError> {
        let bytes = std::fs::read(Status::path(state_dir)).map_err(StatusError::Read)?;
        serde_json::from_slice(&bytes).map_err(StatusError::Invalid)
    }
}

/// Why [`Status::read`] found no status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The file could not be read (no agent ever ran with this state
    /// directory, or it is not readable).
    #[error("{0}")]
    Read(std::io::Error),
    /// The file is not a status record.
    #[error("not valid: {0}")]
    Invalid(serde_json::Error),
}
