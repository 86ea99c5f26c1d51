//! On-device check of the DSP convolution against the generic reference: the host tests
//! cannot run the ARMv7E-M assembly, and the golden models only reach the channel counts
//! their layers have. Every combination below runs both kernels on pseudo-random int8 data
//! and must agree bit for bit: output channels 1–7 (pairs and a single channel), input
//! channels 3, 4 and 8 (filters padded to a multiple of eight, the gather with and without the
//! swapped order), one layer too wide for the padded copy (the one-pixel path with a tail),
//! kernels 1 and 3, strides 1 and 2 (odd and even output widths: two-pixel passes and a
//! row's last single pixel), padding 0 and 1, and requantisation shifts on both sides of zero
//! (the prepared right-shift form and the general one).
use scanside_int8::kernels::conv::{conv2d, conv2d_reference, ConvParams};
use scanside_int8::PerChannelRequant;

const SIDE: usize = 5;
const MAX_CIN: usize = 12;
const MAX_COUT: usize = 20;

/// (input channels, output channels): every count from 1 to 7 output channels over 3, 4 and 8
/// input channels, then a layer too wide for the padded-filter copy (12 × 3 × 3 = 108 values,
/// 20 channels), which takes the one-pixel path with a four-value tail.
const CHANNELS: [(usize, usize); 22] = [
    (3, 1),
    (4, 1),
    (8, 1),
    (3, 2),
    (4, 2),
    (8, 2),
    (3, 3),
    (4, 3),
    (8, 3),
    (3, 4),
    (4, 4),
    (8, 4),
    (3, 5),
    (4, 5),
    (8, 5),
    (3, 6),
    (4, 6),
    (8, 6),
    (3, 7),
    (4, 7),
    (8, 7),
    (12, 20),
];

/// A small linear congruential generator: deterministic data without a dependency.
struct Lcg(u32);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        self.0
    }

    fn int8(&mut self) -> i8 {
        (self.next() >> 24) as i8
    }
}

/// Runs every combination; returns the number of layers compared, or the first that differed
/// (as `Err(index)`).
#[inline(never)] // its own symbol: not counted as engine code (`nm` on the ELF)
pub fn run() -> Result<usize, usize> {
    let mut rng = Lcg(0x5CA7_51DE);
    let mut compared = 0;
    for (cin, cout) in CHANNELS {
        for (kernel, padding) in [(1, 0), (3, 0), (3, 1)] {
            for stride in [1, 2] {
                let out_side = (SIDE + 2 * padding - kernel) / stride + 1;
                let params = ConvParams {
                    input_height: SIDE,
                    input_width: SIDE,
                    input_channels: cin,
                    output_height: out_side,
                    output_width: out_side,
                    output_channels: cout,
                    kernel,
                    stride,
                    padding,
                    input_offset: i32::from(rng.int8()),
                    output_offset: i32::from(rng.int8()),
                    activation_min: -128,
                    activation_max: if compared % 2 == 0 { 127 } else { 90 },
                };
                let mut input = [0_i8; SIDE * SIDE * MAX_CIN];
                let mut weights = [0_i8; MAX_COUT * 9 * MAX_CIN];
                let mut bias = [0_i32; MAX_COUT];
                let mut multipliers = [0_i32; MAX_COUT];
                let mut shifts = [0_i32; MAX_COUT];
                let input = &mut input[..SIDE * SIDE * cin];
                let weights = &mut weights[..cout * kernel * kernel * cin];
                input.iter_mut().for_each(|x| *x = rng.int8());
                weights.iter_mut().for_each(|w| *w = rng.int8());
                for c in 0..cout {
                    bias[c] = (rng.next() >> 18) as i32 - (1 << 13);
                    multipliers[c] = (1 << 30) | (rng.next() >> 2) as i32;
                    // Mostly right shifts (trained layers), sometimes 0 or a left shift.
                    shifts[c] = (rng.next() % 14) as i32 - 12;
                }
                let requant = || PerChannelRequant {
                    multipliers: &multipliers[..cout],
                    shifts: &shifts[..cout],
                };
                let mut fast = [0_i8; SIDE * SIDE * MAX_COUT];
                let mut reference = [0_i8; SIDE * SIDE * MAX_COUT];
                let n = out_side * out_side * cout;
                let bias = &bias[..cout];
                let ran_fast = conv2d(&params, input, weights, bias, requant(), &mut fast[..n]);
                let ran_reference = conv2d_reference(
                    &params,
                    input,
                    weights,
                    bias,
                    requant(),
                    &mut reference[..n],
                );
                if ran_fast.is_err() || ran_reference.is_err() || fast[..n] != reference[..n] {
                    defmt::error!(
                            "kernel check {=usize}: conv {=usize}->{=usize} k{=usize} s{=usize} p{=usize} differs",
                            compared,
                            cin,
                            cout,
                            kernel,
                            stride,
                            padding
                        );
                    return Err(compared);
                }
                compared += 1;
            }
        }
    }
    Ok(compared)
}
