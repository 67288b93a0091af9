//! `soup greedy` and `soup pruned`: searches scored by the user's evaluator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use modelsoup::engine::plan;
use modelsoup::search::bench::Model;
use modelsoup::search::candidate::{Base, Change, Kitchen};
use modelsoup::search::evaluate::{Evaluate, Evaluator, GRAD_PLACEHOLDER};
use modelsoup::search::journal::Journal;
use modelsoup::search::report::{format_score, Report, SuiteReport};
use modelsoup::search::score_file::ScoreFile;
use modelsoup::search::scorer::{Counts, EvalScorer, Event};
use modelsoup::search::sequential::{
    greedy_order, score_individuals, Finish, Policy, Scored, Scorer, Search, Step, Tie,
};
use modelsoup::search::server::Server;
use modelsoup::search::suite::Suite;
use modelsoup::search::table::Table;
use modelsoup::{Checkpoint, Destination, NonFloatPolicy, Recipe};

use super::args::{NonFloat, Order, SearchArgs, TieArg};
use super::merge::{ingredient_from, recorded_path};
use super::status::Status;
use super::text::plural;
use super::{evaluate, learned, search_svg, Exit};

/// Which search to run.
#[derive(Debug, Clone, Copy)]
pub enum Method {
    /// Add ingredients best first.
    Greedy,
    /// Remove ingredients from the uniform soup, for up to this many passes.
    Pruned { passes: usize },
    /// Search mixing coefficients with CMA-ES.
    Learned(learned::Settings),
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Greedy => "greedy",
            Method::Pruned { .. } => "pruned",
            Method::Learned(_) => "learned",
        }
    }
}

/// Runs a search end to end: individual scores, the search, the final soup, the
/// reports.
pub fn run(args: &SearchArgs, method: Method, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let score_file = match &args.score_file {
        Some(pattern) => Some(ScoreFile::new(pattern, &args.score)?),
        None => None,
    };
    let report_suite = args.report_suite.as_deref().map(Suite::load).transpose()?;
    let labels: Vec<String> = args.ingredients.iter().map(|p| p.display().to_string()).collect();
    let recorded_labels: Vec<String> = args.ingredients.iter().map(|p| recorded_path(p)).collect();
    let base = match &args.base {
        Some(path) => {
            let base = ingredient_from(path, &args.read, false, None)?;
            Some(base.open(None).context("base model")?)
        }
        None => None,
    };
    let ingredients = modelsoup::engine::tied::reconcile(&super::merge::open_all(
        &args.ingredients,
        &args.read,
        base.as_ref(),
    )?);
    plan::check_compatible(&ingredients)?;
    // A search reads its ingredients' bytes only when it writes a soup, after
    // evaluations have been paid for: check PyTorch files whole before the first.
    for ck in base.iter().chain(&ingredients) {
        ck.verify()?;
    }
    super::merge::warn_repeated(&ingredients, &labels);
    let run_dir = args.run_dir.clone().unwrap_or_else(|| sibling_with_suffix(&args.output, ".run"));
    // Output and run directory checked and locked before anything is paid for.
    let _locks = super::guard::search(
        &args.output,
        &run_dir,
        args.write.file.force,
        &ingredients,
        args.quiet,
    )?;
    super::init_check::warn_if_independent(&ingredients, &labels, args.write.no_init_check);
    let (journal, stats) = Journal::open(&run_dir)?;
    let running = evaluate::Running {
        jobs: args.jobs,
        devices: args.devices.as_deref(),
        timeout: args.timeout,
        retries: args.retries,
        stop_signal: args.stop_signal,
        kill_grace: args.kill_grace,
    };
    let options = running.options()?;
    let jobs = options.slots.len();
    let status = Status::new(args.quiet, args.minimize, jobs);
    let say = |line: String| status.say(&line);
    if stats.damaged() > 0 {
        let lines = plural(stats.damaged(), "damaged line");
        say(format!("warning: ignored {lines} in {}", journal.path().display()));
    }
    if !journal.is_empty() {
        let records = plural(journal.len(), "evaluation");
        say(format!("resuming: {records} in {}", journal.path().display()));
    }
    let evaluator: Box<dyn Evaluate> = match (&args.eval, &args.eval_server) {
        (Some(template), None) => {
            let evaluator = Evaluator::new(template, &run_dir, options)?;
            Box::new(match score_file {
                Some(file) => evaluator.with_score_file(file),
                None => evaluator,
            })
        }
        (None, Some(template)) => Box::new(Server::new(template, &run_dir, options)?),
        _ => bail!("give one of --eval and --eval-server"),
    };
    let kitchen = kitchen(args, ingredients, base, &run_dir)?;
    let observer = |event: Event<'_>| status.event(event);
    let mut scorer =
        EvalScorer::new(&kitchen, evaluator.as_ref(), &journal, labels.clone(), method.name());
    if let Some(key) = &args.journal_key {
        scorer.template.clone_from(key);
    }
    scorer.keep_candidates = args.keep_candidates;
    if let Method::Learned(learned::Settings { gradient: Some(gradient), .. }) = method {
        scorer.temperature = gradient.temperature;
    } else if args.eval.as_deref().is_some_and(|t| t.contains(GRAD_PLACEHOLDER)) {
        bail!("--eval uses {GRAD_PLACEHOLDER}, which only `soup learned --gradient` fills in");
    }
    scorer.retry_failures = args.retries > 0;
    scorer.observer = Some(&observer);
    let policy = Policy {
        minimize: args.minimize,
        tie: match args.tie {
            TieArg::Accept => Tie::Accept,
            TieArg::Reject => Tie::Reject,
        },
        jobs,
    };

    let known = match &args.scores {
        Some(file) => read_scores(file, &labels, &say)?,
        None => vec![None; labels.len()],
    };
    let to_score = known.iter().filter(|k| k.is_none()).count();
    if let Method::Learned(settings) = method {
        // Fail before paying for anything when the baselines alone use the budget.
        let baselines = to_score + usize::from(settings.init_greedy);
        if let Some(budget) = settings.budget().filter(|&budget| budget <= baselines) {
            anyhow::bail!(
                "--budget {budget} is used up by the {baselines} evaluations before the search \
                 (individual scores{}): raise it, or give --scores",
                if settings.init_greedy { ", greedy soup" } else { "" }
            );
        }
    }
    // What the ETA counts: greedy proposes every other ingredient once, pruned
    // at least one pass over the uniform soup, learned spends its budget.
    let n = labels.len();
    status.expect(Some(match method {
        Method::Greedy => to_score + n.saturating_sub(1),
        Method::Pruned { .. } => to_score + 1 + n,
        Method::Learned(settings) => to_score + settings.expected(n),
    }));
    let report_individual = |i: usize, s: &Scored| say(format!("  {}: {}", labels[i], describe(s)));
    say(format!("scoring {} on their own", plural(to_score, "ingredient")));
    let individual =
        score_individuals(&kitchen, &scorer, policy.jobs, &known, interrupted, &report_individual)?;
    let order = proposal_order(&individual, args.order, args.seed, &policy, method);

    // Greedy proposes every other ingredient once; pruned makes up to `passes`
    // passes over a shrinking soup, so only greedy knows its total up front.
    // Greedy starts at the first ingredient (in proposal order) that has a score.
    let greedy_start = order.iter().position(|&i| individual[i].score.is_ok());
    let total = match (method, greedy_start) {
        (Method::Greedy, Some(_)) => format!("/{}", order.len() - 1),
        _ => String::new(),
    };
    let on_step = |step: &Step, finish: &Finish| {
        say(format!(
            "[step {}{total}] {} {}: {} -> {} (soup of {}, score {})",
            finish.steps.len(),
            match step.change {
                Change::Add(_) => "add",
                Change::Remove(_) => "remove",
                _ => "try",
            },
            match step.change {
                Change::Add(i) | Change::Remove(i) | Change::Alone(i) => labels[i].as_str(),
                Change::Same => "",
            },
            describe(&step.scored),
            if step.accepted { "kept" } else { "rejected" },
            finish.soup.members().len(),
            format_score(finish.score)
        ))
    };
    let search = Search {
        kitchen: &kitchen,
        scorer: &scorer,
        policy,
        interrupt: interrupted,
        on_step: Some(&on_step),
    };
    let dest = Destination {
        path: &args.output,
        force: args.write.file.force,
        support_files_from: None,
        durable: true,
    };
    let evaluator_name = evaluator.journal_key();
    let all: Vec<usize> = (0..labels.len()).collect();
    let counts =
        |scorer: &EvalScorer| Counts { given: known.iter().flatten().count(), ..scorer.counts() };
    let (mut report, final_key) = match method {
        Method::Greedy | Method::Pruned { .. } => {
            let (finish, uniform) = match method {
                Method::Pruned { passes } => {
                    let soup = kitchen.soup_of(&all)?;
                    let scored = scorer.score(&soup, Change::Same, interrupted)?;
                    say(format!("  uniform soup of {}: {}", all.len(), describe(&scored)));
                    let Ok(score) = scored.score else {
                        return no_soup("the uniform soup could not be scored", &run_dir);
                    };
                    (search.pruned(soup, score, &order, passes)?, Some(scored))
                }
                _ => {
                    let Some(start) = greedy_start else {
                        return no_soup("no ingredient could be scored on its own", &run_dir);
                    };
                    let first_score = individual[order[start]].score.clone().unwrap_or(f64::NAN);
                    let finish = search.greedy(&greedy_order(&order, start), first_score)?;
                    // The uniform soup, when an earlier search in this run
                    // directory evaluated it.
                    (finish, scorer.journaled(&all))
                }
            };
            let report = Report::new(
                method.name(),
                &evaluator_name,
                args.minimize,
                &labels,
                &individual,
                uniform.as_ref(),
                &finish,
                counts(&scorer),
            );
            let (soup, change) = &finish.winner;
            let members = soup.members_after(*change);
            let recipe =
                recorded(kitchen.recipe(method.name(), &recorded_labels, &members, None), args)?;
            kitchen.write_recipe(&recipe, &members, &dest)?;
            let names: Vec<String> = members.iter().map(|&i| labels[i].clone()).collect();
            let weights = vec![1.0 / names.len() as f64; names.len()];
            (report, kitchen.key(names, weights))
        }
        Method::Learned(mut settings) => {
            settings.given = known.iter().flatten().count();
            let Some(learned) =
                learned::run(&settings, &search, &scorer, &individual, &order, greedy_start, &say)?
            else {
                return no_soup("no learned candidate could be scored", &run_dir);
            };
            let report = learned.report(
                &evaluator_name,
                args.minimize,
                &labels,
                &individual,
                counts(&scorer),
            );
            let weights = all.iter().map(|&i| learned.best.setting(i)).collect();
            let recipe =
                recorded(kitchen.recipe("learned", &recorded_labels, &all, Some(weights)), args)?;
            kitchen.write_recipe(&recipe, &all, &dest)?;
            let (members, weights) = scorer.mix_key(&learned.best);
            (report, kitchen.key(members, weights))
        }
    };
    drop(evaluator); // evaluation servers are shut down here
    status.finish();
    if let (Some(suite), Some(file)) = (&report_suite, &args.report_suite) {
        let soup = SuiteSoups { kitchen: &kitchen, labels: &labels, method, final_key };
        let (table, evaluations) =
            soup.score(suite, &run_dir, &args.output, &report, &running, args.quiet, interrupted)?;
        if !table.failures().is_empty() {
            let failed = plural(table.failures().len(), "evaluation");
            say(format!("warning: {failed} of the report suite failed (see report.md)"));
        }
        let file = file.display().to_string();
        report.suite = Some(SuiteReport { file, table, evaluations });
    }
    let figure = search_svg::plot(&report);
    report.write(&run_dir, Some(&figure))?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    }
    say(format!(
        "{} soup of {}, score {} (best individual {}), written to {}; report in {}",
        method.name(),
        plural(report.members.len(), "ingredient"),
        format_score(report.score),
        format_score(report.best_individual.score),
        args.output.display(),
        run_dir.join("report.md").display()
    ));
    Ok(Exit::Success)
}

/// What a search's `--report-suite` scores: the final soup (already written),
/// the best individual and the uniform soup (written on demand, as the search's
/// candidates are), each known in the suite's journal by its members and weights.
struct SuiteSoups<'a> {
    kitchen: &'a Kitchen,
    labels: &'a [String],
    method: Method,
    /// The final soup's journal key.
    final_key: (Vec<String>, Vec<f64>),
}

impl SuiteSoups<'_> {
    #[allow(clippy::too_many_arguments)]
    fn score(
        self,
        suite: &Suite,
        run_dir: &Path,
        output: &Path,
        report: &Report,
        running: &evaluate::Running<'_>,
        quiet: bool,
        interrupted: &AtomicBool,
    ) -> anyhow::Result<(Table, Counts)> {
        let kitchen = self.kitchen;
        let all: Vec<usize> = (0..self.labels.len()).collect();
        let best = report.best_individual.members.first();
        let best = best.and_then(|b| self.labels.iter().position(|l| l == b));
        let write = |dir: &Path, soup: &modelsoup::search::candidate::Soup, change: Change| {
            let members: Vec<String> =
                soup.members_after(change).iter().map(|&i| self.labels[i].clone()).collect();
            let weights = vec![1.0 / members.len() as f64; members.len()];
            let mut recipe = Recipe::linear(&members, &weights);
            recipe.search = Some(self.method.name().to_owned());
            let dest =
                Destination { path: dir, force: true, support_files_from: None, durable: false };
            kitchen.materialise(soup, change, &dest, recipe.to_metadata()).map(drop)?;
            Ok(())
        };
        let write_best = |dir: &Path| match best {
            Some(i) => write(dir, &kitchen.single(i), Change::Alone(i)),
            None => Ok(()),
        };
        let write_uniform = |dir: &Path| write(dir, &kitchen.soup_of(&all)?, Change::Same);
        let uniform_key =
            kitchen.key(self.labels.to_vec(), vec![1.0 / all.len() as f64; all.len()]);
        let (members, weights) = self.final_key;
        let mut models = vec![Model {
            label: format!("{} soup", self.method.name()),
            dir: std::path::absolute(output)?,
            members,
            weights,
            write: None,
        }];
        if let Some(i) = best {
            let (members, weights) = kitchen.key(vec![self.labels[i].clone()], vec![1.0]);
            models.push(Model {
                label: format!("best individual ({})", self.labels[i]),
                dir: kitchen.scratch().join("suite-best-individual"),
                members,
                weights,
                write: Some(&write_best),
            });
        }
        models.push(Model {
            label: "uniform soup".into(),
            dir: kitchen.scratch().join("suite-uniform"),
            members: uniform_key.0,
            weights: uniform_key.1,
            write: Some(&write_uniform),
        });
        evaluate::score(suite, &run_dir.join("suite"), running, &models, quiet, interrupted)
    }
}

/// The final soup's recipe with the base's path absolute, like the ingredients'
/// (see [`recorded_path`]), and every model's reading options (`--key`,
/// `--rename`, an adapter's base).
fn recorded(mut recipe: Recipe, args: &SearchArgs) -> anyhow::Result<Recipe> {
    let has_base = args.base.is_some();
    for ingredient in &mut recipe.ingredients {
        let read = ingredient_from(Path::new(&ingredient.path), &args.read, has_base, None)?;
        ingredient.key = read.key;
        ingredient.rename = read.rename;
        ingredient.adapter_base = read.adapter_base;
        ingredient.expand_views = read.expand_views;
    }
    if let (Some(base), Some(path)) = (recipe.base.as_mut(), &args.base) {
        let read = ingredient_from(path, &args.read, false, None)?;
        *base = modelsoup::recipe::Ingredient { weight: base.weight.take(), ..read };
    }
    Ok(recipe)
}

/// Exit status 1 with a message pointing at the logs.
fn no_soup(what: &str, run_dir: &Path) -> anyhow::Result<Exit> {
    errln!("error: {what}; see the logs in {}", run_dir.join("logs").display());
    Ok(Exit::NoSoup)
}

fn kitchen(
    args: &SearchArgs,
    ingredients: Vec<Checkpoint>,
    base: Option<Checkpoint>,
    run_dir: &Path,
) -> anyhow::Result<Kitchen> {
    let base_files = base.as_ref().and_then(|b| b.directory().map(Path::to_path_buf));
    let base = match (&args.base, base) {
        (Some(path), Some(checkpoint)) => {
            if !args.lambda.is_finite() {
                bail!("--lambda must be finite, got {}", args.lambda);
            }
            let mut all = ingredients.clone();
            all.push(checkpoint.clone());
            plan::check_compatible(&all).context("the base and the ingredients")?;
            Some(Base { checkpoint, label: path.display().to_string(), lambda: args.lambda })
        }
        _ => None,
    };
    let scratch = args.scratch.clone().unwrap_or_else(|| run_dir.join("scratch"));
    let mut kitchen = Kitchen::new(ingredients, &scratch)?;
    kitchen.base = base;
    kitchen.dtype = args.write.file.dtype;
    kitchen.max_shard_size =
        args.write.file.max_shard_size.unwrap_or(modelsoup::DEFAULT_MAX_SHARD_SIZE);
    kitchen.non_float = match args.write.non_float {
        NonFloat::Error => NonFloatPolicy::RequireEqual,
        NonFloat::First => NonFloatPolicy::TakeFirst,
    };
    // A soup of task vectors takes the base's config and tokenizer, as mergekit does.
    kitchen.support_files_from = args.write.support_files_from.clone().or(base_files);
    kitchen.threads = args.write.file.threads.unwrap_or(0);
    Ok(kitchen)
}

/// `out` → `out.run` beside it.
fn sibling_with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let name =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "soup".into());
    path.with_file_name(format!("{name}{suffix}"))
}

/// Individual scores from a `--scores` file: `{"path": score, ...}`, keyed by the
/// ingredient as given on the command line (or the same file by another path).
fn read_scores(
    file: &Path,
    labels: &[String],
    say: &dyn Fn(String),
) -> anyhow::Result<Vec<Option<Scored>>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let map: BTreeMap<String, f64> = serde_json::from_str(&text).with_context(|| {
        format!("{}: expected a JSON object of ingredient path → number", file.display())
    })?;
    let canonical: Vec<Option<PathBuf>> =
        labels.iter().map(|l| Path::new(l).canonicalize().ok()).collect();
    let mut known = vec![None; labels.len()];
    for (key, score) in map {
        if !score.is_finite() {
            bail!("{}: score for {key:?} is not finite", file.display());
        }
        let key_path = Path::new(&key).canonicalize().ok();
        let found = labels.iter().position(|l| *l == key).or_else(|| {
            key_path.as_ref().and_then(|k| canonical.iter().position(|c| c.as_ref() == Some(k)))
        });
        match found {
            Some(i) => {
                known[i] = Some(Scored {
                    candidate: "scores-file".into(),
                    score: Ok(score),
                    reused: true,
                    cancelled: false,
                    metrics: Default::default(),
                    log: None,
                })
            }
            None => say(format!(
                "warning: {} names {key:?}, which is not an ingredient",
                file.display()
            )),
        }
    }
    Ok(known)
}

/// The order of proposals: by individual score (best first for greedy, worst
/// first for pruned; failed evaluations count as worst), as given, or shuffled.
fn proposal_order(
    individual: &[Scored],
    order: Order,
    seed: u64,
    policy: &Policy,
    method: Method,
) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..individual.len()).collect();
    match order {
        Order::Given => {}
        Order::Random => shuffle(&mut indices, seed),
        Order::Sorted => {
            // Best first; a stable sort keeps the given order among equals.
            indices.sort_by(|&a, &b| match (&individual[a].score, &individual[b].score) {
                (Ok(x), Ok(y)) if policy.better(*x, *y) => std::cmp::Ordering::Less,
                (Ok(x), Ok(y)) if policy.better(*y, *x) => std::cmp::Ordering::Greater,
                (Ok(_), Err(_)) => std::cmp::Ordering::Less,
                (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
                _ => std::cmp::Ordering::Equal,
            });
            if matches!(method, Method::Pruned { .. }) {
                indices.reverse();
            }
        }
    }
    indices
}

/// Fisher–Yates with SplitMix64: the same permutation for the same seed on every
/// platform and version.
fn shuffle(v: &mut [usize], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn describe(s: &Scored) -> String {
    let source = if s.reused { " (journal)" } else { "" };
    match &s.score {
        Ok(v) => format!("{}{source}", format_score(*v)),
        Err(e) => format!("failed{source}: {e}"),
    }
}
