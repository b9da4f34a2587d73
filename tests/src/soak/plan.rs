//! The seeded step generator: which fault comes next, with every parameter
//! (feed, new contents, delays) drawn from one RNG seeded by `--seed`, and
//! the [`Model`] updated as each step is generated. Nothing here looks at
//! the running agent, so the same seed and weights always give the same
//! step sequence (the unit test below checks it).

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::model::{
    self, ALPHA, BETA, FEEDS, FRIENDS, Garbage, Model, ROT, Serving, Transport, host, source_addr,
};

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// Add and remove a few entries of one feed (also ends a failure).
    FeedChange,
    /// Replace the big feed near capacity by a same-size different set.
    Rotation,
    /// A shrink beyond `max_shrink`: held, then applied after
    /// `hold_refreshes` refreshes or `force-feed`.
    Shrink,
    /// A 200 whose body is an HTML page or lines that do not parse.
    Garbage,
    /// A close-delimited body cut inside its last line.
    Truncated,
    /// HTTP 500, a reply slower than the timeout, or a deleted file.
    FeedError,
    /// SIGKILL of the agent (sometimes during a rotation), then a restart.
    Kill,
    /// SIGHUP (refetch every feed).
    Hup,
    /// SIGTERM, then a restart.
    Term,
    /// The filtered interface deleted and recreated with the same name.
    Recreate,
    /// A second agent started on the same interface (must be refused).
    SecondAgent,
    /// The state directory's file system full during a feed change.
    DiskFull,
}

impl StepKind {
    /// Every kind, in report order.
    pub const ALL: [StepKind; 12] = [
        StepKind::FeedChange,
        StepKind::Rotation,
        StepKind::Shrink,
        StepKind::Garbage,
        StepKind::Truncated,
        StepKind::FeedError,
        StepKind::Kill,
        StepKind::Hup,
        StepKind::Term,
        StepKind::Recreate,
        StepKind::SecondAgent,
        StepKind::DiskFull,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::FeedChange => "feed-change",
            StepKind::Rotation => "rotation",
            StepKind::Shrink => "shrink",
            StepKind::Garbage => "garbage",
            StepKind::Truncated => "truncated",
            StepKind::FeedError => "feed-error",
            StepKind::Kill => "kill",
            StepKind::Hup => "hup",
            StepKind::Term => "term",
            StepKind::Recreate => "recreate",
            StepKind::SecondAgent => "second-agent",
            StepKind::DiskFull => "disk-full",
        }
    }

    /// Relative weight when none is given.
    pub fn default_weight(self) -> u32 {
        match self {
            StepKind::FeedChange => 20,
            StepKind::Rotation => 8,
            StepKind::Shrink => 5,
            StepKind::Garbage => 6,
            StepKind::Truncated => 5,
            StepKind::FeedError => 8,
            StepKind::Kill => 7,
            StepKind::Hup => 6,
            StepKind::Term => 4,
            StepKind::Recreate => 5,
            StepKind::SecondAgent => 5,
            StepKind::DiskFull => 3,
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StepKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StepKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = StepKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown step kind {s:?} (one of {})", names.join(", "))
            })
    }
}

/// Relative weights of the step kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Weights(pub Vec<(StepKind, u32)>);

impl Default for Weights {
    fn default() -> Self {
        Weights(
            StepKind::ALL
                .iter()
                .map(|k| (*k, k.default_weight()))
                .collect(),
        )
    }
}

impl Weights {
    /// The defaults with `overrides` (`kind=N`; `N = 0` disables a kind).
    pub fn parse(overrides: &[String]) -> Result<Weights, String> {
        let mut w = Weights::default();
        for o in overrides {
            let (k, n) = o
                .split_once('=')
                .ok_or_else(|| format!("--weight {o:?}: want KIND=N"))?;
            let kind: StepKind = k.trim().parse()?;
            let n: u32 = n
                .trim()
                .parse()
                .map_err(|_| format!("--weight {o:?}: {n:?} is not a whole number"))?;
            w.set(kind, n);
        }
        if w.0.iter().all(|(_, n)| *n == 0) {
            return Err("every step kind has weight 0".into());
        }
        Ok(w)
    }

    /// Set one weight.
    pub fn set(&mut self, kind: StepKind, n: u32) {
        for (k, w) in &mut self.0 {
            if *k == kind {
                *w = n;
            }
        }
    }

    /// `kind=N,…` for reports.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How a held shrink is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolve {
    /// `edge-filter force-feed FEED`.
    Force,
    /// Wait for `hold_refreshes` refreshes.
    Wait,
}

/// Which second agent is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Second {
    /// `run --config` with the same config (metrics off).
    Config,
    /// `run --iface … --blocklist EMPTY` on the same pins.
    Blocklist,
}

/// A step with every parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// The feed's source delivers this from now on.
    Serve {
        /// Feed index.
        feed: usize,
        /// What it delivers.
        serving: Serving,
    },
    /// The feed delivers a shrink the guard holds; then it is resolved.
    Shrink {
        /// Feed index.
        feed: usize,
        /// The shrunk copy.
        entries: Vec<Ipv4Net>,
        /// Force or wait.
        resolve: Resolve,
    },
    /// SIGKILL, then restart.
    Kill {
        /// A rotation delivered just before the kill (killed mid-sync).
        during: Option<Vec<Ipv4Net>>,
        /// Milliseconds between the rotation and the kill.
        delay_ms: u64,
    },
    /// SIGHUP.
    Hup,
    /// SIGTERM, then restart.
    Term,
    /// Delete the interface; recreate it after `gap_ms`.
    Recreate {
        /// Milliseconds without the interface.
        gap_ms: u64,
    },
    /// Start a second agent on the interface.
    SecondAgent {
        /// Which.
        variant: Second,
    },
    /// Fill the state directory, change a feed (and maybe restart), check,
    /// free the space.
    DiskFull {
        /// Feed index.
        feed: usize,
        /// Its new copy.
        entries: Vec<Ipv4Net>,
        /// SIGKILL and restart the agent while the disk is full.
        restart: bool,
    },
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// 1-based.
    pub number: usize,
    /// Its kind.
    pub kind: StepKind,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
}

impl Step {
    /// One line for logs and reports.
    pub fn describe(&self) -> String {
        let feed = |i: &usize| FEEDS[*i].name;
        match &self.action {
            Action::Serve { feed: f, serving } => {
                format!("{}: {} serves {}", self.kind, feed(f), serving.label())
            }
            Action::Shrink {
                feed: f,
                entries,
                resolve,
            } => format!(
                "shrink: {} to {} entries, then {resolve:?}",
                feed(f),
                entries.len()
            ),
            Action::Kill { during, delay_ms } => match during {
                Some(r) => format!(
                    "kill: SIGKILL {delay_ms} ms into a rotation to {} entries",
                    r.len()
                ),
                None => "kill: SIGKILL, restart".into(),
            },
            Action::Hup => "hup: SIGHUP".into(),
            Action::Term => "term: SIGTERM, restart".into(),
            Action::Recreate { gap_ms } => {
                format!("recreate: interface deleted for {gap_ms} ms, recreated")
            }
            Action::SecondAgent { variant } => format!("second-agent: {variant:?} agent"),
            Action::DiskFull {
                feed: f,
                entries,
                restart,
            } => format!(
                "disk-full: {} to {} entries{}",
                feed(f),
                entries.len(),
                if *restart { ", agent restarted" } else { "" }
            ),
        }
    }
}

/// The generator.
pub struct Plan {
    rng: StdRng,
    weights: Weights,
    model: Model,
    number: usize,
    /// Next filler address of a rotation (`10.96.0.0 + n`), so consecutive
    /// rotations never share filler.
    next_rot_filler: u32,
}

impl Plan {
    /// A plan for `seed`; the initial feed contents come from the seed too.
    pub fn new(seed: u64, weights: Weights) -> Plan {
        let mut p = Plan {
            rng: StdRng::seed_from_u64(seed),
            weights,
            model: Model::new(vec![Vec::new(); FEEDS.len()]),
            number: 0,
            next_rot_filler: 0,
        };
        let initial = (0..FEEDS.len()).map(|f| p.fresh(f)).collect();
        p.model = Model::new(initial);
        p
    }

    /// The model after the steps generated so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The next step; the model moves to what must hold after it.
    pub fn next_step(&mut self) -> Step {
        self.number += 1;
        let total: u32 = self.weights.0.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut kind = StepKind::FeedChange;
        for (k, w) in &self.weights.0 {
            if pick < *w {
                kind = *k;
                break;
            }
            pick -= w;
        }
        let (kind, action) = self.action(kind);
        Step {
            number: self.number,
            kind,
            action,
        }
    }

    /// The action of a step of `kind`, and the kind it really is (a shrink
    /// of a feed with fewer than three entries is a feed change).
    fn action(&mut self, kind: StepKind) -> (StepKind, Action) {
        let serve = |p: &mut Plan, feed: usize, serving: Serving| {
            p.model.serve(feed, serving.clone());
            Action::Serve { feed, serving }
        };
        let action = match kind {
            StepKind::FeedChange => {
                let feed = self.rng.random_range(0..FEEDS.len());
                let entries = self.small_change(feed);
                serve(self, feed, Serving::Valid(entries))
            }
            StepKind::Rotation => {
                let entries = self.rotation();
                serve(self, ROT, Serving::Valid(entries))
            }
            StepKind::Shrink => {
                let feed = *[ALPHA, BETA].choose(&mut self.rng).expect("not empty");
                let lkg = self.model.feeds[feed].lkg.clone();
                if lkg.len() < 3 {
                    let entries = self.small_change(feed);
                    return (
                        StepKind::FeedChange,
                        serve(self, feed, Serving::Valid(entries)),
                    );
                }
                let keep_share = self.rng.random_range(0.15..0.4);
                // Strictly more than max_shrink removed, at least one kept
                // (an empty list is a feed of its own kind).
                let keep = ((lkg.len() as f64 * keep_share) as usize).clamp(1, (lkg.len() - 1) / 2);
                let mut entries: Vec<Ipv4Net> =
                    lkg.choose_multiple(&mut self.rng, keep).copied().collect();
                entries.sort();
                debug_assert!(self.model.would_hold(feed, entries.len()));
                let resolve = if self.rng.random_bool(0.5) {
                    Resolve::Force
                } else {
                    Resolve::Wait
                };
                self.model.apply_held(feed, entries.clone());
                Action::Shrink {
                    feed,
                    entries,
                    resolve,
                }
            }
            StepKind::Garbage => {
                let feed = self.rng.random_range(0..FEEDS.len());
                let g = if self.rng.random_bool(0.5) {
                    Garbage::Html
                } else {
                    Garbage::Junk
                };
                serve(self, feed, Serving::Garbage(g))
            }
            StepKind::Truncated => {
                let feed = *[ROT, ALPHA].choose(&mut self.rng).expect("not empty");
                let complete = self.small_change(feed);
                let partial = self.cut_line(feed, &complete);
                serve(self, feed, Serving::Truncated { complete, partial })
            }
            StepKind::FeedError => {
                let feed = self.rng.random_range(0..FEEDS.len());
                let serving = match FEEDS[feed].transport {
                    Transport::Http if self.rng.random_bool(0.5) => Serving::Status500,
                    Transport::Http => Serving::Timeout,
                    Transport::File => Serving::Missing,
                };
                serve(self, feed, serving)
            }
            StepKind::Kill => {
                let during = self.rng.random_bool(0.5);
                // The sync of a rotation takes milliseconds here: kill within
                // tens of them of the new copy being fetched.
                let delay_ms = self.rng.random_range(0..40);
                let during = during.then(|| {
                    let v = self.rotation();
                    self.model.serve(ROT, Serving::Valid(v.clone()));
                    v
                });
                Action::Kill { during, delay_ms }
            }
            StepKind::Hup => Action::Hup,
            StepKind::Term => Action::Term,
            StepKind::Recreate => Action::Recreate {
                gap_ms: self.rng.random_range(100..1500),
            },
            StepKind::SecondAgent => Action::SecondAgent {
                variant: if self.rng.random_bool(0.5) {
                    Second::Config
                } else {
                    Second::Blocklist
                },
            },
            StepKind::DiskFull => {
                let feed = self.rng.random_range(0..FEEDS.len());
                let restart = self.rng.random_bool(0.5);
                let entries = self.small_change(feed);
                self.model.serve(feed, Serving::Valid(entries.clone()));
                Action::DiskFull {
                    feed,
                    entries,
                    restart,
                }
            }
        };
        (kind, action)
    }

    /// A new address or prefix of `feed`'s universe (a traffic source half
    /// the time).
    fn universe_entry(&mut self, feed: usize) -> Ipv4Net {
        let r = &mut self.rng;
        let traffic = r.random_bool(0.5);
        match feed {
            ROT => {
                if traffic {
                    host(source_addr(r.random_range(0..24)))
                } else {
                    // Not 10.96/16: that is the rotations' filler.
                    host(Ipv4Addr::new(10, 94, r.random(), r.random()))
                }
            }
            ALPHA => {
                if traffic {
                    host(source_addr(r.random_range(0..40)))
                } else {
                    host(Ipv4Addr::new(10, 98, r.random(), r.random()))
                }
            }
            BETA => {
                if traffic {
                    if r.random_bool(0.1) {
                        Ipv4Net::new(Ipv4Addr::new(10, 99, 0, 32), 29).expect("valid")
                    } else {
                        host(source_addr(r.random_range(0..40)))
                    }
                } else if r.random_bool(0.2) {
                    Ipv4Net::new(Ipv4Addr::new(10, 95, r.random(), 0), 24).expect("valid")
                } else {
                    host(Ipv4Addr::new(10, 97, r.random(), r.random()))
                }
            }
            FRIENDS => host(source_addr(r.random_range(35..43))),
            _ => unreachable!("feed index {feed}"),
        }
    }

    /// The cut final line of a truncated body of `feed` whose complete
    /// lines are `complete`: `10.99.0.NN` cut after its first digit, i.e. a
    /// traffic source `10.99.0.N` (1..=4) that nothing lists or allows
    /// once `complete` applies, so the cut line applied as an entry drops
    /// its datagrams; when all four are listed, an address no feed uses
    /// (`10.93.x.y`), which only the kernel check sees.
    fn cut_line(&mut self, feed: usize, complete: &[Ipv4Net]) -> String {
        let mut m = self.model.clone();
        m.serve(feed, Serving::Valid(complete.to_vec()));
        let exp = m.expected();
        let free: Vec<usize> = (0..4)
            .filter(|&i| {
                let a = source_addr(i);
                !exp.block.iter().any(|n| n.contains(&a))
                    && !exp.allow.iter().any(|n| n.contains(&a))
            })
            .collect();
        match free.choose(&mut self.rng) {
            Some(&i) => source_addr(i).to_string(),
            None => format!(
                "10.93.{}.{}",
                self.rng.random::<u8>(),
                self.rng.random_range(1..=25u8)
            ),
        }
    }

    /// A new random copy of `feed` within its size bounds.
    fn fresh(&mut self, feed: usize) -> Vec<Ipv4Net> {
        if feed == ROT {
            return self.rotation();
        }
        let spec = FEEDS[feed];
        let want = self.rng.random_range(spec.min..=spec.max);
        let mut set = BTreeSet::new();
        let mut tries = 0;
        while set.len() < want && tries < 10_000 {
            set.insert(self.universe_entry(feed));
            tries += 1;
        }
        set.into_iter().collect()
    }

    /// The big feed's next copy: as many entries as it has now (its size
    /// bounds when empty), 8 traffic sources of `10.99.0.1..=24` and filler
    /// never used by the previous copy.
    fn rotation(&mut self) -> Vec<Ipv4Net> {
        let spec = FEEDS[ROT];
        let now = self.model.feeds[ROT].lkg.len();
        let size = if (spec.min..=spec.max).contains(&now) {
            now
        } else {
            self.rng.random_range(spec.min..=spec.max)
        };
        let mut sources: Vec<usize> = (0..24).collect();
        sources.shuffle(&mut self.rng);
        let mut set: BTreeSet<Ipv4Net> =
            sources[..8].iter().map(|&i| host(source_addr(i))).collect();
        let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
        while set.len() < size {
            let a = Ipv4Addr::from(base + (self.next_rot_filler % 65536));
            self.next_rot_filler += 1;
            set.insert(host(a));
        }
        set.into_iter().collect()
    }

    /// `feed`'s enforced copy with a few entries removed and a few added,
    /// never shrinking by more than a quarter (the guard must not hold it),
    /// grown back to the feed's minimum after a shrink.
    fn small_change(&mut self, feed: usize) -> Vec<Ipv4Net> {
        let spec = FEEDS[feed];
        let mut set: BTreeSet<Ipv4Net> = self.model.feeds[feed].lkg.iter().copied().collect();
        let len = set.len();
        let max_remove = (len / 4).min(if feed == FRIENDS { 1 } else { 8 });
        let remove = self.rng.random_range(0..=max_remove);
        let victims: Vec<Ipv4Net> = {
            let v: Vec<Ipv4Net> = set.iter().copied().collect();
            v.choose_multiple(&mut self.rng, remove).copied().collect()
        };
        for v in victims {
            set.remove(&v);
        }
        let mut add = self
            .rng
            .random_range(1..=if feed == FRIENDS { 1 } else { 6 });
        add += spec.min.saturating_sub(set.len() + add);
        let target = (set.len() + add).min(spec.max.max(len));
        let mut tries = 0;
        while set.len() < target && tries < 10_000 {
            set.insert(self.universe_entry(feed));
            tries += 1;
        }
        let out: Vec<Ipv4Net> = set.into_iter().collect();
        debug_assert!(
            !self.model.would_hold(feed, out.len()),
            "{feed}: {len} -> {}",
            out.len()
        );
        out
    }
}

/// Every entry's address range stays inside the lab's networks.
pub fn in_lab(n: &Ipv4Net) -> bool {
    let o = n.addr().octets();
    o[0] == 10 && (94..=99).contains(&o[1]) && n.prefix_len() >= model::LAB_PREFIX
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(seed: u64, n: usize, weights: Weights) -> (Vec<Step>, Model) {
        let mut p = Plan::new(seed, weights);
        let s = (0..n).map(|_| p.next_step()).collect();
        (s, p.model().clone())
    }

    #[test]
    fn same_seed_same_steps() {
        let (a, ma) = steps(42, 300, Weights::default());
        let (b, mb) = steps(42, 300, Weights::default());
        assert_eq!(a, b);
        assert_eq!(ma, mb);
        let (c, _) = steps(43, 300, Weights::default());
        assert_ne!(a, c, "another seed gives another sequence");
        // Initial contents come from the seed too.
        assert_eq!(
            Plan::new(7, Weights::default()).model(),
            Plan::new(7, Weights::default()).model()
        );
    }

    #[test]
    fn every_kind_appears_and_weights_apply() {
        let (s, _) = steps(1, 2000, Weights::default());
        for k in StepKind::ALL {
            assert!(s.iter().any(|x| x.kind == k), "{k} never drawn");
        }
        // (A shrink of a feed left with fewer than 3 entries is drawn as a
        // feed change, so disable both.)
        let only = Weights::parse(&["feed-change=0".into(), "shrink=0".into()]).unwrap();
        let mut w = only.clone();
        for k in StepKind::ALL {
            w.set(k, 0);
        }
        w.set(StepKind::Hup, 1);
        let (s, _) = steps(1, 50, w);
        assert!(s.iter().all(|x| x.kind == StepKind::Hup));
        let (s, _) = steps(1, 500, only);
        assert!(s.iter().all(|x| x.kind != StepKind::FeedChange));
        assert!(Weights::parse(&["nope=1".into()]).is_err());
        assert!(Weights::parse(&["hup".into()]).is_err());
    }

    #[test]
    fn generated_contents_respect_the_rules() {
        let mut p = Plan::new(9, Weights::default());
        for _ in 0..1000 {
            let before = p.model().clone();
            let step = p.next_step();
            let m = p.model();
            for (i, f) in m.feeds.iter().enumerate() {
                assert!(f.lkg.iter().all(in_lab), "{i}: {:?}", f.lkg);
                assert!(f.lkg.len() <= FEEDS[i].max.max(before.feeds[i].lkg.len()));
            }
            let exact: usize = m
                .feeds
                .iter()
                .enumerate()
                .filter(|(i, _)| FEEDS[*i].role == model::Role::Block)
                .flat_map(|(_, f)| f.lkg.iter())
                .filter(|n| n.prefix_len() == 32)
                .collect::<BTreeSet<_>>()
                .len();
            assert!(
                exact as u32 <= model::ADDR_V4_CAPACITY,
                "step {}: {exact} exact addresses do not fit",
                step.number
            );
            if let Action::Serve {
                serving: Serving::Truncated { partial, .. },
                ..
            } = &step.action
            {
                let a: Ipv4Addr = partial.parse().expect("the cut line is an address");
                let e = m.expected();
                assert!(
                    !e.block.iter().chain(&e.allow).any(|n| n.contains(&a)),
                    "step {}: the cut line {a} is listed, so applying it would go unseen",
                    step.number
                );
            }
            if let Action::Serve {
                feed: ROT,
                serving: Serving::Valid(v),
            } = &step.action
                && step.kind == StepKind::Rotation
            {
                let old: BTreeSet<_> = before.feeds[ROT].lkg.iter().collect();
                let filler_kept = v
                    .iter()
                    .filter(|n| old.contains(n) && n.addr().octets()[1] == 96)
                    .count();
                assert_eq!(filler_kept, 0, "a rotation replaces the filler");
                assert_eq!(v.len(), before.feeds[ROT].lkg.len(), "same size");
            }
        }
    }
}
