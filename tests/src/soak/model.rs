//! The harness's own model of what the agent must enforce, computed from
//! what each feed currently serves and the documented rules, never from the
//! agent (README "Feeds", docs/semantics.md, examples/edge-filter.toml):
//!
//! - a feed that serves a valid copy (every line an address or prefix)
//!   contributes exactly that copy;
//! - a feed that fails (HTTP 500, a timeout, a deleted file) or serves
//!   garbage (an HTML page, a body where no line parses) keeps its
//!   last-known-good copy enforced;
//! - a close-delimited body cut in the middle of a line contributes its
//!   complete lines only (the cut final line is rejected);
//! - an update that removes more than `max_shrink` of a feed's entries is
//!   held (the previous copy stays) until it has been seen on
//!   `hold_refreshes` refreshes or forced; the step generator resolves a
//!   hold within the step that starts it, so between steps every feed's
//!   contribution is certain;
//! - block feeds' addresses and prefixes are dropped unless an allowlisted
//!   net (inline `[allowlist] entries` or an allow feed) covers the source;
//!   allowlisted entries stay in the kernel's entry maps.
//!
//! Everything is IPv4 in `10.9x.0.0/16`: the traffic sources are
//! `10.99.0.1..=10.99.0.48` on the sender's veth, the receiver is
//! `10.99.255.1`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

/// Traffic sources (addresses on the sender's veth).
pub const SOURCES: usize = 48;
/// Prefix length of the lab's addresses.
pub const LAB_PREFIX: u8 = 16;
/// The receiver's address (the UDP sink listens here).
pub const RECEIVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 255, 1);
/// The UDP sink's port.
pub const SINK_PORT: u16 = 9999;

/// Source `i` (0-based): `10.99.0.(i+1)`.
pub fn source_addr(i: usize) -> Ipv4Addr {
    assert!(i < SOURCES, "source index {i} out of range");
    Ipv4Addr::new(10, 99, 0, (i + 1) as u8)
}

/// The index of a traffic source address, if it is one.
pub fn source_index(a: Ipv4Addr) -> Option<usize> {
    let o = a.octets();
    (o[0] == 10 && o[1] == 99 && o[2] == 0 && (1..=SOURCES as u8).contains(&o[3]))
        .then(|| o[3] as usize - 1)
}

/// A single address as a /32.
pub fn host(a: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(a, 32).expect("/32 is valid")
}

/// How a feed is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// From the harness's HTTP server.
    Http,
    /// A file the harness rewrites (atomically).
    File,
}

/// Whether the feed blocks or allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Its entries are dropped.
    Block,
    /// Its entries join the allowlist.
    Allow,
}

/// One configured feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedSpec {
    /// Name in the config.
    pub name: &'static str,
    /// HTTP or file.
    pub transport: Transport,
    /// Block or allow.
    pub role: Role,
    /// Entries the generator keeps it at (at least; a shrink goes below).
    pub min: usize,
    /// Entries the generator keeps it at (at most).
    pub max: usize,
}

/// The big HTTP feed near the `addr_v4` capacity, rotated whole.
pub const ROT: usize = 0;
/// A small HTTP feed (with an ETag).
pub const ALPHA: usize = 1;
/// A small file feed with a few prefixes.
pub const BETA: usize = 2;
/// An allow feed (file).
pub const FRIENDS: usize = 3;

/// Every feed of the soak's config, indexed by [`ROT`], [`ALPHA`], ….
pub const FEEDS: [FeedSpec; 4] = [
    FeedSpec {
        name: "rot",
        transport: Transport::Http,
        role: Role::Block,
        min: 800,
        max: 840,
    },
    FeedSpec {
        name: "alpha",
        transport: Transport::Http,
        role: Role::Block,
        min: 20,
        max: 40,
    },
    FeedSpec {
        name: "beta",
        transport: Transport::File,
        role: Role::Block,
        min: 20,
        max: 40,
    },
    FeedSpec {
        name: "friends",
        transport: Transport::File,
        role: Role::Allow,
        min: 3,
        max: 5,
    },
];

/// The `addr_v4` capacity of the soak's config: every feed's exact
/// addresses fit (at most 840 + 40 + 40 + 5), a rotation of [`ROT`] that
/// adds its new set before removing the old does not.
pub const ADDR_V4_CAPACITY: u32 = 1024;

/// `[allowlist] entries` of the soak's config.
pub fn inline_allow() -> Vec<Ipv4Net> {
    vec![Ipv4Net::new(Ipv4Addr::new(10, 99, 0, 44), 30).expect("valid")]
}

/// Kinds of garbage a server returns with status 200.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Garbage {
    /// An HTML error page.
    Html,
    /// Lines that are not addresses.
    Junk,
}

/// What a feed's source currently delivers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Serving {
    /// A valid plain list.
    Valid(Vec<Ipv4Net>),
    /// A close-delimited body (HTTP only) that ends inside a line: the
    /// complete lines, then `partial` without a newline (itself a valid
    /// but different address, `10.99.0.17` cut to `10.99.0.1`, and one that
    /// nothing lists).
    Truncated {
        /// Complete lines.
        complete: Vec<Ipv4Net>,
        /// The cut final line.
        partial: String,
    },
    /// Status 200 with a body where no line parses.
    Garbage(Garbage),
    /// HTTP 500.
    Status500,
    /// The server answers after the agent's timeout.
    Timeout,
    /// The file is deleted.
    Missing,
}

impl Serving {
    /// The entries this delivery contributes, or None when it is a failed
    /// fetch (the last-known-good copy stays).
    pub fn entries(&self) -> Option<&[Ipv4Net]> {
        match self {
            Serving::Valid(v) => Some(v),
            Serving::Truncated { complete, .. } => Some(complete),
            _ => None,
        }
    }

    /// Short name for reports.
    pub fn label(&self) -> String {
        match self {
            Serving::Valid(v) => format!("{} entries", v.len()),
            Serving::Truncated { complete, partial } => {
                format!("{} lines + cut line {partial:?}", complete.len())
            }
            Serving::Garbage(g) => format!("garbage ({g:?})"),
            Serving::Status500 => "HTTP 500".into(),
            Serving::Timeout => "timeout".into(),
            Serving::Missing => "file deleted".into(),
        }
    }

    /// The plain-text body of a delivery with a body (the HTTP body or the
    /// file's content); None for 500, timeout and a missing file.
    pub fn body(&self, feed: &str) -> Option<Vec<u8>> {
        let list = |v: &[Ipv4Net]| {
            let mut t = format!("# edge-filter soak feed {feed}\n");
            for n in v {
                if n.prefix_len() == 32 {
                    t.push_str(&format!("{}\n", n.addr()));
                } else {
                    t.push_str(&format!("{n}\n"));
                }
            }
            t
        };
        match self {
            Serving::Valid(v) => Some(list(v).into_bytes()),
            Serving::Truncated { complete, partial } => {
                Some(format!("{}{partial}", list(complete)).into_bytes())
            }
            Serving::Garbage(Garbage::Html) => Some(
                "<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n\
                 <body>\n<h1>Bad Gateway</h1>\n<p>The proxy could not reach the feed.</p>\n\
                 </body>\n</html>\n"
                    .as_bytes()
                    .to_vec(),
            ),
            Serving::Garbage(Garbage::Junk) => Some(
                "not an address\n999.1.2.3\n10.99.0\nhello world\n10.99.0.1.5\n::::zz\n"
                    .as_bytes()
                    .to_vec(),
            ),
            Serving::Status500 | Serving::Timeout | Serving::Missing => None,
        }
    }
}

/// The shrink guard's settings in the soak's config.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Safety {
    /// `[safety] max_shrink`.
    pub max_shrink: f64,
    /// `[safety] hold_refreshes`.
    pub hold_refreshes: u32,
}

/// The soak's safety settings.
pub const SAFETY: Safety = Safety {
    max_shrink: 0.5,
    hold_refreshes: 3,
};

/// One feed's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedState {
    /// What the source delivers now.
    pub serving: Serving,
    /// The copy that must be enforced (the last one applied).
    pub lkg: Vec<Ipv4Net>,
}

/// Every feed's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Model {
    /// By index ([`ROT`], [`ALPHA`], …).
    pub feeds: Vec<FeedState>,
}

/// What the kernel must hold, and what each source's packets must get.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// Drop entries (addresses and prefixes of every block feed).
    pub block: BTreeSet<Ipv4Net>,
    /// Allowlisted nets (inline and allow feeds).
    pub allow: BTreeSet<Ipv4Net>,
}

impl Expected {
    /// Whether a packet from `src` must be dropped: a block entry covers
    /// it and no allowlisted net does.
    pub fn drops(&self, src: Ipv4Addr) -> bool {
        self.block.iter().any(|n| n.contains(&src)) && !self.allow.iter().any(|n| n.contains(&src))
    }

    /// The verdict of every traffic source (`true`: dropped).
    pub fn source_verdicts(&self) -> Vec<bool> {
        (0..SOURCES).map(|i| self.drops(source_addr(i))).collect()
    }
}

impl Model {
    /// Every feed serving `initial[i]`, applied.
    pub fn new(initial: Vec<Vec<Ipv4Net>>) -> Model {
        Model {
            feeds: initial
                .into_iter()
                .map(|v| FeedState {
                    serving: Serving::Valid(v.clone()),
                    lkg: v,
                })
                .collect(),
        }
    }

    /// What must be enforced now.
    pub fn expected(&self) -> Expected {
        let mut e = Expected {
            block: BTreeSet::new(),
            allow: inline_allow().into_iter().collect(),
        };
        for (spec, f) in FEEDS.iter().zip(&self.feeds) {
            let into = match spec.role {
                Role::Block => &mut e.block,
                Role::Allow => &mut e.allow,
            };
            into.extend(f.lkg.iter().map(|n| n.trunc()));
        }
        e
    }

    /// Whether the shrink guard holds an update of `feed` to `new_len`
    /// entries (the guard compares entry counts).
    pub fn would_hold(&self, feed: usize, new_len: usize) -> bool {
        let prev = self.feeds[feed].lkg.len();
        prev > 0 && new_len < prev && (prev - new_len) as f64 / prev as f64 > SAFETY.max_shrink
    }

    /// `feed` now delivers `serving`: a valid delivery becomes the enforced
    /// copy, a failed one keeps the last-known-good copy. Panics when a
    /// valid delivery would be held (the generator resolves holds with
    /// [`Model::apply_held`]).
    pub fn serve(&mut self, feed: usize, serving: Serving) {
        if let Some(entries) = serving.entries() {
            assert!(
                !self.would_hold(feed, entries.len()),
                "serve() of a shrink the guard holds; use apply_held"
            );
            self.feeds[feed].lkg = entries.to_vec();
        }
        self.feeds[feed].serving = serving;
    }

    /// `feed` delivers a held shrink to `entries`, which is then applied
    /// (after `hold_refreshes` sightings or a force).
    pub fn apply_held(&mut self, feed: usize, entries: Vec<Ipv4Net>) {
        self.feeds[feed].lkg = entries.clone();
        self.feeds[feed].serving = Serving::Valid(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn failed_deliveries_keep_the_last_known_good_copy() {
        let mut m = Model::new(vec![
            vec![n("10.96.0.1/32")],
            vec![n("10.99.0.1/32")],
            vec![n("10.99.0.32/29")],
            vec![n("10.99.0.36/32")],
        ]);
        let before = m.expected();
        for s in [
            Serving::Garbage(Garbage::Html),
            Serving::Status500,
            Serving::Timeout,
        ] {
            m.serve(ALPHA, s);
            assert_eq!(m.expected(), before);
        }
        m.serve(
            ALPHA,
            Serving::Truncated {
                complete: vec![n("10.99.0.2/32")],
                partial: "10.99.0.1".into(),
            },
        );
        let e = m.expected();
        assert!(e.block.contains(&n("10.99.0.2/32")));
        assert!(!e.block.contains(&n("10.99.0.1/32")));
        // Prefix from beta drops .33, the allow feed passes .36, inline .45.
        assert!(e.drops(source_addr(32)));
        assert!(!e.drops(source_addr(35)));
        assert!(!e.drops(source_addr(44)));
        assert!(!e.drops(source_addr(10)));
    }

    #[test]
    fn shrink_guard_arithmetic() {
        let m = Model::new(vec![
            vec![],
            (0..10).map(|i| host(source_addr(i))).collect(),
            vec![],
            vec![],
        ]);
        assert!(!m.would_hold(ALPHA, 5), "exactly max_shrink is applied");
        assert!(m.would_hold(ALPHA, 4));
        assert!(!m.would_hold(ALPHA, 11));
        assert!(!m.would_hold(ROT, 0), "nothing before: nothing to hold");
    }

    #[test]
    fn bodies_end_as_described() {
        let s = Serving::Truncated {
            complete: vec![n("10.99.0.2/32"), n("10.97.1.0/24")],
            partial: "10.99.0.1".into(),
        };
        let body = String::from_utf8(s.body("alpha").unwrap()).unwrap();
        assert!(
            body.ends_with("10.99.0.2\n10.97.1.0/24\n10.99.0.1"),
            "{body}"
        );
        assert!(Serving::Status500.body("alpha").is_none());
    }
}
