//! SIGINT, SIGTERM and SIGHUP, the signals a user, `timeout`, `kill`, systemd,
//! `docker stop` and Slurm send to stop a job, all handled like Ctrl-C: the handler
//! only records which signal came and raises the cancel flag every long-running
//! library call polls (per chunk of a pass, every few milliseconds while an
//! evaluator runs). The command then stops cleanly — staging directories removed,
//! evaluations and evaluation servers stopped (their process groups get the stop
//! signal, then SIGKILL after the grace period), locks released — and exits with
//! 128 + the signal's number (130, 143, 129), as a shell reports a process the
//! signal killed.
//!
//! A signal that was ignored when soup started (`nohup` ignores SIGHUP, a shell
//! ignores SIGINT for background jobs) stays ignored.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first termination signal received, 0 before any.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The signals handled.
const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the handler for SIGINT, SIGTERM and SIGHUP. Without it the default
/// action kills the process at once, which is safe too (only a hidden staging
/// directory is left, which the next run on that output removes), so a failure is
/// not fatal.
pub fn install() {
    for signal in HANDLED {
        // SAFETY: plain FFI on zero-initialised `sigaction` structs (all-zero is a
        // valid value of the C struct). The handler is async-signal-safe: it only
        // stores to atomics.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0
                || current.sa_sigaction == libc::SIG_IGN
            {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    let _ = RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    super::INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The first termination signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The conventional name of a handled signal.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
