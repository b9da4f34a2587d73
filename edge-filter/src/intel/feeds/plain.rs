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

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Subnets};

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, Sink};
use crate::entry::Entry;
use crate::intel::blocklist::{EntryError, parse_net};

/// Parse a plain list.
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    parse_with(bytes, opts, true)
}

/// [`parse`], with or without the fast path for bare IPv4 lines (the
/// tests compare the two).
fn parse_with(bytes: &[u8], opts: &FeedOptions, fast: bool) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    let bare = |sink: &mut Sink<'_>, index: usize, raw: &[u8]| {
        let Some(addr) = bare_ipv4(raw).filter(|_| fast) else {
            return Ok(false);
        };
        sink.push_v4(index, Ipv4Net::from(addr))?;
        Ok(true)
    };
    sink.lines_fast(bytes, bare, |sink, index, line| {
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

/// A line that is exactly an IPv4 address in dotted-quad form as the
/// general path's parser (`std`'s) reads it: four decimal octets of one to
/// three digits, none above 255, no leading zero. Anything else (spaces,
/// a comment, a prefix, a range, IPv6, a mistake) is `None` and takes the
/// general path, which also words the rejections. Most lines of a big list
/// are this, and the general path (UTF-8 check, comment search, trimming,
/// splitting, `IpAddr`'s parser) cost about half of its parse.
fn bare_ipv4(raw: &[u8]) -> Option<Ipv4Addr> {
    if !(7..=15).contains(&raw.len()) {
        return None;
    }
    let mut octets = [0u8; 4];
    let (mut n, mut value, mut digits) = (0usize, 0u32, 0u32);
    for &b in raw {
        match b {
            b'0'..=b'9' => {
                if digits == 1 && value == 0 {
                    return None;
                }
                value = value * 10 + u32::from(b - b'0');
                digits += 1;
                if value > 255 {
                    return None;
                }
            }
            b'.' if digits > 0 && n < 3 => {
                octets[n] = value as u8;
                (n, value, digits) = (n + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if n != 3 || digits == 0 {
        return None;
    }
    octets[3] = value as u8;
    Some(Ipv4Addr::from(octets))
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

    /// The fast path for bare IPv4 lines changes nothing: over lines of
    /// every kind (bare addresses, their near misses, whitespace,
    /// comments, prefixes, ranges, IPv6, CR, non-UTF-8, long lines), in
    /// random mixes and with a cut last line, the parse with it equals the
    /// parse without it, rejections included.
    #[test]
    fn bare_ipv4_fast_path_equals_the_general_parse() {
        use rand::{Rng, SeedableRng};
        let fixed: &[&[u8]] = &[
            b"1.2.3.4",
            b"0.0.0.0",
            b"255.255.255.255",
            b"10.0.0.1",
            b"01.2.3.4",
            b"1.02.3.4",
            b"1.2.3.00",
            b"1.2.3.0",
            b"256.1.1.1",
            b"1.2.3.256",
            b"1.2.3",
            b"1.2.3.4.5",
            b"1..2.3",
            b".1.2.3",
            b"1.2.3.",
            b"1.2.3.4 ",
            b" 1.2.3.4",
            b"\t1.2.3.4",
            b"1.2.3.4\r",
            b"1.2.3.4#c",
            b"1.2.3.4 # c",
            b"1.2.3.4;x",
            b"1.2.3.0/24",
            b"1.2.3.4/32",
            b"1.2.3.4-1.2.3.9",
            b"2001:db8::1",
            b"::ffff:1.2.3.4",
            b"1.2.3.4a",
            b"a1.2.3.4",
            b"1.2.3.-4",
            b"1.2.3.+4",
            b"1234.1.1.1",
            b"999.999.999.999",
            b"",
            b"#",
            b"; x",
            b"\xff1.2.3.4",
            b"1.2.3.4\xff",
            b"\xc3\xa91.2.3.4",
            b"0.0.0.00",
            b"00.0.0.0",
            b"9.9.9.9",
            b"100.200.250.255",
            b"1.2.3.4\x00",
            b"10..2.34",
            b".10.2.34",
            b"10.2.34.",
            b"1.2.3..4",
            b"1.2.3.4.",
        ];
        let seed = crate::testing::seed();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let random_line = |rng: &mut rand::rngs::StdRng| -> Vec<u8> {
            match rng.random_range(0..4) {
                0 => fixed[rng.random_range(0..fixed.len())].to_vec(),
                1 => {
                    let o: Vec<String> = (0..4)
                        .map(|_| rng.random_range(0..300u32).to_string())
                        .collect();
                    o.join(".").into_bytes()
                }
                2 => std::net::Ipv4Addr::from(rng.random::<u32>())
                    .to_string()
                    .into_bytes(),
                _ => (0..rng.random_range(0..18))
                    .map(|_| {
                        let chars = b"0123456789.. /#-:\r\t";
                        chars[rng.random_range(0..chars.len())]
                    })
                    .collect(),
            }
        };
        for round in 0..300 {
            let n = rng.random_range(0..40);
            let mut body = Vec::new();
            for _ in 0..n {
                body.extend(random_line(&mut rng));
                body.push(b'\n');
            }
            if rng.random_bool(0.3) {
                body.pop();
            }
            for end_unproven in [false, true] {
                let opts = FeedOptions {
                    end_unproven,
                    action: if round % 3 == 0 {
                        crate::entry::Action::Monitor
                    } else {
                        crate::entry::Action::Drop
                    },
                    limits: crate::intel::feeds::FeedLimits {
                        max_line_len: if round % 5 == 0 { 12 } else { 4096 },
                        // Sometimes fewer entries than lines: the limit's
                        // error, at the same line, whichever path.
                        max_entries: if round % 7 == 0 { 5 } else { 1_000_000 },
                        ..Default::default()
                    },
                    ..FeedOptions::default()
                };
                let general = parse_with(&body, &opts, false);
                let fast = parse_with(&body, &opts, true);
                assert_eq!(
                    fast,
                    general,
                    "seed {seed} round {round}: {:?}",
                    String::from_utf8_lossy(&body)
                );
                // Packed (the agent's parse), both paths: the same
                // entries in the same order, the same errors and counts.
                let pack = FeedOptions {
                    pack: true,
                    ..opts.clone()
                };
                for fast_path in [false, true] {
                    let packed = parse_with(&body, &pack, fast_path);
                    assert_eq!(
                        packed,
                        general.clone().map(FeedParse::packed_form),
                        "seed {seed} round {round}, fast path {fast_path}: {:?}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
        // The fast path does take the bare lines.
        for l in [
            &b"1.2.3.4"[..],
            b"0.0.0.0",
            b"255.255.255.255",
            b"100.200.250.255",
        ] {
            assert!(bare_ipv4(l).is_some(), "{}", String::from_utf8_lossy(l));
        }
        for l in [
            &b"01.2.3.4"[..],
            b"1.2.3.4 ",
            b"1.2.3",
            b"256.1.1.1",
            b"1.2.3.4/32",
        ] {
            assert!(bare_ipv4(l).is_none(), "{}", String::from_utf8_lossy(l));
        }
    }

    #[test]
    fn empty() {
        assert_eq!(parse_str(""), FeedParse::default());
        assert_eq!(parse_str("\n\n#\n"), FeedParse::default());
    }
}
