//! The native JSON Lines format: one object per line, with every field the
//! engine supports.
//!
//! ```text
//! {"net":"203.0.113.0/24","proto":"tcp","port":443,"side":"src","action":"drop","confidence":90,"valid_from":"2026-01-01T00:00:00Z","expires":"2026-12-01T00:00:00Z","indicator":"X-1","description":"..."}
//! ```
//!
//! | field | type | |
//! |---|---|---|
//! | `net` | string | address or prefix, required |
//! | `proto` | `"tcp"` / `"udp"` | with `port` |
//! | `port` | integer 0-65535 | with `proto` |
//! | `side` | `"src"` (default) / `"dst"` | which packet port; needs `port` |
//! | `action` | `"drop"` / `"monitor"` | default [`FeedOptions::action`] |
//! | `confidence` | integer 0-100 | |
//! | `valid_from`, `expires` | RFC 3339 string | an entry already expired is skipped |
//! | `indicator`, `description` | string | |
//!
//! Unknown fields are an error for the line (they are usually typos).
//! Blank lines and lines starting with `#` are ignored. `null` is the same
//! as an absent field.

use serde_json::{Map, Value};

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, IgnoreKind, Sink, parse_time};
use crate::entry::{Action, Entry, PortMatch, Proto, Side};
use crate::intel::blocklist::parse_net;

const FIELDS: [&str; 10] = [
    "net",
    "proto",
    "port",
    "side",
    "action",
    "confidence",
    "valid_from",
    "expires",
    "indicator",
    "description",
];

/// Parse a JSON Lines feed.
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    sink.lines(bytes, |sink, index, line| {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Ok(());
        }
        match parse_object(trimmed, sink.opts.action) {
            Ok(e) if sink.expired(e.expires) => {
                let reason = format!(
                    "expired {}",
                    e.expires.map(super::fmt_time).unwrap_or_default()
                );
                sink.ignore(index, IgnoreKind::Expired, reason, line);
            }
            Ok(e) => sink.push(index, e)?,
            Err(reason) => sink.reject(index, reason, line),
        }
        Ok(())
    })?;
    Ok(sink.finish())
}

/// One line.
fn parse_object(line: &str, default_action: Action) -> Result<FeedEntry, String> {
    let obj: Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err("expected a JSON object".to_string()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    if let Some(key) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field '{key}' (expected {})",
            FIELDS.join(", ")
        ));
    }
    let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
    let string = |key: &str| -> Result<Option<&str>, String> {
        match get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(format!("`{key}` must be a string, got {v}")),
        }
    };
    let integer = |key: &str, max: u64| -> Result<Option<u64>, String> {
        match get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                Some(n) => Err(format!("{key} {n} out of range (0-{max})")),
                None => Err(format!("`{key}` must be an integer 0-{max}, got {v}")),
            },
        }
    };
    let Some(net) = string("net")? else {
        return Err("missing `net`".to_string());
    };
    let net = parse_net(net.trim()).map_err(|e| e.to_string())?;
    let proto = match string("proto")? {
        None => None,
        Some(p) if p.eq_ignore_ascii_case("tcp") => Some(Proto::Tcp),
        Some(p) if p.eq_ignore_ascii_case("udp") => Some(Proto::Udp),
        Some(p) => return Err(format!("unknown protocol '{p}' (expected `tcp` or `udp`)")),
    };
    let port = integer("port", u64::from(u16::MAX))?.map(|p| p as u16);
    let side = match string("side")? {
        None => None,
        Some(s) if s.eq_ignore_ascii_case("src") => Some(Side::Src),
        Some(s) if s.eq_ignore_ascii_case("dst") => Some(Side::Dst),
        Some(s) => return Err(format!("unknown side '{s}' (expected `src` or `dst`)")),
    };
    let action = match string("action")? {
        None => default_action,
        Some(a) if a.eq_ignore_ascii_case("drop") => Action::Drop,
        Some(a) if a.eq_ignore_ascii_case("monitor") => Action::Monitor,
        Some(a) => {
            return Err(format!(
                "unknown action '{a}' (expected `drop` or `monitor`)"
            ));
        }
    };
    let port = match (proto, port) {
        (Some(proto), Some(port)) => Some(PortMatch {
            proto,
            port,
            side: side.unwrap_or_default(),
        }),
        (None, None) if side.is_some() => {
            return Err("`side` needs `proto` and `port`".to_string());
        }
        (None, None) => None,
        (Some(_), None) => return Err("`proto` needs `port`".to_string()),
        (None, Some(_)) => return Err("`port` needs `proto`".to_string()),
    };
    let confidence = integer("confidence", 100)?.map(|c| c as u8);
    let time = |key: &str| string(key)?.map(parse_time).transpose();
    let valid_from = time("valid_from")?;
    let expires = time("expires")?;
    Ok(FeedEntry {
        entry: Entry::new(net, port, action),
        indicator: string("indicator")?.map(str::to_string),
        confidence,
        valid_from,
        expires,
        description: string("description")?.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn run(text: &str) -> FeedParse {
        let opts = FeedOptions {
            now: Some(datetime!(2026-06-01 0:00 UTC)),
            ..FeedOptions::default()
        };
        parse(text.as_bytes(), &opts).unwrap()
    }

    #[test]
    fn full_line() {
        let p = run(
            r#"{"net":"203.0.113.9/24","proto":"tcp","port":443,"side":"src","action":"drop","confidence":90,"valid_from":"2026-01-01T00:00:00Z","expires":"2026-12-01T00:00:00Z","indicator":"X-1","description":"C2"}"#,
        );
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        let e = &p.entries[0];
        assert_eq!(e.entry.to_string(), "tcp 203.0.113.0/24:443");
        assert_eq!(e.entry.action, Action::Drop);
        assert_eq!(e.confidence, Some(90));
        assert_eq!(e.valid_from, Some(datetime!(2026-01-01 0:00 UTC)));
        assert_eq!(e.expires, Some(datetime!(2026-12-01 0:00 UTC)));
        assert_eq!(e.indicator.as_deref(), Some("X-1"));
        assert_eq!(e.description.as_deref(), Some("C2"));
    }

    #[test]
    fn minimal_and_variants() {
        let p = run(concat!(
            "# comment\n",
            "\n",
            "{\"net\":\"2001:db8::1\"}\n",
            "{\"net\":\"192.0.2.1\",\"proto\":\"UDP\",\"port\":53,\"side\":\"dst\",\"action\":\"monitor\"}\n",
            "{\"net\":\"192.0.2.2\",\"confidence\":null,\"indicator\":null}\n",
        ));
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        let got: Vec<_> = p.entries.iter().map(|e| e.entry.to_string()).collect();
        assert_eq!(
            got,
            ["2001:db8::1", "udp 192.0.2.1:53 dst monitor", "192.0.2.2"]
        );
    }

    #[test]
    fn expired_is_skipped() {
        let p = run("{\"net\":\"192.0.2.1\",\"expires\":\"2026-05-31T23:59:59Z\"}\n");
        assert!(p.entries.is_empty());
        assert_eq!(p.skipped, 1);
        assert_eq!(p.ignored[0].kind, IgnoreKind::Expired);
        assert_eq!(p.ignored[0].reason, "expired 2026-05-31T23:59:59Z");
    }

    #[test]
    fn rejections() {
        let lines = [
            (
                r#"{"net":"192.0.2.1","prot":"tcp"}"#,
                "unknown field 'prot' (expected net, proto, port, side, action, confidence, valid_from, expires, indicator, description)",
            ),
            (r#"{"proto":"tcp"}"#, "missing `net`"),
            (r#"{"net":7}"#, "`net` must be a string, got 7"),
            (r#"{"net":"192.0.2.0/33"}"#, "prefix length 33 exceeds 32"),
            (
                r#"{"net":"192.0.2.1","proto":"icmp","port":1}"#,
                "unknown protocol 'icmp' (expected `tcp` or `udp`)",
            ),
            (
                r#"{"net":"192.0.2.1","proto":"tcp","port":70000}"#,
                "port 70000 out of range (0-65535)",
            ),
            (
                r#"{"net":"192.0.2.1","proto":"tcp","port":"80"}"#,
                "`port` must be an integer 0-65535, got \"80\"",
            ),
            (
                r#"{"net":"192.0.2.1","proto":"tcp","port":-1}"#,
                "`port` must be an integer 0-65535, got -1",
            ),
            (r#"{"net":"192.0.2.1","port":80}"#, "`port` needs `proto`"),
            (
                r#"{"net":"192.0.2.1","proto":"tcp"}"#,
                "`proto` needs `port`",
            ),
            (
                r#"{"net":"192.0.2.1","side":"dst"}"#,
                "`side` needs `proto` and `port`",
            ),
            (
                r#"{"net":"192.0.2.1","proto":"tcp","port":1,"side":"up"}"#,
                "unknown side 'up' (expected `src` or `dst`)",
            ),
            (
                r#"{"net":"192.0.2.1","action":"block"}"#,
                "unknown action 'block' (expected `drop` or `monitor`)",
            ),
            (
                r#"{"net":"192.0.2.1","confidence":101}"#,
                "confidence 101 out of range (0-100)",
            ),
            (
                r#"{"net":"192.0.2.1","confidence":0.5}"#,
                "`confidence` must be an integer 0-100, got 0.5",
            ),
            (
                r#"{"net":"192.0.2.1","expires":"soon"}"#,
                "invalid timestamp 'soon' (expected RFC 3339, e.g. 2026-12-01T00:00:00Z)",
            ),
            (r#"["192.0.2.1"]"#, "expected a JSON object"),
        ];
        let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
        let p = run(&text);
        assert!(p.entries.is_empty());
        let got: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        let want: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (i + 1, *r))
            .collect();
        assert_eq!(got, want);
        let bad = run("{\"net\":\n");
        assert!(
            bad.rejected[0]
                .reason
                .starts_with("invalid JSON: EOF while parsing"),
            "{:?}",
            bad.rejected
        );
    }
}
