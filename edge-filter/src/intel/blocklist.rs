//! The simple blocklist text format (`edge-filter run --blocklist FILE` and
//! `--allowlist FILE`).
//!
//! One entry per line:
//!
//! ```text
//! 203.0.113.7                  # an address (drops everything from it)
//! 198.51.100.0/24 monitor      # a prefix, counted but let through
//! 2001:db8::/32
//! tcp 192.0.2.1:443            # a C2 endpoint: source address + source port
//! udp [2001:db8::1]:53 dst     # source address + destination (local) port
//! tcp 198.51.100.0/24:22 dst   # prefix + port
//! udp [2001:db8::/48]:53       # IPv6 prefix + port
//! ```
//!
//! * the address is always the packet's *source*; `src` (the default) and
//!   `dst` only say which of the packet's ports a port entry compares;
//! * `drop` (the default) or `monitor` may follow, in any order with the side;
//! * keywords and protocols are case-insensitive;
//! * `#` starts a comment (whole line or trailing), blank lines are ignored,
//!   surrounding whitespace is ignored;
//! * host bits of a prefix are cleared (`198.51.100.7/24` is `198.51.100.0/24`);
//! * a line longer than [`MAX_LINE_LEN`] bytes is an error for that line.
//!
//! A bad line never stops the others: [`parse_blocklist`] returns every good
//! entry plus one [`LineError`] per bad line. The allowlist
//! ([`parse_allowlist`]) uses the same syntax restricted to plain addresses
//! and prefixes.
//!
//! [`parse_entry`] and [`parse_net`] parse a single entry or address and are
//! shared with the feed parsers, so every input reports the same reasons.
//! [`load_files`] reads a blocklist and an allowlist file into the entry set
//! they describe.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use thiserror::Error;

use crate::entry::{Action, Entry, EntrySet, PortMatch, Proto, Side};
use crate::error::{Error, Result as FilterResult};
use crate::escape::Escaped;

/// Longest accepted line, in bytes (without the line terminator).
pub const MAX_LINE_LEN: usize = 4096;

/// How much of a bad line an error quotes.
const QUOTE_LEN: usize = 120;

/// Why one entry (one line) is invalid.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EntryError {
    /// The line exceeds [`MAX_LINE_LEN`].
    #[error("line is {len} bytes, longer than the {max}-byte limit")]
    LineTooLong {
        /// Length of the line in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not an IPv4 or IPv6 address.
    #[error("invalid address '{0}'")]
    BadAddress(String),
    /// The text after `/` is not a number.
    #[error("invalid prefix length '{0}'")]
    BadPrefixLen(String),
    /// The prefix length is longer than the address.
    #[error("prefix length {len} exceeds {max}")]
    PrefixTooLong {
        /// The prefix length as written.
        len: String,
        /// 32 or 128.
        max: u8,
    },
    /// A protocol other than `tcp` or `udp`.
    #[error("unknown protocol '{0}' (expected `tcp` or `udp`)")]
    UnknownProto(String),
    /// A numeric port above 65535.
    #[error("port {0} out of range (0-65535)")]
    PortRange(String),
    /// A port that is not a number.
    #[error("invalid port '{0}' (expected a number 0-65535)")]
    BadPort(String),
    /// `PROTO ADDR` without `:PORT`.
    #[error("expected `PROTO ADDR:PORT`: '{0}' has no port")]
    MissingPort(String),
    /// A protocol with nothing after it.
    #[error("expected `PROTO ADDR:PORT`: no address after '{0}'")]
    MissingAddress(String),
    /// `ADDR:PORT` without a protocol.
    #[error("a port needs a protocol: expected `PROTO ADDR:PORT` (e.g. `tcp {0}`)")]
    PortWithoutProto(String),
    /// `PROTO v6addr:port` without brackets.
    #[error(
        "expected `PROTO ADDR:PORT`: an IPv6 address with a port is written `[ADDR]:PORT`, got '{0}'"
    )]
    UnbracketedV6(String),
    /// A `[` without the matching `]:PORT`.
    #[error("expected `PROTO [ADDR]:PORT`, got '{0}'")]
    BadBrackets(String),
    /// A word where `monitor`, `drop`, `src` or `dst` was expected.
    #[error("unexpected '{0}' (expected `monitor`, `drop`, `src` or `dst`)")]
    UnexpectedToken(String),
    /// A keyword before the address.
    #[error("'{0}' must follow the address")]
    KeywordFirst(String),
    /// The same keyword twice.
    #[error("duplicate keyword '{0}'")]
    DuplicateKeyword(String),
    /// `monitor drop` or `src dst`.
    #[error("conflicting keywords '{0}' and '{1}'")]
    Conflict(String, String),
    /// `dst` on an entry without a port.
    #[error(
        "'dst' needs a port: the address is always the packet's source, `dst` selects the destination port (`PROTO ADDR:PORT dst`)"
    )]
    SideWithoutPort,
    /// A port on an allowlist line.
    #[error("allowlist entries are addresses or prefixes only: a port ('{0}') is not allowed")]
    AllowPort(String),
    /// `monitor`, `drop`, `src` or `dst` on an allowlist line.
    #[error("allowlist entries are addresses or prefixes only: '{0}' is not allowed")]
    AllowKeyword(String),
}

/// One bad line.
///
/// Displays as `FILE:LINE: REASON: TEXT`, with control characters of the
/// reason and text escaped (see [`crate::escape`]).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{file}:{line}: {}: {}", Escaped(reason), Escaped(text))]
pub struct LineError {
    /// The file name given to the parser.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// The offending line, trimmed (long lines are shortened with `...`).
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Result of [`parse_blocklist`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseOutcome {
    /// The good entries, in file order (duplicates kept).
    pub entries: Vec<Entry>,
    /// One error per bad line, in file order.
    pub errors: Vec<LineError>,
}

/// Result of [`parse_allowlist`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowlistOutcome {
    /// The good addresses and prefixes (normalised), in file order.
    pub nets: Vec<IpNet>,
    /// One error per bad line, in file order.
    pub errors: Vec<LineError>,
}

/// Parse a blocklist. `name` is only used in error messages.
pub fn parse_blocklist(name: &str, text: &str) -> ParseOutcome {
    let mut out = ParseOutcome::default();
    for_each_entry_line(name, text, &mut out.errors, |body| {
        parse_entry(body).map(|entry| out.entries.push(entry))
    });
    out
}

/// Parse an allowlist: the blocklist syntax restricted to addresses and
/// prefixes (a port, `monitor`, `drop`, `src` or `dst` is an error for that
/// line). `name` is only used in error messages.
pub fn parse_allowlist(name: &str, text: &str) -> AllowlistOutcome {
    let mut out = AllowlistOutcome::default();
    for_each_entry_line(name, text, &mut out.errors, |body| {
        let line = parse_line(body)?;
        if let Some(port) = line.port_text {
            return Err(EntryError::AllowPort(port));
        }
        if let Some(keyword) = line.keywords.into_iter().next() {
            return Err(EntryError::AllowKeyword(keyword));
        }
        out.nets.push(line.net.trunc());
        Ok(())
    });
    out
}

/// Parse one entry in the blocklist syntax (no comment, already trimmed or
/// not).
pub fn parse_entry(text: &str) -> Result<Entry, EntryError> {
    let line = parse_line(text)?;
    if line.side == Some(Side::Dst) && line.port.is_none() {
        return Err(EntryError::SideWithoutPort);
    }
    let port = line.port.map(|(proto, port)| PortMatch {
        proto,
        port,
        side: line.side.unwrap_or_default(),
    });
    Ok(Entry::new(
        line.net,
        port,
        line.action.unwrap_or(Action::Drop),
    ))
}

/// Parse an address (`192.0.2.1`, `2001:db8::1`) or prefix
/// (`198.51.100.0/24`). Host bits are kept; callers normalise with
/// [`IpNet::trunc`] (as [`Entry::new`] does).
pub fn parse_net(text: &str) -> Result<IpNet, EntryError> {
    let (addr_text, len_text) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| EntryError::BadAddress(addr_text.to_string()))?;
    let max = match addr {
        IpAddr::V4(_) => 32u8,
        IpAddr::V6(_) => 128u8,
    };
    let len = match len_text {
        None => max,
        Some(l) => {
            if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(EntryError::BadPrefixLen(l.to_string()));
            }
            match l.parse::<u32>() {
                Ok(n) if n <= u32::from(max) => n as u8,
                _ => {
                    return Err(EntryError::PrefixTooLong {
                        len: l.to_string(),
                        max,
                    });
                }
            }
        }
    };
    // Cannot fail: len <= max was checked above.
    IpNet::new(addr, len).map_err(|_| EntryError::PrefixTooLong {
        len: len.to_string(),
        max,
    })
}

/// Parse a port number (`0`-`65535`).
pub fn parse_port(text: &str) -> Result<u16, EntryError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EntryError::BadPort(text.to_string()));
    }
    text.parse::<u16>()
        .map_err(|_| EntryError::PortRange(text.to_string()))
}

/// Parse a protocol name (`tcp`, `udp`, any case).
pub fn parse_proto(text: &str) -> Result<Proto, EntryError> {
    if text.eq_ignore_ascii_case("tcp") {
        Ok(Proto::Tcp)
    } else if text.eq_ignore_ascii_case("udp") {
        Ok(Proto::Udp)
    } else {
        Err(EntryError::UnknownProto(text.to_string()))
    }
}

/// Shorten `text` to at most `max` bytes (on a character boundary) for
/// quoting in an error message.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The entry set from the files, with every bad line reported.
pub struct Loaded {
    /// What to enforce.
    pub set: EntrySet,
    /// Bad lines (the rest applied).
    pub errors: Vec<LineError>,
}

/// Read and parse the blocklist and allowlist. A file that cannot be read is
/// an error (the caller keeps what is enforced); bad lines are not.
pub fn load_files(blocklist: &Path, allowlist: Option<&Path>) -> FilterResult<Loaded> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| Error::Read {
            path: p.into(),
            source,
        })
    };
    let text = read(blocklist)?;
    let b = parse_blocklist(&blocklist.display().to_string(), &text);
    let mut set = EntrySet {
        allow: Vec::new(),
        entries: b.entries,
    };
    let mut errors = b.errors;
    if let Some(a) = allowlist {
        let text = read(a)?;
        let out = parse_allowlist(&a.display().to_string(), &text);
        set.allow = out.nets;
        errors.extend(out.errors);
    }
    Ok(Loaded { set, errors })
}

/// Run `f` on the body (comment removed, trimmed) of every non-blank line,
/// turning its errors (and over-long lines) into [`LineError`]s.
fn for_each_entry_line(
    name: &str,
    text: &str,
    errors: &mut Vec<LineError>,
    mut f: impl FnMut(&str) -> Result<(), EntryError>,
) {
    // A byte-order mark (Windows editors) is not part of the first entry.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let error = |reason: EntryError| LineError {
            file: name.to_string(),
            line: i + 1,
            text: clip(raw.trim(), QUOTE_LEN),
            reason: reason.to_string(),
        };
        if raw.len() > MAX_LINE_LEN {
            errors.push(error(EntryError::LineTooLong {
                len: raw.len(),
                max: MAX_LINE_LEN,
            }));
            continue;
        }
        let body = match raw.find('#') {
            Some(pos) => &raw[..pos],
            None => raw,
        }
        .trim();
        if body.is_empty() {
            continue;
        }
        if let Err(e) = f(body) {
            errors.push(error(e));
        }
    }
}

/// The pieces of one line, before defaults are applied.
struct Line {
    net: IpNet,
    port: Option<(Proto, u16)>,
    /// The `ADDR:PORT` token, for allowlist errors.
    port_text: Option<String>,
    action: Option<Action>,
    side: Option<Side>,
    /// Keywords as written, in order.
    keywords: Vec<String>,
}

fn is_keyword(word: &str) -> bool {
    ["monitor", "drop", "src", "dst"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

fn parse_line(body: &str) -> Result<Line, EntryError> {
    let mut tokens = body.split_whitespace();
    let Some(first) = tokens.next() else {
        return Err(EntryError::BadAddress(String::new()));
    };
    let (net, port, port_text) = if first.bytes().all(|b| b.is_ascii_alphabetic()) {
        if is_keyword(first) {
            return Err(EntryError::KeywordFirst(first.to_string()));
        }
        let Some(hostport) = tokens.next() else {
            // A lone word: an address that does not parse (`dead`, `foo`).
            return match parse_proto(first) {
                Ok(_) => Err(EntryError::MissingAddress(first.to_string())),
                Err(_) => Err(EntryError::BadAddress(first.to_string())),
            };
        };
        let proto = parse_proto(first)?;
        let (net, port) = parse_hostport(hostport)?;
        (net, Some((proto, port)), Some(hostport.to_string()))
    } else {
        match parse_net(first) {
            Ok(net) => (net, None, None),
            Err(e) => {
                return Err(if looks_like_hostport(first) {
                    EntryError::PortWithoutProto(first.to_string())
                } else {
                    e
                });
            }
        }
    };
    let mut line = Line {
        net,
        port,
        port_text,
        action: None,
        side: None,
        keywords: Vec::new(),
    };
    for word in tokens {
        let lower = word.to_ascii_lowercase();
        if line.keywords.iter().any(|k| k.eq_ignore_ascii_case(word)) {
            return Err(EntryError::DuplicateKeyword(word.to_string()));
        }
        match lower.as_str() {
            "monitor" | "drop" => {
                let action = if lower == "drop" {
                    Action::Drop
                } else {
                    Action::Monitor
                };
                if let Some(old) = line.action {
                    return Err(EntryError::Conflict(old.name().to_string(), lower));
                }
                line.action = Some(action);
            }
            "src" | "dst" => {
                let side = if lower == "src" { Side::Src } else { Side::Dst };
                if line.side.is_some() {
                    let old = if side == Side::Src { "dst" } else { "src" };
                    return Err(EntryError::Conflict(old.to_string(), lower));
                }
                line.side = Some(side);
            }
            _ => return Err(EntryError::UnexpectedToken(word.to_string())),
        }
        line.keywords.push(word.to_string());
    }
    Ok(line)
}

/// Whether a token that is not an address looks like `ADDR:PORT`.
fn looks_like_hostport(token: &str) -> bool {
    if token.starts_with('[') {
        return true;
    }
    match token.rsplit_once(':') {
        Some((host, _)) => !host.contains(':') && parse_net(host).is_ok(),
        None => false,
    }
}

/// `198.51.100.0/24:22`, `192.0.2.1:443`, `[2001:db8::1]:53`,
/// `[2001:db8::/32]:53`.
fn parse_hostport(token: &str) -> Result<(IpNet, u16), EntryError> {
    if let Some(rest) = token.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(EntryError::BadBrackets(token.to_string()));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(if after.is_empty() {
                EntryError::MissingPort(token.to_string())
            } else {
                EntryError::BadBrackets(token.to_string())
            });
        };
        let net = parse_net(host)?;
        return Ok((net, parse_port(port)?));
    }
    let Some((host, port)) = token.rsplit_once(':') else {
        // No port; say so only if the address itself is fine.
        parse_net(token)?;
        return Err(EntryError::MissingPort(token.to_string()));
    };
    if host.contains(':') {
        return Err(EntryError::UnbracketedV6(token.to_string()));
    }
    let net = parse_net(host)?;
    Ok((net, parse_port(port)?))
}

impl fmt::Display for ParseOutcome {
    /// A one-line summary: `N entries, M errors`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries, {} errors",
            self.entries.len(),
            self.errors.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn host(s: &str) -> IpNet {
        IpNet::from(s.parse::<IpAddr>().unwrap())
    }

    fn pm(proto: Proto, port: u16, side: Side) -> Option<PortMatch> {
        Some(PortMatch { proto, port, side })
    }

    /// The reason for a single bad line.
    fn reason(line: &str) -> String {
        let out = parse_blocklist("t", line);
        assert!(out.entries.is_empty(), "{line:?} parsed: {:?}", out.entries);
        assert_eq!(out.errors.len(), 1, "{line:?}");
        out.errors[0].reason.clone()
    }

    fn one(line: &str) -> Entry {
        let out = parse_blocklist("t", line);
        assert!(out.errors.is_empty(), "{line:?}: {:?}", out.errors);
        assert_eq!(out.entries.len(), 1, "{line:?}");
        out.entries[0]
    }

    #[test]
    fn every_documented_form() {
        let text = "\
203.0.113.7
198.51.100.0/24
2001:db8::/32
tcp 192.0.2.1:443
udp [2001:db8::1]:53 dst
tcp 198.51.100.0/24:22 dst
udp [2001:db8::/48]:53
";
        let out = parse_blocklist("list", text);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let d = Action::Drop;
        assert_eq!(
            out.entries,
            vec![
                Entry::new(host("203.0.113.7"), None, d),
                Entry::new(net("198.51.100.0/24"), None, d),
                Entry::new(net("2001:db8::/32"), None, d),
                Entry::new(host("192.0.2.1"), pm(Proto::Tcp, 443, Side::Src), d),
                Entry::new(host("2001:db8::1"), pm(Proto::Udp, 53, Side::Dst), d),
                Entry::new(net("198.51.100.0/24"), pm(Proto::Tcp, 22, Side::Dst), d),
                Entry::new(net("2001:db8::/48"), pm(Proto::Udp, 53, Side::Src), d),
            ]
        );
        assert_eq!(out.to_string(), "7 entries, 0 errors");
    }

    #[test]
    fn actions_and_sides() {
        assert_eq!(one("203.0.113.7 monitor").action, Action::Monitor);
        assert_eq!(one("203.0.113.7 drop").action, Action::Drop);
        assert_eq!(one("203.0.113.7").action, Action::Drop);
        assert_eq!(one("203.0.113.7 src").port, None);
        let e = one("tcp 192.0.2.1:443 monitor dst");
        assert_eq!(e.action, Action::Monitor);
        assert_eq!(e.port, pm(Proto::Tcp, 443, Side::Dst));
        let e = one("tcp 192.0.2.1:443 dst monitor");
        assert_eq!(e.action, Action::Monitor);
        assert_eq!(e.port, pm(Proto::Tcp, 443, Side::Dst));
        let e = one("TCP 192.0.2.1:443 SRC MONITOR");
        assert_eq!(e.port, pm(Proto::Tcp, 443, Side::Src));
        assert_eq!(e.action, Action::Monitor);
        assert_eq!(one("udp 192.0.2.1:0").port, pm(Proto::Udp, 0, Side::Src));
        assert_eq!(
            one("udp 192.0.2.1:65535").port,
            pm(Proto::Udp, 65535, Side::Src)
        );
    }

    #[test]
    fn comments_blanks_whitespace() {
        let text =
            "# header\n\n   \n\t203.0.113.7   # trailing\n  198.51.100.0/24 monitor#x\r\n#\n";
        let out = parse_blocklist("t", text);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.entries.len(), 2);
        assert_eq!(out.entries[1].action, Action::Monitor);
    }

    #[test]
    fn byte_order_mark() {
        let out = parse_blocklist("t", "\u{feff}203.0.113.7\n");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.entries.len(), 1);
        assert_eq!(parse_allowlist("t", "\u{feff}10.0.0.0/8\n").nets.len(), 1);
    }

    #[test]
    fn normalises_host_bits() {
        assert_eq!(one("198.51.100.7/24").net, net("198.51.100.0/24"));
        assert_eq!(one("tcp [2001:db8::1/32]:80").net, net("2001:db8::/32"));
        assert!(one("0.0.0.0/0").net.prefix_len() == 0);
        assert!(one("192.0.2.1/32").is_exact());
    }

    #[test]
    fn precise_reasons() {
        assert_eq!(
            reason("tcp 192.0.2.1:70000"),
            "port 70000 out of range (0-65535)"
        );
        assert_eq!(
            reason("tcp 192.0.2.1:99999999999999999999"),
            "port 99999999999999999999 out of range (0-65535)"
        );
        assert_eq!(
            reason("tcp 192.0.2.1:http"),
            "invalid port 'http' (expected a number 0-65535)"
        );
        assert_eq!(
            reason("tcp 192.0.2.1:"),
            "invalid port '' (expected a number 0-65535)"
        );
        assert_eq!(
            reason("icmp 192.0.2.1:1"),
            "unknown protocol 'icmp' (expected `tcp` or `udp`)"
        );
        assert_eq!(reason("198.51.100.0/33"), "prefix length 33 exceeds 32");
        assert_eq!(reason("2001:db8::/129"), "prefix length 129 exceeds 128");
        assert_eq!(
            reason("10.0.0.0/4294967296"),
            "prefix length 4294967296 exceeds 32"
        );
        assert_eq!(reason("10.0.0.0/x"), "invalid prefix length 'x'");
        assert_eq!(reason("10.0.0.0/"), "invalid prefix length ''");
        assert_eq!(reason("10.0.0.0/-1"), "invalid prefix length '-1'");
        assert_eq!(reason("300.1.2.3"), "invalid address '300.1.2.3'");
        assert_eq!(reason("010.1.2.3"), "invalid address '010.1.2.3'");
        assert_eq!(reason("example.com"), "invalid address 'example.com'");
        assert_eq!(reason("foo"), "invalid address 'foo'");
        assert_eq!(reason("fe80::1%eth0"), "invalid address 'fe80::1%eth0'");
        assert_eq!(
            reason("tcp 192.0.2.1"),
            "expected `PROTO ADDR:PORT`: '192.0.2.1' has no port"
        );
        assert_eq!(
            reason("tcp [2001:db8::1]"),
            "expected `PROTO ADDR:PORT`: '[2001:db8::1]' has no port"
        );
        assert_eq!(
            reason("tcp"),
            "expected `PROTO ADDR:PORT`: no address after 'tcp'"
        );
        assert_eq!(
            reason("192.0.2.1:443"),
            "a port needs a protocol: expected `PROTO ADDR:PORT` (e.g. `tcp 192.0.2.1:443`)"
        );
        assert_eq!(
            reason("[2001:db8::1]:53"),
            "a port needs a protocol: expected `PROTO ADDR:PORT` (e.g. `tcp [2001:db8::1]:53`)"
        );
        assert_eq!(
            reason("udp 2001:db8::1"),
            "expected `PROTO ADDR:PORT`: an IPv6 address with a port is written `[ADDR]:PORT`, got '2001:db8::1'"
        );
        assert_eq!(
            reason("udp [2001:db8::1:53"),
            "expected `PROTO [ADDR]:PORT`, got '[2001:db8::1:53'"
        );
        assert_eq!(
            reason("udp [2001:db8::1]53"),
            "expected `PROTO [ADDR]:PORT`, got '[2001:db8::1]53'"
        );
        assert_eq!(reason("udp [1.2.3]:53"), "invalid address '1.2.3'");
        assert_eq!(reason("udp 1.2.3.4/40:53"), "prefix length 40 exceeds 32");
        assert_eq!(
            reason("203.0.113.7 block"),
            "unexpected 'block' (expected `monitor`, `drop`, `src` or `dst`)"
        );
        assert_eq!(
            reason("203.0.113.7 203.0.113.8"),
            "unexpected '203.0.113.8' (expected `monitor`, `drop`, `src` or `dst`)"
        );
        assert_eq!(
            reason("203.0.113.7 monitor drop"),
            "conflicting keywords 'monitor' and 'drop'"
        );
        assert_eq!(
            reason("tcp 192.0.2.1:1 dst src"),
            "conflicting keywords 'dst' and 'src'"
        );
        assert_eq!(reason("203.0.113.7 drop drop"), "duplicate keyword 'drop'");
        assert_eq!(
            reason("monitor 203.0.113.7"),
            "'monitor' must follow the address"
        );
        assert!(reason("203.0.113.7 dst").starts_with("'dst' needs a port"));
    }

    #[test]
    fn bad_lines_do_not_stop_the_others() {
        let text = "203.0.113.7\nicmp 192.0.2.1:1\n\n198.51.100.0/33 # typo\ntcp 192.0.2.1:443\n";
        let out = parse_blocklist("block.txt", text);
        assert_eq!(out.entries.len(), 2);
        assert_eq!(out.errors.len(), 2);
        assert_eq!(out.errors[0].line, 2);
        assert_eq!(out.errors[1].line, 4);
        assert_eq!(
            out.errors[1].to_string(),
            "block.txt:4: prefix length 33 exceeds 32: 198.51.100.0/33 # typo"
        );
        assert_eq!(
            out.errors[0].to_string(),
            "block.txt:2: unknown protocol 'icmp' (expected `tcp` or `udp`): icmp 192.0.2.1:1"
        );
    }

    #[test]
    fn line_length_limit() {
        let long = format!("203.0.113.7 {}", " ".repeat(MAX_LINE_LEN));
        let ok = format!("203.0.113.7{}", " ".repeat(MAX_LINE_LEN - 11));
        assert_eq!(ok.len(), MAX_LINE_LEN);
        let text = format!("{long}\n{ok}\n# {}\n", "x".repeat(MAX_LINE_LEN));
        let out = parse_blocklist("t", &text);
        assert_eq!(out.entries.len(), 1);
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        assert_eq!(out.errors[0].line, 1);
        assert_eq!(
            out.errors[0].reason,
            format!(
                "line is {} bytes, longer than the 4096-byte limit",
                long.len()
            )
        );
        assert_eq!(out.errors[1].line, 3);
        assert!(out.errors[1].text.len() <= QUOTE_LEN + 3);
        assert!(out.errors[1].text.ends_with("..."));
    }

    #[test]
    fn display_round_trips() {
        let text = "203.0.113.7\n198.51.100.0/24 monitor\n2001:db8::/32\ntcp 192.0.2.1:443\n\
                    udp [2001:db8::1]:53 dst\ntcp 198.51.100.0/24:22 dst monitor\nudp [2001:db8::/48]:53\n";
        let out = parse_blocklist("t", text);
        assert!(out.errors.is_empty());
        let printed: String = out.entries.iter().map(|e| format!("{e}\n")).collect();
        let again = parse_blocklist("t", &printed);
        assert!(again.errors.is_empty(), "{:?}\n{printed}", again.errors);
        assert_eq!(again.entries, out.entries);
    }

    #[test]
    fn allowlist() {
        let text = "\
# resolvers
8.8.8.8
2001:4860:4860::8888
10.0.0.7/8   # normalised
tcp 192.0.2.1:443
192.0.2.2 monitor
192.0.2.3 src
192.0.2.0/33
";
        let out = parse_allowlist("allow.txt", text);
        assert_eq!(
            out.nets,
            vec![
                host("8.8.8.8"),
                host("2001:4860:4860::8888"),
                net("10.0.0.0/8"),
            ]
        );
        let reasons: Vec<_> = out
            .errors
            .iter()
            .map(|e| (e.line, e.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    5,
                    "allowlist entries are addresses or prefixes only: a port ('192.0.2.1:443') is not allowed"
                ),
                (
                    6,
                    "allowlist entries are addresses or prefixes only: 'monitor' is not allowed"
                ),
                (
                    7,
                    "allowlist entries are addresses or prefixes only: 'src' is not allowed"
                ),
                (8, "prefix length 33 exceeds 32"),
            ]
        );
        assert!(
            out.errors[0]
                .to_string()
                .starts_with("allow.txt:5: allowlist entries")
        );
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(parse_blocklist("t", ""), ParseOutcome::default());
        assert_eq!(
            parse_blocklist("t", "\n\n# only comments\n"),
            ParseOutcome::default()
        );
        assert_eq!(parse_allowlist("t", ""), AllowlistOutcome::default());
    }

    #[test]
    fn shared_helpers() {
        assert_eq!(parse_net("192.0.2.1").unwrap(), host("192.0.2.1"));
        assert_eq!(parse_net("::/0").unwrap(), net("::/0"));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_proto("Udp"), Ok(Proto::Udp));
        assert_eq!(clip("abcdef", 3), "abc...");
        assert_eq!(clip("ééé", 3), "é...");
        assert_eq!(clip("abc", 3), "abc");
    }
}
