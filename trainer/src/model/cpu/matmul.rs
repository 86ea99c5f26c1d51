//! Matrix products on the calling thread: the safe wrapper around the gemm crate that the
//! im2col convolutions ([`super::conv`]) run.
//!
//! One of the trainer's two `unsafe` exceptions that are not architecture code (listed in the
//! workspace `Cargo.toml` and `tools/check_structure.py`): `gemm::gemm` is an `unsafe fn` taking
//! raw pointers and strides. [`matmul`] checks every operand's extent against its slice before
//! the call, so its callers stay safe. It must never take pointers it did not check.

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, all three given by their row and column strides, on
/// the calling thread (the callers parallelise over chunks of samples).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    [m, n, k]: [usize; 3],
    (dst, [dst_rs, dst_cs]): (&mut [f32], [usize; 2]),
    lhs: &[f32],
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: &[f32],
    [rhs_rs, rhs_cs]: [usize; 2],
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(
        dst.len() >= last(m, n, dst_rs, dst_cs),
        "matmul: destination too short"
    );
    assert!(
        lhs.len() >= last(m, k, lhs_rs, lhs_cs),
        "matmul: lhs too short"
    );
    assert!(
        rhs.len() >= last(k, n, rhs_rs, rhs_cs),
        "matmul: rhs too short"
    );
    // Rows laid out one after another, or columns: no two destination elements share a place.
    let distinct = match (m > 1, n > 1) {
        (false, false) => true,
        (false, true) => dst_cs >= 1,
        (true, false) => dst_rs >= 1,
        (true, true) => {
            (dst_cs >= 1 && dst_rs >= n.saturating_mul(dst_cs))
                || (dst_rs >= 1 && dst_cs >= m.saturating_mul(dst_rs))
        }
    };
    assert!(distinct, "matmul: destination strides overlap");
    // gemm's entry point is an `unsafe fn` (this file is in tools/check_structure.py's
    // ALLOWED_UNSAFE).
    #[allow(unsafe_code)]
    // SAFETY: the asserts above keep every element gemm reads or writes inside its slice
    // (each operand is accessed at (i·rs + j·cs) for i, j within its shape) and give each
    // destination element its own place; the slices do not alias (one &mut, two &), and gemm
    // runs on this thread only.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
