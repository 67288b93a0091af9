//! Reading PyTorch `pytorch_model.bin` files (the zip format `torch.save` writes
//! since 1.6) without running Python and without running the file.
//!
//! A torch checkpoint is a zip archive: `<prefix>/data.pkl` is a pickle of the state
//! dict in which every tensor refers to a storage, and each storage's raw
//! little-endian elements are the *stored* (uncompressed) entry
//! `<prefix>/data/<key>`. [`read_state_dict`] takes the whole file's bytes (the
//! caller's memory map) and returns where every tensor's elements are in it, so
//! tensors are read in place, never copied at open:
//!
//! 1. the central directory is read (module `archive`), `<prefix>/byteorder` must say
//!    `little` if present, and `data.pkl`'s CRC-32 is checked;
//! 2. the pickle is interpreted by an allow-list interpreter that builds values and
//!    calls nothing ([`parse_pickle`]); the result must be one flat dict of tensors,
//!    or hold one at a dotted key (a training checkpoint's `state_dict`,
//!    [`read_state_dict_at`]), whatever else it holds beside it;
//! 3. each storage is found in the archive, checked to be stored, inside the file and
//!    of the size the pickle declares; every tensor's view was already checked to lie
//!    inside its storage. [`read_state_dict`] then checks every storage's CRC-32 (one
//!    pass over every byte); [`read_state_dict_at`] leaves that to
//!    [`StateDict::storage_crc32`], so that a reader streaming the storages can check
//!    each one as it first reads it, and a cold file comes from the disk once.
//!
//! Two names may share a storage (tied weights): they then have the same
//! [`TorchTensor::storage`], and the storage appears once. A tensor that is a
//! transposed or sliced view is not one byte range; [`StateDict::gather_into`]
//! copies any range of its elements in row-major order.
//!
//! Legacy files (before torch 1.6, or `_use_new_zipfile_serialization=False`),
//! whole pickled models, and anything else get an error that says what was found
//! and how to re-save it; a training checkpoint read without a key gets one that
//! lists the dicts of tensors it holds.

mod archive;
mod pickle;
mod view;

use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

pub use pickle::{
    parse_pickle, parse_pickle_at, PickleError, PickleErrorKind, PickledStateDict, StorageRef,
};

/// How a torch file can be re-saved in a format this reader accepts.
const RESAVE: &str = "re-save it in Python with \
    torch.save(torch.load(path, weights_only=True), new_path), or with \
    model.save_pretrained(dir, safe_serialization=True) for a Hugging Face model";

/// Why a file is not a readable torch state dict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TorchError {
    /// A pickle file in the legacy format (torch before 1.6, or
    /// `_use_new_zipfile_serialization=False`), whose tensors are not stored apart.
    #[error(
        "{}: a legacy PyTorch file (saved by torch before 1.6 or with \
         _use_new_zipfile_serialization=False), which cannot be read without running it; \
         {RESAVE}", path.display()
    )]
    Legacy {
        /// The file.
        path: PathBuf,
    },

    /// Neither a zip archive nor a legacy torch file.
    #[error("{}: not a PyTorch checkpoint: found {found}", path.display())]
    Unrecognised {
        /// The file.
        path: PathBuf,
        /// What the first bytes look like, e.g. `a safetensors file`.
        found: String,
    },

    /// The zip container itself is malformed or uses features the reader refuses.
    #[error("{}: unreadable zip archive (truncated or damaged?)", path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// What the zip reader found.
        #[source]
        source: zip::result::ZipError,
    },

    /// A zip archive without `<folder>/data.pkl`.
    #[error(
        "{}: a zip archive without a <folder>/data.pkl entry, so not a torch.save file",
        path.display()
    )]
    NoDataPkl {
        /// The file.
        path: PathBuf,
    },

    /// A zip archive listing one entry name twice: which bytes it means is
    /// ambiguous.
    #[error("{}: the archive lists entry {entry} twice", path.display())]
    DuplicateEntry {
        /// The file.
        path: PathBuf,
        /// The repeated name.
        entry: String,
    },

    /// A zip archive with two candidate pickles.
    #[error("{}: archive holds both {first} and {second}", path.display())]
    SeveralDataPkl {
        /// The file.
        path: PathBuf,
        /// One pickle entry.
        first: String,
        /// Another.
        second: String,
    },

    /// An archive entry that cannot be used in place.
    #[error("{}: entry {entry}: {problem}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry's name in the archive.
        entry: String,
        /// What is wrong with it.
        problem: EntryProblem,
    },

    /// An entry's bytes do not match its CRC-32: the file is corrupt (an incomplete
    /// or damaged download).
    #[error(
        "{}: entry {entry} is corrupt: CRC-32 is {actual:08x} but the archive says \
         {expected:08x}; download the file again", path.display()
    )]
    Crc {
        /// The file.
        path: PathBuf,
        /// The entry's name in the archive.
        entry: String,
        /// The CRC-32 the central directory records.
        expected: u32,
        /// The CRC-32 of the bytes.
        actual: u32,
    },

    /// `<prefix>/byteorder` says the data is not little-endian.
    #[error(
        "{}: the byteorder record says {found:?}, but only little-endian tensor data is \
         supported; on a little-endian machine, {RESAVE}", path.display()
    )]
    ByteOrder {
        /// The file.
        path: PathBuf,
        /// What the byteorder record says.
        found: String,
    },

    /// The pickle is not a state dict this reader accepts.
    #[error("{}: {entry}: not a readable state dict", path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// The pickle's entry name.
        entry: String,
        /// What is wrong.
        #[source]
        source: PickleError,
    },

    /// A storage entry whose size disagrees with the element count the pickle
    /// declares for it.
    #[error(
        "{}: entry {entry} holds {found} bytes but the state dict declares {expected} \
         ({numel} × {dtype})", path.display()
    )]
    StorageSize {
        /// The file.
        path: PathBuf,
        /// The storage's entry name.
        entry: String,
        /// Declared bytes.
        expected: u128,
        /// Bytes in the entry.
        found: usize,
        /// Declared elements.
        numel: usize,
        /// Element type.
        dtype: Dtype,
    },

    /// A storage key that cannot name an entry under `<prefix>/data/`.
    #[error("{}: storage key {key:?} is not a plain entry name", path.display())]
    StorageKey {
        /// The file.
        path: PathBuf,
        /// The key from the pickle.
        key: String,
    },
}

/// What is wrong with an archive entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    /// The entry does not exist.
    #[error("missing from the archive")]
    Missing,
    /// The entry is compressed, so its bytes cannot be used in place.
    #[error(
        "compressed ({}); torch.save stores every entry uncompressed, so the file was \
         re-packed: {RESAVE}", compression_name(*method)
    )]
    Compressed {
        /// The zip compression method number (8 is deflate).
        method: u16,
    },
    /// The entry is encrypted.
    #[error("encrypted")]
    Encrypted,
    /// A stored entry whose compressed and uncompressed sizes differ.
    #[error("stored entry of {stored} bytes declares {declared} bytes uncompressed")]
    SizeMismatch {
        /// Compressed size.
        stored: u64,
        /// Uncompressed size.
        declared: u64,
    },
    /// The entry's data lies (partly) outside the file: it is truncated.
    #[error("its data lies outside the file (truncated?)")]
    OutsideFile,
}

/// The name of a zip compression method.
fn compression_name(method: u16) -> String {
    let name = match method {
        8 => "deflate",
        9 => "deflate64",
        12 => "bzip2",
        14 => "lzma",
        93 => "zstd",
        95 => "xz",
        98 => "ppmd",
        _ => return format!("method {method}"),
    };
    format!("{name}, method {method}")
}

/// One tensor of a state dict: a strided view into one of its storages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) storage: usize,
    pub(crate) storage_offset: usize,
}

impl TorchTensor {
    /// The tensor's name in the state dict, e.g. `encoder.layer.0.attention.self.query.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Element type (that of its storage).
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Shape; empty for a scalar.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Strides in elements, one per dimension.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Index of its storage in [`StateDict::storages`] (or
    /// [`PickledStateDict::storages`]).
    pub fn storage(&self) -> usize {
        self.storage
    }

    /// Offset of its first element in the storage, in elements.
    pub fn storage_offset(&self) -> usize {
        self.storage_offset
    }

    /// Number of elements (1 for a scalar, 0 for an empty tensor).
    pub fn numel(&self) -> usize {
        // Cannot overflow: checked when the state dict was read.
        self.shape.iter().product()
    }

    /// Bytes of its elements when laid out densely.
    pub fn byte_len(&self) -> usize {
        self.numel() * view::element_size(self.dtype)
    }

    /// Whether its elements in row-major order are consecutive in the storage, so
    /// the tensor is one byte range of the file ([`StateDict::byte_range`]). Sizes of
    /// 1 may have any stride, and empty tensors are contiguous.
    pub fn is_contiguous(&self) -> bool {
        view::is_contiguous(&self.shape, &self.strides)
    }
}

/// One storage: a stored archive entry holding little-endian elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    entry: String,
    offset: usize,
    len: usize,
    dtype: Dtype,
    crc32: u32,
}

impl Storage {
    /// The archive entry, e.g. `archive/data/0`.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Absolute byte offset of its data in the file.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Length of its data in bytes (elements × element size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its bytes in the file.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }

    /// The CRC-32 the archive records for its bytes.
    pub fn crc32(&self) -> u32 {
        self.crc32
    }
}

/// A validated torch state dict: tensors in the file's order, and the storages they
/// view. Every storage lies inside the file (its CRC-32 checked by
/// [`read_state_dict`], or left to [`StateDict::storage_crc32`] by
/// [`read_state_dict_at`]); every tensor's elements lie inside its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDict {
    tensors: Vec<TorchTensor>,
    storages: Vec<Storage>,
}

impl StateDict {
    /// The tensors, in the order of the saved dict.
    pub fn tensors(&self) -> &[TorchTensor] {
        &self.tensors
    }

    /// The distinct storages, in order of first use.
    pub fn storages(&self) -> &[Storage] {
        &self.storages
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TorchTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The storage a tensor views.
    ///
    /// # Panics
    /// If the tensor is not from this state dict and its storage index is out of range.
    pub fn storage_of(&self, tensor: &TorchTensor) -> &Storage {
        &self.storages[tensor.storage]
    }

    /// The CRC-32 of the bytes of storage `index` as they are in `file` (the bytes
    /// this state dict was read from), read a window of at most 4 MiB at a time;
    /// `read` is told each window once it has been read. A storage is intact when
    /// this equals its [`Storage::crc32`].
    ///
    /// # Panics
    /// If `index` is out of range, or `file` is shorter than the storage's end.
    pub fn storage_crc32(
        &self,
        index: usize,
        file: &[u8],
        read: &mut dyn FnMut(Range<usize>),
    ) -> u32 {
        archive::crc32_of(file, self.storages[index].range(), read)
    }

    /// Whether two elements of `tensor` are the same storage element (an
    /// `expand()`ed or otherwise overlapping view): written out, such a view can be
    /// arbitrarily larger than the file.
    ///
    /// # Panics
    /// As [`StateDict::storage_of`].
    pub fn overlaps(&self, tensor: &TorchTensor) -> bool {
        let storage = self.storage_of(tensor);
        let numel = storage.len / view::element_size(storage.dtype).max(1);
        view::overlaps(tensor.storage_offset, &tensor.shape, &tensor.strides, numel)
    }

    /// The file bytes of a contiguous tensor, or `None` if it is not contiguous
    /// (then use [`StateDict::gather_into`]). An empty tensor has an empty range.
    ///
    /// # Panics
    /// As [`StateDict::storage_of`].
    pub fn byte_range(&self, tensor: &TorchTensor) -> Option<Range<usize>> {
        if !tensor.is_contiguous() {
            return None;
        }
        let storage = self.storage_of(tensor);
        if tensor.numel() == 0 {
            return Some(storage.offset..storage.offset);
        }
        // Inside the storage: the view was checked against its element count.
        let start = storage.offset + tensor.storage_offset * view::element_size(tensor.dtype);
        Some(start..start + tensor.byte_len())
    }

    /// Copies elements `start..start + out.len() / element size` of `tensor`, in the
    /// row-major order of its shape, from `file` (the bytes given to
    /// [`read_state_dict`]) into `out`. Works for any view; the cost is a `memcpy`
    /// per run along the innermost dimension when that is dense, and one element
    /// copy per element otherwise (a transposed matrix), with no division per
    /// element. Memory is bounded by `out`, so large tensors can be gathered chunk by
    /// chunk.
    ///
    /// # Panics
    /// If `out.len()` is not a multiple of the element size, the range passes the
    /// tensor's end, the tensor is not from this state dict, or `file` is not the
    /// bytes it was read from.
    pub fn gather_into(&self, tensor: &TorchTensor, file: &[u8], start: usize, out: &mut [u8]) {
        let storage = &file[self.storage_of(tensor).range()];
        view::gather_into(
            storage,
            view::element_size(tensor.dtype),
            tensor.storage_offset,
            &tensor.shape,
            &tensor.strides,
            start,
            out,
        );
    }

    /// [`StateDict::gather_into`] into a new vector of `len` elements.
    ///
    /// # Panics
    /// As [`StateDict::gather_into`].
    pub fn gather(&self, tensor: &TorchTensor, file: &[u8], start: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len * view::element_size(tensor.dtype)];
        self.gather_into(tensor, file, start, &mut out);
        out
    }
}

/// Whether `bytes` start like a zip archive, the container of every `torch.save`
/// file since torch 1.6. A cheap sniff for choosing a reader: [`read_state_dict`]
/// says precisely what a file is when it is not a torch checkpoint.
pub fn looks_like_torch_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Reads a torch zip checkpoint from the bytes of the whole file (`path` is for
/// messages): the archive, its byte order, the pickled state dict and every storage
/// it uses, checking each entry's CRC-32. On success, every storage range lies
/// inside `bytes` and every tensor's elements inside its storage.
pub fn read_state_dict(bytes: &[u8], path: &Path) -> Result<StateDict, TorchError> {
    let state = read_state_dict_at(bytes, path, None, &mut |_| {})?;
    for (index, storage) in state.storages.iter().enumerate() {
        let actual = state.storage_crc32(index, bytes, &mut |_| {});
        if actual != storage.crc32 {
            return Err(TorchError::Crc {
                path: path.to_path_buf(),
                entry: storage.entry.clone(),
                expected: storage.crc32,
                actual,
            });
        }
    }
    Ok(state)
}

/// [`read_state_dict`] of the state dict at a dotted `key` inside the file (see
/// [`parse_pickle_at`]), without reading the storages: their entries are checked
/// to be stored, inside the file and of the right size, and `data.pkl`'s CRC-32
/// is checked, but each storage's own CRC-32 is left to
/// [`StateDict::storage_crc32`]. `touched` is told the byte range of each
/// storage's local header once it has been read (a caller reading from a memory
/// map may drop those pages).
pub fn read_state_dict_at(
    bytes: &[u8],
    path: &Path,
    key: Option<&str>,
    touched: &mut dyn FnMut(Range<usize>),
) -> Result<StateDict, TorchError> {
    if !looks_like_torch_zip(bytes) {
        return Err(not_a_zip(bytes, path));
    }
    let mut archive = archive::Archive::open(bytes, path)?;
    let prefix = archive.prefix.clone();

    let byteorder = format!("{prefix}/byteorder");
    if let Some(range) = archive.checked_entry(&byteorder, path)? {
        let found = &bytes[range];
        if found != b"little" {
            let found = String::from_utf8_lossy(&found[..found.len().min(32)]).into_owned();
            return Err(TorchError::ByteOrder { path: path.to_path_buf(), found });
        }
    }

    let pkl = format!("{prefix}/data.pkl");
    let range = archive.checked_entry(&pkl, path)?.ok_or_else(|| TorchError::Entry {
        path: path.to_path_buf(),
        entry: pkl.clone(),
        problem: EntryProblem::Missing,
    })?;
    let pickled = parse_pickle_at(&bytes[range], key).map_err(|source| TorchError::Pickle {
        path: path.to_path_buf(),
        entry: pkl.clone(),
        source,
    })?;

    let mut storages = Vec::with_capacity(pickled.storages.len());
    for storage in &pickled.storages {
        storages.push(bind_storage(&mut archive, storage, &prefix, path, touched)?);
    }
    Ok(StateDict { tensors: pickled.tensors, storages })
}

/// Finds a storage's entry, checks it and its size.
fn bind_storage(
    archive: &mut archive::Archive<'_>,
    storage: &StorageRef,
    prefix: &str,
    path: &Path,
    touched: &mut dyn FnMut(Range<usize>),
) -> Result<Storage, TorchError> {
    let key = &storage.key;
    if key.is_empty() || key.contains(['/', '\\']) || key == "." || key == ".." {
        return Err(TorchError::StorageKey { path: path.to_path_buf(), key: key.clone() });
    }
    let entry = format!("{prefix}/data/{key}");
    let found = archive.entry(&entry, path, touched)?.ok_or_else(|| TorchError::Entry {
        path: path.to_path_buf(),
        entry: entry.clone(),
        problem: EntryProblem::Missing,
    })?;
    let range = found.range;
    let expected = storage.numel as u128 * view::element_size(storage.dtype) as u128;
    if expected != range.len() as u128 {
        return Err(TorchError::StorageSize {
            path: path.to_path_buf(),
            entry,
            expected,
            found: range.len(),
            numel: storage.numel,
            dtype: storage.dtype,
        });
    }
    Ok(Storage {
        entry,
        offset: range.start,
        len: range.len(),
        dtype: storage.dtype,
        crc32: found.crc32,
    })
}

/// The error for a file that is not a zip archive, saying what it looks like.
fn not_a_zip(bytes: &[u8], path: &Path) -> TorchError {
    let path = path.to_path_buf();
    // A legacy torch file starts with a pickled magic number:
    // PROTO 2, LONG1 of 10 bytes 0x1950a86a20f9469cfc6c.
    const LEGACY: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
    if bytes.starts_with(LEGACY) {
        return TorchError::Legacy { path };
    }
    let found = if bytes.is_empty() {
        "an empty file".to_owned()
    } else if bytes.get(257..262) == Some(b"ustar") {
        format!("a tar archive (the format of torch before 0.4); {RESAVE}")
    } else if bytes[0] == 0x80 && bytes.get(1).is_some_and(|&p| p <= 5) {
        format!("a bare pickle (protocol {}), not a torch.save file; {RESAVE}", bytes[1])
    } else if looks_like_safetensors(bytes) {
        "a safetensors file; open it as one".to_owned()
    } else if bytes.starts_with(b"PK") {
        "a zip archive that does not start with a local file header".to_owned()
    } else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("unknown data starting with bytes {}", head.join(" "))
    };
    TorchError::Unrecognised { path, found }
}

/// An 8-byte little-endian header length followed by `{`.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(prefix) = bytes.get(..8) else { return false };
    let len = u64::from_le_bytes(prefix.try_into().unwrap_or_default());
    bytes.get(8) == Some(&b'{') && len < bytes.len() as u64
}
