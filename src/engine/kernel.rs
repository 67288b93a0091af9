//! The one arithmetic kernel of the engine: `(Σ wᵢ·xᵢ) / d` over a chunk, then a
//! single rounding to the output format, counting the values that come out NaN or
//! infinite.
//!
//! Every merge method that is linear in the weights (uniform, weighted, greedy and
//! pruned candidates, learned coefficients) is a call of [`Accumulator::mix`]. The
//! loops are plain slice iterators so that the compiler vectorises them, and `mix`
//! is compiled several times (AVX-512, AVX2, SSE4.1 and the baseline): the best
//! version for the running CPU is picked once at run time, so a portable binary runs
//! the wide-vector code.
//!
//! Accumulation is in f64. Inputs are widened exactly, from unaligned little-endian
//! bytes, by integer operations and conversions (which take subnormals at full
//! speed, where arithmetic on them would cost a microcode assist); products and sums
//! carry 53 bits, and the only rounding that matters is the final one to the output
//! format (to nearest, ties to even), done in one step so that there is no double
//! rounding. The divisor `d` is 1 except for weights that are exactly integers over
//! a common count `kᵢ/d` (a uniform soup: all `1/n`): then the sum is `Σ kᵢ·xᵢ` and
//! one correctly rounded division by `d` follows, so that a uniform soup is the
//! correctly rounded mean (see "What exact means" in `docs/ARCHITECTURE.md`):
//! `fl(1/n)` is not `1/n`, and `Σ fl(1/n)·xᵢ` misses the mean's ties. An f32
//! accumulator would be about 1.5× faster where the kernel is bound by arithmetic,
//! but drifts by several output ulps wherever ingredients cancel (and would truncate
//! F64 inputs); see `docs/ARCHITECTURE.md`. No fused multiply-add is used, so every
//! CPU computes the same bits.
//!
//! The sums run over a tile of `TILE` elements at a time, in an f64 accumulator
//! that stays in the L1 cache. Consecutive inputs of one format are added in groups
//! of up to `GROUP` per pass over the tile with the partial sum in a register:
//! `((acc + w₀x₀) + w₁x₁) + …` is the same sequence of roundings as one pass per
//! input, with fewer loads and stores of the accumulator. The first group adds to
//! `+0.0` instead of loading a zeroed accumulator. When the inputs and the output are
//! all 16-bit formats the tile is held as its even elements then its odd ones
//! (`Pairs`), so that a 32-bit word of input splits into its two elements with
//! shifts and masks, and two rounded results pack into one word the same way,
//! instead of shuffling vectors.

use half::{bf16, f16};

use crate::engine::dtype::FloatDtype;

/// Elements per tile: the tile's f64 accumulator (16 KiB) stays in the L1 data
/// cache while the inputs stream through it.
const TILE: usize = 2048;

/// Inputs added per pass over a tile. Measured (Zen 5): 4 beats 1 and 2, by 10–20%
/// with 8 inputs streaming from memory; 8 was no better and doubles the code.
const GROUP: usize = 4;

/// The most input bytes per tile (all inputs together) for which the tile after
/// next is prefetched: 2 tiles ahead must fit in L1 next to the accumulator, or the
/// prefetches evict each other. Beyond it the hardware prefetchers do better alone.
const PREFETCH_MAX: usize = 16 << 10;

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

/// The reusable f64 accumulator of one tile. One per worker thread, 16 KiB,
/// whatever the model.
#[derive(Debug, Default)]
pub struct Accumulator {
    acc: Vec<f64>,
}

impl Accumulator {
    /// Computes `(Σ wᵢ·xᵢ) / divisor` over the inputs: the sum in f64 in input
    /// order (so the result never depends on threads or tiling), the division
    /// correctly rounded (and skipped when `divisor` is 1). Rounds the result to
    /// `dtype` with round-to-nearest-even, puts the little-endian bytes in `out`,
    /// resized to fit, and returns how many of them are NaN or infinite. All inputs
    /// must hold `len` elements; with no inputs the result is `len` zeros.
    ///
    /// # Panics
    /// If an input's byte length is not `len × its element size`.
    pub fn mix(
        &mut self,
        len: usize,
        inputs: &[Input],
        divisor: f64,
        dtype: FloatDtype,
        out: &mut Vec<u8>,
    ) -> usize {
        for input in inputs {
            assert_eq!(
                input.bytes.len(),
                len * input.dtype.size(),
                "input length differs from the chunk"
            );
        }
        out.resize(len * dtype.size(), 0);
        self.acc.resize(TILE, 0.0);
        mix_tiles(&mut self.acc, len, inputs, divisor, dtype, out)
    }
}

/// The tile loop of [`Accumulator::mix`], compiled once per instruction set.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+sse4.2+popcnt",
))]
fn mix_tiles(
    acc: &mut [f64],
    len: usize,
    inputs: &[Input],
    divisor: f64,
    dtype: FloatDtype,
    out: &mut [u8],
) -> usize {
    tiles(acc, len, inputs, divisor, dtype, out)
}

/// The body of [`mix_tiles`] (which the tests also call directly, to check that
/// the baseline build computes the same bits): every tile in [`Pairs`] when every
/// format is 16-bit (all but an odd last element), in [`Linear`] otherwise.
#[inline(always)]
fn tiles(
    acc: &mut [f64],
    len: usize,
    inputs: &[Input],
    divisor: f64,
    dtype: FloatDtype,
    out: &mut [u8],
) -> usize {
    let halves = dtype.size() == 2 && inputs.iter().all(|input| input.dtype.size() == 2);
    let paired = if halves { len & !1 } else { 0 };
    let tile_bytes: usize = inputs.iter().map(|input| TILE * input.dtype.size()).sum();
    let tile = |start: usize, end: usize| {
        if tile_bytes <= PREFETCH_MAX {
            prefetch_tile(inputs, start + 2 * TILE);
        }
        Tile { inputs, start, end, divisor }
    };
    let mut non_finite = 0;
    for start in (0..paired).step_by(TILE) {
        non_finite += tile(start, paired.min(start + TILE)).run::<Pairs>(acc, dtype, out);
    }
    for start in (paired..len).step_by(TILE) {
        non_finite += tile(start, len.min(start + TILE)).run::<Linear>(acc, dtype, out);
    }
    non_finite
}

/// Asks for tile `start..start + TILE` of every input now, so that it arrives while
/// the tiles before it are summed: the hardware prefetcher restarts at every 4 KiB
/// page, and a bf16 tile is one page of each input.
#[inline(always)]
fn prefetch_tile(inputs: &[Input], start: usize) {
    for input in inputs {
        let size = input.dtype.size();
        prefetch(input.bytes.get(start * size..).unwrap_or_default(), TILE * size);
    }
}

/// Elements `start..end` of every input, at most [`TILE`] of them, and the divisor
/// of their sums.
struct Tile<'a, 'b> {
    inputs: &'a [Input<'b>],
    start: usize,
    end: usize,
    divisor: f64,
}

impl Tile<'_, '_> {
    /// Sums the tile into `acc` in layout `L`, by groups of consecutive inputs of
    /// one format, divides the sums, then rounds them to `dtype` into the tile's part
    /// of `out`; returns how many results are not finite.
    #[inline(always)]
    fn run<L: Layout>(self, acc: &mut [f64], dtype: FloatDtype, out: &mut [u8]) -> usize {
        let acc = &mut acc[..self.end - self.start];
        if self.inputs.is_empty() {
            acc.fill(0.0);
        }
        let mut rest = self.inputs;
        let mut first = true;
        while let Some(head) = rest.first() {
            let n = rest.iter().take(GROUP).take_while(|i| i.dtype == head.dtype).count();
            let (group, tail) = rest.split_at(n);
            let pass = Pass { acc: &mut *acc, group, start: self.start };
            L::add_group(pass, head.dtype, first);
            (rest, first) = (tail, false);
        }
        let size = dtype.size();
        let out = &mut out[self.start * size..self.end * size];
        let non_finite = if self.divisor == 1.0 {
            L::narrow_to(dtype, acc, out, Unscaled)
        } else {
            L::narrow_to(dtype, acc, out, Quotient(self.divisor))
        };
        non_finite as usize
    }
}

/// One pass over a tile: a group of 1 to [`GROUP`] inputs of one format.
struct Pass<'a, 'b> {
    acc: &'a mut [f64],
    group: &'a [Input<'b>],
    start: usize,
}

impl Pass<'_, '_> {
    /// Adds the group's inputs, of format `E`, to the accumulator (to zero for the
    /// `first` group), with the group size and `first` known to the compiler.
    #[inline(always)]
    fn add<L: Layout, E: Format>(self, first: bool) {
        match (self.group.len(), first) {
            (1, true) => self.add_n::<L, E, 1, true>(),
            (2, true) => self.add_n::<L, E, 2, true>(),
            (3, true) => self.add_n::<L, E, 3, true>(),
            (_, true) => self.add_n::<L, E, 4, true>(),
            (1, false) => self.add_n::<L, E, 1, false>(),
            (2, false) => self.add_n::<L, E, 2, false>(),
            (3, false) => self.add_n::<L, E, 3, false>(),
            (_, false) => self.add_n::<L, E, 4, false>(),
        }
    }

    /// [`Layout::add`] over this tile of the group's `N` inputs.
    #[inline(always)]
    fn add_n<L: Layout, E: Format, const N: usize, const FIRST: bool>(self) {
        let size = std::mem::size_of::<E::Bytes>();
        let range = self.start * size..(self.start + self.acc.len()) * size;
        let xs: [&[u8]; N] = std::array::from_fn(|i| &self.group[i].bytes[range.clone()]);
        let ws: [f64; N] = std::array::from_fn(|i| self.group[i].weight);
        L::add::<E, N, FIRST>(self.acc, xs, ws);
    }
}

/// How a tile's sums are arranged in the accumulator.
trait Layout {
    /// `acc = (((acc + w₀·x₀) + w₁·x₁) + …)` elementwise over `N` inputs of format
    /// `E` (`acc.len()` elements each), in one pass that vectorises; `acc` counts as
    /// `+0.0` when `FIRST` (adding `w₀·x₀` to `+0.0` rather than taking it keeps the
    /// sign of zero sums).
    fn add<E: Format, const N: usize, const FIRST: bool>(
        acc: &mut [f64],
        xs: [&[u8]; N],
        ws: [f64; N],
    );

    /// Rounds the sums in `acc`, scaled by `s`, to `O` into `out` (`acc.len()`
    /// elements); returns how many results are NaN or infinite.
    fn narrow<O: Format, S: Scale>(acc: &[f64], out: &mut [u8], s: S) -> u32;

    /// [`Pass::add`] for inputs of `dtype`: the `match` on the input format.
    fn add_group(pass: Pass, dtype: FloatDtype, first: bool);

    /// [`Layout::narrow`] to `dtype`: the `match` on the output format.
    fn narrow_to<S: Scale>(dtype: FloatDtype, acc: &[f64], out: &mut [u8], s: S) -> u32;
}

/// `acc[j]` is element `j` of the tile.
struct Linear;

impl Layout for Linear {
    #[inline(always)]
    fn add<E: Format, const N: usize, const FIRST: bool>(
        acc: &mut [f64],
        xs: [&[u8]; N],
        ws: [f64; N],
    ) {
        let xs: [&[E::Bytes]; N] = xs.map(bytemuck::cast_slice);
        for (j, a) in acc.iter_mut().enumerate() {
            let mut s = if FIRST { 0.0 } else { *a };
            for i in 0..N {
                s += ws[i] * E::widen(xs[i][j]);
            }
            *a = s;
        }
    }

    #[inline(always)]
    fn narrow<O: Format, S: Scale>(acc: &[f64], out: &mut [u8], s: S) -> u32 {
        let out: &mut [O::Bytes] = bytemuck::cast_slice_mut(out);
        let mut non_finite = 0u32;
        for (o, &x) in out.iter_mut().zip(acc) {
            let bytes = O::narrow(s.apply(x));
            non_finite += u32::from(O::non_finite(bytes));
            *o = bytes;
        }
        non_finite
    }

    #[inline(always)]
    fn add_group(pass: Pass, dtype: FloatDtype, first: bool) {
        match dtype {
            FloatDtype::F64 => pass.add::<Self, f64>(first),
            FloatDtype::F32 => pass.add::<Self, f32>(first),
            FloatDtype::F16 => pass.add::<Self, f16>(first),
            FloatDtype::BF16 => pass.add::<Self, bf16>(first),
        }
    }

    #[inline(always)]
    fn narrow_to<S: Scale>(dtype: FloatDtype, acc: &[f64], out: &mut [u8], s: S) -> u32 {
        match dtype {
            FloatDtype::F64 => Self::narrow::<f64, S>(acc, out, s),
            FloatDtype::F32 => Self::narrow::<f32, S>(acc, out, s),
            FloatDtype::F16 => Self::narrow::<f16, S>(acc, out, s),
            FloatDtype::BF16 => Self::narrow::<bf16, S>(acc, out, s),
        }
    }
}

/// For an even number of elements of 16-bit formats only: `acc[i]` is element
/// `2i` of the tile and `acc[m + i]` element `2i + 1`, `m` being half the tile.
struct Pairs;

impl Layout for Pairs {
    #[inline(always)]
    fn add<E: Format, const N: usize, const FIRST: bool>(
        acc: &mut [f64],
        xs: [&[u8]; N],
        ws: [f64; N],
    ) {
        let xs: [&[[E::Bytes; 2]]; N] = xs.map(bytemuck::cast_slice);
        let (even, odd) = acc.split_at_mut(acc.len() / 2);
        for (i, (e, o)) in even.iter_mut().zip(odd).enumerate() {
            let (mut se, mut so) = if FIRST { (0.0, 0.0) } else { (*e, *o) };
            for k in 0..N {
                se += ws[k] * E::widen(xs[k][i][0]);
                so += ws[k] * E::widen(xs[k][i][1]);
            }
            (*e, *o) = (se, so);
        }
    }

    #[inline(always)]
    fn narrow<O: Format, S: Scale>(acc: &[f64], out: &mut [u8], s: S) -> u32 {
        let out: &mut [[O::Bytes; 2]] = bytemuck::cast_slice_mut(out);
        let (even, odd) = acc.split_at(acc.len() / 2);
        let mut non_finite = 0u32;
        for ((o, &e), &d) in out.iter_mut().zip(even).zip(odd) {
            let pair = O::narrow_pair(s.apply(e), s.apply(d));
            non_finite += u32::from(O::non_finite(pair[0])) + u32::from(O::non_finite(pair[1]));
            *o = pair;
        }
        non_finite
    }

    #[inline(always)]
    fn add_group(pass: Pass, dtype: FloatDtype, first: bool) {
        match dtype {
            FloatDtype::F16 => pass.add::<Self, f16>(first),
            FloatDtype::BF16 => pass.add::<Self, bf16>(first),
            FloatDtype::F32 | FloatDtype::F64 => unreachable!("pairs hold 16-bit formats only"),
        }
    }

    #[inline(always)]
    fn narrow_to<S: Scale>(dtype: FloatDtype, acc: &[f64], out: &mut [u8], s: S) -> u32 {
        match dtype {
            FloatDtype::F16 => Self::narrow::<f16, S>(acc, out, s),
            FloatDtype::BF16 => Self::narrow::<bf16, S>(acc, out, s),
            FloatDtype::F32 | FloatDtype::F64 => unreachable!("pairs hold 16-bit formats only"),
        }
    }
}

/// Widens `out.len()` elements of `dtype` from the little-endian `bytes` into
/// `out`, exactly and with the same conversions as [`Accumulator::mix`], for the
/// passes that reduce chunks instead of writing them (see `crate::analysis::gram`).
///
/// # Panics
/// If `bytes` is not `out.len()` elements long.
#[inline(always)]
pub(crate) fn widen_into(dtype: FloatDtype, bytes: &[u8], out: &mut [f64]) {
    assert_eq!(bytes.len(), out.len() * dtype.size(), "input length differs from the tile");
    match dtype {
        FloatDtype::F64 => widen_as::<f64>(bytes, out),
        FloatDtype::F32 => widen_as::<f32>(bytes, out),
        FloatDtype::F16 => widen_as::<f16>(bytes, out),
        FloatDtype::BF16 => widen_as::<bf16>(bytes, out),
    }
}

/// Rounds `values` to `dtype` (to nearest, ties to even, as [`Accumulator::mix`]
/// does), writes their little-endian bytes into `out`, for the reducers that
/// compute their own f64 results (see `crate::engine::task_vectors`), and returns
/// how many are NaN or infinite.
///
/// # Panics
/// If `out` is not `values.len()` elements long.
#[inline(always)]
pub(crate) fn narrow_into(dtype: FloatDtype, values: &[f64], out: &mut [u8]) -> usize {
    assert_eq!(out.len(), values.len() * dtype.size(), "output length differs from the values");
    match dtype {
        FloatDtype::F64 => narrow_as::<f64>(values, out),
        FloatDtype::F32 => narrow_as::<f32>(values, out),
        FloatDtype::F16 => narrow_as::<f16>(values, out),
        FloatDtype::BF16 => narrow_as::<bf16>(values, out),
    }
    count_non_finite(dtype, out)
}

/// How many of the little-endian values of `dtype` in `bytes` are NaN or infinite:
/// one compare per element, which vectorises.
#[inline(always)]
fn count_non_finite(dtype: FloatDtype, bytes: &[u8]) -> usize {
    match dtype {
        FloatDtype::F64 => count_as::<f64>(bytes),
        FloatDtype::F32 => count_as::<f32>(bytes),
        FloatDtype::F16 => count_as::<f16>(bytes),
        FloatDtype::BF16 => count_as::<bf16>(bytes),
    }
}

#[inline(always)]
fn count_as<E: Format>(bytes: &[u8]) -> usize {
    let elements: &[E::Bytes] = bytemuck::cast_slice(bytes);
    // 32-bit lanes: a tile holds far fewer than 2³² elements.
    elements.iter().fold(0u32, |n, &e| n + u32::from(E::non_finite(e))) as usize
}

/// How the sums of a tile are scaled on their way to the output, inside the
/// rounding loop (an extra pass over the tile would cost as much as the scaling):
/// a divisor of 1 (most merges), or weights that are integers over a common
/// count `d`, divided by `d` with IEEE division, correctly rounded. (Multiplying
/// by `fl(1/d)` and dividing only near midpoints of the output was tried: for bf16
/// soups, where exact ties are common, the test for "near" cost nearly as much as
/// the division it saved.)
trait Scale: Copy {
    /// The value to round.
    fn apply(self, x: f64) -> f64;
}

/// No scaling.
#[derive(Clone, Copy)]
struct Unscaled;

impl Scale for Unscaled {
    #[inline(always)]
    fn apply(self, x: f64) -> f64 {
        x
    }
}

/// Divided by `d`, correctly rounded.
#[derive(Clone, Copy)]
struct Quotient(f64);

impl Scale for Quotient {
    #[inline(always)]
    fn apply(self, x: f64) -> f64 {
        x / self.0
    }
}

#[inline(always)]
fn narrow_as<E: Format>(values: &[f64], out: &mut [u8]) {
    let out: &mut [E::Bytes] = bytemuck::cast_slice_mut(out);
    for (o, &x) in out.iter_mut().zip(values) {
        *o = E::narrow(x);
    }
}

#[inline(always)]
fn widen_as<E: Format>(bytes: &[u8], out: &mut [f64]) {
    let xs: &[E::Bytes] = bytemuck::cast_slice(bytes);
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = E::widen(x);
    }
}

/// An element format: its little-endian bytes, their exact value, and the
/// correctly rounded bytes of an f64.
trait Format {
    /// One element's bytes (alignment 1, so any byte slice can be viewed as them).
    type Bytes: bytemuck::Pod;

    /// The exact value of one element.
    fn widen(bytes: Self::Bytes) -> f64;

    /// Whether an element is NaN or infinite: all its exponent bits are set.
    fn non_finite(bytes: Self::Bytes) -> bool;

    /// `x` rounded to nearest, ties to even.
    fn narrow(x: f64) -> Self::Bytes;

    /// [`Format::narrow`] of two consecutive elements.
    #[inline(always)]
    fn narrow_pair(x: f64, y: f64) -> [Self::Bytes; 2] {
        [Self::narrow(x), Self::narrow(y)]
    }
}

impl Format for f64 {
    type Bytes = [u8; 8];

    #[inline(always)]
    fn non_finite(bytes: [u8; 8]) -> bool {
        const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
        u64::from_le_bytes(bytes) & EXPONENT == EXPONENT
    }

    #[inline(always)]
    fn widen(bytes: [u8; 8]) -> f64 {
        f64::from_le_bytes(bytes)
    }

    #[inline(always)]
    fn narrow(x: f64) -> [u8; 8] {
        x.to_le_bytes()
    }
}

impl Format for f32 {
    type Bytes = [u8; 4];

    #[inline(always)]
    fn non_finite(bytes: [u8; 4]) -> bool {
        u32::from_le_bytes(bytes) & 0x7f80_0000 == 0x7f80_0000
    }

    #[inline(always)]
    fn widen(bytes: [u8; 4]) -> f64 {
        f64::from(f32::from_le_bytes(bytes))
    }

    #[inline(always)]
    fn narrow(x: f64) -> [u8; 4] {
        (x as f32).to_le_bytes()
    }
}

impl Format for bf16 {
    type Bytes = [u8; 2];

    #[inline(always)]
    fn non_finite(bytes: [u8; 2]) -> bool {
        u16::from_le_bytes(bytes) & 0x7f80 == 0x7f80
    }

    /// bf16 is the upper half of an f32.
    #[inline(always)]
    fn widen(bytes: [u8; 2]) -> f64 {
        f64::from(f32::from_bits(u32::from(u16::from_le_bytes(bytes)) << 16))
    }

    #[inline(always)]
    fn narrow(x: f64) -> [u8; 2] {
        bf16_bits(x).to_le_bytes()
    }

    /// The upper halves of two f32 bit patterns, packed with a shift and a mask
    /// (the generic version shuffles vectors instead).
    #[inline(always)]
    fn narrow_pair(x: f64, y: f64) -> [[u8; 2]; 2] {
        let (x, y) = (bf16_f32(x).to_bits(), bf16_f32(y).to_bits());
        bytemuck::cast((x >> 16 | y & 0xffff_0000).to_le_bytes())
    }
}

impl Format for f16 {
    type Bytes = [u8; 2];

    #[inline(always)]
    fn non_finite(bytes: [u8; 2]) -> bool {
        u16::from_le_bytes(bytes) & 0x7c00 == 0x7c00
    }

    /// The f16 bits moved into an f32 without re-biasing the exponent, which gives
    /// an f32 `2^112` times smaller (f16 subnormals become f32 subnormals, which
    /// convert to f64 at full speed, unlike arithmetic on them); infinities and NaNs
    /// get the all-ones exponent instead. The f64 is then scaled back up, exactly.
    #[inline(always)]
    fn widen(bytes: [u8; 2]) -> f64 {
        // Sign-extended, so that the sign lands in bit 31 (and copies in 28..=30).
        let h = i32::from(i16::from_le_bytes(bytes)) as u32;
        let bits = (h << 13) & 0x8fff_ffff;
        let bits = if bits & 0x0f80_0000 == 0x0f80_0000 { bits | 0x7000_0000 } else { bits };
        f64::from(f32::from_bits(bits)) * f64::from_bits((1023 + 112) << 52)
    }

    #[inline(always)]
    fn narrow(x: f64) -> [u8; 2] {
        f16_bits(x).to_le_bytes()
    }

    /// Packed in 32-bit lanes (the generic version shuffles vectors instead).
    #[inline(always)]
    fn narrow_pair(x: f64, y: f64) -> [[u8; 2]; 2] {
        bytemuck::cast((u32::from(f16_bits(x)) | u32::from(f16_bits(y)) << 16).to_le_bytes())
    }
}

/// `x` rounded to nearest, ties to even, onto the numbers of a binary format with
/// `MAN` fraction bits and normal exponents `EMIN..=EMAX`, still as an f64 (which
/// then converts to f32 exactly); `2^(EMAX+1)` or more where the format overflows.
/// NaN stays NaN (with its payload) and the sign of zero is kept.
///
/// The classic magic-number rounding: for `x` in the binade `[2^e, 2^(e+1))` the
/// format's spacing is `u = 2^(e-MAN)` (`2^(EMIN-MAN)` among its subnormals), and
/// `c = 1.5·2^52·u` is a number whose own spacing is `u`, so `x + c` rounds `x` to a
/// multiple of `u`, to nearest, ties to the even multiple (`c/u` is even), and
/// `- c` is exact. Clamping `e` to `EMAX + 1` keeps `c` finite: anything that big
/// overflows the format anyway.
#[inline(always)]
fn round_to_grid<const MAN: u32, const EMIN: i32, const EMAX: i32>(x: f64) -> f64 {
    const SIGN: u64 = 1 << 63;
    const EXPONENT: u64 = 0x7ff << 52;
    let low = ((EMIN + 1023) as u64) << 52;
    let high = ((EMAX + 1 + 1023) as u64) << 52;
    let bits = x.to_bits();
    // 2^e, then c = 2^(e + 52 - MAN) · 1.5.
    let e = (bits & EXPONENT).clamp(low, high);
    let c = f64::from_bits(e + ((52 - u64::from(MAN)) << 52) + (1 << 51));
    let r = (x + c) - c;
    // A negative x that rounds to zero gives +0 above; the sign goes back on.
    f64::from_bits(r.to_bits() | bits & SIGN)
}

/// f64 → bf16 bit pattern, correctly rounded to nearest even; NaN stays NaN.
#[inline(always)]
pub fn bf16_bits(x: f64) -> u16 {
    (bf16_f32(x).to_bits() >> 16) as u16
}

/// `x` rounded to bf16, as the f32 whose upper half is the bf16: exact (or ∞). A
/// NaN converts to a quiet NaN, whose quiet bit is in that half.
#[inline(always)]
fn bf16_f32(x: f64) -> f32 {
    round_to_grid::<7, -126, 127>(x) as f32
}

/// f64 → f16 bit pattern, correctly rounded to nearest even; NaN stays NaN (quiet,
/// with the top of its payload).
#[inline(always)]
fn f16_bits(x: f64) -> u16 {
    // Exact (or 2^16 and up, clamped to 2^16) as an f64; `2^112` times smaller it
    // is an f32 (subnormal for f16 subnormals) whose bits are those of the f16 moved
    // 13 places up, with the exponent field widened: 2^16 and ∞ become 0x7c00 and a
    // NaN keeps its quiet bit and the top of its payload.
    let r = round_to_grid::<10, -14, 15>(x).clamp(-65536.0, 65536.0);
    let bits = ((r * f64::from_bits((1023 - 112) << 52)) as f32).to_bits();
    ((bits >> 16) & 0x8000 | (bits >> 13) & 0x7fff) as u16
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
    use crate::engine::dtype::FloatDtype::{self, BF16, F16, F32, F64};

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
        divisor: f64,
    }

    #[derive(Debug)]
    struct Ingredient {
        dtype: FloatDtype,
        buffer: Vec<u8>,
        offset: usize,
        weight: f64,
    }

    impl Ingredient {
        fn clone_of(i: &Ingredient) -> Ingredient {
            Ingredient {
                dtype: i.dtype,
                buffer: i.buffer.clone(),
                offset: i.offset,
                weight: i.weight,
            }
        }

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
            let inputs = self.inputs(0..self.len);
            let non_finite =
                Accumulator::default().mix(self.len, &inputs, self.divisor, self.out, &mut out);
            let decoded = decode(self.out, &out);
            assert_eq!(non_finite, decoded.iter().filter(|x| !x.is_finite()).count());
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
                    s / self.divisor
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

    /// The weights of `k` inputs in one of five styles (the last: small integers,
    /// to be divided by their sum).
    fn weights(rng: &mut Rng, k: usize, style: usize) -> Vec<f64> {
        const DECIMAL: [f64; 8] = [0.3, 0.7, 0.1, 0.25, 0.05, 0.45, 0.6, 0.9];
        (0..k)
            .map(|i| match style {
                0 => 1.0 / k as f64,
                1 => DECIMAL[(i + rng.below(2) * rng.below(8)) % 8],
                2 => rng.unit() * 3.0 - 1.5,
                4 => (1 + rng.below(3)) as f64,
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
            .collect::<Vec<_>>();
        let divisor =
            if style == 4 { inputs.iter().map(|i| i.weight).sum::<f64>().max(1.0) } else { 1.0 };
        Case { len, out, inputs, divisor }
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
            style in 0usize..5,
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
                let inputs = case.inputs(range[0]..range[1]);
                acc.mix(range[1] - range[0], &inputs, case.divisor, case.out, &mut out);
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

    /// Inputs and output all 16-bit (the paired layout, with a linear last element
    /// at odd lengths), at every length and number of inputs.
    #[test]
    fn sixteen_bit_formats_every_length() {
        for out in [F16, BF16] {
            for len in LENS {
                for k in 1..=9 {
                    let mut case = case(len as u64 * 37 + k as u64, len, k, out, 2);
                    for (i, input) in case.inputs.iter_mut().enumerate() {
                        let dtype = [F16, BF16][(i + len) % 2];
                        input.buffer = respell(input, len, dtype);
                        input.dtype = dtype;
                    }
                    case.check(&case.run());
                }
            }
        }
    }

    /// The baseline build (SSE2, compiled here without the runtime dispatch) gives
    /// the same bytes as the dispatched one (AVX-512 or AVX2 on most test machines).
    #[test]
    fn baseline_build_gives_the_same_bits() {
        for seed in 0..64 {
            let len = LENS[seed as usize % LENS.len()];
            let k = seed as usize % 10;
            let case = case(seed, len, k, DTYPES[seed as usize / 16], seed as usize % 5);
            let mut acc = vec![0.0; TILE];
            let mut baseline = vec![0; len * case.out.size()];
            let inputs = case.inputs(0..len);
            super::tiles(&mut acc, len, &inputs, case.divisor, case.out, &mut baseline);
            assert_eq!(baseline, case.run(), "seed {seed}");
        }
    }

    /// Every bf16 and f16 bit pattern widens to its exact value (NaN to a NaN).
    #[test]
    fn every_half_precision_value_widens_exactly() {
        let bits: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        for dtype in [F16, BF16] {
            let inputs = vec![ingredient(dtype, &bits, 1.0)];
            let case = Case { len: 1 << 16, out: F64, inputs, divisor: 1.0 };
            case.check(&case.run());
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
            let one = Case { len, out, inputs: vec![ingredient(F64, &sums, 1.0)], divisor: 1.0 };
            one.check(&one.run());
            let two = Case {
                len,
                out,
                inputs: vec![ingredient(F64, &xs, 1.0), ingredient(F64, &ds, 1.0)],
                divisor: 1.0,
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
                            divisor: 1.0,
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
                divisor: 1.0,
            };
            let got = case.run();
            case.check(&got);
        }
    }

    /// Any count from 3 to 4096 as divisor, every output format, against the
    /// oracle's f64 sum divided by it.
    #[test]
    fn division_by_any_count_rounds_like_the_true_quotient() {
        let mut rng = Rng(13);
        for seed in 0..96 {
            let out = DTYPES[seed % 4];
            let mut case = case(rng.next(), 3 * TILE + 5, 1 + seed % 4, out, 4);
            case.divisor = (3 + rng.below(4094)) as f64;
            case.check(&case.run());
        }
    }

    /// The mean of n inputs whose exact mean lies exactly halfway between two
    /// neighbours of the output format (built on purpose), at n = 3, 5 and 10:
    /// `(Σ xᵢ)/n` rounds it to even, as the exact mean requires, and counts no
    /// non-finite value; `Σ fl(1/n)·xᵢ` (the weights as doubles) does not. The
    /// reference is exact integer arithmetic on the values' bits.
    #[test]
    fn equal_weights_give_the_correctly_rounded_mean_at_ties() {
        let mut rng = Rng(11);
        for n in [3usize, 5, 10] {
            for out in [F32, BF16, F16] {
                let f = Format::of(out);
                // Every input a multiple of u/2 (u: the output's spacing at 1..2)
                // near 1.5, with the sum an odd multiple of n·u/2: the mean is then
                // an odd multiple of u/2, a tie.
                let half = pow2(-(f.man as i32) - 1);
                let len = 999;
                let mut columns = vec![Vec::with_capacity(len); n];
                for _ in 0..len {
                    let mut units: Vec<i64> = (0..n)
                        .map(|_| (3i64 << f.man) + rng.below(1 << (f.man - 2)) as i64)
                        .collect();
                    let sum: i64 = units.iter().sum();
                    let target = {
                        let q = sum.div_euclid(n as i64);
                        if q % 2 == 0 {
                            q + 1
                        } else {
                            q
                        }
                    };
                    units[0] += target * n as i64 - sum;
                    for (c, u) in columns.iter_mut().zip(&units) {
                        c.push(*u as f64 * half);
                    }
                }
                // Inputs wider than the output, so that they hold the half units.
                let wide = if out == F32 { F64 } else { F32 };
                let inputs: Vec<Ingredient> = columns
                    .iter()
                    .map(|c| {
                        let bytes: Vec<u8> = c
                            .iter()
                            .flat_map(|&x| near(wide, x).to_le_bytes()[..wide.size()].to_vec())
                            .collect();
                        ingredient(wide, &bytes, 1.0)
                    })
                    .collect();
                let exact = Case { len, out, inputs, divisor: n as f64 };
                let got = exact.run();
                let mut decimal_wrong = 0;
                let fl = Case {
                    len,
                    out,
                    inputs: exact
                        .inputs
                        .iter()
                        .map(|i| Ingredient { weight: 1.0 / n as f64, ..Ingredient::clone_of(i) })
                        .collect(),
                    divisor: 1.0,
                };
                let naive = fl.run();
                for j in 0..len {
                    // The exact mean in units of u/2 is odd: round to the even
                    // neighbour in units of u.
                    let units: i64 =
                        columns.iter().map(|c| (c[j] / half) as i64).sum::<i64>() / n as i64;
                    let down = (units - 1) / 2;
                    let want_units = if down % 2 == 0 { down } else { down + 1 };
                    let want = want_units as f64 * 2.0 * half;
                    let size = out.size();
                    let value = |bytes: &[u8]| decode(out, &bytes[j * size..(j + 1) * size])[0];
                    assert_eq!(value(&got), want, "n = {n}, {out:?}, element {j}");
                    if value(&naive) != want {
                        decimal_wrong += 1;
                    }
                }
                // Weights of 1/n as doubles miss some of these ties (n = 3, 5, 10:
                // fl(1/n) ≠ 1/n), which is why equal weights are divided instead.
                assert!(decimal_wrong > 0, "n = {n}, {out:?}: the naive sum got every tie");
            }
        }
    }
}
