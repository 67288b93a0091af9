//! The evaluator processes of a search: how they are started and how they are
//! stopped, shared by per-candidate commands ([`crate::search::evaluate`]) and
//! persistent servers ([`crate::search::server`]).
//!
//! Every process runs in a **process group of its own**, so that everything it
//! starts (`sh -c 'server & python eval.py'`) can be signalled at once, and the
//! terminal's Ctrl-C reaches `soup` alone, which then stops its evaluations itself.
//!
//! **Stopping** (timeout, cancel, Ctrl-C, or leftovers after the command exited) is
//! graceful: the group is sent the stop signal ([`Stop::signal`], SIGTERM by
//! default) and SIGCONT (a stopped process could not act on it otherwise), then
//! given [`Stop::grace`] to end; whatever still runs in the group then gets
//! SIGKILL. "Still runs" is read from `/proc` (a process whose group is ours and
//! which is not a zombie), so a command that ends at once costs no waiting. The
//! group is always killed *before* its leader is reaped: until then the leader's
//! pid, which is the group id, cannot be reused, so no signal can ever reach an
//! unrelated process.
//!
//! **If `soup` dies** (SIGKILL, a crash) it cannot stop anything. On Linux each child
//! therefore asks the kernel, between `fork` and `exec`, for SIGTERM when its parent
//! goes (`PR_SET_PDEATHSIG`). Its limits, documented for users in EVALUATOR.md: the
//! signal goes to the direct child only (the `sh`, or what it `exec`s), not to the
//! rest of its group; it fires when the *thread* that forked the child ends, so
//! long-lived children (servers) are forked from one thread that lives as long as
//! they do; and it is SIGTERM, which a process may ignore.

use std::fmt;
use std::io;
use std::process::{Child, Command, ExitStatus};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, waitid, Pid, Signal, WaitId, WaitIdOptions};

/// How long to wait between two looks at a group being stopped.
const STOP_POLL: Duration = Duration::from_millis(20);

/// The default grace between the stop signal and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The first signal sent to an evaluation being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopSignal {
    /// SIGTERM: the usual request to end.
    #[default]
    Term,
    /// SIGINT: what Ctrl-C sends (Python raises `KeyboardInterrupt`); `srun
    /// --disable-status` forwards it to its tasks unchanged (CLUSTER.md).
    Int,
    /// SIGHUP.
    Hup,
    /// SIGUSR1 (forwarded as is by `srun`).
    Usr1,
    /// SIGUSR2 (forwarded as is by `srun`).
    Usr2,
}

impl StopSignal {
    fn signal(self) -> Signal {
        match self {
            StopSignal::Term => Signal::TERM,
            StopSignal::Int => Signal::INT,
            StopSignal::Hup => Signal::HUP,
            StopSignal::Usr1 => Signal::USR1,
            StopSignal::Usr2 => Signal::USR2,
        }
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::Term => "TERM",
            StopSignal::Int => "INT",
            StopSignal::Hup => "HUP",
            StopSignal::Usr1 => "USR1",
            StopSignal::Usr2 => "USR2",
        })
    }
}

/// A stop signal name that is not one of ours.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown stop signal {0:?}: expected TERM, INT, HUP, USR1 or USR2")]
pub struct UnknownSignal(String);

impl FromStr for StopSignal {
    type Err = UnknownSignal;

    /// `TERM`, `SIGTERM`, `term`, … (likewise INT, HUP, USR1, USR2).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        match upper.strip_prefix("SIG").unwrap_or(&upper) {
            "TERM" => Ok(StopSignal::Term),
            "INT" => Ok(StopSignal::Int),
            "HUP" => Ok(StopSignal::Hup),
            "USR1" => Ok(StopSignal::Usr1),
            "USR2" => Ok(StopSignal::Usr2),
            _ => Err(UnknownSignal(s.to_owned())),
        }
    }
}

/// How an evaluation's processes are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// Sent first, to the whole process group.
    pub signal: StopSignal,
    /// Time the group gets to end before SIGKILL.
    pub grace: Duration,
}

impl Default for Stop {
    fn default() -> Self {
        Stop { signal: StopSignal::Term, grace: DEFAULT_GRACE }
    }
}

/// Makes `command` start in a new process group with SIGINT, SIGTERM and SIGHUP
/// at their default actions and, on Linux, receive SIGTERM when the thread that
/// starts it ends (see the module docs).
///
/// A signal ignored when `soup` started (a shell's `&` ignores SIGINT in what it
/// starts, `nohup` SIGHUP) would otherwise stay ignored in the evaluator, where a
/// shell cannot even trap it: `--stop-signal INT` would never reach a trap, only
/// the SIGKILL after the grace period.
pub(crate) fn isolate(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    #[cfg(target_os = "linux")]
    let parent = rustix::process::getpid();
    let hook = move || -> io::Result<()> {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: `signal` with `SIG_DFL` installs no handler, so no code of
            // ours can run in the child; it is async-signal-safe (a `sigaction`
            // system call), as the `pre_exec` hook requires.
            if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
        }
        #[cfg(target_os = "linux")]
        {
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
            // The parent may have died between fork and prctl, in which case the
            // child was re-parented already and no signal will come: give up.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error()));
            }
        }
        Ok(())
    };
    // SAFETY: `pre_exec` runs the hook in the child between fork and exec, where
    // only async-signal-safe operations are allowed. The hook makes system calls
    // only (sigaction through `signal`, prctl and getppid through rustix), which
    // neither allocate nor take locks, and builds its errors from raw OS codes,
    // which does not allocate (`last_os_error` reads errno); it captures a `Pid`
    // by value and touches no other state of the parent.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Whether `child` has exited, without reaping it (`waitid` with `WNOWAIT`), so that
/// its pid, the group id, stays reserved.
pub(crate) fn has_exited(child: &Child) -> io::Result<bool> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match waitid(WaitId::Pid(Pid::from_child(child)), options) {
            Ok(status) => return Ok(status.is_some()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Stops everything still running in `child`'s process group (the child itself
/// included, if it has not exited): the stop signal and SIGCONT, up to the grace
/// period for the group to end, then SIGKILL; finally reaps the child.
pub(crate) fn stop_group(child: &mut Child, stop: &Stop) -> io::Result<ExitStatus> {
    let pgid = Pid::from_child(child);
    if group_runs(pgid, child)? {
        // Errors are ignored: ESRCH only means the group ended meanwhile, and EPERM
        // cannot happen for our own descendants.
        let _ = kill_process_group(pgid, stop.signal.signal());
        let _ = kill_process_group(pgid, Signal::CONT);
        let deadline = Instant::now().checked_add(stop.grace);
        while group_runs(pgid, child)? {
            let now = Instant::now();
            match deadline {
                Some(d) if now >= d => break,
                Some(d) => thread::sleep(STOP_POLL.min(d - now)),
                None => thread::sleep(STOP_POLL),
            }
        }
    }
    let _ = kill_process_group(pgid, Signal::KILL);
    child.wait()
}

/// Whether any process of group `pgid` is still running (not a zombie).
#[cfg(target_os = "linux")]
fn group_runs(pgid: Pid, leader: &Child) -> io::Result<bool> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Ok(!has_exited(leader)?);
    };
    let pgid = pgid.as_raw_nonzero().get();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        // Gone since the listing: not running.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid pgrp …`; comm may hold anything, so parse after
        // the last ')'.
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = fields.next().unwrap_or("");
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        if group == Some(pgid) && !state.starts_with(['Z', 'X']) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Without `/proc`, only the leader can be watched.
#[cfg(not(target_os = "linux"))]
fn group_runs(_pgid: Pid, leader: &Child) -> io::Result<bool> {
    Ok(!has_exited(leader)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse() {
        assert_eq!("TERM".parse::<StopSignal>().unwrap(), StopSignal::Term);
        assert_eq!("sigint".parse::<StopSignal>().unwrap(), StopSignal::Int);
        assert_eq!("SIGUSR2".parse::<StopSignal>().unwrap(), StopSignal::Usr2);
        assert!("KILL".parse::<StopSignal>().is_err());
        assert_eq!(StopSignal::Hup.to_string(), "HUP");
    }
}
