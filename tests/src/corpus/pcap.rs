//! Reading the real captures: every Ethernet packet of every pcap/pcapng file
//! under `<shared data>/pcaps`, without ever panicking on a broken file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::PcapNgReader;
use pcap_file::pcapng::blocks::Block;
use pcap_file::{DataLink, PcapError};

use super::Packet;

/// What [`pcap_corpus`] found.
#[derive(Clone, Debug, Default)]
pub struct PcapCorpus {
    /// Every captured Ethernet frame (captured bytes only: `caplen`, not the
    /// original length), in file order, files sorted by path.
    pub packets: Vec<Packet>,
    /// Files whose header parsed and whose link type (or, in pcapng, at least
    /// one interface's) is Ethernet: packets were taken from them, possibly
    /// only up to a parse error (then they are also in `files_skipped`).
    pub files_read: usize,
    /// Files (path relative to `pcaps/`) not read, or not read to the end,
    /// with the reason: another link type, an unreadable header, a parse
    /// error after some packets (the packets before it are kept).
    pub files_skipped: Vec<(String, String)>,
    /// Packets of non-Ethernet interfaces in pcapng files (left out of
    /// `packets`; counted whether or not the file also has Ethernet
    /// interfaces).
    pub non_ethernet_packets: usize,
}

/// libpcap's `LT_LINKTYPE`: the link type bits of the pcap header's link
/// type field (the upper bits hold FCS length information).
const LINKTYPE_MASK: u32 = 0x03ff_ffff;

/// File magic of a pcapng Section Header Block.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Read every `*.pcap`, `*.pcapng` and `*.cap` below `dir/pcaps` (or below
/// `dir` itself when it has no `pcaps` subdirectory), sorted by path. The
/// format is told by the magic, not the extension (some `.pcap` files are
/// pcapng).
pub fn pcap_corpus(dir: impl AsRef<Path>) -> PcapCorpus {
    let dir = dir.as_ref();
    let root = if dir.join("pcaps").is_dir() {
        dir.join("pcaps")
    } else {
        dir.to_path_buf()
    };
    let mut files = Vec::new();
    collect_files(&root, &mut files);
    files.sort();

    let mut corpus = PcapCorpus::default();
    for path in files {
        let rel = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        read_file(&path, &rel, &mut corpus);
    }
    corpus
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pcap" | "pcapng" | "cap")
        ) {
            out.push(path);
        }
    }
}

fn read_file(path: &Path, rel: &str, corpus: &mut PcapCorpus) {
    let mut magic = [0u8; 4];
    let is_pcapng = match File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) => magic == PCAPNG_MAGIC,
        Err(e) => {
            corpus
                .files_skipped
                .push((rel.to_string(), format!("cannot read the file magic: {e}")));
            return;
        }
    };
    let file = match File::open(path) {
        Ok(f) => BufReader::new(f),
        Err(e) => {
            corpus
                .files_skipped
                .push((rel.to_string(), format!("cannot open: {e}")));
            return;
        }
    };
    if is_pcapng {
        read_pcapng(file, rel, corpus);
    } else {
        read_pcap(file, rel, corpus);
    }
}

/// Classic pcap. Uses the raw record reader: pcap-file's validated reader
/// rejects records with `orig_len > snaplen`, which every capture taken with
/// a short snap length has, and timestamps it deems invalid; neither matters
/// here. The captured bytes (`incl_len`) are the packet.
fn read_pcap<R: Read>(file: R, rel: &str, corpus: &mut PcapCorpus) {
    let mut reader = match PcapReader::new(file) {
        Ok(r) => r,
        Err(e) => {
            corpus.files_skipped.push((
                rel.to_string(),
                format!("invalid pcap header: {}", describe(&e)),
            ));
            return;
        }
    };
    // The header's link type field also carries FCS information in its
    // upper bits; libpcap masks them off (LT_LINKTYPE) and so do we. Some
    // fuzzer captures set them on Ethernet files.
    let field = u32::from(reader.header().datalink);
    let linktype = DataLink::from(field & LINKTYPE_MASK);
    if linktype != DataLink::ETHERNET {
        corpus.files_skipped.push((
            rel.to_string(),
            format!(
                "link type {} ({linktype:?}), not Ethernet",
                field & LINKTYPE_MASK
            ),
        ));
        return;
    }
    corpus.files_read += 1;
    let mut frame = 0usize;
    while let Some(record) = reader.next_raw_packet() {
        match record {
            Ok(raw) => {
                frame += 1;
                corpus.packets.push(Packet {
                    name: format!("pcap:{rel}#{frame}"),
                    data: raw.data.into_owned(),
                });
            }
            Err(e) => {
                // The reader does not advance past an error: stop here.
                corpus.files_skipped.push((
                    rel.to_string(),
                    format!("parse error after {frame} packets: {}", describe(&e)),
                ));
                return;
            }
        }
    }
}

/// pcapng: each interface has its own link type; only packets of Ethernet
/// interfaces are taken. A new Section Header Block starts a new interface
/// list (the reader tracks that). Frame numbers count every packet block
/// (Enhanced, Simple, obsolete Packet) of the file, as Wireshark does.
fn read_pcapng<R: Read>(file: R, rel: &str, corpus: &mut PcapCorpus) {
    let mut reader = match PcapNgReader::new(file) {
        Ok(r) => r,
        Err(e) => {
            corpus.files_skipped.push((
                rel.to_string(),
                format!("invalid pcapng section header: {}", describe(&e)),
            ));
            return;
        }
    };
    let mut frame = 0usize;
    let mut taken = 0usize;
    let mut other_links: Vec<DataLink> = Vec::new();
    let mut saw_ethernet = false;
    let mut error = None;
    while let Some(block) = reader.next_block() {
        // Owned, so the reader's interface list can be consulted below.
        let block = match block {
            Ok(b) => b.into_owned(),
            Err(e) => {
                error = Some(describe(&e));
                break;
            }
        };
        let (iface, data) = match block {
            Block::EnhancedPacket(b) => (b.interface_id, b.data.into_owned()),
            Block::Packet(b) => (u32::from(b.interface_id), b.data.into_owned()),
            Block::SimplePacket(b) => {
                // The SPB's data includes the block padding: the packet is
                // min(original length, snaplen of interface 0) bytes.
                let snaplen = reader.interfaces().first().map_or(0, |i| i.snaplen);
                let mut len = b.original_len as usize;
                if snaplen != 0 {
                    len = len.min(snaplen as usize);
                }
                let len = len.min(b.data.len());
                (0, b.data[..len].to_vec())
            }
            Block::InterfaceDescription(idb) => {
                if idb.linktype == DataLink::ETHERNET {
                    saw_ethernet = true;
                } else if !other_links.contains(&idb.linktype) {
                    other_links.push(idb.linktype);
                }
                continue;
            }
            _ => continue,
        };
        frame += 1;
        let linktype = reader.interfaces().get(iface as usize).map(|i| i.linktype);
        match linktype {
            Some(DataLink::ETHERNET) => {
                taken += 1;
                corpus.packets.push(Packet {
                    name: format!("pcap:{rel}#{frame}"),
                    data,
                });
            }
            Some(_) => corpus.non_ethernet_packets += 1,
            None => {
                error = Some(format!(
                    "packet {frame} names interface {iface}, which is not described"
                ));
                break;
            }
        }
    }
    if saw_ethernet {
        corpus.files_read += 1;
    } else if error.is_none() {
        let reason = if other_links.is_empty() {
            "no Ethernet interface (no interface description at all)".to_string()
        } else {
            let names: Vec<String> = other_links
                .iter()
                .map(|l| format!("{} ({l:?})", u32::from(*l)))
                .collect();
            format!("link type {}, not Ethernet", names.join(", "))
        };
        corpus.files_skipped.push((rel.to_string(), reason));
    }
    if let Some(e) = error {
        corpus.files_skipped.push((
            rel.to_string(),
            format!("parse error after {taken} Ethernet packets: {e}"),
        ));
    }
}

/// pcap-file's `Display` of an I/O error hides the cause ("Error reading
/// bytes"); name it.
fn describe(e: &PcapError) -> String {
    match e {
        PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "file ends inside a record (unexpected end of file)".to_string()
        }
        PcapError::IoError(io) => format!("I/O error: {io}"),
        other => other.to_string(),
    }
}
