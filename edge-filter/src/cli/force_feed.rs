//! `edge-filter force-feed`.

use std::path::PathBuf;

use clap::Args;
use edge_filter::intel::{config::Config, state::StateDir};
use edge_filter::ops::status::STATUS_FILE;

/// Apply a feed update that the shrink guard is holding.
///
/// An update that would remove more than `[safety] max_shrink` of a feed's
/// entries is held (a truncated download looks exactly like that) until it
/// persists for `hold_refreshes` refreshes. If the shrink is real, force it:
/// this marks the feed in the state directory and asks the running agent
/// (SIGHUP) to refetch now; the next copy it gets is applied whatever its size.
#[derive(Debug, Args)]
pub struct ForceFeedArgs {
    /// Feed name, as in the config.
    pub feed: String,
    /// The agent's config file (for the state directory).
    #[arg(long, short)]
    pub config: PathBuf,
}

#[derive(serde::Deserialize)]
struct Pid {
    pid: u32,
}

pub fn run(a: ForceFeedArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&a.config)?;
    if cfg.feed(&a.feed).is_none() {
        anyhow::bail!("{}: no feed named {:?}", a.config.display(), a.feed);
    }
    let state = StateDir::open(&cfg.state_dir)?;
    state.request_force(&a.feed)?;
    match state.load_json::<Pid>(STATUS_FILE) {
        // SAFETY: kill with signal 0 / SIGHUP has no memory preconditions.
        Ok(Some(Pid { pid })) if unsafe { libc::kill(pid as i32, 0) } == 0 => {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            println!(
                "feed {} will be applied as fetched: asked the agent (pid {pid}) to refetch now",
                a.feed
            );
        }
        _ => println!(
            "feed {} will be applied as fetched on its next refresh (no running agent found)",
            a.feed
        ),
    }
    Ok(())
}
