//! [`Ids`]: the id of every key of a set, held compactly.
//!
//! Most keys of a big set are exact portless IPv4 entries. As an
//! `IdKey -> u32` hash map each took a 32-byte slot (about 61 MB for 1M
//! keys at the table's load); as a `u32 -> u32` hash map 16-18 bytes (the
//! table at its load, 19 MB for 1.1M). Here they are a vector of
//! `(address, id)` sorted by address, 8 bytes a key: a build sorts them
//! anyway, and a delta's few thousand changes go to a small hash map until
//! they are merged in (a removal marks its place). Every other key stays
//! in a hash map of its own.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use rustc_hash::FxHashMap;

use super::IdKey;
use crate::entry::EntryKey;

/// The id of a removed key in [`Ids::base4`] until the next merge.
const GONE: u32 = u32::MAX;

/// Changes held beside [`Ids::base4`] before they are merged in, at least
/// (and an eighth of the base, so a merge's cost is spread over as many
/// changes as it moves).
const MERGE_AT: usize = 4096;

/// Ids by key (FxHash: the keys are the caller's own, no HashDoS concern).
#[derive(Clone, Debug, Default)]
pub struct Ids {
    /// Exact portless IPv4 entries: `(address, id)` sorted by address;
    /// [`GONE`] for one removed since the last merge.
    base4: Vec<(u32, u32)>,
    /// How many of `base4` are [`GONE`].
    gone4: usize,
    /// Exact portless IPv4 entries added since the last merge (never in
    /// `base4`).
    new4: FxHashMap<u32, u32>,
    /// Every other key.
    other: FxHashMap<IdKey, u32>,
}

/// The address of an exact portless IPv4 entry key.
pub(super) fn exact_addr4(k: &IdKey) -> Option<u32> {
    match k {
        IdKey::Entry(EntryKey {
            net: IpNet::V4(n),
            port: None,
        }) if n.prefix_len() == 32 => Some(u32::from(n.addr())),
        _ => None,
    }
}

/// The key of the exact portless entry of IPv4 address `a`.
pub(super) fn exact_key4(a: u32) -> IdKey {
    IdKey::Entry(EntryKey {
        net: IpNet::V4(Ipv4Net::from(Ipv4Addr::from(a))),
        port: None,
    })
}

impl Ids {
    /// `Ids` of distinct keys. The exact IPv4 keys of a big set are sorted
    /// by address with `sort` (bits `lo..hi` of each `u64`).
    pub(super) fn of_distinct(
        all: Vec<(IdKey, u32)>,
        sort: impl FnOnce(&mut Vec<u64>, u32, u32),
    ) -> Ids {
        let n4 = all.iter().filter(|(k, _)| exact_addr4(k).is_some()).count();
        let mut out = Ids {
            other: FxHashMap::with_capacity_and_hasher(all.len() - n4, Default::default()),
            ..Ids::default()
        };
        let mut pairs: Vec<u64> = Vec::with_capacity(n4);
        for (k, id) in all {
            match exact_addr4(&k) {
                Some(a) => pairs.push(((a as u64) << 32) | id as u64),
                None => {
                    out.other.insert(k, id);
                }
            }
        }
        sort(&mut pairs, 32, 64);
        out.base4 = pairs
            .iter()
            .map(|&x| ((x >> 32) as u32, x as u32))
            .collect();
        out
    }

    /// Where `a` is (or would be) in `base4`.
    fn find4(&self, a: u32) -> Result<usize, usize> {
        self.base4.binary_search_by_key(&a, |&(x, _)| x)
    }

    /// The id of the exact portless entry of IPv4 address `a`, as a
    /// reference into the maps.
    fn get4(&self, a: u32) -> Option<&u32> {
        if let Some(id) = self.new4.get(&a) {
            return Some(id);
        }
        let i = self.find4(a).ok()?;
        let id = &self.base4[i].1;
        (*id != GONE).then_some(id)
    }

    /// Merge the held changes into `base4` once there are enough of them.
    fn settle4(&mut self) {
        if self.new4.len() + self.gone4 < MERGE_AT.max(self.base4.len() / 8) {
            return;
        }
        let mut added: Vec<(u32, u32)> = self.new4.drain().collect();
        added.sort_unstable();
        let mut out = Vec::with_capacity(self.base4.len() - self.gone4 + added.len());
        let mut live = self.base4.iter().copied().filter(|&(_, id)| id != GONE);
        let mut next = live.next();
        for x in added {
            while let Some(b) = next.filter(|b| b.0 < x.0) {
                out.push(b);
                next = live.next();
            }
            out.push(x);
        }
        out.extend(next);
        out.extend(live);
        self.base4 = out;
        self.gone4 = 0;
        self.new4 = FxHashMap::default();
    }

    /// The id of `k`.
    pub fn get(&self, k: &IdKey) -> Option<&u32> {
        match exact_addr4(k) {
            Some(a) => self.get4(a),
            None => self.other.get(k),
        }
    }

    /// The id of the exact portless entry of IPv4 address `a`.
    pub fn get_exact4(&self, a: u32) -> Option<u32> {
        self.get4(a).copied()
    }

    /// Whether `k` has an id.
    pub fn contains_key(&self, k: &IdKey) -> bool {
        self.get(k).is_some()
    }

    /// Give `k` id `id`; returns its previous id.
    pub fn insert(&mut self, k: IdKey, id: u32) -> Option<u32> {
        let Some(a) = exact_addr4(&k) else {
            return self.other.insert(k, id);
        };
        debug_assert_ne!(id, GONE, "an id the datapath can carry");
        let old = match self.find4(a) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.base4[i].1, id);
                if old == GONE {
                    self.gone4 -= 1;
                    None
                } else {
                    Some(old)
                }
            }
            Err(_) => self.new4.insert(a, id),
        };
        self.settle4();
        old
    }

    /// Forget `k`; returns its id.
    pub fn remove(&mut self, k: &IdKey) -> Option<u32> {
        let Some(a) = exact_addr4(k) else {
            return self.other.remove(k);
        };
        if let Some(id) = self.new4.remove(&a) {
            return Some(id);
        }
        let i = self.find4(a).ok()?;
        let old = std::mem::replace(&mut self.base4[i].1, GONE);
        if old == GONE {
            return None;
        }
        self.gone4 += 1;
        self.settle4();
        Some(old)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.base4.len() - self.gone4 + self.new4.len() + self.other.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every id (no order).
    pub fn values(&self) -> impl Iterator<Item = &u32> + '_ {
        (self.base4.iter().map(|(_, id)| id))
            .filter(|&&id| id != GONE)
            .chain(self.new4.values())
            .chain(self.other.values())
    }

    /// Every key (no order).
    pub fn keys(&self) -> impl Iterator<Item = IdKey> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Every key with its id (no order).
    pub fn iter(&self) -> impl Iterator<Item = (IdKey, u32)> + '_ {
        (self.exact4())
            .map(|(a, id)| (exact_key4(a), id))
            .chain(self.other.iter().map(|(&k, &id)| (k, id)))
    }

    /// The exact portless IPv4 keys as (address, id) (no order).
    pub fn exact4(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (self.base4.iter().copied())
            .filter(|&(_, id)| id != GONE)
            .chain(self.new4.iter().map(|(&a, &id)| (a, id)))
    }
}

/// The same keys with the same ids, however they are held.
impl PartialEq for Ids {
    fn eq(&self, o: &Ids) -> bool {
        self.len() == o.len()
            && self.other == o.other
            && self.exact4().all(|(a, id)| o.get_exact4(a) == Some(id))
    }
}

impl Eq for Ids {}

/// `ids[&k]`: the id of `k` (panics when it has none, as a map does).
impl std::ops::Index<&IdKey> for Ids {
    type Output = u32;
    fn index(&self, k: &IdKey) -> &u32 {
        self.get(k).expect("an id for the key")
    }
}

impl Extend<(IdKey, u32)> for Ids {
    fn extend<I: IntoIterator<Item = (IdKey, u32)>>(&mut self, iter: I) {
        for (k, id) in iter {
            self.insert(k, id);
        }
    }
}

impl FromIterator<(IdKey, u32)> for Ids {
    fn from_iter<I: IntoIterator<Item = (IdKey, u32)>>(iter: I) -> Ids {
        let mut ids = Ids::default();
        ids.extend(iter);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{PortMatch, Proto, Side};

    fn key(s: &str, port: Option<u16>) -> IdKey {
        IdKey::Entry(EntryKey {
            net: s.parse().unwrap(),
            port: port.map(|port| PortMatch {
                proto: Proto::Tcp,
                port,
                side: Side::Dst,
            }),
        })
    }

    /// Whichever map a key lives in, it reads, replaces, iterates and
    /// goes as one map would; an exact IPv4 address with a port, an
    /// allowlist /32 and an IPv6 /128 are not taken for exact IPv4 keys.
    #[test]
    fn ids_act_as_one_map() {
        let keys = [
            key("10.0.0.1/32", None),
            key("10.0.0.1/32", Some(22)),
            key("10.0.0.0/24", None),
            key("2001:db8::1/128", None),
            IdKey::Allow("10.0.0.1/32".parse().unwrap()),
        ];
        let mut ids = Ids::default();
        let mut reference = std::collections::HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ids.insert(*k, i as u32), None);
            reference.insert(*k, i as u32);
        }
        assert_eq!(ids.len(), keys.len());
        assert_eq!(ids.exact4().count(), 1);
        for k in &keys {
            assert_eq!(ids.get(k), reference.get(k), "{k:?}");
        }
        assert_eq!(ids.get_exact4(0x0a00_0001), Some(0));
        assert_eq!(ids.insert(keys[0], 9), Some(0));
        reference.insert(keys[0], 9);
        let mut all: Vec<_> = ids.iter().collect();
        all.sort();
        let mut want: Vec<_> = reference.iter().map(|(k, v)| (*k, *v)).collect();
        want.sort();
        assert_eq!(all, want);
        assert_eq!(ids.remove(&keys[1]), Some(1));
        assert!(!ids.contains_key(&keys[1]) && ids.contains_key(&keys[0]));
        assert_eq!(ids.values().count(), keys.len() - 1);
        let back: Ids = ids.iter().collect();
        assert_eq!(back, ids);
    }

    /// Many changes, past several merges into the sorted part: every
    /// step reads as a hash map given the same changes would, and removed
    /// keys come back (into their marked place) with new ids.
    #[test]
    fn ids_follow_a_hash_map_through_merges() {
        use std::collections::HashMap;
        let key4 = |a: u32| exact_key4(a);
        // A built base of 20,000 keys (even addresses), as a build makes.
        let all: Vec<(IdKey, u32)> = (0..20_000u32).map(|i| (key4(i * 2), i)).collect();
        let mut ids = Ids::of_distinct(all.clone(), |v, _, _| v.sort_unstable());
        let mut reference: HashMap<IdKey, u32> = all.into_iter().collect();
        assert_eq!(ids.base4.len(), 20_000);
        // A small deterministic generator (xorshift).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..30_000u32 {
            let r = next();
            let a = (r % 50_000) as u32;
            let k = if r % 97 == 0 {
                key("10.0.0.0/24", Some((r % 1000) as u16))
            } else {
                key4(a)
            };
            if r % 3 == 0 {
                assert_eq!(
                    ids.remove(&k),
                    reference.remove(&k),
                    "remove {k:?} at {step}"
                );
            } else {
                let id = 100_000 + step;
                assert_eq!(
                    ids.insert(k, id),
                    reference.insert(k, id),
                    "insert {k:?} at {step}"
                );
            }
            if step % 5_000 == 0 {
                assert_eq!(ids.len(), reference.len());
            }
            assert_eq!(ids.get(&k), reference.get(&k), "{k:?} at {step}");
        }
        assert_eq!(ids.len(), reference.len());
        for (k, id) in &reference {
            assert_eq!(ids.get(k), Some(id), "{k:?}");
        }
        let mut got: Vec<(IdKey, u32)> = ids.iter().collect();
        got.sort();
        let mut want: Vec<(IdKey, u32)> = reference.iter().map(|(k, v)| (*k, *v)).collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(ids.values().count(), reference.len());
        // Merged at least once: the held changes stay small.
        assert!(ids.new4.len() + ids.gone4 < MERGE_AT.max(ids.base4.len() / 8));
        assert!(
            ids.base4.windows(2).all(|w| w[0].0 < w[1].0),
            "base4 sorted"
        );
        let back: Ids = ids.iter().collect();
        assert_eq!(back, ids);
    }
}
