//! Seeded, deterministic initialisation (timm's ConvNeXt scheme): weights trunc-normal with σ = 0.02, biases
//! zero, norm weights one, layer scale 10⁻⁶, GRN γ = β = 0. Values are drawn on the host and uploaded once.

/// splitmix64: a small, fast, well-mixed generator; the same seed always gives the same network.
#[derive(Clone, Debug)]
pub struct InitRng(u64);

impl InitRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        InitRng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: log is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// `n` draws of N(0, std²) truncated to ±2·std by resampling. (timm's `trunc_normal_` truncates at ±2
    /// absolute, which never binds for std = 0.02; ±2σ is the usual intent and keeps tails bounded.)
    pub fn trunc_normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| loop {
                let z = self.normal();
                if z.abs() <= 2.0 {
                    break (z * std) as f32;
                }
            })
            .collect()
    }
    /// `n` draws uniform in [−bound, bound).
    pub fn uniform_vec(&mut self, n: usize, bound: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-bound, bound) as f32).collect()
    }
    /// A child generator for a sub-module (so adding a layer does not reshuffle the others' draws).
    pub fn fork(&mut self) -> InitRng {
        InitRng(self.next_u64())
    }
}

/// A seed derived from a base seed and a name (FNV-1a), e.g. one adapter seed per layer path.
pub fn seed_for(base: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ base;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
