//! Scraping an agent's Prometheus endpoint from inside a test namespace.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use crate::netns::Netns;

/// `GET path` over HTTP/1.1 to `127.0.0.1:port` inside `ns`: the status
/// line, the headers (lowercased) and the body.
pub fn get(ns: &Netns, port: u16, path: &str) -> (String, String, String) {
    ns.enter(|| {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to the metrics endpoint 127.0.0.1:{port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read the response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head and body");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_string(), headers.to_lowercase(), body.to_string())
    })
}

/// The samples of an exposition: `name{labels}` → value.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                k.to_string(),
                v.parse()
                    .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}")),
            )
        })
        .collect()
}

/// The sample `key`, or a panic showing the whole scrape.
pub fn value(s: &BTreeMap<String, f64>, key: &str, body: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in the scrape:\n{body}"))
}

/// Scrape `/metrics` on `127.0.0.1:port` in `ns`: the samples and the body.
pub fn metrics(ns: &Netns, port: u16) -> (BTreeMap<String, f64>, String) {
    let (_, _, body) = get(ns, port, "/metrics");
    (samples(&body), body)
}
