//! Spamhaus DROP, EDROP, DROPv6 and ASN-DROP.
//!
//! Two shapes, told apart by the first non-blank character:
//!
//! * text (`drop.txt`, `edrop.txt`, `dropv6.txt`): `;` comment lines, then
//!   `CIDR ; SBLnnnnnn` per line. The SBL id becomes the indicator; the id is
//!   optional (republished copies strip it and leave `CIDR `). The EDROP
//!   stub left after the 2024 merge into DROP has only comments: zero
//!   entries, no errors.
//! * JSON lines (`drop_v4.json`, `drop_v6.json`, `asn_drop.json`): one
//!   object per line. `{"cidr":..,"sblid":..,"rir":..}` is an entry;
//!   `{"type":"metadata",..}` is skipped; an ASN-DROP record
//!   (`{"asn":932,..}`) names an autonomous system, not addresses, so it is
//!   counted as unsupported (a source-address filter cannot apply it without
//!   a routing table), never as an error.

use serde_json::Value;

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, IgnoreKind, Sink};
use crate::entry::Entry;
use crate::intel::blocklist::parse_net;

/// Parse a Spamhaus list (text or JSON lines).
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    let mut sink = Sink::new(bytes, opts)?;
    if json {
        sink.lines(bytes, json_line)?;
    } else {
        sink.lines(bytes, text_line)?;
    }
    Ok(sink.finish())
}

fn text_line(sink: &mut Sink, index: usize, line: &str) -> Result<(), FeedError> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
        return Ok(());
    }
    let (cidr, id) = match trimmed.split_once(';') {
        Some((c, id)) => (c.trim(), id.trim()),
        None => (trimmed, ""),
    };
    if let Some(extra) = cidr.split_whitespace().nth(1) {
        sink.reject(
            index,
            format!("expected `CIDR ; SBLnnnn`, found '{extra}' after the prefix"),
            line,
        );
        return Ok(());
    }
    match parse_net(cidr) {
        Ok(net) => {
            let mut e = FeedEntry::new(Entry::new(net, None, sink.opts.action));
            e.indicator = (!id.is_empty()).then(|| id.to_string());
            sink.push(index, e)?;
        }
        Err(err) => sink.reject(index, err, line),
    }
    Ok(())
}

fn json_line(sink: &mut Sink, index: usize, line: &str) -> Result<(), FeedError> {
    if line.trim().is_empty() {
        return Ok(());
    }
    let obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => {
            sink.reject(index, "expected a JSON object", line);
            return Ok(());
        }
        Err(e) => {
            sink.reject(index, format!("invalid JSON: {e}"), line);
            return Ok(());
        }
    };
    let text = |key: &str| obj.get(key).and_then(Value::as_str);
    if text("type") == Some("metadata") {
        return Ok(());
    }
    if let Some(cidr) = obj.get("cidr") {
        let Some(cidr) = cidr.as_str() else {
            sink.reject(index, "`cidr` is not a string", line);
            return Ok(());
        };
        match parse_net(cidr.trim()) {
            Ok(net) => {
                let mut e = FeedEntry::new(Entry::new(net, None, sink.opts.action));
                e.indicator = text("sblid").map(str::to_string);
                e.description = text("rir").map(|r| format!("RIR {r}"));
                sink.push(index, e)?;
            }
            Err(err) => sink.reject(index, err, line),
        }
        return Ok(());
    }
    if let Some(asn) = obj.get("asn") {
        let name = text("asname")
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        sink.ignore(
            index,
            IgnoreKind::Unsupported,
            format!("ASN-DROP record AS{asn}{name} names an autonomous system, not addresses"),
            line,
        );
        return Ok(());
    }
    sink.reject(
        index,
        "expected a Spamhaus record with `cidr` or `asn`",
        line,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> FeedParse {
        parse(text.as_bytes(), &FeedOptions::default()).unwrap()
    }

    #[test]
    fn native_text() {
        let p = parse_str(
            "; Spamhaus DROP List\n; Expires: x\n1.10.16.0/20 ; SBL256894\n2001:678:6c4::/48 ; SBL626637\n1.19.0.0/16 \n1.2.3.0/24;SBL1\n; EOF\n",
        );
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        let got: Vec<_> = p
            .entries
            .iter()
            .map(|e| (e.entry.net.to_string(), e.indicator.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("1.10.16.0/20".to_string(), Some("SBL256894".to_string())),
                (
                    "2001:678:6c4::/48".to_string(),
                    Some("SBL626637".to_string())
                ),
                ("1.19.0.0/16".to_string(), None),
                ("1.2.3.0/24".to_string(), Some("SBL1".to_string())),
            ]
        );
    }

    #[test]
    fn text_rejections() {
        let p = parse_str("1.10.16.0/33 ; SBL1\n1.2.3.4 5.6.7.8 ; SBL2\n");
        assert!(p.entries.is_empty());
        assert_eq!(p.rejected[0].reason, "prefix length 33 exceeds 32");
        assert_eq!(
            p.rejected[1].reason,
            "expected `CIDR ; SBLnnnn`, found '5.6.7.8' after the prefix"
        );
    }

    #[test]
    fn json_lines() {
        let p = parse_str(concat!(
            "{\"cidr\":\"1.10.16.0/20\",\"sblid\":\"SBL256894\",\"rir\":\"apnic\"}\n",
            "{\"cidr\":\"2001:678:6c4::/48\",\"sblid\":\"SBL626637\",\"rir\":\"ripencc\"}\n",
            "{\"asn\":932,\"rir\":\"arin\",\"domain\":\"xn.net\",\"cc\":\"US\",\"asname\":\"XNNET\"}\n",
            "{\"cidr\":\"1.10.16.0/40\"}\n",
            "{\"cidr\":7}\n",
            "{\"foo\":1}\n",
            "[1]\n",
            "{\"cidr\":\n",
            "{\"type\":\"metadata\",\"timestamp\":1709006105,\"records\":3}\n",
        ));
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[0].indicator.as_deref(), Some("SBL256894"));
        assert_eq!(p.entries[0].description.as_deref(), Some("RIR apnic"));
        assert_eq!(p.unsupported, 1);
        assert_eq!(
            p.ignored[0].reason,
            "ASN-DROP record AS932 (XNNET) names an autonomous system, not addresses"
        );
        let r: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(r[0], (4, "prefix length 40 exceeds 32"));
        assert_eq!(r[1], (5, "`cidr` is not a string"));
        assert_eq!(r[2], (6, "expected a Spamhaus record with `cidr` or `asn`"));
        assert_eq!(r[3], (7, "expected a JSON object"));
        assert_eq!(r[4].0, 8);
        assert!(r[4].1.starts_with("invalid JSON: EOF"), "{}", r[4].1);
        assert_eq!(r.len(), 5);
    }
}
