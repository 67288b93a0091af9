//! Arbitrary bytes as `model.safetensors.index.json`. Shard names from the index are
//! joined to the checkpoint directory and opened, so a name that escapes it
//! ("../x", "/abs", "a/b") must never come out of `parse_index`.

#![no_main]

use std::collections::BTreeSet;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use modelsoup::engine::checkpoint::parse_index;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok((weight_map, names)) = parse_index(text, Path::new("model.safetensors.index.json"))
    else {
        return;
    };
    for name in &names {
        let mut parts = Path::new(name).components();
        assert!(
            matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)),
            "unsafe shard name {name:?} accepted"
        );
        // Joining must stay one level below the directory whatever the platform.
        assert_eq!(Path::new("dir").join(name).parent(), Some(Path::new("dir")), "{name:?}");
    }
    assert!(names.windows(2).all(|w| w[0] < w[1]), "names not sorted and distinct: {names:?}");
    let values: BTreeSet<&String> = weight_map.values().collect();
    let listed: BTreeSet<&String> = names.iter().collect();
    assert_eq!(values, listed, "shard names do not match the weight_map's values");
});
