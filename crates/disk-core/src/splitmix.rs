//! A small, fast, seedable pseudo-random generator (SplitMix64) for choices that must be
//! reproducible: benchmark offsets, test and fuzz decisions. Not for anything secret.

/// SplitMix64: each call returns the next value of the sequence `seed` starts.
///
/// ```
/// let mut a = disk_core::SplitMix64::new(7);
/// let mut b = disk_core::SplitMix64::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// ```
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The sequence that starts at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
