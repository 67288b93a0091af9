//! Greedy and pruned soups: sequential accept/reject decisions, evaluated
//! speculatively up to `jobs` candidates at a time without changing a decision.
//!
//! Both algorithms walk a list of proposals (add ingredient i, remove ingredient
//! i) against the current soup and keep a proposal when its score is at least the
//! current one (strictly greater with [`Tie::Reject`]). With `jobs > 1` the next
//! proposals are evaluated at once *assuming the earlier ones are rejected*;
//! results are consumed strictly in proposal order, so the decisions are exactly
//! those of `jobs = 1`. When a proposal is accepted, the evaluations already
//! running for later proposals were made against the old soup: they are
//! cancelled (their evaluators killed) and the proposals re-run against the new
//! soup. The cost of speculation is therefore at most `jobs − 1` wasted
//! evaluations per accepted proposal, and nothing when proposals are rejected,
//! which is most of them in a typical greedy soup.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::search::candidate::{Change, Kitchen, Soup};
use crate::search::Result;

/// Scores candidates: materialises `soup ⊕ change`, runs the evaluator (or finds
/// the score in the journal) and reports the result. Implementations must stop
/// promptly once `cancel` is set, returning [`Scored::cancelled`].
pub trait Scorer: Sync {
    /// Scores the candidate `soup ⊕ change`.
    fn score(&self, soup: &Soup, change: Change, cancel: &AtomicBool) -> Result<Scored>;
}

/// The result of scoring one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The candidate's id (its journal and log name).
    pub candidate: String,
    /// The score (higher is better unless minimising), or why there is none.
    pub score: std::result::Result<f64, String>,
    /// True when the result came from the journal or a scores file.
    pub reused: bool,
    /// True when the evaluation was cancelled before it finished.
    pub cancelled: bool,
    /// Further metrics the evaluator reported besides the score.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The stderr log of a failed evaluation, to show its last lines.
    pub log: Option<std::path::PathBuf>,
}

/// Whether an equal score keeps a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tie {
    /// Keep it (`>=`), as in the model-soups paper.
    #[default]
    Accept,
    /// Reject it (`>`).
    Reject,
}

/// How scores are compared and how many evaluations may run at once.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Lower scores are better (losses).
    pub minimize: bool,
    /// Equal scores keep a proposal or not.
    pub tie: Tie,
    /// Evaluations in flight at once (at least 1).
    pub jobs: usize,
}

impl Policy {
    /// Whether `candidate` is good enough to replace a soup scoring `current`.
    pub fn keeps(&self, candidate: f64, current: f64) -> bool {
        let (c, b) = if self.minimize { (-candidate, -current) } else { (candidate, current) };
        match self.tie {
            Tie::Accept => c >= b,
            Tie::Reject => c > b,
        }
    }

    /// Whether `a` is strictly better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        if self.minimize {
            a < b
        } else {
            a > b
        }
    }
}

/// One proposal and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// What was proposed.
    pub change: Change,
    /// The candidate's members (ingredient indices, ascending).
    pub members: Vec<usize>,
    /// The scoring result.
    pub scored: Scored,
    /// Whether the soup took the proposal.
    pub accepted: bool,
}

/// Where a search ended: the soup, and the candidate (soup before the last
/// accepted proposal, and that proposal) whose bytes were scored.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The final soup.
    pub soup: Soup,
    /// Its score.
    pub score: f64,
    /// The candidate that produced it, for writing the same bytes again.
    pub winner: (Soup, Change),
    /// Every proposal in order.
    pub steps: Vec<Step>,
}

/// Called after every decided proposal (for progress display).
pub type OnStep<'a> = &'a (dyn Fn(&Step, &Finish) + Sync);

/// A sequential search over one kitchen with one scorer.
pub struct Search<'a> {
    /// Writes candidates and sums.
    pub kitchen: &'a Kitchen,
    /// Scores candidates.
    pub scorer: &'a dyn Scorer,
    /// Comparison and parallelism.
    pub policy: Policy,
    /// Set by the caller to stop (Ctrl-C).
    pub interrupt: &'a AtomicBool,
    /// Progress callback.
    pub on_step: Option<OnStep<'a>>,
}

impl Search<'_> {
    /// Greedy soup: start from `order[0]` (scored `first_score`), then propose
    /// adding each next ingredient in `order`.
    pub fn greedy(&self, order: &[usize], first_score: f64) -> Result<Finish> {
        let first = *order.first().ok_or(crate::Error::NoIngredients)?;
        let soup = self.kitchen.single(first);
        let mut finish = Finish {
            soup: soup.clone(),
            score: first_score,
            winner: (soup, Change::Alone(first)),
            steps: Vec::new(),
        };
        self.pass(&mut finish, &order[1..], Change::Add)?;
        Ok(finish)
    }

    /// Pruned soup: start from `start` (the uniform soup of all ingredients, scored
    /// `start_score`), then for up to `passes` passes propose removing each member
    /// in `order`; stop after a pass that removes nothing. The soup never becomes
    /// empty.
    pub fn pruned(
        &self,
        start: Soup,
        start_score: f64,
        order: &[usize],
        passes: usize,
    ) -> Result<Finish> {
        let mut finish = Finish {
            soup: start.clone(),
            score: start_score,
            winner: (start, Change::Same),
            steps: Vec::new(),
        };
        for _ in 0..passes {
            let members: Vec<usize> =
                order.iter().copied().filter(|i| finish.soup.members().contains(i)).collect();
            if !self.pass(&mut finish, &members, Change::Remove)? {
                break;
            }
        }
        Ok(finish)
    }

    /// Proposes `make(i)` for each `i` in `list` against the current soup, with
    /// speculation; returns whether anything was accepted.
    fn pass(&self, finish: &mut Finish, list: &[usize], make: fn(usize) -> Change) -> Result<bool> {
        let mut any = false;
        let mut next = 0;
        thread::scope(|scope| -> Result<()> {
            let mut inflight: VecDeque<InFlight> = VecDeque::new();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            loop {
                while inflight.len() < self.policy.jobs.max(1) && next < list.len() {
                    let change = make(list[next]);
                    if matches!(change, Change::Remove(_)) && finish.soup.members().len() <= 1 {
                        next = list.len(); // never empty the soup
                        break;
                    }
                    let soup = finish.soup.clone();
                    let cancel = Arc::new(AtomicBool::new(false));
                    let flag = Arc::clone(&cancel);
                    let scorer = self.scorer;
                    let done = done_tx.clone();
                    let handle = scope.spawn(move || {
                        let result = scorer.score(&soup, change, &flag);
                        let _ = done.send(());
                        result
                    });
                    inflight.push_back(InFlight { position: next, change, cancel, handle });
                    next += 1;
                }
                let Some(oldest) = inflight.pop_front() else { break };
                let scored = self.wait(oldest.handle, &oldest.cancel, &inflight, &done_rx)?;
                if scored.cancelled || self.interrupt.load(Ordering::SeqCst) {
                    cancel_all(inflight);
                    return Err(crate::Error::Cancelled.into());
                }
                let members = finish.soup.members_after(oldest.change);
                let accepted =
                    scored.score.as_ref().is_ok_and(|&s| self.policy.keeps(s, finish.score));
                let step = Step { change: oldest.change, members, scored, accepted };
                if accepted {
                    cancel_all(std::mem::take(&mut inflight));
                    let new_soup = self.kitchen.accept(&finish.soup, oldest.change)?;
                    let old = std::mem::replace(&mut finish.soup, new_soup);
                    finish.winner = (old, oldest.change);
                    finish.score = *step.scored.score.as_ref().unwrap_or(&finish.score);
                    next = oldest.position + 1;
                    any = true;
                }
                finish.steps.push(step);
                if let (Some(on_step), Some(last)) = (self.on_step, finish.steps.last()) {
                    on_step(last, finish);
                }
            }
            Ok(())
        })?;
        Ok(any)
    }

    /// Waits for one evaluation, passing an interrupt on to it and to those behind
    /// it.
    fn wait(
        &self,
        handle: thread::ScopedJoinHandle<'_, Result<Scored>>,
        cancel: &AtomicBool,
        behind: &VecDeque<InFlight>,
        done: &std::sync::mpsc::Receiver<()>,
    ) -> Result<Scored> {
        while !handle.is_finished() {
            if self.interrupt.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
                for job in behind {
                    job.cancel.store(true, Ordering::SeqCst);
                }
            }
            // Any job finishing wakes us; the timeout keeps Ctrl-C responsive.
            let _ = done.recv_timeout(Duration::from_millis(50));
        }
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// An evaluation running for proposal `position` of the current pass.
struct InFlight<'scope> {
    position: usize,
    change: Change,
    cancel: Arc<AtomicBool>,
    handle: thread::ScopedJoinHandle<'scope, Result<Scored>>,
}

/// Cancels stale evaluations and waits for them (their evaluators are killed).
fn cancel_all(jobs: VecDeque<InFlight>) {
    for job in &jobs {
        job.cancel.store(true, Ordering::SeqCst);
    }
    for job in jobs {
        let _ = job.handle.join();
    }
}

/// Greedy starts at `order[start]`, the first ingredient with a score of its own;
/// those before it (whose evaluation failed) are still proposed, at the end.
pub fn greedy_order(order: &[usize], start: usize) -> Vec<usize> {
    order[start..].iter().chain(&order[..start]).copied().collect()
}

/// Scores every ingredient on its own, up to `jobs` at a time, skipping those in
/// `known`; returns the results in ingredient order.
pub fn score_individuals(
    kitchen: &Kitchen,
    scorer: &dyn Scorer,
    jobs: usize,
    known: &[Option<Scored>],
    interrupt: &AtomicBool,
    on_done: &(dyn Fn(usize, &Scored) + Sync),
) -> Result<Vec<Scored>> {
    let n = kitchen.ingredients().len();
    let todo: Vec<usize> = (0..n).filter(|&i| known.get(i).is_none_or(Option::is_none)).collect();
    let score = |&i: &usize| scorer.score(&kitchen.single(i), Change::Alone(i), interrupt);
    let fresh = score_in_parallel(&todo, jobs, interrupt, score, &|j, s| on_done(todo[j], s))?;
    let mut all: Vec<Option<Scored>> = (0..n).map(|i| known.get(i).cloned().flatten()).collect();
    for (&i, scored) in todo.iter().zip(fresh) {
        all[i] = Some(scored);
    }
    all.into_iter().collect::<Option<Vec<_>>>().ok_or(crate::Error::Cancelled.into())
}

/// Scores `items` up to `jobs` at a time and returns the results in order;
/// `on_done(index, result)` is called as each finishes. A scorer error (not a
/// failed evaluation: a broken scratch disk, say) stops new work and is returned;
/// an interrupt gives [`crate::Error::Cancelled`].
pub fn score_in_parallel<T: Sync>(
    items: &[T],
    jobs: usize,
    interrupt: &AtomicBool,
    score: impl Fn(&T) -> Result<Scored> + Sync,
    on_done: &(dyn Fn(usize, &Scored) + Sync),
) -> Result<Vec<Scored>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: std::sync::Mutex<Vec<Option<Result<Scored>>>> =
        std::sync::Mutex::new((0..items.len()).map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) || interrupt.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                let result = score(item);
                match &result {
                    Ok(scored) if !scored.cancelled => on_done(i, scored),
                    Ok(_) => {}
                    Err(_) => failed.store(true, Ordering::SeqCst),
                }
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    let mut complete = true;
    for result in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        match result {
            Some(Ok(scored)) if !scored.cancelled => out.push(scored),
            Some(Err(e)) => return Err(e),
            _ => complete = false,
        }
    }
    if complete {
        Ok(out)
    } else {
        Err(crate::Error::Cancelled.into())
    }
}
