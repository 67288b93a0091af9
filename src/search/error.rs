//! The searches' error type: everything the engine can report, plus the failures
//! only a search meets — an unusable evaluator command and an unreadable journal.
//!
//! A failed *evaluation* is not an error: it is a result, journaled and counted
//! (docs/EVALUATOR.md). These are the failures that stop a search.

use std::io;
use std::path::PathBuf;

use crate::search::evaluate::EvalError;
use crate::search::journal::JournalError;

/// Result alias for the searches.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a search stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening, planning or writing a candidate or the final soup failed (or the
    /// caller cancelled it: [`crate::Error::Cancelled`]).
    #[error(transparent)]
    Merge(#[from] crate::Error),

    /// The evaluation command is unusable, or its logs cannot be written.
    #[error(transparent)]
    Eval(#[from] EvalError),

    /// The evaluation journal could not be read or written.
    #[error("journal")]
    Journal(#[from] JournalError),

    /// An evaluation of a search that learns the temperature reported no usable
    /// `"grad_temperature"`.
    #[error(
        "candidate {candidate}: {problem}; with --temperature the evaluator reports \
         \"grad_temperature\", ∂loss/∂β, a finite number, beside the score (see {})",
        log.display()
    )]
    GradTemperature {
        /// The candidate.
        candidate: String,
        /// What is wrong.
        problem: String,
        /// The evaluation's stdout log.
        log: PathBuf,
    },

    /// The report could not be encoded as JSON.
    #[error("cannot encode the report")]
    Report(#[source] serde_json::Error),

    /// A report or another run-directory file could not be written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being attempted ("write", "create", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether the search stopped because the caller asked it to.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Merge(crate::Error::Cancelled))
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}
