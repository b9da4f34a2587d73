//! Plain lists: one address or prefix per line.
//!
//! Covers FireHOL `.netset`/`.ipset` files (a `#` header), republished
//! blocklists (leading or trailing whitespace), the Tor bulk exit list,
//! bogon lists and the like:
//!
//! * `#` and `;` start a comment (whole line or trailing);
//! * blank lines and surrounding whitespace are ignored;
//! * `A-B` (two addresses of one family) is a range, split into the fewest
//!   prefixes that cover it exactly;
//! * duplicates are kept (merging happens later).
//!
//! Entries carry no port and no provenance; their action is
//! [`FeedOptions::action`](super::FeedOptions::action).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, Sink};
use crate::entry::Entry;
use crate::intel::blocklist::{EntryError, parse_net};

/// Parse a plain list.
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    sink.lines(bytes, |sink, index, line| {
        // Up to a comment, found with memchr (a char searcher was 3% of
        // the CPU of a 1M-line refresh).
        let body = match memchr::memchr2(b'#', b';', line.as_bytes()) {
            Some(i) => &line[..i],
            None => line,
        }
        .trim();
        if body.is_empty() {
            return Ok(());
        }
        let action = sink.opts.action;
        match parse_item(body) {
            Ok(Item::Net(net)) => {
                sink.push(index, FeedEntry::new(Entry::new(net, None, action)))?
            }
            Ok(Item::Range(nets)) => {
                for net in nets {
                    sink.push(index, FeedEntry::new(Entry::new(net, None, action)))?;
                }
            }
            Err(reason) => sink.reject(index, reason, line),
        }
        Ok(())
    })?;
    Ok(sink.finish())
}

/// What one line holds.
pub(crate) enum Item {
    /// An address or prefix (no allocation: most lines of a big list).
    Net(IpNet),
    /// A range, as the prefixes that cover it.
    Range(Vec<IpNet>),
}

/// One address, prefix or range.
pub(crate) fn parse_item(body: &str) -> Result<Item, String> {
    let mut words = body.split_whitespace();
    let first = words.next().unwrap_or_default();
    if let Some(extra) = words.next() {
        return Err(format!(
            "expected one address or prefix per line, found '{extra}' after '{first}'"
        ));
    }
    if let Some((start, end)) = first.split_once('-') {
        return parse_range(start, end).map(Item::Range);
    }
    parse_net(first).map(Item::Net).map_err(|e| e.to_string())
}

fn parse_range(start: &str, end: &str) -> Result<Vec<IpNet>, String> {
    let addr = |s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| EntryError::BadAddress(s.to_string()).to_string())
    };
    let (a, b) = (addr(start)?, addr(end)?);
    let nets: Vec<IpNet> = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
            Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect()
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
            Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect()
        }
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            return Err(format!("range {start}-{end} ends before it starts"));
        }
        _ => return Err(format!("range {start}-{end} mixes IPv4 and IPv6")),
    };
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Action;

    fn parse_str(text: &str) -> FeedParse {
        parse(text.as_bytes(), &FeedOptions::default()).unwrap()
    }

    fn nets(p: &FeedParse) -> Vec<String> {
        p.entries.iter().map(|e| e.entry.net.to_string()).collect()
    }

    #[test]
    fn firehol_style() {
        let p = parse_str(
            "#\n# feodo\n#\n# ipv4 hash:ip ipset\n#\n1.2.3.4\n  5.6.7.0/24\n\t2001:db8::/32 \n1.2.3.4\n; semi\n9.9.9.9 ; why\n8.8.8.8 # c\n",
        );
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        assert_eq!(
            nets(&p),
            [
                "1.2.3.4/32",
                "5.6.7.0/24",
                "2001:db8::/32",
                "1.2.3.4/32",
                "9.9.9.9/32",
                "8.8.8.8/32"
            ]
        );
        assert!(p.entries.iter().all(|e| e.entry.action == Action::Drop
            && e.entry.port.is_none()
            && e.indicator.is_none()));
    }

    #[test]
    fn monitor_action_from_options() {
        let opts = FeedOptions {
            action: Action::Monitor,
            ..FeedOptions::default()
        };
        let p = parse(b"1.2.3.4\n", &opts).unwrap();
        assert_eq!(p.entries[0].entry.action, Action::Monitor);
    }

    #[test]
    fn ranges() {
        let p = parse_str("10.0.0.0-10.0.0.255\n10.0.0.1-10.0.0.6\n2001:db8::-2001:db8::1\n");
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        assert_eq!(
            nets(&p),
            [
                "10.0.0.0/24",
                "10.0.0.1/32",
                "10.0.0.2/31",
                "10.0.0.4/31",
                "10.0.0.6/32",
                "2001:db8::/127"
            ]
        );
    }

    #[test]
    fn rejections() {
        let p = parse_str(
            "1.2.3.4 5.6.7.8\n1.2.3.0/33\nexample.com\n10.0.0.9-10.0.0.1\n10.0.0.1-::1\n1.2.3.4:80\nok\n",
        );
        assert!(p.entries.is_empty());
        let r: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                (
                    1,
                    "expected one address or prefix per line, found '5.6.7.8' after '1.2.3.4'"
                ),
                (2, "prefix length 33 exceeds 32"),
                (3, "invalid address 'example.com'"),
                (4, "range 10.0.0.9-10.0.0.1 ends before it starts"),
                (5, "range 10.0.0.1-::1 mixes IPv4 and IPv6"),
                (6, "invalid address '1.2.3.4:80'"),
                (7, "invalid address 'ok'"),
            ]
        );
    }

    #[test]
    fn empty() {
        assert_eq!(parse_str(""), FeedParse::default());
        assert_eq!(parse_str("\n\n#\n"), FeedParse::default());
    }
}
