//! The command line, declared with clap. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use modelsoup::FloatDtype;

/// Build model soups: average fine-tuned checkpoints of one pretrained model into a
/// single model that is as good as or better than the best of them.
///
/// Weights are streamed from memory-mapped safetensors (or PyTorch) files, so soups of
/// multi-gigabyte models need no more than a few megabytes of RAM per thread.
#[derive(Debug, Parser)]
#[command(name = "soup", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Exit status: 0 success, 1 a search found no soup to keep, inspect found \
                  checkpoints that cannot be souped or evaluate had failed evaluations, 2 error \
                  (message on stderr), 130, 143 or 129 stopped by SIGINT (Ctrl-C), SIGTERM or \
                  SIGHUP, with nothing partial left (docs/FAILURES.md).")]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Merge checkpoints into one: uniform or weighted soup, WiSE-FT, task
    /// arithmetic, TIES, DARE, SLERP, Model Stock, or a recipe file.
    #[command(after_long_help = MERGE_EXAMPLES)]
    Merge(MergeArgs),
    /// Rewrite one checkpoint (PyTorch .bin or safetensors) as safetensors, sharded
    /// like Hugging Face, optionally in another dtype.
    #[command(after_long_help = CONVERT_EXAMPLES)]
    Convert(ConvertArgs),
    /// Greedy soup: add ingredients best first while your evaluator's score does
    /// not drop.
    #[command(after_long_help = GREEDY_EXAMPLES)]
    Greedy(GreedyArgs),
    /// Pruned soup: start from the uniform soup and drop ingredients whose removal
    /// does not lower your evaluator's score.
    #[command(after_long_help = PRUNED_EXAMPLES)]
    Pruned(PrunedArgs),
    /// Learned soup: search mixing coefficients (per model or per layer group)
    /// with CMA-ES against your evaluator.
    #[command(after_long_help = LEARNED_EXAMPLES)]
    Learned(LearnedArgs),
    /// Score models on a benchmark suite (several evaluators) and print the table:
    /// models x benchmarks, plus their average.
    #[command(after_long_help = EVALUATE_EXAMPLES)]
    Evaluate(EvaluateArgs),
    /// Angles between fine-tuned deltas (θᵢ − θ₀), their sizes, and the
    /// shared-init check: look before you soup.
    #[command(after_long_help = ANGLES_EXAMPLES)]
    Angles(AnglesArgs),
    /// Tensors, dtypes, shapes, sizes, shards and metadata of checkpoints; with
    /// several, whether they can be souped together.
    #[command(after_long_help = INSPECT_EXAMPLES)]
    Inspect(InspectArgs),
    /// The whole story on a built-in example: pretrain, fine-tune and soup a small
    /// network, against models trained from scratch.
    #[command(after_long_help = DEMO_EXAMPLES)]
    Demo(DemoArgs),
    /// The demo's evaluator: accuracy of a demo checkpoint on one split.
    #[command(hide = true)]
    DemoEval(DemoEvalArgs),
}

const DEMO_EXAMPLES: &str = "\
Examples:
  soup demo                      everything in a fresh temporary directory (kept)
  soup demo --dir demo/          in demo/ (new or empty)
  soup demo --seed 3             another draw of the data, the sweep and the inits
  soup demo --json               the tables as JSON on stdout
  soup demo --small              a reduced run, for tests

A small MLP is pretrained on a broad synthetic source task, then fine-tuned on a
small target set with a random sweep of learning rate, weight decay, epochs, input
noise, label smoothing and seed; a control set is trained from scratch. Every model
is written as a checkpoint, and the soups are built by this program's merge,
greedy, pruned, learned and angles commands, scoring candidates with
`soup demo-eval MODEL --split val` as the evaluator. Every soup is then scored on
the in-distribution test set and on four shifted test sets (heavy-style,
style-offset, noise, faint) by the same evaluator. Prints the tables and the
story's checks; writes report.md, report.json, the pictures (figure1.svg,
greedy.svg) and the angle heatmaps into the work directory.";

/// Arguments of `soup demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Work directory (new or empty) [default: a fresh temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// A reduced run: fewer ingredients and examples.
    #[arg(long)]
    pub small: bool,

    /// Seed of the data, the hyperparameter sweep and every initialisation.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,

    /// Print the tables as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// No progress lines.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `soup demo-eval`.
#[derive(Debug, Args)]
pub struct DemoEvalArgs {
    /// A demo checkpoint directory or a soup of them.
    #[arg(value_name = "MODEL_DIR")]
    pub model: PathBuf,

    /// The split to score.
    #[arg(long, value_enum, default_value_t = DemoSplit::Val)]
    pub split: DemoSplit,

    // Learned soups by gradient: the loss and its gradient.
    /// Score by the mean cross-entropy loss (lower is better) instead of the
    /// accuracy, which is reported beside it.
    #[arg(long)]
    pub loss: bool,

    /// Also write the loss's gradient with respect to every weight to FILE (a
    /// safetensors file, as `soup learned --gradient` asks); nothing when FILE is
    /// empty. Implies --loss.
    #[arg(long, value_name = "FILE")]
    pub grad: Option<PathBuf>,

    /// The logit temperature β of the loss (cross-entropy of β·logits); with it,
    /// "grad_temperature", ∂loss/∂β, is reported too [default: 1, not reported].
    #[arg(long, value_name = "B")]
    pub temperature: Option<f64>,
}

/// The demo's held-out splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoSplit {
    /// Validation: where soups are chosen.
    Val,
    /// Test, in distribution: where they are reported.
    Test,
    /// Test with styles four times heavier.
    HeavyStyle,
    /// Test with every style moved by one offset.
    StyleOffset,
    /// Test with noise on every input.
    Noise,
    /// Test with the content pulled toward its mean.
    Faint,
}

const ANGLES_EXAMPLES: &str = "\
Examples:
  soup angles --base pretrained/ a/ b/ c/ d/             pairwise angles in degrees, delta norms
  soup angles --base pretrained/ a/ b/ --per-layer --format csv
  soup angles a/ b/ c/ --svg angles.svg                  no base: raw-weight similarity only
  soup angles --base pretrained/ a/ b/ --json            everything as one JSON object on stdout

With --base, the angle between ingredients i and j is the angle between their
deltas θi − θ0 and θj − θ0 over every float tensor (Wortsman et al., 2022: larger
angles, larger soup gains), and each delta's norm is given relative to the
base's. Without --base, only the raw weights can be compared: the table is their
cosine similarity and angle, which says whether they share an initialisation but
not how differently they were fine-tuned. One streaming pass reads every input
once. The shared-init check (median per-matrix cosine of raw weights, sampled)
is reported too.";

const INSPECT_EXAMPLES: &str = "\
Examples:
  soup inspect ckpt/                     tensor table, totals by dtype, shards, metadata
  soup inspect ckpt/ --check-values      also count NaN and inf in every float tensor
  soup inspect a/ b/ c/                  can they be souped? what differs? (verdict first)
  soup inspect a/ b/ c/ --tables         and every tensor of each
  soup inspect a/ b/ --json              everything as one JSON object on stdout

With several checkpoints, the report starts with the verdict: every difference
that stops a merge (missing or extra tensors, shapes, dtypes) and the shared-init
check; then one summary per checkpoint (tensor tables with --tables).

Exit status: 0 nothing wrong, 1 the checkpoints cannot be souped together or
--check-values found NaN or inf, 2 error (a checkpoint cannot be read).";

const CONVERT_EXAMPLES: &str = "\
Examples:
  soup convert old-run/ -o old-run-st/                  pytorch_model.bin (or shards) to safetensors
  soup convert model.bin -o out/ --dtype bf16           and round every float tensor to bf16
  soup convert big/ -o resharded/ --max-shard-size 2GB
  soup convert lora-run/ --base base/ -o merged/        a LoRA adapter merged into its base
  soup convert epoch=3.ckpt --key state_dict -o st/     the state dict of a training checkpoint

PyTorch files are read without running their pickle: only state dicts of tensors
are accepted (a whole pickled model, or a legacy pre-1.6 file, is refused with
advice on re-saving it). Every archive entry's CRC is checked before its data is
used (a storage when it is first read). Transposed or sliced views are written as plain tensors. safetensors files
cannot alias, so names sharing one storage get their own copies, except a tied
output head stored on the input embedding's storage, which is left out when
config.json ties the embeddings (as save_pretrained does; the loader ties it back).

Values are copied exactly unless --dtype asks for rounding (once, to nearest
even). Config and tokenizer files are copied from the input's directory. The
output is written beside the destination and renamed into place when complete.";

/// Arguments of `soup convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A checkpoint: a .bin or .safetensors file, a checkpoint directory, or a
    /// LoRA adapter directory (written out as its base with the adapter merged).
    #[arg(value_name = "CHECKPOINT")]
    pub input: PathBuf,

    /// For a LoRA adapter: the model it applies to [default: the adapter
    /// config's base_model_name_or_path].
    #[arg(long, value_name = "MODEL")]
    pub base: Option<PathBuf>,

    /// How ingredients are read: training checkpoints, renamed tensors, adapters.
    #[command(flatten)]
    pub read: IngredientArgs,

    /// Output directory (must not exist or be empty, unless --force).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// How the output is written.
    #[command(flatten)]
    pub file: FileArgs,

    /// Print a JSON summary on stdout instead of the human one on stderr.
    #[arg(long)]
    pub json: bool,

    /// No progress bar and no summary line (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `soup inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Checkpoints: .safetensors or PyTorch .bin files, or checkpoint directories.
    #[arg(required = true, value_name = "CHECKPOINT")]
    pub checkpoints: Vec<PathBuf>,

    /// How ingredients are read: training checkpoints, renamed tensors, adapters.
    #[command(flatten)]
    pub read: IngredientArgs,

    /// For LoRA adapter directories: the model they apply to [default: the one
    /// each adapter's config names].
    #[arg(long, value_name = "MODEL")]
    pub base: Option<PathBuf>,

    /// Read every float tensor and count NaN and infinite values.
    #[arg(long)]
    pub check_values: bool,

    /// With several checkpoints, also list every tensor of each (one checkpoint's
    /// table is always shown).
    #[arg(long)]
    pub tables: bool,

    /// Print everything as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// Worker threads for --check-values [default: one per core].
    #[arg(short = 't', long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,

    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Output format of `soup angles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned table for people.
    Table,
    /// Comma-separated rows: group, ingredient, then one column per ingredient.
    Csv,
    /// One JSON object.
    Json,
}

/// Arguments of `soup angles`.
#[derive(Debug, Args)]
pub struct AnglesArgs {
    /// Fine-tuned checkpoints: .safetensors or PyTorch .bin files, or checkpoint
    /// directories.
    #[arg(required = true, value_name = "INGREDIENT")]
    pub ingredients: Vec<PathBuf>,

    /// The pretrained model they were fine-tuned from; without it only raw-weight
    /// similarity is shown.
    #[arg(long, value_name = "CHECKPOINT")]
    pub base: Option<PathBuf>,

    /// How ingredients are read: training checkpoints, renamed tensors, adapters.
    #[command(flatten)]
    pub read: IngredientArgs,

    /// Also give the angles per layer group: embeddings, each numbered block, the
    /// rest.
    #[arg(long)]
    pub per_layer: bool,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Print one JSON object on stdout (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// Also draw the angle matrix as an SVG heatmap into FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Worker threads [default: one per core].
    #[arg(short = 't', long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,

    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

const GREEDY_EXAMPLES: &str = "\
Examples:
  soup greedy runs/*/ -o best-soup/ --eval 'python eval.py --model {model} --split val'
  soup greedy runs/*/ -o best-soup/ --eval '...' --scores individual.json
  soup greedy runs/*/ -o out/ --eval 'exec srun -n1 --gres=gpu:1 python eval.py {model}' -j 8
  soup greedy runs/*/ -o out/ --eval-server 'python serve.py' --devices 0,1,2,3

Every candidate is written to a scratch directory and scored by running --eval
with `sh -c`; {model} is replaced by the candidate's directory (shell-quoted),
which is also in $SOUP_MODEL. The score is the last non-empty line of the
command's stdout: a number, or a JSON object with a numeric \"score\". Failed
evaluations count as \"not better\". Every evaluation is journaled in the run
directory (default OUT.run/): rerun the same command to resume after a crash
without paying for an evaluation twice. --eval-server keeps one evaluator per
job running for the whole search (a line-based JSON protocol; modelsoup.serve in
Python speaks it); --devices gives each job its own GPUs ({devices} and
$CUDA_VISIBLE_DEVICES). A timeout or an interrupt stops an evaluation with
SIGTERM, then SIGKILL after --kill-grace. See docs/EVALUATOR.md and, for Slurm,
docs/CLUSTER.md.

Exit status: 0 soup written, 1 no candidate could be scored, 2 error, 130/143/129
stopped by SIGINT/SIGTERM/SIGHUP (evaluations killed, journal kept).";

const PRUNED_EXAMPLES: &str = "\
Examples:
  soup pruned runs/*/ -o best-soup/ --eval 'python eval.py --model {model}' --passes 2
  soup pruned runs/*/ -o best-soup/ --eval '...' --minimize --jobs 4

Starts from the uniform soup of all ingredients; each pass tries removing every
member in turn (worst first), keeping a removal when the score does not drop.
Stops after a pass that removes nothing; never empties the soup. Evaluation,
journal and resume work as for `soup greedy`.

Exit status: 0 soup written, 1 no candidate could be scored, 2 error, 130/143/129
stopped by SIGINT/SIGTERM/SIGHUP (evaluations killed, journal kept).";

const LEARNED_EXAMPLES: &str = "\
Examples:
  soup learned runs/*/ -o soup/ --eval 'python eval.py {model}' --budget 100
  soup learned runs/*/ -o soup/ --eval '...' --budget 300 --by-layer --groups 4 --jobs 8
  soup learned runs/*/ -o soup/ --eval '...' --init greedy

Coefficients stay on the simplex (a softmax of free parameters) and are searched
with CMA-ES, a generation evaluated --jobs at a time. --budget counts every
evaluation: the ingredients on their own (unless --scores gives them), the
starting soup (uniform, or with --init greedy the greedy search and the uniform
soup), then CMA-ES. The best candidate seen is written to OUTPUT; report.json
adds the coefficients per layer group and the score of every evaluation. With
--by-layer the groups (embeddings, --groups ranges of transformer blocks, head)
are printed at the start. Evaluation, journal and resume work as for `soup
greedy`; the same --seed gives the same search.

By gradient, as the model-soups paper learns them (--gradient): the evaluator
prints the loss and writes its gradient with respect to the candidate's weights,
a safetensors file, to $SOUP_GRAD; one streaming pass turns it into the gradient
with respect to the coefficients, and Adam takes a step. No model is held in
memory. See docs/EVALUATOR.md, \"Gradients\".

  soup learned runs/*/ -o soup/ --gradient --steps 30 \\
      --eval 'python eval_grad.py {model} --grad {grad}'
  soup learned runs/*/ -o soup/ --gradient --by-layer --temperature 1 --check-gradient \\
      --eval '...'

Exit status: 0 soup written, 1 no candidate could be scored, 2 error, 130/143/129
stopped by SIGINT/SIGTERM/SIGHUP (evaluations killed, journal kept).";

/// Arguments of `soup learned`.
#[derive(Debug, Args)]
pub struct LearnedArgs {
    /// Shared search options (--order and --tie apply to --init greedy).
    #[command(flatten)]
    pub search: SearchArgs,

    /// Evaluations in all, baselines included [default: 100; with --gradient,
    /// the baselines and --steps].
    #[arg(long, value_name = "N")]
    pub budget: Option<usize>,

    /// One coefficient vector per layer group instead of one per model.
    #[arg(long)]
    pub by_layer: bool,

    /// With --by-layer: ranges the transformer blocks are split into.
    #[arg(long, value_name = "N", default_value_t = 4, requires = "by_layer")]
    pub groups: usize,

    /// Where the search starts.
    #[arg(long, value_enum, default_value_t = Init::Uniform)]
    pub init: Init,

    // Learned soups by gradient (docs/EVALUATOR.md, "Gradients").
    /// Learn the coefficients by gradient descent (Adam) on the loss instead of
    /// CMA-ES: the evaluator prints the loss as its score and writes the loss's
    /// gradient with respect to the soup's weights to $SOUP_GRAD (also {grad}).
    /// Implies --minimize.
    #[arg(long)]
    pub gradient: bool,

    /// With --gradient: Adam steps, one evaluation with a gradient each [default:
    /// 40, or what --budget leaves after the baselines].
    #[arg(long, value_name = "N", requires = "gradient", conflicts_with = "budget")]
    pub steps: Option<usize>,

    /// With --gradient: Adam's learning rate, in softmax-parameter space.
    #[arg(long, value_name = "X", default_value_t = 0.2, requires = "gradient")]
    pub lr: f64,

    /// With --gradient: also learn a logit temperature β, starting at T (1 leaves
    /// the logits as they are): each candidate is scored at β ($SOUP_TEMPERATURE)
    /// and the evaluator reports "grad_temperature", ∂loss/∂β, beside the loss.
    #[arg(long, value_name = "T", requires = "gradient")]
    pub temperature: Option<f64>,

    /// With --gradient: after the first step, compare the gradient's derivative
    /// along a random direction with a central difference of two more
    /// evaluations, and report the relative error.
    #[arg(long, requires = "gradient")]
    pub check_gradient: bool,
}

/// The starting point of a learned search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Init {
    /// Equal weights.
    Uniform,
    /// The greedy soup (run first, journaled like `soup greedy`).
    Greedy,
}

const EVALUATE_EXAMPLES: &str = "\
Examples:
  soup evaluate runs/*/ soup/ --suite suite.yaml                table on stdout
  soup evaluate runs/*/ soup/ --suite suite.yaml -o table.md --jobs 4
  soup evaluate a/ b/ --suite suite.yaml --json                 the scores as JSON on stdout
  soup evaluate a/ b/ --suite suite.yaml --csv -o table.csv

suite.yaml names the evaluators, each a command as for --eval (or a server, as
--eval-server), in the order of the columns:

  evaluators:
    val:    {eval: \"python eval.py {model} --split val\"}
    sketch: {eval: \"python eval.py {model} --split sketch\"}
    harness:                    # a tool that writes its results to a file
      eval: \"lm_eval --model_args pretrained={model} --tasks arc_easy --output_path {out}\"
      score_file: \"{out}/**/results_*.json\"
      score: [\"results.arc_easy.acc,none\"]     # dotted paths, averaged; \\. is a dot in a key

{out} is a fresh directory per evaluation. Every evaluation is journaled in the
run directory (default: SUITE.run beside the suite file, e.g. suite.run/), so a
rerun, or a run with more models, only evaluates what is missing. A failed
evaluation leaves its cell empty (null in JSON, its reason under \"failures\")
and the row without an average. See docs/EVALUATOR.md.

Exit status: 0 every evaluation scored, 1 some failed (the table is still
written), 2 error, 130 interrupted.";

/// Arguments of `soup evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Models to score: checkpoint directories or files, each handed to every
    /// evaluator as {model}.
    #[arg(required = true, value_name = "MODEL")]
    pub models: Vec<PathBuf>,

    /// The benchmark suite: a YAML file naming the evaluators.
    #[arg(long, value_name = "FILE")]
    pub suite: PathBuf,

    /// Write the table to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The table as CSV instead of Markdown.
    #[arg(long)]
    pub csv: bool,

    /// Print the scores as JSON on stdout (the table then goes only to -o).
    #[arg(long)]
    pub json: bool,

    /// Run directory for the journal and the logs [default: SUITE.run beside the
    /// suite file].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Evaluations to run at once, all benchmarks together.
    #[arg(short = 'j', long, value_name = "N", default_value_t = 1, value_parser = parse_jobs)]
    pub jobs: usize,

    /// Devices for the jobs, as for the searches: `0,1,2,3` or `0,1:2,3`. Sets
    /// --jobs.
    #[arg(long, value_name = "LIST", conflicts_with = "jobs")]
    pub devices: Option<String>,

    /// Kill an evaluation (and its children) after this long: 90, 90s, 15m, 2h.
    #[arg(long, value_name = "DURATION", value_parser = super::duration::parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Re-run a failed evaluation up to N more times (journaled failures too).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// How long a stopped evaluation gets to end after the stop signal, before
    /// SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = super::duration::parse_duration_or_zero)]
    pub kill_grace: std::time::Duration,

    /// The signal that asks an evaluation to stop: TERM, INT, HUP, USR1 or USR2.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    pub stop_signal: modelsoup::search::process::StopSignal,

    /// No progress lines (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `soup greedy`.
#[derive(Debug, Args)]
pub struct GreedyArgs {
    /// Shared search options.
    #[command(flatten)]
    pub search: SearchArgs,
}

/// Arguments of `soup pruned`.
#[derive(Debug, Args)]
pub struct PrunedArgs {
    /// Shared search options.
    #[command(flatten)]
    pub search: SearchArgs,

    /// Passes over the members; stops early after a pass that removes nothing.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub passes: usize,
}

/// Options shared by the soup searches.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Fine-tuned checkpoints: .safetensors or PyTorch .bin files, or checkpoint
    /// directories.
    #[arg(required = true, value_name = "INGREDIENT")]
    pub ingredients: Vec<PathBuf>,

    /// Output directory for the final soup.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// Evaluation command, run with `sh -c`; {model} becomes the candidate's
    /// directory.
    #[arg(long = "eval", value_name = "COMMAND", required_unless_present = "eval_server")]
    pub eval: Option<String>,

    /// The pretrained model, for soups of task vectors: every candidate (single
    /// ingredients included) and the final soup become base + lambda x (soup -
    /// base); the final recipe is task arithmetic over the chosen ingredients.
    #[arg(long, value_name = "MODEL")]
    pub base: Option<PathBuf>,

    /// Scale of the soup's task vector with --base: 1 is the plain soup, below 1
    /// moves toward the base (WiSE-FT), above 1 extrapolates.
    #[arg(
        long,
        value_name = "X",
        default_value_t = 1.0,
        requires = "base",
        allow_negative_numbers = true
    )]
    pub lambda: f64,

    /// How ingredients are read: training checkpoints, renamed tensors, adapters.
    #[command(flatten)]
    pub read: IngredientArgs,

    /// Evaluations to run at once (each in its own process).
    #[arg(short = 'j', long, value_name = "N", default_value_t = 1, value_parser = parse_jobs)]
    pub jobs: usize,

    /// Kill an evaluation (and its children) after this long: 90, 90s, 15m, 2h.
    #[arg(long, value_name = "DURATION", value_parser = super::duration::parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Re-run a failed evaluation up to N more times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Individual scores as a JSON object {"ingredient path": score}; those
    /// ingredients are not evaluated alone.
    #[arg(long, value_name = "FILE")]
    pub scores: Option<PathBuf>,

    /// Order of proposals: best individual score first (greedy) or worst first
    /// (pruned), the order given, or shuffled.
    #[arg(long, value_enum, default_value_t = Order::Sorted)]
    pub order: Order,

    /// Seed for --order random and for learned soups' search.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Whether an equal score keeps a proposal (accept: >=, reject: >).
    #[arg(long, value_enum, default_value_t = TieArg::Accept)]
    pub tie: TieArg,

    /// Lower scores are better (losses, perplexity).
    #[arg(long)]
    pub minimize: bool,

    /// Run directory for the journal, logs and reports [default: OUTPUT.run].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Where candidates are written [default: RUN_DIR/scratch]; a fast disk or
    /// tmpfs helps.
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,

    /// Keep every candidate directory after it is scored.
    #[arg(long)]
    pub keep_candidates: bool,

    /// How the soup is written.
    #[command(flatten)]
    pub write: WriteArgs,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress lines or summary (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,

    // Persistent evaluators, devices and stopping (docs/EVALUATOR.md, docs/CLUSTER.md).
    /// A persistent evaluation server instead of --eval: started once per job with
    /// `sh -c` and kept for the whole search, it reads one JSON request per line on
    /// stdin and answers each with a JSON line on stdout.
    #[arg(long, value_name = "COMMAND", conflicts_with = "eval")]
    pub eval_server: Option<String>,

    /// Devices for the jobs, one slot per job: `0,1,2,3` (one each) or `0,1:2,3`
    /// (two each). Sets --jobs; every evaluation (or server) gets its slot's
    /// CUDA_VISIBLE_DEVICES, SOUP_SLOT, and {devices} and {slot} in the command.
    #[arg(long, value_name = "LIST", conflicts_with = "jobs")]
    pub devices: Option<String>,

    /// How long a stopped evaluation (timeout, Ctrl-C, stale speculation) gets to
    /// end after the stop signal, before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = super::duration::parse_duration_or_zero)]
    pub kill_grace: std::time::Duration,

    /// The signal that asks an evaluation to stop: TERM, INT (what `srun -X`
    /// passes on to its tasks), HUP, USR1 or USR2.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    pub stop_signal: modelsoup::search::process::StopSignal,

    /// Journal results under KEY instead of the evaluator command: evaluators
    /// given the same KEY are declared to score alike and share results (a --eval
    /// script and its --eval-server twin).
    #[arg(long, value_name = "KEY")]
    pub journal_key: Option<String>,

    // Results files and benchmark suites (docs/EVALUATOR.md).
    /// Read each score from the JSON file matching this glob (which the --eval
    /// command writes) instead of stdout; {out} is a fresh directory per
    /// evaluation, in the command too.
    #[arg(long, value_name = "PATTERN", requires = "score", conflicts_with = "eval_server")]
    pub score_file: Option<String>,

    /// A dotted path to the score in --score-file, e.g. results.arc_easy.acc,none
    /// (\. is a dot inside a key); repeat it to average several.
    #[arg(long = "score", value_name = "PATH", requires = "score_file")]
    pub score: Vec<String>,

    /// After the search, score the final soup, the best individual and the
    /// uniform soup on this benchmark suite (as `soup evaluate`); the table goes
    /// into report.md and report.json.
    #[arg(long, value_name = "FILE")]
    pub report_suite: Option<PathBuf>,
}

/// The order in which ingredients are proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// By individual score: best first for greedy, worst first for pruned.
    Sorted,
    /// As given on the command line.
    Given,
    /// Shuffled with --seed.
    Random,
}

/// Tie rule on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TieArg {
    /// Keep a proposal whose score equals the current one (>=).
    Accept,
    /// Keep only strictly better proposals (>).
    Reject,
}

const MERGE_EXAMPLES: &str = "\
Examples:
  soup merge run-a/ run-b/ run-c.safetensors -o soup/          uniform soup
  soup merge a/ b/ c/ -o soup/ --weights 0.5,0.3,0.2            weighted (normalised to sum 1)
  soup merge ft/ --base pretrained/ --lambda 0.7 -o out/        WiSE-FT: 70% of the way from the base
  soup merge ft/ --base pretrained/ --weights 0.7,0.3 -o out/   the same, the base's weight given last
  soup merge a/ b/ c/ --base pre/ --method task-arithmetic --lambda 0.8 -o out/
  soup merge a/ b/ c/ --base pre/ --method ties --density 0.2 -o out/
  soup merge a/ b/ c/ --base pre/ --method dare-ties --density 0.3 --seed 7 -o out/
  soup merge a/ b/ --method slerp --t 0.4 -o out/
  soup merge a/ b/ c/ --base pre/ --method model-stock -o out/
  soup merge --recipe recipe.yaml -o out/                       a recipe file, ours or mergekit's
  soup merge --recipe frankenmerge.yaml -o out/                 mergekit slices, passthrough, multi-document
  soup merge --recipe old-soup/ -o rebuilt/                     replay the recipe a soup records
  soup merge a/ b/ -o soup/ --dtype bf16 --max-shard-size 2GB   convert and re-shard
  soup merge runs/*/last.ckpt --key state_dict --rename 's/^model\\.//' -o soup/
                                                                Lightning training checkpoints
  soup merge lora-a/ lora-b/ --base base/ -o soup/              LoRA adapters (peft) over their base

An ingredient is a .safetensors or PyTorch .bin file, or a Hugging Face checkpoint
directory (model.safetensors, or shards listed in model.safetensors.index.json;
failing those, pytorch_model.bin or its shards and index). Ingredients may be
sharded differently, mix formats, and mix F32, F16 and BF16. Float tensors are combined
in f64 and rounded once (to nearest even) to the output dtype; integer and bool
tensors must be identical and are copied. The output directory holds
model.safetensors (or shards and an index), the recipe in each file's metadata
(replay it with --recipe), the config and tokenizer files of the first
ingredient (of the base, for methods built on one; a recipe's tokenizer_source
names another model), the config naming the dtype written, and a model card
(README.md; --no-card to skip).

A PyTorch training checkpoint (optimizer, epoch, callbacks beside the weights) is
read at --key, the dotted path of its state dict; --rename maps tensor names
before ingredients are matched (s/^module\\.// drops DDP's prefix). A LoRA
adapter directory (adapter_config.json + adapter_model.safetensors) reads as its
base (--base, or the base its config names) with each adapted matrix computed as
W0 + (alpha/r)·B·A, chunk by chunk.
It is written beside the destination and renamed into place only when complete.

Methods (definitions and papers in docs/METHODS.md): linear (the default: the
weighted average, normalised), task-arithmetic (base + lambda x sum of weighted
task vectors), ties (trim each task vector to its top --density by magnitude,
elect a sign per entry, average the agreeing entries), dare-linear and dare-ties
(drop entries with probability 1 - density, rescale by 1/density; seeded, the same
at any thread count), slerp (two models, per tensor), model-stock (per-tensor
ratio toward the base from the angle between task vectors). Recipe files (ours or
mergekit's) also have breadcrumbs, della, sce, nuslerp, multislerp, karcher,
nearswap and passthrough, slices of layers, and parameters per tensor (filters,
layer gradients); see docs/METHODS.md.";

/// Arguments of `soup merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Checkpoints to merge: .safetensors or PyTorch .bin files, or checkpoint
    /// directories.
    #[arg(value_name = "INGREDIENT", required_unless_present = "recipe")]
    pub ingredients: Vec<PathBuf>,

    /// Output directory (must not exist or be empty, unless --force).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// A recipe to replay instead of ingredients and method options: a recipe file
    /// (YAML or JSON, ours or a mergekit config), or a soup whose metadata holds one.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ingredients", "method", "base", "weights", "lambda", "density", "seed", "t", "normalize", "no_rescale", "key", "rename"])]
    pub recipe: Option<PathBuf>,

    /// Merge method.
    #[arg(long, value_enum, default_value_t = MethodArg::Linear)]
    pub method: MethodArg,

    /// The pretrained model the ingredients were fine-tuned from. Task vectors are
    /// taken from it: with linear the soup becomes base + lambda x (soup - base), as
    /// in the searches (lambda 1 is the plain soup, 0.7 WiSE-FT's 70% of the way
    /// from the base), unless --weights gives the base a weight of its own (one
    /// value more than the ingredients, last).
    #[arg(long, value_name = "MODEL")]
    pub base: Option<PathBuf>,

    /// One weight per ingredient, comma-separated (negative values are allowed
    /// where the method allows them: -0.5,1.5). Linear normalises them to sum to 1;
    /// the task-vector methods weight each task vector; with linear and --base, one
    /// more value mixes the base in directly [default: equal weights].
    #[arg(short, long, value_name = "W,W,...", value_delimiter = ',', allow_hyphen_values = true)]
    pub weights: Option<Vec<f64>>,

    /// Scale of the merged task vector (task-arithmetic, ties, dare-*, and linear
    /// with --base) [default: 1].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub lambda: Option<f64>,

    /// Fraction of each task vector kept (ties, dare-*), in [0, 1] [default: 1].
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,

    /// Seed of DARE's drop masks [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// SLERP's interpolation factor: 0 is the first model, 1 the second.
    #[arg(long, value_name = "T")]
    pub t: Option<f64>,

    /// Divide by the sum of the weights (of the agreeing weights, for ties and
    /// dare-ties) [default: true for linear and ties, false otherwise].
    #[arg(long, value_name = "BOOL")]
    pub normalize: Option<bool>,

    /// Do not rescale DARE's surviving entries by 1/density.
    #[arg(long)]
    pub no_rescale: bool,

    /// How ingredients are read: training checkpoints, renamed tensors, adapters.
    #[command(flatten)]
    pub read: IngredientArgs,

    /// How the soup is written.
    #[command(flatten)]
    pub write: WriteArgs,

    /// Print a JSON summary on stdout instead of the human one on stderr.
    #[arg(long)]
    pub json: bool,

    /// No progress bar and no summary line (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,

    /// Elements per work chunk (tuning; the default suits most CPUs).
    #[arg(long, value_name = "N", default_value_t = modelsoup::DEFAULT_CHUNK_ELEMENTS, hide = true)]
    pub chunk_elements: usize,

    /// Do not write a model card (README.md: method, models, parameters, the
    /// recipe as YAML); the support files' own README.md, if any, is kept.
    #[arg(long)]
    pub no_card: bool,
}

/// The merge methods, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Weighted average (uniform by default); with --base, WiSE-FT interpolation.
    Linear,
    /// base + lambda x sum of weighted task vectors (Ilharco et al., 2023).
    TaskArithmetic,
    /// Trim, elect sign, disjoint mean (Yadav et al., 2023).
    Ties,
    /// Drop and rescale, then add (Yu et al., 2024).
    DareLinear,
    /// Drop and rescale, then TIES's sign election.
    DareTies,
    /// Spherical interpolation of two models, per tensor.
    Slerp,
    /// Per-tensor ratio toward the base from the task vectors' angle (Jang et al., 2024).
    ModelStock,
}

/// How output files are written: options of every command that writes a model.
#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// Output dtype of float tensors [default: each tensor's dtype in the first
    /// ingredient].
    #[arg(long, value_name = "DTYPE", value_parser = parse_dtype)]
    pub dtype: Option<FloatDtype>,

    /// Split the output into shards of at most this size (e.g. 2GB, 500MB, 4GiB)
    /// [default: 5GB].
    #[arg(long, value_name = "SIZE", value_parser = super::size::parse_size)]
    pub max_shard_size: Option<u64>,

    /// Worker threads writing the output (each candidate, in a search) [default:
    /// one per core].
    #[arg(short = 't', long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,

    /// Replace the output directory if it exists and is not empty.
    #[arg(short, long)]
    pub force: bool,
}

/// How a soup is written: options shared by `merge` and the searches.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Dtype, shards, threads, replacing.
    #[command(flatten)]
    pub file: FileArgs,

    /// Copy config.json, tokenizer and other non-weight files from this directory
    /// [default: the base's with task arithmetic, TIES, DARE and Model Stock (as
    /// mergekit does), else the first ingredient's; an adapter's are its base's].
    #[arg(long, value_name = "DIR", alias = "copy-files-from")]
    pub support_files_from: Option<PathBuf>,

    /// What to do when a tensor that is not averaged (integers, bool) differs
    /// between ingredients.
    #[arg(long, value_enum, default_value_t = NonFloat::Error, value_name = "POLICY")]
    pub non_float: NonFloat,

    /// Skip the check that the ingredients share one pretrained initialisation.
    #[arg(long)]
    pub no_init_check: bool,
}

/// How ingredients are read: options of every command that opens them.
#[derive(Debug, Clone, Args)]
pub struct IngredientArgs {
    /// The dotted key of the state dict inside PyTorch training checkpoints:
    /// state_dict (Lightning, most loops), model, module… Files that are a state
    /// dict already are read as they are.
    #[arg(long, value_name = "PATH")]
    pub key: Option<String>,

    /// Rename tensors before matching ingredients to each other and to the base:
    /// s/PATTERN/REPLACEMENT/, PATTERN a regular expression (s/^module\.// drops
    /// DDP's prefix, s/^/model./ adds one); applied to every model; repeatable,
    /// in order.
    #[arg(long, value_name = "s/PATTERN/REPLACEMENT/")]
    pub rename: Vec<String>,

    /// Accept PyTorch views whose elements overlap in storage (made by expand()),
    /// each one of at most this size written out (e.g. 64MB) [default: refuse
    /// them].
    #[arg(long, value_name = "SIZE", value_parser = super::size::parse_size)]
    pub expand_views: Option<u64>,
}

/// Handling of non-averaged tensors that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NonFloat {
    /// Stop with an error naming the tensor and the ingredients.
    Error,
    /// Keep the first ingredient's copy.
    First,
}

fn parse_dtype(s: &str) -> Result<FloatDtype, String> {
    s.parse().map_err(|e: modelsoup::engine::dtype::UnknownDtype| e.to_string())
}

/// `--threads N`: at least 1; leaving the flag out means one per core.
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (leave --threads out for one thread per core)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--jobs N`: at least 1.
fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (1 runs one evaluation at a time)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
