//! What a command checks and takes before it does any work: the lock of its output
//! (and of a search's run directory), the layout of the two, and a word about what
//! killed runs had left beside the output and was cleaned up. A second soup on the
//! same output or run directory fails here, at once, before paying for anything.

use std::path::Path;

use modelsoup::engine::lock::Lock;
use modelsoup::engine::output::{self, Housekeeping, OutputLock};
use modelsoup::Checkpoint;

/// The lock file inside a run directory.
const RUN_DIR_LOCK: &str = ".lock";

/// Locks held for the length of a search.
pub struct SearchLocks {
    _output: OutputLock,
    _run_dir: Lock,
}

/// Locks `dest` for this process and reports what was cleaned up beside it.
pub fn output(dest: &Path, quiet: bool) -> anyhow::Result<OutputLock> {
    let lock = OutputLock::acquire(dest)?;
    say(&lock.housekeeping, quiet);
    Ok(lock)
}

/// Checks a search's layout and takes its locks, before the first evaluation:
/// the output may be written (`check_destination`: state, ingredients, name
/// length), the run directory is neither the output nor inside it (the final
/// commit would replace the journal and the logs), and no other soup uses either.
pub fn search(
    output: &Path,
    run_dir: &Path,
    force: bool,
    ingredients: &[Checkpoint],
    quiet: bool,
) -> anyhow::Result<SearchLocks> {
    if let (Some(out), Some(run)) = (output::absolute(output), output::absolute(run_dir)) {
        if run.starts_with(&out) {
            anyhow::bail!(
                "the run directory {} is {} the output {}: writing the soup would replace \
                 its journal and logs; choose another --run-dir or -o",
                run_dir.display(),
                if run == out { "the same as" } else { "inside" },
                output.display()
            );
        }
    }
    let output_lock = self::output(output, quiet)?;
    output::check_destination(output, force, ingredients)?;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", run_dir.display()))?;
    let run_dir_lock = Lock::acquire(&run_dir.join(RUN_DIR_LOCK), run_dir)?;
    Ok(SearchLocks { _output: output_lock, _run_dir: run_dir_lock })
}

/// Tells the user what was cleaned up (or could not be) beside an output.
pub fn say(housekeeping: &[Housekeeping], quiet: bool) {
    for note in housekeeping {
        match note {
            Housekeeping::NotRemoved { .. } | Housekeeping::Busy { .. } => {
                errln!("warning: {note}")
            }
            _ if !quiet => errln!("note: {note}"),
            _ => {}
        }
    }
}
