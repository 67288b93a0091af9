//! Hub model ids (`org/name[@revision]`) resolved offline through a Hugging Face
//! cache laid out as `huggingface_hub` writes it: `models--ORG--NAME/` with
//! `refs/`, `snapshots/COMMIT/` of symbolic links into `blobs/`.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{read_output, s, safetensors_bytes, Fmt, RawTensor, Rng};

/// Writes `org/name` into `cache` at `commit`, pointed at by `refs/<branch>`, its
/// weights a random tensor from `seed`; returns the snapshot directory.
fn cache_model(cache: &Path, repo: &str, branch: &str, commit: &str, seed: u64) -> PathBuf {
    let model = cache.join(format!("models--{}", repo.replace('/', "--")));
    let blobs = model.join("blobs");
    let snapshot = model.join("snapshots").join(commit);
    fs::create_dir_all(&blobs).unwrap();
    fs::create_dir_all(&snapshot).unwrap();
    fs::create_dir_all(model.join("refs")).unwrap();
    fs::write(model.join("refs").join(branch), commit).unwrap();
    let mut rng = Rng::new(seed);
    let values: Vec<f64> = (0..40).map(|_| rng.value()).collect();
    let weights = safetensors_bytes(
        &[RawTensor::float("w", Fmt::F32, &[5, 8], &values)],
        &Default::default(),
        true,
    );
    let blob = blobs.join(format!("{seed:064x}"));
    fs::write(&blob, weights).unwrap();
    symlink(&blob, snapshot.join("model.safetensors")).unwrap();
    fs::write(snapshot.join("config.json"), format!("{{\"from\": \"{repo}\"}}")).unwrap();
    snapshot
}

/// Runs soup in `cwd` with the cache at `cache` (and nothing else from the
/// environment's Hugging Face settings).
fn soup_with_cache(cwd: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soup"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HOME")
        .output()
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

#[test]
fn ids_open_cached_snapshots_and_the_recipe_pins_their_commits() {
    let dir = common::tempdir();
    let cache = dir.path().join("hub");
    let a = cache_model(&cache, "org/model-a", "main", C1, 1);
    let b = cache_model(&cache, "org/model-b", "v2", C2, 2);
    let out = dir.path().join("soup");
    ok(soup_with_cache(
        dir.path(),
        &cache,
        &["merge", "org/model-a", "org/model-b@v2", "-o", s(&out)],
    ));

    // The same bytes as merging the snapshot directories themselves.
    let direct = dir.path().join("direct");
    ok(soup_with_cache(dir.path(), &cache, &["merge", s(&a), s(&b), "-o", s(&direct)]));
    assert_eq!(read_output(&out), read_output(&direct));
    assert_eq!(fs::read_to_string(out.join("config.json")).unwrap(), "{\"from\": \"org/model-a\"}");

    // The recipe names each model at the commit it used, and replays.
    let json = ok(soup_with_cache(dir.path(), &cache, &["inspect", s(&out), "--json"]));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let recipe = &doc["checkpoints"][0]["recipe"];
    assert_eq!(recipe["ingredients"][0]["path"], format!("org/model-a@{C1}"));
    assert_eq!(recipe["ingredients"][1]["path"], format!("org/model-b@{C2}"));
    let again = dir.path().join("again");
    ok(soup_with_cache(dir.path(), &cache, &["merge", "--recipe", s(&out), "-o", s(&again)]));
    assert_eq!(
        fs::read(out.join("model.safetensors")).unwrap(),
        fs::read(again.join("model.safetensors")).unwrap()
    );

    // A recipe file may name ids too.
    let recipe_file = dir.path().join("r.yaml");
    fs::write(&recipe_file, "method: linear\ningredients: [org/model-a, org/model-b@v2]\n")
        .unwrap();
    let from_file = dir.path().join("from-file");
    ok(soup_with_cache(
        dir.path(),
        &cache,
        &["merge", "--recipe", s(&recipe_file), "-o", s(&from_file)],
    ));
    assert_eq!(read_output(&out), read_output(&from_file));

    // And a mergekit configuration.
    let config = dir.path().join("mergekit.yaml");
    fs::write(
        &config,
        "models:\n  - model: org/model-a\n    parameters: {weight: 1.0}\n  - model: org/model-b@v2\n    \
         parameters: {weight: 1.0}\nmerge_method: linear\ndtype: float32\n",
    )
    .unwrap();
    let from_mergekit = dir.path().join("from-mergekit");
    ok(soup_with_cache(
        dir.path(),
        &cache,
        &["merge", "--recipe", s(&config), "-o", s(&from_mergekit)],
    ));
    assert_eq!(read_output(&out), read_output(&from_mergekit));
}

#[test]
fn a_local_path_wins_over_an_id() {
    let dir = common::tempdir();
    let cache = dir.path().join("hub");
    cache_model(&cache, "org/model-a", "main", C1, 1);
    cache_model(&cache, "org/model-b", "main", C2, 2);
    // A local directory spelled like the id, holding other weights.
    let local = cache_model(&dir.path().join("elsewhere"), "x/y", "main", C1, 9);
    fs::create_dir_all(dir.path().join("org")).unwrap();
    symlink(&local, dir.path().join("org/model-a")).unwrap();
    let out = dir.path().join("soup");
    ok(soup_with_cache(
        dir.path(),
        &cache,
        &["merge", "org/model-a", "org/model-b", "-o", s(&out)],
    ));
    let json = ok(soup_with_cache(dir.path(), &cache, &["inspect", s(&out), "--json"]));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let paths = &doc["checkpoints"][0]["recipe"]["ingredients"];
    assert_eq!(paths[0]["path"], s(&dir.path().join("org/model-a")), "the local directory");
    assert_eq!(paths[1]["path"], format!("org/model-b@{C2}"), "the cached model");
}

#[test]
fn a_model_not_in_the_cache_gets_the_download_command() {
    let dir = common::tempdir();
    let cache = dir.path().join("hub");
    cache_model(&cache, "org/model-a", "main", C1, 1);
    let cases = [
        ("org/absent", "no such model in it", "hf download org/absent"),
        ("org/model-a@v9", "no revision \"v9\"", "hf download org/model-a --revision v9"),
        (
            "org/model-a@3333333333333333333333333333333333333333",
            "is not downloaded",
            "hf download org/model-a --revision 3333333333333333333333333333333333333333",
        ),
    ];
    for (id, reason, command) in cases {
        let out = soup_with_cache(dir.path(), &cache, &["merge", "org/model-a", id, "-o", "x"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{id}: no such file or directory, and not in the Hugging Face cache at {}",
                s(&cache)
            )) && stderr.contains(reason)
                && stderr.contains(&format!("to download it: {command}")),
            "{id}: {stderr}"
        );
    }
    // Not an id: the plain error for a missing path.
    let out =
        soup_with_cache(dir.path(), &cache, &["merge", "org/model-a", "./missing", "-o", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing: No such file") && !stderr.contains("hf download"),
        "{stderr}"
    );
}
