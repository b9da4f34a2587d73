//! Keeping the filter in force on its interface while an agent runs.
//!
//! Deleting an interface detaches its XDP program: the pinned link lives on
//! but filters nothing, and a new interface with the same name starts
//! without a filter. Nothing fails loudly, so the agent watches: rtnetlink
//! link events ([`crate::kernel::netlink::LinkMonitor`]) make it look at once, and a
//! check every second catches anything the events missed. When the interface
//! is gone the agent reports an *enforcement gap*; when an interface with
//! that name is back it attaches the program again with the same pinned
//! maps (entries, counters and ids stay) and reports how long the gap
//! lasted. Counts and durations are published in status and metrics.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::kernel::attach::{self, LinkHealth, Mode};
use crate::kernel::paths::Paths;
use crate::kernel::program::Capacities;
use crate::ops::status::IfaceHealth;

/// The watch over one interface.
pub struct Watch {
    paths: Paths,
    mode: Mode,
    caps: Capacities,
    health: IfaceHealth,
    /// The current gap's start (monotonic), while one lasts.
    gap_start: Option<Instant>,
    /// Time of closed gaps.
    closed: Duration,
    /// The last re-attach failure, logged once per distinct message.
    last_error: Option<String>,
}

impl Watch {
    /// Watch `iface`, just attached or adopted by this agent. `reattached`:
    /// the adoption found the pinned link filtering nothing and attached the
    /// program again, so traffic passed unfiltered for an unknown time
    /// before this agent started (counted as one gap of unknown length).
    pub fn new(
        paths: &Paths,
        iface: &str,
        mode: Mode,
        caps: &Capacities,
        reattached: bool,
    ) -> Watch {
        Watch {
            paths: paths.clone(),
            mode,
            caps: *caps,
            health: IfaceHealth {
                name: iface.to_string(),
                attached: true,
                gaps: u64::from(reattached),
                ..Default::default()
            },
            gap_start: None,
            closed: Duration::ZERO,
            last_error: None,
        }
    }

    /// The interface's name.
    pub fn iface(&self) -> &str {
        &self.health.name
    }

    /// The report, with the current gap's time so far.
    pub fn health(&self) -> IfaceHealth {
        let mut h = self.health.clone();
        h.gap_seconds =
            (self.closed + self.gap_start.map_or(Duration::ZERO, |s| s.elapsed())).as_secs_f64();
        h
    }

    /// Record a count of the kernel's maps against the desired set.
    pub fn set_census(&mut self, kernel_entries: usize, missing: usize) {
        self.health.kernel_entries = Some(kernel_entries);
        self.health.missing_entries = Some(missing);
        self.health.kernel_checked = Some(OffsetDateTime::now_utc());
    }

    /// Count what the kernel's maps hold against `set`: from the last sync
    /// when it landed whole (every write confirmed by the kernel, so its
    /// shadow copy is what the kernel holds), else read back from the
    /// kernel. Logs when entries are missing.
    pub fn count(&mut self, maps: &crate::kernel::maps::EntryMaps, set: &crate::entry::EntrySet) {
        let c = match maps.shadow_census(set) {
            Some(c) => c,
            None => match maps.read() {
                Ok(kernel) => kernel.census(set),
                Err(e) => {
                    log::error!("{}: reading the maps back: {e}", self.health.name);
                    return;
                }
            },
        };
        if c.missing > 0 {
            log::error!(
                "{}: the kernel enforces {} entries; {} of the desired set are missing",
                self.health.name,
                c.entries,
                c.missing
            );
        }
        self.set_census(c.entries, c.missing);
    }

    /// Whether the filter is in force, as of the last check.
    pub fn attached(&self) -> bool {
        self.health.attached
    }

    /// Ask the kernel whether the filter is in force; attach again when the
    /// interface is back after a gap. Logs every change. Returns true when
    /// the program was attached again (the caller may want to resync).
    pub fn check(&mut self) -> bool {
        let iface = self.health.name.clone();
        let health = match attach::link_health(&self.paths, &iface) {
            Ok(h) => h,
            Err(e) => {
                self.note_error(format!("{iface}: checking the attachment: {e}"));
                return false;
            }
        };
        match &health {
            LinkHealth::Attached { .. } => {
                if self.gap_start.is_some() {
                    // Someone else put it back (an operator's `run`
                    // cannot: we hold the lock; a restore of the pins can).
                    self.end_gap(&iface, "the filter is in force again");
                }
                false
            }
            LinkHealth::NotPinned => {
                // Detached by an operator (`edge-filter detach`): not ours
                // to undo, but nothing is filtered while this agent runs
                // (`detach` says the same to the operator).
                self.start_gap(
                    &iface,
                    &format!(
                        "the filter was removed from {iface} (`edge-filter detach`); this agent does not attach it again: restart it to filter {iface} again, or stop it"
                    ),
                );
                false
            }
            LinkHealth::Defunct {
                iface_ifindex: None,
                ..
            } => {
                self.start_gap(&iface, &health.describe(&iface));
                false
            }
            LinkHealth::Defunct { .. } => {
                self.start_gap(&iface, &health.describe(&iface));
                match attach::reattach(&self.paths, &iface, self.mode, &self.caps) {
                    Ok(mode) => {
                        self.last_error = None;
                        self.end_gap(&iface, &format!("re-attached in {mode} mode"));
                        true
                    }
                    Err(e) => {
                        self.note_error(format!(
                            "{iface}: attaching again failed (will retry): {e}"
                        ));
                        false
                    }
                }
            }
        }
    }

    fn start_gap(&mut self, iface: &str, why: &str) {
        self.health.detail = Some(why.to_string());
        if self.gap_start.is_some() {
            return;
        }
        self.gap_start = Some(Instant::now());
        self.health.gap_since = Some(OffsetDateTime::now_utc());
        self.health.gaps += 1;
        self.health.attached = false;
        log::error!(
            "{iface}: enforcement gap started: {why}; traffic on {iface} passes unfiltered until the filter is back"
        );
    }

    fn end_gap(&mut self, iface: &str, how: &str) {
        let Some(start) = self.gap_start.take() else {
            return;
        };
        let lasted = start.elapsed();
        self.closed += lasted;
        self.health.attached = true;
        self.health.detail = None;
        self.health.gap_since = None;
        log::warn!(
            "{iface}: {how}; the enforcement gap lasted {:.3} s",
            lasted.as_secs_f64()
        );
    }

    fn note_error(&mut self, msg: String) {
        if self.last_error.as_deref() != Some(msg.as_str()) {
            log::error!("{msg}");
            self.last_error = Some(msg);
        }
    }
}

/// Start the link monitor, or say why the agent runs on the periodic check
/// alone.
pub fn monitor() -> Option<crate::kernel::netlink::LinkMonitor> {
    match crate::kernel::netlink::LinkMonitor::start() {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!(
                "cannot follow interface events over netlink ({e}); a deleted or recreated interface is noticed by the check every second"
            );
            None
        }
    }
}

/// The next link event, or never when there is no monitor (for
/// `tokio::select!`).
pub async fn next_event(
    m: &mut Option<crate::kernel::netlink::LinkMonitor>,
) -> Option<crate::kernel::netlink::LinkEvent> {
    match m {
        Some(m) => match m.next().await {
            Some(e) => Some(e),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// How often the attachment is checked without an event.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often the agent derives the last hit of each entry from the
/// per-entry counters (`EntryMaps::note_hits`): the datapath keeps no
/// timestamp, so a last hit is known to this precision (a reader in
/// between sees the counters moved and says "now").
pub const HIT_PASS_EVERY: Duration = Duration::from_secs(1);
