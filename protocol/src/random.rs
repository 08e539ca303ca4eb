//! Where the sealing code's random bytes come from.
//!
//! Sealing takes its random source as a parameter, so that known-answer vectors can be made and checked
//! with a fixed source (`protocol/tests/vectors/`), while every real caller passes [`SystemRandom`]. Inside
//! the enclave the system source is the kernel RNG, which the Nitro NSM seeds; nothing random ever comes
//! from the parent.

/// The random source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the random number generator failed")]
pub struct RandomError;

/// A source of random bytes.
pub trait RandomSource: Send + Sync {
    /// Fills `out` with random bytes.
    fn fill(&self, out: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's generator (getrandom), through ring.
#[derive(Debug, Clone)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl SystemRandom {
    pub fn new() -> Self {
        SystemRandom(ring::rand::SystemRandom::new())
    }
}

impl Default for SystemRandom {
    fn default() -> Self {
        Self::new()
    }
}

impl RandomSource for SystemRandom {
    fn fill(&self, out: &mut [u8]) -> Result<(), RandomError> {
        ring::rand::SecureRandom::fill(&self.0, out).map_err(|_| RandomError)
    }
}

/// Random bytes of a fixed size from a source.
pub fn array<const N: usize>(rng: &dyn RandomSource) -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    rng.fill(&mut out)?;
    Ok(out)
}
