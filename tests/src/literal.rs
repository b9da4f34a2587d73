//! The literals of the tests: addresses and nets from text, paths as text.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

/// `s` as an address; panics naming it.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `s` as a net (a bare address is a /32 or /128), host bits cleared.
pub fn net(s: &str) -> IpNet {
    let n: IpNet = s
        .parse()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    n.trunc()
}

/// `p` as UTF-8 text (for command lines).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
