//! A convolution split into bands of output rows on rayon's threads (host builds, feature
//! `threads`). Every band is computed exactly as the same rows of a whole run, so the output is
//! the same, bit for bit, on any number of threads; each band writes its own part of the
//! output (NHWC rows are contiguous), so no band waits on another.

use core::ops::Range;

use rayon::prelude::*;

use super::ConvParams;
use crate::KernelError;

/// Runs `band(rows, output_rows)` for `threads` bands of `params`'s output rows on the current
/// rayon pool (one band per thread, fewer when the output has fewer rows). `output` is the
/// whole output.
pub fn conv2d_on_threads(
    params: &ConvParams,
    output: &mut [i8],
    threads: usize,
    band: impl Fn(Range<usize>, &mut [i8]) -> Result<(), KernelError> + Sync,
) -> Result<(), KernelError> {
    let row_len = params.output_width * params.output_channels;
    if row_len == 0 || output.len() != params.output_height * row_len {
        return Err(KernelError::ShapeMismatch);
    }
    let bands = threads.clamp(1, params.output_height);
    let rows_per_band = params.output_height.div_ceil(bands);
    output
        .par_chunks_mut(rows_per_band * row_len)
        .enumerate()
        .try_for_each(|(i, rows)| {
            let start = i * rows_per_band;
            band(start..start + rows.len() / row_len, rows)
        })
}
