//! Opening an ingredient: resolving a path to its shard files, mapping them, and
//! validating every header before any tensor data is touched.
//!
//! An ingredient is a `.safetensors` file or a PyTorch `torch.save` zip file
//! (`pytorch_model.bin`), or a directory holding `model.safetensors`, shards listed
//! by `model.safetensors.index.json`, `pytorch_model.bin`, or shards listed by
//! `pytorch_model.bin.index.json` (the Hugging Face layouts, safetensors first).
//! PyTorch files are read by [`crate::torch`] without running their pickle; their
//! contiguous tensors are byte ranges of the file like safetensors ones, and views
//! that are not contiguous (a transposed or sliced weight) are gathered a chunk at a
//! time when read. After [`Checkpoint::open`] succeeds, every tensor's bytes are
//! known to lie inside its mapped file and to match its dtype and shape, so later
//! reads cannot go out of bounds. A PyTorch storage is checked against its CRC-32
//! when first read (`engine::storage_check`), or by [`Checkpoint::verify`].
//!
//! [`Checkpoint::open_with`] also reads ingredients as training pipelines leave
//! them ([`OpenOptions`]): the state dict at a dotted key of a PyTorch training
//! checkpoint, names mapped by [`crate::engine::rename`] rules, and LoRA adapter
//! directories, whose adapted matrices are *computed* tensors
//! ([`crate::engine::adapter`]): `bytes` materialises `W₀ + s·B·A` a chunk at a
//! time, so every pass reads them like stored ones.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::Deserialize;

use crate::engine::mapped::{self, Mapping};
use crate::engine::storage_check::StorageChecks;
use crate::engine::strided_pages::StridedPages;
use crate::error::{Error, Result};

/// The file name of a single-file checkpoint in a directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The file name of the shard index in a directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The file name of a single-file PyTorch checkpoint in a directory.
pub const TORCH_FILE: &str = "pytorch_model.bin";
/// The file name of a PyTorch checkpoint's shard index in a directory.
pub const TORCH_INDEX_FILE: &str = "pytorch_model.bin.index.json";
/// Largest index file accepted; real ones are well under 1 MB.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Tensors of one PyTorch file may hold together at most this many times the
/// file's bytes: several names may view one storage (tied weights: a T5 has four
/// on its embedding), but a file of thousands of names on one large storage would
/// be written out thousands of times.
const SHARED_STORAGE_FACTOR: u64 = 8;

/// One tensor of a checkpoint: where its bytes are and what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name, e.g. `model.layers.0.mlp.up_proj.weight`.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape; empty for a scalar.
    pub shape: Vec<usize>,
    /// Index of the shard file in [`Checkpoint::shards`].
    pub shard: usize,
    /// Absolute byte offset of the data in the shard file.
    pub offset: usize,
    /// Byte length of the data.
    pub len: usize,
    /// For a view of a PyTorch storage that is not contiguous: its index among the
    /// tensors of the shard's [`crate::torch::StateDict`], whose elements are
    /// gathered on read. `offset` is then where its storage starts (for releasing
    /// pages) and `len` still its own byte length.
    pub strided: Option<usize>,
    /// For a tensor computed when read (a LoRA-adapted matrix, F64): its index
    /// among the checkpoint's computed tensors. `shard` and `offset` are then those
    /// of the stored matrix it starts from.
    pub computed: Option<usize>,
}

impl TensorEntry {
    /// Number of elements (1 for a scalar, 0 for an empty tensor).
    pub fn numel(&self) -> usize {
        // Cannot overflow: the header check proved numel × element size fits.
        self.shape.iter().product()
    }
}

/// One mapped shard file.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: Mapping,
    metadata: BTreeMap<String, String>,
    /// What a PyTorch file holds, and what reading it keeps.
    torch: Option<TorchShard>,
}

/// A PyTorch file's state dict (for gathering its strided views), which of its
/// storages have been checked against their CRC-32, and which strided view was
/// read last (whose pages to drop when it is done).
#[derive(Debug)]
struct TorchShard {
    state: crate::torch::StateDict,
    checks: StorageChecks,
    strided: StridedPages,
}

impl Shard {
    /// Fails with the error for a PyTorch storage of this file that did not match
    /// its CRC-32 when it was first read.
    fn check_storages(&self) -> Result<()> {
        match &self.torch {
            Some(t) => t.checks.failure(&t.state, &self.path).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// File size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file is empty (never true for a shard that opened).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A validated, memory-mapped ingredient. Cloning is cheap and shares the
/// mappings, so one opened ingredient can take part in many merges.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    directory: Option<PathBuf>,
    shards: Arc<[Arc<Shard>]>,
    tensors: Arc<[TensorEntry]>,
    by_name: Arc<NameIndex>,
    computed: Arc<[crate::engine::adapter::Computed]>,
}

/// How an ingredient is read, besides its path.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The dotted key of the state dict inside PyTorch files that hold more than
    /// one (training checkpoints: `state_dict`, `model`); files that are a state
    /// dict already are read as they are.
    pub key: Option<String>,
    /// Name mappings, applied in order to every tensor's name.
    pub rename: Vec<crate::engine::rename::Rename>,
    /// The model a LoRA adapter directory is applied to; `None` takes the
    /// adapter config's `base_model_name_or_path`.
    pub base: Option<Checkpoint>,
    /// PyTorch views whose elements overlap in storage (made by `expand()`, or
    /// `as_strided`) are refused, since written out they can be arbitrarily larger
    /// than the file; with a non-zero bound, such a view of at most this many bytes
    /// (written out densely) is accepted and materialised.
    pub max_expanded_view: u64,
}

/// Tensor positions sorted by name, for lookups by binary search: 4 bytes per
/// tensor, where a map from owned names would copy every name again (a header of
/// a million tensors is allowed).
#[derive(Debug, Default)]
struct NameIndex(Vec<u32>);

impl NameIndex {
    /// Indexes `tensors`; the first duplicate name found, if any, is returned as
    /// the error (the positions of its two entries).
    fn new(tensors: &[TensorEntry]) -> std::result::Result<NameIndex, (usize, usize)> {
        // MAX_TENSORS keeps positions within u32.
        let mut order: Vec<u32> = (0..tensors.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            tensors[a as usize].name.cmp(&tensors[b as usize].name).then(a.cmp(&b))
        });
        if let Some(pair) =
            order.windows(2).find(|w| tensors[w[0] as usize].name == tensors[w[1] as usize].name)
        {
            return Err((pair[0] as usize, pair[1] as usize));
        }
        Ok(NameIndex(order))
    }

    fn get(&self, tensors: &[TensorEntry], name: &str) -> Option<usize> {
        self.0
            .binary_search_by(|&i| tensors[i as usize].name.as_str().cmp(name))
            .ok()
            .map(|found| self.0[found] as usize)
    }
}

/// Most tensors one checkpoint may hold. Real checkpoints hold thousands (a
/// mixture of experts tens of thousands); the bound keeps the memory of a hostile
/// header of millions of empty tensors to a few hundred MB, and is checked before
/// the header is parsed.
pub const MAX_TENSORS: usize = 500_000;

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file or a Hugging Face checkpoint directory, maps every
    /// shard and validates all headers (and the index against them). A path that
    /// does not exist but reads as a Hub id (`org/name[@revision]`) opens that
    /// model's snapshot in the local Hugging Face cache ([`crate::engine::hub`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// [`Checkpoint::open`] with [`OpenOptions`]: a key into training checkpoints,
    /// renaming rules, and the base of a LoRA adapter directory (a directory with
    /// `adapter_config.json`, see [`crate::engine::adapter`]).
    pub fn open_with(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        if let Some((_, snapshot)) = crate::engine::hub::locate(path)? {
            return Self::open_with(&snapshot.dir, options);
        }
        let opened = if crate::engine::adapter::is_adapter(path) {
            crate::engine::adapter::open(path, options)?
        } else {
            Self::open_files(path, options)?
        };
        opened.renamed(path, &options.rename)
    }

    /// Opens the weight files `path` names, reading PyTorch files at
    /// `options.key` (its `rename` and `base` are not used here).
    pub(crate) fn open_files(path: &Path, options: &OpenOptions) -> Result<Self> {
        let meta = fs::metadata(path).map_err(Error::io("open", path))?;
        if meta.is_file() {
            let shard = open_shard(path.to_path_buf(), options)?;
            return Self::assemble(path, None, vec![shard], None);
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_indexed(path, &index, options);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            let shard = open_shard(single, options)?;
            return Self::assemble(path, Some(path.to_path_buf()), vec![shard], None);
        }
        let torch_index = path.join(TORCH_INDEX_FILE);
        if torch_index.is_file() {
            return Self::open_indexed(path, &torch_index, options);
        }
        let torch = path.join(TORCH_FILE);
        if torch.is_file() {
            let shard = open_shard(torch, options)?;
            return Self::assemble(path, Some(path.to_path_buf()), vec![shard], None);
        }
        Err(Error::NotACheckpoint { path: path.to_path_buf(), hint: directory_hint(path) })
    }

    /// This checkpoint with every tensor renamed by `rules` (in order); two
    /// tensors that would get one name are an error.
    fn renamed(self, path: &Path, rules: &[crate::engine::rename::Rename]) -> Result<Self> {
        if rules.is_empty() {
            return Ok(self);
        }
        let mut tensors = self.tensors.to_vec();
        for t in &mut tensors {
            t.name = crate::engine::rename::apply_all(rules, &t.name);
        }
        let by_name = NameIndex::new(&tensors).map_err(|(i, j)| Error::RenameCollision {
            path: path.to_path_buf(),
            first: self.tensors[i].name.clone(),
            second: self.tensors[j].name.clone(),
            name: tensors[i].name.clone(),
        })?;
        Ok(Checkpoint { tensors: tensors.into(), by_name: Arc::new(by_name), ..self })
    }

    /// A checkpoint over the given shards (already opened) and tensors, some of
    /// them computed: how [`crate::engine::adapter`] assembles an adapted model.
    /// Two tensors of one name are an error.
    pub(crate) fn from_parts(
        path: &Path,
        directory: Option<PathBuf>,
        shards: Vec<Arc<Shard>>,
        tensors: Vec<TensorEntry>,
        computed: Vec<crate::engine::adapter::Computed>,
    ) -> Result<Checkpoint> {
        let by_name = NameIndex::new(&tensors).map_err(|(a, b)| Error::DuplicateTensor {
            tensor: tensors[a].name.clone(),
            first: shards[tensors[a].shard].path.clone(),
            second: shards[tensors[b].shard].path.clone(),
        })?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            directory,
            shards: shards.into(),
            tensors: tensors.into(),
            by_name: Arc::new(by_name),
            computed: computed.into(),
        })
    }

    /// The shards, shared (for assembling another checkpoint over them).
    pub(crate) fn shared_shards(&self) -> Vec<Arc<Shard>> {
        self.shards.to_vec()
    }

    /// Whether any tensor is computed when read (the checkpoint is an adapter
    /// applied to its base).
    pub fn has_computed(&self) -> bool {
        !self.computed.is_empty()
    }

    /// The dtype a tensor is stored in: its own, or for a computed tensor the
    /// dtype of the matrix it starts from (what a soup writes by default).
    pub fn declared_dtype(&self, tensor: &TensorEntry) -> Dtype {
        match tensor.computed {
            Some(i) => self.computed[i].declared(),
            None => tensor.dtype,
        }
    }

    /// The bytes a tensor takes where it is stored: its own, or for a computed
    /// tensor those of the matrix it starts from.
    pub fn declared_len(&self, tensor: &TensorEntry) -> usize {
        match tensor.computed {
            Some(_) => tensor.numel() * (self.declared_dtype(tensor).bitsize() / 8),
            None => tensor.len,
        }
    }

    /// The shard and the file bytes `start..end` that reading `len` bytes of
    /// `tensor` from byte `start` touches (for releasing pages). A computed
    /// tensor's span is that of the stored matrix it starts from.
    pub(crate) fn span(
        &self,
        tensor: &TensorEntry,
        start: usize,
        len: usize,
    ) -> (usize, Range<usize>) {
        match tensor.computed {
            Some(i) => self.computed[i].span(start, len),
            None => (tensor.shard, tensor.offset + start..tensor.offset + start + len),
        }
    }

    fn open_indexed(dir: &Path, index: &Path, options: &OpenOptions) -> Result<Self> {
        let text = read_bounded(index, MAX_INDEX_BYTES)?;
        let (weight_map, names) = parse_index(&text, index)?;
        let mut shards = Vec::with_capacity(names.len());
        for name in names {
            let shard_path = dir.join(&name);
            if !shard_path.is_file() {
                return Err(Error::MissingShard { index: index.to_path_buf(), shard: name });
            }
            shards.push(open_shard(shard_path, options)?);
        }
        Self::assemble(dir, Some(dir.to_path_buf()), shards, Some((index, &weight_map)))
    }

    /// Gathers the shards' tensors in file order, rejecting duplicates and any
    /// disagreement with the index.
    fn assemble(
        path: &Path,
        directory: Option<PathBuf>,
        opened: Vec<(Shard, Vec<TensorEntry>)>,
        index: Option<(&Path, &BTreeMap<String, String>)>,
    ) -> Result<Self> {
        let mut shards: Vec<Arc<Shard>> = Vec::with_capacity(opened.len());
        let mut tensors: Vec<TensorEntry> = Vec::new();
        for (shard_no, (shard, entries)) in opened.into_iter().enumerate() {
            if tensors.len() + entries.len() > MAX_TENSORS {
                return Err(Error::TooManyTensors {
                    path: path.to_path_buf(),
                    count: tensors.len() + entries.len(),
                    limit: MAX_TENSORS,
                });
            }
            tensors.extend(entries.into_iter().map(|e| TensorEntry { shard: shard_no, ..e }));
            shards.push(Arc::new(shard));
        }
        let by_name = NameIndex::new(&tensors).map_err(|(a, b)| {
            let (first, second) = (&tensors[a], &tensors[b]);
            Error::DuplicateTensor {
                tensor: first.name.clone(),
                first: shards[first.shard].path.clone(),
                second: shards[second.shard].path.clone(),
            }
        })?;
        let checkpoint = Checkpoint {
            path: path.to_path_buf(),
            directory,
            shards: shards.into(),
            tensors: tensors.into(),
            by_name: Arc::new(by_name),
            computed: Arc::new([]),
        };
        if let Some((index, weight_map)) = index {
            check_index(index, weight_map, &checkpoint)?;
        }
        Ok(checkpoint)
    }

    /// The path this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoint's directory, when it was opened as one (config and tokenizer
    /// files live there).
    pub fn directory(&self) -> Option<&Path> {
        self.directory.as_deref()
    }

    /// The mapped shard files, in index order (an adapter's first, then its
    /// base's).
    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }

    /// All tensors, shard by shard in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// Bytes of tensor data in the float tensors (what a streaming pass reads).
    pub fn float_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .filter(|t| crate::engine::dtype::FloatDtype::from_safetensors(t.dtype).is_some())
            .map(|t| t.len as u64)
            .sum()
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.position(name).map(|i| &self.tensors[i])
    }

    /// Position of a tensor in [`Checkpoint::tensors`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(&self.tensors, name)
    }

    /// The same files seen with a different list of tensors (each a range inside
    /// them, e.g. an alias of another entry): for reconciling tied embeddings.
    pub(crate) fn with_tensors(&self, tensors: Vec<TensorEntry>) -> Checkpoint {
        // Callers add aliases under names not yet present, so names stay distinct.
        let by_name = NameIndex::new(&tensors).unwrap_or_default();
        Checkpoint { tensors: tensors.into(), by_name: Arc::new(by_name), ..self.clone() }
    }

    /// The bytes of `len` bytes of `tensor` starting `start` bytes into its data
    /// (in row-major order): borrowed from the mapping, or gathered into a new
    /// buffer for a strided PyTorch view. The first read of a PyTorch storage
    /// checks it against its CRC-32 (`engine::storage_check`); a mismatch fails
    /// the pass that read it.
    ///
    /// # Panics
    /// If the range lies outside the tensor; callers slice within validated sizes.
    pub(crate) fn bytes(&self, tensor: &TensorEntry, start: usize, len: usize) -> Cow<'_, [u8]> {
        self.read(tensor, start, len, true)
    }

    /// [`Checkpoint::bytes`] without the first-read check of a PyTorch storage: for
    /// samples that only inform a warning, so that sampling a file does not read it
    /// all ahead of the pass that will.
    pub(crate) fn sample(&self, tensor: &TensorEntry, start: usize, len: usize) -> Cow<'_, [u8]> {
        self.read(tensor, start, len, false)
    }

    fn read(&self, tensor: &TensorEntry, start: usize, len: usize, check: bool) -> Cow<'_, [u8]> {
        assert!(start + len <= tensor.len, "chunk outside tensor {:?}", tensor.name);
        if let Some(i) = tensor.computed {
            return Cow::Owned(self.computed[i].bytes(self, start, len));
        }
        let shard = &self.shards[tensor.shard];
        let Some(torch) = &shard.torch else {
            return Cow::Borrowed(&shard.map[tensor.offset + start..tensor.offset + start + len]);
        };
        if check && len > 0 {
            torch.checks.ensure(&torch.state, &shard.map, tensor.offset);
        }
        let Some(i) = tensor.strided else {
            return Cow::Borrowed(&shard.map[tensor.offset + start..tensor.offset + start + len]);
        };
        // Whole elements covering the range, then the range within them.
        let size = (tensor.dtype.bitsize() / 8).max(1);
        let (first, end) = (start / size, (start + len).div_ceil(size));
        let mut out = torch.strided.gather(&torch.state, i, &shard.map, first, end - first);
        let skip = start - first * size;
        out.truncate(skip + len);
        out.drain(..skip);
        Cow::Owned(out)
    }

    /// Tells the kernel whether the next reads are samples here and there (no
    /// readahead) or, as usual, passes front to back.
    pub(crate) fn expect_samples(&self, sampling: bool) {
        let advice = if sampling { mapped::Advice::Random } else { mapped::Advice::Sequential };
        for shard in self.shards.iter() {
            mapped::advise(&shard.map, advice);
        }
    }

    /// Checks every PyTorch storage not read yet against its CRC-32, reading it
    /// all now (passes check each storage as they first read it anyway): for
    /// commands that vouch for a file without streaming it.
    pub fn verify(&self) -> Result<()> {
        for shard in self.shards.iter() {
            if let Some(t) = &shard.torch {
                t.checks.ensure_all(&t.state, &shard.map);
            }
        }
        self.check_unchanged()
    }

    /// Fails with [`Error::InputChanged`] when a shard file changed (size or
    /// modification time) since it was opened, or a fault hit its mapping, and
    /// with [`Error::Torch`] when a PyTorch storage read so far did not match its
    /// CRC-32: what was read from it cannot be trusted.
    pub(crate) fn check_unchanged(&self) -> Result<()> {
        self.shards.iter().try_for_each(|s| {
            s.map.check()?;
            s.check_storages()
        })
    }

    /// [`Checkpoint::check_unchanged`] for the shards a fault hit, only: cheap
    /// enough for every chunk once [`mapped::faults`] has moved.
    pub(crate) fn check_faulted(&self) -> Result<()> {
        self.shards.iter().try_for_each(|s| {
            s.map.check_faulted()?;
            s.check_storages()
        })
    }

    /// Drops this process's mapping of bytes `start..end` of shard `shard` (see
    /// [`mapped::release`]); the data stays readable.
    pub(crate) fn release(&self, shard: usize, start: usize, end: usize) {
        mapped::release(&self.shards[shard].map, start, end);
    }
}

/// Maps one shard and lists its tensors in file order: a PyTorch file when it is
/// a zip archive or named like one (`.bin`, `.pt`, `.pth`), else safetensors.
fn open_shard(path: PathBuf, options: &OpenOptions) -> Result<(Shard, Vec<TensorEntry>)> {
    let map = mapped::map_file(&path)?;
    let torch_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "bin" | "pt" | "pth"));
    let parsed = if crate::torch::looks_like_torch_zip(&map) || torch_name {
        read_torch(&map, &path, options)
            .map(|(state, tensors)| (BTreeMap::new(), Some(state), tensors))
    } else {
        parse_header(&map, &path).map(|(tensors, metadata)| (metadata, None, tensors))
    };
    // A file truncated while its header was read reads as zeros past its new end,
    // which would fail the format checks for the wrong reason: say what happened.
    map.check()?;
    let (metadata, torch, tensors) = parsed?;
    let torch = torch.map(|state| TorchShard {
        checks: StorageChecks::new(&state),
        strided: StridedPages::default(),
        state,
    });
    Ok((Shard { path, map, metadata, torch }, tensors))
}

/// Reads a PyTorch file's state dict (at `options.key` in a training checkpoint)
/// and lists its tensors in the dict's order.
fn read_torch(
    map: &Mapping,
    path: &Path,
    options: &OpenOptions,
) -> Result<(crate::torch::StateDict, Vec<TensorEntry>)> {
    // Storages are checked against their CRC-32 when first read, not here
    // (`engine::storage_check`): opening reads the archive's directory and pickle.
    // Finding each storage's data reads its local header, a page here and there:
    // without readahead, which would bring megabytes of the storage after it from
    // the disk, and with what the read mapped dropped at once (the kernel maps a
    // whole cached folio, up to 2 MiB, around a page read; a few hundred
    // storages would hold ~100 MB of RSS).
    mapped::advise(map, mapped::Advice::Random);
    let mut touched = |r: Range<usize>| {
        const FOLIO: usize = 2 << 20;
        mapped::release(map, r.start / FOLIO * FOLIO, r.end.div_ceil(FOLIO) * FOLIO);
    };
    let state = crate::torch::read_state_dict_at(map, path, options.key.as_deref(), &mut touched);
    mapped::release(map, 0, map.len());
    mapped::advise(map, mapped::Advice::Sequential);
    let state = state?;
    check_views(&state, map.len() as u64, path, options)?;
    let tensors = state
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| match state.byte_range(t) {
            Some(range) => TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                shard: 0,
                offset: range.start,
                len: range.len(),
                strided: None,
                computed: None,
            },
            None => TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                shard: 0,
                offset: state.storage_of(t).offset(),
                len: t.byte_len(),
                strided: Some(i),
                computed: None,
            },
        })
        .collect();
    Ok((state, tensors))
}

/// Refuses views whose elements overlap (unless `options` allows them, up to its
/// bound) and files whose tensors hold far more bytes than the file: what may be
/// written out of a PyTorch file is bounded by the file.
fn check_views(
    state: &crate::torch::StateDict,
    file_len: u64,
    path: &Path,
    options: &OpenOptions,
) -> Result<()> {
    let mut expanded = 0u64;
    let mut total = 0u64;
    for t in state.tensors() {
        let bytes = t.byte_len() as u64;
        if state.overlaps(t) {
            if bytes > options.max_expanded_view {
                return Err(Error::OverlappingView {
                    path: path.to_path_buf(),
                    tensor: t.name().to_owned(),
                    shape: t.shape().to_vec(),
                    strides: t.strides().to_vec(),
                    bytes,
                    limit: options.max_expanded_view,
                });
            }
            expanded = expanded.saturating_add(bytes);
        } else {
            total = total.saturating_add(bytes);
        }
    }
    let limit = file_len.saturating_mul(SHARED_STORAGE_FACTOR);
    if total > limit {
        return Err(Error::ViewsTooLarge { path: path.to_path_buf(), bytes: total, file_len });
    }
    Ok(())
}

/// Validates the safetensors header of a whole file's bytes and lists its tensors in
/// file order, with absolute offsets (the `shard` field is 0), plus the file's
/// `__metadata__`. On success every tensor's range lies inside `bytes` and matches
/// its dtype and shape, and the ranges tile the data exactly.
pub fn parse_header(
    bytes: &[u8],
    path: &Path,
) -> Result<(Vec<TensorEntry>, BTreeMap<String, String>)> {
    let invalid = |source| Error::Header { path: path.to_path_buf(), source };
    let scan = scan_header(bytes);
    if let Some(scan) = &scan {
        if scan.data_past_end {
            return Err(invalid(SafeTensorError::MetadataIncompleteBuffer));
        }
        if scan.entries > MAX_TENSORS {
            return Err(Error::TooManyTensors {
                path: path.to_path_buf(),
                count: scan.entries,
                limit: MAX_TENSORS,
            });
        }
    }
    let duplicate = || {
        repeated_key(bytes).map(|tensor| Error::DuplicateKey { path: path.to_path_buf(), tensor })
    };
    let (header_len, header) = match SafeTensors::read_metadata(bytes) {
        Ok(parsed) => parsed,
        // A repeated name is why the offsets do not tile, if there is one.
        Err(e) => return Err(duplicate().unwrap_or_else(|| invalid(e))),
    };
    // read_metadata proved 8 + header_len + (end of the last tensor) == bytes.len()
    // and that the tensors tile the data without gaps or overlaps, but kept only
    // the last of two entries with one name (a JSON map's last key wins).
    if scan.is_some_and(|scan| scan.entries != header.tensors().len() || scan.metadata > 1) {
        if let Some(e) = duplicate() {
            return Err(e);
        }
    }
    let data_start = 8 + header_len;
    let mut tensors: Vec<TensorEntry> = header
        .tensors()
        .into_iter()
        .map(|(name, info)| TensorEntry {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            shard: 0,
            offset: data_start + info.data_offsets.0,
            len: info.data_offsets.1 - info.data_offsets.0,
            strided: None,
            computed: None,
        })
        .collect();
    // Empty tensors first at a shared offset, so the ranges tile in this order.
    tensors.sort_by(|a, b| (a.offset, a.len, &a.name).cmp(&(b.offset, b.len, &b.name)));
    debug_assert!(tensors.iter().all(|e| bytes.get(e.offset..e.offset + e.len).is_some()));
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok((tensors, metadata))
}

/// The header's JSON, if its length prefix and bytes can be read.
fn header_json(bytes: &[u8]) -> Option<&[u8]> {
    bytes
        .get(..8)
        .and_then(|prefix| usize::try_from(u64::from_le_bytes(prefix.try_into().ok()?)).ok())
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
}

/// What one pass over a header's JSON finds before the format check, allocating
/// nothing per entry.
#[derive(Debug, Clone, Copy)]
struct HeaderScan {
    /// Tensor entries, a repeated name counted each time.
    entries: usize,
    /// `__metadata__` keys (more than one is ambiguous too).
    metadata: usize,
    /// Whether an entry declares data past the end of the file. safetensors 0.8
    /// adds the declared data length to the header length without a checked add,
    /// so a header declaring ~2⁶⁴ bytes of data overflows there (a panic where
    /// overflow checks are on); such files are rejected first with the error the
    /// format check gives when it does not overflow.
    data_past_end: bool,
}

/// Scans the header, or `None` when it does not parse as a map of entries (then
/// read_metadata reports what is wrong with it).
fn scan_header(bytes: &[u8]) -> Option<HeaderScan> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    #[derive(Deserialize)]
    struct End {
        data_offsets: Option<(IgnoredAny, u64)>,
    }

    struct Scan(u64);

    impl<'de> Visitor<'de> for Scan {
        type Value = HeaderScan;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a safetensors header")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderScan, A::Error> {
            let mut scan = HeaderScan { entries: 0, metadata: 0, data_past_end: false };
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "__metadata__" {
                    scan.metadata += 1;
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                scan.entries += 1;
                let end = map.next_value::<End>()?;
                if end.data_offsets.is_some_and(|(_, end)| end > self.0) {
                    scan.data_past_end = true;
                }
            }
            Ok(scan)
        }
    }

    let json = header_json(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(Scan(bytes.len() as u64)).ok()
}

/// The first tensor name the header lists twice, if any.
fn repeated_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Repeated;

    impl<'de> Visitor<'de> for Repeated {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a safetensors header")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key.into_owned()));
                }
            }
            Ok(None)
        }
    }

    let json = header_json(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(Repeated).ok().flatten()
}

/// Parses the text of `model.safetensors.index.json` (or `pytorch_model.bin.index.json`,
/// which has the same form): its tensor → shard map, and
/// the distinct shard names in sorted order, each checked to be a plain file name.
pub fn parse_index(text: &str, path: &Path) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let parsed: IndexFile = serde_json::from_str(text)
        .map_err(|source| Error::IndexJson { path: path.to_path_buf(), source })?;
    let names: BTreeSet<&String> = parsed.weight_map.values().collect();
    if let Some(bad) = names.iter().find(|n| !is_plain_file_name(n)) {
        return Err(Error::UnsafeShardName { index: path.to_path_buf(), shard: (*bad).clone() });
    }
    let names = names.into_iter().cloned().collect();
    Ok((parsed.weight_map, names))
}

/// Checks that the index maps exactly the tensors each shard holds.
fn check_index(
    index: &Path,
    weight_map: &BTreeMap<String, String>,
    checkpoint: &Checkpoint,
) -> Result<()> {
    let (shards, tensors) = (&checkpoint.shards, &checkpoint.tensors);
    let mismatch = |problem: String| Error::IndexMismatch { index: index.to_path_buf(), problem };
    let shard_name = |t: &TensorEntry| {
        shards[t.shard]
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    for (tensor, shard) in weight_map {
        match checkpoint.position(tensor) {
            None => {
                return Err(mismatch(format!(
                    "tensor {tensor:?} is mapped to {shard:?}, which does not contain it"
                )))
            }
            Some(i) if shard_name(&tensors[i]) != *shard => {
                return Err(mismatch(format!(
                    "tensor {tensor:?} is mapped to {shard:?} but is stored in {:?}",
                    shard_name(&tensors[i])
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(t) = tensors.iter().find(|t| !weight_map.contains_key(&t.name)) {
        return Err(mismatch(format!(
            "tensor {:?} in shard {:?} is not listed in the index",
            t.name,
            shard_name(t)
        )));
    }
    Ok(())
}

/// Reads a small text file, refusing anything larger than `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<String> {
    let size = fs::metadata(path).map_err(Error::io("read", path))?.len();
    if size > limit {
        return Err(Error::FileTooLarge { path: path.to_path_buf(), size, limit });
    }
    fs::read_to_string(path).map_err(Error::io("read", path))
}

/// True for a name like `model-00001-of-00002.safetensors`: no directory parts, no
/// `..`, nothing absolute.
fn is_plain_file_name(name: &str) -> bool {
    // `file_name` normalises "x/" and "x/." to "x": demand the name be exactly that.
    let p = Path::new(name);
    p.components().count() == 1 && p.file_name() == Some(std::ffi::OsStr::new(name))
}

/// Advice for a directory without safetensors weights.
fn directory_hint(dir: &Path) -> String {
    let has = |name: &str| dir.join(name).exists();
    if has("model.pt") || has("model.pth") || has("tf_model.h5") || has("flax_model.msgpack") {
        return "; it holds weights in a format soup does not read (only safetensors and \
                PyTorch state dicts): save them with save_pretrained(..., \
                safe_serialization=True)"
            .to_owned();
    }
    let others: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".safetensors"))
        .take(3)
        .collect();
    if others.is_empty() {
        String::new()
    } else {
        format!(
            "; it has {} but no {INDEX_FILE} to say how they fit together: pass the file itself",
            others.join(", ")
        )
    }
}
