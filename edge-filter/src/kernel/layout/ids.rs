//! [`Ids`]: the id of every key of a set, held compactly.
//!
//! Most keys of a big set are exact portless IPv4 entries. As an
//! `IdKey -> u32` hash map each took a 32-byte slot (about 61 MB for 1M
//! keys at the table's load); keyed by the address alone such a key takes
//! 8 bytes, and hashes a `u32` instead of an enum. Every other key stays
//! in a map of its own.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use rustc_hash::FxHashMap;

use super::IdKey;
use crate::entry::EntryKey;

/// Ids by key (FxHash: the keys are the caller's own, no HashDoS concern).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Exact portless IPv4 entries, by address.
    exact4: FxHashMap<u32, u32>,
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
    /// Room for `exact4` exact portless IPv4 keys and `other` others.
    fn with_capacity(exact4: usize, other: usize) -> Ids {
        Ids {
            exact4: FxHashMap::with_capacity_and_hasher(exact4, Default::default()),
            other: FxHashMap::with_capacity_and_hasher(other, Default::default()),
        }
    }

    /// `Ids` of distinct keys. The exact IPv4 keys of a big set are
    /// inserted in the order of their place in the table (by the low bits
    /// of their hash, sorted by `sort`: bits `lo..hi` of each `u64`)
    /// rather than at random places of a table much larger than the
    /// caches.
    pub(super) fn of_distinct(
        all: Vec<(IdKey, u32)>,
        sort: impl FnOnce(&mut Vec<u64>, u32, u32),
    ) -> Ids {
        use std::hash::BuildHasher;
        let n4 = all.iter().filter(|(k, _)| exact_addr4(k).is_some()).count();
        let mut out = Ids::with_capacity(n4, all.len() - n4);
        if n4 < 1 << 16 {
            out.extend(all);
            return out;
        }
        let bits = (n4 * 8 / 7).next_power_of_two().trailing_zeros().min(32);
        let h = *out.exact4.hasher();
        let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(n4);
        for (k, id) in all {
            match exact_addr4(&k) {
                Some(a) => pairs.push((a, id)),
                None => {
                    out.other.insert(k, id);
                }
            }
        }
        let mut order: Vec<u64> = (pairs.iter().enumerate())
            .map(|(i, (a, _))| ((h.hash_one(a) as u32 as u64) << 32) | i as u64)
            .collect();
        sort(&mut order, 32, 32 + bits);
        for x in order {
            let (a, id) = pairs[x as u32 as usize];
            out.exact4.insert(a, id);
        }
        out
    }

    /// The id of `k`.
    pub fn get(&self, k: &IdKey) -> Option<&u32> {
        match exact_addr4(k) {
            Some(a) => self.exact4.get(&a),
            None => self.other.get(k),
        }
    }

    /// The id of the exact portless entry of IPv4 address `a`.
    pub fn get_exact4(&self, a: u32) -> Option<u32> {
        self.exact4.get(&a).copied()
    }

    /// Whether `k` has an id.
    pub fn contains_key(&self, k: &IdKey) -> bool {
        self.get(k).is_some()
    }

    /// Give `k` id `id`; returns its previous id.
    pub fn insert(&mut self, k: IdKey, id: u32) -> Option<u32> {
        match exact_addr4(&k) {
            Some(a) => self.exact4.insert(a, id),
            None => self.other.insert(k, id),
        }
    }

    /// Forget `k`; returns its id.
    pub fn remove(&mut self, k: &IdKey) -> Option<u32> {
        match exact_addr4(k) {
            Some(a) => self.exact4.remove(&a),
            None => self.other.remove(k),
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.exact4.len() + self.other.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every id (no order).
    pub fn values(&self) -> impl Iterator<Item = &u32> + '_ {
        self.exact4.values().chain(self.other.values())
    }

    /// Every key (no order).
    pub fn keys(&self) -> impl Iterator<Item = IdKey> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Every key with its id (no order).
    pub fn iter(&self) -> impl Iterator<Item = (IdKey, u32)> + '_ {
        (self.exact4.iter())
            .map(|(&a, &id)| (exact_key4(a), id))
            .chain(self.other.iter().map(|(&k, &id)| (k, id)))
    }

    /// The exact portless IPv4 keys as (address, id) (no order).
    pub fn exact4(&self) -> impl ExactSizeIterator<Item = (u32, u32)> + '_ {
        self.exact4.iter().map(|(&a, &id)| (a, id))
    }
}

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
        assert_eq!(ids.exact4().len(), 1);
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
}
