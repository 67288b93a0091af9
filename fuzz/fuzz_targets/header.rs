//! Arbitrary bytes as a whole `.safetensors` file. `parse_header` is the only code
//! that reads an untrusted shard before tensor data is sliced with the offsets it
//! returns, so besides "never panics" this checks the promises the merge relies on:
//! every range is inside the file, and the ranges tile the data in order.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelsoup::engine::checkpoint::parse_header;

fuzz_target!(|bytes: &[u8]| {
    let Ok((entries, _metadata)) = parse_header(bytes, Path::new("fuzz.safetensors")) else {
        return;
    };
    // A file that parsed has a length prefix and a header, so data starts after both.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_start = 8 + header_len;
    let mut next = data_start;
    for e in &entries {
        let end = e.offset.checked_add(e.len).expect("offset + len overflows");
        assert!(end <= bytes.len(), "{:?} ends at {end}, past the file's {}", e.name, bytes.len());
        // In the returned order the ranges tile the data (empty tensors come first
        // at a shared offset).
        assert_eq!(e.offset, next, "{:?} does not start where the previous one ended", e.name);
        next = end;
        assert_eq!(e.shard, 0);
        // Sub-byte dtypes (F4, F6) are accepted only when they fill whole bytes, so
        // counting in bits covers every dtype.
        let bits = e.shape.iter().try_fold(e.dtype.bitsize(), |acc, &d| acc.checked_mul(d));
        assert_eq!(
            bits,
            Some(e.len * 8),
            "{:?}: {} bytes for {:?} {:?}",
            e.name,
            e.len,
            e.dtype,
            e.shape
        );
        if e.dtype.bitsize() % 8 == 0 {
            assert_eq!(e.len, e.numel() * (e.dtype.bitsize() / 8));
        }
    }
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    assert!(names.windows(2).all(|w| w[0] != w[1]), "duplicate tensor names");
    // The last tensor ends exactly at the end of the file: no trailing bytes.
    assert_eq!(next, bytes.len(), "data does not end at the end of the file");
});
