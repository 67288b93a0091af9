//! `soup` as a cluster scheduler and a careless user treat it: inputs truncated
//! while they are read, SIGTERM/SIGHUP/SIGINT mid-work, runs killed outright and
//! rerun, two processes on one output or run directory, layouts that would
//! destroy a search's record, closed pipes, long names and an old soup that
//! cannot be removed. Each drives the built binary as another process and checks
//! the end state: a clear `error:` with the right exit status, and nothing partial
//! or stale left behind.

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;

use common::cli::{dies, sh_quote};
use common::process::{
    big_input, dead_pid, finish, hidden, mapped_rss_kb, sibling_name, signal, spawn, wait_until,
    writing,
};
use common::{read_output, s, soup, soup_ok, tempdir, write_checkpoint, Fmt, RawTensor};
use rustix::process::Signal;

/// Two ingredients of 48 MiB each, and the arguments of a merge of them that a
/// debug build takes a few seconds over (one thread, small chunks).
fn slow_merge(dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    big_input(&a, 48, 1);
    big_input(&b, 48, 2);
    let out = dir.join("soup");
    let args = [s(&a), s(&b), "-o", s(&out), "-t", "1", "--chunk-elements", "4096"];
    let args = std::iter::once("merge").chain(args).map(str::to_owned).collect();
    (b, args)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn an_input_truncated_during_a_merge_is_named_and_nothing_is_left() {
    let dir = tempdir();
    let (b, args) = slow_merge(dir.path());
    let mut child = spawn(&strs(&args));
    wait_until("writing", &mut child, || writing(dir.path()));
    // Another process shrinks an ingredient the merge has mapped.
    fs::File::options().write(true).open(&b).unwrap().set_len(4096).unwrap();
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(2), "{stderr}");
    let want = format!("error: {} changed size while it was being read", b.display());
    assert!(stderr.starts_with(&want), "{stderr}");
    assert!(!dir.path().join("soup").exists());
    assert!(hidden(dir.path()).is_empty(), "left behind: {:?}", hidden(dir.path()));
}

#[test]
fn an_input_truncated_while_its_values_are_checked_is_named() {
    let dir = tempdir();
    let a = dir.path().join("a.safetensors");
    big_input(&a, 96, 3);
    let a_str = s(&a).to_owned();
    let mut child = spawn(&["inspect", &a_str, "--check-values", "-t", "1"]);
    let pid = child.id();
    // The pass has begun once megabytes of the file are resident in the process
    // (opening it touches the header's page only).
    wait_until("reading values", &mut child, || mapped_rss_kb(pid, &a) > 1024);
    fs::File::options().write(true).open(&a).unwrap().set_len(1 << 20).unwrap();
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(2), "{stderr}");
    // Caught by the values pass, or (on a loaded machine, where the pages counted
    // above may be touched while opening) by the open's own check, which names
    // the ingredient first.
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&format!("{a_str} changed size while it was being read")), "{stderr}");
}

#[test]
fn the_base_of_an_adapter_truncated_during_a_merge_is_named() {
    // A LoRA adapter's adapted matrices are computed from its base's mapping as
    // they are read: the base shrinking under them is caught like an ingredient's.
    let dir = tempdir();
    let (rows, cols, r) = (3072, 4096, 1);
    let base = dir.path().join("base");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut values = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
            })
            .collect()
    };
    let weight = RawTensor::raw("layer.proj.weight", "F32", &[rows, cols], values(rows * cols));
    write_checkpoint(&base, &[weight], &[], true);
    let adapter = dir.path().join("adapter");
    fs::create_dir_all(&adapter).unwrap();
    common::write_file(
        &adapter.join("adapter_model.safetensors"),
        &[
            RawTensor::raw(
                "base_model.model.layer.proj.lora_A.weight",
                "F32",
                &[r, cols],
                values(r * cols),
            ),
            RawTensor::raw(
                "base_model.model.layer.proj.lora_B.weight",
                "F32",
                &[rows, r],
                values(rows * r),
            ),
        ],
        true,
    );
    let config = serde_json::json!({
        "peft_type": "LORA", "r": r, "lora_alpha": 2.0, "target_modules": ["proj"],
        "fan_in_fan_out": false, "use_rslora": false, "base_model_name_or_path": s(&base),
    });
    fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();

    let out = dir.path().join("soup");
    let args = ["merge", s(&adapter), "-o", s(&out), "-t", "1", "--chunk-elements", "4096"];
    let mut child = spawn(&args);
    wait_until("writing", &mut child, || writing(dir.path()));
    let file = base.join("model.safetensors");
    fs::File::options().write(true).open(&file).unwrap().set_len(4096).unwrap();
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(2), "{stderr}");
    let want = format!("{} changed size while it was being read", file.display());
    assert!(stderr.starts_with("error: ") && stderr.contains(&want), "{stderr}");
    assert!(!out.exists());
    assert!(hidden(dir.path()).is_empty(), "left behind: {:?}", hidden(dir.path()));
}

#[test]
fn sigterm_sighup_and_sigint_stop_a_merge_cleanly() {
    for (sig, code, name) in
        [(Signal::TERM, 143, "SIGTERM"), (Signal::HUP, 129, "SIGHUP"), (Signal::INT, 130, "SIGINT")]
    {
        let dir = tempdir();
        let (_, args) = slow_merge(dir.path());
        let mut child = spawn(&strs(&args));
        wait_until("writing", &mut child, || writing(dir.path()));
        signal(child.id(), sig);
        let (got, _, stderr) = finish(child);
        assert_eq!(got, Some(code), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}; nothing partial was left")),
            "{name}: {stderr}"
        );
        assert!(!dir.path().join("soup").exists());
        assert!(hidden(dir.path()).is_empty(), "{name} left {:?}", hidden(dir.path()));
    }
}

/// Two small fine-tunes in `dir/a` and `dir/b`.
fn two_ingredients(dir: &Path) -> (String, String) {
    for (name, x) in [("a", 0.25), ("b", 0.75)] {
        let t = [RawTensor::float("w", Fmt::F32, &[4], &[x, -x, 1.0 + x, 2.0])];
        write_checkpoint(&dir.join(name), &t, &[], true);
    }
    (s(&dir.join("a")).to_owned(), s(&dir.join("b")).to_owned())
}

/// Runs a greedy search with `flag command` (`--eval` or `--eval-server`), where
/// the command records its pid and that of a background child it started, stops
/// it with `sig` once both run, and checks the end state: exit `code`, both
/// processes gone, no candidate in scratch, no output, nothing beside it.
fn a_search_stopped_by(sig: Signal, code: i32, name: &str, flag: &str, command: &str) {
    let dir = tempdir();
    let (a, b) = two_ingredients(dir.path());
    let out = dir.path().join("best");
    let started = "echo $$ > \"$SOUP_RUN_DIR/command.pid\"; sleep 300 & \
                   echo $! > \"$SOUP_RUN_DIR/bg.pid.tmp\"; \
                   mv \"$SOUP_RUN_DIR/bg.pid.tmp\" \"$SOUP_RUN_DIR/bg.pid\"; ";
    let command = format!("{started}{command}");
    let run_dir = dir.path().join("best.run");
    let args = ["greedy", &a, &b, "-o", s(&out), flag, &command, "--kill-grace", "2s"];
    let mut child = spawn(&args);
    wait_until("an evaluation", &mut child, || run_dir.join("bg.pid").exists());
    signal(child.id(), sig);
    let (got, _, stderr) = finish(child);
    assert_eq!(got, Some(code), "{stderr}");
    assert!(stderr.contains(&format!("interrupted by {name}")), "{stderr}");
    for file in ["command.pid", "bg.pid"] {
        let pid: u32 = fs::read_to_string(run_dir.join(file)).unwrap().trim().parse().unwrap();
        assert!(dies(pid, std::time::Duration::from_secs(10)), "{file}: {pid} still runs");
    }
    let scratch = run_dir.join("scratch");
    let candidates: Vec<_> = walk(&scratch).into_iter().filter(|p| p.is_file()).collect();
    assert!(candidates.is_empty(), "scratch holds {candidates:?}");
    assert!(!out.exists());
    assert!(hidden(dir.path()).is_empty(), "left {:?}", hidden(dir.path()));
}

#[test]
fn sigterm_stops_a_search_and_its_evaluators_process_group() {
    // The evaluator waits for its background child.
    a_search_stopped_by(Signal::TERM, 143, "SIGTERM", "--eval", "wait; echo 1");
}

#[test]
fn sighup_stops_a_search_and_its_evaluation_servers_process_group() {
    // The server takes requests and never answers them.
    let server = "while read -r request; do sleep 300; done";
    a_search_stopped_by(Signal::HUP, 129, "SIGHUP", "--eval-server", server);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn a_later_run_removes_what_a_killed_merge_left() {
    let dir = tempdir();
    let (_, args) = slow_merge(dir.path());
    let mut child = spawn(&strs(&args));
    wait_until("writing", &mut child, || writing(dir.path()));
    child.kill().unwrap(); // SIGKILL: no clean-up of its own
    child.wait().unwrap();
    let stale = hidden(dir.path());
    assert!(!stale.is_empty(), "the killed merge left nothing to clean");
    // A leftover in the form older versions named it, of a process that is gone.
    let legacy = dir.path().join(format!(".soup.soup-tmp-{}-0", dead_pid()));
    fs::create_dir(&legacy).unwrap();
    fs::write(legacy.join("model.safetensors"), [0u8; 100]).unwrap();
    // And the intermediate soups of a killed multi-document recipe (a directory
    // per soup inside).
    let intermediates = sibling_name(&dir.path().join("soup"), 'i', dead_pid());
    fs::create_dir_all(intermediates.join("ab")).unwrap();
    fs::write(intermediates.join("ab/model.safetensors"), [0u8; 100]).unwrap();

    let out = soup(&strs(&args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("note: removed"), "{stderr}");
    assert!(stderr.contains(".soup.soup-tmp-"), "{stderr}");
    assert!(hidden(dir.path()).is_empty(), "left {:?}", hidden(dir.path()));
    assert!(dir.path().join("soup/model.safetensors").is_file());
}

#[test]
fn a_soup_moved_aside_by_a_killed_run_is_restored_and_live_ones_are_left_alone() {
    let dir = tempdir();
    let (a, b) = two_ingredients(dir.path());
    let out = dir.path().join("soup");
    // Killed between its two renames: the old soup aside, the destination gone.
    let aside = sibling_name(&out, 'o', dead_pid());
    fs::create_dir(&aside).unwrap();
    fs::write(aside.join("model.safetensors"), b"the old soup").unwrap();
    // And a staging directory of a process that still runs (this test).
    let live = sibling_name(&out, 't', std::process::id());
    fs::create_dir(&live).unwrap();

    let run = soup(&["merge", &a, &b, "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("note: restored"), "{stderr}");
    assert!(stderr.contains("still runs"), "{stderr}");
    assert_eq!(fs::read(out.join("model.safetensors")).unwrap(), b"the old soup");
    // Restored, the destination is not empty: without --force it is kept.
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(live.is_dir(), "a live process's directory was removed");
    soup_ok(&["merge", &a, &b, "-o", s(&out), "--force"]);
    assert_eq!(read_output(&out)["w"].1, vec![4]);
}

#[test]
fn a_second_merge_on_the_same_output_fails_at_once_naming_the_first() {
    let dir = tempdir();
    let (_, args) = slow_merge(dir.path());
    let mut first = spawn(&strs(&args));
    wait_until("writing", &mut first, || writing(dir.path()));
    let second = soup(&strs(&args));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    let out = dir.path().join("soup");
    let want = format!("error: {} is in use by soup (pid {})", out.display(), first.id());
    assert!(stderr.starts_with(&want), "{stderr}");
    let (code, _, stderr) = finish(first);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(out.join("model.safetensors").is_file());
    assert!(hidden(dir.path()).is_empty(), "left {:?}", hidden(dir.path()));
}

#[test]
fn a_second_search_on_the_same_run_directory_fails_before_evaluating() {
    let dir = tempdir();
    let (a, b) = two_ingredients(dir.path());
    let go = dir.path().join("go");
    let log = dir.path().join("calls");
    let eval = format!(
        "echo x >> {log}; while [ ! -e {go} ]; do sleep 0.02; done; echo 1",
        log = sh_quote(s(&log)),
        go = sh_quote(s(&go))
    );
    let run_dir = dir.path().join("shared.run");
    let out1 = dir.path().join("one");
    let mut first =
        spawn(&["greedy", &a, &b, "-o", s(&out1), "--run-dir", s(&run_dir), "--eval", &eval]);
    wait_until("an evaluation", &mut first, || log.exists());
    let out2 = dir.path().join("two");
    // An evaluator that does not wait, so that a second search that is not
    // stopped finishes (and fails the test) instead of waiting too.
    let quick = format!("echo y >> {}; echo 1", sh_quote(s(&log)));
    let second =
        soup(&["greedy", &a, &b, "-o", s(&out2), "--run-dir", s(&run_dir), "--eval", &quick]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    let want = format!("error: {} is in use by soup (pid {})", run_dir.display(), first.id());
    assert!(stderr.starts_with(&want), "{stderr}");
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1, "the second evaluated");
    fs::write(&go, "").unwrap();
    let (code, _, stderr) = finish(first);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(out1.is_dir() && !out2.exists());
}

#[test]
fn a_search_checks_its_layout_and_output_before_any_evaluation() {
    let dir = tempdir();
    let (a, b) = two_ingredients(dir.path());
    let log = dir.path().join("calls");
    let eval = format!("echo x >> {}; echo 1", sh_quote(s(&log)));
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("old.txt"), "an earlier soup").unwrap();
    let long = dir.path().join("x".repeat(256));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["-o".into(), s(&out).into(), "--run-dir".into(), s(&out).into(), "--force".into()],
            "the same as the output",
        ),
        (
            vec![
                "-o".into(),
                s(&out).into(),
                "--run-dir".into(),
                s(&out.join("run")).into(),
                "--force".into(),
            ],
            "inside the output",
        ),
        (vec!["-o".into(), a.clone(), "--force".into()], "overlaps the ingredient"),
        (vec!["-o".into(), s(&long).into()], "longer than the filesystem allows"),
        (vec!["-o".into(), s(&out).into()], "exists and is not empty"),
    ];
    for (extra, want) in cases {
        let mut args: Vec<&str> = vec!["greedy", &a, &b, "--eval", &eval];
        args.extend(extra.iter().map(String::as_str));
        let run = soup(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:") && stderr.contains(want), "{args:?}: {stderr}");
        assert!(!log.exists(), "{args:?} evaluated before refusing");
    }
    assert_eq!(fs::read_to_string(out.join("old.txt")).unwrap(), "an earlier soup");
}

#[test]
fn a_closed_stdout_does_not_stop_inspect() {
    let dir = tempdir();
    let (a, _) = two_ingredients(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(["inspect", &a])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`: the reader is gone before soup writes
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_closed_stderr_does_not_stop_a_search() {
    let dir = tempdir();
    let (a, b) = two_ingredients(dir.path());
    let out = dir.path().join("best");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(["greedy", &a, &b, "-o", s(&out), "--eval", "echo 1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take()); // `2>&1 | head -1` after the first line
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(out.join("model.safetensors").is_file(), "the search stopped");
    assert!(dir.path().join("best.run/report.md").is_file());
}

#[test]
fn an_output_name_as_long_as_the_filesystem_allows_works() {
    let dir = tempdir();
    let (a, b) = two_ingredients(dir.path());
    let out = dir.path().join("s".repeat(255));
    soup_ok(&["merge", &a, &b, "-o", s(&out), "--quiet"]);
    assert!(out.join("model.safetensors").is_file());
    soup_ok(&["merge", &a, &b, "-o", s(&out), "--quiet", "--force"]);
    assert!(hidden(dir.path()).is_empty(), "left {:?}", hidden(dir.path()));
}

/// Runs `soup args` as an unprivileged user when the tests run as root (root may
/// remove anything, which is not what a user sees).
fn soup_as_user(args: &[&str]) -> std::process::Output {
    let unprivileged = rustix::process::geteuid().is_root();
    let mut command = if unprivileged {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_soup")]);
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_soup"))
    };
    command.args(args).output().expect("run soup (setpriv from util-linux when root)")
}

#[test]
fn a_forced_replace_over_an_undeletable_soup_installs_the_new_one_and_warns() {
    let dir = tempdir();
    let (a, b) = two_ingredients(dir.path());
    let out = dir.path().join("soup");
    soup_ok(&["merge", &a, &b, "-o", s(&out), "--quiet"]);
    // A read-only folder inside the old soup: its files cannot be unlinked.
    let locked = out.join("logs");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("eval.txt"), "kept").unwrap();
    if rustix::process::geteuid().is_root() {
        for path in walk(dir.path()).into_iter().chain([dir.path().to_path_buf()]) {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    let run = soup_as_user(&["merge", &b, &a, "-o", s(&out), "--force"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).ok();
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: could not remove"), "{stderr}");
    // The new soup (b first) is in place.
    assert!(!out.join("logs").exists());
    let recipe = &common::read_safetensors(&out.join("model.safetensors")).0["modelsoup.recipe"];
    assert!(recipe.find("/b\"").unwrap() < recipe.find("/a\"").unwrap(), "{recipe}");
    for leftover in hidden(dir.path()) {
        fs::set_permissions(
            dir.path().join(&leftover).join("logs"),
            fs::Permissions::from_mode(0o755),
        )
        .ok();
    }
}
