//! Waiting for what an agent does: poll a condition until it holds or a
//! bound passes.

use std::time::{Duration, Instant};

use crate::netns::Agent;

/// Poll `f` every 50 ms for at most `bound`: its first `Some`, else `None`.
pub fn within<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > bound {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll `f` every 50 ms until it returns `Some`; panics naming `what` with
/// the last lines of `agent`'s output when that takes longer than `bound`
/// or when the agent exits first.
pub fn poll<T>(what: &str, bound: Duration, agent: &Agent, f: impl FnMut() -> Option<T>) -> T {
    poll_with(what, bound, agent, String::new, f).0
}

/// [`poll`], returning how long it took too; a failure message also carries
/// `context()` (the status file, what the kernel enforces: whatever the
/// caller needs to see why the condition never held).
pub fn poll_with<T>(
    what: &str,
    bound: Duration,
    agent: &Agent,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t0.elapsed());
        }
        assert!(
            agent.is_running(),
            "{what}: the agent exited\n{}",
            agent.tail(40)
        );
        assert!(
            t0.elapsed() < bound,
            "{what}: not within {bound:?}\n{}{}",
            context(),
            agent.tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
