//! MISP events and attributes (`format = "misp"`).
//!
//! Input, any of:
//!
//! * an event as MISP exports it, `{"Event": {...}}` (also each file of a
//!   MISP feed), or a bare event body (`{"info": ..., "Attribute": [...]}`);
//! * a list of those;
//! * a `restSearch` answer: `{"response": [{"Event": ...}, ...]}`
//!   (`/events/restSearch`) or `{"response": {"Attribute": [...]}}`
//!   (`/attributes/restSearch`, each attribute carrying its `Event`).
//!
//! A MISP feed (manifest.json and one file per event) and the
//! `restSearch` API are fetched by [`crate::intel::misp`], which parses each
//! answer with [`parse`].
//!
//! Attributes enforced (the others are counted as unsupported):
//!
//! | type | entry |
//! |---|---|
//! | `ip-src`, `ip-dst` (address or CIDR) | the address |
//! | `domain\|ip` | the IP part |
//! | `ip-src\|port`, `ip-dst\|port` | the address + port, TCP and UDP, as the packets' source port |
//! | object `ip-port`: `ip` (or `ip-dst`, `ip-src`) with `dst-port` | the address + port, TCP and UDP, as the packets' source port |
//!
//! The port maps as in STIX (see [`super::stix`]): `ip-dst|port` is a
//! destination a victim reached (a C2 at A:P), whose replies come from A
//! with source port P; `ip-src|port` is a source A sending from port P.
//!
//! Only attributes marked `to_ids` are indicators: the others become
//! `monitor` entries (counted, let through) or are skipped
//! ([`NonIds`]). A `deleted` attribute is skipped (counted as revoked).
//! The confidence is the highest one that the attribute's tags map to, else
//! the event's tags, else its threat level (see [`MispOptions`]); without
//! a mapping entries have none. The attribute's `uuid` is the entry's
//! indicator and the event's `info` its description.
//!
//! Indices in [`super::Rejected`] and [`super::Ignored`] count the
//! attributes in document order (an event's attributes, then its objects'
//! attributes), from 1.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, IgnoreKind, Sink};
use crate::entry::{Action, Entry, PortMatch, Proto, Side};
use crate::intel::blocklist::parse_net;

/// What becomes of an attribute whose `to_ids` is false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonIds {
    /// Enforced as `monitor` (counted, let through).
    #[default]
    Monitor,
    /// Not enforced (counted as unsupported, with the reason).
    Skip,
}

/// How MISP attributes become entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MispOptions {
    /// Attributes with `to_ids` false.
    #[serde(default)]
    pub non_ids: NonIds,
    /// Confidence (0-100) by tag name, e.g.
    /// `'estimative-language:confidence-in-analytic-judgment="high"' = 90`:
    /// the highest of an attribute's tags counts, else the highest of its
    /// event's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_confidence: BTreeMap<String, u8>,
    /// Confidence (0-100) by the event's threat level (`high`, `medium`,
    /// `low`, `undefined`: `threat_level_id` 1 to 4), when no tag gives one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub threat_level_confidence: BTreeMap<ThreatLevel, u8>,
}

/// A MISP event's threat level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreatLevel {
    /// `threat_level_id` 1.
    High,
    /// 2.
    Medium,
    /// 3.
    Low,
    /// 4.
    Undefined,
}

impl ThreatLevel {
    fn from_id(v: &Value) -> Option<ThreatLevel> {
        let id = match v {
            Value::Number(n) => n.as_u64()?,
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        Some(match id {
            1 => ThreatLevel::High,
            2 => ThreatLevel::Medium,
            3 => ThreatLevel::Low,
            4 => ThreatLevel::Undefined,
            _ => return None,
        })
    }
}

impl MispOptions {
    /// Problems with the mapping (confidences over 100).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (tag, c) in &self.tag_confidence {
            if *c > 100 {
                p.push(format!("misp.tag_confidence: '{tag}' = {c} is over 100"));
            }
        }
        for (level, c) in &self.threat_level_confidence {
            if *c > 100 {
                p.push(format!(
                    "misp.threat_level_confidence: {level:?} = {c} is over 100"
                ));
            }
        }
        p
    }

    /// The highest confidence `tags` map to.
    fn tags(&self, tags: Option<&Value>) -> Option<u8> {
        tags?
            .as_array()?
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .filter_map(|name| self.tag_confidence.get(name.trim()).copied())
            .max()
    }
}

/// What an attribute needs from its event.
struct EventCtx<'a> {
    info: Option<&'a str>,
    /// From the event's tags, else its threat level.
    confidence: Option<u8>,
}

impl<'a> EventCtx<'a> {
    fn new(event: &'a Map<String, Value>, opts: &MispOptions) -> Self {
        let confidence = opts.tags(event.get("Tag")).or_else(|| {
            event
                .get("threat_level_id")
                .and_then(ThreatLevel::from_id)
                .and_then(|l| opts.threat_level_confidence.get(&l).copied())
        });
        EventCtx {
            info: event
                .get("info")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty()),
            confidence,
        }
    }
}

/// The events (or attributes) a document holds.
enum Doc<'a> {
    Events(Vec<&'a Map<String, Value>>),
    /// `/attributes/restSearch`: attributes, each with its `Event`.
    Attributes(&'a [Value]),
}

fn not_misp(why: &str) -> FeedError {
    FeedError::NotMisp(why.to_string())
}

/// Whether an object is an event body (rather than a wrapper).
fn is_event(o: &Map<String, Value>) -> bool {
    o.contains_key("Attribute") || o.contains_key("Object") || o.contains_key("info")
}

fn event_of(v: &Value) -> Result<&Map<String, Value>, FeedError> {
    match v {
        Value::Object(o) => match o.get("Event") {
            Some(Value::Object(e)) => Ok(e),
            Some(_) => Err(not_misp("\"Event\" is not an object")),
            None if is_event(o) => Ok(o),
            None => Err(not_misp(
                "an element is neither {\"Event\": ...} nor an event (no \"Attribute\", \"Object\" or \"info\")",
            )),
        },
        _ => Err(not_misp("an element of the list is not an object")),
    }
}

fn doc(v: &Value) -> Result<Doc<'_>, FeedError> {
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("response") {
                return match r {
                    Value::Array(a) => Ok(Doc::Events(
                        a.iter().map(event_of).collect::<Result<_, _>>()?,
                    )),
                    Value::Object(r) => match r.get("Attribute") {
                        Some(Value::Array(a)) => Ok(Doc::Attributes(a)),
                        None => Ok(Doc::Attributes(&[])),
                        Some(_) => Err(not_misp("\"response\".\"Attribute\" is not a list")),
                    },
                    _ => Err(not_misp(
                        "\"response\" is neither a list of events nor {\"Attribute\": [...]}",
                    )),
                };
            }
            Ok(Doc::Events(vec![event_of(v)?]))
        }
        Value::Array(a) => Ok(Doc::Events(
            a.iter().map(event_of).collect::<Result<_, _>>()?,
        )),
        _ => Err(not_misp(
            "expected {\"Event\": ...}, an event, a list of events or a restSearch answer {\"response\": ...}",
        )),
    }
}

/// Parse a MISP document (see the module documentation).
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| FeedError::NotJson(e.to_string()))?;
    let mut index = 0usize;
    match doc(&value)? {
        Doc::Events(events) => {
            for ev in events {
                event(&mut sink, &mut index, ev)?;
            }
        }
        Doc::Attributes(attrs) => {
            for a in attrs {
                index += 1;
                let Some(o) = a.as_object() else {
                    sink.reject(index, "attribute is not an object", &a.to_string());
                    continue;
                };
                let ev = o.get("Event").and_then(Value::as_object);
                let empty = Map::new();
                let ctx = EventCtx::new(ev.unwrap_or(&empty), &opts.misp);
                attribute(&mut sink, index, o, &ctx, None)?;
            }
        }
    }
    Ok(sink.finish())
}

/// One event's attributes and objects.
fn event(sink: &mut Sink, index: &mut usize, ev: &Map<String, Value>) -> Result<(), FeedError> {
    let ctx = EventCtx::new(ev, &sink.opts.misp);
    let list = |key: &str| match ev.get(key) {
        Some(Value::Array(a)) => a.as_slice(),
        _ => &[],
    };
    for a in list("Attribute") {
        *index += 1;
        match a.as_object() {
            Some(o) => attribute(sink, *index, o, &ctx, None)?,
            None => sink.reject(*index, "attribute is not an object", &a.to_string()),
        }
    }
    for obj in list("Object") {
        let attrs: &[Value] = match obj.get("Attribute") {
            Some(Value::Array(a)) => a,
            _ => &[],
        };
        let deleted = |a: &Value| truthy(a.get("deleted"));
        // ip-port: the IPs take the object's destination port(s).
        let ports: Vec<u16> = if obj.get("name").and_then(Value::as_str) == Some("ip-port") {
            attrs
                .iter()
                .filter(|a| relation(a) == Some("dst-port") && !deleted(a))
                .filter_map(|a| value_str(a)?.trim().parse().ok())
                .collect()
        } else {
            Vec::new()
        };
        for a in attrs {
            *index += 1;
            let Some(o) = a.as_object() else {
                sink.reject(*index, "attribute is not an object", &a.to_string());
                continue;
            };
            let rel = relation(a);
            if !ports.is_empty() && matches!(rel, Some("dst-port")) {
                // Used with the object's IPs.
                sink.count_record(*index);
                continue;
            }
            let with_ports = (!ports.is_empty() && matches!(rel, Some("ip" | "ip-dst" | "ip-src")))
                .then_some(ports.as_slice());
            attribute(sink, *index, o, &ctx, with_ports)?;
        }
    }
    Ok(())
}

fn relation(a: &Value) -> Option<&str> {
    a.get("object_relation").and_then(Value::as_str)
}

fn value_str(a: &Value) -> Option<&str> {
    a.get("value").and_then(Value::as_str)
}

/// MISP writes booleans as `true`, `"1"` or `1`.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_u64().is_some_and(|n| n != 0),
        Some(Value::String(s)) => matches!(s.trim(), "1" | "true" | "True"),
        _ => false,
    }
}

/// One attribute; `ports` are an `ip-port` object's destination ports for
/// its IP.
fn attribute(
    sink: &mut Sink,
    index: usize,
    a: &Map<String, Value>,
    ctx: &EventCtx,
    ports: Option<&[u16]>,
) -> Result<(), FeedError> {
    let kind = a.get("type").and_then(Value::as_str).unwrap_or("");
    let value = a.get("value").and_then(Value::as_str);
    let uuid = a.get("uuid").and_then(Value::as_str);
    let text = format!(
        "{} {kind} {}",
        uuid.unwrap_or("(no uuid)"),
        value.unwrap_or("(no value)")
    );
    let (Some(value), false) = (value, kind.is_empty()) else {
        sink.reject(index, "attribute without a type or value", &text);
        return Ok(());
    };
    if truthy(a.get("deleted")) {
        sink.ignore(index, IgnoreKind::Revoked, "deleted", &text);
        return Ok(());
    }
    let value = value.trim();
    let (addr, port) = match kind {
        "ip-src" | "ip-dst" => (value, None),
        "domain|ip" => match value.split_once('|') {
            Some((_, ip)) => (ip, None),
            None => {
                sink.reject(index, "domain|ip without '|'", &text);
                return Ok(());
            }
        },
        "ip-src|port" | "ip-dst|port" => match value.rsplit_once('|') {
            Some((ip, p)) => match p.trim().parse::<u16>() {
                Ok(p) => (ip, Some(p)),
                Err(_) => {
                    sink.reject(index, format!("invalid port '{}'", p.trim()), &text);
                    return Ok(());
                }
            },
            None => {
                sink.reject(index, format!("{kind} without '|'"), &text);
                return Ok(());
            }
        },
        other => {
            sink.ignore(
                index,
                IgnoreKind::Unsupported,
                format!("attribute type '{other}' cannot be expressed"),
                &text,
            );
            return Ok(());
        }
    };
    let net: IpNet = match parse_net(addr.trim()) {
        Ok(n) => n,
        Err(e) => {
            sink.reject(index, e, &text);
            return Ok(());
        }
    };
    let action = if truthy(a.get("to_ids")) {
        sink.opts.action
    } else {
        match sink.opts.misp.non_ids {
            NonIds::Monitor => Action::Monitor,
            NonIds::Skip => {
                sink.ignore(
                    index,
                    IgnoreKind::Unsupported,
                    "to_ids is false (misp.non_ids = \"skip\")",
                    &text,
                );
                return Ok(());
            }
        }
    };
    let confidence = sink.opts.misp.tags(a.get("Tag")).or(ctx.confidence);
    let ports: Vec<Option<u16>> = match (port, ports) {
        (Some(p), _) => vec![Some(p)],
        (None, Some(ps)) => ps.iter().copied().map(Some).collect(),
        (None, None) => vec![None],
    };
    for port in ports {
        let matches: Vec<Option<PortMatch>> = match port {
            None => vec![None],
            Some(port) => [Proto::Tcp, Proto::Udp]
                .into_iter()
                .map(|proto| {
                    Some(PortMatch {
                        proto,
                        port,
                        side: Side::Src,
                    })
                })
                .collect(),
        };
        for m in matches {
            let e = FeedEntry {
                entry: Entry::new(net, m, action),
                indicator: uuid.map(str::to_string),
                confidence,
                valid_from: None,
                expires: None,
                description: ctx.info.map(str::to_string),
            };
            sink.push(index, e)?;
        }
    }
    Ok(())
}

/// Whether a JSON document looks like MISP (for `auto`): its first key is
/// `Event` or `response`, or it is an event body (`Attribute`/`Object`
/// with `info`), or a list starting with `{"Event": ...}`.
pub(crate) fn looks_like(head: &str) -> bool {
    let t = head.trim_start();
    let first_key = |s: &str| -> Option<String> {
        let s = s.strip_prefix('{')?.trim_start();
        let s = s.strip_prefix('"')?;
        Some(s[..s.find('"')?].to_string())
    };
    if let Some(rest) = t.strip_prefix('[') {
        return first_key(rest.trim_start()).as_deref() == Some("Event");
    }
    match first_key(t).as_deref() {
        Some("Event" | "response") => true,
        Some(_) => {
            (head.contains("\"Attribute\"") || head.contains("\"Object\""))
                && head.contains("\"info\"")
                && !head.contains("\"spec_version\"")
                && !head.contains("\"objects\"")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(doc: &Value, misp: MispOptions) -> FeedParse {
        let opts = FeedOptions {
            misp,
            ..FeedOptions::default()
        };
        parse(doc.to_string().as_bytes(), &opts).unwrap()
    }

    fn attr(kind: &str, value: &str, ids: bool) -> Value {
        json!({"type": kind, "value": value, "to_ids": ids, "uuid": format!("u-{value}")})
    }

    fn event() -> Value {
        json!({"info": "C2 servers", "uuid": "e-1", "threat_level_id": "1",
            "Tag": [{"name": "tlp:white"}],
            "Attribute": [
                attr("ip-src", "198.51.100.7", true),
                attr("ip-dst|port", "203.0.113.5|8443", true),
                attr("domain|ip", "evil.example|192.0.2.9", true),
                attr("ip-dst", "192.0.2.44", false),
                {"type": "ip-dst", "value": "192.0.2.45", "to_ids": true, "deleted": true, "uuid": "u-del"},
                attr("domain", "evil.example", true),
                {"type": "ip-src", "value": "198.51.100.0/24", "to_ids": "1", "uuid": "u-net"},
                attr("ip-src", "not-an-ip", true),
                attr("ip-src|port", "198.51.100.8|99999", true),
            ],
            "Object": [{"name": "ip-port", "Attribute": [
                {"type": "ip-dst", "object_relation": "ip", "value": "198.51.100.99", "to_ids": true, "uuid": "u-obj"},
                {"type": "port", "object_relation": "dst-port", "value": "4444", "to_ids": false},
                {"type": "domain", "object_relation": "domain", "value": "x.example", "to_ids": false},
            ]}, {"name": "domain-ip", "Attribute": [
                {"type": "ip-dst", "object_relation": "ip", "value": "192.0.2.77", "to_ids": "1", "uuid": "u-dip"},
            ]}]
        })
    }

    fn shown(p: &FeedParse) -> Vec<String> {
        p.entries.iter().map(|e| e.entry.to_string()).collect()
    }

    #[test]
    fn attributes_and_objects() {
        for doc in [
            json!({"Event": event()}),
            event(),
            json!([{"Event": event()}]),
            json!({"response": [{"Event": event()}]}),
        ] {
            let p = run(&doc, MispOptions::default());
            assert_eq!(
                shown(&p),
                [
                    "198.51.100.7",
                    "tcp 203.0.113.5:8443",
                    "udp 203.0.113.5:8443",
                    "192.0.2.9",
                    "192.0.2.44 monitor",
                    "198.51.100.0/24",
                    "tcp 198.51.100.99:4444",
                    "udp 198.51.100.99:4444",
                    "192.0.2.77",
                ],
                "{doc}"
            );
            let e = &p.entries[0];
            assert_eq!(e.indicator.as_deref(), Some("u-198.51.100.7"));
            assert_eq!(e.description.as_deref(), Some("C2 servers"));
            assert_eq!(e.confidence, None);
            let r: Vec<_> = p
                .rejected
                .iter()
                .map(|r| (r.index, r.reason.as_str()))
                .collect();
            assert_eq!(
                r,
                [
                    (8, "invalid address 'not-an-ip'"),
                    (9, "invalid port '99999'")
                ]
            );
            assert_eq!((p.skipped, p.unsupported), (1, 2), "{:?}", p.ignored);
            assert_eq!(p.ignored[0].reason, "deleted");
            assert_eq!(
                p.ignored[1].reason,
                "attribute type 'domain' cannot be expressed"
            );
            // 13 attributes: 2 rejected, 11 well-formed (the port counts).
            assert_eq!(p.records, 11);
        }
    }

    #[test]
    fn confidence_and_non_ids() {
        let mut ev = event();
        ev["Attribute"][0]["Tag"] =
            json!([{"name": "estimative-language:confidence-in-analytic-judgment=\"high\""}]);
        let misp = MispOptions {
            non_ids: NonIds::Skip,
            tag_confidence: [
                (
                    "estimative-language:confidence-in-analytic-judgment=\"high\"".to_string(),
                    95,
                ),
                ("tlp:white".to_string(), 40),
            ]
            .into(),
            threat_level_confidence: [(ThreatLevel::High, 80)].into(),
        };
        let p = run(&json!({"Event": ev.clone()}), misp.clone());
        assert_eq!(p.entries[0].confidence, Some(95), "the attribute's tag");
        assert_eq!(p.entries[1].confidence, Some(40), "the event's tag");
        assert!(!shown(&p).contains(&"192.0.2.44 monitor".to_string()));
        assert!(
            p.ignored
                .iter()
                .any(|i| i.reason == "to_ids is false (misp.non_ids = \"skip\")")
        );
        ev["Tag"] = json!([]);
        let p = run(&json!({"Event": ev}), misp);
        assert_eq!(p.entries[1].confidence, Some(80), "the threat level");
    }

    #[test]
    fn attribute_search_answers() {
        let doc = json!({"response": {"Attribute": [
            {"type": "ip-dst", "value": "192.0.2.1", "to_ids": true, "uuid": "a1",
             "Event": {"info": "from search", "uuid": "e"}},
            {"type": "url", "value": "http://x/", "to_ids": true, "uuid": "a2"},
            7,
        ]}});
        let p = run(&doc, MispOptions::default());
        assert_eq!(shown(&p), ["192.0.2.1"]);
        assert_eq!(p.entries[0].description.as_deref(), Some("from search"));
        assert_eq!((p.unsupported, p.rejected.len()), (1, 1));
        assert_eq!(
            run(
                &json!({"response": {"Attribute": []}}),
                MispOptions::default()
            ),
            FeedParse::default()
        );
    }

    #[test]
    fn not_misp() {
        let err = |v: Value| parse(v.to_string().as_bytes(), &FeedOptions::default()).unwrap_err();
        assert!(matches!(
            parse(b"{\"Event\": ", &FeedOptions::default()),
            Err(FeedError::NotJson(_))
        ));
        assert_eq!(
            err(json!({"type": "bundle"})).to_string(),
            "not MISP: an element is neither {\"Event\": ...} nor an event (no \"Attribute\", \"Object\" or \"info\")"
        );
        assert!(matches!(err(json!("x")), FeedError::NotMisp(_)));
        assert!(matches!(err(json!({"response": 3})), FeedError::NotMisp(_)));
    }

    #[test]
    fn detection() {
        assert!(looks_like("{\"Event\": {}}"));
        assert!(looks_like("{\n  \"response\": []}"));
        assert!(looks_like("[{\"Event\": {}}]"));
        assert!(looks_like(
            "{\"id\": \"1\", \"info\": \"x\", \"Attribute\": []}"
        ));
        assert!(!looks_like("{\"type\": \"bundle\", \"objects\": []}"));
        assert!(!looks_like("[{\"type\": \"indicator\"}]"));
        assert!(!looks_like("{\"net\": \"192.0.2.1\"}"));
    }
}
