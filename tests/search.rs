//! Greedy and pruned searches against brute-force reference implementations, with
//! an in-process scorer; and candidates built from the running sum against the
//! mean recomputed from their members.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use common::{read_output, write_file, Fmt, RawTensor, Rng};
use modelsoup::search::candidate::{Change, Kitchen, Soup};
use modelsoup::search::sequential::{Policy, Scored, Scorer, Search, Tie};
use modelsoup::{Checkpoint, Destination};

/// Tiny ingredients: a shared base plus a different delta each.
fn ingredients(dir: &std::path::Path, k: usize, fmt: Fmt) -> (Vec<PathBuf>, Vec<Vec<RawTensor>>) {
    let mut rng = Rng::new(42);
    let base: Vec<f64> = (0..300).map(|_| rng.value()).collect();
    let mut paths = Vec::new();
    let mut all = Vec::new();
    for i in 0..k {
        let values: Vec<f64> = base.iter().map(|b| b + 0.1 * rng.value()).collect();
        let tensors = vec![
            RawTensor::float("w", fmt, &[20, 15], &values),
            RawTensor::raw("ids", "I64", &[1], 7i64.to_le_bytes().to_vec()),
        ];
        let p = dir.join(format!("in{i}.safetensors"));
        write_file(&p, &tensors, true);
        paths.push(p);
        all.push(tensors);
    }
    (paths, all)
}

fn kitchen(paths: &[PathBuf], scratch: &std::path::Path) -> Kitchen {
    let cks = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    Kitchen::new(cks, scratch).unwrap()
}

/// Scores a member set by a seeded hash, quantised so that ties happen; some sets
/// fail. Counts how often each set was scored.
struct FakeScorer {
    seed: u64,
    calls: Mutex<BTreeMap<Vec<usize>, usize>>,
}

impl FakeScorer {
    fn new(seed: u64) -> Self {
        FakeScorer { seed, calls: Mutex::new(BTreeMap::new()) }
    }
    fn value(&self, members: &[usize]) -> Result<f64, String> {
        let mut h = self.seed;
        for &m in members {
            h = (h ^ (m as u64 + 1)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        }
        match h % 13 {
            0 => Err("evaluator failed".into()),
            v => Ok((v % 5) as f64 + members.len() as f64 * 0.0),
        }
    }
}

impl Scorer for FakeScorer {
    fn score(
        &self,
        soup: &Soup,
        change: Change,
        _cancel: &AtomicBool,
    ) -> modelsoup::search::Result<Scored> {
        let members = soup.members_after(change);
        *self.calls.lock().unwrap().entry(members.clone()).or_default() += 1;
        std::thread::sleep(std::time::Duration::from_millis(2));
        Ok(Scored {
            candidate: format!("{members:?}"),
            score: self.value(&members),
            reused: false,
            cancelled: false,
            metrics: Default::default(),
            log: None,
        })
    }
}

fn keeps(policy: &Policy, c: f64, b: f64) -> bool {
    let (c, b) = if policy.minimize { (-c, -b) } else { (c, b) };
    match policy.tie {
        Tie::Accept => c >= b,
        Tie::Reject => c > b,
    }
}

fn greedy_reference(f: &FakeScorer, order: &[usize], policy: &Policy) -> (Vec<usize>, Vec<bool>) {
    let mut soup = vec![order[0]];
    let mut best = f.value(&soup).unwrap();
    let mut decisions = Vec::new();
    for &i in &order[1..] {
        let mut candidate = soup.clone();
        candidate.push(i);
        candidate.sort_unstable();
        let accepted = f.value(&candidate).is_ok_and(|s| keeps(policy, s, best));
        if accepted {
            best = f.value(&candidate).unwrap();
            soup = candidate;
        }
        decisions.push(accepted);
    }
    (soup, decisions)
}

fn pruned_reference(
    f: &FakeScorer,
    order: &[usize],
    passes: usize,
    policy: &Policy,
) -> (Vec<usize>, Vec<bool>) {
    let mut soup: Vec<usize> = (0..order.len()).collect();
    let mut best = f.value(&soup).unwrap();
    let mut decisions = Vec::new();
    for _ in 0..passes {
        let mut removed = false;
        for &i in order.iter().filter(|i| soup.contains(i)).collect::<Vec<_>>() {
            if soup.len() <= 1 {
                break;
            }
            let candidate: Vec<usize> = soup.iter().copied().filter(|&m| m != i).collect();
            let accepted = f.value(&candidate).is_ok_and(|s| keeps(policy, s, best));
            if accepted {
                best = f.value(&candidate).unwrap();
                soup = candidate;
                removed = true;
            }
            decisions.push(accepted);
        }
        if !removed {
            break;
        }
    }
    (soup, decisions)
}

#[test]
fn greedy_and_pruned_match_brute_force_at_any_job_count() {
    let dir = common::tempdir();
    let k = 7;
    let (paths, _) = ingredients(dir.path(), k, Fmt::BF16);
    let kitchen = kitchen(&paths, &dir.path().join("scratch"));
    let interrupt = AtomicBool::new(false);
    let mut rng = Rng::new(9);
    let mut checked = 0;
    for seed in 0..6u64 {
        let scorer = FakeScorer::new(seed);
        let mut order: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for tie in [Tie::Accept, Tie::Reject] {
            for minimize in [false, true] {
                let mut results = Vec::new();
                for jobs in [1, 4] {
                    let policy = Policy { minimize, tie, jobs };
                    let search = Search {
                        kitchen: &kitchen,
                        scorer: &scorer,
                        policy,
                        interrupt: &interrupt,
                        on_step: None,
                    };
                    // Greedy needs a scored start; the reference does too.
                    let Ok(first) = scorer.value(&[order[0]]) else { continue };
                    let g = search.greedy(&order, first).unwrap();
                    let (want, decisions) = greedy_reference(&scorer, &order, &policy);
                    assert_eq!(
                        g.soup.members(),
                        want.as_slice(),
                        "greedy seed {seed} {tie:?} jobs {jobs}"
                    );
                    assert_eq!(g.steps.iter().map(|s| s.accepted).collect::<Vec<_>>(), decisions);

                    let all: Vec<usize> = (0..k).collect();
                    let Ok(start_score) = scorer.value(&all) else { continue };
                    let start = kitchen.soup_of(&all).unwrap();
                    let p = search.pruned(start, start_score, &order, 2).unwrap();
                    let (want, decisions) = pruned_reference(&scorer, &order, 2, &policy);
                    assert_eq!(
                        p.soup.members(),
                        want.as_slice(),
                        "pruned seed {seed} {tie:?} jobs {jobs}"
                    );
                    assert_eq!(p.steps.iter().map(|s| s.accepted).collect::<Vec<_>>(), decisions);
                    results.push((g.soup.members().to_vec(), p.soup.members().to_vec()));
                    checked += 1;
                }
                assert!(results.windows(2).all(|w| w[0] == w[1]));
            }
        }
    }
    assert!(checked >= 20, "only {checked} configurations were checked");
}

#[test]
fn candidates_from_the_running_sum_equal_the_recomputed_mean() {
    let dir = common::tempdir();
    for fmt in [Fmt::BF16, Fmt::F16, Fmt::F32] {
        let (paths, raw) = ingredients(dir.path(), 6, fmt);
        let kitchen = kitchen(&paths, &dir.path().join(format!("scratch-{}", fmt.name())));
        // Grow a soup 0+1+2+3, then drop 1: every candidate along the way is checked.
        let mut soup = kitchen.single(0);
        let changes = [
            Change::Add(1),
            Change::Add(2),
            Change::Add(3),
            Change::Remove(1),
            Change::Add(5),
            Change::Same,
        ];
        for (step, change) in changes.into_iter().enumerate() {
            let out = dir.path().join(format!("cand-{}-{step}", fmt.name()));
            let dest =
                Destination { path: &out, force: true, support_files_from: None, durable: false };
            kitchen.materialise(&soup, change, &dest, BTreeMap::new()).unwrap();
            let members = soup.members_after(change);
            let written = read_output(&out);
            let bytes = &written["w"].2;
            let decoded: Vec<Vec<f64>> =
                members.iter().map(|&m| fmt.decode(&raw[m][0].data)).collect();
            for e in 0..300 {
                let mean = decoded.iter().map(|x| x[e]).sum::<f64>() / members.len() as f64;
                let ulps = (fmt.ordered(bytes, e) - fmt.ordered(&fmt.round(mean), 0)).abs();
                assert!(ulps <= 1, "{} step {step} element {e}: {ulps} ulps", fmt.name());
            }
            assert_eq!(written["ids"].2, 7i64.to_le_bytes());
            soup = kitchen.accept(&soup, change).unwrap();
        }
    }
}
