//! `soup demo`: the whole story of model soups on a built-in example, in one
//! command and without models of one's own. A small network is pretrained on a
//! broad source task, fine-tuned many ways on a small target set, and trained from
//! scratch as a control; every model is written as a real checkpoint, the real
//! `soup` commands build the soups, choosing on val with a separate evaluator
//! process per candidate (`soup demo-eval`) exactly as a user's script would, and
//! every model is then scored on the in-distribution test set and on shifted test
//! sets by the same evaluator. Nothing in the code states an outcome: the tables
//! and the story's checks are measured.
//!
//! The demo lives in the binary, not the library: it is a tour of the commands,
//! and it drives them as a user does.

mod checkpoint;
mod data;
mod evaluate;
mod figures;
mod mlp;
mod report;
mod soups;
mod train;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use rayon::prelude::*;

use super::args::{DemoArgs, DemoEvalArgs, DemoSplit};
use super::Exit;
use data::{generate, Shift, Spec, Split};
use evaluate::Scores;
use report::{Point, Row, SetResult, Summary};
use train::Plan;

/// The size of a demo run.
struct Size {
    spec: Spec,
    plan: Plan,
    /// Evaluations of each learned soup (CMA-ES, gradient) beyond the baselines.
    learned_evaluations: usize,
}

impl Size {
    fn new(small: bool, seed: u64) -> Size {
        let pick = |full: usize, reduced: usize| if small { reduced } else { full };
        let spec = Spec {
            seed,
            inputs: pick(32, 16),
            content: pick(16, 8),
            source_classes: pick(32, 16),
            classes: 8,
            concepts_per_class: pick(8, 4),
            source_train: pick(20000, 2000),
            target_train: pick(300, 200),
            val: pick(5000, 500),
            test: pick(2000, 400),
        };
        let hidden = pick(96, 32);
        let plan = Plan {
            seed,
            pretrain_sizes: [spec.inputs, hidden, hidden, spec.source_classes],
            classes: spec.classes,
            pretrain_epochs: pick(20, 10),
            probe_epochs: 20,
            fine_tunes: pick(12, 5),
            scratch: pick(10, 6),
            scratch_epochs: pick(60, 30),
        };
        Size { spec, plan, learned_evaluations: pick(40, 8) }
    }
}

/// The first row of each table: the ingredient best on val.
const BEST: &str = "best individual";

/// Runs `soup demo`.
pub fn run(args: &DemoArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let start = Instant::now();
    let dir = work_dir(args.dir.as_deref())?;
    let exe = std::env::current_exe().context("cannot find the soup executable")?;
    let Size { spec, plan, learned_evaluations } = Size::new(args.small, args.seed);
    let say = |text: String| {
        if !args.quiet {
            errln!("[{:5.1}s] {text}", start.elapsed().as_secs_f64());
        }
    };
    say(format!("work directory: {} (seed {})", dir.display(), args.seed));
    let val = generate(&spec, Split::Val);
    let target = generate(&spec, Split::TargetTrain);

    say(format!(
        "pretraining a {:?} MLP on the source task ({} examples of {} classes, {} epochs), \
         then a linear probe for the {} target classes",
        plan.pretrain_sizes,
        spec.source_train,
        spec.source_classes,
        plan.pretrain_epochs,
        spec.classes
    ));
    let pretrained = train::pretrain(&plan, &generate(&spec, Split::SourceTrain), &target);
    let base = PathBuf::from("pretrained");
    checkpoint::save(&pretrained, &spec, &dir.join(&base))?;
    say(format!(
        "pretrained model + linear probe: target val {:.1}% (chance {:.1}%)",
        100.0 * pretrained.accuracy(&val),
        100.0 / spec.classes as f64
    ));
    check(interrupted)?;

    let recipes = train::sweep(&plan);
    say(format!(
        "fine-tuning {} ingredients on {} target examples (a random hyperparameter sweep)",
        recipes.len(),
        spec.target_train
    ));
    let fine_tuned = recipes
        .par_iter()
        .map(|(name, recipe)| {
            let mut model = pretrained.clone();
            model.train(&target, recipe);
            keep(&model, &spec, &dir, &Path::new("fine-tuned").join(name), &val, &say)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    check(interrupted)?;
    say(format!("training {} models from scratch (the control)", plan.scratch));
    let scratch = (0..plan.scratch)
        .into_par_iter()
        .map(|k| {
            let (name, model) = train::from_scratch(&plan, k, &target);
            keep(&model, &spec, &dir, &Path::new("from-scratch").join(name), &val, &say)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    check(interrupted)?;

    let runner = soups::Runner::new(&exe, &dir, learned_evaluations, args.seed, interrupted);
    let builds = [
        ("fine-tuned", runner.run_set("fine-tuned", &fine_tuned, Some(&base), &say)?, &fine_tuned),
        ("from-scratch", runner.run_set("from-scratch", &scratch, None, &say)?, &scratch),
    ];

    let mut models: Vec<PathBuf> = vec![base.clone()];
    for (_, build, ingredients) in &builds {
        models.extend(ingredients.iter().cloned());
        models.extend(build.soups.iter().map(|b| b.dir.clone()));
        models.extend(build.greedy_path.iter().cloned());
    }
    models.sort();
    models.dedup();
    say(format!(
        "scoring {} models on val, ID test and {} shifted test sets ({} evaluator runs)",
        models.len(),
        Shift::ALL.len(),
        models.len() * evaluate::splits().len()
    ));
    let scores = evaluate::score_all(&runner, &dir, &models, interrupted)?;
    let sets = builds
        .iter()
        .map(|(name, build, ingredients)| set_result(name, build, ingredients, &scores))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let summary = Summary {
        seed: args.seed,
        work_dir: dir.display().to_string(),
        chance: 1.0 / spec.classes as f64,
        seconds: start.elapsed().as_secs_f64(),
        shifts: Shift::ALL.map(Shift::name).to_vec(),
        pretrained: score(&scores, &base)?.clone(),
        sets,
    };
    report::write(&summary, &dir)?;
    if let Some(tuned) = summary.sets.first() {
        let figure1 = figures::id_vs_shift(summary.seed, tuned, &summary.pretrained);
        std::fs::write(dir.join("figure1.svg"), figure1).context("cannot write figure1.svg")?;
        let greedy = figures::greedy_growth(summary.seed, tuned);
        std::fs::write(dir.join("greedy.svg"), greedy).context("cannot write greedy.svg")?;
    }
    if args.json {
        outln!("{}", report::tables_json(&summary));
    } else {
        out!("{}", report::text(&summary));
    }
    say(format!("report, soups and pictures in {}", dir.display()));
    Ok(Exit::Success)
}

/// Saves a trained model under `dir` and says how it does on val; returns its
/// path relative to `dir`.
fn keep(
    model: &mlp::Mlp,
    spec: &Spec,
    dir: &Path,
    name: &Path,
    val: &data::Data,
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<PathBuf> {
    checkpoint::save(model, spec, &dir.join(name))?;
    let short = name.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    say(format!("  {short}: val {:.1}%", 100.0 * model.accuracy(val)));
    Ok(name.to_owned())
}

fn score<'a>(scores: &'a HashMap<PathBuf, Scores>, model: &Path) -> anyhow::Result<&'a Scores> {
    scores.get(model).with_context(|| format!("{} was not scored", model.display()))
}

/// One set's table: the best individual on val, then the soups, with their scores.
fn set_result(
    name: &str,
    build: &soups::SetBuild,
    ingredients: &[PathBuf],
    scores: &HashMap<PathBuf, Scores>,
) -> anyhow::Result<SetResult> {
    let points = ingredients
        .iter()
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            Ok(Point { name: name.unwrap_or_default(), scores: score(scores, path)?.clone() })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let best = points
        .iter()
        .reduce(|a, b| if b.scores.val > a.scores.val { b } else { a })
        .context("no ingredients")?;
    let mut rows = vec![Row { method: BEST.into(), scores: best.scores.clone(), ingredients: 1 }];
    for soup in &build.soups {
        let scores = score(scores, &soup.dir)?.clone();
        rows.push(Row { method: soup.method.into(), scores, ingredients: soup.ingredients });
    }
    let greedy_path = build
        .greedy_path
        .iter()
        .map(|p| score(scores, p).cloned())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(SetResult {
        name: name.to_owned(),
        ingredients: points,
        rows,
        greedy_path,
        mean_angle_deg: build.mean_angle_deg,
        relative_to_base: name == "fine-tuned",
        init_check_warns: build.init_check_warns,
        warnings: build.warnings.clone(),
    })
}

/// The work directory: `dir` (new or empty), or a fresh one under the system's
/// temporary directory, which is kept.
fn work_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("soup-demo-{}-{stamp}", std::process::id()))
        }
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty: give a new or empty directory with --dir", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(std::path::absolute(&dir)?)
}

fn check(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        return Err(modelsoup::Error::Cancelled.into());
    }
    Ok(())
}

/// Runs `soup demo-eval`: the accuracy of a demo checkpoint (or a soup of them) on
/// one split, printed as the evaluator protocol asks; or its loss, with the
/// loss's gradient written where `--grad` says (docs/EVALUATOR.md, "Gradients").
pub fn eval(args: &DemoEvalArgs) -> anyhow::Result<Exit> {
    let (model, spec) = checkpoint::load(&args.model)?;
    let data = generate(&spec, split_of(args.split));
    let grad = args.grad.as_deref().filter(|g| !g.as_os_str().is_empty());
    if !(args.loss || args.grad.is_some() || args.temperature.is_some()) {
        outln!("{}", serde_json::json!({ "score": model.accuracy(&data) }));
        return Ok(Exit::Success);
    }
    let beta = args.temperature.unwrap_or(1.0);
    if !(beta.is_finite() && beta > 0.0) {
        bail!("--temperature must be a positive number, got {beta}");
    }
    let found = model.loss_gradient(&data, beta);
    if let Some(path) = grad {
        checkpoint::save_gradient(&model, &found.gradient, path)?;
    }
    let mut line = serde_json::json!({ "score": found.loss, "accuracy": found.accuracy });
    if args.temperature.is_some() {
        line["grad_temperature"] = found.grad_temperature.into();
    }
    outln!("{line}");
    Ok(Exit::Success)
}

/// The data split `soup demo-eval --split` names.
fn split_of(split: DemoSplit) -> Split {
    match split {
        DemoSplit::Val => Split::Val,
        DemoSplit::Test => Split::Test,
        DemoSplit::HeavyStyle => Split::Shifted(Shift::HeavyStyle),
        DemoSplit::StyleOffset => Split::Shifted(Shift::StyleOffset),
        DemoSplit::Noise => Split::Shifted(Shift::Noise),
        DemoSplit::Faint => Split::Shifted(Shift::Faint),
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn every_split_the_tables_name_is_a_demo_eval_split() {
        for (k, name) in evaluate::splits().into_iter().enumerate() {
            let split = DemoSplit::from_str(name, false).unwrap();
            let expected = match k {
                0 => Split::Val,
                1 => Split::Test,
                _ => Split::Shifted(Shift::ALL[k - 2]),
            };
            assert_eq!(split_of(split), expected, "{name}");
        }
        assert_eq!(DemoSplit::value_variants().len(), evaluate::splits().len());
    }
}
