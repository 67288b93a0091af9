//! Searches on a real Slurm cluster: a single node on localhost, started by
//! `.ci/slurm start` (Debian's slurm-wlm 22.05 and munge), which `.ci/run` runs
//! before these tests and stops after them. Without a running Slurm these tests
//! fail, so they are ignored by a plain `cargo test`; `.ci/run` runs them with
//! `--ignored`.
//!
//! What they show (docs/CLUSTER.md): a search whose evaluations go through `srun`
//! reaches the same soup as without Slurm; a timeout, Ctrl-C, SIGTERM or SIGKILL
//! to soup leaves no job step behind; and how a task under `srun` gets to clean up: `srun` turns a
//! SIGTERM into SIGKILL for its tasks, while with `--disable-status` (`-X`) it
//! passes SIGINT on unchanged, so `--stop-signal INT` lets the task's handler run.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::*;
use common::{write_file, Fmt, RawTensor, Rng};

const EVALUATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/evaluators/distance.py");

/// Four ingredients around a hidden target and the target file, in `dir`;
/// returns the ingredient paths and the target's.
fn ingredients(dir: &Path) -> (Vec<String>, String) {
    let mut rng = Rng::new(7);
    let target: Vec<f64> = (0..300).map(|_| rng.unit() * 2.0 - 1.0).collect();
    let mut paths = Vec::new();
    for i in 0..4 {
        let scale = 0.05 * (1.0 + i as f64);
        let v: Vec<f64> = target.iter().map(|t| t + scale * (rng.unit() * 2.0 - 1.0)).collect();
        let path = dir.join(format!("in{i}.safetensors"));
        let tensors = [
            RawTensor::float("a.weight", Fmt::F32, &[16, 16], &v[..256]),
            RawTensor::float("b.bias", Fmt::F32, &[44], &v[256..]),
        ];
        write_file(&path, &tensors, true);
        paths.push(p(&path));
    }
    let file = dir.join("target.f64");
    fs::write(&file, target.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    (paths, p(&file))
}

fn search(paths: &[String], out: &Path, eval: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["greedy".to_owned()];
    args.extend(paths.iter().cloned());
    args.extend(["-o".into(), p(out), "--eval".into(), eval.into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The job steps (`squeue -s`) and jobs of jobs named `name`.
fn queue(name: &str) -> String {
    let run = |extra: &[&str]| {
        let out = Command::new("squeue")
            .args(["-h", "-n", name])
            .args(extra)
            .output()
            .expect("squeue: is Slurm installed? .ci/slurm start");
        assert!(out.status.success(), "squeue failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["-s"]) + &run(&[])
}

/// Waits up to `patience` for the queue of `name` to empty; returns what is left.
fn drains(name: &str, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let left = queue(name);
        if left.trim().is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `name` has `n` running steps.
fn wait_for_steps(name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("squeue").args(["-h", "-s", "-n", name]).output().unwrap();
        let running = String::from_utf8_lossy(&out.stdout).lines().count();
        if running >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{running} of {n} steps started");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn slurm_is_up() {
    let out = Command::new("sinfo").args(["-h", "-o", "%t"]).output();
    let state = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert!(
        matches!(state.as_deref(), Ok("idle" | "mix" | "alloc")),
        "Slurm is not running (sinfo: {state:?}); start it with .ci/slurm start"
    );
}

#[test]
#[ignore = "needs a running Slurm: .ci/run starts one"]
fn greedy_through_srun_reaches_the_same_soup() {
    slurm_is_up();
    let dir = common::tempdir();
    let (paths, target) = ingredients(dir.path());
    let local = format!("python3 -S {} {{model}} {}", sh_quote(EVALUATOR), sh_quote(&target));
    let plain = dir.path().join("plain");
    soup_ok_in(dir.path(), &search(&paths, &plain, &local, &["--jobs", "2"]));
    let slurm = dir.path().join("slurm");
    let eval = format!("srun -J soup-same -n1 --quiet {local}");
    soup_ok_in(dir.path(), &search(&paths, &slurm, &eval, &["--jobs", "2"]));
    let a = read_json(&dir.path().join("plain.run/report.json"));
    let b = read_json(&dir.path().join("slurm.run/report.json"));
    for key in ["members", "score", "individual_scores"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    let bytes = |d: &Path| fs::read(d.join("model.safetensors")).unwrap();
    assert!(bytes(&plain) == bytes(&slurm), "the soups differ");
    assert_eq!(drains("soup-same", Duration::from_secs(15)), "");
}

#[test]
#[ignore = "needs a running Slurm: .ci/run starts one"]
fn a_timed_out_evaluation_leaves_no_job_step() {
    slurm_is_up();
    let dir = common::tempdir();
    let (paths, _) = ingredients(dir.path());
    let out = dir.path().join("soup");
    let eval = "srun -J soup-timeout -n1 --quiet sleep 600";
    let args = search(&paths[..2], &out, eval, &["--jobs", "2", "--timeout", "3s"]);
    let run = soup_in(dir.path(), &args);
    assert_eq!(run.status.code(), Some(1), "{}", show(&args, &run));
    let stderr = stderr_of(&run);
    assert!(stderr.contains("timed out after 3s"), "{stderr}");
    assert_eq!(drains("soup-timeout", Duration::from_secs(15)), "", "steps left behind");
}

#[test]
#[ignore = "needs a running Slurm: .ci/run starts one"]
fn sigterm_ctrl_c_or_sigkill_to_soup_end_running_steps() {
    slurm_is_up();
    let dir = common::tempdir();
    let (paths, _) = ingredients(dir.path());
    use rustix::process::Signal;
    for signal in [Signal::TERM, Signal::INT, Signal::KILL] {
        let name = format!("soup-signal-{}", signal.as_raw());
        let out = dir.path().join(&name);
        // `exec`: srun is soup's own child, so it also gets the parent-death
        // signal when soup is killed outright (CLUSTER.md).
        let eval = format!("exec srun -J {name} -n1 --quiet sleep 600");
        let args = search(&paths[..2], &out, &eval, &["--jobs", "2"]);
        let soup = Command::new(env!("CARGO_BIN_EXE_soup"))
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_steps(&name, 2);
        let pid = rustix::process::Pid::from_raw(soup.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        let ended = soup.wait_with_output().unwrap();
        assert!(!ended.status.success(), "{:?}", ended.status);
        assert_eq!(drains(&name, Duration::from_secs(15)), "", "steps left after {signal:?}");
    }
}

/// What a task under `srun` sees when soup stops it: a trap that needs a second
/// to clean up, and the file it writes when it gets to finish.
fn trapped_task(dir: &Path, name: &str, signal: &str, srun_options: &str) -> (String, String) {
    let cleaned = dir.join(format!("{name}.cleaned"));
    let started = dir.join(format!("{name}.started"));
    let task = format!(
        "trap 'kill $!; sleep 1; echo cleaned > {}; exit 0' {signal}; touch {}; sleep 600 & wait",
        sh_quote(&p(&cleaned)),
        sh_quote(&p(&started))
    );
    let eval = format!("srun -J {name} -n1 --quiet {srun_options} sh -c {}", sh_quote(&task));
    (eval, p(&cleaned))
}

/// Runs a search whose one evaluation (a task under `srun SRUN_OPTIONS` trapping
/// `signal`) times out and is stopped with `--stop-signal`; returns whether the
/// task's clean-up ran to its end. Asserts that no step is left either way.
fn cleans_up(dir: &Path, name: &str, signal: &str, srun_options: &str) -> bool {
    let (paths, _) = ingredients(dir);
    let (eval, cleaned) = trapped_task(dir, name, signal, srun_options);
    let out = dir.join(name);
    let extra = ["--timeout", "3s", "--stop-signal", signal, "--kill-grace", "20s"];
    let args = search(&paths[..1], &out, &eval, &extra);
    let run = soup_in(dir, &args);
    assert_eq!(run.status.code(), Some(1), "{}", show(&args, &run));
    assert_eq!(drains(name, Duration::from_secs(15)), "", "{name}: steps left behind");
    fs::read_to_string(&cleaned).unwrap_or_default() == "cleaned\n"
}

#[test]
#[ignore = "needs a running Slurm: .ci/run starts one"]
fn only_a_forwarded_signal_lets_a_task_clean_up() {
    slurm_is_up();
    let dir = common::tempdir();
    // Default: soup sends SIGTERM to srun, which kills its tasks with SIGKILL at
    // once: the task's TERM trap never runs.
    assert!(!cleans_up(dir.path(), "soup-term", "TERM", ""), "srun passed SIGTERM on");
    // With `srun -X`, SIGINT reaches the task as is: its trap runs to the end
    // within --kill-grace, and the step ends with it.
    assert!(cleans_up(dir.path(), "soup-int", "INT", "-X"), "SIGINT was not passed on");
    // SIGUSR1 is passed on by a plain srun.
    assert!(cleans_up(dir.path(), "soup-usr1", "USR1", ""), "SIGUSR1 was not passed on");
}
