//! The zip container of a torch checkpoint: finding `<prefix>/data.pkl` and the
//! storages under `<prefix>/data/`, and proving each entry is a stored
//! (uncompressed) byte range inside the file; the CRC-32 of each entry is checked
//! when its bytes are read (`data.pkl` at once, storages when first streamed).
//!
//! The central directory is read by the `zip` crate from the in-memory bytes; each
//! entry's data then starts at the end of its local header (`data_start`), and since
//! `torch.save` stores every record uncompressed, the entry's bytes are exactly
//! `data_start..data_start + size` of the file, which tensors are read from in place.

use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::{EntryProblem, TorchError};

/// Bytes checksummed between two reports to the caller: small enough that the
/// pages of a multi-GB storage need not all be mapped at once.
const CRC_WINDOW: usize = 4 << 20;

/// An opened archive: the central directory and the folder the records are in.
pub(crate) struct Archive<'a> {
    bytes: &'a [u8],
    zip: ZipArchive<Cursor<&'a [u8]>>,
    /// The top folder, e.g. `archive` or `pytorch_model`, without a slash.
    pub(crate) prefix: String,
}

impl<'a> Archive<'a> {
    /// Reads the central directory and finds the single `<prefix>/data.pkl`.
    pub(crate) fn open(bytes: &'a [u8], path: &Path) -> Result<Self, TorchError> {
        let zip = ZipArchive::new(Cursor::new(bytes))
            .map_err(|source| TorchError::Zip { path: path.to_path_buf(), source })?;
        let mut pickles = zip
            .file_names()
            .filter_map(|name| {
                let prefix = name.strip_suffix("/data.pkl")?;
                (!prefix.is_empty() && !prefix.contains('/')).then(|| prefix.to_owned())
            })
            .take(2)
            .collect::<Vec<_>>()
            .into_iter();
        if let Some(entry) = repeated_entry(bytes, &zip) {
            return Err(TorchError::DuplicateEntry { path: path.to_path_buf(), entry });
        }
        let Some(prefix) = pickles.next() else {
            return Err(TorchError::NoDataPkl { path: path.to_path_buf() });
        };
        if let Some(other) = pickles.next() {
            return Err(TorchError::SeveralDataPkl {
                path: path.to_path_buf(),
                first: format!("{prefix}/data.pkl"),
                second: format!("{other}/data.pkl"),
            });
        }
        Ok(Archive { bytes, zip, prefix })
    }

    /// A stored entry's byte range in the file and the CRC-32 the central
    /// directory records for it, if the entry exists, after checking that it is
    /// stored, unencrypted and inside the file. Its bytes are not read here
    /// ([`Archive::checked_entry`] also checks them), only its local header, whose
    /// byte range `touched` is told.
    pub(crate) fn entry(
        &mut self,
        name: &str,
        path: &Path,
        touched: &mut dyn FnMut(Range<usize>),
    ) -> Result<Option<Entry>, TorchError> {
        let Some(index) = self.zip.index_for_name(name) else {
            return Ok(None);
        };
        let problem = |problem| TorchError::Entry {
            path: path.to_path_buf(),
            entry: name.to_owned(),
            problem,
        };
        let file = self
            .zip
            .by_index_raw(index)
            .map_err(|source| TorchError::Zip { path: path.to_path_buf(), source })?;
        if file.encrypted() {
            return Err(problem(EntryProblem::Encrypted));
        }
        if file.compression() != CompressionMethod::Stored {
            // The method's number: without decompression features the crate knows
            // no names, and the number is what the zip format records.
            #[allow(deprecated)]
            let method = file.compression().to_u16();
            return Err(problem(EntryProblem::Compressed { method }));
        }
        if file.size() != file.compressed_size() {
            return Err(problem(EntryProblem::SizeMismatch {
                stored: file.compressed_size(),
                declared: file.size(),
            }));
        }
        let start = file.data_start().ok_or_else(|| problem(EntryProblem::OutsideFile))?;
        if let (Ok(header), Ok(end)) =
            (usize::try_from(file.header_start()), usize::try_from(start))
        {
            touched(header..end);
        }
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(file.size()).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= self.bytes.len())
            .ok_or_else(|| problem(EntryProblem::OutsideFile))?;
        Ok(Some(Entry { range, crc32: file.crc32() }))
    }

    /// [`Archive::entry`], with its bytes checked against the CRC-32 at once.
    pub(crate) fn checked_entry(
        &mut self,
        name: &str,
        path: &Path,
    ) -> Result<Option<Range<usize>>, TorchError> {
        let Some(entry) = self.entry(name, path, &mut |_| {})? else { return Ok(None) };
        check_crc(self.bytes, name, &entry, path)?;
        Ok(Some(entry.range))
    }
}

/// Where a stored entry's bytes are, and the CRC-32 they must have.
pub(crate) struct Entry {
    pub(crate) range: Range<usize>,
    pub(crate) crc32: u32,
}

/// The CRC-32 of `bytes[range]`, computed a window at a time; `read` is told each
/// window once it has been read (the caller may drop its pages).
pub(crate) fn crc32_of(
    bytes: &[u8],
    range: Range<usize>,
    read: &mut dyn FnMut(Range<usize>),
) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for start in range.clone().step_by(CRC_WINDOW) {
        let window = start..range.end.min(start + CRC_WINDOW);
        hasher.update(&bytes[window.clone()]);
        read(window);
    }
    hasher.finalize()
}

/// Fails with [`TorchError::Crc`] when the bytes of entry `name` (of the file
/// at `path`, whose bytes are `bytes`) do not match its CRC-32.
fn check_crc(bytes: &[u8], name: &str, entry: &Entry, path: &Path) -> Result<(), TorchError> {
    let actual = crc32_of(bytes, entry.range.clone(), &mut |_| {});
    if actual != entry.crc32 {
        return Err(TorchError::Crc {
            path: path.to_path_buf(),
            entry: name.to_owned(),
            expected: entry.crc32,
            actual,
        });
    }
    Ok(())
}

/// The first entry name the central directory lists twice, if any: the zip
/// reader keeps the last of them, so which bytes a name means is ambiguous. The
/// directory is walked record by record from where the reader found it.
fn repeated_entry(bytes: &[u8], zip: &ZipArchive<Cursor<&[u8]>>) -> Option<String> {
    const SIGNATURE: &[u8] = b"PK\x01\x02";
    const FIXED: usize = 46;
    let mut at = usize::try_from(zip.central_directory_start()).ok()?;
    let mut seen = std::collections::HashSet::new();
    // The reader kept `len()` distinct names; any record beyond them repeats one.
    while seen.len() <= zip.len() {
        let record = bytes.get(at..at.checked_add(FIXED)?)?;
        if &record[..4] != SIGNATURE {
            return None;
        }
        let field = |i: usize| usize::from(u16::from_le_bytes([record[i], record[i + 1]]));
        let (name_len, extra_len, comment_len) = (field(28), field(30), field(32));
        let name = bytes.get(at + FIXED..at.checked_add(FIXED + name_len)?)?;
        if !seen.insert(name) {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
        at = at.checked_add(FIXED + name_len + extra_len + comment_len)?;
    }
    None
}
