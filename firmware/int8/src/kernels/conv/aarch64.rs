//! NEON versions of the patch convolution's dot product and gather (aarch64 hosts, e.g.
//! Jetson): the edge binary is built for size, where the compiler does not vectorise the
//! portable loops. Bit for bit equal to them (tests run under qemu-aarch64 in CI).
//!
//! One of the per-architecture files where `unsafe` is allowed (NEON loads and stores; every
//! block with a `// SAFETY:` line). Compiled only for builds with NEON enabled (the parent's
//! `cfg`), so its safe entry points need no run-time check.
#![allow(unsafe_code)]

use super::{dot_portable, gather_portable};

/// `Σ p·w` of a patch and a filter with NEON ([`dot_neon`]).
#[inline(always)]
pub(super) fn dot(patch: &[i16], filter: &[i8]) -> i32 {
    // SAFETY: this module is compiled only where the build enables NEON
    // (`target_feature = "neon"`, aarch64's baseline).
    unsafe { dot_neon(patch, filter) }
}

/// `dst[i] = src[i] + offset` with NEON ([`gather_neon`]).
#[inline(always)]
pub(super) fn gather(dst: &mut [i16], src: &[i8], offset: i16) {
    // SAFETY: this module is compiled only where the build enables NEON
    // (`target_feature = "neon"`, aarch64's baseline).
    unsafe { gather_neon(dst, src, offset) }
}

/// The patch dot product with NEON written out (8 MACs per `SMLAL`/`SMLAL2` pair): the edge binary is built
/// for size, where the compiler does not vectorise the portable loop.
#[target_feature(enable = "neon")]
#[inline]
fn dot_neon(patch: &[i16], filter: &[i8]) -> i32 {
    use core::arch::aarch64::*;
    let n = patch.len().min(filter.len());
    let whole = n & !7;
    let (mut low, mut high) = (vdupq_n_s32(0), vdupq_n_s32(0));
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 ≤ whole ≤ n`, within both slices; NEON loads need no alignment.
        let (p, w) = unsafe {
            (
                vld1q_s16(patch.as_ptr().add(i)),
                vmovl_s8(vld1_s8(filter.as_ptr().add(i))),
            )
        };
        low = vmlal_s16(low, vget_low_s16(p), vget_low_s16(w));
        high = vmlal_high_s16(high, p, w);
    }
    let total = vaddvq_s32(vaddq_s32(low, high));
    total.wrapping_add(dot_portable(&patch[whole..n], &filter[whole..n]))
}

/// The patch gather with NEON written out (8 values per `SXTL` + `ADD`): in the size-optimised edge
/// build the scalar loop cost as much as the vectorised dot products it feeds.
#[target_feature(enable = "neon")]
#[inline]
fn gather_neon(dst: &mut [i16], src: &[i8], offset: i16) {
    use core::arch::aarch64::*;
    let n = dst.len().min(src.len());
    let whole = n & !7;
    let offsets = vdupq_n_s16(offset);
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 ≤ whole ≤ n`, within both slices; NEON loads and stores need no
        // alignment.
        unsafe {
            let x = vmovl_s8(vld1_s8(src.as_ptr().add(i)));
            vst1q_s16(dst.as_mut_ptr().add(i), vaddq_s16(x, offsets));
        }
    }
    gather_portable(&mut dst[whole..n], &src[whole..n], offset);
}
