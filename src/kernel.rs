//! The one arithmetic kernel of the engine: `Σ wᵢ·xᵢ` over a chunk, then a single
//! rounding to the output format.
//!
//! Every merge method that is linear in the weights (uniform, weighted, greedy and
//! pruned candidates, learned coefficients) is a call of [`Accumulator::mix`]. The
//! loops are plain zipped slice iterators so that the compiler vectorises them; the
//! only per-format branching is one `match` per input and tile in `add` and one per
//! tile in `narrow`. `mix` is compiled several times (AVX-512, AVX2, SSE4.1 and the
//! baseline) and the best version for the running CPU is picked once at run time,
//! so a portable binary runs the wide-vector code.
//!
//! Accumulation is in f64. Inputs are widened losslessly (bf16 by a 16-bit shift, f16
//! through `half`'s bulk conversion, which uses F16C where the CPU has it), products
//! and sums carry 53 bits, and the only rounding that matters is the final one to
//! the output format (to nearest, ties to even). An f32 accumulator would be about
//! 1.5× faster where the kernel is bound by arithmetic, but drifts by several output
//! ulps wherever ingredients cancel (and would truncate F64 inputs); see
//! `docs/ARCHITECTURE.md`. No fused multiply-add is used, so every CPU computes the
//! same bits.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::dtype::FloatDtype;

/// Elements per tile: the tile's f64 accumulator and f32 scratch stay in the L1
/// data cache while every input streams through it.
const TILE: usize = 2048;

/// One weighted input of a chunk: `len × dtype.size()` little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Element format of `bytes`.
    pub dtype: FloatDtype,
    /// The chunk's bytes, in any alignment.
    pub bytes: &'a [u8],
    /// Its coefficient.
    pub weight: f64,
}

/// Reusable buffers for the kernel: the f64 accumulator of one tile plus the
/// scratch space that widening and narrowing need. One per worker thread, a few
/// tens of KiB, whatever the model.
#[derive(Debug, Default)]
pub struct Accumulator {
    acc: Vec<f64>,
    widened: Vec<f32>,
    aligned: Vec<u64>,
}

impl Accumulator {
    /// Computes `Σ wᵢ·xᵢ` over the inputs (in their order, so the result never
    /// depends on threads or tiling), rounds it to `dtype` with round-to-nearest-even
    /// and puts the little-endian bytes in `out`, resized to fit. All inputs must
    /// hold `len` elements; with no inputs the result is `len` zeros.
    ///
    /// # Panics
    /// If an input's byte length is not `len × its element size`.
    pub fn mix(&mut self, len: usize, inputs: &[Input], dtype: FloatDtype, out: &mut Vec<u8>) {
        for input in inputs {
            assert_eq!(
                input.bytes.len(),
                len * input.dtype.size(),
                "input length differs from the chunk"
            );
        }
        out.resize(len * dtype.size(), 0);
        self.acc.resize(TILE, 0.0);
        mix_tiles(self, len, inputs, dtype, out);
    }
}

/// The tile loop of [`Accumulator::mix`], compiled once per instruction set.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+sse4.2+popcnt",
))]
fn mix_tiles(a: &mut Accumulator, len: usize, inputs: &[Input], dtype: FloatDtype, out: &mut [u8]) {
    let size = dtype.size();
    for start in (0..len).step_by(TILE) {
        let n = TILE.min(len - start);
        let acc = &mut a.acc[..n];
        acc.fill(0.0);
        for input in inputs {
            let w = input.dtype.size();
            // Ask for the tile after next now, so it arrives while this one is summed:
            // the hardware prefetcher does not follow k streams well on its own.
            prefetch(input.bytes.get((start + 2 * TILE) * w..).unwrap_or_default(), TILE * w);
            let bytes = &input.bytes[start * w..(start + n) * w];
            add(acc, &mut a.widened, &mut a.aligned, input.dtype, bytes, input.weight);
        }
        narrow(
            acc,
            &mut a.widened,
            &mut a.aligned,
            dtype,
            &mut out[start * size..(start + n) * size],
        );
    }
}

/// `acc += w · widen(bytes)`; the one `match` on the input format.
#[inline(always)]
fn add(
    acc: &mut [f64],
    widened: &mut Vec<f32>,
    aligned: &mut Vec<u64>,
    dtype: FloatDtype,
    bytes: &[u8],
    w: f64,
) {
    match dtype {
        FloatDtype::F64 => axpy(acc, view::<f64>(bytes, aligned), w, |x| x),
        FloatDtype::F32 => axpy(acc, view::<f32>(bytes, aligned), w, f64::from),
        FloatDtype::BF16 => axpy(acc, view::<u16>(bytes, aligned), w, |b| {
            f64::from(f32::from_bits(u32::from(b) << 16))
        }),
        FloatDtype::F16 => {
            let src = view::<f16>(bytes, aligned);
            widened.resize(src.len(), 0.0);
            src.convert_to_f32_slice(widened);
            axpy(acc, widened, w, f64::from);
        }
    }
}

/// Rounds `acc` to `dtype` into `out` (exactly `acc.len() × size` bytes); the one
/// `match` on the output format.
#[inline(always)]
fn narrow(
    acc: &[f64],
    widened: &mut Vec<f32>,
    aligned: &mut Vec<u64>,
    dtype: FloatDtype,
    out: &mut [u8],
) {
    match dtype {
        FloatDtype::F64 => fill_le(out, acc.iter().map(|&x| x.to_le_bytes())),
        FloatDtype::F32 => fill_le(out, acc.iter().map(|&x| (x as f32).to_le_bytes())),
        FloatDtype::BF16 => fill_le(out, acc.iter().map(|&x| bf16_bits(x).to_le_bytes())),
        FloatDtype::F16 => {
            widened.clear();
            widened.extend(acc.iter().map(|&x| f16_ready(x)));
            let halves = zeroed_view::<f16>(aligned, acc.len());
            halves.convert_from_f32_slice(widened);
            out.copy_from_slice(bytemuck::cast_slice(halves));
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

/// f64 → f32 for a later f32 → narrower rounding, without double rounding: the f32
/// is rounded toward zero and its last bit set when anything was cut off ("round
/// to odd"). With 13+ spare bits, the second rounding then gives exactly the
/// correctly rounded result.
#[inline(always)]
fn to_odd_f32(x: f64) -> f32 {
    let y = x as f32; // nearest
    let back = f64::from(y);
    // Step toward zero when rounding went away from zero (same sign, larger).
    let away = back.abs() > x.abs();
    let bits = y.to_bits();
    let truncated = if away && y.is_finite() && bits & 0x7fff_ffff != 0 { bits - 1 } else { bits };
    let inexact = back != x && y.is_finite();
    f32::from_bits(truncated | u32::from(inexact))
}

/// f64 → bf16 bit pattern, correctly rounded to nearest even; NaN stays NaN.
#[inline(always)]
pub fn bf16_bits(x: f64) -> u16 {
    bf16_bits_from_f32(to_odd_f32(x))
}

/// The f32 to hand `half`'s f16 conversion so that it rounds `x` correctly.
#[inline(always)]
fn f16_ready(x: f64) -> f32 {
    to_odd_f32(x)
}

/// f32 → bf16 bits with round-to-nearest-even, branch-free so it vectorises.
/// NaN stays NaN (quiet bit forced) instead of rounding into infinity.
#[inline(always)]
fn bf16_bits_from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x0040;
    if x.is_nan() {
        nan as u16
    } else {
        rounded as u16
    }
}

/// Hints the CPU to fetch `len` bytes from the front of `bytes` into cache.
#[inline(always)]
fn prefetch(bytes: &[u8], len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.iter().take(len).step_by(64) {
        // SAFETY: `_mm_prefetch` is unsafe only because it is a target-feature
        // intrinsic; SSE is part of the x86-64 baseline, and a prefetch has no
        // architectural effect (it cannot fault or change memory). The pointer comes
        // from a live reference anyway.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                std::ptr::from_ref(line).cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, len);
}

/// Views `bytes` as `T`s without copying when they are aligned, or copies them into
/// `aligned` (8-byte aligned storage) when the tensor sits at an odd file offset.
#[inline(always)]
fn view<'a, T: bytemuck::Pod>(bytes: &'a [u8], aligned: &'a mut Vec<u64>) -> &'a [T] {
    match bytemuck::try_cast_slice(bytes) {
        Ok(values) => values,
        Err(_) => {
            let dst = zeroed_view::<u8>(aligned, bytes.len());
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
