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
/// the last lines of `agent`'s output when that takes longer than `bound`.
pub fn poll<T>(what: &str, bound: Duration, agent: &Agent, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < bound,
            "{what}: not within {bound:?}\n{}",
            agent.tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
