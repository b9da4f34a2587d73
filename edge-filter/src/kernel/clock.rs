//! Kernel time to wall-clock time: the XDP program stamps events with
//! `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) and per-entry last hits with
//! `bpf_jiffies64()`; [`Clock`] turns either into an `OffsetDateTime`.

use time::OffsetDateTime;

/// Converts kernel timestamps to wall-clock time, from one reading of the
/// clocks: `bpf_ktime_get_ns()` values (CLOCK_MONOTONIC, events) and
/// `bpf_jiffies64()` values (per-entry last hits).
///
/// Jiffies: the kernel's tick counter, `HZ` per second. Its relation to
/// CLOCK_MONOTONIC is read once per process from `/proc/timer_list`
/// (`now at N nsecs` and `jiffies: J`, root only), twice 60 ms apart to
/// learn `HZ` (the nearest of the values Linux can be built with). Without
/// that file last hits are unknown (`None`); counts are unaffected.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    mono_ns: u64,
    wall: OffsetDateTime,
    jiffies: Option<JiffiesRef>,
}

/// A (CLOCK_MONOTONIC ns, jiffies) pair and the tick rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JiffiesRef {
    /// CLOCK_MONOTONIC at `jiffies`.
    pub mono_ns: u64,
    /// The jiffies value then.
    pub jiffies: u64,
    /// Ticks per second.
    pub hz: u32,
}

/// `(now at, jiffies)` from the text of `/proc/timer_list`.
pub fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .parse()
            .ok()
    })?;
    let j = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: ")?.trim().parse().ok())?;
    Some((now, j))
}

/// The `HZ` Linux can be built with nearest to `ticks` per `ns`.
pub fn nearest_hz(ticks: u64, ns: u64) -> Option<u32> {
    if ns == 0 {
        return None;
    }
    let rate = ticks as f64 * 1e9 / ns as f64;
    [24u32, 48, 100, 250, 300, 1000, 1024, 1200]
        .into_iter()
        .min_by(|a, b| {
            (f64::from(*a) - rate)
                .abs()
                .total_cmp(&(f64::from(*b) - rate).abs())
        })
}

fn jiffies_ref() -> Option<JiffiesRef> {
    static REF: std::sync::OnceLock<Option<JiffiesRef>> = std::sync::OnceLock::new();
    *REF.get_or_init(|| {
        let read = || parse_timer_list(&std::fs::read_to_string("/proc/timer_list").ok()?);
        let (m0, j0) = read()?;
        std::thread::sleep(std::time::Duration::from_millis(60));
        let (m1, j1) = read()?;
        let hz = nearest_hz(j1.checked_sub(j0)?, m1.checked_sub(m0)?)?;
        Some(JiffiesRef {
            mono_ns: m1,
            jiffies: j1,
            hz,
        })
    })
}

/// The kernel's `jiffies` now (the clock `bpf_jiffies64` reads), from the
/// reference taken once from `/proc/timer_list` and the monotonic clock;
/// `None` when that reference is unknown.
pub fn jiffies_now() -> Option<u64> {
    let r = jiffies_ref()?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let delta = (mono - r.mono_ns as i128) * i128::from(r.hz) / 1_000_000_000;
    u64::try_from(r.jiffies as i128 + delta).ok()
}

impl Clock {
    /// Read both clocks now.
    pub fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into a timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock {
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            wall: OffsetDateTime::now_utc(),
            jiffies: jiffies_ref(),
        }
    }

    /// A clock from explicit readings (tests, or callers with their own).
    pub fn at(mono_ns: u64, wall: OffsetDateTime, jiffies: Option<JiffiesRef>) -> Clock {
        Clock {
            mono_ns,
            wall,
            jiffies,
        }
    }

    /// Wall-clock time of a `bpf_jiffies64()` value; `None` for 0 (never)
    /// or when the jiffies reference is unknown.
    pub fn wall_of_jiffies(&self, j: u64) -> Option<OffsetDateTime> {
        let r = self.jiffies?;
        if j == 0 {
            return None;
        }
        let delta_ns = (j as i128 - r.jiffies as i128) * 1_000_000_000 / i128::from(r.hz);
        let mono = (r.mono_ns as i128 + delta_ns).clamp(1, i128::from(u64::MAX)) as u64;
        self.wall(mono)
    }

    /// Wall-clock time of a monotonic timestamp; `None` for 0 (never).
    pub fn wall(&self, mono_ns: u64) -> Option<OffsetDateTime> {
        if mono_ns == 0 {
            return None;
        }
        let ago = self.mono_ns.saturating_sub(mono_ns);
        Some(self.wall - time::Duration::nanoseconds(ago.min(i64::MAX as u64) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_list_and_hz() {
        let text = "Timer List Version: v0.9\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 13646505282728 nsecs\n\ncpu: 0\n jiffies: 4298303868\n";
        assert_eq!(
            parse_timer_list(text),
            Some((13_646_505_282_728, 4_298_303_868))
        );
        // 15 ticks in 60 ms: 250 Hz; 16 in 60.4 ms too; 18 in 60 ms: 300 Hz.
        assert_eq!(nearest_hz(15, 60_000_000), Some(250));
        assert_eq!(nearest_hz(16, 60_400_000), Some(250));
        assert_eq!(nearest_hz(18, 60_000_000), Some(300));
        assert_eq!(nearest_hz(60, 60_000_000), Some(1000));
        assert_eq!(nearest_hz(6, 60_000_000), Some(100));
    }
}
