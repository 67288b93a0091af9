//! Arbitrary bytes as the `data.pkl` of a torch checkpoint. `parse_pickle` is the
//! only code that interprets the pickle, and the reader slices storages with what it
//! returns, so besides "never panics, never hangs, never runs out of memory" this
//! checks the promises `read_state_dict` relies on: names and storage keys are
//! distinct, every tensor's storage index is in range with the storage's dtype, and
//! every non-empty view lies inside its storage's elements. The same bytes are also
//! read at the key `state_dict` (a training checkpoint's state dict), with the
//! same promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use modelsoup::torch::{parse_pickle, parse_pickle_at, PickledStateDict};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(sd) = parse_pickle(bytes) {
        check(&sd);
    }
    if let Ok(sd) = parse_pickle_at(bytes, Some("state_dict")) {
        check(&sd);
    }
});

fn check(sd: &PickledStateDict) {
    let mut names: Vec<&str> = sd.tensors.iter().map(|t| t.name()).collect();
    names.sort_unstable();
    assert!(names.windows(2).all(|w| w[0] != w[1]), "duplicate tensor names");
    let mut keys: Vec<&str> = sd.storages.iter().map(|s| s.key.as_str()).collect();
    keys.sort_unstable();
    assert!(keys.windows(2).all(|w| w[0] != w[1]), "duplicate storage keys");
    let mut used = vec![false; sd.storages.len()];
    for t in &sd.tensors {
        let storage = sd.storages.get(t.storage()).expect("storage index out of range");
        used[t.storage()] = true;
        assert_eq!(t.dtype(), storage.dtype, "{:?}: dtype differs from its storage's", t.name());
        assert_eq!(t.shape().len(), t.strides().len());
        let esize = t.dtype().bitsize() / 8;
        let numel = t.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let numel = numel.expect("numel overflows");
        assert!(numel.checked_mul(esize).is_some(), "byte size overflows");
        assert!(storage.numel.checked_mul(esize).is_some(), "storage byte size overflows");
        if numel > 0 {
            let last = t
                .shape()
                .iter()
                .zip(t.strides())
                .try_fold(t.storage_offset(), |acc, (&s, &st)| {
                    acc.checked_add((s - 1).checked_mul(st)?)
                })
                .expect("last element overflows");
            assert!(last < storage.numel, "{:?} reaches past its storage", t.name());
        }
    }
    assert!(used.iter().all(|&u| u), "a storage no tensor uses");
}
