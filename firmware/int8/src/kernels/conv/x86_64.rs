//! The convolution on x86-64 hosts (feature `std`), AVX2 and AVX-512 chosen at run time.
//! [`conv2d`] is the patch convolution with `vpmaddwd` dot products; [`conv2d_packed`] runs
//! filters repacked once per model ([`PackedFilters`]) eight output channels at a time and
//! requantises them together. Both are bit for bit equal to `conv2d_reference` (tests in the
//! parent module). The vector requantisation ([`requantize_lanes`], [`store_lanes`]) is shared
//! with the depthwise and add kernels' x86-64 code.
//!
//! One of the per-architecture files where `unsafe` is allowed (intrinsics, raw loads and
//! stores; every block with a `// SAFETY:` line). Its public functions are safe: each checks
//! the CPU features it needs and declines (`None`, or the portable kernel) without them.
#![allow(unsafe_code)]

use core::ops::Range;

use super::{conv2d_patches, dot_portable, gather_patch, gather_portable, ConvParams, PATCH_MAX};
use crate::kernels::fully_connected::PerChannelRequant;
use crate::KernelError;

/// Output rows `rows` of [`conv2d`](super::conv2d) with AVX2 where this CPU has it (`false`,
/// nothing written, where it does not): the patch convolution with 16 int16 MACs per
/// `vpmaddwd`. Shapes are the caller's to check; every access here goes through slices.
pub(super) fn conv2d(
    params: &ConvParams,
    (input, weights, bias): (&[i8], &[i8], &[i32]),
    requant: PerChannelRequant<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) -> bool {
    if !std::is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: `conv2d_avx2` only requires the CPU to support AVX2, checked just above.
    unsafe { conv2d_avx2(params, (input, weights, bias), requant, (rows, output)) };
    true
}

/// The patch gather with AVX2 written out (16 values per `vpmovsxbw` + `vpaddw`), for the same
/// reason as `aarch64::gather_neon`.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) fn gather_avx2(dst: &mut [i16], src: &[i8], offset: i16) {
    use core::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let whole = n & !15;
    let offsets = _mm256_set1_epi16(offset);
    for i in (0..whole).step_by(16) {
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
/// `aarch64::dot_neon`; chosen at run time by [`conv2d`].
#[target_feature(enable = "avx2")]
#[inline]
fn dot_avx2(patch: &[i16], filter: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    let n = patch.len().min(filter.len());
    let whole = n & !15;
    let mut acc = _mm256_setzero_si256();
    for i in (0..whole).step_by(16) {
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
pub(crate) const LANES: usize = 8;

/// Output pixels per pass of [`conv2d_quads_vnni`] and [`conv2d_packed_avx2`]: each weight row loaded feeds this many
/// pixels' accumulators, so the layer's weights are read once per four pixels, not per pixel
/// (measured: eight per pass was slower). The loop is written out for four.
const PIXELS: usize = 4;

/// Output pixels per pass of [`conv2d_lanes_vnni`]: one per int32 lane.
const LANE_PIXELS: usize = 8;

/// The `vpermb` indices of [`conv2d_lanes_vnni`]: after its packs (which work within 128-bit
/// lanes), byte `16·(2·(c % 2) + i / 4) + 4·(c / 2) + i % 4` holds pixel `i`'s channel `c`,
/// which output byte `8·i + c` takes.
const PIXEL_MAJOR: [u8; 64] = {
    let mut indices = [0; 64];
    let mut o = 0;
    while o < 64 {
        let (i, c) = (o / 8, o % 8);
        indices[o] = (16 * (2 * (c % 2) + i / 4) + 4 * (c / 2) + i % 4) as u8;
        o += 1;
    }
    indices
};

/// A convolution's OHWI filters repacked on the host for [`conv2d_packed`], in blocks of eight
/// output channels. Built once per model (the blob stays the microcontroller's format; this is
/// host memory).
#[derive(Debug, Clone)]
pub struct PackedFilters {
    channels: usize,
    len: usize,
    weights: Packing,
    /// The bias and the input offset the starting values were computed from.
    bias: Vec<i32>,
    input_offset: i32,
    /// Per block of eight channels, each lane's starting value: its channel's bias, plus for
    /// the quad layout `(input_offset − 128)·Σw` (see [`conv2d_quads_vnni`]). Folded here once
    /// per model instead of added per pixel.
    initial: Vec<[i32; 8]>,
    /// Per block of eight channels, when every channel of the layer scales down (a right
    /// shift) by a non-negative multiplier: multiplier, `2^e + 1` and `e − 1` per lane, for the
    /// vector requantisation. `None`: the scalar one.
    pub(super) requant: Option<Vec<RequantLanes>>,
    /// For a layer of exactly eight channels with the vector requantisation: per pair of
    /// channels, the first's constants in eight lanes and the second's in the next eight, for
    /// [`conv2d_lanes_vnni`] (one pixel per lane).
    channel_requant: Option<Box<[RequantLanes<16>; LANES / 2]>>,
    /// For a layer of pairs of blocks with the vector requantisation: per pair, its starting
    /// values and requantisation in sixteen lanes, for [`conv2d_quads16_vnni`].
    wide: Option<Vec<WideBlock>>,
}

/// Two blocks' starting values and requantisation constants side by side (sixteen lanes).
#[derive(Debug, Clone)]
struct WideBlock {
    initial: [i32; 16],
    requant: RequantLanes<16>,
}

/// A block's prepared right-shift requantisation, per lane: multiplier, the odd lanes'
/// multipliers moved to the even lanes, `2^e + 1`, `e − 1` (see [`requantize_lanes`]).
pub(crate) type RequantLanes<const N: usize = 8> = [[i32; N]; 4];

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
    /// row multiplied with four unsigned input bytes broadcast.
    Quads { cin4: usize, data: Vec<Row<i8, 32>> },
}

impl PackedFilters {
    /// Repacks `channels` OHWI filters of `weights.len() / channels` values over
    /// `input_channels`, with their bias and requantisation, for the best kernel this CPU has
    /// and inputs offset by `input_offset`; `None` when the lengths do not describe such
    /// filters.
    pub fn new(
        weights: &[i8],
        (channels, input_channels): (usize, usize),
        bias: &[i32],
        requant: PerChannelRequant<'_>,
        input_offset: i32,
    ) -> Option<Self> {
        let quads = avx512_vnni();
        let shape = (channels, input_channels);
        Self::with_layout(weights, shape, (bias, input_offset), requant, quads)
    }

    /// [`PackedFilters::new`] with the layout chosen by the caller: `quads` for the VNNI kernel,
    /// else pairs for the AVX2 one.
    pub(super) fn with_layout(
        weights: &[i8],
        (channels, input_channels): (usize, usize),
        (bias, input_offset): (&[i32], i32),
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
            Packing::Quads { cin4, data }
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
        let initial: Vec<[i32; 8]> = (0..blocks)
            .map(|block| {
                core::array::from_fn(|lane| {
                    let c = block * LANES + lane;
                    let Some(&b) = bias.get(c) else { return 0 };
                    if !quads {
                        return b;
                    }
                    let filter = &weights[c * len..][..len];
                    let weight_sum: i32 = filter.iter().map(|&w| i32::from(w)).sum();
                    b.wrapping_add(weight_sum.wrapping_mul(input_offset.wrapping_sub(128)))
                })
            })
            .collect();
        let vector_requant = requant
            .shifts
            .iter()
            .zip(requant.multipliers)
            .all(|(&s, &m)| (-31..0).contains(&s) && m >= 0);
        let (multipliers, shifts) = (requant.multipliers, requant.shifts);
        let channel_requant = (vector_requant && channels == LANES).then(|| {
            Box::new(core::array::from_fn(|pair| {
                let lane_channel: [usize; 16] = core::array::from_fn(|l| 2 * pair + l / 8);
                requant_lanes(
                    &lane_channel.map(|c| multipliers[c]),
                    &lane_channel.map(|c| shifts[c]),
                )
            }))
        });
        let requant: Option<Vec<RequantLanes>> = vector_requant.then(|| {
            multipliers
                .chunks(LANES)
                .zip(shifts.chunks(LANES))
                .map(|(m, s)| requant_lanes(m, s))
                .collect()
        });
        let wide = match &requant {
            Some(lanes) if quads && channels.is_multiple_of(2 * LANES) => Some(
                lanes
                    .chunks_exact(2)
                    .zip(initial.chunks_exact(2))
                    .map(|(lanes, initial)| WideBlock {
                        initial: core::array::from_fn(|l| initial[l / LANES][l % LANES]),
                        requant: core::array::from_fn(|row| {
                            core::array::from_fn(|l| lanes[l / LANES][row][l % LANES])
                        }),
                    })
                    .collect(),
            ),
            _ => None,
        };
        Some(PackedFilters {
            channels,
            len,
            weights: packed_weights,
            bias: bias.to_vec(),
            input_offset,
            initial,
            requant,
            channel_requant,
            wide,
        })
    }

    /// Whether this packing was made from these filters' shape and constants.
    fn matches(&self, p: &ConvParams, bias: &[i32], requant: &PerChannelRequant<'_>) -> bool {
        let shape = self.channels == p.output_channels
            && self.len == p.kernel * p.kernel * p.input_channels
            && match self.weights {
                Packing::Quads { cin4, .. } => {
                    cin4 == p.input_channels.next_multiple_of(4)
                        && self.input_offset == p.input_offset
                }
                Packing::Pairs { .. } => true,
            };
        let bias_ok = self.bias == bias;
        let Some(lanes) = &self.requant else {
            return shape && bias_ok;
        };
        shape
            && bias_ok
            && (0..self.channels).all(|c| {
                let block = &lanes[c / LANES];
                let lane = c % LANES;
                let (rounding, high_shift) = if requant.shifts[c] < 0 {
                    crate::arith::right_shift_constants(requant.shifts[c].unsigned_abs())
                } else {
                    (0, u32::MAX)
                };
                block[0][lane] == requant.multipliers[c]
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
    let rows = 0..params.output_height;
    conv2d_packed_rows(
        params,
        (input, weights, bias),
        (packed, requant),
        (rows, output),
    )
}

/// Output rows `rows` of [`conv2d_packed`] into `output`, which holds those rows only: one
/// band of a convolution run on several threads, bit for bit the same rows as a whole run.
pub fn conv2d_packed_rows(
    params: &ConvParams,
    (input, weights, bias): (&[i8], &[i8], &[i32]),
    (packed, requant): (&PackedFilters, PerChannelRequant<'_>),
    (rows, output): (Range<usize>, &mut [i8]),
) -> Result<(), KernelError> {
    params.check_rows(
        false,
        input,
        weights,
        bias,
        &requant,
        (rows.clone(), output),
    )?;
    let p = params;
    let fits = packed.matches(p, bias, &requant)
        && packed.len <= PATCH_MAX
        && (-255..=255).contains(&p.input_offset);
    let portable = |output: &mut [i8]| {
        super::conv2d_rows_unchecked(p, (input, weights, bias), requant, rows.clone(), output);
        Ok(())
    };
    if !fits || !std::is_x86_feature_detected!("avx2") {
        return portable(output);
    }
    // Each kernel says whether it ran; one that declines (a packing or shape it was not made
    // for, which `matches` and `check` rule out) leaves the layer to the portable kernel
    // rather than to an unwritten output.
    let ran = match &packed.weights {
        // Offsets of int8 zero points (−127..=128) encode real zero as an unsigned byte.
        Packing::Quads { cin4, .. } if avx512_vnni() && (-127..=128).contains(&p.input_offset) => {
            // SAFETY: the three VNNI kernels require AVX2 and AVX-512 F/VL/VNNI, checked above;
            // `conv2d_lanes_vnni` also BW and VBMI, checked by `lanes_kernel_applies`.
            unsafe {
                let band = (rows.clone(), &mut *output);
                if lanes_kernel_applies(p, packed, *cin4) {
                    conv2d_lanes_vnni(p, input, packed, band)
                } else if let (Some(wide), Some(_)) = (&packed.wide, vector_constants(p, packed)) {
                    conv2d_quads16_vnni(p, input, (packed, wide), band)
                } else {
                    conv2d_quads_vnni(p, input, (packed, requant), band)
                }
            }
        }
        Packing::Pairs { .. } => {
            // SAFETY: `conv2d_packed_avx2` only requires the CPU to support AVX2, checked above.
            unsafe { conv2d_packed_avx2(p, input, (packed, requant), (rows.clone(), &mut *output)) }
        }
        Packing::Quads { .. } => false,
    };
    if !ran {
        return portable(output);
    }
    Ok(())
}

/// Whether [`conv2d_lanes_vnni`] runs this layer: eight output channels with the vector
/// requantisation, neighbouring output pixels one or two quads apart in the padded input, and a
/// CPU with AVX-512 BW and VBMI (besides VNNI, checked by the caller).
fn lanes_kernel_applies(p: &ConvParams, packed: &PackedFilters, cin4: usize) -> bool {
    packed.channel_requant.is_some()
        && vector_constants(p, packed).is_some()
        && matches!(p.stride * cin4 / 4, 1 | 2)
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vbmi")
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

/// The input of the VNNI kernels, copied once per layer into unsigned bytes `u = x + 128`
/// with the padding around it (real zero, `128 − offset`) and each pixel's channels padded to
/// `cin4` (a multiple of four); at least `min_quads` quads long (the tail repeats the padding
/// value). int32 storage viewed as bytes, so every quad is one aligned load. Heap, sized to the
/// layer (this is the host).
#[target_feature(enable = "avx2")]
fn padded_input(p: &ConvParams, input: &[i8], cin4: usize, min_quads: usize) -> Vec<u32> {
    let cin = p.input_channels;
    let padded_width = p.input_width + 2 * p.padding;
    let padded_height = p.input_height + 2 * p.padding;
    let quads = (padded_height * padded_width * cin4 / 4).max(min_quads);
    let fill = u32::from_ne_bytes([(128 - p.input_offset) as u8; 4]);
    let mut padded = vec![fill; quads];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut padded);
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
            // Pixel by pixel, byte by byte: a few channels (an RGB input) per pixel, where a
            // call of the vector copy per pixel cost as much as the convolution.
            for (d, s) in dst.chunks_exact_mut(cin4).zip(row.chunks_exact(cin)) {
                for (d, &x) in d.iter_mut().zip(s) {
                    *d = (x as u8) ^ 0x80;
                }
            }
        }
    }
    padded
}

/// A layer's input as the VNNI kernels read it: the padded copy ([`padded_input`]) and its
/// geometry in quads.
struct QuadInput {
    padded: Vec<u32>,
    /// Padded input columns.
    padded_width: usize,
    /// Quads per kernel row of a patch.
    row_quads: usize,
    /// Quads between two rows of the padded copy.
    line_quads: usize,
}

impl QuadInput {
    /// The padded copy of `input`, at least `min_quads` long, or `None` when the output is
    /// empty or a patch would reach past the copy (neither happens for a layer `check`
    /// accepted). Every patch row `start + ky·line_quads + (0..row_quads)` of an output pixel
    /// then lies in `padded`: the furthest is the last pixel's last, checked here once so the
    /// kernels read through pointers without a bounds check per kernel row.
    #[target_feature(enable = "avx2")]
    fn new(p: &ConvParams, input: &[i8], cin4: usize, min_quads: usize) -> Option<Self> {
        if p.output_height == 0 || p.output_width == 0 || p.kernel == 0 {
            return None;
        }
        let padded_width = p.input_width + 2 * p.padding;
        let row_quads = p.kernel * cin4 / 4;
        let line_quads = padded_width * cin4 / 4;
        let padded = padded_input(p, input, cin4, min_quads);
        let last_start = ((p.output_height - 1) * p.stride * padded_width
            + (p.output_width - 1) * p.stride)
            * cin4
            / 4;
        (last_start + (p.kernel - 1) * line_quads + row_quads <= padded.len()).then_some(Self {
            padded,
            padded_width,
            row_quads,
            line_quads,
        })
    }
}

/// The VNNI body of [`conv2d_packed`] for layers of eight output channels (shapes checked by
/// the caller), transposed: one output pixel per int32 lane and one register per channel, so
/// each `vpdpbusd` takes eight pixels' unsigned input quads from one load (a permute when
/// neighbours are two quads apart) and the channel's four weights as an embedded broadcast —
/// no broadcast instruction per pixel, as [`conv2d_quads_vnni`] needs when eight channels make
/// one block. Eight pixels of an output row per pass; a row's last pass may hold fewer, its
/// other lanes read padding or the next row (the padded copy is long enough) and are not
/// stored. The eight channels' results are packed to bytes and put in pixel-major order with
/// one `vpermb`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni,avx512bw,avx512vbmi")]
fn conv2d_lanes_vnni(
    p: &ConvParams,
    input: &[i8],
    packed: &PackedFilters,
    (rows, output): (Range<usize>, &mut [i8]),
) -> bool {
    use core::arch::x86_64::*;
    let (Packing::Quads { cin4, data }, Some(channel_requant), Some(initial)) = (
        &packed.weights,
        packed.channel_requant.as_deref(),
        packed.initial.first(),
    ) else {
        return false;
    };
    let (cin4, k) = (*cin4, p.kernel);
    let (height, width) = (p.output_height, p.output_width);
    if height == 0 || width == 0 || k == 0 || rows.end > height {
        return false;
    }
    if output.len() < rows.len() * width * LANES {
        return false;
    }
    // Quads between neighbouring output pixels' patches: 1 or 2 (`lanes_kernel_applies`).
    let step = p.stride * cin4 / 4;
    // The furthest quad read: the last row's last pass, the patch's last quad, read by a load
    // of `8·step` quads; the padded copy is made at least that long.
    let padded_width = p.input_width + 2 * p.padding;
    let (row_quads, line_quads) = (k * cin4 / 4, padded_width * cin4 / 4);
    let last_pass = (width - 1) / LANE_PIXELS * LANE_PIXELS;
    let last_start = ((height - 1) * p.stride * padded_width + last_pass * p.stride) * cin4 / 4;
    let reach = last_start + (k - 1) * line_quads + row_quads - 1 + LANE_PIXELS * step;
    let Some(quad_input) = QuadInput::new(p, input, cin4, reach) else {
        return false;
    };
    if data.len() != k * row_quads {
        return false;
    }
    let base = quad_input.padded.as_ptr();
    let clamp = (
        p.output_offset,
        i32::from(p.activation_min),
        i32::from(p.activation_max),
    );
    // Lane i takes quad 2i of a 16-quad load (neighbours two quads apart).
    let every_other = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    // SAFETY: `PIXEL_MAJOR` is 64 bytes; unaligned load.
    let pixel_major = unsafe { _mm512_loadu_si512(PIXEL_MAJOR.as_ptr().cast()) };
    let weights = data.as_ptr().cast::<i32>();
    let band = rows.start;
    for oy in rows {
        for first in (0..width).step_by(LANE_PIXELS) {
            let count = LANE_PIXELS.min(width - first);
            let start = (oy * p.stride * padded_width + first * p.stride) * cin4 / 4;
            let mut sums = [_mm256_setzero_si256(); LANES];
            for (sum, &initial) in sums.iter_mut().zip(initial) {
                *sum = _mm256_set1_epi32(initial);
            }
            for ky in 0..k {
                // SAFETY: quads `start + ky·line_quads + j` for `j < row_quads`, plus the
                // `8·step` a load covers, stay below `reach` ≤ `padded.len()`; weight rows
                // `ky·row_quads + j` < `data.len()` (checked above), 8 int32 each.
                unsafe {
                    let x_row = base.add(start + ky * line_quads);
                    let w_row = weights.add(ky * row_quads * LANES);
                    for j in 0..row_quads {
                        let x = if step == 1 {
                            _mm256_loadu_si256(x_row.add(j).cast())
                        } else {
                            let wide = _mm512_loadu_si512(x_row.add(j).cast());
                            _mm512_castsi512_si256(_mm512_permutexvar_epi32(every_other, wide))
                        };
                        let w = w_row.add(j * LANES);
                        for (c, sum) in sums.iter_mut().enumerate() {
                            *sum = _mm256_dpbusd_epi32(*sum, x, _mm256_set1_epi32(*w.add(c)));
                        }
                    }
                }
            }
            // Two channels per 512-bit requantisation (half the instructions of eight 256-bit
            // ones).
            let mut r = [_mm512_setzero_si512(); LANES / 2];
            for (pair, (r, constants)) in r.iter_mut().zip(channel_requant).enumerate() {
                let two = _mm512_castsi256_si512(sums[2 * pair]);
                let two = _mm512_inserti64x4::<1>(two, sums[2 * pair + 1]);
                *r = requantize_lanes16(two, constants, clamp);
            }
            // Values already clamped to int8: the saturating packs keep them.
            let both = _mm512_packs_epi16(
                _mm512_packs_epi32(r[0], r[1]),
                _mm512_packs_epi32(r[2], r[3]),
            );
            let bytes = _mm512_permutexvar_epi8(pixel_major, both);
            let mask = u64::MAX >> (64 - 8 * count);
            // SAFETY: pixels `first..first + count` of row `oy` are bytes
            // `((oy − band)·width + first)·8 ..` + `8·count` of `output`, which holds the
            // band's rows (length checked above); the masked store writes only those.
            unsafe {
                let out = output
                    .as_mut_ptr()
                    .add(((oy - band) * width + first) * LANES);
                _mm512_mask_storeu_epi8(out.cast(), mask, bytes);
            }
        }
    }
    true
}

/// Where the patches of the next `count` output pixels start in the padded input (in quads),
/// from pixel `(oy, ox)`, which is advanced past them (no division per pass). A pass holds
/// [`PIXELS`] pixels; the last one may hold fewer, the others repeat its first (their sums
/// are computed and dropped).
#[inline]
fn pass_starts(
    p: &ConvParams,
    (padded_width, cin4): (usize, usize),
    count: usize,
    (oy, ox): (&mut usize, &mut usize),
) -> [usize; PIXELS] {
    let mut starts = [0_usize; PIXELS];
    for start in starts.iter_mut().take(count) {
        *start = (*oy * p.stride * padded_width + *ox * p.stride) * cin4 / 4;
        *ox += 1;
        if *ox == p.output_width {
            (*oy, *ox) = (*oy + 1, 0);
        }
    }
    for i in count..PIXELS {
        starts[i] = starts[0];
    }
    starts
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
    (packed, requant): (&PackedFilters, PerChannelRequant<'_>),
    (rows, output): (Range<usize>, &mut [i8]),
) -> bool {
    use core::arch::x86_64::*;
    let Packing::Quads { cin4, data } = &packed.weights else {
        return false;
    };
    let (cin4, k) = (*cin4, p.kernel);
    let Some(quad_input) = QuadInput::new(p, input, cin4, 0) else {
        return false;
    };
    let QuadInput {
        padded_width,
        row_quads,
        line_quads,
        ..
    } = quad_input;
    if data.len() != packed.initial.len() * k * row_quads {
        return false;
    }
    let vector = vector_constants(p, packed);
    let (band, end) = (rows.start * p.output_width, rows.end * p.output_width);
    let out_len = p.output_channels;
    let base = quad_input.padded.as_ptr();
    // The next pass's first pixel, advanced pixel by pixel (no division per pass).
    let (mut oy, mut ox) = (rows.start, 0);
    for first in (band..end).step_by(PIXELS) {
        let count = PIXELS.min(end - first);
        let starts = pass_starts(p, (padded_width, cin4), count, (&mut oy, &mut ox));
        let blocks = data.chunks_exact(k * row_quads).zip(&packed.initial);
        for (block, (block_rows, initial)) in blocks.enumerate() {
            // SAFETY: `initial` is 8 int32 (32 bytes); unaligned load.
            let initial = unsafe { _mm256_loadu_si256(initial.as_ptr().cast()) };
            // Bias and offset correction are the starting values (see `PackedFilters`).
            let mut sums = [initial; PIXELS];
            let mut odd = [_mm256_setzero_si256(); PIXELS];
            for (ky, rows) in block_rows.chunks_exact(row_quads).enumerate() {
                let line = ky * line_quads;
                // SAFETY: each pixel's kernel row `start + line .. start + line + row_quads`
                // lies in `padded` (checked above for the furthest one); pointers only formed.
                let [a, b, c, d] = unsafe {
                    [
                        base.add(starts[0] + line),
                        base.add(starts[1] + line),
                        base.add(starts[2] + line),
                        base.add(starts[3] + line),
                    ]
                };
                let w = rows.as_ptr();
                // Two quads per step into two sets of sums: eight independent `vpdpbusd`
                // chains, enough to cover the instruction's latency (four were not).
                for j in (0..row_quads & !1).step_by(2) {
                    // SAFETY: `j + 1 < row_quads`: rows `j, j + 1` of `rows` (32 bytes each,
                    // aligned to 32 by `Row`) and quads `j, j + 1` of each pixel's kernel row
                    // (checked above) are read in place.
                    unsafe {
                        let w0 = _mm256_load_si256(w.add(j).cast());
                        let w1 = _mm256_load_si256(w.add(j + 1).cast());
                        // Unsigned × signed bytes, four products per lane summed into int32.
                        let j1 = j + 1;
                        let qa = _mm256_set1_epi32(*a.add(j) as i32);
                        let qb = _mm256_set1_epi32(*b.add(j) as i32);
                        let qc = _mm256_set1_epi32(*c.add(j) as i32);
                        let qd = _mm256_set1_epi32(*d.add(j) as i32);
                        sums[0] = _mm256_dpbusd_epi32(sums[0], qa, w0);
                        sums[1] = _mm256_dpbusd_epi32(sums[1], qb, w0);
                        sums[2] = _mm256_dpbusd_epi32(sums[2], qc, w0);
                        sums[3] = _mm256_dpbusd_epi32(sums[3], qd, w0);
                        let qa = _mm256_set1_epi32(*a.add(j1) as i32);
                        let qb = _mm256_set1_epi32(*b.add(j1) as i32);
                        let qc = _mm256_set1_epi32(*c.add(j1) as i32);
                        let qd = _mm256_set1_epi32(*d.add(j1) as i32);
                        odd[0] = _mm256_dpbusd_epi32(odd[0], qa, w1);
                        odd[1] = _mm256_dpbusd_epi32(odd[1], qb, w1);
                        odd[2] = _mm256_dpbusd_epi32(odd[2], qc, w1);
                        odd[3] = _mm256_dpbusd_epi32(odd[3], qd, w1);
                    }
                }
                if row_quads % 2 == 1 {
                    let last = row_quads - 1;
                    // SAFETY: row `last` of `rows` (32 bytes aligned to 32) and quad `last` of
                    // each pixel's kernel row (checked above) are read in place.
                    unsafe {
                        let w = _mm256_load_si256(w.add(last).cast());
                        for (sum, q) in sums.iter_mut().zip([a, b, c, d]) {
                            let q = _mm256_set1_epi32(*q.add(last) as i32);
                            *sum = _mm256_dpbusd_epi32(*sum, q, w);
                        }
                    }
                }
            }
            for (sum, odd) in sums.iter_mut().zip(odd) {
                *sum = _mm256_add_epi32(*sum, odd);
            }
            for (i, &sum) in sums.iter().enumerate().take(count) {
                let out = &mut output[(first - band + i) * out_len..][..out_len];
                store_eight(p, vector, &requant, sum, block * LANES, out);
            }
        }
    }
    true
}

/// [`conv2d_quads_vnni`] sixteen output channels at a time in 512-bit registers, for layers
/// whose channels come in pairs of blocks and that have the vector requantisation (`wide`,
/// from [`PackedFilters`]): one broadcast and one `vpdpbusd` per pixel and quad serve sixteen
/// channels (half the instructions of two 256-bit blocks), and the sixteen sums are
/// requantised together and narrowed with one `vpmovsdb`.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn conv2d_quads16_vnni(
    p: &ConvParams,
    input: &[i8],
    (packed, wide): (&PackedFilters, &[WideBlock]),
    (rows, output): (Range<usize>, &mut [i8]),
) -> bool {
    use core::arch::x86_64::*;
    let Packing::Quads { cin4, data } = &packed.weights else {
        return false;
    };
    let (cin4, k) = (*cin4, p.kernel);
    let Some(quad_input) = QuadInput::new(p, input, cin4, 0) else {
        return false;
    };
    let QuadInput {
        padded_width,
        row_quads,
        line_quads,
        ..
    } = quad_input;
    let block_len = k * row_quads;
    let (band, end) = (rows.start * p.output_width, rows.end * p.output_width);
    let out_len = p.output_channels;
    if data.len() != 2 * wide.len() * block_len || out_len != 16 * wide.len() {
        return false;
    }
    let clamp = (
        p.output_offset,
        i32::from(p.activation_min),
        i32::from(p.activation_max),
    );
    let base = quad_input.padded.as_ptr();
    let (mut oy, mut ox) = (rows.start, 0);
    for first in (band..end).step_by(PIXELS) {
        let count = PIXELS.min(end - first);
        let starts = pass_starts(p, (padded_width, cin4), count, (&mut oy, &mut ox));
        for (pair, (rows, block)) in data.chunks_exact(2 * block_len).zip(wide).enumerate() {
            let (low_rows, high_rows) = rows.split_at(block_len);
            // SAFETY: `initial` is 16 int32 (64 bytes); unaligned load.
            let initial = unsafe { _mm512_loadu_si512(block.initial.as_ptr().cast()) };
            let mut sums = [initial; PIXELS];
            let mut odd = [_mm512_setzero_si512(); PIXELS];
            for ky in 0..k {
                let line = ky * line_quads;
                // SAFETY: as in `conv2d_quads_vnni`: each pixel's kernel row lies in `padded`;
                // pointers only formed.
                let [a, b, c, d] = unsafe {
                    [
                        base.add(starts[0] + line),
                        base.add(starts[1] + line),
                        base.add(starts[2] + line),
                        base.add(starts[3] + line),
                    ]
                };
                let low = low_rows[ky * row_quads..][..row_quads].as_ptr();
                let high = high_rows[ky * row_quads..][..row_quads].as_ptr();
                // Row j of both blocks, side by side: sixteen channels' four weights.
                // SAFETY: called for `j < row_quads`: rows of 32 bytes aligned to 32 (`Row`).
                let weights = |j: usize| unsafe {
                    let low = _mm512_castsi256_si512(_mm256_load_si256(low.add(j).cast()));
                    _mm512_inserti64x4::<1>(low, _mm256_load_si256(high.add(j).cast()))
                };
                for j in (0..row_quads & !1).step_by(2) {
                    let (w0, w1, j1) = (weights(j), weights(j + 1), j + 1);
                    // SAFETY: quads `j, j + 1 < row_quads` of each pixel's kernel row (checked
                    // above), read in place.
                    unsafe {
                        let qa = _mm512_set1_epi32(*a.add(j) as i32);
                        let qb = _mm512_set1_epi32(*b.add(j) as i32);
                        let qc = _mm512_set1_epi32(*c.add(j) as i32);
                        let qd = _mm512_set1_epi32(*d.add(j) as i32);
                        sums[0] = _mm512_dpbusd_epi32(sums[0], qa, w0);
                        sums[1] = _mm512_dpbusd_epi32(sums[1], qb, w0);
                        sums[2] = _mm512_dpbusd_epi32(sums[2], qc, w0);
                        sums[3] = _mm512_dpbusd_epi32(sums[3], qd, w0);
                        let qa = _mm512_set1_epi32(*a.add(j1) as i32);
                        let qb = _mm512_set1_epi32(*b.add(j1) as i32);
                        let qc = _mm512_set1_epi32(*c.add(j1) as i32);
                        let qd = _mm512_set1_epi32(*d.add(j1) as i32);
                        odd[0] = _mm512_dpbusd_epi32(odd[0], qa, w1);
                        odd[1] = _mm512_dpbusd_epi32(odd[1], qb, w1);
                        odd[2] = _mm512_dpbusd_epi32(odd[2], qc, w1);
                        odd[3] = _mm512_dpbusd_epi32(odd[3], qd, w1);
                    }
                }
                if row_quads % 2 == 1 {
                    let last = row_quads - 1;
                    let w = weights(last);
                    for (sum, q) in sums.iter_mut().zip([a, b, c, d]) {
                        // SAFETY: quad `last` of a pixel's kernel row (checked above).
                        let q = unsafe { _mm512_set1_epi32(*q.add(last) as i32) };
                        *sum = _mm512_dpbusd_epi32(*sum, q, w);
                    }
                }
            }
            for (i, (&sum, odd)) in sums.iter().zip(odd).enumerate().take(count) {
                let values = requantize_lanes16(_mm512_add_epi32(sum, odd), &block.requant, clamp);
                // Already clamped to int8: the saturating narrowing keeps every value.
                let bytes = _mm512_cvtsepi32_epi8(values);
                let out = &mut output[(first - band + i) * out_len + 16 * pair..][..16];
                // SAFETY: `out` is 16 bytes; unaligned store.
                unsafe {
                    _mm_storeu_si128(out.as_mut_ptr().cast(), bytes);
                }
            }
        }
    }
    true
}

/// The AVX2 body of [`conv2d_packed`] (shapes checked by the caller): four output pixels per
/// pass, each patch gathered once (as in [`conv2d`]); then per two blocks of eight channels and
/// per pair of patch values, two weight rows loaded once for the four pixels, four broadcasts
/// and eight `vpmaddwd` (16 MACs each) and adds ([`block_sums`]). One pixel at a time the
/// weights were streamed from cache again for every pixel: ResNet-18 at 224 px ran 65–78 ms on
/// a Zen 3 core without VNNI.
#[target_feature(enable = "avx2")]
fn conv2d_packed_avx2(
    p: &ConvParams,
    input: &[i8],
    (packed, requant): (&PackedFilters, PerChannelRequant<'_>),
    (rows, output): (Range<usize>, &mut [i8]),
) -> bool {
    let Packing::Pairs { pairs, data } = &packed.weights else {
        return false;
    };
    let pairs = *pairs;
    // Heap, sized to the layer (this is the host): zeroing a PATCH_MAX stack buffer per layer
    // cost more than the allocation. int32 storage, viewed as int16, so the pairs are aligned.
    // Even length: an odd filter's last pair ends in a zero weight and a zero value. A pass
    // with fewer than four pixels left computes the others' stale patches and stores nothing
    // of them.
    let mut patch_pairs = vec![0_i32; PIXELS * pairs];
    let offset = p.input_offset as i16;
    let out_len = p.output_channels;
    let vector = vector_constants(p, packed);
    let band = rows.start;
    let blocks: Vec<(&[Row<i16, 16>], &[i32; 8])> =
        data.chunks_exact(pairs).zip(&packed.initial).collect();
    for oy in rows {
        for ox in (0..p.output_width).step_by(PIXELS) {
            let n = PIXELS.min(p.output_width - ox);
            for (t, patch) in patch_pairs.chunks_exact_mut(pairs).take(n).enumerate() {
                let patch: &mut [i16] = bytemuck::cast_slice_mut(patch);
                gather_patch(
                    p,
                    input,
                    (oy, ox + t),
                    &mut patch[..packed.len],
                    |dst, src| gather_avx2(dst, src, offset),
                );
            }
            let mut patches = patch_pairs.chunks_exact(pairs);
            let patches: [&[i32]; PIXELS] =
                core::array::from_fn(|_| patches.next().expect("PIXELS patches"));
            let out = &mut output[((oy - band) * p.output_width + ox) * out_len..][..n * out_len];
            let mut store = |block: usize, sums: &[core::arch::x86_64::__m256i; PIXELS]| {
                for (t, &sum) in sums.iter().take(n).enumerate() {
                    let pixel = &mut out[t * out_len..][..out_len];
                    store_eight(p, vector, &requant, sum, block * LANES, pixel);
                }
            };
            let mut two = blocks.chunks_exact(2);
            for (k, pair) in two.by_ref().enumerate() {
                let [(rows_a, init_a), (rows_b, init_b)] = [pair[0], pair[1]];
                let [a, b] = block_sums(&patches, [rows_a, rows_b], [init_a, init_b]);
                store(2 * k, &a);
                store(2 * k + 1, &b);
            }
            if let [(rows, initial)] = two.remainder() {
                let [sums] = block_sums(&patches, [rows], [initial]);
                store(blocks.len() - 1, &sums);
            }
        }
    }
    true
}

/// Eight channel sums (bias included) of two blocks (`B` = 2) or one for each of four pixels'
/// patches: per pair of patch values each block's weight row is loaded once and serves the
/// four pixels. The accumulators are named variables, not arrays: with `[[__m256i; 4]; 2]`
/// the compiler kept two of them on the stack, and the store-and-reload chain through memory
/// made the loop no faster than one pixel at a time.
#[target_feature(enable = "avx2")]
#[inline]
fn block_sums<const B: usize>(
    patches: &[&[i32]; PIXELS],
    rows: [&[Row<i16, 16>]; B],
    initial: [&[i32; 8]; B],
) -> [[core::arch::x86_64::__m256i; PIXELS]; B] {
    use core::arch::x86_64::*;
    let len = rows[0].len();
    // Sliced to one length, so the indexing below needs no bounds checks.
    let [p0, p1, p2, p3] = [0, 1, 2, 3].map(|t| &patches[t][..len]);
    let (rows_a, rows_b) = (&rows[0][..len], &rows[B - 1][..len]);
    // SAFETY: each `initial` is 8 int32 (32 bytes); unaligned loads.
    let (init_a, init_b) = unsafe {
        (
            _mm256_loadu_si256(initial[0].as_ptr().cast()),
            _mm256_loadu_si256(initial[B - 1].as_ptr().cast()),
        )
    };
    let (mut a0, mut a1, mut a2, mut a3) = (init_a, init_a, init_a, init_a);
    let (mut b0, mut b1, mut b2, mut b3) = (init_b, init_b, init_b, init_b);
    for k in 0..len {
        // SAFETY: 16-value rows aligned to 32 (`Row`), read in place.
        let wa = unsafe { _mm256_load_si256(rows_a[k].0.as_ptr().cast()) };
        let (x0, x1, x2, x3) = (
            _mm256_set1_epi32(p0[k]),
            _mm256_set1_epi32(p1[k]),
            _mm256_set1_epi32(p2[k]),
            _mm256_set1_epi32(p3[k]),
        );
        (a0, a1, a2, a3) = (
            mac(a0, x0, wa),
            mac(a1, x1, wa),
            mac(a2, x2, wa),
            mac(a3, x3, wa),
        );
        if B == 2 {
            // SAFETY: as above.
            let wb = unsafe { _mm256_load_si256(rows_b[k].0.as_ptr().cast()) };
            (b0, b1, b2, b3) = (
                mac(b0, x0, wb),
                mac(b1, x1, wb),
                mac(b2, x2, wb),
                mac(b3, x3, wb),
            );
        }
    }
    let both = [[a0, a1, a2, a3], [b0, b1, b2, b3]];
    core::array::from_fn(|b| both[b])
}

/// `acc + vpmaddwd(x, w)`: sixteen int16 products summed in pairs into eight int32 lanes.
/// |x + offset| ≤ 383 and |w| ≤ 128: each lane's pair sum fits int32.
#[target_feature(enable = "avx2")]
#[inline]
fn mac(
    acc: core::arch::x86_64::__m256i,
    x: core::arch::x86_64::__m256i,
    w: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    _mm256_add_epi32(acc, _mm256_madd_epi16(x, w))
}

/// The packing's prepared requantisation constants, when it has them and the output offset is
/// small (the vector form adds it without saturating: exact while |offset| is far below the
/// ±2^30 a requantised value can reach). Looked up once per layer.
fn vector_constants<'a>(p: &ConvParams, packed: &'a PackedFilters) -> Option<&'a [RequantLanes]> {
    packed
        .requant
        .as_deref()
        .filter(|_| p.output_offset.unsigned_abs() <= 1 << 16)
}

/// Requantises the sums (bias included) of output channels `first..first + 8` (fewer at the
/// layer's end) into `out`: eight at a time with the prepared constants
/// ([`requantize_lanes`]) when the layer has them (`vector`, from [`vector_constants`]), else
/// channel by channel.
#[target_feature(enable = "avx2")]
#[inline]
fn store_eight(
    p: &ConvParams,
    vector: Option<&[RequantLanes]>,
    requant: &PerChannelRequant<'_>,
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
    // SAFETY: `lanes` is 8 int32 (32 bytes); unaligned store.
    unsafe {
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sums);
    }
    store_eight_scalar(p, requant, &lanes, first, out);
}

/// The channel-by-channel branch of [`store_eight`], out of line and cold so that the vector
/// branch stays small enough to be inlined into the kernels (it was not, at 27 % of the time).
#[cold]
#[inline(never)]
fn store_eight_scalar(
    p: &ConvParams,
    requant: &PerChannelRequant<'_>,
    lanes: &[i32; 8],
    first: usize,
    out: &mut [i8],
) {
    for (oc, &sum) in (first..out.len()).zip(lanes) {
        out[oc] = p.finish(sum, requant.multipliers[oc], requant.shifts[oc]);
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
/// constants (`lanes`, see [`RequantLanes`]): the formula of
/// [`crate::arith::multiply_by_quantized_multiplier_prepared`] in 64-bit lanes (`vpmuldq` on
/// the even and the odd channels), then offset and clamp. `sum` includes the bias. Equal to the
/// scalar path for every input (`vector_requantisation_equals_the_scalar_one`).
#[cfg(test)]
#[target_feature(enable = "avx2")]
fn requantize_lanes_avx2(
    sum: core::arch::x86_64::__m256i,
    lanes: &RequantLanes,
    clamp: (i32, i32, i32),
) -> [i32; 8] {
    let out = requantize_lanes(sum, lanes, clamp);
    let mut values = [0_i32; 8];
    // SAFETY: `values` is 8 int32 (32 bytes); unaligned store.
    unsafe {
        core::arch::x86_64::_mm256_storeu_si256(values.as_mut_ptr().cast(), out);
    }
    values
}

/// The per-lane rows of a [`RequantLanes`] for channels with these multipliers (each `≥ 0`)
/// and right shifts (`−31..=−1`); lanes past the slices get multiplier 0 and a shift of 1
/// (harmless: never stored).
pub(crate) fn requant_lanes<const N: usize>(
    multipliers: &[i32],
    shifts: &[i32],
) -> RequantLanes<N> {
    let multiplier: [i32; N] = core::array::from_fn(|l| multipliers.get(l).copied().unwrap_or(0));
    let exponent = |l: usize| shifts.get(l).map_or(1, |&s| s.unsigned_abs());
    let constants: [(u32, u32); N] =
        core::array::from_fn(|l| crate::arith::right_shift_constants(exponent(l)));
    [
        multiplier,
        // The odd channels' multipliers moved into the even slots `vpmuldq` reads.
        core::array::from_fn(|l| if l % 2 == 0 { multiplier[l + 1] } else { 0 }),
        constants.map(|(rounding, _)| rounding as i32),
        constants.map(|(_, high_shift)| high_shift as i32),
    ]
}

/// [`requantize_lanes_avx2`] leaving the eight results in a register.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn requantize_lanes(
    x: core::arch::x86_64::__m256i,
    lanes: &RequantLanes,
    (offset, low, high): (i32, i32, i32),
) -> core::arch::x86_64::__m256i {
    use core::arch::x86_64::*;
    // SAFETY: each `lanes` row is 8 int32 (32 bytes), read in place; unaligned loads.
    let [multiplier, odd_multiplier, rounding, high_shift] =
        lanes.map(|row| unsafe { _mm256_loadu_si256(row.as_ptr().cast()) });
    // q = (2^e + 1) − 2n, n = 1 where x and m differ in sign: where x < 0, as m ≥ 0.
    let differ = _mm256_srai_epi32::<31>(x);
    let q = _mm256_add_epi32(rounding, _mm256_slli_epi32::<1>(differ));
    // x·m + q·2^30 in 64 bits, even channels in the low halves, odd ones shifted down.
    let low_words = _mm256_set1_epi64x(0xFFFF_FFFF);
    let even = _mm256_add_epi64(
        _mm256_mul_epi32(x, multiplier),
        _mm256_slli_epi64::<30>(_mm256_and_si256(q, low_words)),
    );
    let odd = _mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), odd_multiplier),
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

/// [`requantize_lanes`] on sixteen lanes (AVX-512 F): the same formula, kept as a second body
/// because the 256-bit one must also run on AVX2-only hosts and the 512-bit intrinsics differ
/// in type and name (the blend is a mask register here).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn requantize_lanes16(
    x: core::arch::x86_64::__m512i,
    lanes: &RequantLanes<16>,
    (offset, low, high): (i32, i32, i32),
) -> core::arch::x86_64::__m512i {
    use core::arch::x86_64::*;
    // SAFETY: each `lanes` row is 16 int32 (64 bytes), read in place; unaligned loads.
    let [multiplier, odd_multiplier, rounding, high_shift] =
        lanes.map(|row| unsafe { _mm512_loadu_si512(row.as_ptr().cast()) });
    let differ = _mm512_srai_epi32::<31>(x);
    let q = _mm512_add_epi32(rounding, _mm512_slli_epi32::<1>(differ));
    let low_words = _mm512_set1_epi64(0xFFFF_FFFF);
    let even = _mm512_add_epi64(
        _mm512_mul_epi32(x, multiplier),
        _mm512_slli_epi64::<30>(_mm512_and_si512(q, low_words)),
    );
    let odd = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), odd_multiplier),
        _mm512_slli_epi64::<30>(_mm512_srli_epi64::<32>(q)),
    );
    let high_words = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64::<32>(even), odd);
    let scaled = _mm512_srav_epi32(high_words, high_shift);
    _mm512_min_epi32(
        _mm512_max_epi32(
            _mm512_add_epi32(scaled, _mm512_set1_epi32(offset)),
            _mm512_set1_epi32(low),
        ),
        _mm512_set1_epi32(high),
    )
}

/// [`conv2d_patches`] compiled for AVX2 (16 int16 MACs per `vpmaddwd` instead of SSE2's 8):
/// the host build targets baseline x86-64, so the wider code is chosen at run time.
#[target_feature(enable = "avx2")]
fn conv2d_avx2(
    params: &ConvParams,
    filters: (&[i8], &[i8], &[i32]),
    requant: PerChannelRequant<'_>,
    band: (Range<usize>, &mut [i8]),
) {
    conv2d_patches(
        params,
        filters,
        requant,
        band,
        (|d, s, o| gather_avx2(d, s, o), |p, f| dot_avx2(p, f)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_requantisation_equals_the_scalar_one() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("SKIP: no AVX2 on this CPU");
            return;
        }
        let p = ConvParams {
            input_height: 1,
            input_width: 1,
            input_channels: 1,
            output_height: 1,
            output_width: 1,
            output_channels: 8,
            kernel: 1,
            stride: 1,
            padding: 0,
            input_offset: 0,
            output_offset: 0,
            activation_min: -128,
            activation_max: 127,
        };
        let mut state = 0x0123_4567_89AB_CDEF_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 32) as i32
        };
        for round in 0..20_000 {
            let bias: [i32; 8] = core::array::from_fn(|_| next() >> 8);
            // The vector form takes non-negative multipliers (the only ones quantisation makes).
            let multipliers: [i32; 8] = core::array::from_fn(|_| next() & i32::MAX);
            let shifts: [i32; 8] = core::array::from_fn(|_| -1 - (next().rem_euclid(31)));
            let sums: [i32; 8] = core::array::from_fn(|lane| match round % 4 {
                0 => next(),
                1 => next() >> 12,
                2 => [
                    i32::MIN,
                    i32::MAX,
                    0,
                    -1,
                    1,
                    i32::MIN + 1,
                    1 << 30,
                    -(1 << 30),
                ][lane],
                _ => next() >> 20,
            });
            let (offset, low, high) = (next() % 200, -128 + next().rem_euclid(100), 127);
            let rq = PerChannelRequant {
                multipliers: &multipliers,
                shifts: &shifts,
            };
            let packed = PackedFilters::new(&[1; 8], (8, 1), &bias, rq, 0).unwrap();
            let lanes = &packed.requant.as_ref().unwrap()[0];
            let biased: [i32; 8] = core::array::from_fn(|l| bias[l].wrapping_add(sums[l]));
            // SAFETY: AVX2 checked above; `biased` is 8 int32.
            let got = unsafe {
                requantize_lanes_avx2(
                    core::arch::x86_64::_mm256_loadu_si256(biased.as_ptr().cast()),
                    lanes,
                    (offset, low, high),
                )
            };
            let q = ConvParams {
                output_offset: offset,
                activation_min: low as i8,
                activation_max: high as i8,
                ..p
            };
            for lane in 0..8 {
                let want = q.finish(
                    bias[lane].wrapping_add(sums[lane]),
                    multipliers[lane],
                    shifts[lane],
                );
                assert_eq!(got[lane] as i8, want, "round {round} lane {lane}");
            }
        }
    }
}
