//! Driving `soup` as another process: started in the background, waited for
//! until it reaches a point (a staging directory, mapped pages), then signalled,
//! raced or left to finish; and what it leaves beside its output.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `soup args` with stdout and stderr piped, and SIGINT, SIGTERM and
/// SIGHUP at their default action: a test run started in the background by a
/// shell ignores SIGINT, which soup would rightly keep ignoring.
pub fn spawn(args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_soup"));
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; `signal` is one, and nothing is
    // allocated or locked.
    unsafe {
        command.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    command.spawn().expect("start soup")
}

/// Waits (up to a minute) until `ready` holds, failing if `child` ends first.
pub fn wait_until(what: &str, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.stderr.take().map(read_all).unwrap_or_default();
            panic!("soup ended ({status}) before {what}; stderr:\n{out}");
        }
        assert!(Instant::now() < deadline, "soup never reached {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_all(mut r: impl std::io::Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Waits for `child` and returns its exit code (`None`: killed by a signal),
/// stdout and stderr.
pub fn finish(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Hidden entries in `dir` (staging directories, lock files, moved-aside soups).
pub fn hidden(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Whether soup has made a (hidden) staging directory in `dir` that already holds
/// its `model.safetensors` (created at full size before any chunk is written).
pub fn writing(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with('.')
            && e.path().join("model.safetensors").exists()
    })
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Resident memory in kB of `pid`'s mappings of `file` (pages of it the process
/// has touched), from `/proc/PID/smaps`.
pub fn mapped_rss_kb(pid: u32, file: &Path) -> u64 {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let name = file.to_string_lossy();
    let mut inside = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.ends_with(&*name);
        } else if inside {
            if let Some(kb) = line.strip_prefix("Rss:") {
                total += kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// A safetensors file of about `mib` MiB of f32 values in [-1, 1) (a tensor `w`,
/// then a small `b`): big enough that a debug build of soup takes a while over it.
pub fn big_input(path: &Path, mib: usize, seed: u64) {
    let n = mib << 18;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(n * 4);
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let b: Vec<u8> = (0..16).flat_map(|i| (i as f32 / 16.0).to_le_bytes()).collect();
    let tensors = [
        super::RawTensor::raw("w", "F32", &[n], data),
        super::RawTensor::raw("b", "F32", &[16], b),
    ];
    super::write_file(path, &tensors, true);
}

/// The process id of a process that has exited (for leftovers of "dead" runs).
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// The hidden name soup gives things beside `dest`: `.soup-<FNV-1a of the
/// name>-<kind><pid>-<n>`.
pub fn sibling_name(dest: &Path, kind: char, pid: u32) -> PathBuf {
    let name = dest.file_name().unwrap().as_encoded_bytes();
    let hash = name
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    dest.with_file_name(format!(".soup-{hash:016x}-{kind}{pid}-0"))
}
