//! Model ids from the local Hugging Face cache: `org/name` or `org/name@revision`
//! names the snapshot that `huggingface_hub` (`hf download`, `from_pretrained`)
//! downloaded, resolved offline, so an ingredient can be named as on the Hub.
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (the order
//! `huggingface_hub` uses). A model is `models--ORG--NAME/`, its files under
//! `snapshots/COMMIT/` (symbolic links into `blobs/`), and `refs/BRANCH` holds the
//! commit a branch or tag points at. A revision is a branch or tag with a ref, or a
//! commit with a snapshot; none means `main`.
//!
//! A local path always wins: an id is only looked up when no file or directory
//! of that name exists. Only `org/name` forms are ids (a bare `name` is taken for
//! a mistyped local path).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A Hub model id with an optional revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit; `None` for `main`.
    pub revision: Option<String>,
}

/// A cached snapshot of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The snapshot directory (a checkpoint directory like any other).
    pub dir: PathBuf,
    /// The commit it holds.
    pub commit: String,
}

impl ModelId {
    /// Parses `org/name` or `org/name@revision`; `None` for anything else (local
    /// paths: absolute, `./x`, more than one `/`, names the Hub does not allow).
    pub fn parse(text: &str) -> Option<ModelId> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (text, None),
        };
        let (org, name) = repo.split_once('/')?;
        if !(hub_name(org) && hub_name(name)) {
            return None;
        }
        if let Some(rev) = revision {
            let fine = !rev.is_empty()
                && rev.len() <= 256
                && !rev.contains("..")
                && !rev.starts_with('/')
                && rev.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !fine {
                return None;
            }
        }
        Some(ModelId { repo: repo.to_owned(), revision: revision.map(str::to_owned) })
    }

    /// The cache folder of this model: `models--ORG--NAME`.
    fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// The command that downloads it.
    pub fn download_command(&self) -> String {
        match &self.revision {
            Some(rev) => format!("hf download {} --revision {rev}", self.repo),
            None => format!("hf download {}", self.repo),
        }
    }

    /// Finds the cached snapshot in `cache`.
    pub fn resolve_in(&self, cache: &Path) -> Result<Snapshot> {
        let not_cached = |reason: String| Error::NotCached {
            id: self.to_string(),
            cache: cache.to_path_buf(),
            reason,
            command: self.download_command(),
        };
        let model = cache.join(self.folder());
        if !model.is_dir() {
            return Err(not_cached("no such model in it".to_owned()));
        }
        let revision = self.revision.as_deref().unwrap_or("main");
        let reference = model.join("refs").join(revision);
        let commit = if reference.is_file() {
            let text = fs::read_to_string(&reference).map_err(Error::io("read", &reference))?;
            text.trim().to_owned()
        } else if is_commit(revision) {
            revision.to_owned()
        } else {
            return Err(not_cached(format!("no revision {revision:?} of it")));
        };
        if !is_commit(&commit) {
            return Err(not_cached(format!("{} does not hold a commit hash", reference.display())));
        }
        let dir = model.join("snapshots").join(&commit);
        if !dir.is_dir() {
            return Err(not_cached(format!(
                "revision {revision:?} (commit {commit}) is not downloaded"
            )));
        }
        Ok(Snapshot { dir, commit })
    }

    /// Finds the cached snapshot in [`cache_dir`].
    pub fn resolve(&self) -> Result<Snapshot> {
        self.resolve_in(&cache_dir())
    }

    /// The id pinned to the commit it resolves to: `org/name@COMMIT`.
    pub fn pinned(&self, snapshot: &Snapshot) -> String {
        format!("{}@{}", self.repo, snapshot.commit)
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// The Hugging Face hub cache directory, from the environment as
/// `huggingface_hub` reads it.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// Where `spec` names a model: the local path when it exists, else the cached
/// snapshot of the Hub id it spells. `Ok(None)` when it is neither an existing
/// path nor an id (the caller reports the missing path).
pub fn locate(spec: &Path) -> Result<Option<(ModelId, Snapshot)>> {
    if spec.exists() {
        return Ok(None);
    }
    let Some(id) = spec.to_str().and_then(ModelId::parse) else {
        return Ok(None);
    };
    let snapshot = id.resolve()?;
    Ok(Some((id, snapshot)))
}

/// A name part the Hub allows: letters, digits, `-`, `_`, `.`, at most 96, not
/// starting or ending with `-` or `.`, without `--` or `..`.
fn hub_name(part: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    !part.is_empty()
        && part.len() <= 96
        && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && edge(part.chars().next())
        && edge(part.chars().last())
        && !part.contains("--")
        && !part.contains("..")
}

/// A full git commit hash (40 hex digits).
fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_org_slash_name_with_an_optional_revision() {
        let id = ModelId::parse("bert-base/uncased.v2@refs/pr/1").unwrap();
        assert_eq!(id.repo, "bert-base/uncased.v2");
        assert_eq!(id.revision.as_deref(), Some("refs/pr/1"));
        assert_eq!(ModelId::parse("org/name").unwrap().revision, None);
        for not_an_id in [
            "name",
            "/abs/path",
            "./org/name",
            "a/b/c",
            "org/",
            "/name",
            "org/-name",
            "org/name.",
            "org/na--me",
            "org/..",
            "org/name@",
            "org/name@../x",
            "org/name@a b",
            "runs/a b",
        ] {
            assert_eq!(ModelId::parse(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn the_download_command_names_the_revision() {
        assert_eq!(ModelId::parse("o/n").unwrap().download_command(), "hf download o/n");
        assert_eq!(
            ModelId::parse("o/n@v1").unwrap().download_command(),
            "hf download o/n --revision v1"
        );
    }
}
