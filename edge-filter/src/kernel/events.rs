//! Sampled drop and monitor events from the `EVENTS` ring buffer.
//!
//! The XDP program writes an [`abi::Event`] for one in `every` drop or
//! monitor verdicts per CPU, at most `cap_per_sec` per second per CPU, and
//! only while [`abi::CONFIG_SAMPLE_EVENTS`] is set: with the bit clear the
//! datapath never touches the sampling maps. A full ring buffer counts the
//! event as lost ([`SampleTotals::lost`]); the cap counts it as capped.
//!
//! Sampling is switched on by a reader for its own lifetime ([`Sampling`]),
//! not by the agent's config: events cost nothing unless someone is
//! reading them, and a reader that goes away switches them off again (the
//! agent keeps whatever the bit says across its syncs). One reader per
//! interface: a second would split the ring buffer's events between them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues, RingBuf};
use edge_filter_common::{self as abi, Event, SampleConfig, SampleState};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::kernel::attach;
use crate::kernel::clock::Clock;
use crate::kernel::maps::{EntryMaps, possible_cpus};
use crate::kernel::paths::Paths;

fn open(paths: &Paths, iface: &str, name: &str) -> Result<Map> {
    let p = paths.map(iface, name);
    let data = MapData::from_pin(&p).map_err(|source| {
        // Pins of an older build lack the sampling maps: say so.
        attach::incompatible_pins(paths, iface).unwrap_or_else(|| Error::Map {
            op: format!("opening pinned map {}", p.display()),
            source,
        })
    })?;
    Map::from_map_data(data).map_err(|source| Error::Map {
        op: format!("opening pinned map {}", p.display()),
        source,
    })
}

fn map_err(op: &str) -> impl FnOnce(aya::maps::MapError) -> Error + '_ {
    move |source| Error::Map {
        op: op.to_string(),
        source,
    }
}

/// Sampling switched on for one interface; switched off again by
/// [`Sampling::stop`] (or on drop).
pub struct Sampling {
    iface: String,
    maps: EntryMaps,
    sample: Array<MapData, SampleConfig>,
    state: PerCpuArray<MapData, SampleState>,
    on: bool,
}

impl Sampling {
    /// Switch sampling on: one in `every` verdicts per CPU, at most
    /// `cap_per_sec` per second per CPU (0: no cap). The per-CPU state and
    /// its counters start from zero. Fails when sampling is already on,
    /// unless `takeover` (a reader that was killed leaves it on).
    pub fn start(
        paths: &Paths,
        iface: &str,
        every: u32,
        cap_per_sec: u32,
        takeover: bool,
    ) -> Result<Sampling> {
        let maps = attach::open_pinned(paths, iface)?;
        let sample: Array<MapData, SampleConfig> = open(paths, iface, abi::MAP_SAMPLE)?
            .try_into()
            .map_err(map_err("opening SAMPLE"))?;
        let mut state: PerCpuArray<MapData, SampleState> =
            open(paths, iface, abi::MAP_SAMPLE_STATE)?
                .try_into()
                .map_err(map_err("opening SAMPLE_STATE"))?;
        if maps.config()?.flags & abi::CONFIG_SAMPLE_EVENTS != 0 && !takeover {
            return Err(Error::SamplingBusy(iface.to_string()));
        }
        let zero = PerCpuValues::try_from(vec![SampleState::default(); possible_cpus()?]).map_err(
            |source| Error::Pin {
                op: "building per-CPU values".into(),
                source,
            },
        )?;
        state
            .set(0, zero, 0)
            .map_err(map_err("writing SAMPLE_STATE"))?;
        let mut s = Sampling {
            iface: iface.to_string(),
            maps,
            sample,
            state,
            on: false,
        };
        s.sample
            .set(0, SampleConfig { every, cap_per_sec }, 0)
            .map_err(map_err("writing SAMPLE"))?;
        s.maps.set_sampling_flag(true)?;
        s.on = true;
        Ok(s)
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Outcome counters summed over CPUs.
    pub fn totals(&self) -> Result<SampleTotals> {
        let per_cpu = self
            .state
            .get(&0, 0)
            .map_err(map_err("reading SAMPLE_STATE"))?;
        let mut t = SampleTotals::default();
        for s in per_cpu.iter() {
            t.emitted += s.emitted;
            t.lost += s.lost;
            t.capped += s.capped;
        }
        Ok(t)
    }

    /// Switch sampling off again.
    pub fn stop(&mut self) -> Result<()> {
        if self.on {
            self.maps.set_sampling_flag(false)?;
            self.sample
                .set(0, SampleConfig::default(), 0)
                .map_err(map_err("writing SAMPLE"))?;
            self.on = false;
        }
        Ok(())
    }
}

impl Drop for Sampling {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::warn!("switching event sampling off on {}: {e}", self.iface);
        }
    }
}

/// Whether sampling is on for an interface (the config bit).
pub fn sampling_on(paths: &Paths, iface: &str) -> Result<bool> {
    let maps = attach::open_pinned(paths, iface)?;
    Ok(maps.config()?.flags & abi::CONFIG_SAMPLE_EVENTS != 0)
}

/// Sampling outcome counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SampleTotals {
    /// Events written to the ring buffer.
    pub emitted: u64,
    /// Samples dropped because the ring buffer was full.
    pub lost: u64,
    /// Samples dropped by the per-second cap.
    pub capped: u64,
}

/// The ring buffer of an interface.
pub fn open_ring(paths: &Paths, iface: &str) -> Result<RingBuf<MapData>> {
    open(paths, iface, abi::MAP_EVENTS)?
        .try_into()
        .map_err(map_err("opening EVENTS"))
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// When the verdict was made.
    #[serde(with = "time::serde::rfc3339::option")]
    pub time: Option<OffsetDateTime>,
    /// The interface.
    pub iface: String,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The IP protocol by name (`tcp` or `udp`: [`crate::entry::proto_name`],
    /// as `replay` names it). `None` for other packets (ICMP, ...): the
    /// program records the protocol only with ports, and printing its 0
    /// would name a protocol the packet did not have.
    pub proto: Option<String>,
    /// Source port.
    pub src_port: Option<u16>,
    /// Destination port.
    pub dst_port: Option<u16>,
    /// `drop` or `monitor`.
    pub verdict: &'static str,
    /// Counter reason, e.g. `drop_addr_port`.
    pub reason: String,
    /// Frame length.
    pub len: u32,
    /// Deciding entry id.
    pub entry_id: u32,
}

/// Decode a ring buffer record (`None` if it is not an [`Event`]).
pub fn decode(bytes: &[u8], iface: &str, clock: &Clock) -> Option<EventRecord> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data, read unaligned.
    let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let addr = |b: [u8; 16]| -> IpAddr {
        if e.family == 4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(b))
        }
    };
    let ports = e.has_ports != 0;
    Some(EventRecord {
        time: clock.wall(e.time_ns),
        iface: iface.to_string(),
        src: addr(e.src),
        dst: addr(e.dst),
        proto: ports.then(|| crate::entry::proto_name(e.proto)),
        src_port: ports.then(|| u16::from_be_bytes(e.sport)),
        dst_port: ports.then(|| u16::from_be_bytes(e.dport)),
        verdict: abi::ReasonInfo::decode(e.reason).map_or("unknown", |r| r.verdict()),
        reason: crate::kernel::counters::reason_name(e.reason),
        len: e.len,
        entry_id: e.entry_id,
    })
}
