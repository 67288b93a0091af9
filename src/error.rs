//! The library's error type: one variant per failure, each carrying the file, shard
//! and tensor a user needs to find and fix the problem.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while opening, planning or merging checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being attempted ("open", "write", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A path is neither a weights file nor a checkpoint directory.
    #[error(
        "{}: not a checkpoint: expected a .safetensors or PyTorch .bin file, or a \
         directory with model.safetensors, model.safetensors.index.json, \
         pytorch_model.bin or pytorch_model.bin.index.json{hint}",
        path.display()
    )]
    NotACheckpoint {
        /// The path given as an ingredient.
        path: PathBuf,
        /// Extra advice, starting with "; " when present.
        hint: String,
    },

    /// A Hugging Face model id (`org/name`) names no local path and is not in the
    /// local cache.
    #[error(
        "{id}: no such file or directory, and not in the Hugging Face cache at {} \
         ({reason}); to download it: {command}",
        cache.display()
    )]
    NotCached {
        /// The id as given.
        id: String,
        /// The cache directory looked in.
        cache: PathBuf,
        /// What is missing there.
        reason: String,
        /// The `hf download` command that fetches it.
        command: String,
    },

    /// A safetensors header is malformed: bad length, not JSON, offsets that do not
    /// tile the data, or a file length that disagrees with the header.
    #[error("{}: invalid safetensors file", path.display())]
    Header {
        /// The shard file.
        path: PathBuf,
        /// What the format check found.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// `model.safetensors.index.json` is not valid JSON of the expected shape.
    #[error("{}: invalid index", path.display())]
    IndexJson {
        /// The index file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// An index or metadata file is larger than anything legitimate.
    #[error("{}: file is {size} bytes, more than the {limit} bytes allowed", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// The index names a shard that is not a plain file name inside the directory.
    #[error("{}: shard name {shard:?} is not a plain file name in the checkpoint directory", index.display())]
    UnsafeShardName {
        /// The index file.
        index: PathBuf,
        /// The offending name.
        shard: String,
    },

    /// The index names a shard file that does not exist.
    #[error("{}: shard {shard:?} named in the index does not exist", index.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The missing shard's name.
        shard: String,
    },

    /// The index and the shard headers disagree about where a tensor lives.
    #[error("{}: {problem}", index.display())]
    IndexMismatch {
        /// The index file.
        index: PathBuf,
        /// What disagrees, naming the tensor and the shards.
        problem: String,
    },

    /// One tensor name appears in two shards of the same checkpoint.
    #[error("tensor {tensor:?} appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor name.
        tensor: String,
        /// The shard holding it first.
        first: PathBuf,
        /// The other shard.
        second: PathBuf,
    },

    /// The ingredients cannot be averaged tensor by tensor.
    #[error("ingredients are incompatible ({} difference{}):\n{}", .0.len(), plural(.0.len()), Differences(.0))]
    Incompatible(Vec<Difference>),

    /// A tensor that is copied rather than averaged differs between ingredients.
    #[error(
        "tensor {tensor:?} ({dtype}) is not averaged and must be identical in every \
         ingredient, but {} differs from {}",
        other.display(), first.display()
    )]
    NonFloatMismatch {
        /// The tensor name.
        tensor: String,
        /// Its dtype.
        dtype: String,
        /// The first ingredient, whose bytes would be copied.
        first: PathBuf,
        /// An ingredient whose bytes differ.
        other: PathBuf,
    },

    /// The number of weights does not match the number of ingredients.
    #[error("{got} weight{} given for {expected} ingredient{}", plural(*.got), plural(*.expected))]
    WeightCount {
        /// Ingredients.
        expected: usize,
        /// Weights.
        got: usize,
    },

    /// A weight is NaN or infinite.
    #[error("weight {value} for ingredient {ingredient} on tensor {tensor:?} is not finite")]
    NonFiniteWeight {
        /// The tensor whose weights were asked for.
        tensor: String,
        /// Index of the ingredient.
        ingredient: usize,
        /// The weight.
        value: f64,
    },

    /// A merge was asked of no ingredients.
    #[error("no ingredients given")]
    NoIngredients,

    /// A size does not fit the platform's or the format's integers.
    #[error("tensor {tensor:?}: size overflows")]
    SizeOverflow {
        /// The tensor whose size overflowed.
        tensor: String,
    },

    /// The output path would replace something that must not be replaced.
    #[error("output {}: {reason}", path.display())]
    Output {
        /// The output path.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// A header or index could not be encoded.
    #[error("cannot encode JSON")]
    Json(#[source] serde_json::Error),

    /// A recipe file (or a soup's recorded recipe) cannot be used.
    #[error("recipe {}: {reason}", path.display())]
    Recipe {
        /// The recipe file, or the soup it was read from.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },

    /// A support file the recipe asks for (tokenizer, chat template, config)
    /// cannot be made.
    #[error("{}: {reason}", path.display())]
    SupportFile {
        /// The file or model directory concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A merge method was given parameters it cannot use.
    #[error("{method}: {reason}")]
    Method {
        /// The method's name.
        method: &'static str,
        /// What is wrong, naming the parameter (and the tensor, when it varies).
        reason: String,
    },

    /// The caller asked the merge to stop.
    #[error("cancelled")]
    Cancelled,

    /// An input file changed while it was mapped: another process truncated,
    /// extended or rewrote it, or the disk failed to deliver a page. What was read
    /// from it cannot be trusted, so nothing was written.
    #[error("{} {change} while it was being read{detail}", path.display())]
    InputChanged {
        /// The input file.
        path: PathBuf,
        /// What happened: `changed size`, `was modified` or `could not be read`.
        change: &'static str,
        /// Details, starting with " (" when present, e.g. ` (4096 bytes when
        /// opened, now 1024)`.
        detail: String,
    },

    /// Another process holds the lock of an output or a run directory.
    #[error("{} is in use by soup ({holder})", path.display())]
    InUse {
        /// The output or run directory.
        path: PathBuf,
        /// Who holds it, e.g. `pid 1234`.
        holder: String,
    },

    /// A safetensors header names one tensor twice (the JSON has a duplicate key),
    /// so which entry is meant is ambiguous.
    #[error("{}: invalid safetensors file: the header lists tensor {tensor:?} twice", path.display())]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        tensor: String,
    },

    /// A header lists more tensors than soup accepts in one file.
    #[error(
        "{}: the header lists {count} tensors, more than the {limit} soup accepts in one file",
        path.display()
    )]
    TooManyTensors {
        /// The file.
        path: PathBuf,
        /// Entries in its header.
        count: usize,
        /// The limit.
        limit: usize,
    },

    /// A PyTorch view whose elements overlap in storage (an `expand()`ed one):
    /// written out, it would be larger than what the file holds, without bound.
    #[error(
        "{}: tensor {tensor:?} (shape {shape:?}, strides {strides:?}) is a view whose \
         elements overlap in its storage (an expand()ed or as_strided tensor); written out \
         it would take {bytes} bytes{}; save it with .contiguous() (or .clone()), or allow \
         such views up to a size with --expand-views",
        path.display(),
        if *limit > 0 { format!(", more than the {limit} allowed") } else { String::new() }
    )]
    OverlappingView {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its strides in elements.
        strides: Vec<usize>,
        /// Its size written out densely.
        bytes: u64,
        /// The largest such view accepted (0: none).
        limit: u64,
    },

    /// The tensors of a PyTorch file hold far more bytes than the file (many names
    /// on the same storages), so writing them out is refused.
    #[error(
        "{}: its tensors hold {bytes} bytes written out, more than 8 times the file's \
         {file_len} bytes (many names view the same storage)",
        path.display()
    )]
    ViewsTooLarge {
        /// The file.
        path: PathBuf,
        /// Bytes of all its tensors written out.
        bytes: u64,
        /// The file's size.
        file_len: u64,
    },

    /// A `--rename` rule is not `s/PATTERN/REPLACEMENT/`.
    #[error("rename rule {rule:?}: {reason}")]
    Rename {
        /// The rule as written.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Renaming gave two tensors of one checkpoint the same name.
    #[error(
        "{}: renaming gives tensors {first:?} and {second:?} the same name {name:?}",
        path.display()
    )]
    RenameCollision {
        /// The checkpoint.
        path: PathBuf,
        /// One tensor's original name.
        first: String,
        /// The other's.
        second: String,
        /// The name both would get.
        name: String,
    },

    /// A LoRA adapter that cannot be applied to its base.
    #[error("{}: LoRA adapter: {reason}", path.display())]
    Adapter {
        /// The adapter directory.
        path: PathBuf,
        /// What is wrong, naming the tensor or config key.
        reason: String,
    },

    /// A gradient file an evaluator wrote cannot be used (learned soups by
    /// gradient): a tensor the soup does not have, a shape or dtype that does not
    /// fit, a NaN.
    #[error("gradient file {}: {reason}", path.display())]
    Gradient {
        /// The gradient file.
        path: PathBuf,
        /// What is wrong, naming the tensor.
        reason: String,
    },

    /// A PyTorch `.bin` checkpoint could not be read.
    #[error(transparent)]
    Torch(#[from] crate::torch::TorchError),

    /// The worker thread pool could not be built.
    #[error("cannot start worker threads")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}

/// One way in which ingredients disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Difference {
    /// A tensor present in some ingredients is missing from others.
    Missing {
        /// The tensor name.
        tensor: String,
        /// Ingredients that lack it.
        missing_in: Vec<PathBuf>,
        /// An ingredient that has it.
        present_in: PathBuf,
    },
    /// A tensor has different shapes.
    Shape {
        /// The tensor name.
        tensor: String,
        /// Shape in the first ingredient that has the tensor.
        first: (PathBuf, Vec<usize>),
        /// A different shape elsewhere.
        other: (PathBuf, Vec<usize>),
    },
    /// A tensor is a float in one ingredient and not in another, or two non-float
    /// dtypes differ.
    Dtype {
        /// The tensor name.
        tensor: String,
        /// Dtype in the first ingredient that has the tensor.
        first: (PathBuf, String),
        /// A different dtype elsewhere.
        other: (PathBuf, String),
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing { tensor, missing_in, present_in } => {
                write!(f, "tensor {tensor:?} is missing in ")?;
                for (i, p) in missing_in.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}", p.display())?;
                }
                write!(f, " (present in {})", present_in.display())
            }
            Difference::Shape { tensor, first, other } => write!(
                f,
                "tensor {tensor:?} has shape {:?} in {} but {:?} in {}",
                first.1,
                first.0.display(),
                other.1,
                other.0.display()
            ),
            Difference::Dtype { tensor, first, other } => write!(
                f,
                "tensor {tensor:?} has dtype {} in {} but {} in {}",
                first.1,
                first.0.display(),
                other.1,
                other.0.display()
            ),
        }
    }
}

/// How many differences an error message lists before summarising the rest.
const LISTED_DIFFERENCES: usize = 20;

struct Differences<'a>(&'a [Difference]);

impl fmt::Display for Differences<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().take(LISTED_DIFFERENCES).enumerate() {
            let sep = if i == 0 { "" } else { "\n" };
            write!(f, "{sep}  - {d}")?;
        }
        if self.0.len() > LISTED_DIFFERENCES {
            write!(f, "\n  … and {} more", self.0.len() - LISTED_DIFFERENCES)?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
