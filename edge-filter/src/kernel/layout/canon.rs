//! Tables back to meaning: [`decode`] reads the catalog into the entry set
//! and ids (adoption after a restart); [`canonical`] resolves every record,
//! range and trie node to its decision, independent of where things were
//! placed, so two tables with the same content compare equal (a kernel copy
//! against a fresh compile, a delta against a full build).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edge_filter_common::v2::{
    CAT_ALLOW, CAT_DROP, CAT_DST, CAT_PORT, CAT_TCP, CAT_USED, CAT_V6, CODE_NONE, DIR_BLOCK,
    DIR_LINE_MASK, META_INDIRECT, META_PAYLOAD, META_PORT_DST, META_PORT_SRC, META_SPILL,
    PORT_EMPTY, PORT_TREE, PORT_TREE_DEPTH, SLOTS6, dir_depth, meta_code,
};
use ipnet::IpNet;

use super::tables::Tables;
use super::{IdKey, Ids, LayoutError, Result};
use crate::entry::{Action, Entry, EntryKey, EntrySet, PortMatch, Proto, Side};

/// A decision word resolved: code, portless id, port entries, port flags.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resolved {
    /// The `CODE_*`.
    pub code: u32,
    /// The portless id (the payload when there is no port list).
    pub id: u32,
    /// The port list's entries, in key order.
    pub ports: Vec<u64>,
    /// `META_PORT_*` flags.
    pub flags: u32,
}

/// The logical content of tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical {
    /// `V2_CONFIG.flags`.
    pub flags: u32,
    /// The summaries, as they are.
    pub sum4: Vec<u64>,
    /// See [`Canonical::sum4`].
    pub sum6: Vec<u64>,
    /// IPv4 records by address.
    pub records4: BTreeMap<u32, Resolved>,
    /// IPv6 records by address.
    pub records6: BTreeMap<u128, Resolved>,
    /// Per `/16`, its ranges (start, decision), adjacent equal ones merged.
    pub dir4: Vec<Vec<(u16, Resolved)>>,
    /// The active generation of each folded trie, resolved.
    pub trie: [BTreeMap<(u128, u8), Resolved>; 2],
    /// Whether both generations of each trie hold the same nodes (true
    /// whenever no plan is half applied).
    pub tries_in_sync: bool,
    /// The catalog: id -> (word, IPv6 address); IPv6 words without their
    /// address slot.
    pub catalog: BTreeMap<u32, (u64, Option<[u8; 16]>)>,
}

/// Every entry word of a port list, in key order.
fn list_entries(t: &Tables, head: u32) -> Vec<u64> {
    let Some(h) = t.heap.get(head as usize) else {
        return Vec::new();
    };
    if h[0] & PORT_TREE == 0 {
        return h[1..]
            .iter()
            .copied()
            .filter(|&e| e != PORT_EMPTY)
            .collect();
    }
    let mut level = vec![(h[0] >> 36) as u32];
    for _ in 0..PORT_TREE_DEPTH {
        let mut next = Vec::new();
        for l in level {
            let mut v: Vec<u32> = t.heap[l as usize].iter().map(|&e| e as u32).collect();
            v.dedup();
            next.extend(v);
        }
        level = next;
    }
    let mut out: Vec<u64> = Vec::new();
    for l in level {
        for &e in &t.heap[l as usize] {
            if out.last() != Some(&e) {
                out.push(e);
            }
        }
    }
    out
}

/// Resolve a decision word.
pub fn resolve(t: &Tables, m: u32) -> Resolved {
    let m = m & !META_SPILL;
    if m & META_INDIRECT != 0 {
        let head = m & META_PAYLOAD;
        let id = t.heap.get(head as usize).map_or(u32::MAX, |l| l[0] as u32);
        Resolved {
            code: meta_code(m),
            id,
            ports: list_entries(t, head),
            flags: m & (META_PORT_SRC | META_PORT_DST),
        }
    } else {
        let code = meta_code(m);
        Resolved {
            code,
            id: if code == CODE_NONE {
                u32::MAX
            } else {
                m & META_PAYLOAD
            },
            ports: Vec::new(),
            flags: 0,
        }
    }
}

/// The ranges of one `/16` from its directory word.
fn ranges(t: &Tables, w: u32) -> Vec<(u16, Resolved)> {
    if w & DIR_BLOCK == 0 {
        return vec![(0, resolve(t, w))];
    }
    let mut level = vec![w & DIR_LINE_MASK];
    for _ in 0..dir_depth(w) {
        let mut next = Vec::new();
        for l in level {
            let mut v: Vec<u32> = t.heap[l as usize].iter().map(|&e| e as u32).collect();
            v.dedup();
            next.extend(v);
        }
        level = next;
    }
    let mut out: Vec<(u16, Resolved)> = Vec::new();
    for l in level {
        for &e in &t.heap[l as usize] {
            let start = (e >> 48) as u16;
            let r = resolve(t, e as u32);
            if out.last().is_some_and(|(s, x)| *s == start || *x == r) {
                continue;
            }
            out.push((start, r));
        }
    }
    out
}

/// The logical content of `t`.
pub fn canonical(t: &Tables) -> Canonical {
    let mut records4 = BTreeMap::new();
    for b in &t.exact4 {
        for s in &b.slots {
            if s.meta & !META_SPILL != 0 {
                records4.insert(s.addr, resolve(t, s.meta));
            }
        }
    }
    let mut records6 = BTreeMap::new();
    for b in &t.exact6 {
        for i in 0..SLOTS6 {
            if b.metas[i] != 0 {
                records6.insert(u128::from_be_bytes(b.addrs[i]), resolve(t, b.metas[i]));
            }
        }
    }
    let g = (t.config.generation & 1) as usize;
    let trie = [0, 1].map(|f| {
        t.trie[f][g]
            .iter()
            .map(|(k, &v)| (*k, resolve(t, v as u32)))
            .collect()
    });
    let tries_in_sync = (0..2).all(|f| t.trie[f][0] == t.trie[f][1]);
    let catalog = t
        .catalog
        .iter()
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .map(|(id, &w)| {
            // The IPv6 address slot is placement, not content.
            let v6 = w & CAT_V6 != 0;
            let a6 = v6.then(|| t.catalog6[(w as u32) as usize]);
            (id as u32, (if v6 { w & !0xffff_ffff } else { w }, a6))
        })
        .collect();
    Canonical {
        flags: t.config.flags,
        sum4: t.sum4.to_vec(),
        sum6: t.sum6.to_vec(),
        records4,
        records6,
        dir4: t.dir4.iter().map(|&w| ranges(t, w)).collect(),
        trie,
        tries_in_sync,
        catalog,
    }
}

/// The entry set and ids the tables hold, from the catalog.
pub fn decode(t: &Tables) -> Result<(EntrySet, Ids)> {
    let mut set = EntrySet::default();
    let mut ids = Ids::default();
    for (id, &w) in t.catalog.iter().enumerate() {
        if w & CAT_USED == 0 {
            continue;
        }
        let len = ((w >> 48) & 0xff) as u8;
        let low = w as u32;
        let addr = if w & CAT_V6 != 0 {
            let a = t.catalog6.get(low as usize).ok_or_else(|| {
                LayoutError::Decode(format!("id {id}: IPv6 catalog index {low} out of range"))
            })?;
            IpAddr::V6(Ipv6Addr::from(*a))
        } else {
            IpAddr::V4(Ipv4Addr::from(low))
        };
        let net = IpNet::new(addr, len)
            .map_err(|_| LayoutError::Decode(format!("id {id}: prefix length {len}")))?;
        if w & CAT_ALLOW != 0 {
            set.allow.push(net);
            ids.insert(IdKey::Allow(net), id as u32);
            continue;
        }
        let port = (w & CAT_PORT != 0).then_some(PortMatch {
            proto: if w & CAT_TCP != 0 {
                Proto::Tcp
            } else {
                Proto::Udp
            },
            port: (w >> 32) as u16,
            side: if w & CAT_DST != 0 {
                Side::Dst
            } else {
                Side::Src
            },
        });
        let action = if w & CAT_DROP != 0 {
            Action::Drop
        } else {
            Action::Monitor
        };
        let e = Entry::new(net, port, action);
        ids.insert(IdKey::Entry(EntryKey { net, port }), id as u32);
        set.entries.push(e);
    }
    Ok((set, ids))
}
