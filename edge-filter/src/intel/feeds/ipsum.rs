//! IPsum (`https://github.com/stamparm/ipsum`): `ADDR<TAB>count` per line,
//! where count is the number of blocklists the address is on; `#` header.
//!
//! The count goes into the description (IPsum gives no other provenance).
//! Lines with only an address (the `levels/N.txt` files) are accepted too.

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, Sink};
use crate::entry::Entry;
use crate::intel::blocklist::parse_net;

/// Parse an IPsum list.
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    sink.lines(bytes, |sink, index, line| {
        let body = line.split('#').next().unwrap_or_default();
        let words: Vec<&str> = body.split_whitespace().collect();
        let (addr, count) = match words.as_slice() {
            [] => return Ok(()),
            [addr] => (*addr, None),
            [addr, count] => match count.parse::<u32>() {
                Ok(n) => (*addr, Some(n)),
                Err(_) => {
                    sink.reject(index, format!("invalid blocklist count '{count}'"), line);
                    return Ok(());
                }
            },
            [_, _, extra, ..] => {
                sink.reject(
                    index,
                    format!("expected `ADDR<TAB>COUNT`, found '{extra}' after it"),
                    line,
                );
                return Ok(());
            }
        };
        match parse_net(addr) {
            Ok(net) => {
                let mut e = FeedEntry::new(Entry::new(net, None, sink.opts.action));
                e.description = count.map(|n| format!("on {n} blocklists"));
                sink.push(index, e)?;
            }
            Err(err) => sink.reject(index, err, line),
        }
        Ok(())
    })?;
    Ok(sink.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let text = "# IPsum\n#\n# IP\tnumber of (black)lists\n31.220.1.233\t10\n1.2.3.4\n1.2.3.5\tx\n1.2.3.6\t1\t2\n1.2.3\t3\n";
        let p = parse(text.as_bytes(), &FeedOptions::default()).unwrap();
        assert_eq!(p.entries.len(), 2);
        assert_eq!(
            p.entries[0].description.as_deref(),
            Some("on 10 blocklists")
        );
        assert_eq!(p.entries[1].description, None);
        let r: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                (6, "invalid blocklist count 'x'"),
                (7, "expected `ADDR<TAB>COUNT`, found '2' after it"),
                (8, "invalid address '1.2.3'"),
            ]
        );
    }
}
