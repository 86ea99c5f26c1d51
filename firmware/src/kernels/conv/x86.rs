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

/// Output channels per block of a [`PackedFilters`]: one 256-bit register of int32 sums.
const LANES: usize = 8;

/// Output pixels per pass of [`conv2d_quads_vnni`]: each weight row loaded feeds this many
/// pixels' accumulators, so the layer's weights are read once per four pixels, not per pixel
/// (measured: eight per pass was slower). The loop is written out for four.
const PIXELS: usize = 4;

/// A convolution's OHWI filters repacked on the host for [`conv2d_packed`], in blocks of eight
/// output channels. Built once per model (the blob stays the microcontroller's format; this is
/// host memory).
#[derive(Debug, Clone)]
pub struct PackedFilters {
    channels: usize,
    len: usize,
    weights: Packing,
    /// Per block of eight channels, when every channel of the layer scales down (a right
    /// shift): bias, multiplier, `2^e + 1` and `e − 1` per lane, for the vector
    /// requantisation. `None`: the scalar one.
    pub(super) requant: Option<Vec<[[i32; 8]; 4]>>,
}

/// One 256-bit row of packed weights, aligned so that no load splits a cache line (with
/// `Vec<i8>` rows the engine ran at two speeds, 0.13 or 0.20 ms, by where the allocator put
/// them).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Row<T, const N: usize>([T; N]);

/// How a [`PackedFilters`] lays its weights out, by the instructions that will multiply them.
#[derive(Debug, Clone)]
enum Packing {
    /// AVX2 (`vpmaddwd`): per block and per pair of patch positions `(2j, 2j + 1)`, each
    /// channel's two weights as int16 — one 256-bit row multiplied with the pair broadcast.
    Pairs {
        pairs: usize,
        data: Vec<Row<i16, 16>>,
    },
    /// AVX-512 VNNI (`vpdpbusd`): the input channels padded to a multiple of four (`cin4`,
    /// zero weights in the extra ones), then per block and per quad of filter positions
    /// `4j..4j + 4` in `[ky][kx][cin4]` order, each channel's four weights as int8 — one 32-byte
    /// row multiplied with four unsigned input bytes broadcast — and each channel's `Σw`, which
    /// turns the unsigned sums back into the offset-applied ones.
    Quads {
        cin4: usize,
        data: Vec<Row<i8, 32>>,
        weight_sums: Vec<i32>,
    },
}

impl PackedFilters {
    /// Repacks `channels` OHWI filters of `weights.len() / channels` values over
    /// `input_channels`, with their bias and requantisation, for the best kernel this CPU has;
    /// `None` when the lengths do not describe such filters.
    pub fn new(
        weights: &[i8],
        (channels, input_channels): (usize, usize),
        bias: &[i32],
        requant: PerChannelRequant<'_>,
    ) -> Option<Self> {
        let quads = avx512_vnni();
        Self::with_layout(weights, (channels, input_channels), bias, requant, quads)
    }

    /// [`PackedFilters::new`] with the layout chosen by the caller: `quads` for the VNNI kernel,
    /// else pairs for the AVX2 one.
    pub(super) fn with_layout(
        weights: &[i8],
        (channels, input_channels): (usize, usize),
        bias: &[i32],
        requant: PerChannelRequant<'_>,
        quads: bool,
    ) -> Option<Self> {
        if channels == 0
            || input_channels == 0
            || !weights.len().is_multiple_of(channels)
            || !(weights.len() / channels).is_multiple_of(input_channels)
            || bias.len() != channels
            || requant.multipliers.len() != channels
            || requant.shifts.len() != channels
        {
            return None;
        }
        let len = weights.len() / channels;
        let blocks = channels.div_ceil(LANES);
        // Positions past `len` (the last pair or quad's tail) and lanes past the last channel
        // keep zero weights: whatever the patch holds there contributes nothing.
        let packed_weights = if quads {
            let cin4 = input_channels.next_multiple_of(4);
            let quads = len / input_channels * cin4 / 4;
            let mut data = vec![Row([0_i8; 32]); blocks * quads];
            for (c, filter) in weights.chunks_exact(len).enumerate() {
                let (block, lane) = (c / LANES, c % LANES);
                for (k, &w) in filter.iter().enumerate() {
                    let k = k / input_channels * cin4 + k % input_channels;
                    data[block * quads + k / 4].0[4 * lane + k % 4] = w;
                }
            }
            let weight_sums = weights
                .chunks_exact(len)
                .map(|filter| filter.iter().map(|&w| i32::from(w)).sum())
                .collect();
            Packing::Quads {
                cin4,
                data,
                weight_sums,
            }
        } else {
            let pairs = len.div_ceil(2);
            let mut data = vec![Row([0_i16; 16]); blocks * pairs];
            for (c, filter) in weights.chunks_exact(len).enumerate() {
                let (block, lane) = (c / LANES, c % LANES);
                for (k, &w) in filter.iter().enumerate() {
                    data[block * pairs + k / 2].0[2 * lane + k % 2] = i16::from(w);
                }
            }
            Packing::Pairs { pairs, data }
        };
        let right_shifts = requant.shifts.iter().all(|&s| (-31..0).contains(&s));
        let requant = right_shifts.then(|| {
            (0..blocks)
                .map(|block| {
                    // Per lane (bias, multiplier, 2^e + 1, e − 1); lanes past the last channel
                    // get multiplier 0 and a shift of 1 (harmless, never stored).
                    let lane = |lane: usize| {
                        let c = block * LANES + lane;
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
            weights: packed_weights,
            requant,
        })
    }

    /// Whether this packing was made from these filters' shape and constants.
    fn matches(&self, p: &ConvParams, bias: &[i32], requant: &PerChannelRequant<'_>) -> bool {
        let shape = self.channels == p.output_channels
            && self.len == p.kernel * p.kernel * p.input_channels
            && match self.weights {
                Packing::Quads { cin4, .. } => cin4 == p.input_channels.next_multiple_of(4),
                Packing::Pairs { .. } => true,
            };
        let Some(lanes) = &self.requant else {
            return shape;
        };
        shape
            && (0..self.channels).all(|c| {
                let block = &lanes[c / LANES];
                let lane = c % LANES;
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
/// `conv2d_reference`: every block of eight output channels accumulates vertically, with no
/// horizontal sums, and the eight results are requantised together. With AVX-512 VNNI
/// ([`conv2d_quads_vnni`]) four patch values and four pixels per weight row; else AVX2
/// ([`conv2d_packed_avx2`]) two patch values per row, one pixel at a time. Falls back to
/// [`conv2d`] without AVX2 or when the packing does not match the layer.
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
        && packed.len <= PATCH_MAX
        && (-255..=255).contains(&p.input_offset);
    if !fits || !std::is_x86_feature_detected!("avx2") {
        return conv2d(params, input, weights, bias, requant, output);
    }
    match &packed.weights {
        // Offsets of int8 zero points (−127..=128) encode real zero as an unsigned byte.
        Packing::Quads { .. } if avx512_vnni() && (-127..=128).contains(&p.input_offset) => {
            #[allow(unsafe_code)]
            // SAFETY: `conv2d_quads_vnni` requires AVX2 and AVX-512 F/VL/VNNI, checked above.
            unsafe {
                conv2d_quads_vnni(p, input, packed, bias, requant, output);
            }
        }
        Packing::Pairs { .. } => {
            #[allow(unsafe_code)]
            // SAFETY: `conv2d_packed_avx2` only requires the CPU to support AVX2, checked above.
            unsafe {
                conv2d_packed_avx2(p, input, packed, bias, requant, output);
            }
        }
        Packing::Quads { .. } => return conv2d(params, input, weights, bias, requant, output),
    }
    Ok(())
}

/// Whether this CPU runs [`conv2d_quads_vnni`] (AVX2, AVX-512 F, VL and VNNI).
pub(super) fn avx512_vnni() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// `dst[i] = src[i] + 128` as unsigned bytes (the sign bit flipped): the input encoding of
/// [`conv2d_quads_vnni`], 32 bytes per AVX2 `vpxor`.
#[target_feature(enable = "avx2")]
#[inline]
fn flip_sign_avx2(dst: &mut [u8], src: &[i8]) {
    use core::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let whole = n & !31;
    let signs = _mm256_set1_epi8(i8::MIN);
    for i in (0..whole).step_by(32) {
        #[allow(unsafe_code)]
        // SAFETY: `i + 32 ≤ whole ≤ n`, within both slices (32 bytes each); unaligned.
        unsafe {
            let x = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), _mm256_xor_si256(x, signs));
        }
    }
    for (d, &x) in dst[whole..n].iter_mut().zip(&src[whole..n]) {
        *d = (x as u8) ^ 0x80;
    }
}

/// The VNNI body of [`conv2d_packed`] (shapes checked by the caller), as an implicit matrix
/// product: the input is copied once per layer into unsigned bytes `u = x + 128` with the
/// padding around it (real zero, `128 − offset`) and its channels padded to `cin4`, so each
/// kernel row of a patch is `k·cin4` contiguous bytes read in place — no per-pixel gather.
/// One `vpdpbusd` multiplies four of them with four int8 weights for each of eight channels
/// and adds the 32 products (32 MACs; `vpdpwssd` on int16 does 16). Exact: `Σ u·w + (offset −
/// 128)·Σw = Σ (x + offset)·w` in wrapping int32, with `Σw` per channel from the packing. Four
/// pixels share each weight row loaded.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn conv2d_quads_vnni(
    p: &ConvParams,
    input: &[i8],
    packed: &PackedFilters,
    bias: &[i32],
    requant: PerChannelRequant<'_>,
    output: &mut [i8],
) {
    use core::arch::x86_64::*;
    let Packing::Quads {
        cin4,
        data,
        weight_sums,
    } = &packed.weights
    else {
        return;
    };
    let (cin, cin4, k) = (p.input_channels, *cin4, p.kernel);
    let padded_width = p.input_width + 2 * p.padding;
    let padded_height = p.input_height + 2 * p.padding;
    // int32 storage viewed as bytes, so every quad is one aligned broadcast (`cin4` is a
    // multiple of four). Heap, sized to the layer (this is the host).
    let mut padded = vec![0_u32; padded_height * padded_width * cin4 / 4];
    {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut padded);
        bytes.fill((128 - p.input_offset) as u8);
        for (y, row) in input
            .chunks_exact(p.input_width * cin)
            .take(p.input_height)
            .enumerate()
        {
            let at = ((y + p.padding) * padded_width + p.padding) * cin4;
            let dst = &mut bytes[at..at + p.input_width * cin4];
            if cin == cin4 {
                flip_sign_avx2(dst, row);
            } else {
                for (d, s) in dst.chunks_exact_mut(cin4).zip(row.chunks_exact(cin)) {
                    flip_sign_avx2(&mut d[..cin], s);
                }
            }
        }
    }
    let blocks = packed.channels.div_ceil(LANES);
    let correction: Vec<i32> = (0..blocks * LANES)
        .map(|c| {
            weight_sums
                .get(c)
                .map_or(0, |&s| s.wrapping_mul(p.input_offset - 128))
        })
        .collect();
    let vector = vector_constants(p, packed);
    // Quads per kernel row of a patch, and between two input rows of the padded copy.
    let row_quads = k * cin4 / 4;
    let line_quads = padded_width * cin4 / 4;
    let pixels = p.output_height * p.output_width;
    let out_len = p.output_channels;
    for first in (0..pixels).step_by(PIXELS) {
        let count = PIXELS.min(pixels - first);
        // Where each pixel's patch starts in `padded`; the last pass may hold fewer pixels,
        // the others repeat its first (their sums are computed and dropped). Plain loops, no
        // closures: a closure does not inherit this function's target features and was not
        // inlined (18 % of the engine's time in calls).
        let mut starts = [0_usize; PIXELS];
        for (i, start) in starts.iter_mut().enumerate() {
            let pixel = first + if i < count { i } else { 0 };
            let (oy, ox) = (pixel / p.output_width, pixel % p.output_width);
            *start = (oy * p.stride * padded_width + ox * p.stride) * cin4 / 4;
        }
        for (block, block_rows) in data.chunks_exact(k * row_quads).enumerate() {
            let mut sums = [_mm256_setzero_si256(); PIXELS];
            let mut odd = [_mm256_setzero_si256(); PIXELS];
            let kernel_rows = block_rows.chunks_exact(row_quads);
            for (ky, rows) in kernel_rows.enumerate() {
                let line = ky * line_quads;
                let [a, b, c, d] = starts;
                let (a, b) = (
                    &padded[a + line..][..row_quads],
                    &padded[b + line..][..row_quads],
                );
                let (c, d) = (
                    &padded[c + line..][..row_quads],
                    &padded[d + line..][..row_quads],
                );
                // Two quads per step into two sets of sums: eight independent `vpdpbusd`
                // chains, enough to cover the instruction's latency (four were not).
                let mut pairs = rows.chunks_exact(2).zip(a.chunks_exact(2)).zip(
                    b.chunks_exact(2)
                        .zip(c.chunks_exact(2))
                        .zip(d.chunks_exact(2)),
                );
                for ((two_rows, qa), ((qb, qc), qd)) in pairs.by_ref() {
                    #[allow(unsafe_code)]
                    // SAFETY: each row is 32 bytes aligned to 32 (`Row`), read in place.
                    let (w0, w1) = unsafe {
                        (
                            _mm256_load_si256(two_rows[0].0.as_ptr().cast()),
                            _mm256_load_si256(two_rows[1].0.as_ptr().cast()),
                        )
                    };
                    // Unsigned × signed bytes, four products per lane summed into int32.
                    sums[0] = _mm256_dpbusd_epi32(sums[0], _mm256_set1_epi32(qa[0] as i32), w0);
                    sums[1] = _mm256_dpbusd_epi32(sums[1], _mm256_set1_epi32(qb[0] as i32), w0);
                    sums[2] = _mm256_dpbusd_epi32(sums[2], _mm256_set1_epi32(qc[0] as i32), w0);
                    sums[3] = _mm256_dpbusd_epi32(sums[3], _mm256_set1_epi32(qd[0] as i32), w0);
                    odd[0] = _mm256_dpbusd_epi32(odd[0], _mm256_set1_epi32(qa[1] as i32), w1);
                    odd[1] = _mm256_dpbusd_epi32(odd[1], _mm256_set1_epi32(qb[1] as i32), w1);
                    odd[2] = _mm256_dpbusd_epi32(odd[2], _mm256_set1_epi32(qc[1] as i32), w1);
                    odd[3] = _mm256_dpbusd_epi32(odd[3], _mm256_set1_epi32(qd[1] as i32), w1);
                }
                if row_quads % 2 == 1 {
                    let last = row_quads - 1;
                    #[allow(unsafe_code)]
                    // SAFETY: a row is 32 bytes aligned to 32 (`Row`), read in place.
                    let w = unsafe { _mm256_load_si256(rows[last].0.as_ptr().cast()) };
                    for (sum, q) in sums.iter_mut().zip([a[last], b[last], c[last], d[last]]) {
                        *sum = _mm256_dpbusd_epi32(*sum, _mm256_set1_epi32(q as i32), w);
                    }
                }
            }
            for (sum, odd) in sums.iter_mut().zip(odd) {
                *sum = _mm256_add_epi32(*sum, odd);
            }
            #[allow(unsafe_code)]
            // SAFETY: `correction` holds `blocks × 8` int32; 32 bytes read in place.
            let correct =
                unsafe { _mm256_loadu_si256(correction[block * LANES..].as_ptr().cast()) };
            for (i, &sum) in sums.iter().enumerate().take(count) {
                let out = &mut output[(first + i) * out_len..][..out_len];
                let sum = _mm256_add_epi32(sum, correct);
                store_eight(p, vector, (bias, &requant), sum, block * LANES, out);
            }
        }
    }
}

/// The AVX2 body of [`conv2d_packed`] (shapes checked by the caller): per output pixel the
/// patch is gathered once (as in [`conv2d`]), then per pair of patch values one broadcast, one
/// `vpmaddwd` (16 MACs) and one add per block.
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
    let Packing::Pairs { pairs, data } = &packed.weights else {
        return;
    };
    let pairs_per_filter = *pairs;
    // Heap, sized to the layer (this is the host): zeroing a PATCH_MAX stack buffer per layer
    // cost more than the allocation. int32 storage, viewed as int16, so the pairs are aligned.
    // Even length: an odd filter's last pair ends in a zero weight and a zero value.
    let mut patch_pairs = vec![0_i32; *pairs];
    let patch: &mut [i16] = bytemuck::cast_slice_mut(&mut patch_pairs);
    let offset = p.input_offset as i16;
    let out_len = p.output_channels;
    let vector = vector_constants(p, packed);
    for oy in 0..p.output_height {
        for ox in 0..p.output_width {
            gather_patch(p, input, (oy, ox), &mut patch[..packed.len], |dst, src| {
                gather_avx2(dst, src, offset)
            });
            let pairs: &[i32] = bytemuck::cast_slice(&patch[..]);
            let out = &mut output[(oy * p.output_width + ox) * out_len..][..out_len];
            for (block, rows) in data.chunks_exact(pairs_per_filter).enumerate() {
                let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                // Two accumulators: the adds of consecutive pairs do not wait on each other.
                let mut chunks = pairs.chunks_exact(2).zip(rows.chunks_exact(2));
                for (two, rows) in chunks.by_ref() {
                    #[allow(unsafe_code)]
                    // SAFETY: each row is 16 int16 (32 bytes) aligned to 32 (`Row`), read in
                    // place.
                    let (w0, w1) = unsafe {
                        (
                            _mm256_load_si256(rows[0].0.as_ptr().cast()),
                            _mm256_load_si256(rows[1].0.as_ptr().cast()),
                        )
                    };
                    // |x + offset| ≤ 383 and |w| ≤ 128: each lane's pair sum fits int32.
                    even = _mm256_add_epi32(even, _mm256_madd_epi16(_mm256_set1_epi32(two[0]), w0));
                    odd = _mm256_add_epi32(odd, _mm256_madd_epi16(_mm256_set1_epi32(two[1]), w1));
                }
                if pairs.len() % 2 == 1 {
                    let (last, row) = (pairs[pairs.len() - 1], &rows[rows.len() - 1]);
                    #[allow(unsafe_code)]
                    // SAFETY: a 16-value row aligned to 32 (`Row`), read in place.
                    let w = unsafe { _mm256_load_si256(row.0.as_ptr().cast()) };
                    even = _mm256_add_epi32(even, _mm256_madd_epi16(_mm256_set1_epi32(last), w));
                }
                let sum = _mm256_add_epi32(even, odd);
                store_eight(p, vector, (bias, &requant), sum, block * LANES, out);
            }
        }
    }
}

/// The packing's prepared requantisation constants, when it has them and the output offset is
/// small (the vector form adds it without saturating: exact while |offset| is far below the
/// ±2^30 a requantised value can reach). Looked up once per layer.
fn vector_constants<'a>(p: &ConvParams, packed: &'a PackedFilters) -> Option<&'a [[[i32; 8]; 4]]> {
    packed
        .requant
        .as_deref()
        .filter(|_| p.output_offset.unsigned_abs() <= 1 << 16)
}

/// Requantises the sums of output channels `first..first + 8` (fewer at the layer's end) into
/// `out`: eight at a time with the prepared constants ([`requantize_lanes`]) when the layer
/// has them (`vector`, from [`vector_constants`]), else channel by channel.
#[target_feature(enable = "avx2")]
#[inline]
fn store_eight(
    p: &ConvParams,
    vector: Option<&[[[i32; 8]; 4]]>,
    (bias, requant): (&[i32], &PerChannelRequant<'_>),
    sums: core::arch::x86_64::__m256i,
    first: usize,
    out: &mut [i8],
) {
    use core::arch::x86_64::*;
    if let Some(constants) = vector.and_then(|blocks| blocks.get(first / LANES)) {
        let clamp = (
            p.output_offset,
            i32::from(p.activation_min),
            i32::from(p.activation_max),
        );
        store_lanes(requantize_lanes(sums, constants, clamp), &mut out[first..]);
        return;
    }
    let mut lanes = [0_i32; 8];
    #[allow(unsafe_code)]
    // SAFETY: `lanes` is 8 int32 (32 bytes); unaligned store.
    unsafe {
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sums);
    }
    store_eight_scalar(p, (bias, requant), &lanes, first, out);
}

/// The channel-by-channel branch of [`store_eight`], out of line and cold so that the vector
/// branch stays small enough to be inlined into the kernels (it was not, at 27 % of the time).
#[cold]
#[inline(never)]
fn store_eight_scalar(
    p: &ConvParams,
    (bias, requant): (&[i32], &PerChannelRequant<'_>),
    lanes: &[i32; 8],
    first: usize,
    out: &mut [i8],
) {
    for (oc, &sum) in (first..out.len()).zip(lanes) {
        out[oc] = p.finish(
            bias[oc].wrapping_add(sum),
            requant.multipliers[oc],
            requant.shifts[oc],
        );
    }
}

/// Stores eight int32 lanes already clamped to `−128..=127` as the first `min(8, out.len())`
/// bytes of `out`: saturating packs (which keep every such value), then the two 128-bit
/// halves' first four bytes moved together — one 64-bit store.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn store_lanes(values: core::arch::x86_64::__m256i, out: &mut [i8]) {
    use core::arch::x86_64::*;
    let words = _mm256_packs_epi32(values, values);
    let bytes = _mm256_packs_epi16(words, words);
    let eight = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
    let eight = _mm256_castsi256_si128(eight);
    if out.len() >= 8 {
        #[allow(unsafe_code)]
        // SAFETY: `out` holds at least 8 bytes; unaligned 64-bit store.
        unsafe {
            _mm_storel_epi64(out.as_mut_ptr().cast(), eight);
        }
    } else {
        let bytes = _mm_cvtsi128_si64(eight).to_ne_bytes();
        for (o, &b) in out.iter_mut().zip(&bytes) {
            *o = b as i8;
        }
    }
}

/// [`ConvParams::finish`] for eight channels at once with the prepared right-shift
/// constants (`lanes`: bias, multiplier, `2^e + 1`, `e − 1`): the formula of
/// [`crate::arith::multiply_by_quantized_multiplier_prepared`] in 64-bit lanes (`vpmuldq` on
/// the even and the odd channels), then offset and clamp. Equal to the scalar path for every
/// input (`vector_requantisation_equals_the_scalar_one`).
#[cfg(test)]
#[target_feature(enable = "avx2")]
pub(super) fn requantize_lanes_avx2(
    sum: core::arch::x86_64::__m256i,
    lanes: &[[i32; 8]; 4],
    clamp: (i32, i32, i32),
) -> [i32; 8] {
    let out = requantize_lanes(sum, lanes, clamp);
    let mut values = [0_i32; 8];
    #[allow(unsafe_code)]
    // SAFETY: `values` is 8 int32 (32 bytes); unaligned store.
    unsafe {
        core::arch::x86_64::_mm256_storeu_si256(values.as_mut_ptr().cast(), out);
    }
    values
}

/// [`requantize_lanes_avx2`] leaving the eight results in a register.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn requantize_lanes(
    sum: core::arch::x86_64::__m256i,
    lanes: &[[i32; 8]; 4],
    (offset, low, high): (i32, i32, i32),
) -> core::arch::x86_64::__m256i {
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
    _mm256_min_epi32(
        _mm256_max_epi32(
            _mm256_add_epi32(scaled, _mm256_set1_epi32(offset)),
            _mm256_set1_epi32(low),
        ),
        _mm256_set1_epi32(high),
    )
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
