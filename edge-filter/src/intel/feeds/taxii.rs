//! TAXII 2.1 envelopes (`GET {api_root}/collections/{id}/objects/`):
//! `{"objects": [...], "more": bool, "next": "..."}`, or `{}` when there is
//! nothing (TAXII 2.1 section 3.7: an empty envelope may omit every
//! property).
//!
//! A collection holds every version of its objects; a poll asks for the
//! ones added since the last poll. [`Collection`] keeps, per STIX `id`, the
//! newest version seen (by `modified`, else `created`) and the entries it
//! makes: a newer version replaces an older one whatever order they arrive
//! in, and an older one arriving later changes nothing. A newer version
//! that is revoked, expired or no longer expressible removes the entries of
//! the older one. Each object is read by the STIX parser ([`super::stix`]),
//! so what a pattern becomes is exactly what a STIX bundle of it gives.
//!
//! Indices in [`super::Rejected`] and [`super::Ignored`] are 1-based
//! positions of the objects in the answer (over every page of one poll).
//!
//! As a file format ([`parse`]) a body is read as one recorded envelope:
//! a recorded answer can be replayed or checked offline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, Ignored, Rejected, parse_time};

/// One page of a TAXII objects answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Envelope {
    /// The STIX objects (any type; only indicators make entries).
    pub objects: Vec<Value>,
    /// Whether the server has more objects than this page.
    pub more: bool,
    /// The server's token for the next page, when it pages that way.
    pub next: Option<String>,
}

/// Read one TAXII envelope. `{}` is an empty page. Anything that is not a
/// JSON object with an `objects` array (if any), a boolean `more` (if any)
/// and a string `next` (if any) is [`FeedError::NotJson`] or
/// [`FeedError::NotStix`]: the poll fails and nothing changes.
pub fn envelope(bytes: &[u8]) -> Result<Envelope, FeedError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| FeedError::NotJson(format!("not a TAXII envelope: {e}")))?;
    let Value::Object(mut o) = value else {
        return Err(FeedError::NotStix(
            "not a TAXII envelope: expected a JSON object".into(),
        ));
    };
    let objects = match o.remove("objects") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(FeedError::NotStix(
                "the TAXII envelope's `objects` is not an array".into(),
            ));
        }
    };
    let more = match o.get("more") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(FeedError::NotStix(format!(
                "the TAXII envelope's `more` is not a boolean: {v}"
            )));
        }
    };
    let next = match o.get("next") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(v) => {
            return Err(FeedError::NotStix(format!(
                "the TAXII envelope's `next` is not a token: {v}"
            )));
        }
    };
    Ok(Envelope {
        objects,
        more,
        next,
    })
}

/// One STIX id's newest version seen and what it makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The version: the object's `modified`, else `created` (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    pub version: Option<OffsetDateTime>,
    /// Its entries (none when it is revoked, expired, unsupported or
    /// rejected: the id is kept so an older version cannot come back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<FeedEntry>,
}

/// The indicators of a collection as polled so far, by STIX id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    /// By STIX id.
    pub objects: BTreeMap<String, Held>,
}

/// What applying objects did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Their rejected and ignored objects and the well-formed count
    /// (`entries` is empty: see [`Collection::entries`]).
    pub parse: FeedParse,
    /// Whether the entries held changed.
    pub changed: bool,
}

impl Collection {
    /// Nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries held.
    pub fn entry_count(&self) -> usize {
        self.objects.values().map(|h| h.entries.len()).sum()
    }

    /// Apply `objects` (one page; `first_index` is the 1-based position of
    /// its first object in the poll) into `out`. Entries already expired at
    /// `opts.now` are dropped. Over `opts.limits.max_entries` in all is an
    /// error (the caller then keeps what it held).
    pub fn apply(
        &mut self,
        objects: &[Value],
        first_index: usize,
        opts: &FeedOptions,
        out: &mut Applied,
    ) -> Result<(), FeedError> {
        let now = opts.now.unwrap_or_else(OffsetDateTime::now_utc);
        let mut total = self.entry_count();
        for (i, object) in objects.iter().enumerate() {
            let index = first_index + i;
            let Value::Object(o) = object else {
                out.parse.rejected.push(Rejected {
                    index,
                    reason: "not a JSON object".into(),
                    text: crate::intel::blocklist::clip(&object.to_string(), 200),
                });
                continue;
            };
            if o.get("type").and_then(Value::as_str) != Some("indicator") {
                continue;
            }
            let Some(id) = o.get("id").and_then(Value::as_str) else {
                // The STIX parser says why.
                self.merge_parse(index, object, opts, out)?;
                continue;
            };
            let version = match ["modified", "created"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str))
                .map(parse_time)
            {
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    out.parse.rejected.push(Rejected {
                        index,
                        reason: format!("`modified`/`created`: {e}"),
                        text: id.to_string(),
                    });
                    continue;
                }
                None => None,
            };
            if let Some(held) = self.objects.get(id)
                && held.version.is_some()
                && version < held.version
            {
                // An older version than the one held: superseded.
                out.parse.records += 1;
                continue;
            }
            let parse = self.merge_parse(index, object, opts, out)?;
            let mut entries = parse.entries;
            entries.retain(|e| e.expires.is_none_or(|t| now < t));
            let before = self.objects.get(id).map_or(0, |h| h.entries.len());
            total = total - before + entries.len();
            if total > opts.limits.max_entries {
                return Err(FeedError::TooManyEntries {
                    max: opts.limits.max_entries,
                    at: index,
                });
            }
            let new = Held { version, entries };
            if self.objects.get(id) != Some(&new) {
                let had = self.objects.get(id).map(|h| &h.entries);
                if had.map_or(!new.entries.is_empty(), |h| *h != new.entries) {
                    out.changed = true;
                }
                self.objects.insert(id.to_string(), new);
            }
        }
        Ok(())
    }

    /// The STIX parser's reading of one object, its counts and reasons
    /// added to `out` at `index`.
    fn merge_parse(
        &self,
        index: usize,
        object: &Value,
        opts: &FeedOptions,
        out: &mut Applied,
    ) -> Result<FeedParse, FeedError> {
        let bytes = serde_json::to_vec(&[object]).unwrap_or_default();
        let mut p = super::stix::parse(&bytes, opts)?;
        out.parse.records += p.records;
        out.parse.unsupported += p.unsupported;
        out.parse.skipped += p.skipped;
        out.parse
            .rejected
            .extend(p.rejected.drain(..).map(|r| Rejected { index, ..r }));
        out.parse
            .ignored
            .extend(p.ignored.drain(..).map(|i| Ignored { index, ..i }));
        Ok(p)
    }

    /// Forget entries expired at `now` (the ids stay, with their version).
    /// Whether any was dropped.
    pub fn prune(&mut self, now: OffsetDateTime) -> bool {
        let mut dropped = false;
        for h in self.objects.values_mut() {
            let n = h.entries.len();
            h.entries.retain(|e| e.expires.is_none_or(|t| now < t));
            dropped |= h.entries.len() != n;
        }
        dropped
    }

    /// Every entry held, in STIX id order.
    pub fn entries(&self) -> Vec<FeedEntry> {
        self.objects
            .values()
            .flat_map(|h| h.entries.iter().cloned())
            .collect()
    }
}

/// Parse a body as one recorded TAXII envelope (the newest version of each
/// indicator in it counts).
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    if bytes.len() > opts.limits.max_bytes {
        return Err(FeedError::TooLarge {
            len: bytes.len(),
            max: opts.limits.max_bytes,
        });
    }
    let env = envelope(bytes)?;
    let mut c = Collection::new();
    let mut out = Applied::default();
    c.apply(&env.objects, 1, opts, &mut out)?;
    Ok(FeedParse {
        entries: c.entries(),
        ..out.parse
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn opts() -> FeedOptions {
        FeedOptions {
            now: Some(datetime!(2026-12-01 0:00 UTC)),
            ..FeedOptions::default()
        }
    }

    fn ind(id: &str, modified: &str, ip: &str) -> Value {
        json!({"type": "indicator", "spec_version": "2.1", "id": id,
               "created": "2026-01-01T00:00:00.000Z", "modified": modified,
               "pattern": format!("[ipv4-addr:value = '{ip}']"), "pattern_type": "stix",
               "valid_from": "2026-01-01T00:00:00Z"})
    }

    fn nets(c: &Collection) -> Vec<String> {
        c.entries().iter().map(|e| e.entry.to_string()).collect()
    }

    #[test]
    fn envelopes() {
        assert_eq!(envelope(b"{}").unwrap(), Envelope::default());
        let e = envelope(br#"{"more":true,"next":"abc","objects":[{"type":"x"}]}"#).unwrap();
        assert!(e.more);
        assert_eq!(e.next.as_deref(), Some("abc"));
        assert_eq!(e.objects.len(), 1);
        for bad in [
            &b"<html>"[..],
            b"[]",
            b"{\"objects\":[",
            b"{\"objects\":{}}",
            b"{\"more\":\"yes\"}",
            b"{\"next\":7}",
        ] {
            let e = envelope(bad).unwrap_err().to_string();
            assert!(e.contains("TAXII envelope"), "{e}");
        }
    }

    #[test]
    fn newest_version_per_id_wins() {
        let o = opts();
        let mut c = Collection::new();
        let mut out = Applied::default();
        let v1 = ind("indicator--a", "2026-02-01T00:00:00.000Z", "198.51.100.1");
        let v2 = ind("indicator--a", "2026-03-01T00:00:00.000Z", "198.51.100.2");
        let b = ind("indicator--b", "2026-02-01T00:00:00.000Z", "203.0.113.0/24");
        c.apply(&[v2.clone(), b, v1.clone()], 1, &o, &mut out)
            .unwrap();
        assert!(out.changed);
        assert_eq!(nets(&c), ["198.51.100.2", "203.0.113.0/24"]);
        // The older version arriving later changes nothing.
        let mut out = Applied::default();
        c.apply(&[v1], 1, &o, &mut out).unwrap();
        assert!(!out.changed);
        assert_eq!(nets(&c), ["198.51.100.2", "203.0.113.0/24"]);
        // The same version again: unchanged.
        let mut out = Applied::default();
        c.apply(&[v2], 1, &o, &mut out).unwrap();
        assert!(!out.changed);
        // A revoked newer version removes the entry.
        let mut r = ind("indicator--a", "2026-04-01T00:00:00.000Z", "198.51.100.2");
        r["revoked"] = json!(true);
        let mut out = Applied::default();
        c.apply(
            &[json!({"type": "identity", "id": "identity--x"}), r],
            5,
            &o,
            &mut out,
        )
        .unwrap();
        assert!(out.changed);
        assert_eq!(out.parse.skipped, 1);
        assert_eq!(out.parse.ignored[0].index, 6);
        assert_eq!(nets(&c), ["203.0.113.0/24"]);
        // ... and the version before it cannot come back.
        let mut out = Applied::default();
        let v3 = ind("indicator--a", "2026-03-15T00:00:00.000Z", "198.51.100.3");
        c.apply(&[v3], 1, &o, &mut out).unwrap();
        assert!(!out.changed);
        assert_eq!(nets(&c), ["203.0.113.0/24"]);
        // An expired newer version removes it too.
        let mut e = ind("indicator--b", "2026-05-01T00:00:00.000Z", "203.0.113.0/24");
        e["valid_until"] = json!("2026-06-01T00:00:00Z");
        let mut out = Applied::default();
        c.apply(&[e], 1, &o, &mut out).unwrap();
        assert!(out.changed);
        assert!(c.entries().is_empty());
        // Provenance: the STIX id.
        let mut out = Applied::default();
        let d = ind("indicator--d", "2026-05-01T00:00:00.000Z", "192.0.2.4");
        c.apply(&[d], 1, &o, &mut out).unwrap();
        assert_eq!(c.entries()[0].indicator.as_deref(), Some("indicator--d"));
    }

    #[test]
    fn bad_objects_are_rejected_on_their_own_and_limits_hold() {
        let o = opts();
        let mut c = Collection::new();
        let mut out = Applied::default();
        let mut bad_time = ind("indicator--t", "yesterday", "192.0.2.1");
        bad_time["modified"] = json!("yesterday");
        c.apply(
            &[
                json!(7),
                bad_time,
                ind("indicator--p", "2026-02-01T00:00:00Z", "192.0.2.300"),
                ind("indicator--ok", "2026-02-01T00:00:00Z", "192.0.2.5"),
            ],
            1,
            &o,
            &mut out,
        )
        .unwrap();
        let r: Vec<_> = out.parse.rejected.iter().map(|r| r.index).collect();
        assert_eq!(r, [1, 2, 3]);
        assert_eq!(nets(&c), ["192.0.2.5"]);
        let small = FeedOptions {
            limits: super::super::FeedLimits {
                max_entries: 1,
                ..Default::default()
            },
            ..o
        };
        let before = c.clone();
        let mut next = c.clone();
        let e = next
            .apply(
                &[ind("indicator--z", "2026-02-01T00:00:00Z", "192.0.2.6")],
                1,
                &small,
                &mut Applied::default(),
            )
            .unwrap_err();
        assert!(matches!(e, FeedError::TooManyEntries { max: 1, .. }), "{e}");
        assert_eq!(c, before);
    }

    #[test]
    fn parse_reads_a_recorded_envelope() {
        let body = json!({"more": false, "objects": [
            ind("indicator--a", "2026-02-01T00:00:00Z", "198.51.100.0/25"),
            ind("indicator--a", "2026-01-01T00:00:00Z", "198.51.100.1"),
        ]});
        let p = parse(body.to_string().as_bytes(), &opts()).unwrap();
        let got: Vec<_> = p.entries.iter().map(|e| e.entry.to_string()).collect();
        assert_eq!(got, ["198.51.100.0/25"]);
        assert_eq!(parse(b"{}", &opts()).unwrap(), FeedParse::default());
    }
}
