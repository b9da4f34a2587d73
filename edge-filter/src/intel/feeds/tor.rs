//! TorDNSEL `exit-addresses` (`https://check.torproject.org/exit-addresses`).
//!
//! ```text
//! ExitNode FE39F07EBE7870DCE124AB30DF3ABD0700A43F75
//! Published 2024-03-11 13:07:19
//! LastStatus 2024-03-12 08:00:00
//! ExitAddress 185.241.208.232 2024-03-12 08:10:51
//! ```
//!
//! Every `ExitAddress` line is one address entry; its indicator is the
//! relay fingerprint of the preceding `ExitNode`, its description says when
//! the address was seen. `Published` and `LastStatus` lines are accepted and
//! not used; `@type` annotations, `#` comments and blank lines are ignored.
//! The bulk exit list (one address per line) is [`plain`](super::plain).

use std::net::IpAddr;

use ipnet::IpNet;

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, Sink};
use crate::entry::Entry;
use crate::intel::blocklist::EntryError;

/// Parse an `exit-addresses` file.
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    let mut node: Option<String> = None;
    sink.lines(bytes, |sink, index, line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') || first.starts_with('@') => {}
            ["ExitNode", fingerprint] => node = Some(fingerprint.to_string()),
            ["ExitNode", ..] => sink.reject(index, "expected `ExitNode FINGERPRINT`", line),
            ["Published" | "LastStatus", ..] => {}
            ["ExitAddress", addr, seen @ ..] => match addr.parse::<IpAddr>() {
                Ok(addr) => {
                    let mut e = FeedEntry::new(Entry::new(IpNet::from(addr), None, sink.opts.action));
                    e.indicator = node.clone();
                    e.description = Some(if seen.is_empty() {
                        "Tor exit".to_string()
                    } else {
                        format!("Tor exit, seen {}", seen.join(" "))
                    });
                    sink.push(index, e)?;
                }
                Err(_) => sink.reject(index, EntryError::BadAddress(addr.to_string()), line),
            },
            ["ExitAddress"] => sink.reject(index, "expected `ExitAddress ADDR DATE TIME`", line),
            [other, ..] => sink.reject(
                index,
                format!("unknown record '{other}' (expected ExitNode, Published, LastStatus or ExitAddress)"),
                line,
            ),
        }
        Ok(())
    })?;
    Ok(sink.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        let text = "@type tordnsel 1.0\nExitNode AAAA\nPublished 2024-03-11 13:07:19\nLastStatus 2024-03-12 08:00:00\n\
ExitAddress 185.241.208.232 2024-03-12 08:10:51\nExitAddress 2001:db8::1 2024-03-12 08:10:52\n\
ExitNode BBBB\nExitAddress 300.1.1.1 2024-03-12 08:10:51\nExitAddress\nExitNode\nBogus 1\n";
        let p = parse(text.as_bytes(), &FeedOptions::default()).unwrap();
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[0].indicator.as_deref(), Some("AAAA"));
        assert_eq!(
            p.entries[0].description.as_deref(),
            Some("Tor exit, seen 2024-03-12 08:10:51")
        );
        assert_eq!(p.entries[1].entry.to_string(), "2001:db8::1");
        let r: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                (8, "invalid address '300.1.1.1'"),
                (9, "expected `ExitAddress ADDR DATE TIME`"),
                (10, "expected `ExitNode FINGERPRINT`"),
                (
                    11,
                    "unknown record 'Bogus' (expected ExitNode, Published, LastStatus or ExitAddress)"
                ),
            ]
        );
    }
}
