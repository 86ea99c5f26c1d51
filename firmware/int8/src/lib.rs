//! scanside's int8 inference core: integer arithmetic and kernels shared, bit for bit, by the
//! Cortex-M firmware and the host.
//!
//! `no_std` and allocation-free: every kernel takes caller-owned slices and an options struct,
//! validates every length before touching memory, and reports problems through fieldless error
//! enums instead of panicking. Per-channel scales are data (fixed-point multiplier + shift pairs
//! precomputed at export by [`arith::quantize_multiplier`]); the arithmetic follows TensorFlow Lite's
//! reference kernels so the results can be compared with any TFLite-compatible engine.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
// The kernels index slices whose lengths were all checked up front.
#![warn(missing_docs)]

pub mod arith;
pub mod blob;
pub mod engine;
pub mod kernels;
#[cfg(test)]
pub(crate) mod testutil;
pub mod vectors;

pub use kernels::fully_connected::{fully_connected, FullyConnectedParams, PerChannelRequant};

/// Why a kernel refused to run. Fieldless so it is cheap on a microcontroller and loggable with
/// defmt; the caller knows which layer it was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KernelError {
    /// A slice length does not match the shape given in the options.
    ShapeMismatch,
    /// A requantisation shift lies outside `-31..=30`, the range the fixed-point math supports.
    ShiftOutOfRange,
    /// The activation clamp is empty (`min > max`).
    InvalidActivationRange,
}

impl core::fmt::Display for KernelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self {
            KernelError::ShapeMismatch => "a buffer length does not match the layer shape",
            KernelError::ShiftOutOfRange => "a requantisation shift is outside -31..=30",
            KernelError::InvalidActivationRange => "the activation clamp has min > max",
        };
        f.write_str(what)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KernelError {}
