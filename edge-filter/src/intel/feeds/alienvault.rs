//! AlienVault (OTX) IP reputation `reputation.data`:
//! `ip#reliability#risk#activity#country#city#lat,lon#activity-ids`.
//!
//! Mapping: confidence = reliability (1-10) x 10; description =
//! `ACTIVITY; risk N; COUNTRY CITY`. No indicator (the feed has no ids).

use super::{FeedEntry, FeedError, FeedOptions, FeedParse, Sink};
use crate::entry::Entry;
use crate::intel::blocklist::parse_net;

/// Parse an AlienVault reputation file.
pub fn parse(bytes: &[u8], opts: &FeedOptions) -> Result<FeedParse, FeedError> {
    let mut sink = Sink::new(bytes, opts)?;
    sink.lines(bytes, |sink, index, line| {
        let line_t = line.trim();
        if line_t.is_empty() {
            return Ok(());
        }
        let f: Vec<&str> = line_t.split('#').map(str::trim).collect();
        if f.len() != 8 {
            let reason = format!(
                "expected 8 '#'-separated fields (ip#reliability#risk#activity#country#city#lat,lon#ids), found {}",
                f.len()
            );
            sink.reject(index, reason, line);
            return Ok(());
        }
        let score = |name: &str, s: &str| match s.parse::<u8>() {
            Ok(n) if (1..=10).contains(&n) => Ok(n),
            _ => Err(format!("invalid {name} '{s}' (expected 1-10)")),
        };
        let parsed = parse_net(f[0]).map_err(|e| e.to_string()).and_then(|net| {
            Ok((net, score("reliability", f[1])?, score("risk", f[2])?))
        });
        match parsed {
            Ok((net, reliability, risk)) => {
                let mut e = FeedEntry::new(Entry::new(net, None, sink.opts.action));
                e.confidence = Some(reliability * 10);
                let place = [f[4], f[5]].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
                let mut description = format!("{}; risk {risk}", f[3]);
                if !place.is_empty() {
                    description.push_str("; ");
                    description.push_str(&place);
                }
                e.description = Some(description);
                sink.push(index, e)?;
            }
            Err(reason) => sink.reject(index, reason, line),
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
        let text = "203.121.165.16#6#5#C&C#TH##15.0,100.0#2\n222.186.31.190#2#2#Scanning Host#CN#Nanjing#32.0,118.7#11\n\
1.2.3.4#0#1#x####\n1.2.3.4#1#2\n1.2.3#1#1#x####\n";
        let p = parse(text.as_bytes(), &FeedOptions::default()).unwrap();
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[0].confidence, Some(60));
        assert_eq!(p.entries[0].description.as_deref(), Some("C&C; risk 5; TH"));
        assert_eq!(
            p.entries[1].description.as_deref(),
            Some("Scanning Host; risk 2; CN Nanjing")
        );
        let r: Vec<_> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                (3, "invalid reliability '0' (expected 1-10)"),
                (
                    4,
                    "expected 8 '#'-separated fields (ip#reliability#risk#activity#country#city#lat,lon#ids), found 3"
                ),
                (5, "invalid address '1.2.3'"),
            ]
        );
    }
}
