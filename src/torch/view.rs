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
    assert!(out.len() % esize == 0, "output is not a whole number of elements");
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

    fn check(esize: usize, offset: usize, shape: &[usize], strides: &[usize]) {
        let len = match last_element(offset, shape, strides) {
            Last::At(last) => last + 1,
            _ => offset,
        };
        let storage: Vec<u8> = (0..len * esize).map(|i| (i * 7 + i / 251) as u8).collect();
        let want = reference(&storage, esize, offset, shape, strides);
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
    fn simplifies() {
        assert_eq!(simplify(&[3, 4], &[4, 1]), [(12, 1)]);
        assert_eq!(simplify(&[4, 3], &[1, 4]), [(4, 1), (3, 4)]);
        assert_eq!(simplify(&[2, 1, 3], &[3, 5, 1]), [(6, 1)]);
    }
}
