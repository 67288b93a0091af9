//! Strided views: where a tensor's elements are in its storage, whether they are
//! one contiguous run, and gathering a range of them in row-major order.
//!
//! A torch tensor is `storage_offset` plus, per dimension, a size and a stride in
//! elements. A saved `w.t()` or `w[:, 1:3]` keeps the strides of the parameter it
//! views, so its elements are not one byte range of the file. [`gather_into`] copies
//! elements `start..start + n` of the view (in the row-major order of its shape) from
//! the storage's bytes, walking the index incrementally: one division per call to
//! find the starting index, then runs along the innermost dimension, each a
//! `memcpy` when that dimension is dense and a fixed-size element copy per step
//! otherwise.
//!
//! A transposed matrix is the slow case: consecutive output elements are a source
//! row apart, so each one costs a cache line and often a TLB entry. Whole output
//! rows are therefore gathered a block at a time (one cache line of elements per
//! column, at least 8 rows), reading the block's elements of each column together.
//! On a 4096 × 4096 transposed f32 matrix in 64 Ki-element chunks (2-core VM, other
//! builds running) that measured 1.3–2.0 GB/s against 0.9 GB/s element by element,
//! and 0.7–1.1 GB/s against 0.45 GB/s for bf16; a chunk-sized `memcpy` ran at
//! ~40 GB/s (the `transposed_throughput` test below, ignored by default).

use safetensors::Dtype;

/// Bytes per element of the dtypes a torch state dict can hold here.
pub(crate) fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// Number of elements of a shape (1 for a scalar), or `None` on overflow.
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Where a view's last element is.
pub(crate) enum Last {
    /// The view has no elements.
    Empty,
    /// Index (in elements) of the storage element furthest from its start.
    At(usize),
    /// The index does not fit `usize`.
    Overflow,
}

/// The storage index of the furthest element of a view: with non-negative strides,
/// `offset + Σ (sizeᵢ − 1)·strideᵢ`.
pub(crate) fn last_element(offset: usize, shape: &[usize], strides: &[usize]) -> Last {
    if shape.contains(&0) {
        return Last::Empty;
    }
    let last = shape.iter().zip(strides).try_fold(offset, |acc, (&size, &stride)| {
        (size - 1).checked_mul(stride).and_then(|reach| acc.checked_add(reach))
    });
    last.map_or(Last::Overflow, Last::At)
}

/// Whether the view's elements, in row-major order, are consecutive storage
/// elements. Dimensions of size 1 may have any stride; empty views are contiguous.
pub(crate) fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected = 1usize;
    for (&size, &stride) in shape.iter().zip(strides).rev() {
        if size != 1 {
            if stride != expected {
                return false;
            }
            // Cannot overflow: the view was checked to fit its storage.
            expected = expected.saturating_mul(size);
        }
    }
    true
}

/// Whether two different indices of a view reach the same storage element (an
/// `expand()`ed dimension has stride 0; `as_strided` can make others). Such a view
/// holds more elements than the storage it reads, without bound: a 6-element
/// storage viewed as 10⁶ × 10⁶ with strides (0, 0) is 4 TB when written out.
///
/// Fast path: sorted by stride, each dimension's stride passing the furthest
/// reach of the dimensions below it proves the view has no overlap (every view
/// made by slicing, transposing or permuting a dense tensor passes). Otherwise a
/// zero stride, or more elements than the storage holds, proves an overlap, and the
/// rest are decided by marking each element in a bit set of the storage (bounded
/// by the storage, which is in the file). The view must lie inside its storage of
/// `storage_numel` elements.
pub(crate) fn overlaps(
    offset: usize,
    shape: &[usize],
    strides: &[usize],
    storage_numel: usize,
) -> bool {
    if shape.contains(&0) {
        return false;
    }
    let mut dims: Vec<(usize, usize)> =
        shape.iter().zip(strides).filter(|(&size, _)| size > 1).map(|(&a, &b)| (b, a)).collect();
    dims.sort_unstable();
    let mut reach = 0usize;
    let mut proven = true;
    for &(stride, size) in &dims {
        if stride == 0 {
            return true;
        }
        if stride <= reach {
            proven = false;
        }
        // Cannot overflow: the view lies inside its storage.
        reach = reach.saturating_add((size - 1).saturating_mul(stride));
    }
    if proven {
        return false;
    }
    let total = numel(shape).unwrap_or(usize::MAX);
    if total > storage_numel {
        return true;
    }
    let mut seen = vec![0u64; storage_numel.div_ceil(64)];
    let mut index = vec![0usize; dims.len()];
    let mut at = offset;
    loop {
        let (word, bit) = (at / 64, 1u64 << (at % 64));
        if seen[word] & bit != 0 {
            return true;
        }
        seen[word] |= bit;
        // Next index, innermost (smallest stride) first; the order does not matter.
        let mut d = 0;
        loop {
            let Some(&(stride, size)) = dims.get(d) else { return false };
            index[d] += 1;
            at += stride;
            if index[d] < size {
                break;
            }
            at -= size * stride;
            index[d] = 0;
            d += 1;
        }
    }
}

/// The view with dimensions of size 1 dropped and neighbours that step like one
/// dimension merged, as `(size, stride)` from outermost to innermost.
fn simplify(shape: &[usize], strides: &[usize]) -> Vec<(usize, usize)> {
    let mut dims: Vec<(usize, usize)> = Vec::with_capacity(shape.len());
    for (&size, &stride) in shape.iter().zip(strides) {
        if size == 1 {
            continue;
        }
        match dims.last_mut() {
            // The outer dimension steps exactly over the whole inner one.
            Some(outer) if outer.1 == stride.saturating_mul(size) => {
                outer.0 *= size;
                outer.1 = stride;
            }
            _ => dims.push((size, stride)),
        }
    }
    dims
}

/// Copies elements `start..start + out.len() / esize` of a view (row-major order
/// of `shape`) from `storage`, the bytes of its whole storage, into `out`.
///
/// # Panics
/// If `out.len()` is not a multiple of `esize`, if the range passes the view's
/// end, or if the view reaches outside `storage`; views from a state dict that
/// opened are inside their storage.
pub(crate) fn gather_into(
    storage: &[u8],
    esize: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
    start: usize,
    out: &mut [u8],
) {
    assert!(out.len().is_multiple_of(esize), "output is not a whole number of elements");
    let count = out.len() / esize;
    let total = numel(shape).unwrap_or(0);
    assert!(start <= total && count <= total - start, "range outside the tensor");
    if count == 0 {
        return;
    }
    let dims = simplify(shape, strides);
    let Some((&(inner_size, inner_stride), outer)) = dims.split_last() else {
        // Every dimension has size 1: one element.
        out.copy_from_slice(&storage[offset * esize..(offset + 1) * esize]);
        return;
    };
    if let [(rows, row_stride)] = *outer {
        if inner_stride > 1 && row_stride < inner_stride {
            let (row, col) = (start / inner_size, start % inner_size);
            let view = Matrix {
                storage,
                esize,
                offset,
                rows,
                row_stride,
                cols: inner_size,
                col_stride: inner_stride,
            };
            view.gather(row, col, out);
            return;
        }
    }
    // The starting index, innermost last; one division per dimension, once.
    let mut index = vec![0usize; outer.len()];
    let mut rest = start;
    let col_start = rest % inner_size;
    rest /= inner_size;
    let mut row_base = offset;
    for (i, &(size, stride)) in outer.iter().enumerate().rev() {
        index[i] = rest % size;
        rest /= size;
        row_base += index[i] * stride;
    }
    let mut col = col_start;
    let mut done = 0usize;
    loop {
        let run = (inner_size - col).min(count - done);
        let first = row_base + col * inner_stride;
        let dst = &mut out[done * esize..(done + run) * esize];
        copy_run(storage, esize, first, inner_stride, dst);
        done += run;
        if done == count {
            return;
        }
        col = 0;
        // Next row: carry through the outer dimensions.
        for (i, &(size, stride)) in outer.iter().enumerate().rev() {
            index[i] += 1;
            row_base += stride;
            if index[i] < size {
                break;
            }
            row_base -= size * stride;
            index[i] = 0;
        }
    }
}

/// A 2-D view whose rows are strided but whose columns are closer together (a
/// transposed matrix, typically `row_stride == 1`).
struct Matrix<'a> {
    storage: &'a [u8],
    esize: usize,
    offset: usize,
    rows: usize,
    row_stride: usize,
    cols: usize,
    col_stride: usize,
}

impl Matrix<'_> {
    /// Gathers `out.len() / esize` elements from (`row`, `col`) on. Reading a row
    /// element by element touches a new cache line (and often a new page) per
    /// element; so whole rows are gathered a block at a time, and for each column the
    /// block's elements are read together: with `row_stride == 1`, one cache line
    /// serves the whole block.
    fn gather(&self, mut row: usize, col: usize, out: &mut [u8]) {
        let e = self.esize;
        let mut done = 0;
        let count = out.len() / e;
        let row_first = |row: usize| self.offset + row * self.row_stride;
        if col != 0 {
            // The rest of a row begun by the previous chunk.
            let run = (self.cols - col).min(count);
            let first = row_first(row) + col * self.col_stride;
            copy_run(self.storage, e, first, self.col_stride, &mut out[..run * e]);
            done = run;
            row += 1;
        }
        // Rows per block: a run of 512 bytes of each column (8 cache lines), so that
        // each page of the storage visited gives that much; at least 8 rows.
        let block = (COLUMN_RUN_BYTES / e).clamp(8, TILE_ROWS);
        while count - done >= self.cols {
            let rows = block.min((count - done) / self.cols).min(self.rows - row);
            let dst = &mut out[done * e..(done + rows * self.cols) * e];
            match e {
                1 => self.block::<1>(row, rows, dst),
                2 => self.block::<2>(row, rows, dst),
                4 => self.block::<4>(row, rows, dst),
                8 => self.block::<8>(row, rows, dst),
                _ => {
                    for (r, dst) in dst.chunks_exact_mut(self.cols * e).enumerate() {
                        copy_run(self.storage, e, row_first(row + r), self.col_stride, dst);
                    }
                }
            }
            done += rows * self.cols;
            row += rows;
        }
        if done < count {
            // The start of a row the next chunk finishes.
            copy_run(self.storage, e, row_first(row), self.col_stride, &mut out[done * e..]);
        }
    }

    /// Whole rows `row..row + rows` into `dst`, column by column.
    fn block<const E: usize>(&self, row: usize, rows: usize, dst: &mut [u8]) {
        if self.row_stride == 1 && rows <= TILE_ROWS {
            return self.tiles::<E>(row, rows, dst);
        }
        let first = self.offset + row * self.row_stride;
        let row_bytes = self.cols * E;
        for c in 0..self.cols {
            let base = first + c * self.col_stride;
            for r in 0..rows {
                let at = (base + r * self.row_stride) * E;
                let to = r * row_bytes + c * E;
                dst[to..to + E].copy_from_slice(&self.storage[at..at + E]);
            }
        }
    }

    /// [`Matrix::block`] for a view whose rows are adjacent in storage
    /// (`row_stride == 1`, a transposed matrix): for each tile of [`TILE_COLS`]
    /// columns, the `rows` elements of each column are one contiguous read into a
    /// small tile on the stack, which is then written out as `rows` contiguous runs
    /// of output row. Every storage byte read and every output byte written is part
    /// of a whole run, so the loops have no per-element index arithmetic.
    fn tiles<const E: usize>(&self, row: usize, rows: usize, dst: &mut [u8]) {
        let row_bytes = self.cols * E;
        let first = self.offset + row;
        // tile[r][c]: output row r, column c0 + c.
        let mut tile = [[[0u8; E]; TILE_COLS]; TILE_ROWS];
        let mut c0 = 0;
        while c0 < self.cols {
            let n = TILE_COLS.min(self.cols - c0);
            for c in 0..n {
                let at = (first + (c0 + c) * self.col_stride) * E;
                let column = &self.storage[at..at + rows * E];
                for (t, e) in tile.iter_mut().zip(column.chunks_exact(E)) {
                    t[c].copy_from_slice(e);
                }
            }
            for (r, t) in tile[..rows].iter().enumerate() {
                let to = r * row_bytes + c0 * E;
                dst[to..to + n * E].copy_from_slice(t[..n].as_flattened());
            }
            c0 += n;
        }
    }
}

/// Columns per tile of [`Matrix::tiles`].
const TILE_COLS: usize = 16;

/// Most rows per tile of [`Matrix::tiles`]: the most [`Matrix::gather`] puts in a
/// block.
const TILE_ROWS: usize = 256;

/// Bytes of one column that [`Matrix::gather`] reads at once, when the request
/// holds that many rows.
const COLUMN_RUN_BYTES: usize = 512;

/// Copies `dst.len() / esize` elements starting at storage element `first`, `stride`
/// elements apart.
fn copy_run(storage: &[u8], esize: usize, first: usize, stride: usize, dst: &mut [u8]) {
    let n = dst.len() / esize;
    if stride == 1 {
        dst.copy_from_slice(&storage[first * esize..(first + n) * esize]);
        return;
    }
    match esize {
        1 => copy_strided::<1>(storage, first, stride, dst),
        2 => copy_strided::<2>(storage, first, stride, dst),
        4 => copy_strided::<4>(storage, first, stride, dst),
        8 => copy_strided::<8>(storage, first, stride, dst),
        _ => {
            for (i, d) in dst.chunks_exact_mut(esize).enumerate() {
                let at = (first + i * stride) * esize;
                d.copy_from_slice(&storage[at..at + esize]);
            }
        }
    }
}

fn copy_strided<const E: usize>(storage: &[u8], first: usize, stride: usize, dst: &mut [u8]) {
    let n = dst.len() / E;
    if stride == 0 {
        // A broadcast (expanded) dimension: one element repeated.
        let element = &storage[first * E..(first + 1) * E];
        for d in dst.chunks_exact_mut(E) {
            d.copy_from_slice(element);
        }
        return;
    }
    let span = &storage[first * E..(first + (n - 1) * stride + 1) * E];
    for (d, s) in dst.chunks_exact_mut(E).zip(span.chunks_exact(E).step_by(stride)) {
        d.copy_from_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: element by element with a full index computation.
    fn reference(
        storage: &[u8],
        esize: usize,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> Vec<u8> {
        let n = numel(shape).unwrap();
        let mut out = Vec::with_capacity(n * esize);
        for linear in 0..n {
            let mut rest = linear;
            let mut at = offset;
            for (&size, &stride) in shape.iter().zip(strides).rev() {
                at += (rest % size) * stride;
                rest /= size;
            }
            out.extend_from_slice(&storage[at * esize..(at + 1) * esize]);
        }
        out
    }

    /// A storage just large enough for the view, filled with a pattern, and the
    /// view's bytes in row-major order by the reference.
    fn storage_and_view(
        esize: usize,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> (Vec<u8>, Vec<u8>) {
        let len = match last_element(offset, shape, strides) {
            Last::At(last) => last + 1,
            _ => offset,
        };
        let storage: Vec<u8> = (0..len * esize).map(|i| (i * 7 + i / 251) as u8).collect();
        let want = reference(&storage, esize, offset, shape, strides);
        (storage, want)
    }

    fn check(esize: usize, offset: usize, shape: &[usize], strides: &[usize]) {
        let (storage, want) = storage_and_view(esize, offset, shape, strides);
        let n = want.len() / esize;
        // Every sub-range, so chunk boundaries inside rows and at row ends are covered.
        for start in 0..=n {
            for count in 0..=(n - start) {
                let mut out = vec![0u8; count * esize];
                gather_into(&storage, esize, offset, shape, strides, start, &mut out);
                assert_eq!(
                    out,
                    want[start * esize..(start + count) * esize],
                    "{shape:?} {strides:?} +{offset} [{start}, {count}]"
                );
            }
        }
    }

    #[test]
    fn gathers_every_layout() {
        for esize in [1, 2, 4, 8] {
            check(esize, 0, &[3, 4], &[4, 1]); // contiguous
            check(esize, 0, &[4, 3], &[1, 4]); // transposed
            check(esize, 1, &[3, 2], &[4, 1]); // w[:, 1:3]
            check(esize, 5, &[2, 3], &[3, 1]); // offset slice
            check(esize, 0, &[2, 3, 4], &[1, 8, 2]); // permuted
            check(esize, 2, &[3, 1, 2], &[0, 9, 1]); // expanded, size-1 dim
            check(esize, 3, &[], &[]); // scalar
            check(esize, 0, &[1, 1], &[7, 3]); // one element
            check(esize, 0, &[0, 3], &[3, 1]); // empty
            check(esize, 0, &[2, 2, 3], &[12, 6, 2]); // strided, mergeable outer
        }
        check(3, 1, &[3, 2], &[1, 3]); // an unusual element size takes the general path
    }

    /// Like `check`, for views too large for every sub-range: ranges that start and
    /// end at and around row boundaries, and in the middle of blocks.
    fn check_large(esize: usize, offset: usize, shape: &[usize], strides: &[usize]) {
        let (storage, want) = storage_and_view(esize, offset, shape, strides);
        let n = want.len() / esize;
        let row = *shape.last().unwrap();
        let mut points: Vec<usize> = (0..=n).step_by(row).flat_map(|p| [p, p + 1, p + 3]).collect();
        points.extend([0, 1, n / 2, n - 1, n]);
        for &start in &points {
            for &end in &points {
                if start > end || end > n {
                    continue;
                }
                let mut out = vec![0u8; (end - start) * esize];
                gather_into(&storage, esize, offset, shape, strides, start, &mut out);
                assert_eq!(
                    out,
                    want[start * esize..end * esize],
                    "{shape:?} {strides:?} [{start}, {end})"
                );
            }
        }
    }

    #[test]
    fn gathers_large_transposes_in_blocks() {
        for esize in [1, 2, 4, 8, 3] {
            check_large(esize, 0, &[70, 9], &[1, 70]); // transposed, many blocks
            check_large(esize, 3, &[70, 37], &[1, 73]); // column tiles of 16, 16 and 5
            check_large(esize, 5, &[70, 9], &[1, 80]); // a transposed slice at an offset
            check_large(esize, 0, &[70, 9], &[2, 150]); // rows strided by 2
            check_large(esize, 0, &[33, 3, 5], &[1, 165, 33]); // 3-D, not a matrix
        }
    }

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[3, 4], &[4, 1]));
        assert!(!is_contiguous(&[4, 3], &[1, 4]));
        assert!(is_contiguous(&[1, 4], &[99, 1]));
        assert!(is_contiguous(&[4, 1], &[1, 99]));
        assert!(is_contiguous(&[0, 3], &[1, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(!is_contiguous(&[3, 2], &[4, 1]));
        assert!(!is_contiguous(&[3], &[0]));
    }

    #[test]
    fn overlap_is_found_exactly() {
        // Brute force: every element's storage index, any repeated?
        fn brute(offset: usize, shape: &[usize], strides: &[usize]) -> bool {
            let n = numel(shape).unwrap();
            let mut seen = std::collections::HashSet::new();
            (0..n).any(|linear| {
                let (mut rest, mut at) = (linear, offset);
                for (&size, &stride) in shape.iter().zip(strides).rev() {
                    at += (rest % size) * stride;
                    rest /= size;
                }
                !seen.insert(at)
            })
        }
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 4], &[4, 1]),
            (&[4, 3], &[1, 4]),
            (&[3, 4], &[1, 0]),
            (&[3, 2], &[2, 3]),
            (&[3, 3], &[2, 3]),
            (&[2, 2], &[3, 2]),
            (&[2, 3], &[1, 1]),
            (&[4, 1, 2], &[2, 0, 1]),
            (&[1, 5], &[0, 1]),
            (&[5], &[0]),
            (&[0, 3], &[0, 0]),
            (&[], &[]),
            (&[2, 2, 2], &[4, 1, 2]),
            (&[2, 2, 2], &[3, 1, 2]),
        ];
        for &(shape, strides) in cases {
            let storage = match last_element(1, shape, strides) {
                Last::At(last) => last + 1,
                _ => 1,
            };
            assert_eq!(
                overlaps(1, shape, strides, storage),
                !shape.contains(&0) && brute(1, shape, strides),
                "{shape:?} {strides:?}"
            );
        }
    }

    #[test]
    fn simplifies() {
        assert_eq!(simplify(&[3, 4], &[4, 1]), [(12, 1)]);
        assert_eq!(simplify(&[4, 3], &[1, 4]), [(4, 1), (3, 4)]);
        assert_eq!(simplify(&[2, 1, 3], &[3, 5, 1]), [(6, 1)]);
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use std::time::Instant;

    /// Throughput of gathering a transposed matrix in 64 Ki-element chunks and in
    /// the engine's row blocks of 1 MiB (`engine::row_blocks`), against copying
    /// the same chunks: `cargo test --release --lib torch::view::bench --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn transposed_throughput() {
        for (esize, n, block) in [(4usize, 4096usize, false), (2, 4096, false), (2, 11008, false)]
            .into_iter()
            .flat_map(|(e, n, _)| [(e, n, false), (e, n, true)])
        {
            let rows = n;
            let cols = 4096;
            let storage: Vec<u8> = (0..rows * cols * esize).map(|i| i as u8).collect();
            let shape = [cols, rows];
            let strides = [1, cols];
            let chunk = if block { (1 << 20) / (rows * esize) * rows } else { 65536 };
            let mut out = vec![0u8; chunk * esize];
            let total = rows * cols;
            let best = |f: &mut dyn FnMut()| {
                (0..3)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let t_gather = best(&mut || {
                for start in (0..total).step_by(chunk) {
                    let len = chunk.min(total - start);
                    gather_into(
                        &storage,
                        esize,
                        0,
                        &shape,
                        &strides,
                        start,
                        &mut out[..len * esize],
                    );
                }
            });
            let t_copy = best(&mut || {
                for start in (0..total).step_by(chunk) {
                    let len = chunk.min(total - start);
                    out[..len * esize]
                        .copy_from_slice(&storage[start * esize..(start + len) * esize]);
                    std::hint::black_box(&out);
                }
            });
            let gb = (total * esize) as f64 / 1e9;
            eprintln!(
                "esize {esize} {rows}x{cols} in {}: gather {:.2} GB/s, memcpy {:.2} GB/s",
                if block { "1 MiB row blocks" } else { "64 Ki-element chunks" },
                gb / t_gather,
                gb / t_copy
            );
        }
    }
}
