//! The model's kernels on burn's CPU training backend (`Autodiff<Flex>`, feature `flex`):
//! the convolutions forward and backward ([`conv`], im2col + matrix products, portable), the
//! direct 3×3 convolution ([`direct`], x86-64 with AVX2), fused BatchNorm + ReLU ([`norm`],
//! plain loops compiled per instruction set by pulp at run time), and what they share: the
//! unzeroed output buffers ([`output_buffer`]) and the matrix product ([`matmul`]).
//!
//! The kernel pattern (as in the int8 core's `kernels`): a kernel with architecture code is a
//! folder whose `mod.rs` holds the portable code and the dispatch and whose `x86_64.rs` (or
//! `aarch64.rs`) holds the intrinsics behind safe entry points that check the CPU features
//! themselves; `unsafe` lives only there. The two exceptions, [`output_buffer`] and
//! [`matmul`], are listed with their reasons in the workspace `Cargo.toml` and in
//! `tools/check_structure.py`. Nothing here may change a result's summation order: the
//! training run's numbers for a seed depend on it.

#[cfg(feature = "flex")]
pub mod conv;
pub mod direct;
#[cfg(feature = "flex")]
mod matmul;
#[cfg(feature = "flex")]
pub mod norm;
mod output_buffer;
