//! Process and formatting helpers shared by the subcommands.
use std::{
    env,
    ffi::OsString,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// A `cargo` command of the toolchain that runs this xtask (cargo sets `CARGO`
/// for `cargo run`), started in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo` of the nightly toolchain (`rustup run nightly cargo`), started in
/// the workspace root. `+nightly` would not work with the absolute `CARGO`
/// path, which bypasses the rustup proxy.
pub fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .current_dir(workspace_root());
    cmd
}

/// The command line as a shell user would type it (environment assignments
/// set on the command first).
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    // `CARGO` is an absolute path into the toolchain; show it as typed.
    let program = Path::new(cmd.get_program());
    if program.file_name().is_some_and(|n| n == "cargo") {
        parts.push("cargo".to_string());
    } else {
        parts.push(program.to_string_lossy().into_owned());
    }
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// What a finished captured command produced.
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    /// The last `n` lines of stderr (or of stdout when stderr is empty), for
    /// error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The first line of stderr that starts with `error`, or the last line.
    pub fn error_line(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        text.lines()
            .find(|l| l.trim_start().starts_with("error"))
            .or_else(|| text.trim_end().lines().last())
            .unwrap_or("no output")
            .trim()
            .to_string()
    }
}

/// Runs `cmd` with stdout and stderr captured. Fails only when the command
/// cannot be started or, with `timeout`, runs longer (it is then killed).
pub fn capture(cmd: &mut Command, timeout: Option<Duration>) -> Result<Captured> {
    let shown = display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if timeout.is_some_and(|t| start.elapsed() > t) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{shown}` did not finish within {}; stopped it",
                human(start.elapsed())
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Captured {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `cmd` captured and returns its stdout; a non-zero exit is an error
/// carrying the end of its output.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let captured = capture(cmd, None)?;
    if !captured.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}",
            captured.status,
            captured.tail(20)
        );
    }
    Ok(captured.stdout)
}

/// Runs `cmd` with the terminal's stdio after printing it; a non-zero exit is
/// an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Whether this process runs as root (needed for apt-get, network namespaces
/// and attaching XDP programs).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `0.4 s`, `58 s`, `3 min 12 s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else {
        let whole = d.as_secs();
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

/// The first file called `name` in a folder of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = env::var_os("PATH")?;
    env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The current user's home folder.
pub fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(420)), "0.4 s");
        assert_eq!(human(Duration::from_secs(58)), "58 s");
        assert_eq!(human(Duration::from_secs(192)), "3 min 12 s");
    }

    #[test]
    fn capture_times_out() {
        let err = capture(
            Command::new("sleep").arg("5"),
            Some(Duration::from_millis(100)),
        )
        .err()
        .expect("sleep 5 must time out");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn capture_reports_error_line() {
        let c = capture(
            Command::new("sh").args(["-c", "echo info >&2; echo 'error: boom' >&2; exit 3"]),
            None,
        )
        .unwrap();
        assert_eq!(c.status.code(), Some(3));
        assert_eq!(c.error_line(), "error: boom");
    }
}
