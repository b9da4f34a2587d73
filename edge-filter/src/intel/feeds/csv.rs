//! CSV feeds: abuse.ch Feodo Tracker `ipblocklist.csv`, and any CSV through
//! a [`CsvMapping`].
//!
//! Lines starting with `#` are comments, with two exceptions: a comment line
//! that holds the header (newer Feodo files write
//! `# "first_seen_utc","dst_ip",...`) is used as the header, and a
//! `# END n entries` trailer is checked against the rows actually read (a
//! mismatch, e.g. a truncated download, is one [`Rejected`](super::Rejected)
//! at the trailer line). Blank lines are ignored. Each line is one record
//! (quoted fields may not span lines).
//!
//! Feodo Tracker rows (`first_seen_utc, dst_ip, dst_port, c2_status,
//! last_online, malware`) are botnet C2 endpoints the victims connect to:
//! each becomes `tcp dst_ip:dst_port` with [`Side::Src`] (replies from the
//! C2 arrive with the C2's port as source port), indicator = the malware
//! family, `valid_from` = `first_seen_utc`.
//!
//! Without a mapping ([`FeedOptions::csv`] `None`) the header decides: the
//! Feodo columns select [`CsvMapping::feodo`], otherwise common names are
//! recognised ([`CsvMapping::guess`]). A port without a protocol yields two
//! entries, TCP and UDP; an empty port cell yields an address-only entry.

use ::csv::{ReaderBuilder, StringRecord, Trim};

use super::{
    FeedEntry, FeedError, FeedOptions, FeedParse, IgnoreKind, Sink, parse_confidence, parse_time,
};
use crate::entry::{Entry, PortMatch, Proto, Side};
use crate::intel::blocklist::{parse_net, parse_port, parse_proto};

/// A column, by header name (case-insensitive) or 0-based position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Column {
    /// Header name.
    Name(String),
    /// 0-based position.
    Index(usize),
}

impl Column {
    /// A column by header name.
    pub fn name(name: &str) -> Self {
        Column::Name(name.to_string())
    }
}

/// Where the protocol of a port entry comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoSpec {
    /// Every row has this protocol.
    Fixed(Proto),
    /// A column holding `tcp` or `udp`.
    Column(Column),
}

/// Which columns hold what.
///
/// The header is expected (as the first non-comment line, or as a comment
/// line naming the columns) exactly when some column is given by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvMapping {
    /// Address or prefix (required).
    pub ip_column: Column,
    /// Port; `None` for address-only entries.
    pub port_column: Option<Column>,
    /// Protocol of port entries; `None`: both TCP and UDP.
    pub proto: Option<ProtoSpec>,
    /// Indicator (malware family, id, ...).
    pub indicator_column: Option<Column>,
    /// Confidence 0-100.
    pub confidence_column: Option<Column>,
    /// Start of validity (RFC 3339, `YYYY-MM-DD HH:MM:SS` UTC or a date).
    pub valid_from_column: Option<Column>,
    /// End of validity (same formats); rows already expired are skipped.
    pub expires_column: Option<Column>,
    /// Free text.
    pub description_column: Option<Column>,
    /// Which packet port the port column is.
    pub side: Side,
    /// Field separator (`b','`).
    pub delimiter: u8,
}

impl CsvMapping {
    /// An address-only mapping of `ip_column`.
    pub fn new(ip_column: Column) -> Self {
        CsvMapping {
            ip_column,
            port_column: None,
            proto: None,
            indicator_column: None,
            confidence_column: None,
            valid_from_column: None,
            expires_column: None,
            description_column: None,
            side: Side::Src,
            delimiter: b',',
        }
    }

    /// abuse.ch Feodo Tracker `ipblocklist.csv`.
    pub fn feodo() -> Self {
        CsvMapping {
            port_column: Some(Column::name("dst_port")),
            proto: Some(ProtoSpec::Fixed(Proto::Tcp)),
            indicator_column: Some(Column::name("malware")),
            valid_from_column: Some(Column::name("first_seen_utc")),
            ..CsvMapping::new(Column::name("dst_ip"))
        }
    }

    /// Recognise a header: the Feodo Tracker columns, or common names
    /// (`ip`, `ip_address`, `address`, `cidr`, `port`, `proto`,
    /// `confidence`, `expires`, ...). `None` when no column looks like an
    /// address.
    pub fn guess(header: &[String]) -> Option<Self> {
        let find = |names: &[&str]| {
            names.iter().find_map(|n| {
                header
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(n))
                    .then(|| Column::name(n))
            })
        };
        if find(&["dst_ip"]).is_some()
            && find(&["dst_port"]).is_some()
            && find(&["malware"]).is_some()
        {
            return Some(CsvMapping::feodo());
        }
        let ip = find(&[
            "ip",
            "ip_address",
            "ipaddress",
            "ip_addr",
            "address",
            "addr",
            "dst_ip",
            "src_ip",
            "cidr",
            "network",
            "net",
            "prefix",
        ])?;
        Some(CsvMapping {
            port_column: find(&["port", "dst_port", "src_port"]),
            proto: find(&["proto", "protocol"]).map(ProtoSpec::Column),
            indicator_column: find(&["indicator", "id", "malware", "malware_family", "threat"]),
            confidence_column: find(&["confidence", "confidence_level"]),
            valid_from_column: find(&["valid_from", "first_seen_utc", "first_seen", "dateadded"]),
            expires_column: find(&["expires", "valid_until", "expiration"]),
            description_column: find(&["description", "comment"]),
            ..CsvMapping::new(ip)
        })
    }

    fn columns(&self) -> impl Iterator<Item = &Column> {
        let proto = match &self.proto {
            Some(ProtoSpec::Column(c)) => Some(c),
            _ => None,
        };
        std::iter::once(&self.ip_column)
            .chain(self.port_column.as_ref())
            .chain(proto)
            .chain(self.indicator_column.as_ref())
            .chain(self.confidence_column.as_ref())
            .chain(self.valid_from_column.as_ref())
            .chain(self.expires_column.as_ref())
            .chain(self.description_column.as_ref())
    }

    fn needs_header(&self) -> bool {
        self.columns().any(|c| matches!(c, Column::Name(_)))
    }

    /// Resolve names to positions against `header`.
    fn resolve(&self, header: &[String]) -> Result<Resolved, String> {
        let pos = |c: &Column| match c {
            Column::Index(i) => Ok(*i),
            Column::Name(n) => header
                .iter()
                .position(|h| h.eq_ignore_ascii_case(n))
                .ok_or_else(|| {
                    format!(
                        "header has no column '{n}' (columns: {})",
                        header.join(", ")
                    )
                }),
        };
        let opt = |c: &Option<Column>| c.as_ref().map(pos).transpose();
        Ok(Resolved {
            ip: pos(&self.ip_column)?,
            port: opt(&self.port_column)?,
            proto: match &self.proto {
                None => None,
                Some(ProtoSpec::Fixed(p)) => Some(ResolvedProto::Fixed(*p)),
                Some(ProtoSpec::Column(c)) => Some(ResolvedProto::Column(pos(c)?)),
            },
            indicator: opt(&self.indicator_column)?,
            confidence: opt(&self.confidence_column)?,
            valid_from: opt(&self.valid_from_column)?,
            expires: opt(&self.expires_column)?,
            description: opt(&self.description_column)?,
            side: self.side,
            names: header.to_vec(),
        })
    }
}

#[derive(Clone, Copy)]
enum ResolvedProto {
    Fixed(Proto),
    Column(usize),
}

struct Resolved {
    ip: usize,
    port: Option<usize>,
    proto: Option<ResolvedProto>,
    indicator: Option<usize>,
    confidence: Option<usize>,
    valid_from: Option<usize>,
    expires: Option<usize>,
    description: Option<usize>,
    side: Side,
    /// Header names, for messages.
    names: Vec<String>,
}

impl Resolved {
    /// Every mapped position, address first.
    fn mapped(&self) -> impl Iterator<Item = usize> + '_ {
        let proto = match self.proto {
            Some(ResolvedProto::Column(i)) => Some(i),
            _ => None,
        };
        std::iter::once(self.ip)
            .chain(self.port)
            .chain(proto)
            .chain(self.indicator)
            .chain(self.confidence)
            .chain(self.valid_from)
            .chain(self.expires)
            .chain(self.description)
    }

    fn label(&self, i: usize) -> String {
        match self.names.get(i) {
            Some(n) => format!("'{n}'"),
            None => format!("#{}", i + 1),
        }
    }
}

/// Parse a CSV feed with [`FeedOptions::csv`] (or the guessed mapping).
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    let mapping = opts.csv.clone();
    let delimiter = mapping.as_ref().map_or(b',', |m| m.delimiter);
    let needs_header = mapping.as_ref().is_none_or(CsvMapping::needs_header);
    let mut resolved: Option<Resolved> = match &mapping {
        Some(m) if !needs_header => Some(m.resolve(&[]).map_err(FeedError::Csv)?),
        _ => None,
    };
    let mut rows = 0usize;
    let mut trailer: Option<(usize, usize, String)> = None;
    sink.lines(bytes, |sink, index, line| {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Ok(());
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let comment = comment.trim_start_matches('#').trim();
            if resolved.is_none() {
                let fields = split(comment, delimiter).unwrap_or_default();
                if let Some(r) = header_of(mapping.as_ref(), &fields) {
                    resolved = Some(r);
                    return Ok(());
                }
            }
            if let Some(n) = trailer_count(comment) {
                trailer = Some((index, n, line.to_string()));
            }
            return Ok(());
        }
        let fields = match split(line, delimiter) {
            Ok(f) => f,
            Err(e) => {
                sink.reject(index, format!("invalid CSV: {e}"), line);
                return Ok(());
            }
        };
        let Some(cols) = &resolved else {
            // The first non-comment line is the header.
            let r = match &mapping {
                Some(m) => m.resolve(&fields).map_err(FeedError::Csv)?,
                None => header_of(None, &fields).ok_or_else(|| {
                    FeedError::Csv(format!(
                        "cannot tell which column holds the address (columns: {}); give a mapping",
                        fields.join(", ")
                    ))
                })?,
            };
            resolved = Some(r);
            return Ok(());
        };
        rows += 1;
        row(sink, index, line, &fields, cols)
    })?;
    if let Some((index, n, text)) = trailer
        && n != rows
    {
        sink.reject(
            index,
            format!("trailer says {n} entries but {rows} rows were read"),
            &text,
        );
    }
    Ok(sink.finish())
}

/// If `fields` is a header for `mapping` (or, without one, a recognisable
/// header), its resolution.
fn header_of(mapping: Option<&CsvMapping>, fields: &[String]) -> Option<Resolved> {
    match mapping {
        Some(m) => m.resolve(fields).ok(),
        None => CsvMapping::guess(fields).and_then(|m| m.resolve(fields).ok()),
    }
}

/// `END 28 entries` -> 28.
fn trailer_count(comment: &str) -> Option<usize> {
    let words: Vec<&str> = comment.split_whitespace().collect();
    match words.as_slice() {
        [end, n, entries]
            if end.eq_ignore_ascii_case("end") && entries.eq_ignore_ascii_case("entries") =>
        {
            n.parse().ok()
        }
        _ => None,
    }
}

fn split(line: &str, delimiter: u8) -> Result<Vec<String>, String> {
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .trim(Trim::All)
        .from_reader(line.as_bytes());
    let mut record = StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => Ok(record.iter().map(str::to_string).collect()),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

fn row(
    sink: &mut Sink,
    index: usize,
    line: &str,
    fields: &[String],
    cols: &Resolved,
) -> Result<(), FeedError> {
    let cell = |i: Option<usize>| {
        i.and_then(|i| fields.get(i))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(missing) = cols.mapped().find(|&i| i >= fields.len()) {
        sink.reject(
            index,
            format!(
                "row has {} fields, column {} is missing",
                fields.len(),
                cols.label(missing)
            ),
            line,
        );
        return Ok(());
    }
    let ip = &fields[cols.ip];
    let action = sink.opts.action;
    let build = || -> Result<Vec<FeedEntry>, String> {
        let net = parse_net(ip).map_err(|e| e.to_string())?;
        let port = cell(cols.port)
            .map(parse_port)
            .transpose()
            .map_err(|e| e.to_string())?;
        let protos: Vec<Proto> = match cols.proto {
            Some(ResolvedProto::Fixed(p)) => vec![p],
            Some(ResolvedProto::Column(i)) => match cell(Some(i)) {
                Some(p) => vec![parse_proto(p).map_err(|e| e.to_string())?],
                None if port.is_some() => {
                    return Err(format!("empty protocol column {}", cols.label(i)));
                }
                None => vec![],
            },
            None => vec![Proto::Tcp, Proto::Udp],
        };
        let confidence = cell(cols.confidence).map(parse_confidence).transpose()?;
        let valid_from = cell(cols.valid_from).map(parse_time).transpose()?;
        let expires = cell(cols.expires).map(parse_time).transpose()?;
        let ports: Vec<Option<PortMatch>> = match port {
            None => vec![None],
            Some(port) => protos
                .iter()
                .map(|&proto| {
                    Some(PortMatch {
                        proto,
                        port,
                        side: cols.side,
                    })
                })
                .collect(),
        };
        Ok(ports
            .into_iter()
            .map(|pm| FeedEntry {
                entry: Entry::new(net, pm, action),
                indicator: cell(cols.indicator).map(str::to_string),
                confidence,
                valid_from,
                expires,
                description: cell(cols.description).map(str::to_string),
            })
            .collect())
    };
    match build() {
        Ok(entries) => {
            if let Some(e) = entries.first().filter(|e| sink.expired(e.expires)) {
                let reason = format!(
                    "expired {}",
                    e.expires.map(super::fmt_time).unwrap_or_default()
                );
                sink.ignore(index, IgnoreKind::Expired, reason, line);
                return Ok(());
            }
            for e in entries {
                sink.push(index, e)?;
            }
        }
        Err(reason) => sink.reject(index, reason, line),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn run(text: &str, mapping: Option<CsvMapping>) -> Result<FeedParse, FeedError> {
        let opts = FeedOptions {
            csv: mapping,
            now: Some(datetime!(2025-01-01 0:00 UTC)),
            ..FeedOptions::default()
        };
        parse(text.as_bytes(), &opts)
    }

    const FEODO: &str = "\
################################################################
# abuse.ch Feodo Tracker Botnet C2 IP Blocklist (CSV)          #
################################################################
#
\"first_seen_utc\",\"dst_ip\",\"dst_port\",\"c2_status\",\"last_online\",\"malware\"
\"2023-05-23 17:51:44\",\"192.9.135.73\",\"1194\",\"online\",\"2024-04-01\",\"Pikabot\"
\"2024-02-08 19:20:49\",\"85.239.243.155\",\"5000\",\"offline\",\"2024-03-11\",\"Pikabot\"
# END 2 entries
";

    #[test]
    fn feodo_plain_header() {
        let p = run(FEODO, None).unwrap();
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        assert_eq!(p.entries.len(), 2);
        let e = &p.entries[0];
        assert_eq!(e.entry.to_string(), "tcp 192.9.135.73:1194");
        assert_eq!(
            e.entry.port,
            Some(PortMatch {
                proto: Proto::Tcp,
                port: 1194,
                side: Side::Src
            })
        );
        assert_eq!(e.indicator.as_deref(), Some("Pikabot"));
        assert_eq!(e.valid_from, Some(datetime!(2023-05-23 17:51:44 UTC)));
        // Explicit mapping gives the same.
        assert_eq!(run(FEODO, Some(CsvMapping::feodo())).unwrap(), p);
    }

    #[test]
    fn feodo_commented_header_and_trailer_check() {
        let text = "\
# abuse.ch
# \"first_seen_utc\",\"dst_ip\",\"dst_port\",\"c2_status\",\"last_online\",\"malware\"
\"2023-05-23 17:51:44\",\"192.9.135.73\",\"1194\",\"online\",\"2024-04-01\",\"Pikabot\"
\"2023-05-23 17:51:44\",\"192.9.135.74\",\"99999\",\"online\",\"2024-04-01\",\"Pikabot\"
\"2023-05-23 17:51:44\",\"192.9.135.75\"
# END 5 entries
";
        for mapping in [None, Some(CsvMapping::feodo())] {
            let p = run(text, mapping).unwrap();
            assert_eq!(p.entries.len(), 1);
            let r: Vec<_> = p
                .rejected
                .iter()
                .map(|r| (r.index, r.reason.as_str()))
                .collect();
            assert_eq!(
                r,
                [
                    (4, "port 99999 out of range (0-65535)"),
                    (5, "row has 2 fields, column 'dst_port' is missing"),
                    (6, "trailer says 5 entries but 3 rows were read"),
                ]
            );
        }
    }

    #[test]
    fn short_row_is_rejected() {
        let p = run("ip,port\n,\n1.2.3.4,80\n", None).unwrap();
        assert_eq!(p.entries.len(), 2, "tcp and udp");
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].reason, "invalid address ''");
        let p = run("a,b,ip\n1,2\n", None).unwrap();
        assert_eq!(
            p.rejected[0].reason,
            "row has 2 fields, column 'ip' is missing"
        );
    }

    #[test]
    fn generic_guess() {
        let text = "\
ip,port,protocol,confidence,expires,indicator,description
203.0.113.0/24,443,tcp,90,2026-12-01T00:00:00Z,X-1,\"a, quoted\"
203.0.113.9,,,,,,
2001:db8::1,53,UDP,,,,
203.0.113.7,22,icmp,,,,
203.0.113.8,22,tcp,101,,,
203.0.113.9,22,tcp,,2024-01-01,old,
";
        let p = run(text, None).unwrap();
        let got: Vec<_> = p.entries.iter().map(|e| e.entry.to_string()).collect();
        assert_eq!(
            got,
            [
                "tcp 203.0.113.0/24:443",
                "203.0.113.9",
                "udp [2001:db8::1]:53"
            ]
        );
        let e = &p.entries[0];
        assert_eq!(e.confidence, Some(90));
        assert_eq!(e.expires, Some(datetime!(2026-12-01 0:00 UTC)));
        assert_eq!(e.indicator.as_deref(), Some("X-1"));
        assert_eq!(e.description.as_deref(), Some("a, quoted"));
        let r: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                (5, "unknown protocol 'icmp' (expected `tcp` or `udp`)"),
                (6, "confidence 101 out of range (0-100)"),
            ]
        );
        assert_eq!(p.skipped, 1);
        assert_eq!(p.ignored[0].index, 7);
    }

    #[test]
    fn explicit_mapping_by_index_and_semicolons() {
        let mapping = CsvMapping {
            port_column: Some(Column::Index(1)),
            proto: Some(ProtoSpec::Fixed(Proto::Udp)),
            side: Side::Dst,
            delimiter: b';',
            ..CsvMapping::new(Column::Index(0))
        };
        let p = run(
            "# no header\n198.51.100.1;161\n198.51.100.2;x\n",
            Some(mapping),
        )
        .unwrap();
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].entry.to_string(), "udp 198.51.100.1:161 dst");
        assert_eq!(
            p.rejected[0].reason,
            "invalid port 'x' (expected a number 0-65535)"
        );
    }

    #[test]
    fn header_errors_are_fatal() {
        assert_eq!(
            run("foo,bar\n1,2\n", None).unwrap_err(),
            FeedError::Csv(
                "cannot tell which column holds the address (columns: foo, bar); give a mapping"
                    .to_string()
            )
        );
        assert_eq!(
            run("ip,port\n", Some(CsvMapping::feodo()))
                .unwrap_err()
                .to_string(),
            "CSV: header has no column 'dst_ip' (columns: ip, port)"
        );
        // Only comments: an empty feed, not an error.
        assert_eq!(run("# nothing\n", None).unwrap(), FeedParse::default());
    }

    #[test]
    fn port_without_proto_gives_tcp_and_udp() {
        let p = run("address,port\n192.0.2.1,53\n", None).unwrap();
        let got: Vec<_> = p.entries.iter().map(|e| e.entry.to_string()).collect();
        assert_eq!(got, ["tcp 192.0.2.1:53", "udp 192.0.2.1:53"]);
    }
}
