//! Learned soups against synthetic evaluators with a known optimum inside the
//! simplex: score = −‖soup − target‖, with the target a known mix of the
//! ingredients (per layer group when the target differs per group).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::Rng;
use modelsoup::search::candidate::Mix;
use modelsoup::search::groups::Grouping;
use modelsoup::search::learned::{learn, Learn, Learned, MixScorer};
use modelsoup::search::sequential::Scored;

/// k ingredients, each a random vector per group; scores mixes in process.
struct Synthetic {
    /// `vectors[g][i]`: ingredient i's parameters in group g.
    vectors: Vec<Vec<Vec<f64>>>,
    /// The target mix per group.
    target: Vec<Vec<f64>>,
}

impl Synthetic {
    fn new(k: usize, groups: usize, target: Vec<Vec<f64>>, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let vectors = (0..groups)
            .map(|_| (0..k).map(|_| (0..40).map(|_| rng.value()).collect()).collect())
            .collect();
        Synthetic { vectors, target }
    }

    fn mixed(&self, g: usize, w: &[f64]) -> Vec<f64> {
        let v = &self.vectors[g];
        (0..v[0].len()).map(|j| v.iter().zip(w).map(|(x, w)| w * x[j]).sum()).collect()
    }
}

impl MixScorer for Synthetic {
    fn score_mix(&self, mix: &Mix, _cancel: &AtomicBool) -> modelsoup::search::Result<Scored> {
        let mut d2 = 0.0;
        for g in 0..self.vectors.len() {
            let (got, want) = (self.mixed(g, &mix.weights[g]), self.mixed(g, &self.target[g]));
            d2 += got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        }
        Ok(Scored {
            candidate: "synthetic".into(),
            score: Ok(-d2.sqrt()),
            reused: false,
            cancelled: false,
            metrics: Default::default(),
            log: None,
        })
    }
}

fn grouping(groups: usize) -> Arc<Grouping> {
    let names: Vec<String> = (0..groups).map(|g| format!("g{g}")).collect();
    let of_tensor: BTreeMap<String, usize> =
        names.iter().cloned().enumerate().map(|(i, n)| (n, i)).collect();
    Arc::new(Grouping { names, of_tensor })
}

fn run(
    scorer: &Synthetic,
    groups: usize,
    k: usize,
    budget: usize,
    seed: u64,
    jobs: usize,
) -> Learned {
    let config = Learn {
        budget,
        jobs,
        minimize: false,
        seed,
        sigma: 1.0,
        start: vec![vec![1.0 / k as f64; k]; groups],
    };
    learn(scorer, &grouping(groups), &config, &AtomicBool::new(false), &|_| {}).unwrap()
}

fn best_weights(l: &Learned) -> Vec<Vec<f64>> {
    l.evaluations[l.best.unwrap()].mix.weights.clone()
}

#[test]
fn per_model_coefficients_reach_the_optimum_within_the_budget() {
    let target = vec![vec![0.6, 0.25, 0.15]];
    let scorer = Synthetic::new(3, 1, target.clone(), 1);
    let learned = run(&scorer, 1, 3, 200, 7, 2);
    assert!(learned.evaluations.len() <= 200, "the budget is hard");
    let found = best_weights(&learned);
    for (w, t) in found[0].iter().zip(&target[0]) {
        assert!((w - t).abs() < 0.02, "found {found:?}, optimum {target:?}");
    }
    assert!((found[0].iter().sum::<f64>() - 1.0).abs() < 1e-12, "on the simplex");
    // The start (uniform) is evaluation 0, and the result is never worse.
    let start = learned.evaluations[0].scored.score.clone().unwrap();
    let best = learned.evaluations[learned.best.unwrap()].scored.score.clone().unwrap();
    assert!(best >= start);
}

#[test]
fn per_layer_mode_finds_a_different_mix_per_group() {
    let target = vec![vec![0.7, 0.2, 0.1], vec![0.1, 0.3, 0.6]];
    let scorer = Synthetic::new(3, 2, target.clone(), 2);
    let learned = run(&scorer, 2, 3, 400, 11, 3);
    let found = best_weights(&learned);
    for g in 0..2 {
        for (w, t) in found[g].iter().zip(&target[g]) {
            assert!(
                (w - t).abs() < 0.03,
                "group {g}: found {:?}, optimum {:?}",
                found[g],
                target[g]
            );
        }
    }
}

#[test]
fn same_seed_same_search_other_seed_other_search() {
    let scorer = Synthetic::new(4, 1, vec![vec![0.4, 0.3, 0.2, 0.1]], 3);
    let points =
        |l: &Learned| l.evaluations.iter().map(|e| e.mix.weights.clone()).collect::<Vec<_>>();
    let a = run(&scorer, 1, 4, 60, 5, 1);
    let b = run(&scorer, 1, 4, 60, 5, 4);
    let c = run(&scorer, 1, 4, 60, 6, 1);
    assert_eq!(points(&a), points(&b), "the thread count must not change the search");
    assert_ne!(points(&a), points(&c));
    assert_eq!(a.evaluations.len(), 60);
}

/// Numbers its calls, and holds the second call (the first of generation 1)
/// until another evaluation of that generation has been reported.
struct Slowed {
    calls: std::sync::atomic::AtomicUsize,
    reported: std::sync::atomic::AtomicUsize,
}

impl MixScorer for Slowed {
    fn score_mix(&self, _mix: &Mix, _cancel: &AtomicBool) -> modelsoup::search::Result<Scored> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.calls.fetch_add(1, SeqCst);
        if n == 1 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while self.reported.load(SeqCst) < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        Ok(Scored {
            candidate: format!("call-{n}"),
            score: Ok(-(n as f64)),
            reused: false,
            cancelled: false,
            metrics: Default::default(),
            log: None,
        })
    }
}

#[test]
fn each_evaluation_is_reported_as_it_ends() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let scorer = Slowed { calls: AtomicUsize::new(0), reported: AtomicUsize::new(0) };
    let order = std::sync::Mutex::new(Vec::new());
    let config = Learn {
        budget: 5,
        jobs: 2,
        minimize: false,
        seed: 3,
        sigma: 1.0,
        start: vec![vec![0.5; 2]],
    };
    let on_eval = |e: &modelsoup::search::learned::Evaluated| {
        order.lock().unwrap().push(e.scored.candidate.clone());
        scorer.reported.fetch_add(1, SeqCst);
    };
    let learned = learn(&scorer, &grouping(1), &config, &AtomicBool::new(false), &on_eval).unwrap();
    let order = order.into_inner().unwrap();
    // call-1 waited for call-2 to be reported: reports follow the ends, not the
    // order in which the generation was proposed or started.
    let at = |c: &str| order.iter().position(|o| o == c).unwrap();
    assert!(at("call-2") < at("call-1") && at("call-0") == 0, "{order:?}");
    assert_eq!(order.len(), learned.evaluations.len());
}
