//! CrowdSec Local API decisions (`GET /v1/decisions/stream`, the bouncer
//! API): `{"new": [decision, ...], "deleted": [decision, ...]}`, either list
//! possibly `null`.
//!
//! A decision is `{"id", "origin", "type", "scope", "value", "duration",
//! "scenario", ...}`. [`Decisions`] keeps the active ones keyed by `id`, so
//! an address stays while any decision asserts it. An answer to
//! `startup=true` is the whole set and replaces it; later answers are
//! deltas, applied `deleted` first, then `new`. Scopes `Ip` and `Range` are
//! enforced; other scopes (`Country`, `AS`, ...) are counted as unsupported.
//! `ban` decisions take the feed's action; other types (`captcha`, custom
//! ones) are `monitor` or skipped ([`NonBan`]). The `duration` (a Go
//! duration, `3h59m58.8s`, see [`parse_go_duration`]) becomes the entry's
//! expiry; the scenario is its indicator and the origin is in its
//! description.
//!
//! Indices in [`super::Rejected`] and [`super::Ignored`] are 1-based
//! positions in `deleted` followed by `new`.
//!
//! As a file format ([`parse`]) a body is read as a `startup=true` answer:
//! a recorded answer can be replayed or checked offline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, IgnoreKind, Sink};
use crate::entry::{Action, Entry};
use crate::intel::blocklist::parse_net;

/// What becomes of a decision whose type is not `ban`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonBan {
    /// Enforced as `monitor` (counted, let through).
    #[default]
    Monitor,
    /// Not enforced (counted as skipped).
    Skip,
}

/// The decisions a bouncer currently holds, by decision id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    active: BTreeMap<i64, FeedEntry>,
}

/// One answer of the stream as JSON.
#[derive(Deserialize)]
struct Stream {
    #[serde(default)]
    new: Option<Vec<Value>>,
    #[serde(default)]
    deleted: Option<Vec<Value>>,
}

/// What one answer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The answer's rejected and ignored decisions (`entries` is empty:
    /// see [`Decisions::entries`]).
    pub parse: FeedParse,
    /// Whether the set of active decisions changed.
    pub changed: bool,
}

impl Decisions {
    /// No decisions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of decisions held (expired ones included until the next
    /// [`Decisions::apply`]).
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Apply one answer of the stream: a `startup` answer replaces the set,
    /// any other is a delta. Decisions expired by `opts.now` are dropped.
    /// An answer that is not a decisions stream at all is an error and
    /// changes nothing; a bad decision is rejected on its own.
    pub fn apply(
        &mut self,
        bytes: &[u8],
        startup: bool,
        opts: &FeedOptions,
    ) -> Result<Applied, FeedError> {
        let mut sink = Sink::new(bytes, opts)?;
        let not_stream =
            |e: String| FeedError::NotJson(format!("not a CrowdSec decisions stream answer: {e}"));
        let value: Value = serde_json::from_slice(bytes).map_err(|e| not_stream(e.to_string()))?;
        if value.get("new").is_none() && value.get("deleted").is_none() {
            return Err(not_stream(
                "expected an object with \"new\" and \"deleted\"".into(),
            ));
        }
        let stream: Stream =
            serde_json::from_value(value).map_err(|e| not_stream(e.to_string()))?;
        let now = sink.now;
        let mut next = if startup {
            BTreeMap::new()
        } else {
            self.active.clone()
        };
        let deleted = stream.deleted.unwrap_or_default();
        let new = stream.new.unwrap_or_default();
        for (i, d) in deleted.iter().enumerate() {
            let index = i + 1;
            match d.get("id").and_then(Value::as_i64) {
                Some(id) => {
                    next.remove(&id);
                    sink.out.records += 1;
                }
                None => sink.reject(
                    index,
                    "deleted decision without an integer id",
                    &d.to_string(),
                ),
            }
        }
        for (i, d) in new.iter().enumerate() {
            let index = deleted.len() + i + 1;
            let text = d.to_string();
            match decision(d, opts.action, opts.crowdsec_non_ban, now) {
                Outcome::Keep(id, entry) => {
                    if next.len() >= opts.limits.max_entries && !next.contains_key(&id) {
                        return Err(FeedError::TooManyEntries {
                            max: opts.limits.max_entries,
                            at: index,
                        });
                    }
                    next.insert(id, *entry);
                    sink.out.records += 1;
                }
                Outcome::Ignore(id, kind, reason) => {
                    // A decision replaced by one that is not enforced no
                    // longer asserts its address.
                    if let Some(id) = id {
                        next.remove(&id);
                    }
                    sink.ignore(index, kind, reason, &text);
                }
                Outcome::Reject(reason) => sink.reject(index, reason, &text),
            }
        }
        next.retain(|_, e| e.active_at(now) || e.valid_from.is_some_and(|t| t > now));
        let changed = next != self.active;
        self.active = next;
        Ok(Applied {
            parse: sink.finish(),
            changed,
        })
    }

    /// The entries of every decision held and still active at `now`, in
    /// decision id order (an address asserted by several decisions is
    /// listed once per decision).
    pub fn entries(&self, now: OffsetDateTime) -> Vec<FeedEntry> {
        self.active
            .values()
            .filter(|e| e.active_at(now))
            .cloned()
            .collect()
    }
}

enum Outcome {
    Keep(i64, Box<FeedEntry>),
    Ignore(Option<i64>, IgnoreKind, String),
    Reject(String),
}

/// One decision of `new`.
fn decision(d: &Value, ban: Action, non_ban: NonBan, now: OffsetDateTime) -> Outcome {
    let field = |k: &str| d.get(k).and_then(Value::as_str).map(str::trim);
    let Some(id) = d.get("id").and_then(Value::as_i64) else {
        return Outcome::Reject("decision without an integer id".into());
    };
    let (Some(value), Some(scope)) = (field("value"), field("scope")) else {
        return Outcome::Reject("decision without a value or scope".into());
    };
    let kind = field("type").unwrap_or("");
    let Some(duration) = field("duration") else {
        return Outcome::Reject("decision without a duration".into());
    };
    let duration = match parse_go_duration(duration) {
        Ok(d) => d,
        Err(e) => return Outcome::Reject(e),
    };
    let net = if scope.eq_ignore_ascii_case("ip") {
        if value.contains('/') {
            return Outcome::Reject(format!("scope Ip with a prefix '{value}'"));
        }
        parse_net(value)
    } else if scope.eq_ignore_ascii_case("range") {
        parse_net(value)
    } else {
        return Outcome::Ignore(
            Some(id),
            IgnoreKind::Unsupported,
            format!("scope '{scope}' is not enforced (only Ip and Range)"),
        );
    };
    let net = match net {
        Ok(n) => n,
        Err(e) => return Outcome::Reject(e.to_string()),
    };
    let action = if kind.eq_ignore_ascii_case("ban") {
        ban
    } else {
        match non_ban {
            NonBan::Monitor => Action::Monitor,
            NonBan::Skip => {
                return Outcome::Ignore(
                    Some(id),
                    IgnoreKind::Unsupported,
                    format!("type '{kind}' is skipped (non_ban_decisions = \"skip\")"),
                );
            }
        }
    };
    if duration <= time::Duration::ZERO {
        return Outcome::Ignore(
            Some(id),
            IgnoreKind::Expired,
            format!("expired {} ago", -duration),
        );
    }
    let mut e = FeedEntry::new(Entry::new(net, None, action));
    e.expires = Some(now.saturating_add(duration));
    e.indicator = field("scenario")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    e.description = Some(format!(
        "CrowdSec {} decision {id} from {}",
        if kind.is_empty() { "?" } else { kind },
        field("origin").filter(|s| !s.is_empty()).unwrap_or("?")
    ));
    Outcome::Keep(id, Box::new(e))
}

/// Parse a body as a `startup=true` answer (the whole set of decisions).
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut d = Decisions::new();
    let applied = d.apply(bytes, true, opts)?;
    let now = opts.now.unwrap_or_else(OffsetDateTime::now_utc);
    Ok(FeedParse {
        entries: d.entries(now),
        ..applied.parse
    })
}

/// A Go `time.Duration` string (`time.Duration.String()` and
/// `time.ParseDuration`): an optional sign, then one or more decimal
/// numbers, each with an optional fraction and a unit (`ns`, `us`/`µs`,
/// `ms`, `s`, `m`, `h`): `3h59m58.8s`, `1.5ms`, `-128ms`, `0`.
pub fn parse_go_duration(text: &str) -> Result<time::Duration, String> {
    let bad = |why: &str| {
        format!(
            "invalid duration '{}': {why}",
            crate::intel::blocklist::clip(text, 64)
        )
    };
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(time::Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n = digits(rest);
        let (whole, after) = rest.split_at(n);
        let (frac, after) = match after.strip_prefix('.') {
            Some(r) => r.split_at(digits(r)),
            None => ("", after),
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(bad("expected a number"));
        }
        let u = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(u);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("a number without a unit")),
            _ => return Err(bad(&format!("unknown unit '{unit}'"))),
        };
        if whole.len() > 20 {
            return Err(bad("out of range"));
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("out of range"))?
        };
        let (mut f, mut f_scale) = (0i128, 1i128);
        for b in frac.bytes().take(18) {
            f = f * 10 + i128::from(b - b'0');
            f_scale *= 10;
        }
        total += whole * scale + f * scale / f_scale;
        if total > i128::from(i64::MAX) {
            return Err(bad("out of range"));
        }
        rest = after;
    }
    let nanos = i64::try_from(total).map_err(|_| bad("out of range"))?;
    Ok(time::Duration::nanoseconds(if negative {
        -nanos
    } else {
        nanos
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    #[test]
    fn go_durations() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("3h59m58.8s"), Duration::milliseconds(14_398_800));
        assert_eq!(ok("1.5ms"), Duration::microseconds(1500));
        assert_eq!(ok("-128ms"), Duration::milliseconds(-128));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("4h"), Duration::hours(4));
        assert_eq!(ok("+2m3s"), Duration::seconds(123));
        assert_eq!(ok("1µs"), Duration::microseconds(1));
        assert_eq!(ok("1μs"), Duration::microseconds(1));
        assert_eq!(ok("7us"), Duration::microseconds(7));
        assert_eq!(ok("12ns"), Duration::nanoseconds(12));
        assert_eq!(ok(".5s"), Duration::milliseconds(500));
        assert_eq!(ok("1.s"), Duration::seconds(1));
        assert_eq!(
            ok("167h59m59.999999999s"),
            Duration::hours(168) - Duration::nanoseconds(1)
        );
        for bad in [
            "",
            "-",
            "h",
            "1",
            "1x",
            "1.5",
            "s1",
            "..1s",
            "1h-2m",
            "3d",
            " 1s",
            "99999999999999999999999h",
            "2562048h",
        ] {
            let e = parse_go_duration(bad).unwrap_err();
            assert!(e.starts_with("invalid duration"), "{bad}: {e}");
        }
    }

    fn opts(now: OffsetDateTime) -> FeedOptions {
        FeedOptions {
            now: Some(now),
            ..FeedOptions::default()
        }
    }

    fn d(id: i64, scope: &str, value: &str, kind: &str, duration: &str) -> String {
        format!(
            r#"{{"id":{id},"origin":"cscli","type":"{kind}","scope":"{scope}","value":"{value}","duration":"{duration}","scenario":"manual 'ban' from 'host'"}}"#
        )
    }

    fn addrs(d: &Decisions, now: OffsetDateTime) -> Vec<String> {
        d.entries(now)
            .iter()
            .map(|e| format!("{} {}", e.entry.net, e.entry.action.name()))
            .collect()
    }

    #[test]
    fn startup_then_deltas_keyed_by_id() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20000);
        let o = opts(now);
        let mut s = Decisions::new();
        let body = format!(
            r#"{{"new":[{},{},{},{}],"deleted":null}}"#,
            d(1, "Ip", "198.51.100.7", "ban", "3h59m58.8s"),
            d(2, "Range", "203.0.113.0/24", "ban", "4h"),
            d(3, "Ip", "198.51.100.7", "captcha", "1h"),
            d(4, "Country", "FR", "ban", "4h"),
        );
        let a = s.apply(body.as_bytes(), true, &o).unwrap();
        assert!(a.changed);
        assert_eq!(a.parse.unsupported, 1);
        assert!(a.parse.rejected.is_empty());
        assert_eq!(
            addrs(&s, now),
            [
                "198.51.100.7/32 drop",
                "203.0.113.0/24 drop",
                "198.51.100.7/32 monitor"
            ]
        );
        let e = &s.entries(now)[0];
        assert_eq!(e.expires, Some(now + Duration::milliseconds(14_398_800)));
        assert_eq!(e.indicator.as_deref(), Some("manual 'ban' from 'host'"));
        assert_eq!(
            e.description.as_deref(),
            Some("CrowdSec ban decision 1 from cscli")
        );
        // Nothing new: unchanged.
        let a = s
            .apply(br#"{"new":null,"deleted":null}"#, false, &o)
            .unwrap();
        assert!(!a.changed);
        assert_eq!(s.len(), 3);
        // Deleting one of two decisions on an address keeps the address;
        // deleted is applied before new (the same id deleted and re-added
        // stays).
        let body = format!(
            r#"{{"deleted":[{}, {}],"new":[{}]}}"#,
            d(1, "Ip", "198.51.100.7", "ban", "-128ms"),
            d(2, "Range", "203.0.113.0/24", "ban", "-1s"),
            d(2, "Range", "203.0.113.0/24", "ban", "1h"),
        );
        let a = s.apply(body.as_bytes(), false, &o).unwrap();
        assert!(a.changed);
        assert_eq!(
            addrs(&s, now),
            ["203.0.113.0/24 drop", "198.51.100.7/32 monitor"]
        );
        // A startup answer replaces the set.
        let body = format!(r#"{{"new":[{}]}}"#, d(9, "Ip", "192.0.2.1", "ban", "1m"));
        s.apply(body.as_bytes(), true, &o).unwrap();
        assert_eq!(addrs(&s, now), ["192.0.2.1/32 drop"]);
        // Expired entries leave.
        assert!(s.entries(now + Duration::minutes(2)).is_empty());
        let a = s
            .apply(br#"{"new":null}"#, false, &opts(now + Duration::minutes(2)))
            .unwrap();
        assert!(a.changed);
        assert!(s.is_empty());
    }

    #[test]
    fn bad_answers_change_nothing_and_bad_decisions_are_rejected() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20000);
        let o = opts(now);
        let mut s = Decisions::new();
        let body = format!(r#"{{"new":[{}]}}"#, d(1, "Ip", "192.0.2.1", "ban", "1h"));
        s.apply(body.as_bytes(), true, &o).unwrap();
        for bad in [
            &b"<html>"[..],
            b"[]",
            b"{\"new\":[1",
            b"{\"new\":{}}",
            b"{\"x\":1}",
        ] {
            let e = s.apply(bad, true, &o).unwrap_err().to_string();
            assert!(e.contains("not a CrowdSec decisions stream answer"), "{e}");
            assert_eq!(s.len(), 1);
        }
        let body = format!(
            r#"{{"new":[{},{},{},{},{}],"deleted":[{{"value":"x"}}]}}"#,
            d(2, "Ip", "192.0.2.300", "ban", "1h"),
            d(3, "Ip", "192.0.2.3", "ban", "forever"),
            d(4, "Ip", "192.0.2.0/24", "ban", "1h"),
            r#"{"id":"5","scope":"Ip","value":"192.0.2.5","duration":"1h"}"#,
            d(6, "Ip", "192.0.2.6", "ban", "1h"),
        );
        let a = s.apply(body.as_bytes(), false, &o).unwrap();
        let r: Vec<_> = a.parse.rejected.iter().map(|r| r.index).collect();
        assert_eq!(r, [1, 2, 3, 4, 5]);
        assert!(
            a.parse.rejected[2]
                .reason
                .contains("invalid duration 'forever'")
        );
        assert_eq!(addrs(&s, now), ["192.0.2.1/32 drop", "192.0.2.6/32 drop"]);
        // Non-ban types skipped when configured.
        let skip = FeedOptions {
            crowdsec_non_ban: NonBan::Skip,
            ..o.clone()
        };
        let body = format!(
            r#"{{"new":[{}]}}"#,
            d(7, "Ip", "192.0.2.7", "captcha", "1h")
        );
        let a = s.apply(body.as_bytes(), false, &skip).unwrap();
        assert!(!a.changed);
        assert_eq!(a.parse.unsupported, 1);
    }

    #[test]
    fn parse_reads_a_startup_answer() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20000);
        let body = format!(
            r#"{{"new":[{},{}],"deleted":[]}}"#,
            d(1, "Ip", "2001:db8::1", "ban", "1h"),
            d(2, "Range", "2001:db8:1::/48", "ban", "1h")
        );
        let p = parse(body.as_bytes(), &opts(now)).unwrap();
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.records, 2);
    }
}
