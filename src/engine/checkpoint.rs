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
//! reads cannot go out of bounds.
//!
//! [`Checkpoint::open_with`] also reads ingredients as training pipelines leave
//! them ([`OpenOptions`]): the state dict at a dotted key of a PyTorch training
//! checkpoint, names mapped by [`crate::engine::rename`] rules, and LoRA adapter
//! directories, whose adapted matrices are *computed* tensors
//! ([`crate::engine::adapter`]): `bytes` materialises `W₀ + s·B·A` a chunk at a
//! time, so every pass reads them like stored ones.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::Deserialize;

use crate::engine::mapped;
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
    map: Mmap,
    metadata: BTreeMap<String, String>,
    /// The state dict of a PyTorch file, for gathering its strided views.
    torch: Option<crate::torch::StateDict>,
}

impl Shard {
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
    by_name: Arc<HashMap<String, usize>>,
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
}

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
            Self::open_files(path, options.key.as_deref())?
        };
        opened.renamed(path, &options.rename)
    }

    /// Opens the weight files `path` names, reading PyTorch files at `key`.
    pub(crate) fn open_files(path: &Path, key: Option<&str>) -> Result<Self> {
        let meta = fs::metadata(path).map_err(Error::io("open", path))?;
        if meta.is_file() {
            let shard = open_shard(path.to_path_buf(), key)?;
            return Self::assemble(path, None, vec![shard], None);
        }
        let index = path.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_indexed(path, &index, key);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            let shard = open_shard(single, key)?;
            return Self::assemble(path, Some(path.to_path_buf()), vec![shard], None);
        }
        let torch_index = path.join(TORCH_INDEX_FILE);
        if torch_index.is_file() {
            return Self::open_indexed(path, &torch_index, key);
        }
        let torch = path.join(TORCH_FILE);
        if torch.is_file() {
            let shard = open_shard(torch, key)?;
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
        let mut by_name: HashMap<String, usize> = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter_mut().enumerate() {
            let name = crate::engine::rename::apply_all(rules, &t.name);
            if let Some(&j) = by_name.get(&name) {
                return Err(Error::RenameCollision {
                    path: path.to_path_buf(),
                    first: self.tensors[j].name.clone(),
                    second: self.tensors[i].name.clone(),
                    name,
                });
            }
            by_name.insert(name.clone(), i);
            t.name = name;
        }
        Ok(Checkpoint { tensors: tensors.into(), by_name: Arc::new(by_name), ..self })
    }

    /// A checkpoint over the given shards (already opened) and tensors, some of
    /// them computed: how [`crate::engine::adapter`] assembles an adapted model.
    pub(crate) fn from_parts(
        path: &Path,
        directory: Option<PathBuf>,
        shards: Vec<Arc<Shard>>,
        tensors: Vec<TensorEntry>,
        computed: Vec<crate::engine::adapter::Computed>,
    ) -> Checkpoint {
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Checkpoint {
            path: path.to_path_buf(),
            directory,
            shards: shards.into(),
            tensors: tensors.into(),
            by_name: Arc::new(by_name),
            computed: computed.into(),
        }
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

    fn open_indexed(dir: &Path, index: &Path, key: Option<&str>) -> Result<Self> {
        let text = read_bounded(index, MAX_INDEX_BYTES)?;
        let (weight_map, names) = parse_index(&text, index)?;
        let mut shards = Vec::with_capacity(names.len());
        for name in names {
            let shard_path = dir.join(&name);
            if !shard_path.is_file() {
                return Err(Error::MissingShard { index: index.to_path_buf(), shard: name });
            }
            shards.push(open_shard(shard_path, key)?);
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
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (shard_no, (shard, entries)) in opened.into_iter().enumerate() {
            for mut entry in entries {
                if let Some(&other) = by_name.get(&entry.name) {
                    let first: &Shard = &shards[tensors[other].shard];
                    return Err(Error::DuplicateTensor {
                        tensor: entry.name,
                        first: first.path.clone(),
                        second: shard.path.clone(),
                    });
                }
                entry.shard = shard_no;
                by_name.insert(entry.name.clone(), tensors.len());
                tensors.push(entry);
            }
            shards.push(Arc::new(shard));
        }
        if let Some((index, weight_map)) = index {
            check_index(index, weight_map, &shards, &tensors, &by_name)?;
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            directory,
            shards: shards.into(),
            tensors: tensors.into(),
            by_name: Arc::new(by_name),
            computed: Arc::new([]),
        })
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
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Position of a tensor in [`Checkpoint::tensors`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The same files seen with a different list of tensors (each a range inside
    /// them, e.g. an alias of another entry): for reconciling tied embeddings.
    pub(crate) fn with_tensors(&self, tensors: Vec<TensorEntry>) -> Checkpoint {
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Checkpoint { tensors: tensors.into(), by_name: Arc::new(by_name), ..self.clone() }
    }

    /// The bytes of `len` bytes of `tensor` starting `start` bytes into its data
    /// (in row-major order): borrowed from the mapping, or gathered into a new
    /// buffer for a strided PyTorch view.
    ///
    /// # Panics
    /// If the range lies outside the tensor; callers slice within validated sizes.
    pub(crate) fn bytes(&self, tensor: &TensorEntry, start: usize, len: usize) -> Cow<'_, [u8]> {
        assert!(start + len <= tensor.len, "chunk outside tensor {:?}", tensor.name);
        if let Some(i) = tensor.computed {
            return Cow::Owned(self.computed[i].bytes(self, start, len));
        }
        let shard = &self.shards[tensor.shard];
        let (Some(i), Some(state)) = (tensor.strided, &shard.torch) else {
            return Cow::Borrowed(&shard.map[tensor.offset + start..tensor.offset + start + len]);
        };
        // Whole elements covering the range, then the range within them.
        let size = (tensor.dtype.bitsize() / 8).max(1);
        let (first, end) = (start / size, (start + len).div_ceil(size));
        let mut out = state.gather(&state.tensors()[i], &shard.map, first, end - first);
        let skip = start - first * size;
        out.truncate(skip + len);
        out.drain(..skip);
        Cow::Owned(out)
    }

    /// Drops this process's mapping of bytes `start..end` of shard `shard` (see
    /// [`mapped::release`]); the data stays readable.
    pub(crate) fn release(&self, shard: usize, start: usize, end: usize) {
        mapped::release(&self.shards[shard].map, start, end);
    }
}

/// Maps one shard and lists its tensors in file order: a PyTorch file when it is
/// a zip archive or named like one (`.bin`, `.pt`, `.pth`), else safetensors.
fn open_shard(path: PathBuf, key: Option<&str>) -> Result<(Shard, Vec<TensorEntry>)> {
    let map = mapped::map_file(&path)?;
    let torch_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "bin" | "pt" | "pth"));
    if crate::torch::looks_like_torch_zip(&map) || torch_name {
        return open_torch_shard(path, map, key);
    }
    let (tensors, metadata) = parse_header(&map, &path)?;
    Ok((Shard { path, map, metadata, torch: None }, tensors))
}

/// Reads a PyTorch file's state dict (at `key` in a training checkpoint),
/// checking every entry it uses by CRC, which reads it all once, and lists its
/// tensors in the dict's order.
fn open_torch_shard(
    path: PathBuf,
    map: Mmap,
    key: Option<&str>,
) -> Result<(Shard, Vec<TensorEntry>)> {
    // The CRC pass reads every byte once; its pages are dropped window by window
    // (the merge maps them back as it goes), so RSS does not grow with the file.
    let state = crate::torch::read_state_dict_at(&map, &path, key, &mut |r| {
        mapped::release(&map, r.start, r.end)
    })?;
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
    Ok((Shard { path, map, metadata: BTreeMap::new(), torch: Some(state) }, tensors))
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
    if declares_data_past_end(bytes) {
        return Err(invalid(SafeTensorError::MetadataIncompleteBuffer));
    }
    let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    // read_metadata proved 8 + header_len + (end of the last tensor) == bytes.len()
    // and that the tensors tile the data without gaps or overlaps.
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

/// True when the header (if it parses) declares tensor data ending past the end of
/// `bytes`. safetensors 0.8 adds the declared data length to the header length
/// without a checked add, so a header declaring ~2⁶⁴ bytes of data overflows there
/// (a panic where overflow checks are on); such files are rejected here first with
/// the error the format check gives when it does not overflow.
fn declares_data_past_end(bytes: &[u8]) -> bool {
    let header = bytes
        .get(..8)
        .and_then(|prefix| usize::try_from(u64::from_le_bytes(prefix.try_into().ok()?)).ok())
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?));
    let Some(Ok(entries)) =
        header.map(serde_json::from_slice::<HashMap<String, serde_json::Value>>)
    else {
        return false; // read_metadata reports what is wrong with it
    };
    let file_len = bytes.len() as u64;
    entries.values().any(|entry| {
        let end =
            entry.get("data_offsets").and_then(|o| o.get(1)).and_then(serde_json::Value::as_u64);
        end.is_some_and(|end| end > file_len)
    })
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
    shards: &[Arc<Shard>],
    tensors: &[TensorEntry],
    by_name: &HashMap<String, usize>,
) -> Result<()> {
    let mismatch = |problem: String| Error::IndexMismatch { index: index.to_path_buf(), problem };
    let shard_name = |t: &TensorEntry| {
        shards[t.shard]
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    for (tensor, shard) in weight_map {
        match by_name.get(tensor) {
            None => {
                return Err(mismatch(format!(
                    "tensor {tensor:?} is mapped to {shard:?}, which does not contain it"
                )))
            }
            Some(&i) if shard_name(&tensors[i]) != *shard => {
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
