//! The comparison at the heart of the differential tests (the integration
//! test and `ef-vmcheck` in the VM matrix): one kernel verdict against the
//! reference classifier's.

use std::collections::HashMap;

use edge_filter::entry::Proto;
use edge_filter::kernel::classifier::{KernelClassifier, KernelVerdict};
use edge_filter::kernel::maps::SlotKey;
use edge_filter::reference::{Reference, Verdict};
use edge_filter_common::{self as abi, ReasonInfo};

/// The verdict reasons of matching and non-matching packets (every entry
/// kind, drop and monitor; the malformed classes come on top): a corpus
/// run over the shared entry sets must reach each one.
pub const MATCH_REASONS: [&str; 11] = [
    "pass_no_match",
    "pass_allowlist",
    "pass_non_ip",
    "drop_addr",
    "drop_prefix",
    "drop_addr_port",
    "drop_prefix_port",
    "monitor_addr",
    "monitor_prefix",
    "monitor_addr_port",
    "monitor_prefix_port",
];

/// XDP_DROP.
pub const XDP_DROP: u32 = 1;
/// XDP_PASS.
pub const XDP_PASS: u32 = 2;

/// Compare one verdict pair: reason, XDP action, and that the deciding
/// entry the kernel names is one the reference says matches with the
/// deciding kind and action. `None` when they agree; `ids` maps kernel entry ids to map keys.
pub fn compare(
    k: &KernelVerdict,
    r: &Verdict,
    reference: &Reference,
    ids: &HashMap<u32, SlotKey>,
) -> Option<String> {
    if k.reason != r.reason {
        return Some(format!(
            "reason: kernel {} ({}), reference {} ({})",
            k.reason,
            edge_filter::kernel::counters::reason_name(k.reason),
            r.reason,
            edge_filter::kernel::counters::reason_name(r.reason)
        ));
    }
    let want_action = if r.is_drop() { XDP_DROP } else { XDP_PASS };
    if k.action != want_action {
        return Some(format!(
            "XDP action: kernel {}, reference wants {want_action}",
            k.action
        ));
    }
    // The deciding entry the kernel names must be one the reference says
    // matches, with the deciding action and kind (ties may pick either).
    if let Some(ReasonInfo::Entry { kind, action }) = ReasonInfo::decode(k.reason) {
        let Some(SlotKey::Entry(key)) = ids.get(&k.entry_id) else {
            return Some(format!("kernel decider id {} is not an entry", k.entry_id));
        };
        let info = r.info.as_ref()?;
        let ports = info.ports.map(|(s, d)| {
            let proto = if info.proto == abi::PROTO_TCP {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            (proto, s, d)
        });
        let ok = reference
            .matching(info.src, ports)
            .iter()
            .any(|e| e.key() == *key && e.kind() == kind && e.action.abi() == action);
        if !ok {
            return Some(format!(
                "kernel decider {key:?} is not a matching {} {} entry",
                kind.name(),
                if action == abi::ACTION_DROP {
                    "drop"
                } else {
                    "monitor"
                }
            ));
        }
    }
    None
}

/// Which key (entry or allowlist net) has which id in `kernel`'s maps: what
/// a verdict's deciding id names.
pub fn keys_by_id(
    kernel: &KernelClassifier,
) -> Result<HashMap<u32, SlotKey>, edge_filter::error::Error> {
    Ok(kernel
        .maps()
        .read()?
        .entries()
        .into_iter()
        .map(|(k, v)| (v.id, k))
        .collect())
}
