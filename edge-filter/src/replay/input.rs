//! The entry sets `edge-filter replay` replays under, with the feeds each
//! entry came from: a blocklist file (with an allowlist file), an agent
//! config whose feeds are read or fetched once and merged exactly as the
//! agent merges them, or feed files taken as a config of their own.

use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{AllowProvenance, EntryInput};
use crate::entry::EntryKey;
use crate::intel::blocklist::load_files;
use crate::intel::config::{Config, ConfigError, FeedConfig, Source};
use crate::intel::intake::{self, IntakeError};

/// Why an entry input could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A blocklist or allowlist file could not be read.
    #[error(transparent)]
    Files(#[from] crate::error::Error),
    /// The config (given, or made of `--feed` files) is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A feed of the config could not be read, fetched or parsed.
    #[error(transparent)]
    Feeds(#[from] IntakeError),
    /// A `--feed` file does not exist.
    #[error("{}: {error}", path.display())]
    FeedFile {
        /// The file as given.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// A blocklist (plus the allowlist) as an entry input: every entry's feed
/// is the blocklist's file name, every allowlist net's the allowlist's.
/// Bad lines are logged (the rest applies, as the agent does).
pub fn blocklist(
    blocklist: &Path,
    allowlist: Option<&Path>,
) -> Result<EntryInput<'static>, InputError> {
    let loaded = load_files(blocklist, allowlist)?;
    for e in &loaded.errors {
        log::warn!("{e}");
    }
    let feed = file_name(blocklist);
    let allow_feed = allowlist.map(file_name);
    Ok(EntryInput {
        label: format!("blocklist {}", blocklist.display()),
        set: loaded.set,
        provenance: Some(Box::new(move |_: &EntryKey| vec![feed.clone()])),
        allow_provenance: allow_feed
            .map(|f| Box::new(move |_: &IpNet| vec![f.clone()]) as Box<AllowProvenance<'static>>),
    })
}

/// Every feed of `cfg` read (file) or fetched once (HTTP), or taken from
/// its last-known-good copy, as `copies` says, and merged as the agent does
/// ([`intake::read_once`]), named `label`.
pub fn config(
    cfg: &Config,
    label: String,
    copies: intake::Copies,
) -> Result<EntryInput<'static>, InputError> {
    let d = intake::read_once(cfg, copies)?;
    let allow = d.allow_sources.clone();
    let set = d.set.clone();
    Ok(EntryInput {
        label,
        set,
        provenance: Some(Box::new(move |k: &EntryKey| {
            d.feeds_of(k).into_iter().map(str::to_string).collect()
        })),
        allow_provenance: Some(Box::new(move |n: &IpNet| {
            allow.get(n).cloned().unwrap_or_default()
        })),
    })
}

/// `--feed FILE...` as a config: one drop feed per file (format detected),
/// named after the file (`NAME_INDEX`, lower case, other characters as
/// `_`), with the allowlist file's nets (if any) inline; its one interface
/// is never attached (replay uses private maps).
pub fn feed_files(feeds: &[PathBuf], allowlist: Option<&Path>) -> Result<Config, InputError> {
    let allow = match allowlist {
        Some(a) => {
            let loaded = load_files(Path::new("/dev/null"), Some(a))?;
            for e in &loaded.errors {
                log::warn!("{e}");
            }
            loaded.set.allow
        }
        None => Vec::new(),
    };
    let mut configs = Vec::new();
    for (i, f) in feeds.iter().enumerate() {
        let abs = std::fs::canonicalize(f).map_err(|error| InputError::FeedFile {
            path: f.clone(),
            error,
        })?;
        let stem: String = file_name(f)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(48)
            .collect();
        configs.push(FeedConfig::new(format!("{stem}_{i}"), Source::File(abs)));
    }
    Ok(Config::new("--feed", &["replay"], allow, configs)?)
}
