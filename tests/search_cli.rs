//! `soup greedy` and `soup pruned` end to end, as a user runs them: the built binary,
//! a real evaluator process (tests/evaluators/distance.py, Python 3 stdlib only)
//! that scores a candidate by its distance to a hidden target vector, and a
//! brute-force reference of both searches computed here from the ingredients'
//! values. Also: failing, hanging and lying evaluators, hostile paths, SIGKILL and
//! resume, a torn journal, the cost of a candidate against the soup's size, and the
//! reports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cli::*;
use common::{read_output, read_safetensors, write_checkpoint, write_file, Fmt, RawTensor, Rng};
use serde_json::Value;

const EVALUATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evaluators/distance.py");

/// F32 elements per ingredient: `a.weight` [16, 16] then `b.bias` [44], the order in
/// which the evaluator concatenates them (by name).
const ELEMENTS: usize = 300;
const SPLIT: usize = 256;

// ---------------------------------------------------------------------------
// The ingredients, the target and the reference scores
// ---------------------------------------------------------------------------

/// Ingredients around a hidden target, and the score the evaluator gives any
/// member set, recomputed here.
struct World {
    names: Vec<String>,
    values: Vec<Vec<f32>>,
    target: Vec<f64>,
    quantum: f64,
    /// The ingredient paths (labels) once written.
    paths: Vec<PathBuf>,
    target_file: PathBuf,
}

impl World {
    /// `n` ingredients `in0`, `in1`, …: the target plus noise of a different scale
    /// each, so that averaging helps with some and hurts with others.
    fn generate(seed: u64, n: usize, quantum: f64) -> World {
        let mut rng = Rng::new(seed);
        let target: Vec<f64> = (0..ELEMENTS).map(|_| rng.unit() * 2.0 - 1.0).collect();
        let shared: Vec<f64> = (0..ELEMENTS).map(|_| rng.unit() * 2.0 - 1.0).collect();
        let mut values = Vec::new();
        for _ in 0..n {
            let scale = 0.05 * 8f64.powf(rng.unit());
            let lean = 0.1 * rng.unit();
            let v: Vec<f32> = (0..ELEMENTS)
                .map(|e| (target[e] + lean * shared[e] + scale * (rng.unit() * 2.0 - 1.0)) as f32)
                .collect();
            values.push(v);
        }
        World {
            names: (0..n).map(|i| format!("in{i}")).collect(),
            values,
            target,
            quantum,
            paths: Vec::new(),
            target_file: PathBuf::new(),
        }
    }

    fn n(&self) -> usize {
        self.values.len()
    }

    /// The candidate the tool writes for `members`: their mean, rounded to f32
    /// (the ingredients' dtype).
    fn mean(&self, members: &[usize]) -> Vec<f32> {
        (0..ELEMENTS)
            .map(|e| {
                let sum: f64 = members.iter().map(|&m| f64::from(self.values[m][e])).sum();
                (sum / members.len() as f64) as f32
            })
            .collect()
    }

    /// ‖mean − target‖, accumulated as the evaluator does.
    fn distance(&self, members: &[usize]) -> f64 {
        let mut acc = 0.0;
        for (x, t) in self.mean(members).iter().zip(&self.target) {
            let d = f64::from(*x) - t;
            acc += d * d;
        }
        acc.sqrt()
    }

    /// The evaluator's score (with `--sign -1`).
    fn score(&self, members: &[usize]) -> f64 {
        let d = self.distance(members);
        if self.quantum > 0.0 {
            -((d / self.quantum).floor() * self.quantum)
        } else {
            -d
        }
    }

    /// How far the evaluator's distance can be from [`World::distance`]: the tool's
    /// candidate is within one f32 ulp of the mean in every element (not always
    /// correctly rounded: a mean of three f32 values can fall exactly half-way
    /// between two f32 values, and the tool computes it as Σ/n + θ/n), so by the
    /// triangle inequality the distance moves by at most ‖ulps‖.
    fn slack(&self, members: &[usize]) -> f64 {
        let ulp = |x: f32| {
            let a = x.abs();
            f64::from(f32::from_bits(a.to_bits() + 1)) - f64::from(a)
        };
        self.mean(members).iter().map(|&x| ulp(x) * ulp(x)).sum::<f64>().sqrt()
    }

    /// Whether rounding cannot change any decision: no distance is within twice
    /// its slack of a quantisation step, and (unquantised) no two distances are
    /// that close.
    fn robust(&self) -> bool {
        let all = subsets(self.n());
        let d: Vec<(f64, f64)> =
            all.iter().map(|m| (self.distance(m), 2.0 * self.slack(m))).collect();
        if self.quantum > 0.0 {
            d.iter().all(|&(d, slack)| {
                let step = (d / self.quantum).round() * self.quantum;
                (d - step).abs() > slack
            })
        } else {
            let mut sorted = d.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            sorted.windows(2).all(|w| w[1].0 - w[0].0 > w[0].1 + w[1].1)
        }
    }

    /// Writes the ingredients (`.safetensors` files, or checkpoint directories
    /// for the odd ones when `dirs`) and the target into `dir`.
    fn write(&mut self, dir: &Path, dirs: bool) {
        fs::create_dir_all(dir).unwrap();
        self.paths.clear();
        for (i, v) in self.values.iter().enumerate() {
            let values: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            let tensors = vec![
                RawTensor::float("a.weight", Fmt::F32, &[16, 16], &values[..SPLIT]),
                RawTensor::raw("step", "I64", &[1], 1234i64.to_le_bytes().to_vec()),
                RawTensor::float("b.bias", Fmt::F32, &[ELEMENTS - SPLIT], &values[SPLIT..]),
            ];
            if dirs && i % 2 == 1 {
                let path = dir.join(&self.names[i]);
                write_checkpoint(&path, &tensors, &[], true);
                self.paths.push(path);
            } else {
                let path = dir.join(format!("{}.safetensors", self.names[i]));
                write_file(&path, &tensors, true);
                self.paths.push(path);
            }
        }
        self.target_file = dir.join("target.f64");
        let bytes: Vec<u8> = self.target.iter().flat_map(|t| t.to_le_bytes()).collect();
        fs::write(&self.target_file, bytes).unwrap();
    }

    fn labels(&self) -> Vec<String> {
        self.paths.iter().map(|x| p(x)).collect()
    }

    fn label_set(&self, members: &[usize]) -> Vec<String> {
        members.iter().map(|&i| p(&self.paths[i])).collect()
    }

    /// The --eval template: the evaluator on `{model}` with this world's target
    /// and quantum, plus `extra` (already quoted where needed).
    fn eval(&self, extra: &str) -> String {
        format!(
            "python3 -S {} {{model}} {} --quantum {} {extra}",
            sh_quote(EVALUATOR),
            sh_quote(&p(&self.target_file)),
            self.quantum
        )
    }
}

/// Every non-empty subset of 0..n, members ascending.
fn subsets(n: usize) -> Vec<Vec<usize>> {
    (1u32..1 << n).map(|mask| (0..n).filter(|&i| mask & (1 << i) != 0).collect()).collect()
}

/// Checks the tool's final soup bytes against the f32-rounded mean of `members`
/// (at most one ulp off) and its recipe.
fn check_soup(world: &World, out: &Path, members: &[usize], method: &str) {
    let tensors = read_output(out);
    let mean = world.mean(members);
    let mut got = Fmt::F32.decode(&tensors["a.weight"].2);
    got.extend(Fmt::F32.decode(&tensors["b.bias"].2));
    assert_eq!(got.len(), ELEMENTS);
    for (e, (g, m)) in got.iter().zip(&mean).enumerate() {
        let ulps = ((*g as f32).to_bits() as i64 - m.to_bits() as i64).abs();
        assert!(ulps <= 1 || *g == f64::from(*m), "element {e}: {g} vs {m}");
    }
    assert_eq!(tensors["a.weight"].0, "F32", "the ingredients' dtype is kept");
    assert_eq!(tensors["step"].2, 1234i64.to_le_bytes());
    let (metadata, _) = read_safetensors(&out.join("model.safetensors"));
    let recipe: Value = serde_json::from_str(&metadata["modelsoup.recipe"]).unwrap();
    assert_eq!(recipe["method"], "linear", "equal weights over the members");
    assert_eq!(recipe["search"], method);
    assert_eq!(recipe_paths(&recipe), world.label_set(members));
    assert_recipe_replays(out);
}

// ---------------------------------------------------------------------------
// Brute-force reference searches
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Greedy,
    Pruned(usize),
}

impl Method {
    fn args(self) -> Vec<String> {
        match self {
            Method::Greedy => vec!["greedy".into()],
            Method::Pruned(passes) => vec!["pruned".into(), "--passes".into(), passes.to_string()],
        }
    }
    fn name(self) -> &'static str {
        match self {
            Method::Greedy => "greedy",
            Method::Pruned(_) => "pruned",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    Sorted,
    Given,
    Random(u64),
}

impl Order {
    fn args(self) -> Vec<String> {
        match self {
            Order::Sorted => vec!["--order".into(), "sorted".into()],
            Order::Given => vec!["--order".into(), "given".into()],
            Order::Random(seed) => {
                vec!["--order".into(), "random".into(), "--seed".into(), seed.to_string()]
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rule {
    tie_accept: bool,
    minimize: bool,
}

impl Rule {
    const MAX: Rule = Rule { tie_accept: true, minimize: false };

    fn keeps(self, candidate: f64, current: f64) -> bool {
        let (c, b) = if self.minimize { (-candidate, -current) } else { (candidate, current) };
        if self.tie_accept {
            c >= b
        } else {
            c > b
        }
    }
    fn better(self, a: f64, b: f64) -> bool {
        if self.minimize {
            a < b
        } else {
            a > b
        }
    }
    fn args(self) -> Vec<String> {
        let mut args =
            vec!["--tie".into(), if self.tie_accept { "accept" } else { "reject" }.into()];
        if self.minimize {
            args.push("--minimize".into());
        }
        args
    }
}

/// What a search must produce.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    individual: Vec<Option<f64>>,
    uniform: Option<f64>,
    /// Every proposal: the candidate's members, its score, whether it was kept.
    steps: Vec<(Vec<usize>, Option<f64>, bool)>,
    members: Vec<usize>,
    score: f64,
}

/// The permutation of `soup --order random --seed SEED`: Fisher–Yates driven by
/// SplitMix64 (the same generator as `common::Rng`).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn proposal_order(
    individual: &[Option<f64>],
    order: Order,
    rule: Rule,
    method: Method,
) -> Vec<usize> {
    let n = individual.len();
    match order {
        Order::Given => (0..n).collect(),
        Order::Random(seed) => shuffled(n, seed),
        Order::Sorted => {
            // Best first, failures last; worst first for pruned. The worlds used
            // here have distinct individual scores, so no tie-breaking is assumed.
            let mut v: Vec<usize> = (0..n).collect();
            v.sort_by(|&a, &b| match (individual[a], individual[b]) {
                (Some(x), Some(y)) if rule.better(x, y) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) if rule.better(y, x) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                _ => std::cmp::Ordering::Equal,
            });
            if matches!(method, Method::Pruned(_)) {
                v.reverse();
            }
            v
        }
    }
}

/// Greedy or pruned by brute force, with `score` giving any member set's score
/// (`None`: the evaluation fails). `None` when there is no soup to keep.
fn reference(
    n: usize,
    score: &dyn Fn(&[usize]) -> Option<f64>,
    method: Method,
    order: Order,
    rule: Rule,
) -> Option<Expected> {
    let individual: Vec<Option<f64>> = (0..n).map(|i| score(&[i])).collect();
    let order = proposal_order(&individual, order, rule, method);
    let mut steps = Vec::new();
    let mut propose = |candidate: Vec<usize>, current: &mut (Vec<usize>, f64)| -> bool {
        let s = score(&candidate);
        let accepted = s.is_some_and(|s| rule.keeps(s, current.1));
        if accepted {
            *current = (candidate.clone(), s.unwrap());
        }
        steps.push((candidate, s, accepted));
        accepted
    };
    match method {
        Method::Greedy => {
            let start = order.iter().position(|&i| individual[i].is_some())?;
            let mut current = (vec![order[start]], individual[order[start]].unwrap());
            for &i in &order[start + 1..] {
                let mut candidate = current.0.clone();
                candidate.push(i);
                candidate.sort_unstable();
                propose(candidate, &mut current);
            }
            Some(Expected {
                individual,
                uniform: None,
                steps,
                members: current.0,
                score: current.1,
            })
        }
        Method::Pruned(passes) => {
            let all: Vec<usize> = (0..n).collect();
            let uniform = score(&all)?;
            let mut current = (all, uniform);
            for _ in 0..passes {
                let mut removed = false;
                let pass: Vec<usize> =
                    order.iter().copied().filter(|i| current.0.contains(i)).collect();
                for i in pass {
                    if current.0.len() <= 1 {
                        break;
                    }
                    let candidate: Vec<usize> =
                        current.0.iter().copied().filter(|&m| m != i).collect();
                    removed |= propose(candidate, &mut current);
                }
                if !removed {
                    break;
                }
            }
            Some(Expected {
                individual,
                uniform: Some(uniform),
                steps,
                members: current.0,
                score: current.1,
            })
        }
    }
}

fn world_reference(world: &World, method: Method, order: Order, rule: Rule) -> Expected {
    reference(world.n(), &|m| Some(world.score(m)), method, order, rule).unwrap()
}

/// Asserts that a report describes `want`: members, weights, score, individual
/// scores, and every step's members, score and decision.
fn check_report(world: &World, report: &Value, want: &Expected, method: Method, context: &str) {
    // Scores of candidates with more than one member may differ from ours by
    // rounding (see `World::slack`), by far less than this.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
    assert_eq!(report["method"], method.name(), "{context}");
    assert_eq!(strings(&report["members"]), world.label_set(&want.members), "{context}");
    let w = 1.0 / want.members.len() as f64;
    assert_eq!(report["weights"], Value::from(vec![w; want.members.len()]), "{context}");
    let score = report["score"].as_f64().unwrap();
    assert!(close(score, want.score), "{context}: score {score} vs {}", want.score);
    let individual = report["individual_scores"].as_object().unwrap();
    assert_eq!(individual.len(), world.n(), "{context}");
    for (i, want_score) in want.individual.iter().enumerate() {
        let got = &individual[&p(&world.paths[i])];
        match want_score {
            Some(s) => assert!(close(got.as_f64().unwrap(), *s), "{context}: in{i} {got}"),
            None => assert!(got.is_null(), "{context}: in{i} {got}"),
        }
    }
    if let Some(u) = want.uniform {
        let got = report["uniform"]["score"].as_f64().unwrap();
        assert!(close(got, u), "{context}: uniform {got} vs {u}");
    }
    let steps = report["steps"].as_array().unwrap();
    let got: Vec<(Vec<String>, bool)> =
        steps.iter().map(|s| (strings(&s["members"]), s["accepted"].as_bool().unwrap())).collect();
    let expected: Vec<(Vec<String>, bool)> =
        want.steps.iter().map(|(m, _, a)| (world.label_set(m), *a)).collect();
    assert_eq!(got, expected, "{context}: steps (members, accepted)");
    for (step, (_, want_score, _)) in steps.iter().zip(&want.steps) {
        match want_score {
            Some(s) => {
                let got = step["score"].as_f64().unwrap_or(f64::NAN);
                assert!(close(got, *s), "{context}: step {step} vs {s}");
                assert!(step.get("error").is_none(), "{context}: {step}");
            }
            None => assert!(step["error"].is_string(), "{context}: {step}"),
        }
    }
}

/// The common arguments of a search over `world` into `out`.
fn search_args(world: &World, method: Method, out: &Path, eval: &str) -> Vec<String> {
    let mut args = method.args();
    args.extend(world.labels());
    args.extend(["-o".into(), p(out), "--eval".into(), eval.into(), "-t".into(), "1".into()]);
    args
}

/// A world whose decisions cannot be changed by rounding, searched from seed 0 on
/// (deterministic); with `quantum`, one where `--tie` changes some decisions and
/// the individual scores differ.
fn find_world(n: usize, quantum: f64) -> World {
    for seed in 0..500 {
        let world = World::generate(seed, n, quantum);
        if !world.robust() {
            continue;
        }
        let individual: Vec<f64> = (0..n).map(|i| world.score(&[i])).collect();
        let mut distinct = individual.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        if distinct.len() < n {
            continue;
        }
        if quantum == 0.0 {
            return world;
        }
        // --tie must matter somewhere for each method, and each method must both
        // keep and reject proposals.
        let interesting = [Method::Greedy, Method::Pruned(2)].iter().all(|&method| {
            let mut tie_matters = false;
            let (mut kept, mut rejected) = (false, false);
            for order in [Order::Sorted, Order::Given, Order::Random(7)] {
                let runs: Vec<Expected> = [true, false]
                    .iter()
                    .map(|&tie_accept| {
                        let rule = Rule { tie_accept, minimize: false };
                        world_reference(&world, method, order, rule)
                    })
                    .collect();
                tie_matters |= runs[0].steps != runs[1].steps;
                for r in &runs {
                    kept |= r.steps.iter().any(|s| s.2);
                    rejected |= r.steps.iter().any(|s| !s.2);
                }
            }
            tie_matters && kept && rejected
        });
        if interesting {
            return world;
        }
    }
    panic!("no suitable world among 500 seeds");
}

// ---------------------------------------------------------------------------
// 1. Brute force against the tool
// ---------------------------------------------------------------------------

#[test]
fn searches_match_brute_force_for_every_order_tie_rule_and_job_count() {
    let dir = common::tempdir();
    let mut world = find_world(6, 0.05);
    world.write(&dir.path().join("ingredients"), true);
    let mut configs = 0;
    let mut tie_changed = BTreeSet::new();
    // Evaluations started in the --jobs 4 runs beyond those the decisions need
    // (cancelled, or finished but stale): speculation at work.
    let mut wasted = 0;
    for method in [Method::Greedy, Method::Pruned(2)] {
        // The --jobs 1 runs of a method share a run directory, so they reuse one
        // another's evaluations from the journal (and the check that no member set
        // is evaluated twice spans them all); each --jobs 4 run starts afresh, so
        // that its speculative evaluations are real.
        let shared_run = dir.path().join(format!("{}-jobs1.run", method.name()));
        let shared_log = dir.path().join(format!("{}-jobs1.log", method.name()));
        for order in [Order::Sorted, Order::Given, Order::Random(7)] {
            let mut by_tie = Vec::new();
            for tie_accept in [true, false] {
                let rule = Rule { tie_accept, minimize: false };
                let want = world_reference(&world, method, order, rule);
                for jobs in [1, 4] {
                    let name = format!("{}-{order:?}-{tie_accept}-{jobs}", method.name());
                    let out = dir.path().join(&name);
                    let (run_dir, log) = if jobs == 1 {
                        (shared_run.clone(), shared_log.clone())
                    } else {
                        (
                            dir.path().join(format!("{name}.run")),
                            dir.path().join(format!("{name}.log")),
                        )
                    };
                    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
                    let mut args = search_args(&world, method, &out, &eval);
                    args.extend(order.args());
                    args.extend(rule.args());
                    args.extend(["--jobs".into(), jobs.to_string(), "--json".into()]);
                    args.extend(["--run-dir".into(), p(&run_dir)]);
                    let calls_before = calls(&log).len();
                    let run = soup_ok_in(dir.path(), &args);
                    let report = read_json(&run_dir.join("report.json"));
                    let stdout: Value = serde_json::from_slice(&run.stdout).unwrap();
                    assert_eq!(stdout, report, "--json prints the report");
                    check_report(&world, &report, &want, method, &name);
                    check_soup(&world, &out, &want.members, method.name());
                    let all = calls(&log);
                    let ends: Vec<&Call> = all.iter().filter(|c| c.event == "end").collect();
                    if jobs == 1 {
                        // No member set is evaluated twice (pruned's second pass
                        // and later runs reuse earlier evaluations from the journal).
                        let sets: BTreeSet<&Vec<String>> =
                            ends.iter().map(|c| &c.members).collect();
                        assert_eq!(sets.len(), ends.len(), "{name}: a set evaluated twice");
                        assert_eq!(journal(&run_dir).len(), ends.len(), "{name}");
                        if method == Method::Greedy {
                            // Every evaluation run is one evaluator call. (Pruned:
                            // see pruned_report_counts_the_uniform_evaluation.)
                            let new_ends = all[calls_before..].iter().filter(|c| c.event == "end");
                            assert_eq!(
                                report["evaluations"]["finished"],
                                new_ends.count(),
                                "{name}"
                            );
                        }
                    } else {
                        // Evaluations started (each makes its log files) against
                        // the member sets the decisions need.
                        let started = fs::read_dir(run_dir.join("logs"))
                            .unwrap()
                            .filter(|e| {
                                e.as_ref()
                                    .unwrap()
                                    .path()
                                    .extension()
                                    .is_some_and(|x| x == "stdout")
                            })
                            .count();
                        let mut needed: BTreeSet<Vec<usize>> =
                            (0..world.n()).map(|i| vec![i]).collect();
                        needed.extend(want.steps.iter().map(|s| s.0.clone()));
                        if want.uniform.is_some() {
                            needed.insert((0..world.n()).collect());
                        }
                        assert!(started >= needed.len(), "{name}: {started} < {}", needed.len());
                        wasted += started - needed.len();
                        // Honest accounting: every evaluation started (one log
                        // file each) either finished, and then is in the journal,
                        // or was cancelled.
                        let counts = &report["evaluations"];
                        let count = |key: &str| counts[key].as_u64().unwrap() as usize;
                        assert_eq!(count("started"), started, "{name}: {counts}");
                        assert_eq!(count("started"), count("finished") + count("cancelled"));
                        assert_eq!(count("journaled"), count("finished"), "{name}");
                        assert_eq!(journal(&run_dir).len(), count("finished"), "{name}");
                    }
                    configs += 1;
                }
                by_tie.push(want);
            }
            if by_tie[0].steps != by_tie[1].steps {
                tie_changed.insert(method.name());
            }
        }
    }
    assert_eq!(configs, 24);
    assert_eq!(tie_changed.len(), 2, "--tie made a difference for both methods");
    eprintln!("speculative evaluations discarded with --jobs 4: {wasted}");
    assert!(wasted > 0, "--jobs 4 never evaluated ahead");
}

#[test]
fn exact_scores_match_and_random_orders_differ_by_seed() {
    let dir = common::tempdir();
    let mut world = find_world(5, 0.0);
    world.write(dir.path(), false);
    let eval = world.eval("");
    for method in [Method::Greedy, Method::Pruned(3)] {
        // One run directory per method: the runs reuse one another's evaluations.
        let run_dir = dir.path().join(format!("{}.run", method.name()));
        for order in [Order::Sorted, Order::Random(1), Order::Random(2)] {
            let want = world_reference(&world, method, order, Rule::MAX);
            let name = format!("{}-{order:?}", method.name());
            let out = dir.path().join(&name);
            let mut args = search_args(&world, method, &out, &eval);
            args.extend(order.args());
            args.extend(["--run-dir".into(), p(&run_dir)]);
            soup_ok_in(dir.path(), &args);
            let report = read_json(&run_dir.join("report.json"));
            check_report(&world, &report, &want, method, &name);
            check_soup(&world, &out, &want.members, method.name());
        }
    }
    assert_ne!(shuffled(5, 1), shuffled(5, 2), "the seeds give different orders");
}

/// The report counts every evaluation it ran. Regression: before the fix, `soup pruned` leaves the
/// uniform soup's evaluation out of `evaluations.run` (and of report.md's
/// "Evaluations: N run"), since `Report::new` counts only the individual scores and
/// the steps.
#[test]
fn pruned_report_counts_the_uniform_evaluation() {
    let dir = common::tempdir();
    let mut world = find_world(4, 0.0);
    world.write(dir.path(), false);
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    let args = search_args(&world, Method::Pruned(1), &dir.path().join("soup"), &eval);
    soup_ok_in(dir.path(), &args);
    let ends = calls(&log).iter().filter(|c| c.event == "end").count();
    let report = read_json(&dir.path().join("soup.run/report.json"));
    assert_eq!(journal(&dir.path().join("soup.run")).len(), ends);
    assert_eq!(report["evaluations"]["finished"], ends, "evaluator calls vs evaluations.finished");
}

// ---------------------------------------------------------------------------
// 2. Faults
// ---------------------------------------------------------------------------

/// The journal record of the candidate with exactly these members.
fn record_of<'a>(records: &'a [Value], members: &[String]) -> &'a Value {
    records
        .iter()
        .find(|r| strings(&r["members"]) == members)
        .unwrap_or_else(|| panic!("no journal record for {members:?}"))
}

#[test]
fn failing_evaluations_are_recorded_and_the_search_goes_on() {
    let dir = common::tempdir();
    let mut world = find_world(6, 0.0);
    world.write(dir.path(), false);
    // in1 alone exits 3, in3 alone prints garbage; every candidate with in4 prints
    // NaN. (Hanging evaluators: hanging_evaluations_time_out_and_leave_nothing_running.)
    let eval = world.eval("--fault-alone in1=exit --fault-alone in3=garbage --fault in4=nan");
    let fails = |m: &[usize]| m == [1] || m == [3] || m.contains(&4);
    let score = |m: &[usize]| if fails(m) { None } else { Some(world.score(m)) };
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let args = search_args(&world, Method::Greedy, &out, &eval);
    let run = soup_ok_in(dir.path(), &args);

    let want = reference(6, &score, Method::Greedy, Order::Sorted, Rule::MAX).unwrap();
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &want, Method::Greedy, "faults");
    check_soup(&world, &out, &want.members, "greedy");

    let records = journal(&run_dir);
    let reason = |members: &[usize]| {
        record_of(&records, &world.label_set(members))["failure"].as_str().unwrap().to_owned()
    };
    assert_eq!(reason(&[1]), "exited with code 3");
    assert!(reason(&[3]).starts_with("no score:") && reason(&[3]).contains("`accuracy: 0.9`"));
    assert_eq!(reason(&[4]), "score is not finite: `nan`");

    // The failed step (adding in4) is in the report with its reason.
    let steps = report["steps"].as_array().unwrap();
    let failed: Vec<&Value> = steps.iter().filter(|s| s.get("error").is_some()).collect();
    assert_eq!(failed.len(), 1, "{steps:?}");
    assert!(failed[0]["error"].as_str().unwrap().contains("not finite"));
    assert_eq!(failed[0]["accepted"], false);
    let failures = want.individual.iter().chain(want.steps.iter().map(|s| &s.1));
    assert_eq!(count(&report, "failed"), failures.filter(|s| s.is_none()).count() as u64);
    let md = fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(md.contains("failed: score is not finite"), "{md}");
    let stderr = stderr_of(&run);
    assert!(stderr.contains("exited with code 3"), "{stderr}");
}

/// A hanging evaluation is stopped at the timeout with everything it started,
/// recorded as a failure, and the search goes on, for commands and servers
/// alike. Every candidate here hangs (the command also starts a background
/// child), and the individual scores are given with --scores, so every
/// evaluation times out however slow the machine is, and none that should not.
#[test]
fn hanging_evaluations_time_out_and_leave_nothing_running() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    let scores: serde_json::Map<String, Value> =
        (0..3).map(|i| (world.labels()[i].clone(), world.score(&[i]).into())).collect();
    let scores_file = dir.path().join("scores.json");
    fs::write(&scores_file, Value::Object(scores).to_string()).unwrap();
    let score = |m: &[usize]| (m.len() == 1).then(|| world.score(m));
    let want = reference(3, &score, Method::Greedy, Order::Sorted, Rule::MAX).unwrap();
    let hang = "--fault in0=hang --fault in1=hang --fault in2=hang";
    for server in [false, true] {
        let name = if server { "server" } else { "command" };
        let out = dir.path().join(name);
        let run_dir = dir.path().join(format!("{name}.run"));
        let mut args = search_args(&world, Method::Greedy, &out, &world.eval(hang));
        if server {
            args = with_server(args, &world.server(hang));
        }
        args.extend(["--scores".into(), p(&scores_file), "--timeout".into(), "2s".into()]);
        let run = soup_ok_in(dir.path(), &args);
        // Nothing soup started runs on: not the command, not its background
        // child (hang-CANDIDATE.pid), not a server.
        assert!(evaluators_end(&run_dir, Duration::from_secs(10)), "{name}: leftovers");

        let report = read_json(&run_dir.join("report.json"));
        check_report(&world, &report, &want, Method::Greedy, name);
        check_soup(&world, &out, &want.members, "greedy");
        let records = journal(&run_dir);
        assert_eq!(records.len(), want.steps.len(), "{name}: {records:?}");
        for record in &records {
            assert_eq!(record["failure"], "timed out after 2s", "{name}: {record}");
            let seconds = record["evaluate_seconds"].as_f64().unwrap();
            assert!((2.0..20.0).contains(&seconds), "{name}: cut at the timeout: {seconds}");
        }
        let stderr = stderr_of(&run);
        assert!(stderr.contains("timed out after 2s"), "{name}: {stderr}");
        let n = want.steps.len() as u64;
        let counts = ["started", "finished", "failed", "given"].map(|k| count(&report, k));
        assert_eq!(counts, [n, n, n, 3], "{name}: {report}");
        if server {
            // Each timeout stops the server; the next request starts another,
            // with logs of its own.
            assert_eq!(count(&report, "server_restarts"), n - 1, "{report}");
            for start in 1..=n {
                assert!(run_dir.join(format!("logs/server-0.{start}.stderr")).exists());
            }
        }
    }
}

#[test]
fn pruned_goes_on_past_failed_individual_evaluations() {
    let dir = common::tempdir();
    let mut world = find_world(5, 0.0);
    world.write(dir.path(), false);
    let eval = world.eval("--fault-alone in0=exit --fault-alone in3=garbage");
    let score = |m: &[usize]| if m == [0] || m == [3] { None } else { Some(world.score(m)) };
    let out = dir.path().join("soup");
    let args = search_args(&world, Method::Pruned(2), &out, &eval);
    soup_ok_in(dir.path(), &args);
    let want = reference(5, &score, Method::Pruned(2), Order::Sorted, Rule::MAX).unwrap();
    let report = read_json(&dir.path().join("soup.run/report.json"));
    check_report(&world, &report, &want, Method::Pruned(2), "pruned faults");
}

#[test]
fn no_scorable_ingredient_exits_1_without_a_soup() {
    let dir = common::tempdir();
    let mut world = find_world(4, 0.0);
    world.write(dir.path(), false);
    for (method, eval, message) in [
        (Method::Greedy, "echo 1; exit 1", "no ingredient could be scored"),
        (Method::Greedy, "echo nan", "no ingredient could be scored"),
        (Method::Greedy, "echo 'accuracy: 1'", "no ingredient could be scored"),
        (Method::Pruned(1), "exit 2", "the uniform soup could not be scored"),
    ] {
        let out = dir.path().join("soup");
        let args = search_args(&world, method, &out, eval);
        let run = soup_in(dir.path(), &args);
        assert_eq!(run.status.code(), Some(1), "{}", show(&args, &run));
        assert!(stderr_of(&run).contains(message), "{}", show(&args, &run));
        assert!(!out.exists(), "no soup is written");
        fs::remove_dir_all(dir.path().join("soup.run")).unwrap();
    }
}

// ---------------------------------------------------------------------------
// 3. Hostile paths
// ---------------------------------------------------------------------------

#[test]
fn paths_with_spaces_quotes_and_shell_metacharacters_work() {
    let dir = common::tempdir();
    let mut world = find_world(5, 0.0);
    let nasty = dir.path().join("it's a dir; $HOME `x` $(touch pwned-dir)");
    world.names = vec![
        "in0 it's".into(),
        "in1; touch pwned-semi".into(),
        "in2 $HOME $(touch pwned-dollar)".into(),
        "in3 `touch pwned-tick`".into(),
        "in4 \"q\" & x | y".into(),
    ];
    world.write(&nasty, true);
    let log = nasty.join("calls; $x.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    for method in [Method::Greedy, Method::Pruned(2)] {
        let out = nasty.join(format!("out put '{}'; $y $(touch pwned-out)", method.name()));
        let args = search_args(&world, method, &out, &eval);
        soup_ok_in(dir.path(), &args);
        let want = world_reference(&world, method, Order::Sorted, Rule::MAX);
        let run_dir =
            out.with_file_name(format!("{}.run", out.file_name().unwrap().to_str().unwrap()));
        let report = read_json(&run_dir.join("report.json"));
        check_report(&world, &report, &want, method, method.name());
        check_soup(&world, &out, &want.members, method.name());
    }
    // The evaluator saw the members' real names, and nothing was executed.
    let seen: BTreeSet<String> = calls(&log).into_iter().flat_map(|c| c.members).collect();
    assert_eq!(seen, world.names.iter().cloned().collect());
    for place in [dir.path(), nasty.as_path(), Path::new(env!("CARGO_MANIFEST_DIR"))] {
        for entry in fs::read_dir(place).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.starts_with("pwned"), "{name} was created in {}", place.display());
        }
    }
}

// ---------------------------------------------------------------------------
// 4. SIGKILL and resume; 5. a torn journal line
// ---------------------------------------------------------------------------

fn member_key(members: &[String]) -> BTreeSet<String> {
    members.iter().cloned().collect()
}

fn names_of(world: &World, labels: &[String]) -> BTreeSet<String> {
    labels
        .iter()
        .map(|l| {
            let i = world.labels().iter().position(|x| x == l).unwrap();
            world.names[i].clone()
        })
        .collect()
}

#[test]
fn a_killed_search_resumes_without_paying_twice() {
    let dir = common::tempdir();
    let mut world = find_world(6, 0.0);
    world.write(dir.path(), false);
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--sleep 0.3 --log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let args = search_args(&world, Method::Greedy, &out, &eval);

    // Kill it once the individual scores and a step or two are journaled.
    kill_after_journaled(dir.path(), &args, &run_dir, 8);
    // The evaluator running at the kill outlives soup; let it finish first.
    for call in calls(&log).iter().filter(|c| c.event == "start") {
        assert!(dies(call.pid, Duration::from_secs(20)), "evaluator {} still runs", call.pid);
    }
    let before = journal(&run_dir);
    assert!(before.len() >= 8 && before.len() < 11, "killed mid-run: {}", before.len());
    assert!(!out.exists(), "no soup yet");
    let journaled: BTreeSet<BTreeSet<String>> =
        before.iter().map(|r| names_of(&world, &strings(&r["members"]))).collect();
    let calls_before = calls(&log).len();

    let mut resume = args.clone();
    resume.push("--force".into());
    let run = soup_ok_in(dir.path(), &resume);
    let stderr = stderr_of(&run);
    assert!(stderr.contains(&format!("resuming: {} evaluations", before.len())), "{stderr}");

    // Nothing journaled before the kill was evaluated again.
    let after = calls(&log);
    for call in &after[calls_before..] {
        assert!(!journaled.contains(&member_key(&call.members)), "{call:?} evaluated again");
    }
    let records = journal(&run_dir);
    let sets: BTreeSet<BTreeSet<String>> =
        records.iter().map(|r| member_key(&strings(&r["members"]))).collect();
    assert_eq!(sets.len(), records.len(), "a set journaled twice");
    // At most the evaluation cut short by the kill ran twice.
    let ends = after.iter().filter(|c| c.event == "end").count();
    assert!(ends <= records.len() + 1, "{ends} evaluations for {} records", records.len());

    // Same result as an uninterrupted run.
    let want = world_reference(&world, Method::Greedy, Order::Sorted, Rule::MAX);
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &want, Method::Greedy, "resumed");
    let clean_out = dir.path().join("clean");
    let clean_args = search_args(&world, Method::Greedy, &clean_out, &world.eval(""));
    soup_ok_in(dir.path(), &clean_args);
    let clean = read_json(&dir.path().join("clean.run/report.json"));
    for key in ["members", "weights", "score", "individual_scores"] {
        assert_eq!(report[key], clean[key], "{key}");
    }
    let decisions = |r: &Value| -> Vec<(Value, Value)> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["members"].clone(), s["accepted"].clone()))
            .collect()
    };
    assert_eq!(decisions(&report), decisions(&clean));
    assert_eq!(read_output(&out), read_output(&clean_out), "the same soup, byte for byte");
    assert!(report["evaluations"]["reused"].as_u64().unwrap() >= before.len() as u64);
}

#[test]
fn a_torn_journal_line_is_ignored_and_its_evaluation_rerun() {
    let dir = common::tempdir();
    let mut world = find_world(5, 0.0);
    world.write(dir.path(), false);
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let mut args = search_args(&world, Method::Pruned(2), &out, &eval);
    soup_ok_in(dir.path(), &args);
    let first = read_json(&run_dir.join("report.json"));
    let records = journal(&run_dir);
    let torn = records.last().unwrap().clone();

    // Cut the last line in the middle, as a crash during the write would.
    let path = run_dir.join("journal.jsonl");
    let len = fs::metadata(&path).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 40).unwrap();
    drop(file);
    assert_eq!(journal(&run_dir).len(), records.len() - 1);

    let calls_before = calls(&log).len();
    args.push("--force".into());
    let run = soup_ok_in(dir.path(), &args);
    let stderr = stderr_of(&run);
    assert!(stderr.contains("warning: ignored 1 damaged line "), "{stderr}");
    let rerun: Vec<Call> =
        calls(&log)[calls_before..].iter().filter(|c| c.event == "end").cloned().collect();
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    assert_eq!(
        member_key(&rerun[0].members),
        names_of(&world, &strings(&torn["members"])),
        "the torn record's evaluation is the one re-run"
    );
    let second = read_json(&run_dir.join("report.json"));
    assert_eq!(second["evaluations"]["finished"], 1);
    for key in ["members", "weights", "score", "individual_scores"] {
        assert_eq!(first[key], second[key], "{key}");
    }
    assert_eq!(first["uniform"]["score"], second["uniform"]["score"]);
    assert_eq!(second["uniform"]["reused"], true, "the uniform soup came from the journal");
    // The first run's report is kept beside the new one, and linked from it.
    assert_eq!(read_json(&run_dir.join("report.1.json")), first, "history of reruns");
    let md = fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(md.contains("Earlier runs in this directory: report.1.md."), "{md}");
    assert!(run_dir.join("report.1.md").exists() && run_dir.join("search.1.svg").exists());
    let decisions = |r: &Value| -> Vec<(Value, Value, Value)> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["members"].clone(), s["score"].clone(), s["accepted"].clone()))
            .collect()
    };
    assert_eq!(decisions(&first), decisions(&second));
    // The journal is whole again: the fragment is a line of its own.
    let records_after = journal(&run_dir);
    assert_eq!(records_after.len(), records.len());
    let want = world_reference(&world, Method::Pruned(2), Order::Sorted, Rule::MAX);
    check_report(&world, &second, &want, Method::Pruned(2), "after the torn line");
}

// ---------------------------------------------------------------------------
// 6. Materialisation cost does not grow with the soup
// ---------------------------------------------------------------------------

/// A candidate is the running sum of the soup plus or minus one ingredient
/// (src/search/candidate.rs), so however many members it has, it reads the sum
/// and one ingredient, never the members already summed. Shown by overwriting
/// those members with NaN mid-search: with one job, every proposal kept
/// (`echo 1` scores all alike, `--tie accept`) and the given order, the candidates
/// come in a fixed order, and the evaluator of in0 + in1 + in2 (greedy-0010, after
/// the 8 individual evaluations and in0 + in1) overwrites the data of in0 and in1,
/// whose sum is on disk by then. Every later candidate, of 4 to 8 members, must
/// still be the mean of the original values; one that read in0 or in1 again (even
/// with weight 0: 0 · NaN is NaN) would hold NaN.
#[test]
fn a_candidate_reads_the_sum_and_one_ingredient_whatever_the_soup_size() {
    let dir = common::tempdir();
    let (rows, cols) = (48, 37);
    let mut rng = Rng::new(5);
    let base: Vec<f64> = (0..rows * cols).map(|_| rng.unit()).collect();
    let mut paths = Vec::new();
    let mut values: Vec<Vec<f32>> = Vec::new();
    for i in 0..8 {
        let v: Vec<f64> =
            base.iter().map(|b| b + 0.01 * i as f64 + 0.1 * (rng.unit() - 0.5)).collect();
        let path = dir.path().join(format!("in{i}.safetensors"));
        write_file(&path, &[RawTensor::float("w", Fmt::F32, &[rows, cols], &v)], true);
        let written = Fmt::F32.decode(&read_safetensors(&path).1["w"].2);
        values.push(written.iter().map(|&x| x as f32).collect());
        paths.push(p(&path));
    }
    let poison = dir.path().join("poison.py");
    fs::write(
        &poison,
        r"import os, struct, sys
for path in sys.argv[1:]:
    st = os.stat(path)
    with open(path, 'r+b') as f:
        (n,) = struct.unpack('<Q', f.read(8))
        size = f.seek(0, 2) - 8 - n
        f.seek(8 + n)
        f.write(b'\xff' * size)
    # The old modification time back, so soup's check for inputs changed while
    # read (size and mtime) lets the search go on: what it reads is the test.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
",
    )
    .unwrap();
    let eval = format!(
        "if [ $SOUP_CANDIDATE = greedy-0010 ]; then python3 -S {} {} {}; fi; echo 1",
        sh_quote(&p(&poison)),
        sh_quote(&paths[0]),
        sh_quote(&paths[1])
    );
    let out = dir.path().join("soup");
    let mut args = vec!["greedy".to_owned()];
    args.extend(paths.iter().cloned());
    args.extend(
        ["-o", &p(&out), "--eval", &eval, "--tie", "accept", "--order", "given"].map(String::from),
    );
    args.extend(["--keep-candidates", "-t", "2"].map(String::from));
    soup_ok_in(dir.path(), &args);
    let poisoned = Fmt::F32.decode(&read_safetensors(Path::new(&paths[0])).1["w"].2);
    assert!(poisoned.iter().all(|x| x.is_nan()), "in0 was overwritten");
    let run_dir = dir.path().join("soup.run");
    let report = read_json(&run_dir.join("report.json"));
    assert_eq!(report["members"].as_array().unwrap().len(), 8, "every ingredient kept");
    for k in 3..=8 {
        let id = format!("greedy-{:04}", 7 + k);
        let record = journal(&run_dir).into_iter().find(|r| r["candidate"] == id.as_str());
        let members = record.map(|r| strings(&r["members"]));
        assert_eq!(members.as_deref(), Some(&paths[..k]), "{id}");
        let got =
            Fmt::F32.decode(&read_output(&kept_candidate(&run_dir.join("scratch"), &id))["w"].2);
        for (e, g) in got.iter().enumerate() {
            let mean = (0..k).map(|m| f64::from(values[m][e])).sum::<f64>() / k as f64;
            let want = mean as f32;
            let ulps = ((*g as f32).to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 1, "{id} element {e}: {g} vs {want}: a summed member was read again");
        }
    }
}

// ---------------------------------------------------------------------------
// 7. Reports, --scores and --minimize
// ---------------------------------------------------------------------------

/// A candidate kept with --keep-candidates: `SCRATCH/PID/ID`.
fn kept_candidate(scratch: &Path, id: &str) -> PathBuf {
    fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().path().join(id))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("candidate {id} not kept under {}", scratch.display()))
}

#[test]
fn reports_have_every_field_and_the_soup_its_recipe() {
    let dir = common::tempdir();
    let mut world = find_world(5, 0.0);
    world.write(dir.path(), true);
    let eval = world.eval("");
    for method in [Method::Greedy, Method::Pruned(2)] {
        let out = dir.path().join(method.name());
        let run_dir = dir.path().join(format!("{}.run", method.name()));
        let mut args = search_args(&world, method, &out, &eval);
        args.push("--keep-candidates".into());
        soup_ok_in(dir.path(), &args);
        let report = read_json(&run_dir.join("report.json"));
        let want = world_reference(&world, method, Order::Sorted, Rule::MAX);
        check_report(&world, &report, &want, method, method.name());
        check_soup(&world, &out, &want.members, method.name());
        assert_eq!(report["evaluator"], eval);
        assert_eq!(report["minimize"], false);
        let labels = world.labels();
        for step in report["steps"].as_array().unwrap() {
            assert!(step["candidate"].is_string(), "{step}");
            assert!(step["score"].is_f64() != step.get("error").is_some(), "{step}");
            assert!(step["accepted"].is_boolean(), "{step}");
            assert!(strings(&step["members"]).iter().all(|m| labels.contains(m)), "{step}");
        }
        let best = want.individual.iter().map(|s| s.unwrap()).fold(f64::MIN, f64::max);
        assert_eq!(report["best_individual"]["score"].as_f64().unwrap(), best);
        assert_eq!(report["uniform"].is_null(), method == Method::Greedy);
        // The soup written at the end has exactly the bytes that were scored.
        let winner =
            match report["steps"].as_array().unwrap().iter().rfind(|s| s["accepted"] == true) {
                Some(step) => step["candidate"].as_str().unwrap().to_owned(),
                None => {
                    let start = journal(&run_dir)
                        .into_iter()
                        .find(|r| strings(&r["members"]) == strings(&report["members"]))
                        .unwrap();
                    start["candidate"].as_str().unwrap().to_owned()
                }
            };
        let scored = read_output(&kept_candidate(&run_dir.join("scratch"), &winner));
        assert_eq!(scored, read_output(&out), "{}: the soup is candidate {winner}", method.name());
        let md = fs::read_to_string(run_dir.join("report.md")).unwrap();
        assert!(md.contains(method.name()) && md.contains("best individual"), "{md}");
        for label in world.label_set(&want.members) {
            assert!(md.contains(&label), "{label} not in report.md");
        }
        // The figure: one mark per step, accepted ones filled, linked from report.md.
        assert!(md.contains("![score of every candidate](search.svg)"), "{md}");
        let svg = fs::read_to_string(run_dir.join("search.svg")).unwrap();
        let steps = report["steps"].as_array().unwrap();
        let accepted = steps.iter().filter(|s| s["accepted"] == true).count();
        assert_eq!(svg.matches("<circle class=\"accepted\"").count(), accepted, "{svg}");
        assert_eq!(svg.matches("<circle class=").count(), steps.len());
        assert!(svg.contains("best individual") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.contains("uniform soup"), method == Method::Pruned(2));
    }
    // A greedy search in a run directory where the uniform soup was evaluated
    // (by pruned, above) shows it, from the journal.
    let out = dir.path().join("greedy-again");
    let mut args = search_args(&world, Method::Greedy, &out, &eval);
    args.extend(["--run-dir".into(), p(&dir.path().join("pruned.run"))]);
    soup_ok_in(dir.path(), &args);
    let report = read_json(&dir.path().join("pruned.run/report.json"));
    assert_eq!(report["method"], "greedy");
    assert_eq!(report["uniform"]["reused"], true, "{report}");
    let md = fs::read_to_string(dir.path().join("pruned.run/report.md")).unwrap();
    assert!(md.contains("| uniform | ") && md.contains("(journal) | 5 |"), "{md}");
    assert!(dir.path().join("pruned.run/report.1.md").exists(), "the pruned report is kept");
}

#[test]
fn a_scores_file_skips_individual_evaluations() {
    let dir = common::tempdir();
    let mut world = find_world(5, 0.0);
    world.write(dir.path(), false);
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    let want = world_reference(&world, Method::Greedy, Order::Sorted, Rule::MAX);
    // Keyed by path as given, except one spelled differently (same file).
    let mut scores = serde_json::Map::new();
    for (i, s) in want.individual.iter().enumerate() {
        let key = if i == 2 {
            p(&dir.path().join(".").join(format!("{}.safetensors", world.names[i])))
        } else {
            world.labels()[i].clone()
        };
        scores.insert(key, s.unwrap().into());
    }
    let scores_file = dir.path().join("scores.json");
    fs::write(&scores_file, Value::Object(scores).to_string()).unwrap();
    let out = dir.path().join("soup");
    let mut args = search_args(&world, Method::Greedy, &out, &eval);
    args.extend(["--scores".into(), p(&scores_file)]);
    soup_ok_in(dir.path(), &args);
    let all = calls(&log);
    assert!(!all.is_empty());
    assert!(all.iter().all(|c| c.members.len() >= 2), "an ingredient was evaluated alone: {all:?}");
    let report = read_json(&dir.path().join("soup.run/report.json"));
    check_report(&world, &report, &want, Method::Greedy, "--scores");
    assert_eq!(report["evaluations"]["finished"], want.steps.len());
    assert_eq!(report["evaluations"]["given"], world.n());
    assert_eq!(report["evaluations"]["reused"], 0, "given scores are not reused ones");
}

#[test]
fn minimize_flips_the_comparison() {
    let dir = common::tempdir();
    let mut world = find_world(6, 0.0);
    world.write(dir.path(), false);
    // The evaluator prints +distance: lower is better.
    let eval = world.eval("--sign 1");
    // All runs share a run directory: they reuse one another's evaluations.
    let run_dir = dir.path().join("shared.run");
    for method in [Method::Greedy, Method::Pruned(2)] {
        for tie_accept in [true, false] {
            let max = Rule { tie_accept, minimize: false };
            let min = Rule { tie_accept, minimize: true };
            let want = world_reference(&world, method, Order::Sorted, max);
            let flipped =
                reference(6, &|m| Some(-world.score(m)), method, Order::Sorted, min).unwrap();
            assert_eq!(
                (&flipped.members, flipped.steps.iter().map(|s| s.2).collect::<Vec<_>>()),
                (&want.members, want.steps.iter().map(|s| s.2).collect::<Vec<_>>())
            );
            let name = format!("{}-{tie_accept}", method.name());
            let out = dir.path().join(&name);
            let mut args = search_args(&world, method, &out, &eval);
            args.extend(min.args());
            args.extend(["--run-dir".into(), p(&run_dir)]);
            soup_ok_in(dir.path(), &args);
            let report = read_json(&run_dir.join("report.json"));
            assert_eq!(report["minimize"], true);
            check_report(&world, &report, &flipped, method, &name);
            check_soup(&world, &out, &want.members, method.name());
            // The best individual is the one with the lowest printed score.
            let best = flipped.individual.iter().map(|s| s.unwrap()).fold(f64::MAX, f64::min);
            assert_eq!(report["best_individual"]["score"].as_f64().unwrap(), best);
        }
    }
    // Without --minimize the same evaluator drives the search the other way.
    let out = dir.path().join("maximised");
    let mut args = search_args(&world, Method::Greedy, &out, &eval);
    args.extend(["--run-dir".into(), p(&run_dir)]);
    soup_ok_in(dir.path(), &args);
    let wrong =
        reference(6, &|m| Some(-world.score(m)), Method::Greedy, Order::Sorted, Rule::MAX).unwrap();
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &wrong, Method::Greedy, "maximised distance");
}

// ---------------------------------------------------------------------------
// Regression tests for bugs these tests found (all fixed)
// ---------------------------------------------------------------------------

/// Every candidate id in a run directory names one candidate: it is the key of
/// its journal record, its log files and its scratch directory, and what the
/// report's steps point to. Regression: before the fix, `EvalScorer::new` numbers new candidates
/// from `journal.len() + 1`, but with `--jobs N` the ids of cancelled speculative
/// evaluations are never journaled, so the journal has gaps and the next run in
/// the same run directory (a resume after a kill, or another command) hands out
/// ids that are already in the journal, overwriting their logs.
#[test]
fn candidate_ids_stay_unique_in_a_reused_run_directory() {
    let dir = common::tempdir();
    // A huge quantum: every candidate scores 0, so with --tie accept every
    // proposal is kept. In the given order, greedy proposes adding in1, in2, in3
    // and in4 to in0, four at a time; the candidate in0 + in2 hangs until it is
    // stopped, so it is still running (or waiting to start) when in0 + in1 is
    // kept, and is cancelled whatever the timing: its id is taken, never journaled.
    let mut world = World::generate(0, 5, 1000.0);
    world.write(dir.path(), false);
    let run_dir = dir.path().join("soup.run");
    let mut args = search_args(
        &world,
        Method::Greedy,
        &dir.path().join("soup"),
        &world.eval("--fault-exactly in0,in2=hang"),
    );
    args.extend(["--jobs", "4", "--order", "given"].map(String::from));
    soup_ok_in(dir.path(), &args);
    let ids = |records: &[Value]| -> Vec<String> {
        records.iter().map(|r| r["candidate"].as_str().unwrap().to_owned()).collect()
    };
    let records = journal(&run_dir);
    assert!(
        records.iter().all(|r| strings(&r["members"]) != world.label_set(&[0, 2])),
        "precondition: in0 + in2 was cancelled, not journaled: {records:?}"
    );
    let first = ids(&records);
    let max: usize =
        first.iter().map(|id| id.rsplit('-').next().unwrap().parse().unwrap()).max().unwrap();
    assert!(max > first.len(), "precondition: cancelled speculative ids leave gaps: {first:?}");

    // Another search in the same run directory (another evaluator command).
    let mut args = search_args(&world, Method::Greedy, &dir.path().join("soup"), &world.eval(""));
    args.push("--force".into());
    soup_ok_in(dir.path(), &args);
    let all = ids(&journal(&run_dir));
    let mut seen = BTreeSet::new();
    let duplicates: Vec<&String> = all.iter().filter(|id| !seen.insert(*id)).collect();
    assert!(duplicates.is_empty(), "ids used twice in the journal: {duplicates:?} (all: {all:?})");
}

/// docs/EVALUATOR.md: the other keys of a JSON score line "are kept as extra
/// metrics and shown in the search's report". Regression: before the fix, they are journaled, but
/// neither report.json nor report.md has them.
#[test]
fn evaluator_metrics_are_shown_in_the_report() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    soup_ok_in(dir.path(), &search_args(&world, Method::Greedy, &out, &world.eval("--metrics")));
    let records = journal(&run_dir);
    assert!(records.iter().all(|r| r["metrics"]["distance"].is_f64()), "journaled: {records:?}");
    let json = fs::read_to_string(run_dir.join("report.json")).unwrap();
    let md = fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(json.contains("\"distance\""), "report.json has no metrics:\n{json}");
    assert!(md.contains("distance"), "report.md has no metrics:\n{md}");
}

/// The running sums in the scratch directory (an f64 copy of the model for f32
/// ingredients: twice the model's size, and two of them at a time) are removed
/// when a search ends. Regression: before the fix, after a SIGKILL they stay behind
/// (`scratch/sum-<pid>-<n>`), and the resumed run, which has another pid, never
/// removes them, so every kill leaks up to four models' worth of disk.
#[test]
fn a_resumed_run_leaves_no_stale_scratch() {
    let dir = common::tempdir();
    // Every proposal is kept (all scores 0, --tie accept), so sums are written.
    let mut world = World::generate(0, 4, 1000.0);
    world.write(dir.path(), false);
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--sleep 0.2 --log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let mut args = search_args(&world, Method::Greedy, &out, &eval);
    args.extend(["--order".into(), "given".into()]);
    // 4 individual scores and 2 accepted steps: two sums are on disk.
    kill_after_journaled(dir.path(), &args, &run_dir, 6);
    for call in calls(&log).iter().filter(|c| c.event == "start") {
        assert!(dies(call.pid, Duration::from_secs(20)), "evaluator {} still runs", call.pid);
    }
    args.push("--force".into());
    soup_ok_in(dir.path(), &args);
    let left: Vec<String> = fs::read_dir(run_dir.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.is_empty(), "left in scratch after the resumed run: {left:?}");
}

/// A base model for `world`: the target shifted by 0.3, as stored (f32).
fn write_base(world: &World, dir: &Path) -> (PathBuf, Vec<f64>) {
    let values: Vec<f64> = world.target.iter().map(|t| f64::from((t + 0.3) as f32)).collect();
    let base = dir.join("base.safetensors");
    let tensors = vec![
        RawTensor::float("a.weight", Fmt::F32, &[16, 16], &values[..SPLIT]),
        RawTensor::raw("step", "I64", &[1], 1234i64.to_le_bytes().to_vec()),
        RawTensor::float("b.bias", Fmt::F32, &[ELEMENTS - SPLIT], &values[SPLIT..]),
    ];
    write_file(&base, &tensors, true);
    (base, values)
}

/// With `--base` and `--lambda`, every candidate and the final soup are
/// `θ₀ + λ·(mean − θ₀)`: the search runs over task vectors, and its recipe is task
/// arithmetic that replays byte for byte.
#[test]
fn a_search_over_task_vectors_scales_every_candidate_toward_the_base() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    let (base, base_values) = write_base(&world, dir.path());
    let out = dir.path().join("soup");
    let mut args = search_args(&world, Method::Greedy, &out, &world.eval(""));
    args.extend(["--base".into(), p(&base), "--lambda".into(), "0.5".into()]);
    soup_ok_in(dir.path(), &args);

    let report = read_json(&dir.path().join("soup.run/report.json"));
    let members: Vec<usize> = strings(&report["members"])
        .iter()
        .map(|m| world.labels().iter().position(|l| l == m).unwrap())
        .collect();
    let tensors = read_output(&out);
    let mut got = Fmt::F32.decode(&tensors["a.weight"].2);
    got.extend(Fmt::F32.decode(&tensors["b.bias"].2));
    for (e, g) in got.iter().enumerate() {
        let mean: f64 = members.iter().map(|&m| f64::from(world.values[m][e])).sum::<f64>()
            / members.len() as f64;
        let want = (base_values[e] + 0.5 * (mean - base_values[e])) as f32;
        let ulps = ((*g as f32).to_bits() as i64 - want.to_bits() as i64).abs();
        assert!(ulps <= 1, "element {e}: {g} vs {want}");
    }
    let (metadata, _) = read_safetensors(&out.join("model.safetensors"));
    let recipe: Value = serde_json::from_str(&metadata["modelsoup.recipe"]).unwrap();
    assert_eq!(recipe["method"], "task-arithmetic");
    assert_eq!(recipe["base"]["path"], p(&base));
    assert_eq!(recipe["parameters"]["lambda"], 0.5);
    assert_recipe_replays(&out);
    // The journal keys name the base, so a plain search never reuses these scores.
    let keyed = journal(&dir.path().join("soup.run"))
        .iter()
        .all(|r| strings(&r["members"]).iter().any(|m| m.starts_with("base:")));
    assert!(keyed, "every journal record names the base");
}

/// A learned soup over task vectors records task arithmetic with its learned
/// weights, which replays byte for byte.
#[test]
fn a_learned_search_over_task_vectors_records_a_replayable_recipe() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    let (base, _) = write_base(&world, dir.path());
    let out = dir.path().join("learned");
    let mut args: Vec<String> = vec!["learned".into()];
    args.extend(world.labels());
    args.extend(["-o".into(), p(&out), "--eval".into(), world.eval("")]);
    args.extend(["--budget".into(), "8".into(), "--base".into(), p(&base)]);
    args.extend(["--lambda".into(), "0.7".into()]);
    soup_ok_in(dir.path(), &args);
    let (metadata, _) = read_safetensors(&out.join("model.safetensors"));
    let recipe: Value = serde_json::from_str(&metadata["modelsoup.recipe"]).unwrap();
    assert_eq!(recipe["method"], "task-arithmetic");
    assert_eq!(recipe["search"], "learned");
    assert_eq!(recipe["parameters"]["lambda"], 0.7);
    assert_eq!(recipe["parameters"]["normalize"], false);
    assert_recipe_replays(&out);
}

// ---------------------------------------------------------------------------
// 6. Evaluation servers, devices and stopping
// ---------------------------------------------------------------------------

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evaluators/distance_server.py");
const PYTHON_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

impl World {
    /// The --eval-server command: tests/evaluators/distance_server.py with this
    /// world's target and quantum (modelsoup.server from the source tree).
    fn server(&self, extra: &str) -> String {
        format!(
            "PYTHONPATH={} exec python3 -S {} {} --quantum {} {extra}",
            sh_quote(PYTHON_DIR),
            sh_quote(SERVER),
            sh_quote(&p(&self.target_file)),
            self.quantum
        )
    }
}

/// `args` with `--eval TEMPLATE` replaced by `--eval-server COMMAND`.
fn with_server(mut args: Vec<String>, command: &str) -> Vec<String> {
    let at = args.iter().position(|a| a == "--eval").unwrap();
    args[at] = "--eval-server".into();
    args[at + 1] = command.into();
    args
}

fn count(report: &Value, key: &str) -> u64 {
    report["evaluations"][key].as_u64().unwrap_or_else(|| panic!("no {key}: {report}"))
}

#[test]
fn a_server_scores_like_the_command_and_stays_warm() {
    let dir = common::tempdir();
    let mut world = find_world(6, 0.0);
    world.write(dir.path(), false);
    let (log, starts) = (dir.path().join("calls.log"), dir.path().join("starts"));
    let server =
        world.server(&format!("--log {} --starts {}", sh_quote(&p(&log)), sh_quote(&p(&starts))));
    for method in [Method::Greedy, Method::Pruned(2)] {
        let out = dir.path().join(method.name());
        let mut args = with_server(search_args(&world, method, &out, "unused"), &server);
        args.extend(["--jobs".into(), "2".into()]);
        fs::write(&starts, "").unwrap();
        soup_ok_in(dir.path(), &args);
        let want = world_reference(&world, method, Order::Sorted, Rule::MAX);
        let run_dir = dir.path().join(format!("{}.run", method.name()));
        let report = read_json(&run_dir.join("report.json"));
        check_report(&world, &report, &want, method, method.name());
        check_soup(&world, &out, &want.members, method.name());
        // Warm: one server per slot for the whole search, plus a restart for
        // each speculative evaluation cancelled while it ran.
        check_server_starts(&run_dir, &starts, &report);
        assert_eq!(
            count(&report, "started"),
            count(&report, "finished") + count(&report, "cancelled")
        );
        // Results are journaled under the server command, metrics included.
        let records = journal(&run_dir);
        assert_eq!(records.len() as u64, count(&report, "journaled"));
        assert!(records.iter().all(|r| r["evaluator"] == format!("--eval-server {server}")));
        assert!(records.iter().all(|r| r["metrics"]["distance"].is_f64()), "{records:?}");
    }
}

/// Checks that `server_restarts` counts every server start after a slot's first,
/// and that only cancelled evaluations caused them. soup gives each start its own
/// logs (`server-SLOT.N`, N = 1, 2, … per slot); each server that got as far as
/// its first line appended `PID SLOT DEVICES STDERR-LOG` to `starts`
/// (distance_server.py --starts), which ties every process that ran to one of
/// those starts. A server stopped before that line (its evaluation cancelled while
/// it was still starting, as happens under load) wrote nothing at all.
fn check_server_starts(run_dir: &Path, starts: &Path, report: &Value) {
    let mut logs: BTreeMap<String, String> = BTreeMap::new();
    for entry in fs::read_dir(run_dir.join("logs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_prefix("server-").and_then(|n| n.strip_suffix(".stderr")) {
            let text = |ext: &str| {
                fs::read_to_string(run_dir.join("logs").join(format!("server-{stem}.{ext}")))
            };
            logs.insert(stem.to_owned(), text("stdout").unwrap() + &text("stderr").unwrap());
        }
    }
    let mut per_slot: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for stem in logs.keys() {
        let (slot, n) = stem.split_once('.').unwrap();
        per_slot.entry(slot).or_default().push(n.parse().unwrap());
    }
    assert!(per_slot.keys().all(|s| ["0", "1"].contains(s)), "{logs:?}");
    for (slot, mut numbers) in per_slot.clone() {
        numbers.sort();
        assert_eq!(numbers, (1..=numbers.len()).collect::<Vec<_>>(), "slot {slot}: {logs:?}");
    }
    let restarts = count(report, "server_restarts") as usize;
    assert_eq!(logs.len(), per_slot.len() + restarts, "{logs:?}\n{report}");
    assert!(restarts as u64 <= count(report, "cancelled"), "{report}");
    let started = fs::read_to_string(starts).unwrap();
    let mut ran = BTreeSet::new();
    for line in started.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let stem = f[3].strip_prefix("server-").and_then(|n| n.strip_suffix(".stderr"));
        let stem = stem.unwrap_or_else(|| panic!("{line}"));
        assert_eq!(stem.split_once('.').map(|s| s.0), Some(f[1]), "{line}");
        assert!(logs.contains_key(stem), "a start soup did not count: {line}\n{logs:?}");
        assert!(ran.insert(stem), "two servers for one start: {started}");
    }
    for (stem, text) in &logs {
        assert!(ran.contains(stem.as_str()) || text.is_empty(), "server-{stem} ran: {text}");
    }
}

#[test]
fn server_failures_fail_one_evaluation_and_restart_the_server() {
    let dir = common::tempdir();
    let mut world = find_world(6, 0.0);
    world.write(dir.path(), false);
    let starts = dir.path().join("starts");
    // Candidates with in1 kill the server, with in3 make score_fn raise; those
    // with in5 print noise before their reply. (A hanging server:
    // hanging_evaluations_time_out_and_leave_nothing_running.)
    let server = world.server(&format!(
        "--starts {} --fault in1=exit --fault in3=error --fault in5=noise",
        sh_quote(&p(&starts))
    ));
    let fails = |m: &[usize]| m.contains(&1) || m.contains(&3);
    let score = |m: &[usize]| if fails(m) { None } else { Some(world.score(m)) };
    let out = dir.path().join("soup");
    let run_dir = dir.path().join("soup.run");
    let args = with_server(search_args(&world, Method::Greedy, &out, "unused"), &server);
    let run = soup_ok_in(dir.path(), &args);
    let want = reference(6, &score, Method::Greedy, Order::Sorted, Rule::MAX).unwrap();
    let report = read_json(&run_dir.join("report.json"));
    check_report(&world, &report, &want, Method::Greedy, "server faults");
    check_soup(&world, &out, &want.members, "greedy");

    let records = journal(&run_dir);
    let reason = |members: &[usize]| {
        record_of(&records, &world.label_set(members))["failure"].as_str().unwrap().to_owned()
    };
    assert_eq!(reason(&[1]), "the evaluation server exited with code 3");
    assert_eq!(reason(&[3]), "the evaluation server says: ValueError: cannot score in3");
    // Each death costs one restart (in1 alone, then every step with in1); an
    // error reply none.
    let restarts = count(&report, "server_restarts");
    let deaths = want.steps.iter().filter(|(m, _, _)| m.contains(&1)).count();
    assert_eq!(restarts as usize, 1 + deaths, "{report}");
    assert_eq!(fs::read_to_string(&starts).unwrap().lines().count() as u64, restarts + 1);
    // The tail of the server's stderr is shown for a failure: the traceback.
    let stderr = stderr_of(&run);
    assert!(stderr.contains("ValueError: cannot score in3\n"), "{stderr}");
    assert!(stderr.contains("| giving up on"), "{stderr}");
    // Not a terminal: plain lines, one as each evaluation starts.
    assert!(stderr.contains("  started greedy-0001 ("), "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains("\u{1b}["), "no live lines: {stderr}");
    let md = fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(md.contains("evaluation servers restarted"), "{md}");
    // What score_fn prints goes to the server's stderr, never among the replies.
    let logs = |ext: &str| -> String {
        fs::read_dir(run_dir.join("logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|x| x.to_str().unwrap().ends_with(ext) && p(x).contains("/server-"))
            .map(|x| fs::read_to_string(x).unwrap())
            .collect()
    };
    assert!(logs(".stderr").contains("progress: 100%"), "{}", logs(".stderr"));
    assert!(!logs(".stdout").contains("progress") && logs(".stdout").contains("\"score\""));
}

#[test]
fn only_a_reply_naming_the_candidate_answers_it() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    // A server in sh: noise, a reply for another candidate, then the answer.
    let server = r#"while read -r line; do
        id=$(printf '%s' "$line" | sed 's/^{"candidate":"\([^"]*\)".*/\1/')
        echo "loading $id"; echo '{"candidate": "someone-else", "score": 9}'
        printf '{"candidate": "%s", "score": 0.5, "note": "ok"}\n' "$id"
    done"#;
    let out = dir.path().join("soup");
    let args = with_server(search_args(&world, Method::Greedy, &out, "unused"), server);
    soup_ok_in(dir.path(), &args);
    let report = read_json(&dir.path().join("soup.run/report.json"));
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["score"] == 0.5 && s["metrics"]["note"] == "ok"), "{steps:?}");
    assert_eq!(strings(&report["members"]).len(), 3, "ties are accepted");
    let log = fs::read_to_string(dir.path().join("soup.run/logs/server-0.1.stdout")).unwrap();
    assert!(log.contains("loading greedy-0001\n") && log.contains("someone-else"), "{log}");
}

#[test]
fn the_journal_key_shares_results_between_eval_and_eval_server_only_when_declared() {
    let dir = common::tempdir();
    let mut world = find_world(4, 0.0);
    world.write(dir.path(), false);
    let log = dir.path().join("calls.log");
    let eval = world.eval(&format!("--log {}", sh_quote(&p(&log))));
    let server = world.server(&format!("--log {}", sh_quote(&p(&log))));
    let out = dir.path().join("soup");
    let args = search_args(&world, Method::Greedy, &out, &eval);
    let keyed =
        |args: Vec<String>| [args, vec!["--journal-key".into(), "distance v1".into()]].concat();
    soup_ok_in(dir.path(), &keyed(args.clone()));
    let first = ends(&log);
    // The same key: everything comes from the journal.
    let served = [with_server(args.clone(), &server), vec!["--force".into()]].concat();
    soup_ok_in(dir.path(), &keyed(served.clone()));
    assert_eq!(ends(&log), first, "a declared twin re-evaluated something");
    let report = read_json(&dir.path().join("soup.run/report.json"));
    assert_eq!((count(&report, "started"), count(&report, "reused")), (0, first as u64));
    // Without the key, the server is another evaluator: all of it runs again.
    soup_ok_in(dir.path(), &served);
    assert_eq!(ends(&log), 2 * first);
    let records = journal(&dir.path().join("soup.run"));
    let keys: BTreeSet<&str> = records.iter().map(|r| r["evaluator"].as_str().unwrap()).collect();
    assert_eq!(keys, BTreeSet::from(["distance v1", &*format!("--eval-server {server}")]));
}

#[test]
fn devices_give_each_job_its_own_slot() {
    let dir = common::tempdir();
    let mut world = find_world(6, 0.0);
    world.write(dir.path(), false);
    let slots = dir.path().join("slots.log");
    // Every evaluation logs its slot, devices and candidate when it starts and
    // when its shell exits, including when soup stops it (a speculative
    // evaluation made stale): the shell traps SIGTERM and exits, which runs its
    // EXIT trap. soup gives a slot back only once the evaluation's whole process
    // group has ended, so a slot's end line always comes before the next start.
    let eval = format!(
        "mark() {{ echo \"$1 {{slot}} {{devices}} $SOUP_SLOT $CUDA_VISIBLE_DEVICES \
         $SOUP_CANDIDATE\" >> {}; }}; trap 'mark end' EXIT; trap 'exit 143' TERM; \
         mark start; {} --sleep 0.2",
        sh_quote(&p(&slots)),
        world.eval("")
    );
    let out = dir.path().join("soup");
    let mut args = search_args(&world, Method::Greedy, &out, &eval);
    args.extend(["--devices".into(), "0:1,2".into()]);
    soup_ok_in(dir.path(), &args);
    let want = world_reference(&world, Method::Greedy, Order::Sorted, Rule::MAX);
    check_soup(&world, &out, &want.members, "greedy");
    let text = fs::read_to_string(&slots).unwrap();
    let mut holder: [Option<&str>; 2] = [None, None];
    let mut started = BTreeSet::new();
    let mut used = [0, 0];
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let slot: usize = f[1].parse().unwrap();
        let devices = ["0", "1,2"][slot];
        assert_eq!(f[1..5], [f[1], devices, f[1], devices], "{line}");
        let candidate = f[5];
        match f[0] {
            "start" => {
                assert_eq!(holder[slot], None, "slot {slot} used twice at once:\n{text}");
                holder[slot] = Some(candidate);
                assert!(started.insert(candidate), "{candidate} started twice:\n{text}");
                used[slot] += 1;
            }
            // An evaluation stopped before it logged its start ends without one,
            // still holding its slot.
            _ if !started.contains(candidate) => {
                assert_eq!(holder[slot], None, "slot {slot} used twice at once:\n{text}");
            }
            _ => {
                assert_eq!(holder[slot], Some(candidate), "{line} ends another's slot:\n{text}");
                holder[slot] = None;
            }
        }
    }
    assert_eq!(holder, [None, None], "every evaluation ended:\n{text}");
    assert!(used[0] > 0 && used[1] > 0, "--devices implies two jobs: {used:?}");
    // --devices sets the number of jobs, so --jobs cannot be given too.
    let err = soup_in(dir.path(), &[args, vec!["--jobs".into(), "3".into()]].concat());
    assert_eq!(err.status.code(), Some(2));
    let mut bad = search_args(&world, Method::Greedy, &out, "echo 1 {devices}");
    bad.push("--force".into());
    let err = soup_in(dir.path(), &bad);
    assert!(stderr_of(&err).contains("--devices"), "{}", stderr_of(&err));
}

fn pid_in(file: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(pid) = fs::read_to_string(file).unwrap_or_default().trim().parse() {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn evaluators_end_when_soup_is_killed() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    for server in [false, true] {
        let pid_file = dir.path().join(format!("evaluator-{server}.pid"));
        // `exec` keeps the pid: the evaluator is soup's own child.
        let command = format!("echo $$ > {}; exec sleep 600", sh_quote(&p(&pid_file)));
        let out = dir.path().join(format!("soup-{server}"));
        let mut args = search_args(&world, Method::Greedy, &out, &command);
        if server {
            args = with_server(args, &command);
        }
        let mut soup = start_until(dir.path(), &args, &pid_file);
        let pid = pid_in(&pid_file);
        soup.kill().unwrap(); // SIGKILL: soup cannot stop anything itself
        soup.wait().unwrap();
        assert!(
            dies(pid, Duration::from_secs(10)),
            "evaluator {pid} outlived soup (server: {server})"
        );
    }
}

#[test]
fn ctrl_c_stops_evaluations_gracefully() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    let (ready, cleaned) = (dir.path().join("ready"), dir.path().join("cleaned"));
    fs::create_dir(&ready).unwrap();
    // The evaluator needs 300 ms to clean up after SIGTERM.
    let eval = format!(
        "trap 'sleep 0.3; echo $SOUP_CANDIDATE >> {}; exit 1' TERM; touch {}/$SOUP_CANDIDATE; sleep 600 & wait",
        sh_quote(&p(&cleaned)),
        sh_quote(&p(&ready))
    );
    let out = dir.path().join("soup");
    let mut args = search_args(&world, Method::Greedy, &out, &eval);
    args.extend(["--jobs".into(), "3".into()]);
    let soup = start_until(dir.path(), &args, &ready);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_dir(&ready).unwrap().count() < 3 {
        assert!(Instant::now() < deadline, "the three evaluations did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupt = |soup: std::process::Child| {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(soup.id() as i32).unwrap(),
            rustix::process::Signal::INT,
        )
        .unwrap();
        let out = soup.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    };
    interrupt(soup);
    let cleaned = fs::read_to_string(&cleaned).unwrap_or_default();
    assert_eq!(cleaned.lines().count(), 3, "every running evaluation cleaned up: {cleaned:?}");
    assert!(journal(&dir.path().join("soup.run")).is_empty(), "nothing cancelled is journaled");

    // A server is stopped the same way, and the reference server (serve())
    // turns SIGTERM into SystemExit, so its clean-up runs (distance_server.py
    // --trap). It is serving once its score_fn has logged the candidate's start.
    let (log, trap) = (dir.path().join("served.log"), dir.path().join("trap"));
    let server = world.server(&format!(
        "--log {} --trap {} --fault in0=hang --fault in1=hang --fault in2=hang",
        sh_quote(&p(&log)),
        sh_quote(&p(&trap))
    ));
    let out = dir.path().join("served");
    let args = with_server(search_args(&world, Method::Greedy, &out, "unused"), &server);
    interrupt(start_until(dir.path(), &args, &log));
    assert_eq!(fs::read_to_string(&trap).unwrap_or_default(), "term\n", "the server cleaned up");
    assert!(journal(&dir.path().join("served.run")).is_empty(), "nothing cancelled is journaled");
}

#[test]
fn a_terminal_gets_live_status_lines() {
    let dir = common::tempdir();
    let mut world = find_world(3, 0.0);
    world.write(dir.path(), false);
    let out = dir.path().join("soup");
    let mut args = search_args(&world, Method::Greedy, &out, &world.eval("--sleep 0.6"));
    args.extend(["--jobs".into(), "2".into()]);
    // `script` (util-linux) runs soup on a pseudo-terminal.
    let command: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_soup").to_owned())
        .chain(args)
        .map(|a| sh_quote(&a))
        .collect();
    let run = std::process::Command::new("script")
        .args(["-qec", &command.join(" "), "/dev/null"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs a command on a terminal");
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}");
    // The summary line and one line per running evaluation, with elapsed time.
    assert!(text.contains("best none yet · 0/5 evaluations"), "{text}");
    assert!(text.contains("2 running"), "{text}");
    assert!(text.contains("greedy-0001 (") && text.contains("ETA "), "{text}");
    assert!(!text.contains("  started greedy-"), "plain lines are for pipes: {text}");
    check_soup(
        &world,
        &out,
        &world_reference(&world, Method::Greedy, Order::Sorted, Rule::MAX).members,
        "greedy",
    );
}
