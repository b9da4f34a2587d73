//! A config agent's configuration file for a [`Lab`]: the receiver's veth
//! ([`RECEIVER_IF`]), the lab's pin root (so the lab's cleanup detaches
//! what the agent attaches), a state directory, and what each test adds.

use std::path::{Path, PathBuf};

use crate::netns::{Lab, RECEIVER_IF};

/// The TOML text, built up.
pub struct AgentConfig {
    /// Top-level settings (before any table).
    top: String,
    /// Tables, in order.
    tables: String,
}

/// `p` as a TOML literal string.
fn literal(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(!s.contains('\''), "path with a quote: {s}");
    format!("'{s}'")
}

impl AgentConfig {
    /// State in `state_dir`, pins under the lab's root, one interface:
    /// [`RECEIVER_IF`].
    pub fn new(lab: &Lab, state_dir: &Path) -> AgentConfig {
        AgentConfig {
            top: format!(
                "state_dir = {}\nbpffs = {}\n",
                literal(state_dir),
                literal(&lab.bpffs)
            ),
            tables: format!("\n[[interface]]\nname = \"{RECEIVER_IF}\"\n"),
        }
    }

    /// The provenance tests' config (`top`, `status`, `explain` with
    /// feeds): a JSON Lines feed `soc` and a plain list `droplist`, both
    /// re-read every second, reconciled every 2 s, state in the lab.
    pub fn soc_and_droplist(lab: &Lab, soc: &Path, droplist: &Path) -> AgentConfig {
        AgentConfig::new(lab, &lab.dir.join("state"))
            .set("reconcile_interval = \"2s\"")
            .file_feed("soc", soc, "jsonl", "1s")
            .file_feed("droplist", droplist, "plain", "1s")
    }

    /// A top-level setting (`reconcile_interval = "2s"`).
    pub fn set(mut self, setting: &str) -> Self {
        self.top.push_str(setting);
        self.top.push('\n');
        self
    }

    /// Tables, verbatim (`[metrics]\nlisten = "off"`).
    pub fn table(mut self, toml: &str) -> Self {
        self.tables.push('\n');
        self.tables.push_str(toml);
        self.tables.push('\n');
        self
    }

    /// A `[[feed]]` from `source` (`file:...` or a URL) in `format`,
    /// refreshed every `refresh`.
    pub fn feed(self, name: &str, source: &str, format: &str, refresh: &str) -> Self {
        self.table(&format!(
            "[[feed]]\nname = \"{name}\"\nsource = \"{source}\"\nformat = \"{format}\"\nrefresh = \"{refresh}\""
        ))
    }

    /// A `[[feed]]` read from the file `path`.
    pub fn file_feed(self, name: &str, path: &Path, format: &str, refresh: &str) -> Self {
        self.feed(name, &format!("file:{}", path.display()), format, refresh)
    }

    /// A line of the last table (`action = "monitor"` for the last feed).
    pub fn line(mut self, line: &str) -> Self {
        self.tables.push_str(line);
        self.tables.push('\n');
        self
    }

    /// The text.
    pub fn text(&self) -> String {
        format!("{}{}", self.top, self.tables)
    }

    /// Write it into the lab's directory as `edge-filter.toml`.
    pub fn write(self, lab: &Lab) -> PathBuf {
        lab.write_file("edge-filter.toml", &self.text())
    }
}
