//! STIX 2.x (2.1, and 2.0 bundles without `pattern_type`).
//!
//! Input: a bundle (`{"type":"bundle","objects":[...]}`), a single STIX
//! object, or a JSON array of objects. Only `indicator` objects are read;
//! other objects (observed-data, bare `ipv4-addr` SCOs, relationships, ...)
//! state no detection rule and are passed over without being counted.
//!
//! Per indicator (index = 1-based position in `objects`):
//!
//! * `revoked: true`, or `valid_until` at or before the parse time: skipped
//!   and counted in [`FeedParse::skipped`](super::FeedParse::skipped), not an
//!   error;
//! * `pattern_type` other than `stix` (sigma, snort, suricata, yara, ...):
//!   unsupported;
//! * the pattern is parsed in full (see `stix_pattern`); a syntax error, an
//!   address that does not parse or a self-contradiction is a rejection;
//! * the alternatives of an OR that can be expressed become entries and the
//!   others are left out: the indicator is then **partial** (its entries
//!   enforced, and listed with what was left out in
//!   [`FeedParse::partial`](super::FeedParse::partial)). Nothing else is
//!   narrowed: AND, FOLLOWEDBY and qualifiers need every part, so one part
//!   that cannot be expressed makes the indicator unsupported (counted,
//!   with the reason in [`FeedParse::ignored`](super::FeedParse::ignored)).
//!
//! Provenance: indicator = the STIX `id`, `confidence`, `valid_from`,
//! expires = `valid_until`, description = `description` (or `name`).
//!
//! # What is expressed
//!
//! * `[ipv4-addr:value = 'A']`, `[ipv6-addr:value = 'A']`, with an address
//!   or a CIDR, `=` or `ISSUBSET`, `IN (...)`, OR-ed comparisons and OR-ed
//!   observations: one address/prefix entry each.
//! * `network-traffic` with exactly one of `src_ref.value` / `dst_ref.value`
//!   (plus matching `*_ref.type` checks), at most one of `src_port` /
//!   `dst_port`, and optionally `protocols[*] = 'tcp'|'udp'`, all AND-ed.
//!   The referenced address is the **remote** end, and the entry's address
//!   is always the packet's source:
//!
//!   | pattern | meaning | entry |
//!   |---|---|---|
//!   | `src_ref.value = A` | A sent the traffic (an attacker) | `A` |
//!   | `src_ref.value = A AND src_port = P` | ... from port P | `A` + port P, side `src` |
//!   | `src_ref.value = A AND dst_port = P` | ... to our port P | `A` + port P, side `dst` |
//!   | `dst_ref.value = A` | a victim connected to A (a C2) | `A` (replies come from A) |
//!   | `dst_ref.value = A AND dst_port = P` | ... to A:P | `A` + port P, side `src` (replies come from A:P) |
//!   | `dst_ref.value = A AND src_port = P` | ... from our port P | `A` + port P, side `dst` |
//!
//!   Without a `protocols` comparison a port entry is emitted for both TCP
//!   and UDP.
//! * `url:value` whose host is an IP literal, only with
//!   [`FeedOptions::url_ip_hosts`](super::FeedOptions::url_ip_hosts): TCP
//!   to the URL's port (or the scheme's default), side `src`.
//!
//! # What is not (counted in `unsupported`)
//!
//! Domains, URLs with host names (and IP-literal URLs by default), file and
//! certificate hashes, email, any object other than addresses and
//! network-traffic, observation expressions joined by AND or FOLLOWEDBY,
//! qualifiers (WITHIN, REPEATS, START/STOP), negation and `!=`, `LIKE`,
//! `MATCHES`, `ISSUPERSET`, `EXISTS`, ordering operators, address objects
//! AND-ed with network-traffic, both `src_ref` and `dst_ref`, both ports, a
//! port or protocol without an address, protocols other than TCP/UDP, and
//! non-STIX pattern types.

use serde_json::{Map, Value};

use super::stix_pattern::{self, Fail};
use super::{FeedEntry, FeedError, FeedOptions, FeedParse, IgnoreKind, Sink, fmt_time, parse_time};
use crate::entry::Entry;

/// Parse a STIX bundle, object or array of objects.
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| FeedError::NotJson(e.to_string()))?;
    let objects: &[Value] = match &doc {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("bundle") => {
            match o.get("objects") {
                None => &[],
                Some(Value::Array(a)) => a,
                Some(_) => {
                    return Err(FeedError::NotStix(
                        "the bundle's `objects` is not an array".to_string(),
                    ));
                }
            }
        }
        Value::Object(o) if o.get("type").is_some_and(Value::is_string) => {
            std::slice::from_ref(&doc)
        }
        Value::Array(a) => a,
        Value::Object(_) => {
            return Err(FeedError::NotStix(
                "the top-level object has no \"type\": expected a STIX bundle, a STIX object or an array of objects".to_string(),
            ));
        }
        _ => {
            return Err(FeedError::NotStix(
                "expected a STIX bundle, a STIX object or an array of objects".to_string(),
            ));
        }
    };
    for (i, object) in objects.iter().enumerate() {
        let index = i + 1;
        match object {
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("indicator") => {
                indicator(&mut sink, index, o)?;
            }
            Value::Object(_) => {}
            other => sink.reject(index, "not a JSON object", &other.to_string()),
        }
    }
    Ok(sink.finish())
}

fn indicator(sink: &mut Sink, index: usize, o: &Map<String, Value>) -> Result<(), FeedError> {
    let id = o.get("id").and_then(Value::as_str);
    let pattern = o.get("pattern").and_then(Value::as_str);
    let text = format!(
        "{} {}",
        id.unwrap_or("(no id)"),
        pattern.unwrap_or("(no pattern)")
    );
    let Some(id) = id else {
        sink.reject(index, "indicator without an `id`", &text);
        return Ok(());
    };
    match o.get("revoked") {
        None | Some(Value::Bool(false)) | Some(Value::Null) => {}
        Some(Value::Bool(true)) => {
            sink.ignore(index, IgnoreKind::Revoked, "revoked", &text);
            return Ok(());
        }
        Some(v) => {
            sink.reject(
                index,
                format!("`revoked` must be a boolean, got {v}"),
                &text,
            );
            return Ok(());
        }
    }
    let time = |key: &str| match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(s).map(Some).map_err(|e| format!("`{key}`: {e}")),
        Some(v) => Err(format!("`{key}` must be a timestamp string, got {v}")),
    };
    let (valid_from, valid_until) = match (time("valid_from"), time("valid_until")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            sink.reject(index, e, &text);
            return Ok(());
        }
    };
    if let Some(until) = valid_until.filter(|_| sink.expired(valid_until)) {
        sink.ignore(
            index,
            IgnoreKind::Expired,
            format!("expired: valid_until {}", fmt_time(until)),
            &text,
        );
        return Ok(());
    }
    let confidence = match o.get("confidence") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(c) if c <= 100 => Some(c as u8),
            _ => {
                sink.reject(index, format!("confidence {v} out of range (0-100)"), &text);
                return Ok(());
            }
        },
    };
    match o.get("pattern_type").and_then(Value::as_str) {
        None | Some("stix") => {}
        Some(other) => {
            sink.ignore(
                index,
                IgnoreKind::Unsupported,
                format!("pattern_type '{other}' is not a STIX pattern"),
                &text,
            );
            return Ok(());
        }
    }
    let Some(pattern) = pattern else {
        sink.reject(index, "indicator without a `pattern`", &text);
        return Ok(());
    };
    let expr = match stix_pattern::parse(pattern) {
        Ok(e) => e,
        Err(e) => {
            sink.reject(index, format!("invalid STIX pattern: {e}"), &text);
            return Ok(());
        }
    };
    match stix_pattern::translate(&expr, sink.opts.url_ip_hosts) {
        Ok(t) => {
            if !t.dropped.is_empty() {
                let n = t.dropped.len();
                sink.partial(
                    index,
                    format!(
                        "partial: {} of {} OR alternatives enforced; left out: {}",
                        alternatives(&expr).saturating_sub(n).max(1),
                        alternatives(&expr).max(n + 1),
                        t.dropped.join("; ")
                    ),
                    &text,
                );
            }
            let targets = t.targets;
            let description = ["description", "name"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str))
                .map(str::to_string);
            for t in targets {
                let entry = FeedEntry {
                    entry: Entry::new(t.net, t.port, sink.opts.action),
                    indicator: Some(id.to_string()),
                    confidence,
                    valid_from,
                    expires: valid_until,
                    description: description.clone(),
                };
                sink.push(index, entry)?;
            }
        }
        Err(Fail::Unsupported(reason)) => {
            sink.ignore(index, IgnoreKind::Unsupported, reason, &text)
        }
        Err(Fail::Invalid(reason)) => sink.reject(index, reason, &text),
    }
    Ok(())
}

/// How many alternatives the pattern's top-level OR has (of observations,
/// or of comparisons inside a single observation), for the partial
/// report.
fn alternatives(expr: &stix_pattern::ObsExpr) -> usize {
    use stix_pattern::{CmpExpr, ObsExpr};
    fn cmp(c: &CmpExpr) -> usize {
        match c {
            CmpExpr::Or(v) => v.iter().map(cmp).sum(),
            _ => 1,
        }
    }
    match expr {
        ObsExpr::Or(v) => v.iter().map(alternatives).sum(),
        ObsExpr::Obs(c) => cmp(c),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn run(doc: &Value) -> Result<FeedParse, FeedError> {
        let opts = FeedOptions {
            now: Some(datetime!(2025-01-01 0:00 UTC)),
            ..FeedOptions::default()
        };
        parse(doc.to_string().as_bytes(), &opts)
    }

    fn ind(id: &str, pattern: &str) -> Value {
        json!({"type": "indicator", "spec_version": "2.1", "id": id, "pattern": pattern,
               "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z"})
    }

    #[test]
    fn provenance_and_validity() {
        let mut a = ind("indicator--a", "[ipv4-addr:value = '198.51.100.1']");
        a["confidence"] = json!(85);
        a["valid_until"] = json!("2026-01-01T00:00:00Z");
        a["name"] = json!("C2");
        let mut revoked = ind("indicator--r", "[ipv4-addr:value = '198.51.100.2']");
        revoked["revoked"] = json!(true);
        let mut expired = ind("indicator--e", "[ipv4-addr:value = '198.51.100.3']");
        expired["valid_until"] = json!("2024-06-01T00:00:00Z");
        let mut sigma = ind("indicator--s", "[title: x]");
        sigma["pattern_type"] = json!("sigma");
        let doc = json!({"type": "bundle", "id": "bundle--1", "objects": [
            a, revoked, expired, sigma,
            {"type": "ipv4-addr", "id": "ipv4-addr--1", "value": "198.51.100.9"},
            ind("indicator--d", "[domain-name:value = 'example.com']"),
        ]});
        let p = run(&doc).unwrap();
        assert_eq!(p.entries.len(), 1);
        let e = &p.entries[0];
        assert_eq!(e.entry.to_string(), "198.51.100.1");
        assert_eq!(e.indicator.as_deref(), Some("indicator--a"));
        assert_eq!(e.confidence, Some(85));
        assert_eq!(e.valid_from, Some(datetime!(2024-01-01 0:00 UTC)));
        assert_eq!(e.expires, Some(datetime!(2026-01-01 0:00 UTC)));
        assert_eq!(e.description.as_deref(), Some("C2"));
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        assert_eq!(p.skipped, 2);
        assert_eq!(p.unsupported, 2);
        let ig: Vec<_> = p
            .ignored
            .iter()
            .map(|i| (i.index, i.kind, i.reason.as_str()))
            .collect();
        assert_eq!(
            ig,
            [
                (2, IgnoreKind::Revoked, "revoked"),
                (
                    3,
                    IgnoreKind::Expired,
                    "expired: valid_until 2024-06-01T00:00:00Z"
                ),
                (
                    4,
                    IgnoreKind::Unsupported,
                    "pattern_type 'sigma' is not a STIX pattern"
                ),
                (
                    6,
                    IgnoreKind::Unsupported,
                    "cannot express 'domain-name:value'"
                ),
            ]
        );
        assert!(p.ignored[3].text.starts_with("indicator--d [domain-name"));
    }

    #[test]
    fn rejections() {
        let mut bad_conf = ind("indicator--c", "[ipv4-addr:value = '198.51.100.1']");
        bad_conf["confidence"] = json!(101);
        let mut bad_time = ind("indicator--t", "[ipv4-addr:value = '198.51.100.1']");
        bad_time["valid_until"] = json!("tomorrow");
        let mut no_id = ind("x", "[ipv4-addr:value = '198.51.100.1']");
        no_id.as_object_mut().unwrap().remove("id");
        let doc = json!([
            bad_conf, bad_time, no_id,
            ind("indicator--p", "[ipv4-addr:value = '198.51.100.1'"),
            ind("indicator--v", "[ipv4-addr:value = '198.51.100.0/33']"),
            {"type": "indicator", "id": "indicator--n"},
            7,
        ]);
        let p = run(&doc).unwrap();
        assert!(p.entries.is_empty());
        let r: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                (1, "confidence 101 out of range (0-100)"),
                (
                    2,
                    "`valid_until`: invalid timestamp 'tomorrow' (expected RFC 3339, e.g. 2026-12-01T00:00:00Z)"
                ),
                (3, "indicator without an `id`"),
                (4, "invalid STIX pattern: expected ']', found the end"),
                (5, "ipv4-addr:value: prefix length 33 exceeds 32"),
                (6, "indicator without a `pattern`"),
                (7, "not a JSON object"),
            ]
        );
    }

    #[test]
    fn single_object_and_stix20() {
        let doc = json!({"type": "indicator", "id": "indicator--1", "labels": ["malicious-activity"],
                         "pattern": "[ipv4-addr:value = '203.0.113.7'] OR [ipv6-addr:value = '2001:db8::/48']",
                         "valid_from": "2016-01-01T00:00:00Z"});
        let p = run(&doc).unwrap();
        let got: Vec<_> = p.entries.iter().map(|e| e.entry.to_string()).collect();
        assert_eq!(got, ["203.0.113.7", "2001:db8::/48"]);
    }

    #[test]
    fn or_with_a_domain_keeps_the_address() {
        // 25 indicators `[domain-name:value = D OR ipv4-addr:value = A]`
        // over 18 distinct addresses (as exported by MISP and OpenCTI).
        let objects: Vec<Value> = (0..25)
            .map(|i| {
                ind(
                    &format!("indicator--{i}"),
                    &format!(
                        "[domain-name:value = 'h{i}.example' OR ipv4-addr:value = '198.51.100.{}']",
                        i % 18
                    ),
                )
            })
            .collect();
        let p = run(&json!({"type": "bundle", "id": "bundle--1", "objects": objects})).unwrap();
        let distinct: std::collections::BTreeSet<_> =
            p.entries.iter().map(|e| e.entry.to_string()).collect();
        assert_eq!((p.entries.len(), distinct.len()), (25, 18));
        assert_eq!((p.partial.len(), p.unsupported, p.records), (25, 0, 25));
        assert_eq!(
            p.partial[0].reason,
            "partial: 1 of 2 OR alternatives enforced; left out: cannot express 'domain-name:value'"
        );
        assert!(p.partial[0].text.starts_with("indicator--0 [domain-name"));
        assert_eq!(p.entries[3].indicator.as_deref(), Some("indicator--3"));
    }

    #[test]
    fn whole_document_errors() {
        assert!(matches!(
            parse(b"", &FeedOptions::default()),
            Err(FeedError::NotJson(_))
        ));
        assert_eq!(
            run(&json!({"ipv4": {"STIX": []}})).unwrap_err().to_string(),
            "not STIX: the top-level object has no \"type\": expected a STIX bundle, a STIX object or an array of objects"
        );
        assert!(matches!(run(&json!("x")), Err(FeedError::NotStix(_))));
        assert!(matches!(
            run(&json!({"type": "bundle", "objects": 1})),
            Err(FeedError::NotStix(_))
        ));
        assert_eq!(
            run(&json!({"type": "bundle"})).unwrap(),
            FeedParse::default()
        );
    }
}
