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

#[cfg(test)]
mod tests {
    //! [`Accumulator::mix`] against an independent oracle: the inputs are decoded by
    //! hand, `Σ wᵢ·xᵢ` is summed in f64 in input order, and the sum is rounded to the
    //! output format by brute force (the two representable neighbours, the nearer one,
    //! ties to the even one). The oracle uses no conversion of `half` or of the kernel
    //! for rounding; `half` only decodes f16 (exact) and gives a first guess.

    use half::{bf16, f16};
    use proptest::prelude::*;

    use super::{Accumulator, Input, TILE};
    use crate::dtype::FloatDtype::{self, BF16, F16, F32, F64};

    const DTYPES: [FloatDtype; 4] = [F64, F32, F16, BF16];

    /// Chunk lengths around the tile boundary.
    const LENS: [usize; 10] = [0, 1, 2, 3, TILE - 1, TILE, TILE + 1, 2 * TILE, 5000, 3 * TILE + 7];

    /// SplitMix64: a seeded generator, so that every case is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n`.
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Uniform in `lo..=hi`.
        fn between(&mut self, lo: i32, hi: i32) -> i32 {
            lo + self.below((hi - lo + 1) as usize) as i32
        }

        /// Uniform in `[0, 1)` with 53 random bits.
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// `2^e`, exactly, for a normal f64 exponent.
    fn pow2(e: i32) -> f64 {
        assert!((-1022..=1023).contains(&e));
        f64::from_bits(((e + 1023) as u64) << 52)
    }

    /// A binary floating-point format by its field widths.
    #[derive(Debug, Clone, Copy)]
    struct Format {
        exp: u32,
        man: u32,
    }

    impl Format {
        fn of(dtype: FloatDtype) -> Self {
            match dtype {
                F64 => Format { exp: 11, man: 52 },
                F32 => Format { exp: 8, man: 23 },
                F16 => Format { exp: 5, man: 10 },
                BF16 => Format { exp: 8, man: 7 },
            }
        }

        fn bias(self) -> i32 {
            (1 << (self.exp - 1)) - 1
        }

        fn sign(self) -> u64 {
            1 << (self.exp + self.man)
        }

        fn mantissa(self) -> u64 {
            (1 << self.man) - 1
        }

        /// The bit pattern of +∞.
        fn inf(self) -> u64 {
            ((1 << self.exp) - 1) << self.man
        }

        fn is_nan(self, bits: u64) -> bool {
            bits & self.inf() == self.inf() && bits & self.mantissa() != 0
        }

        /// The value of a sign-less pattern up to [`Format::inf`], which counts as
        /// `2^(emax+1)`: the first value past the largest finite one, where IEEE
        /// rounding puts the overflow threshold. Not for f64 (its exponents overflow
        /// [`pow2`]); the oracle never rounds to f64.
        fn value(self, p: u64) -> f64 {
            let (e, m) = ((p >> self.man) as i32, p & self.mantissa());
            let (e, m) = if e == 0 { (1, m) } else { (e, m | 1 << self.man) };
            m as f64 * pow2(e - self.bias() - self.man as i32)
        }

        /// A random finite pattern with unbiased exponent `e`, clamped to the format
        /// (subnormal below its normal range, its top binade above).
        fn random(self, rng: &mut Rng, e: i32) -> u64 {
            let biased = (e + self.bias()).clamp(0, 2 * self.bias()) as u64;
            let sign = if rng.next() & 1 == 1 { self.sign() } else { 0 };
            sign | biased << self.man | rng.next() & self.mantissa()
        }
    }

    /// Decodes little-endian elements of `dtype` exactly.
    fn decode(dtype: FloatDtype, bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(dtype.size())
            .map(|c| match dtype {
                F64 => f64::from_le_bytes(c.try_into().unwrap()),
                F32 => f64::from(f32::from_le_bytes(c.try_into().unwrap())),
                F16 => f16::from_le_bytes(c.try_into().unwrap()).to_f64(),
                BF16 => {
                    let bits = u16::from_le_bytes(c.try_into().unwrap());
                    f64::from(f32::from_bits(u32::from(bits) << 16))
                }
            })
            .collect()
    }

    /// Some pattern of `dtype` near `x` (any rounding will do; it is only a guess, or
    /// an input value).
    fn near(dtype: FloatDtype, x: f64) -> u64 {
        match dtype {
            F64 => x.to_bits(),
            F32 => u64::from((x as f32).to_bits()),
            F16 => u64::from(f16::from_f64(x).to_bits()),
            BF16 => u64::from(bf16::from_f64(x).to_bits()),
        }
    }

    /// `s` rounded to `dtype` to nearest, ties to even, by brute force: `None` for NaN.
    fn round(dtype: FloatDtype, s: f64) -> Option<u64> {
        if s.is_nan() {
            return None;
        }
        if dtype == F64 {
            return Some(s.to_bits());
        }
        let f = Format::of(dtype);
        let a = s.abs();
        // The largest pattern whose value is at most `a`, stepping from a guess.
        let mut lo = (near(dtype, a) & !f.sign()).min(f.inf());
        while f.value(lo) > a {
            lo -= 1;
        }
        while lo < f.inf() && f.value(lo + 1) <= a {
            lo += 1;
        }
        let bits = if lo == f.inf() || f.value(lo) == a {
            lo
        } else {
            let mid = (f.value(lo) + f.value(lo + 1)) / 2.0; // exact: one more bit
            match a.partial_cmp(&mid).unwrap() {
                std::cmp::Ordering::Less => lo,
                std::cmp::Ordering::Greater => lo + 1,
                std::cmp::Ordering::Equal => lo + (lo & 1),
            }
        };
        Some(if s.is_sign_negative() { bits | f.sign() } else { bits })
    }

    /// The oracle agrees with the hardware's f64 → f32 conversion, which IEEE 754
    /// requires to be correctly rounded.
    #[test]
    fn oracle_matches_hardware_f32_rounding() {
        let mut rng = Rng(3);
        for _ in 0..100_000 {
            let e = rng.between(-160, 130);
            let s = f64::from_bits(Format::of(F64).random(&mut rng, e));
            assert_eq!(round(F32, s), Some(u64::from((s as f32).to_bits())), "{s:e}");
        }
    }

    /// One call of `mix`: every input sits at `offset` in its own buffer.
    #[derive(Debug)]
    struct Case {
        len: usize,
        out: FloatDtype,
        inputs: Vec<Ingredient>,
    }

    #[derive(Debug)]
    struct Ingredient {
        dtype: FloatDtype,
        buffer: Vec<u8>,
        offset: usize,
        weight: f64,
    }

    impl Ingredient {
        fn bytes(&self, len: usize) -> &[u8] {
            &self.buffer[self.offset..self.offset + len * self.dtype.size()]
        }
    }

    impl Case {
        /// The inputs of elements `range`.
        fn inputs(&self, range: std::ops::Range<usize>) -> Vec<Input<'_>> {
            self.inputs
                .iter()
                .map(|i| {
                    let size = i.dtype.size();
                    Input {
                        dtype: i.dtype,
                        bytes: &i.bytes(self.len)[range.start * size..range.end * size],
                        weight: i.weight,
                    }
                })
                .collect()
        }

        fn run(&self) -> Vec<u8> {
            let mut out = Vec::new();
            Accumulator::default().mix(self.len, &self.inputs(0..self.len), self.out, &mut out);
            out
        }

        /// The f64 sum of every element, in input order.
        fn sums(&self) -> Vec<f64> {
            let values: Vec<Vec<f64>> =
                self.inputs.iter().map(|i| decode(i.dtype, i.bytes(self.len))).collect();
            (0..self.len)
                .map(|j| {
                    let mut s = 0.0;
                    for (input, x) in self.inputs.iter().zip(&values) {
                        s += input.weight * x[j];
                    }
                    s
                })
                .collect()
        }

        /// Checks `got` element by element against the oracle.
        fn check(&self, got: &[u8]) {
            let size = self.out.size();
            assert_eq!(got.len(), self.len * size);
            let f = Format::of(self.out);
            for (j, (s, chunk)) in self.sums().into_iter().zip(got.chunks_exact(size)).enumerate() {
                let mut le = [0u8; 8];
                le[..size].copy_from_slice(chunk);
                let got = u64::from_le_bytes(le);
                let ok = match round(self.out, s) {
                    None => f.is_nan(got),
                    Some(want) => got == want,
                };
                assert!(
                    ok,
                    "element {j} of {}: sum {s:e} ({:#x}) should round to {:?} in {:?}, got \
                     {got:#x}; inputs {:?}",
                    self.len,
                    s.to_bits(),
                    round(self.out, s).map(|b| format!("{b:#x}")),
                    self.out,
                    self.inputs
                        .iter()
                        .map(|i| (i.dtype, decode(i.dtype, i.bytes(self.len))[j], i.weight))
                        .collect::<Vec<_>>(),
                );
            }
        }
    }

    /// How the values of one element are drawn (the same for all its inputs).
    #[derive(Clone, Copy)]
    enum Regime {
        /// Exponents within ±8.
        Moderate,
        /// Any exponent of the input's format, subnormals included.
        Wide,
        /// Around the output format's subnormals.
        Tiny,
        /// Around the output format's overflow threshold.
        Huge,
        /// Signed zeros only.
        Zero,
    }

    const REGIMES: [Regime; 5] =
        [Regime::Moderate, Regime::Wide, Regime::Tiny, Regime::Huge, Regime::Zero];

    /// The weights of `k` inputs in one of four styles.
    fn weights(rng: &mut Rng, k: usize, style: usize) -> Vec<f64> {
        const DECIMAL: [f64; 8] = [0.3, 0.7, 0.1, 0.25, 0.05, 0.45, 0.6, 0.9];
        (0..k)
            .map(|i| match style {
                0 => 1.0 / k as f64,
                1 => DECIMAL[(i + rng.below(2) * rng.below(8)) % 8],
                2 => rng.unit() * 3.0 - 1.5,
                _ => {
                    let sign = if rng.next() & 1 == 1 { -1.0 } else { 1.0 };
                    sign * pow2(rng.between(-3, 3))
                }
            })
            .collect()
    }

    /// A random case: `k` inputs of random (or, with `dtypes`, given) formats at odd
    /// offsets; per element a random regime, and in a third of the elements the last
    /// input (nearly) cancels the sum of the others.
    fn case(seed: u64, len: usize, k: usize, out: FloatDtype, style: usize) -> Case {
        let mut rng = Rng(seed);
        let dtypes: Vec<FloatDtype> = (0..k).map(|_| DTYPES[rng.below(4)]).collect();
        let w = weights(&mut rng, k, style);
        let mut values = vec![Vec::with_capacity(len); k];
        let o = Format::of(out);
        for _ in 0..len {
            let regime = REGIMES[rng.below(REGIMES.len())];
            for (i, &dtype) in dtypes.iter().enumerate() {
                let f = Format::of(dtype);
                let e = match regime {
                    Regime::Moderate => rng.between(-8, 8),
                    Regime::Wide => rng.between(1 - f.bias() - f.man as i32, f.bias()),
                    Regime::Tiny => rng.between(-o.bias() - o.man as i32 - 2, 2 - o.bias()),
                    Regime::Huge => rng.between(o.bias() - 2, o.bias()),
                    Regime::Zero => i32::MIN / 2,
                };
                let bits = f.random(&mut rng, e);
                values[i].push(if matches!(regime, Regime::Zero) { bits & f.sign() } else { bits });
            }
            if k >= 2 && rng.below(3) == 0 {
                let last = k - 1;
                let partial: f64 = (0..last)
                    .map(|i| {
                        let x = values[i].last().copied().unwrap_or_default();
                        w[i] * decode_bits(dtypes[i], x)
                    })
                    .sum();
                let nudge = rng.below(3) as u64;
                *values[last].last_mut().unwrap() = near(dtypes[last], -partial / w[last]) ^ nudge;
            }
        }
        let inputs = dtypes
            .iter()
            .zip(w)
            .zip(values)
            .map(|((&dtype, weight), values)| {
                let offset = rng.below(8);
                let mut buffer = vec![0xA5; offset];
                for v in values {
                    buffer.extend_from_slice(&v.to_le_bytes()[..dtype.size()]);
                }
                buffer.extend(std::iter::repeat_n(0x5A, rng.below(3)));
                Ingredient { dtype, buffer, offset, weight }
            })
            .collect();
        Case { len, out, inputs }
    }

    /// The value of one bit pattern of `dtype`.
    fn decode_bits(dtype: FloatDtype, bits: u64) -> f64 {
        decode(dtype, &bits.to_le_bytes()[..dtype.size()])[0]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn mix_is_correctly_rounded(
            seed: u64,
            len in prop::sample::select(LENS.to_vec()),
            k in 0usize..=9,
            out in prop::sample::select(DTYPES.to_vec()),
            style in 0usize..4,
        ) {
            let case = case(seed, len, k, out, style);
            case.check(&case.run());
        }

        #[test]
        fn mix_does_not_depend_on_chunking(
            seed: u64,
            k in 1usize..=9,
            out in prop::sample::select(DTYPES.to_vec()),
            cuts in prop::collection::vec(0usize..=5000, 0..6),
        ) {
            let case = case(seed, 5000, k, out, 2);
            let whole = case.run();
            let mut cuts = cuts;
            cuts.extend([0, case.len]);
            cuts.sort_unstable();
            let mut acc = Accumulator::default();
            let (mut pieces, mut out) = (Vec::new(), Vec::new());
            for range in cuts.windows(2) {
                acc.mix(range[1] - range[0], &case.inputs(range[0]..range[1]), case.out, &mut out);
                pieces.extend_from_slice(&out);
            }
            prop_assert_eq!(pieces, whole);
        }
    }

    /// Every length and every number of inputs from 1 to 9, the input formats cycling
    /// through all four in one call, into every output format, with uniform weights.
    #[test]
    fn uniform_weights_every_format_and_length() {
        for out in DTYPES {
            for len in LENS {
                for k in 1..=9 {
                    let mut case = case(len as u64 * 31 + k as u64, len, k, out, 0);
                    for (i, input) in case.inputs.iter_mut().enumerate() {
                        input.buffer = respell(input, len, DTYPES[i % 4]);
                        input.dtype = DTYPES[i % 4];
                    }
                    case.check(&case.run());
                }
            }
        }
    }

    /// The buffer of `input` with its values re-encoded (approximately) as `dtype`.
    fn respell(input: &Ingredient, len: usize, dtype: FloatDtype) -> Vec<u8> {
        let mut buffer = vec![0; input.offset];
        for x in decode(input.dtype, input.bytes(len)) {
            buffer.extend_from_slice(&near(dtype, x).to_le_bytes()[..dtype.size()]);
        }
        buffer
    }

    /// Sums at, just below and just above the midpoints between neighbours of the
    /// output format, where rounding through f32 first would go wrong, from the
    /// subnormals to the overflow threshold.
    #[test]
    fn halfway_cases_round_to_even() {
        let mut rng = Rng(7);
        for out in [F32, F16, BF16] {
            let f = Format::of(out);
            let mut inputs = Vec::new();
            for n in 0..4000 {
                let p = match n {
                    0..100 => n as u64,                         // subnormals
                    100..200 => f.inf() - 1 - (n - 100) as u64, // overflow threshold
                    _ => rng.next() % f.inf(),
                };
                let (lo, hi) = (f.value(p), f.value(p + 1));
                let mid = (lo + hi) / 2.0;
                let sign = if rng.next() & 1 == 1 { -1.0 } else { 1.0 };
                let tiny = (hi - lo) * pow2(-rng.between(2, 45));
                let nudge = [0.0, tiny, -tiny][rng.below(3)];
                inputs.push((sign * mid, sign * nudge));
            }
            let len = inputs.len();
            let xs: Vec<u8> = inputs.iter().flat_map(|(m, _)| m.to_le_bytes()).collect();
            let ds: Vec<u8> = inputs.iter().flat_map(|(_, d)| d.to_le_bytes()).collect();
            // The midpoint plus the nudge, exactly, as one f64 input, then as two.
            let sums: Vec<u8> = inputs.iter().flat_map(|(m, d)| (m + d).to_le_bytes()).collect();
            let one = Case { len, out, inputs: vec![ingredient(F64, &sums, 1.0)] };
            one.check(&one.run());
            let two = Case {
                len,
                out,
                inputs: vec![ingredient(F64, &xs, 1.0), ingredient(F64, &ds, 1.0)],
            };
            two.check(&two.run());
        }
    }

    /// An input at offset 1 holding `bytes`.
    fn ingredient(dtype: FloatDtype, bytes: &[u8], weight: f64) -> Ingredient {
        let mut buffer = vec![0];
        buffer.extend_from_slice(bytes);
        Ingredient { dtype, buffer, offset: 1, weight }
    }

    /// NaN anywhere gives NaN; an infinity gives an infinity of the sign of its
    /// product, opposite infinities NaN, and a finite sum past the output's range ∞.
    #[test]
    fn nan_and_infinity_propagate() {
        let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0, -0.0];
        for a in DTYPES {
            for b in DTYPES {
                let encode = |dtype: FloatDtype, values: &[f64]| -> Vec<u8> {
                    values
                        .iter()
                        .flat_map(|&x| near(dtype, x).to_le_bytes()[..dtype.size()].to_vec())
                        .collect()
                };
                let (mut xs, mut ys) = (Vec::new(), Vec::new());
                for &x in &specials {
                    for &y in &specials {
                        xs.push(x);
                        ys.push(y);
                    }
                }
                let len = xs.len();
                for out in DTYPES {
                    for (wa, wb) in [(0.5, 0.5), (-1.0, 2.0)] {
                        let case = Case {
                            len,
                            out,
                            inputs: vec![
                                ingredient(a, &encode(a, &xs), wa),
                                ingredient(b, &encode(b, &ys), wb),
                            ],
                        };
                        let got = case.run();
                        case.check(&got);
                        let f = Format::of(out);
                        for (j, chunk) in got.chunks_exact(out.size()).enumerate() {
                            let mut le = [0u8; 8];
                            le[..out.size()].copy_from_slice(chunk);
                            let bits = u64::from_le_bytes(le);
                            let (x, y) = (wa * xs[j], wb * ys[j]);
                            let want_nan = x.is_nan() || y.is_nan() || (x + y).is_nan();
                            assert_eq!(f.is_nan(bits), want_nan, "{x} + {y} into {out:?}");
                            if !want_nan && (x + y).is_infinite() {
                                assert_eq!(bits & !f.sign(), f.inf(), "{x} + {y} into {out:?}");
                                assert_eq!(bits & f.sign() != 0, x + y < 0.0);
                            }
                        }
                    }
                }
            }
        }
        // The largest finite f64s overflow the f64 sum; the largest f32 overflows
        // f16 and, rounded up, bf16.
        for (dtype, x, out) in [(F64, f64::MAX, F64), (F32, f64::from(f32::MAX), F16)] {
            let bytes = near(dtype, x).to_le_bytes()[..dtype.size()].to_vec();
            let case = Case {
                len: 1,
                out,
                inputs: vec![ingredient(dtype, &bytes, 1.0), ingredient(dtype, &bytes, 1.0)],
            };
            let got = case.run();
            case.check(&got);
        }
    }
}
