//! Deterministic test data.

/// Linear congruential generator (Numerical Recipes constants).
pub struct Lcg(pub u32);

impl Lcg {
    /// Next byte.
    pub fn next_u8(&mut self) -> u8 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (self.0 >> 24) as u8
    }

    /// `n` int8 values.
    pub fn bytes(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next_u8() as i8).collect()
    }
}
