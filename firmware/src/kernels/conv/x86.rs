//! The convolution on x86-64 hosts (feature `std`): AVX2 chosen at run time. [`conv2d_avx2`]
//! is the patch convolution with `vpmaddwd` dot products; [`conv2d_packed`] runs filters
//! repacked once per model ([`PackedFilters`]) eight output channels at a time and requantises
//! them together. Both are bit for bit equal to `conv2d_reference` (tests in the parent
//! module).

use super::{
    conv2d, conv2d_patches, dot_portable, gather_patch, gather_portable, ConvParams, PATCH_MAX,
};
use crate::kernels::fully_connected::PerChannelRequant;
use crate::KernelError;

/// The patch gather with AVX2 written out (16 values per `vpmovsxbw` + `vpaddw`), for the same
/// reason as `neon::gather_neon`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn gather_avx2(dst: &mut [i16], src: &[i8], offset: i16) {
    use core::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let whole = n & !15;
    let offsets = _mm256_set1_epi16(offset);
    for i in (0..whole).step_by(16) {
        #[allow(unsafe_code)]
        // SAFETY: `i + 16 ≤ whole ≤ n`, within both slices (16 bytes read, 32 written);
        // unaligned loads and stores.
        unsafe {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(src.as_ptr().add(i).cast()));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), _mm256_add_epi16(x, offsets));
        }
    }
    gather_portable(&mut dst[whole..n], &src[whole..n], offset);
}

/// The patch dot product with AVX2 written out (16 MACs per `vpmaddwd`), for the same reason as
/// `neon::dot_neon`; chosen at run time by [`conv2d`].
#[target_feature(enable = "avx2")]
#[inline]
fn dot_avx2(patch: &[i16], filter: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    let n = patch.len().min(filter.len());
    let whole = n & !15;
    let mut acc = _mm256_setzero_si256();
    for i in (0..whole).step_by(16) {
        #[allow(unsafe_code)]
        // SAFETY: `i + 16 ≤ whole ≤ n`, within both slices (32 bytes of patch, 16 of filter);
        // unaligned loads.
        let (p, w) = unsafe {
            (
                _mm256_loadu_si256(patch.as_ptr().add(i).cast()),
                _mm_loadu_si128(filter.as_ptr().add(i).cast()),
            )
        };
        // |p| ≤ 383 and |w| ≤ 128: each pair's sum fits the int32 lanes exactly.
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_cvtepi8_epi16(w)));
    }
    let lanes = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32::<0b01_00_11_10>(lanes));
    let lanes = _mm_add_epi32(lanes, _mm_shuffle_epi32::<0b10_11_00_01>(lanes));
    _mm_cvtsi128_si32(lanes).wrapping_add(dot_portable(&patch[whole..n], &filter[whole..n]))
}

/// A convolution's OHWI filters repacked on the host for [`conv2d_packed`]: per block of eight
/// (AVX2) or sixteen (AVX-512 VNNI, for layers of 16 channels or more on CPUs that have it)
/// output channels and per pair of patch positions `(2j, 2j + 1)`, the block's two weights per
/// channel as int16 — one 256- or 512-bit row that `vpmaddwd` / `vpdpwssd` multiplies with the
/// pair broadcast. Built once per model (the blob stays the microcontroller's format; this is
/// host memory).
#[derive(Debug, Clone)]
pub struct PackedFilters {
    channels: usize,
    len: usize,
    pairs: usize,
    /// Channels per block: 8 or 16.
    lanes: usize,
    data: Vec<i16>,
    /// Per block of eight channels, when every channel of the layer scales down (a right
    /// shift): bias, multiplier, `2^e + 1` and `e − 1` per lane, for the vector
    /// requantisation. `None`: the scalar one.
    pub(super) requant: Option<Vec<[[i32; 8]; 4]>>,
}

impl PackedFilters {
    /// Output channels of a block.
    const LANES: usize = 8;

    /// Repacks `channels` filters of `weights.len() / channels` values each, with their bias
    /// and requantisation; `None` when the lengths do not describe `channels` filters.
    pub fn new(
        weights: &[i8],
        channels: usize,
        bias: &[i32],
        requant: PerChannelRequant<'_>,
    ) -> Option<Self> {
        if channels == 0
            || !weights.len().is_multiple_of(channels)
            || bias.len() != channels
            || requant.multipliers.len() != channels
            || requant.shifts.len() != channels
        {
            return None;
        }
        let len = weights.len() / channels;
        let pairs = len.div_ceil(2);
        let lanes = if channels >= 16 && avx512_vnni() {
            16
        } else {
            Self::LANES
        };
        let blocks = channels.div_ceil(lanes);
        let mut data = vec![0_i16; blocks * pairs * 2 * lanes];
        for (c, filter) in weights.chunks_exact(len).enumerate() {
            let (block, lane) = (c / lanes, c % lanes);
            for (k, &w) in filter.iter().enumerate() {
                data[(block * pairs + k / 2) * 2 * lanes + 2 * lane + k % 2] = i16::from(w);
            }
        }
        let blocks = channels.div_ceil(Self::LANES);
        let right_shifts = requant.shifts.iter().all(|&s| (-31..0).contains(&s));
        let requant = right_shifts.then(|| {
            (0..blocks)
                .map(|block| {
                    // Per lane (bias, multiplier, 2^e + 1, e − 1); lanes past the last channel
                    // get multiplier 0 and a shift of 1 (harmless, never stored).
                    let lane = |lane: usize| {
                        let c = block * Self::LANES + lane;
                        if c >= channels {
                            return [0, 0, 3, 0];
                        }
                        let (rounding, high_shift) =
                            crate::arith::right_shift_constants(requant.shifts[c].unsigned_abs());
                        [
                            bias[c],
                            requant.multipliers[c],
                            rounding as i32,
                            high_shift as i32,
                        ]
                    };
                    let per_lane: [[i32; 4]; 8] = core::array::from_fn(lane);
                    core::array::from_fn(|field| per_lane.map(|l| l[field]))
                })
                .collect()
        });
        Some(PackedFilters {
            channels,
            len,
            pairs,
            lanes,
            data,
            requant,
        })
    }

    /// Whether this packing was made from these filters' shape and constants.
    fn matches(&self, p: &ConvParams, bias: &[i32], requant: &PerChannelRequant<'_>) -> bool {
        let Some(lanes) = &self.requant else {
            return self.channels == p.output_channels;
        };
        self.channels == p.output_channels
            && (0..self.channels).all(|c| {
                let block = &lanes[c / Self::LANES];
                let lane = c % Self::LANES;
                let (rounding, high_shift) = if requant.shifts[c] < 0 {
                    crate::arith::right_shift_constants(requant.shifts[c].unsigned_abs())
                } else {
                    (0, u32::MAX)
                };
                block[0][lane] == bias[c]
                    && block[1][lane] == requant.multipliers[c]
                    && block[2][lane] == rounding as i32
                    && block[3][lane] == high_shift as i32
            })
    }
}

/// [`conv2d`] with filters repacked by [`PackedFilters`], bit for bit equal to
/// `conv2d_reference`: per output pixel the patch is gathered once (as in [`conv2d`]), then
/// every block of eight output channels accumulates vertically — per pair of patch values one
/// broadcast, one `vpmaddwd` (16 MACs) and one add, with no horizontal sums — and the eight
/// results are requantised. Falls back to [`conv2d`] without AVX2 or when the packing does not
/// match the layer.
pub fn conv2d_packed(
    params: &ConvParams,
    input: &[i8],
    packed: &PackedFilters,
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    params.check(false, input, weights, bias, &requant, output)?;
    let p = params;
    let fits = packed.matches(p, bias, &requant)
        && packed.len == p.kernel * p.kernel * p.input_channels
        && packed.len <= PATCH_MAX
        && (-255..=255).contains(&p.input_offset);
    if !fits || !std::is_x86_feature_detected!("avx2") {
        return conv2d(params, input, weights, bias, requant, output);
    }
    if packed.lanes == 16 && avx512_vnni() {
        #[allow(unsafe_code)]
        // SAFETY: `conv2d_packed_avx512` requires AVX2 and AVX-512 F/BW/VNNI, checked above.
        unsafe {
            conv2d_packed_avx512(p, input, packed, bias, requant, output);
        }
        return Ok(());
    }
    if packed.lanes != PackedFilters::LANES {
        return conv2d(params, input, weights, bias, requant, output);
    }
    #[allow(unsafe_code)]
    // SAFETY: `conv2d_packed_avx2` only requires the CPU to support AVX2, checked just above.
    unsafe {
        conv2d_packed_avx2(p, input, packed, bias, requant, output);
    }
    Ok(())
}

/// Whether this CPU runs [`conv2d_packed_avx512`] (AVX-512 F, BW and VNNI).
fn avx512_vnni() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// [`conv2d_packed_avx2`] with sixteen output channels per block: per pair of patch values
/// one broadcast and one `vpdpwssd` (32 MACs, multiply and accumulate fused), against the
/// AVX2 loop's broadcast, `vpmaddwd` and add for 16. Each block's two halves are requantised by
/// [`requantize_lanes_avx2`].
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
fn conv2d_packed_avx512(
    p: &ConvParams,
    input: &[i8],
    packed: &PackedFilters,
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) {
    use core::arch::x86_64::*;
    const LANES: usize = 16;
    let mut patch_pairs = vec![0_i32; packed.pairs];
    let offset = p.input_offset as i16;
    let block_len = packed.pairs * 2 * LANES;
    let out_len = p.output_channels;
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            let patch: &mut [i16] = bytemuck::cast_slice_mut(&mut patch_pairs);
            gather_patch(p, input, (oy, ox), &mut patch[..packed.len], |dst, src| {
                gather_avx2(dst, src, offset)
            });
            let pairs: &[i32] = &patch_pairs;
            let out = &mut output[(oy * p.output_width + ox) * out_len..][..out_len];
            for (block, filters) in packed.data.chunks_exact(block_len).enumerate() {
                let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                let rows = filters.as_chunks::<{ 2 * LANES }>().0;
                let mut chunks = pairs.chunks_exact(2).zip(rows.chunks_exact(2));
                for (two, rows) in chunks.by_ref() {
                    #[allow(unsafe_code)]
                    // SAFETY: each row is 32 int16 (64 bytes) read in place; unaligned loads.
                    let (w0, w1) = unsafe {
                        (
                            _mm512_loadu_si512(rows[0].as_ptr().cast()),
                            _mm512_loadu_si512(rows[1].as_ptr().cast()),
                        )
                    };
                    // |x + offset| ≤ 383 and |w| ≤ 128: each lane's pair sum fits int32.
                    even = _mm512_dpwssd_epi32(even, _mm512_set1_epi32(two[0]), w0);
                    odd = _mm512_dpwssd_epi32(odd, _mm512_set1_epi32(two[1]), w1);
                }
                if pairs.len() % 2 == 1 {
                    let (last, row) = (pairs[pairs.len() - 1], &rows[rows.len() - 1]);
                    #[allow(unsafe_code)]
                    // SAFETY: a 32-value row read in place; unaligned load.
                    let w = unsafe { _mm512_loadu_si512(row.as_ptr().cast()) };
                    even = _mm512_dpwssd_epi32(even, _mm512_set1_epi32(last), w);
                }
                let sum = _mm512_add_epi32(even, odd);
                let first = block * LANES;
                let halves = [
                    _mm512_castsi512_si256(sum),
                    _mm512_extracti64x4_epi64::<1>(sum),
                ];
                for (half, lanes) in halves.into_iter().enumerate() {
                    if first + 8 * half < out_len {
                        store_eight(p, packed, (bias, &requant), lanes, first + 8 * half, out);
                    }
                }
            }
        }
    }
}

/// The body of [`conv2d_packed`] (shapes checked by the caller).
#[target_feature(enable = "avx2")]
fn conv2d_packed_avx2(
    p: &ConvParams,
    input: &[i8],
    packed: &PackedFilters,
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) {
    use core::arch::x86_64::*;
    const LANES: usize = PackedFilters::LANES;
    // Heap, sized to the layer (this is the host): zeroing a PATCH_MAX stack buffer per layer
    // cost more than the allocation. int32 storage, viewed as int16, so the pairs are aligned.
    // Even length: an odd filter's last pair ends in a zero weight and a zero value.
    let mut patch_pairs = vec![0_i32; packed.pairs];
    let patch: &mut [i16] = bytemuck::cast_slice_mut(&mut patch_pairs);
    let offset = p.input_offset as i16;
    let block_len = packed.pairs * 2 * LANES;
    let out_len = p.output_channels;
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            gather_patch(p, input, (oy, ox), &mut patch[..packed.len], |dst, src| {
                gather_avx2(dst, src, offset)
            });
            let pairs: &[i32] = bytemuck::cast_slice(&patch[..]);
            let out = &mut output[(oy * p.output_width + ox) * out_len..][..out_len];
            for (block, filters) in packed.data.chunks_exact(block_len).enumerate() {
                let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                let rows = filters.as_chunks::<{ 2 * LANES }>().0;
                // Two accumulators: the adds of consecutive pairs do not wait on each other.
                let mut chunks = pairs.chunks_exact(2).zip(rows.chunks_exact(2));
                for (two, rows) in chunks.by_ref() {
                    #[allow(unsafe_code)]
                    // SAFETY: each row is 16 int16 (32 bytes) read in place; unaligned loads.
                    let (w0, w1) = unsafe {
                        (
                            _mm256_loadu_si256(rows[0].as_ptr().cast()),
                            _mm256_loadu_si256(rows[1].as_ptr().cast()),
                        )
                    };
                    // |x + offset| ≤ 383 and |w| ≤ 128: each lane's pair sum fits int32.
                    even = _mm256_add_epi32(even, _mm256_madd_epi16(_mm256_set1_epi32(two[0]), w0));
                    odd = _mm256_add_epi32(odd, _mm256_madd_epi16(_mm256_set1_epi32(two[1]), w1));
                }
                if pairs.len() % 2 == 1 {
                    let (last, row) = (pairs[pairs.len() - 1], &rows[rows.len() - 1]);
                    #[allow(unsafe_code)]
                    // SAFETY: a 16-value row read in place; unaligned load.
                    let w = unsafe { _mm256_loadu_si256(row.as_ptr().cast()) };
                    even = _mm256_add_epi32(even, _mm256_madd_epi16(_mm256_set1_epi32(last), w));
                }
                let sum = _mm256_add_epi32(even, odd);
                store_eight(p, packed, (bias, &requant), sum, block * LANES, out);
            }
        }
    }
}

/// Requantises the sums of output channels `first..first + 8` (fewer at the layer's end) into
/// `out`: eight at a time with the packing's prepared constants ([`requantize_lanes_avx2`]) when
/// it has them and the output offset is small (the vector form adds it without saturating:
/// exact while |offset| is far below the ±2^30 a requantised value can reach), else channel by
/// channel.
#[target_feature(enable = "avx2")]
fn store_eight(
    p: &ConvParams,
    packed: &PackedFilters,
    (bias, requant): (&[i32], &PerChannelRequant<'_>),
    sums: core::arch::x86_64::__m256i,
    first: usize,
    out: &mut [i8],
) {
    use core::arch::x86_64::*;
    let prepared = packed
        .requant
        .as_ref()
        .filter(|_| p.output_offset.unsigned_abs() <= 1 << 16)
        .and_then(|r| r.get(first / PackedFilters::LANES));
    if let Some(constants) = prepared {
        let clamp = (
            p.output_offset,
            i32::from(p.activation_min),
            i32::from(p.activation_max),
        );
        let values = requantize_lanes_avx2(sums, constants, clamp);
        for (o, &v) in out[first..].iter_mut().zip(&values) {
            *o = v as i8;
        }
        return;
    }
    let mut lanes = [0_i32; 8];
    #[allow(unsafe_code)]
    // SAFETY: `lanes` is 8 int32 (32 bytes); unaligned store.
    unsafe {
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sums);
    }
    for (oc, &sum) in (first..out.len()).zip(&lanes) {
        out[oc] = p.finish(
            bias[oc].wrapping_add(sum),
            requant.multipliers[oc],
            requant.shifts[oc],
        );
    }
}

/// [`ConvParams::finish`] for eight channels at once with the prepared right-shift
/// constants (`lanes`: bias, multiplier, `2^e + 1`, `e − 1`): the formula of
/// [`crate::arith::multiply_by_quantized_multiplier_prepared`] in 64-bit lanes (`vpmuldq` on
/// the even and the odd channels), then offset and clamp. Equal to the scalar path for every
/// input (`vector_requantisation_equals_the_scalar_one`).
#[target_feature(enable = "avx2")]
pub(crate) fn requantize_lanes_avx2(
    sum: core::arch::x86_64::__m256i,
    lanes: &[[i32; 8]; 4],
    (offset, low, high): (i32, i32, i32),
) -> [i32; 8] {
    use core::arch::x86_64::*;
    #[allow(unsafe_code)]
    // SAFETY: each `lanes` row is 8 int32 (32 bytes), read in place; unaligned loads.
    let [bias, multiplier, rounding, high_shift] =
        lanes.map(|row| unsafe { _mm256_loadu_si256(row.as_ptr().cast()) });
    let x = _mm256_add_epi32(sum, bias);
    // q = (2^e + 1) − 2n, n = 1 where x and m differ in sign (as unsigned 32-bit values).
    let differ = _mm256_srai_epi32::<31>(_mm256_xor_si256(x, multiplier));
    let q = _mm256_add_epi32(rounding, _mm256_slli_epi32::<1>(differ));
    // x·m + q·2^30 in 64 bits, even channels in the low halves, odd ones shifted down.
    let low_words = _mm256_set1_epi64x(0xFFFF_FFFF);
    let even = _mm256_add_epi64(
        _mm256_mul_epi32(x, multiplier),
        _mm256_slli_epi64::<30>(_mm256_and_si256(q, low_words)),
    );
    let odd = _mm256_add_epi64(
        _mm256_mul_epi32(
            _mm256_srli_epi64::<32>(x),
            _mm256_srli_epi64::<32>(multiplier),
        ),
        _mm256_slli_epi64::<30>(_mm256_srli_epi64::<32>(q)),
    );
    // The high words: the even ones moved down into their channel's slot, the odd ones
    // already there.
    let high_words = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
    let scaled = _mm256_srav_epi32(high_words, high_shift);
    let out = _mm256_min_epi32(
        _mm256_max_epi32(
            _mm256_add_epi32(scaled, _mm256_set1_epi32(offset)),
            _mm256_set1_epi32(low),
        ),
        _mm256_set1_epi32(high),
    );
    let mut values = [0_i32; 8];
    #[allow(unsafe_code)]
    // SAFETY: `values` is 8 int32 (32 bytes); unaligned store.
    unsafe {
        _mm256_storeu_si256(values.as_mut_ptr().cast(), out);
    }
    values
}

/// [`conv2d_patches`] compiled for AVX2 (16 int16 MACs per `vpmaddwd` instead of SSE2's 8):
/// the host build targets baseline x86-64, so the wider code is chosen at run time.
#[target_feature(enable = "avx2")]
pub(super) fn conv2d_avx2(
    params: &ConvParams,
    input: &[i8],
    weights: &[i8],
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    conv2d_patches(
        params,
        input,
        weights,
        bias,
        requant,
        output,
        (|d, s, o| gather_avx2(d, s, o), |p, f| dot_avx2(p, f)),
    )
}
