//! DARE's random drop masks, as a pure function of the seed, the ingredient, the
//! tensor's name and the element's index — so a mask is the same whatever the
//! chunking, the thread count or the order the chunks run in, and anyone can
//! recompute it.
//!
//! Each element draws a 64-bit number from a counter-based generator (the
//! SplitMix64 finaliser over a per-stream key plus the element's index times the
//! golden-ratio increment); its top 53 bits, as a fraction in `[0, 1)`, are kept
//! when below the density. The stream key mixes the seed, the ingredient's
//! position in the recipe and an FNV-1a hash of the tensor's name.

/// The SplitMix64 output function: a bijection of `u64` whose outputs pass
/// BigCrush for consecutive inputs.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over the name's bytes.
fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The mask of one ingredient's copy of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropMask {
    key: u64,
    /// Elements survive when their draw is below this many 2⁻⁵³ steps.
    below: u64,
}

impl DropMask {
    /// The mask that keeps a `density` fraction of the elements of `tensor` in
    /// ingredient `ingredient` (its position in the recipe) under `seed`.
    pub fn new(seed: u64, ingredient: usize, tensor: &str, density: f64) -> Self {
        let key = mix(seed ^ mix(fnv1a(tensor) ^ mix(ingredient as u64 + 1)));
        // density·2⁵³ is exact for densities that are multiples of 2⁻⁵³ and
        // rounds toward zero otherwise; 1 keeps everything.
        DropMask { key, below: threshold(density) }
    }

    /// Whether element `index` (row-major, from the tensor's start) survives.
    #[inline(always)]
    pub fn keeps(&self, index: u64) -> bool {
        self.draw(index) < self.below
    }

    /// Element `index`'s draw: 53 random bits, a fraction of 2⁵³ uniform in
    /// `[0, 1)`. The element survives a keep probability `p` when the draw is
    /// below [`threshold`]`(p)`.
    #[inline(always)]
    pub fn draw(&self, index: u64) -> u64 {
        mix(self.key.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))) >> 11
    }

    /// The mask's threshold: elements whose draw is below it survive.
    #[inline(always)]
    pub fn below(&self) -> u64 {
        self.below
    }
}

/// The draw below which an element survives with probability `p` (the fraction
/// `p·2⁵³`, rounded toward zero; 0 for `p ≤ 0`, 2⁵³ for `p ≥ 1`).
#[inline(always)]
pub fn threshold(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64
}

impl DropMask {
    /// The key of the stream, for a mask whose probability varies by element
    /// (DELLA): the same stream as [`DropMask::new`] for the same seed,
    /// ingredient and tensor.
    pub fn stream(seed: u64, ingredient: usize, tensor: &str) -> Self {
        DropMask::new(seed, ingredient, tensor, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_about_the_density_and_differ_between_streams() {
        let n = 200_000u64;
        for density in [0.1, 0.5, 0.9] {
            let m = DropMask::new(7, 0, "layer.weight", density);
            let kept = (0..n).filter(|&i| m.keeps(i)).count() as f64 / n as f64;
            assert!((kept - density).abs() < 0.005, "{density}: kept {kept}");
        }
        let a = DropMask::new(7, 0, "w", 0.5);
        let b = DropMask::new(7, 1, "w", 0.5);
        let c = DropMask::new(8, 0, "w", 0.5);
        let agree = |x: &DropMask, y: &DropMask| {
            (0..n).filter(|&i| x.keeps(i) == y.keeps(i)).count() as f64 / n as f64
        };
        assert!((agree(&a, &b) - 0.5).abs() < 0.01);
        assert!((agree(&a, &c) - 0.5).abs() < 0.01);
    }

    #[test]
    fn density_one_keeps_all_and_zero_keeps_none() {
        let all = DropMask::new(1, 2, "t", 1.0);
        let none = DropMask::new(1, 2, "t", 0.0);
        assert!((0..10_000).all(|i| all.keeps(i) && !none.keeps(i)));
    }
}
