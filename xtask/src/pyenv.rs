//! The Python environment the tests use (`~/.cache/edge-filter/venv`):
//! OASIS's STIX pattern validator (the grammar oracle of the STIX pattern
//! parser's tests) and PyMISP (which writes the MISP feed the misp feed
//! tests serve). A venv, so nothing is installed into the system's Python.
//! Idempotent: a venv that imports every module is left alone (offline
//! too); otherwise pip installs the pinned versions from PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{capture, find_on_path, output};

/// `(PyPI name==version, module to import)`.
pub const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("stix2-patterns==2.1.2", "stix2patterns.validator"),
    ("pymisp==2.5.34.4", "pymisp"),
];

/// Where the environment lives (the tests look there, or at
/// `EDGE_FILTER_PYTHON`).
pub fn venv_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("venv")
}

fn imports_all(python: &Path) -> bool {
    let modules: Vec<&str> = PYTHON_PACKAGES.iter().map(|(_, m)| *m).collect();
    let script = format!("import {}", modules.join(", "));
    capture(Command::new(python).args(["-c", &script]), None).is_ok_and(|c| c.status.success())
}

/// Make the environment; `Ok(None)` when it was already complete.
pub fn ensure(cache_root: &Path) -> Result<Option<String>> {
    let dir = venv_dir(cache_root);
    let python = dir.join("bin/python3");
    if python.exists() && imports_all(&python) {
        return Ok(None);
    }
    let system = find_on_path("python3").context(
        "python3 is not installed: install Debian's python3 and python3-venv, then run setup again",
    )?;
    if !python.exists() {
        std::fs::create_dir_all(cache_root)
            .with_context(|| format!("cannot create {}", cache_root.display()))?;
        output(Command::new(&system).args(["-m", "venv"]).arg(&dir)).with_context(|| {
            format!(
                "cannot create the Python environment {} (Debian: apt-get install python3-venv)",
                dir.display()
            )
        })?;
    }
    let specs: Vec<&str> = PYTHON_PACKAGES.iter().map(|(s, _)| *s).collect();
    output(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&specs),
    )
    .with_context(|| {
        format!(
            "pip could not install {} into {} (it needs PyPI, or a pip configuration pointing at a mirror)",
            specs.join(" "),
            dir.display()
        )
    })?;
    if !imports_all(&python) {
        bail!(
            "{} still cannot import every module after pip install",
            python.display()
        );
    }
    Ok(Some(format!(
        "installed {} into {}",
        specs.join(" "),
        dir.display()
    )))
}
