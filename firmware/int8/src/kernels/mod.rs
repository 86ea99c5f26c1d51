//! int8 kernels as free functions over NHWC tensors (batch 1), all with one layout.
//!
//! A kernel with architecture-specific code is a folder: `<kernel>/mod.rs` holds the generic
//! reference kernel (safe, plain loops: the definition every optimised kernel is tested against
//! bit for bit), the portable kernel and the dispatch; `<kernel>/x86_64.rs` (AVX2/AVX-512,
//! host builds with `std`, chosen at run time), `<kernel>/aarch64.rs` (NEON) and
//! `<kernel>/dsp.rs` (Cortex-M4/M7 DSP instructions, feature `dsp`) hold the architecture code,
//! each gated by `cfg` in `mod.rs`. `unsafe` lives only in those architecture files: each
//! exposes safe entry points that check the CPU features themselves (`is_x86_feature_detected!`,
//! cached by std; or the build's target features) and return `None` where they do not apply,
//! so `mod.rs` dispatches without `unsafe`. A kernel without architecture code is one file.

pub mod add;
pub mod conv;
pub mod depthwise;
pub mod fully_connected;
pub mod pool;
pub mod softmax;
