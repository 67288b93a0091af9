//! What a running search shows on stderr. On a terminal: one live line per
//! running evaluation (candidate, what it is, elapsed time) under a summary line
//! (best score so far, evaluations done of those expected, ETA from the mean
//! evaluation time), with the search's own lines printed above them. Otherwise
//! plain lines only: each evaluation as it starts and the search's lines. A failed
//! evaluation's last lines of stderr are printed in both cases.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use modelsoup::search::evaluate::log_tail;
use modelsoup::search::report::format_score;
use modelsoup::search::scorer::Event;

/// Lines of a failed evaluation's stderr that are shown.
const STDERR_LINES: usize = 5;

/// The live display of one search.
pub struct Status {
    quiet: bool,
    bars: Option<Bars>,
    minimize: bool,
    jobs: usize,
    state: Mutex<State>,
}

struct Bars {
    multi: MultiProgress,
    summary: ProgressBar,
}

#[derive(Default)]
struct State {
    running: HashMap<String, ProgressBar>,
    done: usize,
    expected: Option<usize>,
    seconds: f64,
    timed: usize,
    best: Option<f64>,
}

impl Status {
    /// Live lines when stderr is a terminal and not `quiet`; plain lines
    /// otherwise (none when `quiet`).
    pub fn new(quiet: bool, minimize: bool, jobs: usize) -> Status {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let summary = multi.add(ProgressBar::new_spinner());
            summary.set_style(style("{spinner} {msg}"));
            summary.enable_steady_tick(Duration::from_millis(250));
            Bars { multi, summary }
        });
        let status = Status { quiet, bars, minimize, jobs: jobs.max(1), state: Mutex::default() };
        status.redraw(&status.lock());
        status
    }

    /// Prints a line of the search's own (above the live lines on a terminal).
    pub fn say(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(bars) => bars.multi.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// How many evaluations the search expects in all, for the ETA (`None`:
    /// unknown).
    pub fn expect(&self, total: Option<usize>) {
        let mut state = self.lock();
        state.expected = total;
        self.redraw(&state);
    }

    /// Takes in an event from the scorer.
    pub fn event(&self, event: Event<'_>) {
        let mut state = self.lock();
        match event {
            Event::Started { candidate, proposal } => match &self.bars {
                Some(bars) => {
                    let line = bars.multi.add(ProgressBar::new_spinner());
                    line.set_style(style("  {spinner} {msg} {elapsed}"));
                    line.set_message(format!("{candidate} ({proposal})"));
                    line.enable_steady_tick(Duration::from_millis(250));
                    state.running.insert(candidate.to_owned(), line);
                }
                None if !self.quiet => eprintln!("  started {candidate} ({proposal})"),
                None => {}
            },
            Event::Finished { scored, seconds, .. } => {
                self.remove(&mut state, &scored.candidate);
                state.done += 1;
                state.seconds += seconds;
                state.timed += 1;
                self.note_score(&mut state, scored.score.as_ref().ok().copied());
                if let (Err(reason), Some(log)) = (&scored.score, &scored.log) {
                    let tail = log_tail(log, STDERR_LINES);
                    let mut text = format!("  {} failed: {reason}", scored.candidate);
                    if tail.is_empty() {
                        text += &format!(" (nothing on stderr: {})", log.display());
                    } else {
                        text += &format!("; the end of {}:", log.display());
                        for line in tail {
                            text += &format!("\n    | {line}");
                        }
                    }
                    drop(state);
                    self.say(&text);
                    return;
                }
            }
            Event::Reused { scored } => {
                state.done += 1;
                self.note_score(&mut state, scored.score.as_ref().ok().copied());
            }
            Event::Cancelled { candidate } => self.remove(&mut state, candidate),
        }
        self.redraw(&state);
    }

    /// Clears the live lines.
    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            for (_, line) in self.lock().running.drain() {
                line.finish_and_clear();
            }
            bars.summary.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }

    fn note_score(&self, state: &mut State, score: Option<f64>) {
        if let Some(s) = score {
            let better = |b: f64| if self.minimize { s < b } else { s > b };
            if state.best.is_none_or(better) {
                state.best = Some(s);
            }
        }
    }

    fn remove(&self, state: &mut State, candidate: &str) {
        if let (Some(bars), Some(line)) = (&self.bars, state.running.remove(candidate)) {
            line.finish_and_clear();
            bars.multi.remove(&line);
        }
    }

    fn redraw(&self, state: &State) {
        let Some(bars) = &self.bars else { return };
        let best = state.best.map_or("none yet".to_owned(), format_score);
        let mut msg = format!("best {best} · {} evaluation", state.done);
        if state.done != 1 {
            msg.push('s');
        }
        if let Some(expected) = state.expected {
            // Speculative evaluations re-run after an acceptance add to the plan.
            let total = expected.max(state.done + state.running.len());
            msg = format!("best {best} · {}/{total} evaluations", state.done);
            if state.timed > 0 && total > state.done {
                let mean = state.seconds / state.timed as f64;
                let left = mean * (total - state.done) as f64 / self.jobs as f64;
                msg += &format!(" · ETA {}", human(left));
            }
        }
        msg += &format!(" · {} running", state.running.len());
        bars.summary.set_message(msg);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        self.finish();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// `45s`, `3m 20s`, `2h 05m`.
fn human(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(0.4), "0s");
        assert_eq!(human(45.0), "45s");
        assert_eq!(human(200.0), "3m 20s");
        assert_eq!(human(7500.0), "2h 05m");
    }
}
