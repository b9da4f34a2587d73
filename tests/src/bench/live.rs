//! `ef-bench live`: packets per second dropped on a real interface, with no
//! NIC. A veth pair joins two private namespaces; bench-ebpf's `generate`
//! program, run by BPF_PROG_TEST_RUN in live-frames mode on one end, writes
//! the next source address of a table into each frame (hits from the
//! 1,000,000-address set and misses, see [`MIXES`]), fixes the IPv4
//! checksum and sends it with `XDP_TX`. The receivers on the other end all
//! hold the same set:
//!
//! - bare `XDP_DROP` with a counter (the ceiling), native mode;
//! - edge-filter, native mode, counted by its own per-reason counters;
//! - nftables: a set of `ipv4_addr` matched in the netdev ingress hook,
//!   counted by nft rule counters;
//! - iptables raw table PREROUTING + an ipset `hash:ip`, counted by
//!   iptables rule counters.
//!
//! For the netfilter receivers veth needs NAPI to accept XDP_TX frames
//! from its peer; GRO on (`ethtool -K`) turns it on without an XDP program.
//! Each measurement enables one receiver (attach / add the rules), sends
//! `FRAMES` frames, waits until the receiver's counters stop moving,
//! reads them and disables it again; one round runs every mix × receiver
//! once (interleaved), figures are medians over rounds. Rate = packets the
//! receiver counted / time from the start of sending to its last count.
//! Everything (namespaces, veths, rules, sets) is deleted at the end, also
//! on error.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::v1maps::V1Maps;
use anyhow::{Context as _, Result, bail};
use aya::maps::PerCpuArray;
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use edge_filter::kernel::features::{self, Status};
use edge_filter::kernel::program::{self, Capacities};
use edge_filter_common::{self as abi, ACTION_DROP, EntryKind};
use serde_json::json;

use super::{BenchObj, Opts, Pool, PoolSizes, Stat, frame, met, stat};

/// The generated traffic: a flood from blocked sources drawn Zipf
/// (s = 1.1) over the set, and the worst case, uniform over the whole set
/// (every address once per pass of a table as large as the set).
pub const MIXES: [&str; 2] = ["flood", "worst"];
/// Frames per measurement.
const FRAMES: u32 = 2_000_000;
/// Targets (reported, never asserted) per mix: against bare XDP_DROP and
/// against the best netfilter receiver, dropped pps.
const TARGETS: [(f64, f64); 2] = [(0.8, 5.0), (0.4, 3.0)];

/// The tools this section needs, with the Debian package of each.
pub const TOOLS: [(&str, &str); 4] = [
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("ipset", "ipset"),
    ("ethtool", "ethtool"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Run `f` with this thread in the network namespace at `path`, then
/// return to the original one.
fn in_ns<R>(path: &str, f: impl FnOnce() -> R) -> Result<R> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let ns = File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: valid namespace fds; this thread is the only one switching.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    let r = f();
    // SAFETY: as above.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns back: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

fn sh(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces and veth pair, deleted on drop.
struct Lab {
    gen_ns: String,
    rx_ns: String,
    a: String,
    b: String,
}

impl Lab {
    fn create() -> Result<Lab> {
        let pid = std::process::id();
        let lab = Lab {
            gen_ns: format!("efb-gen-{pid}"),
            rx_ns: format!("efb-rx-{pid}"),
            a: format!("efbA{pid}"),
            b: format!("efbB{pid}"),
        };
        sh(Command::new("ip").args(["netns", "add", &lab.gen_ns]))?;
        sh(Command::new("ip").args(["netns", "add", &lab.rx_ns]))?;
        sh(Command::new("ip").args([
            "link",
            "add",
            &lab.a,
            "netns",
            &lab.gen_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.b,
            "netns",
            &lab.rx_ns,
        ]))?;
        for (ns, dev, addr) in [
            (&lab.gen_ns, &lab.a, "192.0.2.2/24"),
            (&lab.rx_ns, &lab.b, "192.0.2.1/24"),
        ] {
            sh(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev]))?;
            sh(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
            sh(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        Ok(lab)
    }

    fn ns_path(ns: &str) -> String {
        format!("/run/netns/{ns}")
    }

    fn in_rx(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", Self::ns_path(&self.rx_ns)))
            .arg("--")
            .arg(prog);
        c
    }

    fn mac(&self, ns: &str, dev: &str) -> Result<[u8; 6]> {
        let out = sh(Command::new("ip").args(["-n", ns, "-o", "link", "show", dev]))?;
        let s = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .with_context(|| format!("no MAC for {dev}: {out}"))?;
        let mut mac = [0u8; 6];
        for (i, h) in s.split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(h, 16)?;
        }
        Ok(mac)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair and, with it, every
        // XDP program, nft table and iptables rule in them. ipsets are
        // per namespace too.
        for ns in [&self.gen_ns, &self.rx_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Receiver {
    XdpDrop,
    EdgeFilter,
    EdgeFilterV2,
    Nft,
    Iptables,
    /// [`Receiver::EdgeFilterV2`] with `entry_counters = "sampled"`.
    EdgeFilterV2Sampled,
}

impl Receiver {
    const ALL: [Receiver; 6] = [
        Receiver::XdpDrop,
        Receiver::EdgeFilter,
        Receiver::EdgeFilterV2,
        Receiver::Nft,
        Receiver::Iptables,
        Receiver::EdgeFilterV2Sampled,
    ];

    fn label(self) -> &'static str {
        match self {
            Receiver::XdpDrop => "bare XDP_DROP (native)",
            Receiver::EdgeFilter => "edge-filter, old layout (native)",
            Receiver::EdgeFilterV2 => "edge-filter v2 (native)",
            Receiver::EdgeFilterV2Sampled => "edge-filter v2, sampled entry counters (native)",
            Receiver::Nft => "nftables set, netdev ingress",
            Receiver::Iptables => "iptables raw + ipset",
        }
    }
}

const NFT_TABLE: &str = "efbench";
const IPSET: &str = "efbench";

struct Rig {
    lab: Lab,
    bench: BenchObj,
    ef_ebpf: aya::Ebpf,
    ef_maps: V1Maps,
    link: Option<aya::programs::xdp::XdpLinkId>,
    /// The bench object's v2 maps (the runtime flags select sampled
    /// counters).
    v2_maps: super::v2kernel::V2Maps,
}

impl Rig {
    fn xdp<'a>(bench: &'a mut BenchObj, ef: &'a mut aya::Ebpf, r: Receiver) -> Result<&'a mut Xdp> {
        Ok(match r {
            Receiver::XdpDrop => bench
                .ebpf
                .program_mut("count_drop")
                .context("count_drop")?
                .try_into()?,
            Receiver::EdgeFilterV2 | Receiver::EdgeFilterV2Sampled => bench
                .ebpf
                .program_mut("edge_filter_v2")
                .context("edge_filter_v2")?
                .try_into()?,
            _ => program::xdp_named(ef, super::V1_PROGRAM)?,
        })
    }

    fn enable(&mut self, r: Receiver) -> Result<()> {
        // The same program either way: the flag selects the counting.
        self.v2_maps
            .set_runtime_flags(if r == Receiver::EdgeFilterV2Sampled {
                abi::CONFIG_COUNT_SAMPLED
            } else {
                0
            });
        match r {
            Receiver::XdpDrop
            | Receiver::EdgeFilter
            | Receiver::EdgeFilterV2
            | Receiver::EdgeFilterV2Sampled => {
                let b = self.lab.b.clone();
                let prog = Self::xdp(&mut self.bench, &mut self.ef_ebpf, r)?;
                let id = in_ns(&Lab::ns_path(&self.lab.rx_ns), || {
                    prog.attach(&b, XdpMode::Driver)
                })??;
                self.link = Some(id);
            }
            Receiver::Nft => {
                let rules = format!(
                    "add chain netdev {NFT_TABLE} in {{ type filter hook ingress device \"{b}\" priority -500; }}\n\
                     add rule netdev {NFT_TABLE} in counter\n\
                     add rule netdev {NFT_TABLE} in ip saddr @blk counter drop\n",
                    b = self.lab.b
                );
                sh_stdin(self.lab.in_rx("nft").args(["-f", "-"]), &rules)?;
            }
            Receiver::Iptables => {
                for extra in [
                    &[][..],
                    &["-m", "set", "--match-set", IPSET, "src", "-j", "DROP"][..],
                ] {
                    sh(self
                        .lab
                        .in_rx("iptables")
                        .args(["-t", "raw", "-A", "PREROUTING", "-i", &self.lab.b])
                        .args(extra))?;
                }
            }
        }
        Ok(())
    }

    fn disable(&mut self, r: Receiver) -> Result<()> {
        match r {
            Receiver::XdpDrop
            | Receiver::EdgeFilter
            | Receiver::EdgeFilterV2
            | Receiver::EdgeFilterV2Sampled => {
                if let Some(id) = self.link.take() {
                    let prog = Self::xdp(&mut self.bench, &mut self.ef_ebpf, r)?;
                    in_ns(&Lab::ns_path(&self.lab.rx_ns), || prog.detach(id))??;
                }
            }
            Receiver::Nft => {
                sh(self
                    .lab
                    .in_rx("nft")
                    .args(["flush", "chain", "netdev", NFT_TABLE, "in"]))?;
                sh(self
                    .lab
                    .in_rx("nft")
                    .args(["delete", "chain", "netdev", NFT_TABLE, "in"]))?;
            }
            Receiver::Iptables => {
                sh(self
                    .lab
                    .in_rx("iptables")
                    .args(["-t", "raw", "-F", "PREROUTING"]))?;
            }
        }
        Ok(())
    }

    /// (packets seen, packets dropped) so far by receiver `r`.
    fn counts(&self, r: Receiver) -> Result<(u64, u64)> {
        match r {
            Receiver::XdpDrop => {
                let m = self.bench.ebpf.map("DROPS").context("DROPS")?;
                let a: PerCpuArray<_, u64> = PerCpuArray::try_from(m)?;
                let n: u64 = a.get(&0, 0)?.iter().sum();
                Ok((n, n))
            }
            Receiver::EdgeFilterV2 | Receiver::EdgeFilterV2Sampled => {
                let m = self.bench.ebpf.map("COUNTERS").context("COUNTERS")?;
                let a: PerCpuArray<_, abi::Counter> = PerCpuArray::try_from(m)?;
                let (mut all, mut drop) = (0, 0);
                for r in 0..abi::REASON_COUNT {
                    let n: u64 = a.get(&r, 0)?.iter().map(|c| c.packets).sum();
                    all += n;
                    if matches!(
                        abi::ReasonInfo::decode(r),
                        Some(abi::ReasonInfo::Entry {
                            action: ACTION_DROP,
                            ..
                        })
                    ) {
                        drop += n;
                    }
                }
                Ok((all, drop))
            }
            Receiver::EdgeFilter => {
                let c = self.ef_maps.counters()?;
                let all = c.iter().map(|c| c.packets).sum();
                let drop = [
                    EntryKind::Prefix,
                    EntryKind::Addr,
                    EntryKind::PrefixPort,
                    EntryKind::AddrPort,
                ]
                .iter()
                .map(|k| c[abi::reason_entry(*k, ACTION_DROP) as usize].packets)
                .sum();
                Ok((all, drop))
            }
            Receiver::Nft => {
                let out = sh(self
                    .lab
                    .in_rx("nft")
                    .args(["list", "chain", "netdev", NFT_TABLE, "in"]))?;
                let v = counters_after(&out, "packets");
                Ok((
                    v.first().copied().unwrap_or(0),
                    v.get(1).copied().unwrap_or(0),
                ))
            }
            Receiver::Iptables => {
                let out = sh(self.lab.in_rx("iptables").args([
                    "-t",
                    "raw",
                    "-L",
                    "PREROUTING",
                    "-v",
                    "-x",
                    "-n",
                ]))?;
                // Rule lines start with the packet count.
                let v: Vec<u64> = out
                    .lines()
                    .skip(2)
                    .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                    .collect();
                Ok((
                    v.first().copied().unwrap_or(0),
                    v.get(1).copied().unwrap_or(0),
                ))
            }
        }
    }
}

/// `1000000` as `1,000,000`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Every number following the word `key` in `text`.
fn counters_after(text: &str, key: &str) -> Vec<u64> {
    let w: Vec<&str> = text.split_whitespace().collect();
    w.windows(2)
        .filter(|p| p[0] == key)
        .filter_map(|p| p[1].parse().ok())
        .collect()
}

/// Send `frames` frames from the generator; returns (seen, dropped, secs).
fn measure(
    rig: &mut Rig,
    r: Receiver,
    data: &[u8],
    ctx: &[u8],
    frames: u32,
) -> Result<(u64, u64, f64)> {
    rig.enable(r)?;
    let (s0, d0) = rig.counts(r)?;
    let gen_ns = Lab::ns_path(&rig.lab.gen_ns);
    let t0 = Instant::now();
    let res = {
        let prog = rig.bench.prog("generate")?;
        in_ns(&gen_ns, || {
            prog.test_run(TestRunOptions {
                data_in: Some(data),
                ctx_in: Some(ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })
        })?
    };
    res.context("live-frames BPF_PROG_TEST_RUN of the generator")?;
    let mut last = rig.counts(r)?;
    let mut t_last = t0.elapsed();
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_millis(100) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
        let c = rig.counts(r)?;
        if c != last {
            last = c;
            t_last = t0.elapsed();
            still = Instant::now();
        }
    }
    rig.disable(r)?;
    Ok((last.0 - s0, last.1 - d0, t_last.as_secs_f64()))
}

pub fn run(o: &Opts) -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(t, _)| !on_path(t))
        .map(|(_, p)| *p)
        .collect();
    if !missing.is_empty() {
        bail!(
            "the live section needs {}: run `sudo -E cargo xtask setup`",
            missing.join(", ")
        );
    }
    // Traffic comes from live-frames test runs: where the kernel refuses
    // them (some hosts' policy answers EPERM even to root) the section
    // says so instead of failing the whole bench.
    if let Status::Missing(why) | Status::Unknown(why) = features::probe("xdp-live-frames") {
        eprintln!("live: skipped: live-frames BPF_PROG_TEST_RUN: {why}");
        let md = format!(
            "## Live traffic on veth\n\nSkipped on this host ({}): the traffic generator needs live-frames `BPF_PROG_TEST_RUN`, which the kernel refused: {why}.\n\n",
            features::kernel_release()
        );
        return o.emit(
            &md,
            &json!({ "section": "live", "skipped": why, "kernel": features::kernel_release() }),
        );
    }
    let start = Instant::now();
    let bench_obj = super::bench_object(o)?;
    let n = if o.quick { 100_000 } else { 1_000_000 };
    let frames = if o.quick { FRAMES / 4 } else { FRAMES };
    let pool = Pool::generate(
        o.seed,
        PoolSizes {
            v4_addrs: n,
            v4_prefixes: 0,
            v4_ports: 0,
            v6_addrs: 0,
            v6_prefixes: 0,
            v6_ports: 0,
        },
    );
    let set = pool.entry_set(n, 0, false);
    let mut ef_ebpf = super::load_v1(super::V1_PROGRAM, &Capacities::default())?;
    let mut ef_maps = V1Maps::from_ebpf(&mut ef_ebpf)?;
    ef_maps.apply(&set, 0)?;
    // v2: the set compiled into the bench object's v2 maps.
    let (bench, v2_maps) = {
        use edge_filter::kernel::layout::{Compiler, Geometry, Ids, assign_ids, counts};
        let ids: Ids = assign_ids(&set, &Ids::default());
        let mut g = Geometry::for_counts(&counts(&set, &ids)?, 1.0, o.seed);
        g.heap_lines = g.heap_lines.max(1 << 16);
        let mut comp = Compiler::build(&set, &ids, g)?;
        comp.fit_heap(1.25);
        let sizes = super::v2kernel::BenchSizes::of(comp.geometry())?;
        let mut bench = BenchObj::load_with(&bench_obj, &Capacities::small(), &sizes)?;
        let mut maps = super::v2kernel::V2Maps::take(&mut bench.ebpf)?;
        maps.write_image(comp.tables())?;
        (bench, maps)
    };
    // The mixes' tables.
    let targets: Vec<super::datapath_v2::Target> = pool
        .v4_addrs
        .iter()
        .map(|a| {
            let mut x = [0u8; 16];
            x[..4].copy_from_slice(a);
            (x, 40000)
        })
        .collect();
    let mix_tables: Vec<Vec<super::Slot>> = [
        super::datapath_v2::Mix::Flood,
        super::datapath_v2::Mix::Worst,
    ]
    .iter()
    .enumerate()
    .map(|(i, m)| super::datapath_v2::mix_table(*m, &targets, &[], o.seed ^ 0x11 ^ i as u64))
    .collect();

    let lab = Lab::create()?;
    let mac_a = lab.mac(&lab.gen_ns, &lab.a)?;
    let mac_b = lab.mac(&lab.rx_ns, &lab.b)?;
    sh(lab.in_rx("ethtool").args(["-K", &lab.b, "gro", "on"]))?;
    let if_a = in_ns(&Lab::ns_path(&lab.gen_ns), || {
        let c = std::ffi::CString::new(lab.a.clone()).expect("no NUL");
        // SAFETY: valid C string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    })?;
    if if_a == 0 {
        bail!("no ifindex for {}", lab.a);
    }

    // netfilter sets, loaded once.
    eprintln!("live: loading {n} addresses into nftables and ipset");
    let t = Instant::now();
    let mut nft = format!(
        "add table netdev {NFT_TABLE}\nadd set netdev {NFT_TABLE} blk {{ type ipv4_addr; size {}; }}\n",
        n.next_power_of_two()
    );
    for chunk in pool.v4_addrs.chunks(10_000) {
        nft.push_str(&format!("add element netdev {NFT_TABLE} blk {{ "));
        for (i, a) in chunk.iter().enumerate() {
            if i > 0 {
                nft.push_str(", ");
            }
            nft.push_str(&std::net::Ipv4Addr::from(*a).to_string());
        }
        nft.push_str(" }\n");
    }
    sh_stdin(lab.in_rx("nft").args(["-f", "-"]), &nft)?;
    let mut ips = format!(
        "create {IPSET} hash:ip family inet hashsize {} maxelem {}\n",
        n.next_power_of_two(),
        2 * n.next_power_of_two()
    );
    for a in &pool.v4_addrs {
        ips.push_str(&format!("add {IPSET} {}\n", std::net::Ipv4Addr::from(*a)));
    }
    sh_stdin(lab.in_rx("ipset").arg("restore"), &ips)?;
    eprintln!(
        "live: netfilter sets loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let iptables_v = sh(Command::new("iptables").arg("-V"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let nft_v = sh(Command::new("nft").arg("-v"))
        .unwrap_or_default()
        .trim()
        .to_string();

    let mut rig = Rig {
        lab,
        bench,
        ef_ebpf,
        ef_maps,
        link: None,
        v2_maps,
    };
    let f = frame(false, false, mac_b, mac_a);
    let mut ctx = Vec::with_capacity(24);
    for v in [0u32, f.bytes.len() as u32, 0, if_a, 0, 0] {
        ctx.extend_from_slice(&v.to_ne_bytes());
    }
    // (mix, receiver) -> per-round (seen pps, dropped pps, delivered share).
    let mut res: Vec<Vec<Vec<(f64, f64, f64)>>> =
        vec![vec![Vec::new(); Receiver::ALL.len()]; MIXES.len()];
    let rounds = o.rounds;
    for round in 0..rounds {
        for (mi, _) in MIXES.iter().enumerate() {
            let t = &mix_tables[mi];
            rig.bench.fill(0, t)?;
            rig.bench
                .rewrite
                .set(0, f.rewrite_n(0, t.len() as u32, true), 0)?;
            for (ri, r) in Receiver::ALL.iter().enumerate() {
                let (seen, dropped, secs) = measure(&mut rig, *r, &f.bytes, &ctx, frames)
                    .with_context(|| format!("measuring {}", r.label()))?;
                res[mi][ri].push((
                    seen as f64 / secs,
                    dropped as f64 / secs,
                    seen as f64 / frames as f64,
                ));
            }
        }
        eprintln!("live: round {}/{rounds} done", round + 1);
    }
    drop(rig);

    // Report.
    let mut md = String::from("\n## Datapath on a veth pair (live frames)\n\n");
    md.push_str(&format!(
        "A traffic generator with no NIC: bench-ebpf's `generate` XDP program, run by \
         BPF_PROG_TEST_RUN in live-frames mode (batch 64) in a private namespace, writes \
         the next source address from the mix's table into each 60-byte UDP frame, \
         fixes the IPv4 checksum and `XDP_TX`es it out of one end of a veth pair; the \
         other end, in a second namespace, holds one receiver at a time, each with the same \
         {}-address set (today's program with its old layout, the v2 classifier with exact \
         and with sampled per-entry counters, nftables, iptables + ipset). Mixes: flood = every source blocked, drawn Zipf (s = 1.1) over \
         the set; worst = uniform over the whole set, every address once per pass of a \
         table as large as the set. {frames} frames \
         per measurement; rate = packets the receiver counted (XDP program counters, nft \
         rule counters, iptables rule counters) / time from the start of sending to the \
         receiver's last count; median of {rounds} rounds, every mix × receiver once per \
         round. Generator and receivers share this machine's CPUs, so all rates are \
         lower than a NIC would give; the ratios are the figures. \"Seen\" counts every \
         packet the receiver processed, \"dropped\" the ones it dropped, \"delivered\" the \
         share of the sent frames the receiver saw (veth drops the rest when its ring is \
         full). The netfilter receivers run with GRO on (veth then accepts XDP frames \
         without an XDP program). {nft_v}; {iptables_v}.\n\n",
        thousands(n)
    ));
    md.push_str("| mix | receiver | seen Mpps | dropped Mpps | delivered | dropped / XDP_DROP's |\n|---|---|---:|---:|---:|---:|\n");
    let mut jmix = Vec::new();
    let mut targets = Vec::new();
    for (mi, mix) in MIXES.iter().enumerate() {
        let drop_base = &res[mi][0];
        let mut jr = Vec::new();
        for (ri, r) in Receiver::ALL.iter().enumerate() {
            let v = &res[mi][ri];
            let seen = stat(&v.iter().map(|x| x.0).collect::<Vec<_>>());
            let dropped = stat(&v.iter().map(|x| x.1).collect::<Vec<_>>());
            let delivered = stat(&v.iter().map(|x| x.2).collect::<Vec<_>>());
            let vs: Vec<f64> = v.iter().zip(drop_base).map(|(a, b)| a.1 / b.1).collect();
            let vs = stat(&vs);
            md.push_str(&format!(
                "| {mix} | {} | {:.2} | {:.2} | {:.0}% | {:.2}x |\n",
                r.label(),
                seen.median / 1e6,
                dropped.median / 1e6,
                delivered.median * 100.0,
                vs.median
            ));
            jr.push(json!({"receiver": r.label(), "seen_pps": seen, "dropped_pps": dropped, "delivered": delivered, "dropped_over_xdp_drop": vs}));
        }
        // Targets on each mix, for v2 and (for comparison) the old layout:
        // against XDP_DROP and against the best netfilter receiver.
        let ratio = |a: usize, b: &dyn Fn(usize) -> f64| -> Stat {
            stat(
                &(0..res[mi][a].len())
                    .map(|k| res[mi][a][k].1 / b(k))
                    .collect::<Vec<_>>(),
            )
        };
        let (t_drop, t_nf) = TARGETS[mi];
        let mut jt = Vec::new();
        for (ri, who) in [
            (2usize, "v2"),
            (5, "v2 sampled counters"),
            (1, "old layout"),
        ] {
            let vs_drop = ratio(ri, &|k| res[mi][0][k].1);
            let vs_nf = ratio(ri, &|k| res[mi][3][k].1.max(res[mi][4][k].1));
            targets.push(format!(
                "| {mix}: edge-filter {who} / XDP_DROP, dropped pps | {:.2}x ({:.2}–{:.2}) | ≥ {t_drop}x | {} |",
                vs_drop.median, vs_drop.min, vs_drop.max, met(vs_drop.median >= t_drop)
            ));
            targets.push(format!(
                "| {mix}: edge-filter {who} / best netfilter, dropped pps | {:.1}x ({:.1}–{:.1}) | ≥ {t_nf}x | {} |",
                vs_nf.median, vs_nf.min, vs_nf.max, met(vs_nf.median >= t_nf)
            ));
            jt.push(
                json!({"receiver": who, "over_xdp_drop": vs_drop, "over_best_netfilter": vs_nf}),
            );
        }
        jmix.push(json!({"mix": mix, "receivers": jr, "targets": jt}));
    }
    md.push_str("\n| figure | value (min–max) | target | met |\n|---|---|---|---|\n");
    for t in &targets {
        md.push_str(t);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nSection took {:.0} s.\n",
        start.elapsed().as_secs_f64()
    ));
    let js = json!({"section": "live", "entries": n, "frames": frames, "rounds": rounds, "mixes": jmix, "nft": nft_v, "iptables": iptables_v});
    o.emit(&md, &js)
}
