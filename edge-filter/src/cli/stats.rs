//! `edge-filter stats`.

use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edge_filter::kernel::{attach, counters};
use serde::Serialize;

use super::pins::PinSource;

/// Show packets and bytes by verdict reason, read from the pinned maps.
///
/// Reasons: pass_no_match, pass_allowlist, pass_non_ip,
/// malformed_{pass,drop}_<class>, {drop,monitor}_{addr_port,prefix_port,addr,prefix}.
/// Rows with zero packets are hidden unless --all.
///
/// --watch SECONDS refreshes in place every SECONDS (fractions allowed) and
/// adds rates per second since the previous sample; Ctrl-C exits. With
/// --json it prints one JSON object per sample (JSON Lines) instead.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Interface (default: every attached interface).
    #[arg(long, short)]
    pub iface: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show reasons with zero packets too.
    #[arg(long)]
    pub all: bool,
    /// Refresh every SECONDS with rates per second; --json: one object per
    /// sample (JSON Lines).
    #[arg(long, short, value_name = "SECONDS")]
    pub watch: Option<f64>,
    #[command(flatten)]
    pub pins: PinSource,
}

#[derive(Serialize)]
struct IfaceStats {
    iface: String,
    totals: counters::Totals,
    counters: Vec<counters::ReasonCount>,
}

pub fn run(a: StatsArgs) -> anyhow::Result<()> {
    if let Some(secs) = a.watch {
        return watch::run(&a, secs);
    }
    let pins = a.pins.resolve()?;
    let ifaces = pins.ifaces_required(a.iface.as_deref())?;
    let paths = pins.paths;
    let mut out = Vec::new();
    for iface in ifaces {
        let maps = attach::open_pinned(&paths, &iface)?;
        let (rows, totals) = counters::named(&maps.counters()?);
        out.push(IfaceStats {
            iface,
            totals,
            counters: rows,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for s in out {
        println!(
            "{}: {} passed, {} dropped, {} monitored",
            s.iface, s.totals.passed, s.totals.dropped, s.totals.monitored
        );
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY);
        t.set_header(["reason", "verdict", "packets", "bytes"]);
        for r in s.counters.iter().filter(|r| a.all || r.packets > 0) {
            t.add_row([
                r.reason.clone(),
                r.verdict.to_string(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}

/// `--watch`: sample, print, sleep, until SIGINT/SIGTERM or a closed pipe.
mod watch {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
    use edge_filter::kernel::{attach, counters, maps::EntryMaps};
    use serde::Serialize;
    use time::OffsetDateTime;

    use super::StatsArgs;

    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }

    /// One reason in one sample.
    #[derive(Serialize)]
    struct Row {
        reason: String,
        verdict: &'static str,
        packets: u64,
        bytes: u64,
        /// Since the previous sample (absent in the first).
        #[serde(skip_serializing_if = "Option::is_none")]
        packets_delta: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_delta: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        packets_per_s: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_per_s: Option<f64>,
    }

    #[derive(Serialize)]
    struct IfaceSample {
        iface: String,
        totals: counters::Totals,
        /// Packets per second by verdict since the previous sample.
        #[serde(skip_serializing_if = "Option::is_none")]
        rates: Option<VerdictRates>,
        counters: Vec<Row>,
    }

    #[derive(Serialize, Default)]
    struct VerdictRates {
        passed_per_s: f64,
        dropped_per_s: f64,
        monitored_per_s: f64,
    }

    #[derive(Serialize)]
    struct Sample {
        /// 0, 1, 2, ...
        sample: u64,
        #[serde(with = "time::serde::rfc3339")]
        time: OffsetDateTime,
        /// Seconds since the previous sample (measured, monotonic).
        #[serde(skip_serializing_if = "Option::is_none")]
        interval_s: Option<f64>,
        interfaces: Vec<IfaceSample>,
    }

    fn rate(delta: u64, secs: f64) -> f64 {
        if secs > 0.0 {
            (delta as f64 / secs * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    }

    pub fn run(a: &StatsArgs, secs: f64) -> anyhow::Result<()> {
        if !(secs.is_finite() && secs >= 0.05) {
            anyhow::bail!("--watch needs at least 0.05 seconds between samples");
        }
        let pins = a.pins.resolve()?;
        let ifaces = pins.ifaces_required(a.iface.as_deref())?;
        let paths = pins.paths;
        let maps: Vec<(String, EntryMaps)> = ifaces
            .into_iter()
            .map(|i| attach::open_pinned(&paths, &i).map(|m| (i, m)))
            .collect::<Result<_, _>>()?;
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let period = Duration::from_secs_f64(secs);
        let mut prev: Option<(Instant, Vec<Vec<edge_filter_common::Counter>>)> = None;
        let mut n = 0u64;
        let mut next = Instant::now();
        while !STOP.load(Ordering::Relaxed) {
            let now = Instant::now();
            let current: Vec<Vec<edge_filter_common::Counter>> = maps
                .iter()
                .map(|(_, m)| m.counters())
                .collect::<Result<_, _>>()?;
            let interval = prev
                .as_ref()
                .map(|(t, _)| now.duration_since(*t).as_secs_f64());
            let sample = Sample {
                sample: n,
                time: OffsetDateTime::now_utc(),
                interval_s: interval.map(|s| (s * 1e6).round() / 1e6),
                interfaces: maps
                    .iter()
                    .enumerate()
                    .map(|(i, (iface, _))| {
                        let before = prev.as_ref().map(|(_, c)| &c[i]);
                        iface_sample(iface, &current[i], before, interval)
                    })
                    .collect(),
            };
            let text = if a.json {
                format!("{}\n", serde_json::to_string(&sample)?)
            } else {
                render(&sample, a.all, secs, tty)
            };
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => {}
                // `| head` closed the pipe: done.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            prev = Some((now, current));
            n += 1;
            // Sleep in small steps so Ctrl-C is quick; keep a fixed cadence.
            next += period;
            while !STOP.load(Ordering::Relaxed) {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(50)));
            }
            if Instant::now() > next + period {
                // Fell behind (suspended): do not burst to catch up.
                next = Instant::now();
            }
        }
        Ok(())
    }

    fn iface_sample(
        iface: &str,
        now: &[edge_filter_common::Counter],
        before: Option<&Vec<edge_filter_common::Counter>>,
        interval: Option<f64>,
    ) -> IfaceSample {
        let (rows, totals) = counters::named(now);
        let mut rates = interval.map(|_| VerdictRates::default());
        let counters = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let delta = before.map(|b| {
                    let b = b.get(i).copied().unwrap_or_default();
                    (
                        r.packets.saturating_sub(b.packets),
                        r.bytes.saturating_sub(b.bytes),
                    )
                });
                let secs = interval.unwrap_or(0.0);
                if let (Some(rt), Some((dp, _))) = (rates.as_mut(), delta) {
                    let slot = match r.verdict {
                        "drop" => &mut rt.dropped_per_s,
                        "monitor" => &mut rt.monitored_per_s,
                        _ => &mut rt.passed_per_s,
                    };
                    *slot += rate(dp, secs);
                }
                Row {
                    reason: r.reason,
                    verdict: r.verdict,
                    packets: r.packets,
                    bytes: r.bytes,
                    packets_delta: delta.map(|d| d.0),
                    bytes_delta: delta.map(|d| d.1),
                    packets_per_s: delta.map(|d| rate(d.0, secs)),
                    bytes_per_s: delta.map(|d| rate(d.1, secs)),
                }
            })
            .collect();
        IfaceSample {
            iface: iface.to_string(),
            totals,
            rates,
            counters,
        }
    }

    fn render(s: &Sample, all: bool, secs: f64, tty: bool) -> String {
        let mut out = String::new();
        if tty {
            // Home the cursor and clear the screen: the table redraws in place.
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&format!(
            "edge-filter stats: every {secs}s, sample {} at {} (Ctrl-C to exit)\n",
            s.sample,
            s.time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ));
        for i in &s.interfaces {
            let r = i.rates.as_ref();
            out.push_str(&format!(
                "{}: {} passed, {} dropped, {} monitored{}\n",
                i.iface,
                i.totals.passed,
                i.totals.dropped,
                i.totals.monitored,
                r.map_or(String::new(), |r| format!(
                    " ({:.1}/s passed, {:.1}/s dropped, {:.1}/s monitored)",
                    r.passed_per_s, r.dropped_per_s, r.monitored_per_s
                ))
            ));
            let mut t = Table::new();
            t.load_preset(UTF8_BORDERS_ONLY);
            t.set_header([
                "reason",
                "verdict",
                "packets",
                "bytes",
                "packets/s",
                "bytes/s",
            ]);
            for row in i.counters.iter().filter(|row| all || row.packets > 0) {
                let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                t.add_row([
                    row.reason.clone(),
                    row.verdict.to_string(),
                    row.packets.to_string(),
                    row.bytes.to_string(),
                    f(row.packets_per_s),
                    f(row.bytes_per_s),
                ]);
            }
            out.push_str(&format!("{t}\n"));
        }
        if !tty {
            out.push('\n');
        }
        out
    }
}
