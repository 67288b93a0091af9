//! `soup demo`: the whole story on a built-in example, in one command and without
//! models of one's own. A small network is pretrained on a source task, fine-tuned
//! many ways on a related target task, and trained from scratch as a control; every
//! model is written as a real checkpoint, and the real `soup` commands build and
//! score the soups, each candidate scored by a separate evaluator process
//! (`soup demo-eval`) exactly as a user's script would be.
//!
//! The demo lives in the binary, not the library: it is a tour of the commands,
//! and it drives them as a user does.

mod checkpoint;
mod data;
mod mlp;
mod report;
mod soups;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use rayon::prelude::*;

use super::args::{DemoArgs, DemoEvalArgs, DemoSplit};
use super::Exit;
use data::{generate, Spec, Split};
use mlp::{Mlp, Recipe};

/// The size of a demo run.
struct Size {
    spec: Spec,
    hidden: usize,
    pretrain_epochs: usize,
    fine_tunes: usize,
    scratch: usize,
    scratch_epochs: usize,
    /// CMA-ES evaluations of the learned soup, beyond the baselines.
    learned_evaluations: usize,
}

impl Size {
    fn new(small: bool) -> Size {
        let spec = Spec {
            seed: 2022,
            inputs: 32,
            classes: 8,
            source_train: if small { 3000 } else { 20000 },
            target_train: if small { 500 } else { 1000 },
            val: if small { 800 } else { 2000 },
            test: if small { 800 } else { 4000 },
        };
        Size {
            spec,
            hidden: if small { 48 } else { 96 },
            pretrain_epochs: if small { 8 } else { 40 },
            fine_tunes: if small { 8 } else { 12 },
            scratch: if small { 4 } else { 6 },
            scratch_epochs: if small { 20 } else { 30 },
            learned_evaluations: if small { 12 } else { 40 },
        }
    }

    fn sizes(&self) -> Vec<usize> {
        vec![self.spec.inputs, self.hidden, self.hidden, self.spec.classes]
    }
}

/// A trained model written to disk, with its accuracies.
pub struct Ingredient {
    /// Its checkpoint directory.
    pub dir: PathBuf,
    /// Validation accuracy.
    pub val: f64,
    /// Test accuracy.
    pub test: f64,
}

/// Runs `soup demo`.
pub fn run(args: &DemoArgs, interrupted: &AtomicBool) -> anyhow::Result<Exit> {
    let start = Instant::now();
    let dir = work_dir(args.dir.as_deref())?;
    let size = Size::new(args.small);
    let spec = size.spec;
    let say = |text: String| {
        if !args.quiet {
            errln!("[{:5.1}s] {text}", start.elapsed().as_secs_f64());
        }
    };
    say(format!("work directory: {}", dir.display()));
    let val = generate(&spec, Split::Val);
    let test = generate(&spec, Split::Test);
    let target = generate(&spec, Split::TargetTrain);

    say(format!(
        "pretraining a {:?} MLP on the source task ({} examples, {} epochs)",
        size.sizes(),
        spec.source_train,
        size.pretrain_epochs
    ));
    let mut pretrained = Mlp::new(&size.sizes(), 1);
    let recipe =
        Recipe { lr: 0.05, weight_decay: 1e-4, epochs: size.pretrain_epochs, noise: 0.0, seed: 1 };
    pretrained.train(&generate(&spec, Split::SourceTrain), &recipe);
    let base = dir.join("pretrained");
    checkpoint::save(&pretrained, &spec, &base)?;
    say(format!(
        "pretrained model: target-task val {:.1}% without fine-tuning (chance {:.1}%)",
        100.0 * pretrained.accuracy(&val),
        100.0 / spec.classes as f64
    ));

    let recipes = fine_tune_recipes(size.fine_tunes);
    say(format!(
        "fine-tuning {} ingredients on {} target examples",
        recipes.len(),
        spec.target_train
    ));
    let fine_tuned = recipes
        .par_iter()
        .map(|(name, recipe)| {
            let mut model = pretrained.clone();
            model.train(&target, recipe);
            keep(model, &spec, &dir.join("fine-tuned").join(name), (&val, &test), &say)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    check(interrupted)?;
    say(format!("training {} models from scratch (the control)", size.scratch));
    let scratch = (0..size.scratch)
        .into_par_iter()
        .map(|k| {
            let seed = 1000 + k as u64;
            let mut model = Mlp::new(&size.sizes(), seed);
            let recipe = Recipe {
                lr: 0.05,
                weight_decay: 1e-4,
                epochs: size.scratch_epochs,
                noise: 0.1,
                seed,
            };
            model.train(&target, &recipe);
            let name = format!("scratch-{k:02}-seed{seed}");
            keep(model, &spec, &dir.join("from-scratch").join(name), (&val, &test), &say)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    check(interrupted)?;

    let runner = soups::Runner::new(&dir, size.learned_evaluations, interrupted)?;
    let evaluate = |path: &Path| -> anyhow::Result<(f64, f64)> {
        let (model, _) = checkpoint::load(path)?;
        Ok((model.accuracy(&val), model.accuracy(&test)))
    };
    let sets = [
        runner.run_set("fine-tuned", &fine_tuned, Some(&base), &evaluate, &say)?,
        runner.run_set("from-scratch", &scratch, None, &evaluate, &say)?,
    ];
    let summary = report::Summary {
        work_dir: dir.display().to_string(),
        chance: 1.0 / spec.classes as f64,
        seconds: start.elapsed().as_secs_f64(),
        sets: sets.to_vec(),
    };
    out!("{}", report::text(&summary));
    report::write(&summary, &dir)?;
    say(format!("report, soups and pictures in {}", dir.display()));
    Ok(Exit::Success)
}

/// Saves a trained model and measures it.
fn keep(
    model: Mlp,
    spec: &Spec,
    dir: &Path,
    (val, test): (&data::Data, &data::Data),
    say: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Ingredient> {
    checkpoint::save(&model, spec, dir)?;
    let (v, t) = (model.accuracy(val), model.accuracy(test));
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    say(format!("  {name}: val {:.1}%", 100.0 * v));
    Ok(Ingredient { dir: dir.to_owned(), val: v, test: t })
}

/// Varied fine-tuning recipes, as a hyperparameter sweep leaves them behind.
fn fine_tune_recipes(n: usize) -> Vec<(String, Recipe)> {
    const LR: [f32; 4] = [0.003, 0.006, 0.01, 0.02];
    const DECAY: [f32; 3] = [0.0, 1e-4, 1e-3];
    const EPOCHS: [usize; 3] = [10, 20, 30];
    const NOISE: [f32; 3] = [0.0, 0.1, 0.3];
    (0..n)
        .map(|k| {
            let recipe = Recipe {
                lr: LR[k % 4],
                weight_decay: DECAY[(k / 4) % 3],
                epochs: EPOCHS[(k + k / 4) % 3],
                noise: NOISE[(k / 2) % 3],
                seed: 100 + k as u64,
            };
            let name = format!(
                "ft-{k:02}-lr{}-wd{}-ep{}-noise{}",
                recipe.lr, recipe.weight_decay, recipe.epochs, recipe.noise
            );
            (name, recipe)
        })
        .collect()
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
/// one split, printed as the evaluator protocol asks.
pub fn eval(args: &DemoEvalArgs) -> anyhow::Result<Exit> {
    let (model, spec) = checkpoint::load(&args.model)?;
    let split = match args.split {
        DemoSplit::Val => Split::Val,
        DemoSplit::Test => Split::Test,
    };
    let accuracy = model.accuracy(&generate(&spec, split));
    outln!("{}", serde_json::json!({ "score": accuracy }));
    Ok(Exit::Success)
}
