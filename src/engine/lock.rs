//! Advisory locks (`flock`) that keep two soup processes off one output or one run
//! directory: the second fails at once, naming the first, instead of both writing.
//!
//! A lock is a small file holding the holder's process id. `flock` locks belong to
//! the open file, so the kernel drops them when the process dies however it dies
//! (SIGKILL included): a lock can never be left stale, and a free lock proves that
//! nobody is working on what it guards. The file is removed when the lock is
//! released; a process that opened it just before then finds, once it holds the
//! lock, that the path no longer names its file, and starts again (the usual
//! lock-file protocol), so two processes never both believe they hold it.
//!
//! Where the filesystem cannot lock (some network filesystems), the lock is
//! skipped rather than refusing to work.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// A held lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct Lock {
    file: Option<File>,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock file `path`, which guards `guarded` (named in the error):
    /// fails at once with [`Error::InUse`] when another process holds it.
    pub fn acquire(path: &Path, guarded: &Path) -> Result<Lock> {
        // Each retry follows a release by another process; a few are plenty.
        for _ in 0..64 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(Error::io("create the lock file", path))?;
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    return Err(Error::InUse { path: guarded.to_path_buf(), holder: holder(file) })
                }
                // No locking here (ENOLCK, EOPNOTSUPP...): go on unguarded.
                Err(_) => return Ok(Lock { file: None, path: path.to_path_buf() }),
            }
            let ours = file.metadata().map_err(Error::io("stat", path))?;
            match fs::symlink_metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                // Released and removed by its last holder after we opened it.
                _ => continue,
            }
            file.set_len(0).map_err(Error::io("write", path))?;
            let pid = format!("{}\n", std::process::id());
            file.write_all_at(pid.as_bytes(), 0).map_err(Error::io("write", path))?;
            return Ok(Lock { file: Some(file), path: path.to_path_buf() });
        }
        Err(Error::InUse { path: guarded.to_path_buf(), holder: "another process".to_owned() })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Removed while still held, so nobody can take the old file after us.
            let _ = fs::remove_file(&self.path);
            drop(file);
        }
    }
}

/// Who holds a lock, from the process id its holder wrote.
fn holder(mut file: File) -> String {
    let mut text = String::new();
    let _ = file.by_ref().take(32).read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("pid {pid}"),
        Err(_) => "another process".to_owned(),
    }
}

/// Whether process `pid` exists on this machine (a process we may not signal
/// exists too).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = Lock::acquire(&path, Path::new("out")).unwrap();
        let err = Lock::acquire(&path, Path::new("out")).unwrap_err().to_string();
        assert_eq!(err, format!("out is in use by soup (pid {})", std::process::id()));
        drop(first);
        assert!(!path.exists(), "the lock file is removed on release");
        let again = Lock::acquire(&path, Path::new("out")).unwrap();
        assert!(path.exists());
        drop(again);
    }

    #[test]
    fn liveness() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}
