//! The datapath, live and memory benchmarks of `ef-bench` (run by
//! `cargo xtask bench`). Each submodule is one report section; this module
//! holds what they share: the command line, the benchmark-only XDP object
//! (`bench-ebpf`), test frames, generated entry sets and statistics.
//!
//! Never tests: the figures are reported against targets, not asserted.

pub mod agent;
pub mod compile;
pub mod datapath;
pub mod datapath_v2;
pub mod live;
pub mod memory;
pub mod plot;
pub mod v1maps;
pub mod v2kernel;
pub mod verify;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap as AyaHash, MapData, ProgramArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramFd, Xdp},
};
use clap::{Args, CommandFactory as _, Parser, Subcommand, error::ErrorKind};
use edge_filter::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use edge_filter::kernel::maps::Desired;
use edge_filter::kernel::program::Capacities;
use edge_filter_common::{EntryValue, PortKeyV4, PortKeyV6};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Default `--rounds`.
pub const DEFAULT_ROUNDS: usize = 10;
/// Default `--seed` of the generated entry sets (fixed, so runs compare).
pub const DEFAULT_SEED: u64 = 0xED6E_F11E;
/// The hidden subcommand `ef-bench sync` re-executes itself with to measure
/// the agent's peak RSS in a fresh process.
pub const RSS_CHILD: &str = "__sync-rss-child";

/// `ef-bench --help`.
const LONG_ABOUT: &str = "\
Benchmarks of edge-filter, run by `cargo xtask bench` (which collects their
Markdown into docs/bench/REPORT.md): one subcommand per report section.
Never a test: the figures are reported against targets, not asserted.

Markdown goes to stdout (JSON with --json; --json-out FILE also writes the
JSON to FILE), progress to stderr. Every section needs root (it loads BPF
programs and maps).";

/// Options of `ef-bench` as a whole (what `cargo xtask bench` runs).
#[derive(Debug, Parser)]
#[command(
    name = "ef-bench",
    about = "Benchmarks of edge-filter (run by `cargo xtask bench`); each needs root",
    long_about = LONG_ABOUT,
    arg_required_else_help = true,
    args_override_self = true
)]
pub struct Cli {
    /// The benchmark to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The benchmarks: `sync` and `delta-loop` live in the `ef-bench` binary,
/// the others in this module's submodules.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Full sync of 1,000,000 IPv4 /32 + 100,000 IPv4 prefixes into empty
    /// maps (batch and per-element), a 1% churn delta on top of it, the
    /// read-back of the full maps and the agent's peak RSS; needs root.
    Sync(Opts),
    /// One full sync, then --rounds pairs of 1% deltas (there and back)
    /// through the feed agent's path, printing each time: a workload for
    /// `perf record` (profiling the delta path); needs root.
    DeltaLoop(Opts),
    /// The production agent's sync (datapath v2) of the same sets as
    /// `sync`: the first sync (tier compile, program load, image written),
    /// a 1% delta and back (`EntryMaps::apply_changes`), a restart
    /// (adoption and a new tier); kernel bytes per entry; needs root.
    SyncV2(Opts),
    /// The peak-RSS child of `sync` (this binary re-executed); not for
    /// direct use.
    #[command(name = RSS_CHILD, hide = true)]
    SyncRssChild(Opts),
    /// ns/packet in the kernel (BPF_PROG_TEST_RUN): bare XDP_DROP,
    /// parse-only, single lookups, edge-filter with and without per-entry
    /// stats, over 1K..1M entry sets, IPv4/IPv6, plain/VLAN; needs root.
    Datapath(Opts),
    /// pps dropped on a veth pair fed by an XDP live-frames generator:
    /// XDP_DROP, edge-filter (native), nftables netdev set, iptables raw +
    /// ipset, each with the same 1,000,000-address set; needs root.
    Live(Opts),
    /// Kernel map memory (fdinfo memlock) per entry at 1M entries against
    /// the formula of each map type; needs root.
    Memory(Opts),
    /// The real agent process (release `edge-filter run`) with one HTTP
    /// feed of 100k..10M entries: first sync, steady and peak RSS per
    /// entry, CPU of an unchanged and a 1% refresh, last-known-good bytes
    /// and start from it; needs root.
    Agent(Opts),
    /// Load every program of the bench-ebpf object (the verifier) and
    /// print loaded/rejected and instruction counts (kernel matrix).
    Verify(Opts),
    /// The v2 compiler alone (userspace, no root): full build and 1% delta
    /// of 1K..1M IPv4 /32 sets, with prefixes and address+port entries.
    Compile(Opts),
}

/// Heading of the options only `datapath`, `live` and `memory` take.
const SECTION_ONLY: &str = "Options of datapath, live, memory and agent only";

/// Options every benchmark takes (the last four only `datapath`, `live`
/// and `memory`: [`Cli::try_parse_args`] refuses them elsewhere).
#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Rounds, each measurement once per round (medians over these).
    #[arg(long, default_value_t = DEFAULT_ROUNDS, value_name = "N", value_parser = at_least_one)]
    pub rounds: usize,
    /// Seed of the generated entry sets (the default is fixed, so runs
    /// compare).
    #[arg(long, default_value_t = DEFAULT_SEED, value_name = "S")]
    pub seed: u64,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Smaller run (fewer cases, smaller sets).
    #[arg(long, help_heading = SECTION_ONLY)]
    pub quick: bool,
    /// The bench-ebpf object, `ef-bench-progs` (cargo xtask bench builds it).
    #[arg(long, value_name = "FILE", help_heading = SECTION_ONLY)]
    pub bench_object: Option<PathBuf>,
    /// edge-filter built with --features no-entry-stats.
    #[arg(long, value_name = "FILE", help_heading = SECTION_ONLY)]
    pub nostats_object: Option<PathBuf>,
    /// datapath: write the ns/packet plot here.
    #[arg(long, value_name = "FILE", help_heading = SECTION_ONLY)]
    pub svg_out: Option<PathBuf>,
    /// agent: feed sizes in IPv4 /32s, comma-separated (each plus a tenth
    /// in prefixes); default 100000,1000000 (100000 with --quick).
    #[arg(long, value_name = "N,..", value_delimiter = ',', help_heading = SECTION_ONLY)]
    pub sizes: Vec<usize>,
}

/// `--rounds`: a positive count.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a number ({e})")),
    }
}

impl Cli {
    /// Parse a command line (program name first), refusing the options of
    /// `datapath`, `live` and `memory` on the other subcommands as clap
    /// refuses unknown ones.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        let (name, o) = match &cli.command {
            Command::Sync(o) => ("sync", o),
            Command::SyncV2(o) => ("sync-v2", o),
            Command::DeltaLoop(o) => ("delta-loop", o),
            Command::SyncRssChild(o) => (RSS_CHILD, o),
            Command::Datapath(_)
            | Command::Agent(_)
            | Command::Live(_)
            | Command::Memory(_)
            | Command::Verify(_)
            | Command::Compile(_) => {
                return Ok(cli);
            }
        };
        let given: Vec<&str> = [
            ("--quick", o.quick),
            ("--bench-object", o.bench_object.is_some()),
            ("--nostats-object", o.nostats_object.is_some()),
            ("--svg-out", o.svg_out.is_some()),
            ("--sizes", !o.sizes.is_empty()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if !given.is_empty() {
            let mut cmd = Cli::command();
            // Built, so the usage line says `ef-bench sync`.
            cmd.build();
            let sub = cmd.find_subcommand_mut(name).expect("a subcommand of Cli");
            return Err(sub.error(
                ErrorKind::ArgumentConflict,
                format!(
                    "{} only applies to datapath, live, memory and agent, not to `ef-bench {name}`",
                    given.join(", ")
                ),
            ));
        }
        Ok(cli)
    }
}

impl Opts {
    /// Print Markdown (or JSON) and write the JSON file.
    pub fn emit(&self, markdown: &str, json: &serde_json::Value) -> Result<()> {
        if let Some(p) = &self.json_out {
            std::fs::write(p, serde_json::to_string_pretty(json)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(json)?);
        } else {
            print!("{markdown}");
        }
        Ok(())
    }
}

/// The v1 program (hash maps and tries: the production program before
/// datapath v2) in the bench object, the "before" of every comparison.
pub const V1_PROGRAM: &str = "edge_filter_v1";
/// [`V1_PROGRAM`] without per-entry counters.
pub const V1_PROGRAM_NOSTATS: &str = "edge_filter_v1_nostats";

/// Load the v1 program `program` ([`V1_PROGRAM`] or
/// [`V1_PROGRAM_NOSTATS`]) of the built-in bench object with v1 maps of
/// `caps`.
pub fn load_v1(
    program: &str,
    caps: &edge_filter::kernel::program::Capacities,
) -> Result<aya::Ebpf> {
    anyhow::ensure!(
        !v2kernel::BENCH_OBJECT.is_empty(),
        "no bench-ebpf object: built with AYA_BUILD_SKIP"
    );
    Ok(edge_filter::kernel::program::load_v1(
        v2kernel::BENCH_OBJECT,
        program,
        caps,
    )?)
}

/// The bench-ebpf object: `--bench-object`, else the one `tests/build.rs`
/// built into this binary.
pub fn bench_object(o: &Opts) -> Result<Vec<u8>> {
    match &o.bench_object {
        Some(_) => read_object(&o.bench_object, "the bench-ebpf object"),
        None if !v2kernel::BENCH_OBJECT.is_empty() => Ok(v2kernel::BENCH_OBJECT.to_vec()),
        None => {
            anyhow::bail!("no bench-ebpf object: built with AYA_BUILD_SKIP, and no --bench-object")
        }
    }
}

/// Read an object file named by an option, with a message saying who builds it.
pub fn read_object(path: &Option<PathBuf>, what: &str) -> Result<Vec<u8>> {
    let p = path.as_ref().with_context(|| {
        format!("{what} not given: run through `cargo xtask bench`, which builds it")
    })?;
    std::fs::read(p).with_context(|| format!("reading {} ({what})", p.display()))
}

// ------------------------------------------------------------ bench object

/// One source the rewriter writes (layout of `bench-ebpf`'s `Slot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub _pad: [u8; 6],
}
// SAFETY: repr(C), no padding, any bit pattern is valid.
unsafe impl Pod for Slot {}

/// Where the rewriter writes (layout of `bench-ebpf`'s `Rewrite`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Rewrite {
    pub base: u32,
    pub mask: u32,
    pub addr_off: u32,
    pub addr_len: u32,
    pub port_off: u32,
    pub csum_off: u32,
}
// SAFETY: repr(C), no padding, any bit pattern is valid.
unsafe impl Pod for Rewrite {}

/// Slots per case table (a power of two), at least; cases with bigger
/// sets get tables as large as their set (see [`table_len`]).
pub const TABLE: u32 = 1 << 16;
/// Capacity of `SLOTS` in bench-ebpf.
pub const SLOTS_CAP: u32 = 1 << 21;

/// Every program of bench-ebpf.
pub const BENCH_PROGRAMS: &[&str] = &[
    "rewrite",
    "generate",
    "bare_drop",
    "count_drop",
    "parse_only",
    "lookup_addr_v4",
    "lookup_prefix_v4",
    "lookup_port_v4",
    "lookup_addr_v6",
    "lookup_prefix_v6",
    "lookup_port_v6",
    "edge_filter_v2",
    "edge_filter_v2_nostats",
    "edge_filter_v2_trie",
    "one_load",
];

/// Slots of a table whose `hit_percent` share draws every one of `hits`
/// entries at least once: a power of two, at least [`TABLE`].
pub fn table_len(hits: usize, hit_percent: u32) -> u32 {
    let need = (hits as u64 * 100).div_ceil(hit_percent.max(1) as u64);
    (need.max(TABLE as u64).next_power_of_two()).min(SLOTS_CAP as u64) as u32
}

/// The loaded bench-ebpf object with its maps taken out.
pub struct BenchObj {
    pub ebpf: Ebpf,
    /// `SLOTS`, mapped.
    pub slots: v2kernel::Mapped,
    pub rewrite: Array<MapData, Rewrite>,
    pub jump: ProgramArray<MapData>,
}

impl BenchObj {
    /// Load the object with entry maps sized `caps` and every program.
    pub fn load(object: &[u8], caps: &Capacities) -> Result<BenchObj> {
        Self::load_with(object, caps, &v2kernel::BenchSizes::small())
    }

    /// [`BenchObj::load`] with v2 maps of `sizes`.
    pub fn load_with(
        object: &[u8],
        caps: &Capacities,
        sizes: &v2kernel::BenchSizes,
    ) -> Result<BenchObj> {
        let mut loader = EbpfLoader::new();
        for (name, n) in caps.per_map() {
            loader.map_max_entries(name, n.max(1));
        }
        sizes.apply(&mut loader);
        let mut ebpf = loader
            .load(object)
            .context("loading the bench-ebpf object")?;
        for name in BENCH_PROGRAMS {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from bench-ebpf"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("loading bench program {name}"))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from bench-ebpf"))
        };
        let slots = match take("SLOTS")? {
            aya::maps::Map::Array(m) => {
                v2kernel::Mapped::with_len(m, size_of::<Slot>(), SLOTS_CAP)?
            }
            _ => anyhow::bail!("SLOTS is not an array"),
        };
        let rewrite = Array::try_from(take("REWRITE")?)?;
        let jump = ProgramArray::try_from(take("JUMP")?)?;
        Ok(BenchObj {
            ebpf,
            slots,
            rewrite,
            jump,
        })
    }

    /// Write the entries of `set` into the object's copies of the address,
    /// prefix and address+port maps (what the single-lookup programs read),
    /// with the keys and values the agent's sync would write. Through the
    /// maps' own handles rather than [`V1Maps`](v1maps::V1Maps), so the bench object needs
    /// to declare only the maps it reads.
    pub fn load_entries(&mut self, set: &EntrySet) -> Result<()> {
        let d = Desired::build_from(set, &Desired::default());
        macro_rules! hash {
            ($name:expr, $k:ty, $field:expr) => {{
                let mut m: AyaHash<&mut MapData, $k, EntryValue> =
                    AyaHash::try_from(self.ebpf.map_mut($name).context($name)?)?;
                for (k, v) in &$field {
                    m.insert(k, v, 0)
                        .with_context(|| format!("filling {}", $name))?;
                }
            }};
        }
        macro_rules! trie {
            ($name:expr, $k:ty, $field:expr) => {{
                let mut m: LpmTrie<&mut MapData, $k, EntryValue> =
                    LpmTrie::try_from(self.ebpf.map_mut($name).context($name)?)?;
                for ((len, data), v) in &$field {
                    m.insert(&Key::new(*len, *data), v, 0)
                        .with_context(|| format!("filling {}", $name))?;
                }
            }};
        }
        hash!("ADDR_V4", [u8; 4], d.addr_v4);
        hash!("ADDR_V6", [u8; 16], d.addr_v6);
        hash!("PORT_V4", PortKeyV4, d.port_v4);
        hash!("PORT_V6", PortKeyV6, d.port_v6);
        trie!("PREFIX_V4", [u8; 4], d.prefix_v4);
        trie!("PREFIX_V6", [u8; 16], d.prefix_v6);
        Ok(())
    }

    /// A program of the object.
    pub fn prog(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// A second handle on a program's fd.
    pub fn fd(&self, name: &str) -> Result<ProgramFd> {
        Ok(self.prog(name)?.fd()?.try_clone()?)
    }

    /// Write `table` at slot `base` (one copy through the mapping).
    pub fn fill(&mut self, base: u32, table: &[Slot]) -> Result<()> {
        if base as usize + table.len() > SLOTS_CAP as usize {
            anyhow::bail!(
                "a table of {} slots at {base} does not fit SLOTS",
                table.len()
            );
        }
        // SAFETY: Slot is plain data of 24 bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(table.as_ptr().cast::<u8>(), std::mem::size_of_val(table))
        };
        self.slots
            .store_bytes(base as usize * size_of::<Slot>(), bytes);
        Ok(())
    }
}

// ------------------------------------------------------------------ frames

/// A UDP test frame and where the rewriter writes into it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub addr_off: u32,
    pub addr_len: u32,
    pub port_off: u32,
    /// IPv4 header offset (for the checksum), 0 for IPv6.
    pub ip_off: u32,
}

impl Frame {
    /// A rewriter config for this frame with a table at `base`.
    pub fn rewrite(&self, base: u32, csum: bool) -> Rewrite {
        self.rewrite_n(base, TABLE, csum)
    }

    /// [`Frame::rewrite`] for a table of `len` slots (a power of two).
    pub fn rewrite_n(&self, base: u32, len: u32, csum: bool) -> Rewrite {
        Rewrite {
            base,
            mask: len - 1,
            addr_off: self.addr_off,
            addr_len: self.addr_len,
            port_off: self.port_off,
            csum_off: if csum { self.ip_off } else { 0 },
        }
    }
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP frame (source 10.0.0.1 / fd00::1 port 40000 to port 53), with an
/// 802.1Q tag if `vlan`, 18 bytes of payload.
pub fn frame(v6: bool, vlan: bool, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Frame {
    let mut b = Vec::with_capacity(96);
    b.extend_from_slice(&dst_mac);
    b.extend_from_slice(&src_mac);
    if vlan {
        b.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    }
    let l3 = b.len();
    let payload = [0u8; 18];
    let udp_len = (8 + payload.len()) as u16;
    let udp = |b: &mut Vec<u8>| {
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&53u16.to_be_bytes());
        b.extend_from_slice(&udp_len.to_be_bytes());
        b.extend_from_slice(&[0, 0]); // no checksum (legal for IPv4; not checked here)
        b.extend_from_slice(&payload);
    };
    if v6 {
        b.extend_from_slice(&[0x86, 0xdd]);
        let l3 = b.len();
        b.extend_from_slice(&[0x60, 0, 0, 0]);
        b.extend_from_slice(&udp_len.to_be_bytes());
        b.extend_from_slice(&[17, 64]);
        b.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        udp(&mut b);
        Frame {
            bytes: b,
            addr_off: (l3 + 8) as u32,
            addr_len: 16,
            port_off: (l3 + 40) as u32,
            ip_off: 0,
        }
    } else {
        b.extend_from_slice(&[0x08, 0x00]);
        let ip = b.len();
        let total = 20 + udp_len;
        b.extend_from_slice(&[0x45, 0]);
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        b.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 1).octets());
        b.extend_from_slice(&Ipv4Addr::new(192, 0, 2, 1).octets());
        let c = ipv4_checksum(&b[ip..ip + 20]);
        b[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        udp(&mut b);
        let _ = l3;
        Frame {
            bytes: b,
            addr_off: (ip + 12) as u32,
            addr_len: 4,
            port_off: (ip + 20) as u32,
            ip_off: ip as u32,
        }
    }
}

// ------------------------------------------------------------- entry sets

/// Everything the benchmarks draw entries and packets from. Entries never
/// cover 10.0.0.0/8 or fd00::/8, where the misses come from.
pub struct Pool {
    pub v4_addrs: Vec<[u8; 4]>,
    pub v4_prefixes: Vec<Ipv4Net>,
    pub v4_ports: Vec<([u8; 4], u16)>,
    pub v6_addrs: Vec<[u8; 16]>,
    pub v6_prefixes: Vec<Ipv6Net>,
    pub v6_ports: Vec<([u8; 16], u16)>,
}

/// Sizes of a [`Pool`].
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PoolSizes {
    pub v4_addrs: usize,
    pub v4_prefixes: usize,
    pub v4_ports: usize,
    pub v6_addrs: usize,
    pub v6_prefixes: usize,
    pub v6_ports: usize,
}

impl PoolSizes {
    /// The sets the datapath and memory sections measure: `big` IPv4
    /// addresses (1M, or 100k with `--quick`), a tenth as many IPv4
    /// prefixes, address+port entries and IPv6 addresses, a hundredth as
    /// many IPv6 prefixes and address+port entries.
    pub fn standard(quick: bool) -> PoolSizes {
        let big = if quick { 100_000 } else { 1_000_000 };
        PoolSizes {
            v4_addrs: big,
            v4_prefixes: big / 10,
            v4_ports: big / 10,
            v6_addrs: big / 10,
            v6_prefixes: big / 100,
            v6_ports: big / 100,
        }
    }
}

/// Lengths of the IPv4 prefixes, weighted roughly like real block lists
/// (mostly /22../24).
const V4_LENS: [(u8, u32); 7] = [
    (16, 5),
    (18, 5),
    (20, 10),
    (21, 10),
    (22, 25),
    (23, 15),
    (24, 30),
];
const V6_LENS: [(u8, u32); 5] = [(32, 10), (40, 10), (48, 40), (56, 20), (64, 20)];

fn weighted(rng: &mut StdRng, table: &[(u8, u32)]) -> u8 {
    let total: u32 = table.iter().map(|&(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for &(v, w) in table {
        if x < w {
            return v;
        }
        x -= w;
    }
    unreachable!()
}

fn v4_entry_addr(rng: &mut StdRng) -> u32 {
    loop {
        let a: u32 = rng.random();
        let first = a >> 24;
        if (1..224).contains(&first) && first != 10 {
            return a;
        }
    }
}

fn v6_entry_addr(rng: &mut StdRng) -> u128 {
    // 2000::/3, never fd00::/8.
    let a: u128 = rng.random();
    (a & (u128::MAX >> 3)) | (1u128 << 125)
}

impl Pool {
    /// Generate distinct addresses, prefixes and address+port pairs.
    pub fn generate(seed: u64, n: PoolSizes) -> Pool {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen4 = HashSet::with_capacity(n.v4_addrs);
        let mut v4_addrs = Vec::with_capacity(n.v4_addrs);
        while v4_addrs.len() < n.v4_addrs {
            let a = v4_entry_addr(&mut rng);
            if seen4.insert(a) {
                v4_addrs.push(a.to_be_bytes());
            }
        }
        let mut seenp = HashSet::new();
        let mut v4_prefixes = Vec::with_capacity(n.v4_prefixes);
        while v4_prefixes.len() < n.v4_prefixes {
            let len = weighted(&mut rng, &V4_LENS);
            let p = Ipv4Net::new(Ipv4Addr::from(v4_entry_addr(&mut rng)), len)
                .expect("len <= 32")
                .trunc();
            if seenp.insert(p) {
                v4_prefixes.push(p);
            }
        }
        let mut seenpp = HashSet::new();
        let mut v4_ports = Vec::with_capacity(n.v4_ports);
        while v4_ports.len() < n.v4_ports {
            let k = (
                v4_entry_addr(&mut rng).to_be_bytes(),
                rng.random_range(1..=u16::MAX),
            );
            if seenpp.insert(k) {
                v4_ports.push(k);
            }
        }
        let mut seen6 = HashSet::new();
        let mut v6_addrs = Vec::with_capacity(n.v6_addrs);
        while v6_addrs.len() < n.v6_addrs {
            let a = v6_entry_addr(&mut rng);
            if seen6.insert(a) {
                v6_addrs.push(a.to_be_bytes());
            }
        }
        let mut seenp6 = HashSet::new();
        let mut v6_prefixes = Vec::with_capacity(n.v6_prefixes);
        while v6_prefixes.len() < n.v6_prefixes {
            let len = weighted(&mut rng, &V6_LENS);
            let p = Ipv6Net::new(Ipv6Addr::from(v6_entry_addr(&mut rng)), len)
                .expect("len <= 128")
                .trunc();
            if seenp6.insert(p) {
                v6_prefixes.push(p);
            }
        }
        let mut seenpp6 = HashSet::new();
        let mut v6_ports = Vec::with_capacity(n.v6_ports);
        while v6_ports.len() < n.v6_ports {
            let k = (
                v6_entry_addr(&mut rng).to_be_bytes(),
                rng.random_range(1..=u16::MAX),
            );
            if seenpp6.insert(k) {
                v6_ports.push(k);
            }
        }
        Pool {
            v4_addrs,
            v4_prefixes,
            v4_ports,
            v6_addrs,
            v6_prefixes,
            v6_ports,
        }
    }

    /// Drop entries: the first `v4`/`v6` exact addresses, and the prefixes
    /// and address+port pairs if `rest`.
    pub fn entry_set(&self, v4: usize, v6: usize, rest: bool) -> EntrySet {
        let drop = |net: IpNet, port: Option<u16>| {
            Entry::new(
                net,
                port.map(|p| PortMatch {
                    proto: Proto::Udp,
                    port: p,
                    side: Side::Src,
                }),
                Action::Drop,
            )
        };
        let mut entries = Vec::new();
        for a in &self.v4_addrs[..v4.min(self.v4_addrs.len())] {
            entries.push(drop(IpNet::V4(Ipv4Net::from(Ipv4Addr::from(*a))), None));
        }
        for a in &self.v6_addrs[..v6.min(self.v6_addrs.len())] {
            entries.push(drop(IpNet::V6(Ipv6Net::from(Ipv6Addr::from(*a))), None));
        }
        if rest {
            for p in &self.v4_prefixes {
                entries.push(drop(IpNet::V4(*p), None));
            }
            for p in &self.v6_prefixes {
                entries.push(drop(IpNet::V6(*p), None));
            }
            for (a, port) in &self.v4_ports {
                entries.push(drop(
                    IpNet::V4(Ipv4Net::from(Ipv4Addr::from(*a))),
                    Some(*port),
                ));
            }
            for (a, port) in &self.v6_ports {
                entries.push(drop(
                    IpNet::V6(Ipv6Net::from(Ipv6Addr::from(*a))),
                    Some(*port),
                ));
            }
        }
        EntrySet {
            allow: Vec::new(),
            entries,
        }
    }
}

/// What a table's hits are drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitKind {
    /// The first `n` exact addresses.
    Addr(usize),
    Prefix,
    Port,
    /// Addresses, prefixes and address+port pairs, a third each.
    All,
}

/// A table of [`TABLE`] sources: `hit_percent` drawn from `kind`'s entries
/// (IPv6 if `v6`), the rest misses from 10.0.0.0/8 / fd00::/8 with random
/// ports.
pub fn table(pool: &Pool, v6: bool, kind: HitKind, hit_percent: u32, seed: u64) -> Vec<Slot> {
    table_n(pool, v6, kind, hit_percent, seed, TABLE)
}

/// [`table`] of `len` slots. Exact-address hits walk the addresses in a
/// shuffled order (every one of them once before any repeats), so a table
/// of [`table_len`] slots touches the whole set.
pub fn table_n(
    pool: &Pool,
    v6: bool,
    kind: HitKind,
    hit_percent: u32,
    seed: u64,
    len: u32,
) -> Vec<Slot> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len as usize);
    let mut order: Vec<usize> = Vec::new();
    let mut next = 0usize;
    for _ in 0..len {
        let mut s = Slot {
            port: rng.random_range(1024..=u16::MAX).to_be_bytes(),
            ..Default::default()
        };
        let hit = rng.random_range(0..100) < hit_percent;
        let kind = match kind {
            HitKind::All => match rng.random_range(0..3) {
                0 => HitKind::Addr(usize::MAX),
                1 => HitKind::Prefix,
                _ => HitKind::Port,
            },
            k => k,
        };
        if !hit {
            if v6 {
                let a: u128 = rng.random();
                s.addr = ((a >> 8) | (0xfdu128 << 120)).to_be_bytes();
            } else {
                let a: u32 = rng.random();
                s.addr[..4].copy_from_slice(&((a >> 8) | (10 << 24)).to_be_bytes());
            }
        } else if v6 {
            match kind {
                HitKind::Addr(n) => {
                    let n = n.min(pool.v6_addrs.len());
                    s.addr = pool.v6_addrs[walk(&mut rng, &mut order, &mut next, n)];
                }
                HitKind::Prefix => {
                    let p = pool.v6_prefixes[rng.random_range(0..pool.v6_prefixes.len())];
                    let host: u128 = rng.random::<u128>() & !u128::from(p.netmask());
                    s.addr = (u128::from(p.network()) | host).to_be_bytes();
                }
                _ => {
                    let (a, port) = pool.v6_ports[rng.random_range(0..pool.v6_ports.len())];
                    s.addr = a;
                    s.port = port.to_be_bytes();
                }
            }
        } else {
            let a = match kind {
                HitKind::Addr(n) => {
                    let n = n.min(pool.v4_addrs.len());
                    pool.v4_addrs[walk(&mut rng, &mut order, &mut next, n)]
                }
                HitKind::Prefix => {
                    let p = pool.v4_prefixes[rng.random_range(0..pool.v4_prefixes.len())];
                    let host: u32 = rng.random::<u32>() & !u32::from(p.netmask());
                    (u32::from(p.network()) | host).to_be_bytes()
                }
                _ => {
                    let (a, port) = pool.v4_ports[rng.random_range(0..pool.v4_ports.len())];
                    s.port = port.to_be_bytes();
                    a
                }
            };
            s.addr[..4].copy_from_slice(&a);
        }
        out.push(s);
    }
    out
}

/// The next index of a shuffled walk over `0..n` (reshuffled when done).
fn walk(rng: &mut StdRng, order: &mut Vec<usize>, next: &mut usize, n: usize) -> usize {
    use rand::seq::SliceRandom as _;
    if order.len() != n || *next >= n {
        *order = (0..n).collect();
        order.shuffle(rng);
        *next = 0;
    }
    *next += 1;
    order[*next - 1]
}

// -------------------------------------------------------------- statistics

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Statistics of `v` (empty: all NaN).
pub fn stat(v: &[f64]) -> Stat {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Stat {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stat {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

/// `yes`/`no` for a target.
pub fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use etherparse::{Ipv4Header, LaxNetSlice, LaxSlicedPacket, TransportSlice};

    use super::*;

    fn source(bytes: &[u8]) -> (IpAddr, u16) {
        let p = LaxSlicedPacket::from_ethernet(bytes).expect("parses");
        let src = match p.net.as_ref().expect("IP") {
            LaxNetSlice::Ipv4(s) => IpAddr::V4(s.header().source_addr()),
            LaxNetSlice::Ipv6(s) => IpAddr::V6(s.header().source_addr()),
            LaxNetSlice::Arp(_) => panic!("ARP"),
        };
        let Some(TransportSlice::Udp(u)) = p.transport.as_ref() else {
            panic!("not UDP");
        };
        (src, u.source_port())
    }

    /// What the rewriter writes lands on the source address and port.
    #[test]
    fn rewrite_offsets_name_the_source_address_and_port() {
        for v6 in [false, true] {
            for vlan in [false, true] {
                let f = frame(v6, vlan, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
                let mut b = f.bytes.clone();
                let addr: [u8; 16] = core::array::from_fn(|i| 0x20 + i as u8);
                let n = f.addr_len as usize;
                b[f.addr_off as usize..][..n].copy_from_slice(&addr[..n]);
                b[f.port_off as usize..][..2].copy_from_slice(&4242u16.to_be_bytes());
                let want = if v6 {
                    IpAddr::V6(Ipv6Addr::from(addr))
                } else {
                    IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
                };
                assert_eq!(source(&b), (want, 4242), "v6={v6} vlan={vlan}");
            }
        }
    }

    /// The netfilter receivers drop IPv4 frames with a bad header checksum
    /// before their rules see them.
    #[test]
    fn ipv4_frames_carry_a_valid_header_checksum() {
        for vlan in [false, true] {
            let f = frame(false, vlan, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
            let (h, _) = Ipv4Header::from_slice(&f.bytes[f.ip_off as usize..]).expect("IPv4");
            assert_eq!(h.header_checksum, h.calc_header_checksum());
        }
    }

    /// A table's hit share is what it says: every hit slot matches an entry
    /// of the set, no miss slot does.
    #[test]
    fn tables_mix_hits_and_misses_as_stated() {
        let sizes = PoolSizes {
            v4_addrs: 50,
            v4_prefixes: 10,
            v4_ports: 10,
            v6_addrs: 50,
            v6_prefixes: 10,
            v6_ports: 10,
        };
        let pool = Pool::generate(7, sizes);
        let set = pool.entry_set(50, 50, true);
        for v6 in [false, true] {
            for kind in [
                HitKind::Addr(20),
                HitKind::Prefix,
                HitKind::Port,
                HitKind::All,
            ] {
                let t = table(&pool, v6, kind, 50, 11);
                let hits = t
                    .iter()
                    .filter(|s| {
                        let src = if v6 {
                            IpAddr::V6(Ipv6Addr::from(s.addr))
                        } else {
                            IpAddr::V4(Ipv4Addr::new(s.addr[0], s.addr[1], s.addr[2], s.addr[3]))
                        };
                        let ports = Some((Proto::Udp, u16::from_be_bytes(s.port), 53));
                        set.entries.iter().any(|e| e.matches(src, ports))
                    })
                    .count();
                let share = hits as f64 / t.len() as f64;
                assert!(
                    (0.48..=0.52).contains(&share),
                    "v6={v6} {kind:?}: {share} of the slots hit"
                );
            }
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args(std::iter::once("ef-bench").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// What `cargo xtask bench` runs (xtask/src/bench.rs, `run_section`).
    #[test]
    fn xtask_invocations_parse() {
        let cli = parse(&[
            "datapath",
            "--quick",
            "--bench-object",
            "/t/bench.o",
            "--nostats-object",
            "/t/nostats.o",
            "--svg-out",
            "docs/bench/datapath.svg",
            "--rounds",
            "3",
            "--json-out",
            "docs/bench/datapath.json",
        ])
        .unwrap();
        let Command::Datapath(o) = cli.command else {
            panic!("{cli:?}");
        };
        assert!(o.quick && !o.json);
        assert_eq!(o.rounds, 3);
        assert_eq!(o.seed, DEFAULT_SEED);
        assert_eq!(o.bench_object, Some(PathBuf::from("/t/bench.o")));
        assert_eq!(o.nostats_object, Some(PathBuf::from("/t/nostats.o")));
        assert_eq!(o.svg_out, Some(PathBuf::from("docs/bench/datapath.svg")));
        assert_eq!(o.json_out, Some(PathBuf::from("docs/bench/datapath.json")));
        let cli = parse(&[
            "sync",
            "--rounds",
            "10",
            "--json-out",
            "docs/bench/sync.json",
        ])
        .unwrap();
        let Command::Sync(o) = cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(
            (o.rounds, o.seed, o.json, o.quick),
            (10, DEFAULT_SEED, false, false)
        );
        for sub in ["live", "memory"] {
            parse(&[sub, "--bench-object", "b.o", "--rounds", "1", "--json"]).unwrap();
        }
    }

    #[test]
    fn defaults_and_the_rss_child() {
        let Command::DeltaLoop(o) = parse(&["delta-loop"]).unwrap().command else {
            panic!("not delta-loop");
        };
        assert_eq!((o.rounds, o.seed), (DEFAULT_ROUNDS, DEFAULT_SEED));
        // As `round_rss` in the binary starts it.
        let Command::SyncRssChild(o) = parse(&[RSS_CHILD, "--seed", "42"]).unwrap().command else {
            panic!("not the RSS child");
        };
        assert_eq!(o.seed, 42);
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains(RSS_CHILD), "{help}");
        for sub in ["sync", "delta-loop", "datapath", "live", "memory"] {
            assert!(help.contains(sub), "{sub} missing from:\n{help}");
        }
        // The last occurrence wins, as before.
        let Command::Live(o) = parse(&["live", "--rounds", "2", "--rounds", "5"])
            .unwrap()
            .command
        else {
            panic!("not live");
        };
        assert_eq!(o.rounds, 5);
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&[]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(kind(&["sync", "--rounds", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["sync", "--rounds", "x"]), ErrorKind::ValueValidation);
        assert_eq!(
            kind(&["datapath", "--round", "3"]),
            ErrorKind::UnknownArgument
        );
        assert_eq!(kind(&["sync", "--json-out"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["bogus"]), ErrorKind::InvalidSubcommand);
        let e = parse(&["sync", "--quick", "--svg-out", "x.svg"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        let text = e.to_string();
        assert!(
            text.contains("--quick, --svg-out only applies to datapath, live, memory and agent")
                && text.contains("Usage: ef-bench sync"),
            "{text}"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(stat(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(stat(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(stat(&[]).median.is_nan());
    }
}
