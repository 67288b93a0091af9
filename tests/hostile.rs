//! Hostile sizes and ambiguous files, and what "exact" promises: a tiny PyTorch
//! file whose view would be terabytes when written out, many names on one
//! storage, repeated names in a safetensors header or a zip directory, a header
//! of more tensors than allowed, weights whose sum overflows, soups that come out
//! NaN or infinite, and uniform soups at exact ties of the mean.

mod common;

use std::fs;
use std::path::Path;

use common::torch_file::{rebuild, stored_zip, torch_file};
use common::{read_output, s, soup, soup_err, soup_ok, tempdir, write_file, Fmt, RawTensor};

#[test]
fn a_tiny_file_viewing_six_floats_as_a_huge_matrix_is_refused() {
    let dir = tempdir();
    let bin = dir.path().join("pytorch_model.bin");
    // 6 floats seen as 10⁴ × 10⁴ with strides (0, 0): 400 MB written out.
    fs::write(&bin, torch_file(&["w"], 6, &[10_000, 10_000], &[0, 0])).unwrap();
    assert!(fs::metadata(&bin).unwrap().len() < 1000);
    let out = dir.path().join("out");
    let stderr = soup_err(&["convert", s(&bin), "-o", s(&out)]);
    assert!(stderr.contains("tensor \"w\" (shape [10000, 10000], strides [0, 0])"), "{stderr}");
    assert!(stderr.contains("overlap") && stderr.contains("400000000 bytes"), "{stderr}");
    assert!(!out.exists());
    // Allowed up to a stated size, a view within it is written, one beyond is not.
    let stderr = soup_err(&["convert", s(&bin), "-o", s(&out), "--expand-views", "1MB"]);
    assert!(stderr.contains("more than the 1000000 allowed"), "{stderr}");
    fs::write(&bin, torch_file(&["w"], 6, &[4, 3], &[0, 2])).unwrap();
    soup_ok(&["convert", s(&bin), "-o", s(&out), "--expand-views", "1kB"]);
    let (_, shape, bytes) = &read_output(&out)["w"];
    assert_eq!(shape, &vec![4, 3]);
    let values: Vec<f32> =
        bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, [0.0, 2.0, 4.0].repeat(4));
}

#[test]
fn many_names_on_one_storage_may_not_multiply_the_file() {
    let dir = tempdir();
    let bin = dir.path().join("pytorch_model.bin");
    let names: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Ten names on one 1 MiB storage: 10 MiB to write from a 1 MiB file.
    fs::write(&bin, torch_file(&names, 1 << 18, &[1 << 18], &[1])).unwrap();
    let stderr = soup_err(&["convert", s(&bin), "-o", s(&dir.path().join("out"))]);
    assert!(stderr.contains("more than 8 times the file's"), "{stderr}");
    // Tied weights (a few names on one storage) are fine.
    fs::write(&bin, torch_file(&names[..3], 1 << 10, &[1 << 10], &[1])).unwrap();
    soup_ok(&["convert", s(&bin), "-o", s(&dir.path().join("tied"))]);
}

#[test]
fn a_zip_listing_one_entry_twice_is_refused() {
    let dir = tempdir();
    let bin = dir.path().join("pytorch_model.bin");
    let pkl =
        [b"\x80\x02}(X\x01\x00\x00\x00w".to_vec(), rebuild(2, &[2], &[1]), b"u.".to_vec()].concat();
    let zip = stored_zip(&[
        ("archive/data.pkl", &pkl),
        ("archive/data/0", &[0u8; 8]),
        ("archive/data/0", &[1u8; 8]),
    ]);
    fs::write(&bin, zip).unwrap();
    let stderr = soup_err(&["inspect", s(&bin)]);
    assert!(stderr.contains("the archive lists entry archive/data/0 twice"), "{stderr}");
}

#[test]
fn a_safetensors_header_naming_a_tensor_twice_is_refused() {
    let dir = tempdir();
    let path = dir.path().join("twice.safetensors");
    for header in [
        // Both empty: taken alone, the last entry is a valid file.
        r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"F16","shape":[0],"data_offsets":[0,0]}}"#,
        // Two ranges of the data under one name.
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
    ] {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        if header.contains("[4,8]") {
            bytes.extend_from_slice(&[0; 8]);
        }
        fs::write(&path, bytes).unwrap();
        let stderr = soup_err(&["inspect", s(&path)]);
        assert!(stderr.contains("the header lists tensor \"w\" twice"), "{stderr}");
    }
}

#[test]
fn a_header_of_more_tensors_than_allowed_is_refused_before_it_is_parsed() {
    let dir = tempdir();
    let path = dir.path().join("many.safetensors");
    let count = modelsoup::engine::checkpoint::MAX_TENSORS + 1;
    let mut header = String::from("{");
    for i in 0..count {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(r#""t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#));
    }
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    fs::write(&path, bytes).unwrap();
    let stderr = soup_err(&["inspect", s(&path)]);
    let want = format!("the header lists {count} tensors, more than the {}", count - 1);
    assert!(stderr.contains(&want), "{stderr}");
}

/// Two f32 ingredients `a` and `b` with the given values of tensor `w`.
fn pair(dir: &Path, a: &[f64], b: &[f64]) -> (String, String) {
    let (pa, pb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    write_file(&pa, &[RawTensor::float("w", Fmt::F32, &[a.len()], a)], true);
    write_file(&pb, &[RawTensor::float("w", Fmt::F32, &[b.len()], b)], true);
    (s(&pa).to_owned(), s(&pb).to_owned())
}

#[test]
fn weights_whose_sum_overflows_still_normalise() {
    let dir = tempdir();
    let (a, b) = pair(dir.path(), &[1.0, -2.0, 3.5], &[3.0, 2.0, 0.5]);
    let huge = dir.path().join("huge");
    soup_ok(&["merge", &a, &b, "-o", s(&huge), "--weights", "1e308,1e308"]);
    let plain = dir.path().join("plain");
    soup_ok(&["merge", &a, &b, "-o", s(&plain)]);
    assert_eq!(read_output(&huge)["w"].2, read_output(&plain)["w"].2);
    let values = Fmt::F32.decode(&read_output(&huge)["w"].2);
    assert_eq!(values, [2.0, 0.0, 2.0]);
    // Unequal, overflowing: 3e307 : 1e308 is 3 : 10.
    let skew = dir.path().join("skew");
    soup_ok(&["merge", &a, &b, "-o", s(&skew), "--weights", "1e308,3e307"]);
    let got = Fmt::F32.decode(&read_output(&skew)["w"].2);
    let want: Vec<f64> = [(1.0, 3.0), (-2.0, 2.0), (3.5, 0.5)]
        .iter()
        .map(|(x, y)| f64::from(((10.0 * x + 3.0 * y) / 13.0) as f32))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_soup_with_nan_or_infinity_is_reported() {
    let dir = tempdir();
    let (pa, pb, pc) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("c.safetensors"),
    );
    let good = RawTensor::float("a.first", Fmt::F32, &[2], &[1.0, 2.0]);
    write_file(
        &pa,
        &[good.clone(), RawTensor::float("b.w", Fmt::F32, &[3], &[f64::NAN, 1.0, f64::INFINITY])],
        true,
    );
    write_file(&pb, &[good, RawTensor::float("b.w", Fmt::F32, &[3], &[0.0, 1.0, 2.0])], true);
    let out = dir.path().join("out");
    let run = soup_ok(&["merge", s(&pa), s(&pb), "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(
            "warning: the soup holds 2 NaN or infinite value(s), the first in tensor b.w"
        ),
        "{stderr}"
    );
    let run = soup_ok(&["merge", s(&pa), s(&pb), "-o", s(&out), "--force", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["non_finite"], 2);
    assert_eq!(json["first_non_finite"], "b.w");
    // From arithmetic alone: a task vector scaled past the format's range.
    write_file(&pc, &[RawTensor::float("w", Fmt::F32, &[2], &[1.0, 1.0])], true);
    let (a, _) = pair(dir.path(), &[2.0, 1.0], &[0.0, 0.0]);
    let run = soup_ok(&[
        "merge",
        &a,
        "--base",
        s(&pc),
        "--method",
        "task-arithmetic",
        "--lambda",
        "1e40",
        "-o",
        s(&dir.path().join("scaled")),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["non_finite"], 1, "{}", String::from_utf8_lossy(&run.stderr));
}

/// The correctly rounded f32 (as f64) of `sum / n`, for a sum that is an integer
/// multiple of 2^-24 in [n, 2n): exact integer arithmetic, ties to even.
fn rounded_mean(sum: f64, n: u64) -> f64 {
    let units = (sum * 2f64.powi(24)) as u64; // exact: sum is a multiple of 2^-24
    assert_eq!(units as f64 * 2f64.powi(-24), sum);
    // The mean lies in [1, 2), where f32 steps by 2^-23: 2 units.
    let (q, r) = (units / (2 * n), units % (2 * n));
    let up = match (2 * r).cmp(&(2 * n)) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => q % 2 == 1,
    };
    (q + u64::from(up)) as f64 * 2f64.powi(-23)
}

#[test]
fn a_uniform_soup_is_the_correctly_rounded_mean_at_ties() {
    let mut rng = common::Rng::new(5);
    for n in [3usize, 5, 10] {
        let dir = tempdir();
        let len = 2000;
        let mut columns = vec![Vec::with_capacity(len); n];
        let mut ties = 0;
        for j in 0..len {
            // n − 1 values in [1, 2) (f32 steps 2^-23) and one in [0.5, 1) (2^-24)
            // chosen so that the exact mean is halfway between two f32s, for
            // two elements in three; the others are arbitrary.
            loop {
                let mean_target =
                    1.25 + rng.below(1 << 20) as f64 * 2f64.powi(-22) + 2f64.powi(-24);
                let high = (n as f64 * mean_target - 0.75) / (n - 1) as f64;
                let mut values: Vec<f64> = (0..n - 1)
                    .map(|_| {
                        let jitter = rng.below(1 << 12) as f64 - 2048.0;
                        ((high * 2f64.powi(23)).round() + jitter) * 2f64.powi(-23)
                    })
                    .collect();
                let last = if j % 3 == 2 {
                    0.5 + rng.below(1 << 23) as f64 * 2f64.powi(-24)
                } else {
                    n as f64 * mean_target - values.iter().sum::<f64>()
                };
                if (0.5..1.0).contains(&last) && values.iter().all(|v| (1.0..2.0).contains(v)) {
                    values.push(last);
                    let sum: f64 = values.iter().sum();
                    if (n as f64..2.0 * n as f64).contains(&sum) {
                        ties += usize::from(j % 3 != 2);
                        for (c, v) in columns.iter_mut().zip(values) {
                            c.push(v);
                        }
                        break;
                    }
                }
            }
        }
        assert!(ties > len / 2);
        let paths: Vec<String> = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("i{i}.safetensors"));
                write_file(&p, &[RawTensor::float("w", Fmt::F32, &[len], &columns[i])], true);
                s(&p).to_owned()
            })
            .collect();
        let out = dir.path().join("out");
        let mut args: Vec<&str> = vec!["merge"];
        args.extend(paths.iter().map(String::as_str));
        args.extend(["-o", s(&out), "--quiet"]);
        soup_ok(&args);
        let got = Fmt::F32.decode(&read_output(&out)["w"].2);
        for j in 0..len {
            let sum: f64 = columns.iter().map(|c| c[j]).sum();
            let want = rounded_mean(sum, n as u64);
            assert_eq!(
                got[j],
                want,
                "n = {n}, element {j}: inputs {:?}",
                columns.iter().map(|c| c[j]).collect::<Vec<_>>()
            );
        }
        // The same with weights given as equal integers, and as decimals of 1/n.
        let weights = vec!["2"; n].join(",");
        let again = dir.path().join("again");
        let mut args2 = args.clone();
        args2.truncate(args2.len() - 3);
        args2.extend(["-o", s(&again), "--quiet", "--weights", &weights]);
        soup_ok(&args2);
        assert_eq!(read_output(&again)["w"].2, read_output(&out)["w"].2, "n = {n}");
    }
}

#[test]
fn the_weights_of_a_soup_are_not_read_as_zero() {
    // A soup whose weights are all positive never comes out all zeros.
    let dir = tempdir();
    let (a, b) = pair(dir.path(), &[1.0], &[1.0]);
    let out = dir.path().join("tiny");
    soup_ok(&["merge", &a, &b, "-o", s(&out), "--weights", "1e-320,1e-320"]);
    assert_eq!(Fmt::F32.decode(&read_output(&out)["w"].2), [1.0]);
    let err = soup(&["merge", &a, &b, "-o", s(&dir.path().join("zero")), "--weights", "0,0"]);
    assert_eq!(err.status.code(), Some(2));
}
