//! Trie bookkeeping: keys masked to a prefix length and flattening (each
//! node carries the strongest action of the prefixes covering it, so one
//! longest-prefix lookup in the kernel sees it). Knows tries as ordered
//! maps of `(length, key)`, nothing of the maps they belong to. (The v1
//! writer's incremental trie updates, with their per-length probe filter,
//! live with it in the bench: `tests/src/bench/v1maps/trie.rs`.)

use std::collections::BTreeMap;

use edge_filter_common::{EntryValue, PortPrefixV4, PortPrefixV6};

use crate::entry::Action;

/// The value of a key or node for an entry of `action` with `id`: it
/// decides for itself until flattening says otherwise. Public for the
/// bench's v1 baseline (`tests/src/bench/v1maps/`), which writes values
/// key by key.
pub fn value(action: Action, id: u32) -> EntryValue {
    EntryValue {
        action: action.abi(),
        own_action: action.abi(),
        _pad: [0; 2],
        id,
        decider: id,
    }
}

/// Trie keys whose leading `bits` can be kept (masked), for flattening.
pub(super) trait TrieKey: Copy + Ord {
    /// Keep the first `bits` bits, zero the rest.
    fn masked(&self, bits: u32) -> Self;
}

fn mask_bytes<const N: usize>(mut b: [u8; N], bits: u32) -> [u8; N] {
    for (i, x) in b.iter_mut().enumerate() {
        let lo = i as u32 * 8;
        let keep: u8 = if lo >= bits {
            0
        } else if lo + 8 > bits {
            0xffu8 << (8 - (bits - lo))
        } else {
            0xff
        };
        *x &= keep;
    }
    b
}

impl<const N: usize> TrieKey for [u8; N] {
    fn masked(&self, bits: u32) -> Self {
        mask_bytes(*self, bits)
    }
}

macro_rules! port_prefix_key {
    ($t:ty, $n:expr) => {
        impl TrieKey for $t {
            fn masked(&self, bits: u32) -> Self {
                let mut b = [0u8; $n];
                b[0] = self.proto;
                b[1] = self.side;
                b[2..4].copy_from_slice(&self.port);
                b[4..].copy_from_slice(&self.addr);
                let b = mask_bytes(b, bits);
                let mut out = *self;
                out.proto = b[0];
                out.side = b[1];
                out.port = [b[2], b[3]];
                out.addr.copy_from_slice(&b[4..]);
                out
            }
        }
    };
}

port_prefix_key!(PortPrefixV4, 8);
port_prefix_key!(PortPrefixV6, 20);

/// Flatten every node of a trie: each node gets the strongest action among
/// itself and the shorter nodes covering it (ties keep the longer, more
/// specific node as decider), in one sweep. Sorted by (data, length), a node comes right after
/// the chain of nodes covering it, so a stack of that chain, each with the
/// best (action, decider) of the chain down to it, gives every node's
/// value from its nearest covering node: O(n log n) instead of one lookup
/// per node and length. (Every node of a port-prefix trie has at least the
/// fixed bits, so no covering node is shorter than them.)
pub(super) fn flatten<K: TrieKey>(trie: &mut BTreeMap<(u32, K), EntryValue>) {
    if trie.is_empty() {
        return;
    }
    let nodes: Vec<(u32, K, EntryValue)> = trie.iter().map(|(&(l, k), &v)| (l, k, v)).collect();
    let mut order: Vec<u32> = (0..nodes.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&nodes[a as usize], &nodes[b as usize]);
        a.1.cmp(&b.1).then(a.0.cmp(&b.0))
    });
    // (length, data, best action, its id) of the covering chain.
    let mut stack: Vec<(u32, K, u8, u32)> = Vec::new();
    let mut flat: Vec<(u8, u32)> = vec![(0, 0); nodes.len()];
    for i in order {
        let (l, k, own) = nodes[i as usize];
        while let Some(&(tl, tk, _, _)) = stack.last() {
            if tl <= l && k.masked(tl) == tk {
                break;
            }
            stack.pop();
        }
        // Strictly stronger beats; a tie keeps the longer node.
        let best = match stack.last() {
            Some(&(_, _, a, id)) if a > own.own_action => (a, id),
            _ => (own.own_action, own.id),
        };
        flat[i as usize] = best;
        stack.push((l, k, best.0, best.1));
    }
    for (v, (action, decider)) in trie.values_mut().zip(flat) {
        v.action = action;
        v.decider = decider;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The per-node definition [`flatten`] must meet: the strongest action
    /// among node `(len, key)` and the shorter nodes covering it, the
    /// longest first (ties keep the longer node as decider).
    fn flat_value<K: TrieKey>(
        trie: &BTreeMap<(u32, K), EntryValue>,
        len: u32,
        key: K,
        own: EntryValue,
    ) -> EntryValue {
        let lens: std::collections::BTreeSet<u32> = trie.keys().map(|(l, _)| *l).collect();
        let mut best = (own.own_action, own.id);
        for &l in lens.iter().rev().filter(|&&l| l < len) {
            if let Some(c) = trie.get(&(l, key.masked(l)))
                && c.own_action > best.0
            {
                best = (c.own_action, c.id);
            }
        }
        EntryValue {
            action: best.0,
            decider: best.1,
            ..own
        }
    }

    /// The one-sweep [`flatten`] gives every node what the per-node
    /// definition ([`flat_value`]) does, on random nested tries with ties.
    #[test]
    fn flatten_sweep_equals_per_node_definition() {
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..50 {
            let mut trie: BTreeMap<(u32, [u8; 4]), EntryValue> = BTreeMap::new();
            for id in 0..rng.random_range(1..300) {
                let len = [0u32, 1, 4, 8, 9, 16, 20, 24, 31, 32][rng.random_range(0..10)];
                let addr = [
                    10,
                    rng.random_range(0..4),
                    rng.random_range(0..4),
                    rng.random(),
                ];
                let action = if rng.random_bool(0.5) {
                    Action::Drop
                } else {
                    Action::Monitor
                };
                trie.insert((len, addr.masked(len)), value(action, id));
            }
            let want: BTreeMap<_, _> = trie
                .iter()
                .map(|(&(l, k), &v)| ((l, k), flat_value(&trie, l, k, v)))
                .collect();
            let mut got = trie.clone();
            flatten(&mut got);
            assert_eq!(got, want, "round {round} (seed {seed})");
        }
    }
}
