//! What is (or should be) enforced, together with why: [`Knowledge`] is
//! the entry set plus, per entry key, every [`Assertion`] behind it (feed,
//! indicator, confidence, expiry, description; or the blocklist file and
//! line), and per allowlisted net its sources (`inline` or feed names). It
//! is built from a merged [`DesiredState`] (`--config`), from blocklist and
//! allowlist files (`--blocklist`), or from what the kernel maps hold (no
//! provenance).
//!
//! The provenance `explain` answers with, `top`, `events` and `status` name
//! the feeds of an entry by, and the metrics endpoint counts per-feed hits
//! with ([`crate::ops::hits`] joins it with the kernel's counters).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Serialize;
use time::OffsetDateTime;

use crate::entry::{Action, Entry, EntryKey, EntrySet};
use crate::intel::blocklist::{parse_allowlist, parse_blocklist};
use crate::intel::config::Config;
use crate::intel::desired::{DesiredState, FeedSnapshot, merge};
use crate::intel::state::{StateDir, StateError};
use crate::ops::status::Status;

/// One source's assertion of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assertion {
    /// The feed (config mode).
    pub feed: Option<String>,
    /// `FILE:LINE` (blocklist mode).
    pub location: Option<String>,
    /// The feed's identifier for it.
    pub indicator: Option<String>,
    /// The action this source asks for (after the feed's confidence threshold).
    pub action: Action,
    /// Confidence 0-100, when the source says.
    pub confidence: Option<u8>,
    /// When this assertion lapses (`None`: never).
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires: Option<OffsetDateTime>,
    /// Free text.
    pub description: Option<String>,
}

impl Assertion {
    /// `feed soc (indicator SOC-20)`, `blocklist.txt:3`.
    pub fn describe(&self) -> String {
        let mut s = match (&self.feed, &self.location) {
            (Some(f), _) => format!("feed {f}"),
            (None, Some(l)) => l.clone(),
            (None, None) => "unknown source".to_string(),
        };
        if let Some(i) = &self.indicator {
            s.push_str(&format!(" (indicator {i})"));
        }
        s
    }
}

/// What is enforced and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Knowledge {
    /// The allowlist (normalised, sorted, unique) and one entry per key with
    /// its strongest action (sorted by key).
    pub set: EntrySet,
    /// Assertions behind each key (empty for kernel contents).
    pub provenance: BTreeMap<EntryKey, Vec<Assertion>>,
    /// Sources of each allowlisted net: `inline`, feed names or `FILE:LINE`.
    pub allow_sources: BTreeMap<IpNet, Vec<String>>,
}

impl Knowledge {
    /// From entries and allowlist nets: duplicate keys merge (drop beats
    /// monitor), nets are normalised.
    fn build(
        entries: impl IntoIterator<Item = Entry>,
        allow: impl IntoIterator<Item = IpNet>,
    ) -> EntrySet {
        let mut merged: BTreeMap<EntryKey, Action> = BTreeMap::new();
        for e in entries {
            let e = Entry::new(e.net, e.port, e.action);
            let a = merged.entry(e.key()).or_insert(e.action);
            *a = (*a).max(e.action);
        }
        let allow: BTreeSet<IpNet> = allow.into_iter().map(|n| n.trunc()).collect();
        EntrySet {
            allow: allow.into_iter().collect(),
            entries: merged
                .into_iter()
                .map(|(k, action)| Entry {
                    net: k.net,
                    port: k.port,
                    action,
                })
                .collect(),
        }
    }

    /// From the agent's merged desired state (`intel::desired::merge`), with every
    /// feed's provenance.
    pub fn from_desired(d: &DesiredState) -> Self {
        let provenance = d
            .provenances()
            .map(|(k, provs)| {
                let v = provs
                    .iter()
                    .map(|p| Assertion {
                        feed: Some(p.feed.clone()),
                        location: None,
                        indicator: p.indicator.clone(),
                        action: p.action,
                        confidence: p.confidence,
                        expires: p.expires,
                        description: p.description.clone(),
                    })
                    .collect();
                (k, v)
            })
            .collect();
        Knowledge {
            set: Self::build(d.set.entries.iter().copied(), d.set.allow.iter().copied()),
            provenance,
            allow_sources: d.allow_sources.clone(),
        }
    }

    /// Merge the last-known-good copies of every configured feed with the
    /// config, as the agent does. A feed's TTL counts from its last successful
    /// fetch: the later of the copy's fetch time and `last_success` in the
    /// agent's status (a "not modified" refresh re-asserts the copy).
    pub fn from_config(cfg: &Config, notes: &mut Vec<String>) -> Result<Knowledge, StateError> {
        let mut snapshots = Vec::new();
        if cfg.state_dir.is_dir() {
            let status = Status::read(&cfg.state_dir).ok();
            let last_success: BTreeMap<String, OffsetDateTime> = status
                .iter()
                .flat_map(|s| &s.feeds)
                .filter_map(|h| Some((h.name.clone(), h.last_success?)))
                .collect();
            let state = StateDir::open(&cfg.state_dir)?;
            let mut lkgs = state.load_all_lkg()?;
            for f in &cfg.feeds {
                match lkgs.remove(&f.name) {
                    Some(Ok(lkg)) => {
                        let asserted_at = last_success
                            .get(&f.name)
                            .map_or(lkg.fetched_at, |t| (*t).max(lkg.fetched_at));
                        snapshots.push(FeedSnapshot {
                            feed: f.name.clone(),
                            entries: lkg.entries,
                            asserted_at,
                        });
                    }
                    Some(Err(e)) => notes.push(format!(
                        "feed {}: last-known-good copy unreadable ({e}); its entries are left out",
                        f.name
                    )),
                    None => notes.push(format!(
                        "feed {}: no last-known-good copy yet (never fetched successfully); it contributes nothing",
                        f.name
                    )),
                }
            }
        } else {
            notes.push(format!(
                "state_dir {} does not exist: no feed has been fetched yet; only the inline allowlist applies",
                cfg.state_dir.display()
            ));
        }
        let desired = merge(cfg, &snapshots, OffsetDateTime::now_utc());
        Ok(Knowledge::from_desired(&desired))
    }

    /// From blocklist and allowlist texts, each entry's provenance being
    /// `NAME:LINE`. Lines are parsed one by one with the agent's own parsers
    /// (comments, byte-order mark, `monitor`), so the set equals what `run
    /// --blocklist` enforces; bad lines are skipped (as the agent does).
    pub fn from_files(blocklist: (&str, &str), allowlist: Option<(&str, &str)>) -> Self {
        let mut entries = Vec::new();
        let mut provenance: BTreeMap<EntryKey, Vec<Assertion>> = BTreeMap::new();
        let (name, text) = blocklist;
        for (i, line) in text.lines().enumerate() {
            for e in parse_blocklist(name, line).entries {
                let e = Entry::new(e.net, e.port, e.action);
                entries.push(e);
                provenance.entry(e.key()).or_default().push(Assertion {
                    feed: None,
                    location: Some(format!("{name}:{}", i + 1)),
                    indicator: None,
                    action: e.action,
                    confidence: None,
                    expires: None,
                    description: None,
                });
            }
        }
        let mut allow_sources: BTreeMap<IpNet, Vec<String>> = BTreeMap::new();
        if let Some((name, text)) = allowlist {
            for (i, line) in text.lines().enumerate() {
                for net in parse_allowlist(name, line).nets {
                    allow_sources
                        .entry(net.trunc())
                        .or_default()
                        .push(format!("{name}:{}", i + 1));
                }
            }
        }
        Knowledge {
            set: Self::build(entries, allow_sources.keys().copied()),
            provenance,
            allow_sources,
        }
    }

    /// From what the kernel maps hold (`Desired::to_entry_set`): no provenance.
    pub fn from_entry_set(set: &EntrySet) -> Self {
        Knowledge {
            set: Self::build(set.entries.iter().copied(), set.allow.iter().copied()),
            provenance: BTreeMap::new(),
            allow_sources: BTreeMap::new(),
        }
    }
}

/// `tcp 192.0.2.1:443`, `198.51.100.0/24`, `udp [2001:db8::1]:53 dst`.
/// An entry key in blocklist syntax (without the action).
pub fn key_text(k: &EntryKey) -> String {
    Entry {
        net: k.net,
        port: k.port,
        action: Action::Drop,
    }
    .to_string()
}

/// Why [`Knowledge::from_sources`] could not learn the provenance.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    /// The state directory of the config could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// The blocklist file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl Knowledge {
    /// What the entries' provenance is known from, for `explain`, `top`
    /// and `events`: `config`'s feeds (as [`Knowledge::from_config`]; notes
    /// on feeds it could not read go to `notes`), else a `blocklist` file
    /// with an optional `allowlist` file (as [`Knowledge::from_files`]),
    /// else nothing (entries are then shown by key only).
    pub fn from_sources(
        config: Option<&Config>,
        blocklist: Option<&Path>,
        allowlist: Option<&Path>,
        notes: &mut Vec<String>,
    ) -> Result<Option<Knowledge>, KnowledgeError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| KnowledgeError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok(match (config, blocklist) {
            (Some(c), _) => Some(Knowledge::from_config(c, notes)?),
            (None, Some(bl)) => {
                let bl_text = read(bl)?;
                let al_text = allowlist.map(read).transpose()?;
                let al_name = allowlist.map(|p| p.display().to_string());
                Some(Knowledge::from_files(
                    (&bl.display().to_string(), &bl_text),
                    al_name.as_deref().zip(al_text.as_deref()),
                ))
            }
            (None, None) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_config_first_then_blocklist_then_none() {
        let dir = std::env::temp_dir().join(format!("ef-knowledge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bl = dir.join("bl.txt");
        std::fs::write(&bl, "192.0.2.1\n").unwrap();
        let mut notes = Vec::new();
        let k = Knowledge::from_sources(None, Some(&bl), None, &mut notes)
            .unwrap()
            .unwrap();
        let key = k.set.entries[0].key();
        assert_eq!(key_text(&key), "192.0.2.1");
        assert_eq!(
            k.provenance[&key][0].location.as_deref(),
            Some(format!("{}:1", bl.display()).as_str())
        );
        let cfg = Config::from_str_named(
            &format!(
                "state_dir = \"{}\"\n[[interface]]\nname = \"eth0\"\n",
                dir.join("no-state").display()
            ),
            "t",
        )
        .unwrap();
        let k = Knowledge::from_sources(Some(&cfg), Some(&bl), None, &mut notes)
            .unwrap()
            .unwrap();
        assert!(k.set.entries.is_empty(), "the config wins: {:?}", k.set);
        assert!(notes[0].contains("does not exist"), "{notes:?}");
        assert!(
            Knowledge::from_sources(None, None, None, &mut notes)
                .unwrap()
                .is_none()
        );
        let e = Knowledge::from_sources(None, Some(&dir.join("missing")), None, &mut notes)
            .unwrap_err();
        assert!(e.to_string().starts_with("reading "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
