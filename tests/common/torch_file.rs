//! PyTorch files written byte by byte, as `torch.save` lays them out: a zip of
//! stored entries and a hand-written pickle (independently of the library's reader).

/// A zip archive of stored (uncompressed) entries with correct CRCs, as
/// `torch.save` writes them.
pub fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let fields = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend_from_slice(&20u16.to_le_bytes()); // made by
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // needed
            h.extend_from_slice(&[0; 6]); // flags, method (stored), time
            h.extend_from_slice(&0u16.to_le_bytes()); // date
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            h
        };
        out.extend(fields(0x0403_4b50, false));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend(fields(0x0201_4b50, true));
        central.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let start = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Pickle of `_rebuild_tensor_v2` on f32 storage "0" of `numel` elements.
pub fn rebuild(numel: u32, size: &[u32], stride: &[u32]) -> Vec<u8> {
    let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ".to_vec();
    p.extend_from_slice(&numel.to_le_bytes());
    p.extend_from_slice(b"tQJ\x00\x00\x00\x00");
    for dims in [size, stride] {
        p.push(b'(');
        for &d in dims {
            p.push(b'J');
            p.extend_from_slice(&d.to_le_bytes());
        }
        p.push(b't');
    }
    p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    p
}

/// A `pytorch_model.bin` whose state dict maps each name to the same view of one
/// f32 storage holding `0, 1, 2, …`.
pub fn torch_file(names: &[&str], numel: u32, size: &[u32], stride: &[u32]) -> Vec<u8> {
    let mut pkl = b"\x80\x02}(".to_vec();
    for name in names {
        pkl.push(b'X');
        pkl.extend_from_slice(&(name.len() as u32).to_le_bytes());
        pkl.extend_from_slice(name.as_bytes());
        pkl.extend(rebuild(numel, size, stride));
    }
    pkl.extend_from_slice(b"u.");
    let data: Vec<u8> = (0..numel).flat_map(|i| (i as f32).to_le_bytes()).collect();
    stored_zip(&[("archive/data.pkl", &pkl), ("archive/data/0", &data)])
}
