//! Maps and helpers every edge-filter program uses the same way: the
//! per-reason counters, the last verdict (tests and replay only) and the
//! sampled events (see `docs/semantics.md`).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use edge_filter_common::{
    Counter, EVENTS_RING_BYTES, Event, LastVerdict, REASON_COUNT, Reason, SampleConfig, SampleState,
};

use crate::parse::Parsed;

/// Packets and bytes per [`Reason`].
#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// The last verdict of this CPU (written only with `CONFIG_RECORD_LAST`).
#[map]
pub static LAST: PerCpuArray<LastVerdict> = PerCpuArray::with_max_entries(1, 0);

/// Sampled drop/monitor verdicts.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Sampling settings (slot 0).
#[map]
pub static SAMPLE: Array<SampleConfig> = Array::with_max_entries(1, 0);

/// Per-CPU sampling state and outcome counters.
#[map]
pub static SAMPLE_STATE: PerCpuArray<SampleState> = PerCpuArray::with_max_entries(1, 0);

/// Count one verdict of `reason` on a `len`-byte frame; the reason's
/// packets on this CPU so far (0 if the counter is missing).
#[inline(always)]
pub fn count_reason(reason: Reason, len: u64) -> u64 {
    match COUNTERS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, XDP runs with preemption disabled.
        Some(c) => unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            (*c).packets
        },
        None => 0,
    }
}

/// Record the verdict in [`LAST`].
#[inline(always)]
pub fn record_last(reason: Reason, entry_id: u32) {
    if let Some(l) = LAST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, XDP runs with preemption disabled.
        unsafe {
            (*l).reason = reason;
            (*l).entry_id = entry_id;
        }
    }
}

/// Emit one in `every` drop/monitor verdicts of this CPU into `EVENTS`, at
/// most `cap_per_sec` per second; a full ring counts as lost.
#[inline(never)]
pub fn sample(parsed: &Parsed, reason: Reason, entry_id: u32, len: u64) {
    let Some(cfg) = SAMPLE.get(0) else { return };
    let Some(st) = SAMPLE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, XDP runs with preemption disabled.
    let st = unsafe { &mut *st };
    if cfg.every == 0 {
        return;
    }
    if st.skip > 1 {
        st.skip -= 1;
        return;
    }
    st.skip = cfg.every;
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(st.window_start) >= 1_000_000_000 {
        st.window_start = now;
        st.in_window = 0;
    }
    if cfg.cap_per_sec != 0 && st.in_window >= cfg.cap_per_sec {
        st.capped += 1;
        return;
    }
    st.in_window += 1;
    let Some(mut e) = EVENTS.reserve::<Event>(0) else {
        st.lost += 1;
        return;
    };
    let mut ev = Event {
        time_ns: now,
        len: len as u32,
        reason,
        entry_id,
        ..Event::default()
    };
    let ports = match parsed {
        Parsed::V4 { src, dst, ports } => {
            ev.family = 4;
            ev.src[..4].copy_from_slice(src);
            ev.dst[..4].copy_from_slice(dst);
            ports
        }
        Parsed::V6 { src, dst, ports } => {
            ev.family = 6;
            ev.src = *src;
            ev.dst = *dst;
            ports
        }
        _ => &None,
    };
    if let Some(p) = ports {
        ev.proto = p.proto;
        ev.has_ports = 1;
        ev.sport = p.sport;
        ev.dport = p.dport;
    }
    e.write(ev);
    e.submit(0);
    st.emitted += 1;
}
