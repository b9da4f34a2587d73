//! The embedded XDP object and loading it into the kernel.

use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader, programs::Xdp};
use edge_filter_common as abi;

use crate::error::{Error, Result};
use crate::trust::is_permission;

/// The eBPF object built by `build.rs`, embedded so the agent is one file.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edge-filter"));

/// Map capacities of the v1 maps (`max_entries`): the benchmark's "before"
/// programs. The production program (datapath v2) sizes its maps from the
/// set (capacity tiers, grown as needed), so the agent accepts these keys
/// for old configurations and warns that they are ignored
/// ([`Capacities::ignored`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capacities {
    /// Exact IPv4 addresses.
    pub addr_v4: u32,
    /// Exact IPv6 addresses.
    pub addr_v6: u32,
    /// IPv4 prefixes.
    pub prefix_v4: u32,
    /// IPv6 prefixes.
    pub prefix_v6: u32,
    /// IPv4 address+port and prefix+port entries (each map).
    pub port_v4: u32,
    /// IPv6 address+port and prefix+port entries (each map).
    pub port_v6: u32,
    /// Allowlist entries per family.
    pub allow: u32,
    /// Entry ids with their own hit counters (`ENTRY_STATS`); hits on
    /// higher ids are counted together in `STATS_OVERFLOW`. Memory:
    /// this x 24 bytes x possible CPUs (the map is per-CPU).
    pub entry_stats: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            addr_v4: abi::DEFAULT_ADDR_V4_ENTRIES,
            addr_v6: abi::DEFAULT_ADDR_V6_ENTRIES,
            prefix_v4: abi::DEFAULT_PREFIX_ENTRIES,
            prefix_v6: abi::DEFAULT_PREFIX_ENTRIES,
            port_v4: abi::DEFAULT_PORT_ENTRIES,
            port_v6: abi::DEFAULT_PORT_ENTRIES,
            allow: abi::DEFAULT_ALLOW_ENTRIES,
            entry_stats: abi::DEFAULT_ENTRY_STATS_ENTRIES,
        }
    }
}

impl Capacities {
    /// Small maps for tests and replay of small sets.
    pub fn small() -> Self {
        Capacities {
            addr_v4: 65536,
            addr_v6: 65536,
            prefix_v4: 65536,
            prefix_v6: 65536,
            port_v4: 65536,
            port_v6: 65536,
            allow: 4096,
            entry_stats: 65536,
        }
    }

    /// A warning naming the keys of `self` that differ from the defaults,
    /// which datapath v2 ignores; `None` when none does.
    pub fn ignored(&self) -> Option<String> {
        let d = Capacities::default();
        let mut keys = Vec::new();
        for (name, mine, def) in [
            ("addr_v4", self.addr_v4, d.addr_v4),
            ("addr_v6", self.addr_v6, d.addr_v6),
            ("prefix_v4", self.prefix_v4, d.prefix_v4),
            ("prefix_v6", self.prefix_v6, d.prefix_v6),
            ("port_v4", self.port_v4, d.port_v4),
            ("port_v6", self.port_v6, d.port_v6),
            ("allow", self.allow, d.allow),
            ("entry_stats", self.entry_stats, d.entry_stats),
        ] {
            if mine != def {
                keys.push(format!("{name} = {mine}"));
            }
        }
        (!keys.is_empty()).then(|| {
            format!(
                "map capacities are ignored ({}): the maps are sized from the entry set and grow with it \
                 (capacity tiers), and every entry has its own hit counter",
                keys.join(", ")
            )
        })
    }

    /// `(map name, capacity)` for every entry map, in
    /// [`abi::ENTRY_MAPS`] order.
    pub fn per_map(&self) -> [(&'static str, u32); 10] {
        let caps = [
            self.allow,
            self.allow,
            self.addr_v4,
            self.addr_v6,
            self.prefix_v4,
            self.prefix_v6,
            self.port_v4,
            self.port_v6,
            self.port_v4,
            self.port_v6,
        ];
        std::array::from_fn(|i| (abi::ENTRY_MAPS[i], caps[i]))
    }
}

/// The embedded production object (datapath v2).
pub fn object() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        return Err(Error::NoObject);
    }
    Ok(OBJECT)
}

/// Load the production object with v2 maps of `sizes` (a tier's,
/// `Tier::sizes`) and its XDP program into the kernel; every map named in
/// `pins` is the map pinned at that path (its contents and counters stay:
/// a second instance of the program on the same maps, to attach again to a
/// recreated interface). Nothing is attached or pinned.
pub fn load(sizes: &crate::kernel::v2maps::Sizes, pins: &[(&str, PathBuf)]) -> Result<Ebpf> {
    load_v2_object(object()?, abi::PROGRAM_NAME, sizes, pins, &[])
}

/// Load the v1 program `program` of `object` (`bench-ebpf`'s
/// `edge_filter_v1`: `cargo xtask bench` compares the old layout with the
/// new one) with v1 maps of `caps`.
pub fn load_v1(object: &[u8], program: &str, caps: &Capacities) -> Result<Ebpf> {
    load_inner(object, program, caps, &[])
}

/// The XDP program `name` of a loaded object.
pub fn xdp_named<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load(aya::EbpfError::NoBTF))?
        .try_into()
        .map_err(|source| Error::Program {
            op: format!("finding the XDP program {name}"),
            source,
        })
}

fn load_inner(
    object: &[u8],
    program: &str,
    caps: &Capacities,
    pins: &[(&'static str, PathBuf)],
) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (name, n) in caps.per_map() {
        loader.map_max_entries(name, n.max(1));
    }
    loader.map_max_entries(abi::MAP_ENTRY_STATS, caps.entry_stats.max(1));
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(|e| {
        if io_source(&e).is_some_and(is_permission) {
            Error::Permission {
                op: "creating BPF maps".into(),
            }
        } else {
            Error::Load(e)
        }
    })?;
    let prog = xdp_named(&mut ebpf, program)?;
    prog.load().map_err(load_error)?;
    Ok(ebpf)
}

/// Load an object with v2 maps of `sizes` and load its XDP program
/// `program`: every map named in `pins` is the map pinned at that path
/// (reused: the per-reason counters, the last verdict, events and
/// sampling of an attachment that moves to a new tier), `extra` sets the
/// `max_entries` of other maps. Nothing is attached or pinned.
pub fn load_v2_object(
    object: &[u8],
    program: &str,
    sizes: &crate::kernel::v2maps::Sizes,
    pins: &[(&str, PathBuf)],
    extra: &[(&str, u32)],
) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (name, n) in extra {
        loader.map_max_entries(name, (*n).max(1));
    }
    sizes.apply(&mut loader);
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).map_err(|e| {
        if io_source(&e).is_some_and(is_permission) {
            Error::Permission {
                op: "creating BPF maps".into(),
            }
        } else {
            Error::Load(e)
        }
    })?;
    let prog: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::Load(aya::EbpfError::NoBTF))?
        .try_into()
        .map_err(|source| Error::Program {
            op: format!("finding the XDP program {program}"),
            source,
        })?;
    prog.load().map_err(load_error)?;
    Ok(ebpf)
}

/// The XDP program of a loaded object.
pub fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(abi::PROGRAM_NAME)
        .ok_or_else(|| Error::Load(aya::EbpfError::NoBTF))?
        .try_into()
        .map_err(|source| Error::Program {
            op: "finding the XDP program".into(),
            source,
        })
}

/// Turn a program load failure into the explanation an operator needs.
fn load_error(e: aya::programs::ProgramError) -> Error {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if is_permission(&io_error) {
                return Error::Permission {
                    op: "loading the XDP program".into(),
                };
            }
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            Error::Verifier {
                errno: io_error,
                tail,
            }
        }
        source => Error::Program {
            op: "loading the XDP program".into(),
            source,
        },
    }
}

/// The first `io::Error` in an error's source chain.
pub(crate) fn io_source<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}
