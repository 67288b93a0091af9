//! The one arithmetic kernel of the engine: `acc = Σ wᵢ·xᵢ` over a chunk, then a
//! single narrowing to the output format.
//!
//! Every merge method that is linear in the weights (uniform, weighted, greedy and
//! pruned candidates, learned coefficients) reduces to calls of [`Accumulator`]. The
//! loops are plain zipped slice iterators so that the compiler vectorises them; the
//! only per-format branching is one `match` per chunk in [`Accumulator::add`] and
//! [`Accumulator::narrow_into`].
//!
//! Accumulation is in f64. Inputs are widened losslessly (bf16 by a 16-bit shift, f16
//! through `half`'s bulk conversion, which uses F16C where the CPU has it), so the sum
//! is exact to ~1e-16 relative, and the only rounding that matters is the final one
//! to the output format, which is round-to-nearest-even. An f32 accumulator would
//! drift by several output ulps where the ingredients cancel; the f64 one costs no
//! measurable throughput because the kernel is bound by memory bandwidth (see
//! `docs/BENCHMARKS.md`).

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::dtype::FloatDtype;

/// Reusable buffers for one chunk: the f64 accumulator plus the scratch space that
/// widening and narrowing need. One per worker thread, so anonymous memory is
/// bounded by threads × chunk length.
#[derive(Debug, Default)]
pub(crate) struct Accumulator {
    acc: Vec<f64>,
    widened: Vec<f32>,
    aligned: Vec<u64>,
}

impl Accumulator {
    /// Starts a chunk of `len` elements, all zero.
    pub(crate) fn reset(&mut self, len: usize) {
        self.acc.clear();
        self.acc.resize(len, 0.0);
    }

    /// Adds `weight · x` for the little-endian elements in `bytes`, which must hold
    /// exactly as many elements of `dtype` as the chunk.
    pub(crate) fn add(&mut self, dtype: FloatDtype, bytes: &[u8], weight: f64) {
        debug_assert_eq!(bytes.len(), self.acc.len() * dtype.size());
        match dtype {
            FloatDtype::F64 => {
                let src = view::<f64>(bytes, &mut self.aligned);
                axpy(&mut self.acc, src, weight, |x| x);
            }
            FloatDtype::F32 => {
                let src = view::<f32>(bytes, &mut self.aligned);
                axpy(&mut self.acc, src, weight, f64::from);
            }
            FloatDtype::BF16 => {
                let src = view::<u16>(bytes, &mut self.aligned);
                axpy(&mut self.acc, src, weight, |b| {
                    f64::from(f32::from_bits(u32::from(b) << 16))
                });
            }
            FloatDtype::F16 => {
                let src = view::<f16>(bytes, &mut self.aligned);
                self.widened.resize(src.len(), 0.0);
                src.convert_to_f32_slice(&mut self.widened);
                axpy(&mut self.acc, &self.widened, weight, f64::from);
            }
        }
    }

    /// Rounds the accumulated chunk to `dtype` (round-to-nearest-even) and writes
    /// its little-endian bytes to `out`, which is resized to fit.
    pub(crate) fn narrow_into(&mut self, dtype: FloatDtype, out: &mut Vec<u8>) {
        out.clear();
        out.resize(self.acc.len() * dtype.size(), 0);
        match dtype {
            FloatDtype::F64 => fill_le(out, self.acc.iter().map(|&x| x.to_le_bytes())),
            FloatDtype::F32 => fill_le(out, self.acc.iter().map(|&x| (x as f32).to_le_bytes())),
            FloatDtype::BF16 => fill_le(
                out,
                self.acc.iter().map(|&x| bf16_bits(x as f32).to_le_bytes()),
            ),
            FloatDtype::F16 => {
                self.widened.clear();
                self.widened.extend(self.acc.iter().map(|&x| x as f32));
                let halves = zeroed_view::<f16>(&mut self.aligned, self.acc.len());
                halves.convert_from_f32_slice(&self.widened);
                out.copy_from_slice(bytemuck::cast_slice(halves));
            }
        }
    }
}

/// `acc[j] += w · widen(src[j])`, written so that it vectorises.
#[inline(always)]
fn axpy<T: Copy>(acc: &mut [f64], src: &[T], w: f64, widen: impl Fn(T) -> f64) {
    for (a, &x) in acc.iter_mut().zip(src) {
        *a += w * widen(x);
    }
}

/// Writes fixed-size little-endian encodings into consecutive slots of `out`.
#[inline(always)]
fn fill_le<const N: usize>(out: &mut [u8], values: impl Iterator<Item = [u8; N]>) {
    for (dst, v) in out.chunks_exact_mut(N).zip(values) {
        dst.copy_from_slice(&v);
    }
}

/// f32 → bf16 bits with round-to-nearest-even, branch-free so it vectorises.
/// NaN stays NaN (quiet bit forced) instead of rounding into infinity.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x0040;
    if x.is_nan() {
        nan as u16
    } else {
        rounded as u16
    }
}

/// Views `bytes` as `T`s without copying when they are aligned, or copies them into
/// `aligned` (8-byte aligned storage) when the tensor sits at an odd file offset.
fn view<'a, T: bytemuck::Pod>(bytes: &'a [u8], aligned: &'a mut Vec<u64>) -> &'a [T] {
    match bytemuck::try_cast_slice(bytes) {
        Ok(values) => values,
        Err(_) => {
            aligned.clear();
            aligned.resize(bytes.len().div_ceil(8), 0);
            let dst = &mut bytemuck::cast_slice_mut::<u64, u8>(aligned)[..bytes.len()];
            dst.copy_from_slice(bytes);
            bytemuck::cast_slice(dst)
        }
    }
}

/// `len` zeroed `T`s carved from the 8-byte aligned scratch storage.
fn zeroed_view<T: bytemuck::Pod>(aligned: &mut Vec<u64>, len: usize) -> &mut [T] {
    let bytes = len * std::mem::size_of::<T>();
    aligned.clear();
    aligned.resize(bytes.div_ceil(8), 0);
    bytemuck::cast_slice_mut(&mut bytemuck::cast_slice_mut::<u64, u8>(aligned)[..bytes])
}
