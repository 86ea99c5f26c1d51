//! Augmentations for self-supervised views and fine-tuning, on `C×H×W` images in `[0, 1]`.
//!
//! burn (and burn-vision) has no RandomResizedCrop, ColorJitter or random rotation, so they are
//! written here on plain float slices rather than through `image`/`imageproc`: crop, flips and
//! rotation are folded into one inverse affine map and sampled once (one interpolation instead
//! of three), on the planar float layout the model consumes, without converting to 8-bit image
//! buffers and back. They run on the CPU in parallel (rayon) and are deterministic: image `i`
//! of stream `s` draws from its own RNG seeded by `(seed, s, i)`, whatever the thread count.
//! Normalisation is not here: it is the runtime's [`scanside_runtime::preprocess`], applied
//! after augmentation so that training and screening normalise identically.
//!
//! Presets ([`Preset`]) keep small findings in view: dermoscopy crops keep ≥ 35 % of the area,
//! chest X-ray crops ≥ 60 % and never blur or shift hue.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Augmentation settings, saved with the run's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Random resized crop area range, as fractions of the image (`[1, 1]` disables cropping).
    pub crop_scale: [f32; 2],
    /// Aspect-ratio range of the crop.
    pub crop_ratio: [f32; 2],
    /// Probability of a horizontal flip.
    pub hflip: f32,
    /// Probability of a vertical flip (dermoscopy has no up or down).
    pub vflip: f32,
    /// Probability of a random rotation.
    pub rotation_p: f32,
    /// Largest rotation in degrees (either way); corners are filled by reflection.
    pub rotation_degrees: f32,
    /// Probability of applying colour / intensity jitter.
    pub jitter_p: f32,
    /// Brightness jitter strength (factor drawn from `[1-b, 1+b]`).
    pub brightness: f32,
    /// Contrast jitter strength.
    pub contrast: f32,
    /// Saturation jitter strength (colour images only).
    pub saturation: f32,
    /// Hue shift, as a fraction of the colour circle (`[-h, h]`, at most 0.5; colour only).
    pub hue: f32,
    /// Gamma jitter strength (exponent drawn from `[1-g, 1+g]`): the intensity jitter for
    /// grayscale images, where saturation and hue mean nothing.
    pub gamma: f32,
    /// Probability of converting a colour view to gray.
    pub grayscale_p: f32,
    /// Probability of a Gaussian blur.
    pub blur_p: f32,
    /// Blur sigma range in pixels of a 224-pixel image (scaled to the actual width, as
    /// SimCLR's kernel is 10 % of the image).
    pub blur_sigma: [f32; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::derm_ssl()
    }
}

/// Named augmentation sets for self-supervised views and for fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Dermoscopy: SimCLR's set with a gentler crop (≥ 35 %), both flips and rotation (a
    /// lesion has no up), colour jitter including hue, blur.
    #[default]
    Derm,
    /// Chest X-ray: crops keep ≥ 60 % so that small findings survive, small rotations, no
    /// vertical flip, no blur, no hue or saturation; intensity (brightness, contrast, gamma)
    /// jitter instead.
    Cxr,
    /// SimCLR's original ImageNet set (crop from 8 %).
    Generic,
}

impl Preset {
    /// Views for self-supervised pretraining.
    pub fn ssl(self) -> AugmentConfig {
        match self {
            Preset::Derm => AugmentConfig {
                crop_scale: [0.35, 1.0],
                crop_ratio: [0.75, 4.0 / 3.0],
                hflip: 0.5,
                vflip: 0.5,
                rotation_p: 0.5,
                rotation_degrees: 45.0,
                jitter_p: 0.8,
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
                gamma: 0.0,
                grayscale_p: 0.2,
                blur_p: 0.5,
                blur_sigma: [0.1, 2.0],
            },
            Preset::Cxr => AugmentConfig {
                crop_scale: [0.6, 1.0],
                crop_ratio: [0.85, 1.0 / 0.85],
                hflip: 0.5,
                vflip: 0.0,
                rotation_p: 0.8,
                rotation_degrees: 10.0,
                jitter_p: 0.8,
                brightness: 0.3,
                contrast: 0.3,
                saturation: 0.0,
                hue: 0.0,
                gamma: 0.3,
                grayscale_p: 0.0,
                blur_p: 0.0,
                blur_sigma: [0.1, 2.0],
            },
            Preset::Generic => AugmentConfig {
                crop_scale: [0.08, 1.0],
                vflip: 0.0,
                rotation_p: 0.0,
                ..Preset::Derm.ssl()
            },
        }
    }

    /// Light augmentation for supervised fine-tuning.
    pub fn finetune(self) -> AugmentConfig {
        let ssl = self.ssl();
        AugmentConfig {
            crop_scale: [ssl.crop_scale[0].max(0.7), 1.0],
            jitter_p: 0.5,
            brightness: 0.1,
            contrast: 0.1,
            saturation: ssl.saturation.min(0.1),
            hue: 0.0,
            gamma: ssl.gamma.min(0.1),
            grayscale_p: 0.0,
            blur_p: 0.0,
            ..ssl
        }
    }
}

impl AugmentConfig {
    /// SimCLR-style views for dermoscopy ([`Preset::Derm`]).
    pub fn derm_ssl() -> Self {
        Preset::Derm.ssl()
    }

    /// Light augmentation for fine-tuning on dermoscopy ([`Preset::Derm`]).
    pub fn finetune() -> Self {
        Preset::Derm.finetune()
    }

    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            crop_scale: [1.0, 1.0],
            crop_ratio: [1.0, 1.0],
            hflip: 0.0,
            vflip: 0.0,
            rotation_p: 0.0,
            rotation_degrees: 0.0,
            jitter_p: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            gamma: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            blur_sigma: [0.1, 2.0],
        }
    }
}

/// Image geometry shared by a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Channels (1 or 3).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Geometry {
    /// The model-input geometry a preprocessing config produces.
    pub fn of(preprocess: &scanside_runtime::preprocess::PreprocessConfig) -> Self {
        Self {
            channels: preprocess.channels as usize,
            height: preprocess.height as usize,
            width: preprocess.width as usize,
        }
    }

    /// Floats per image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the image is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Augments a batch in parallel: `out` receives one augmented copy of each source image, in
/// order. `stream` distinguishes independent draws (e.g. the two SimCLR views).
pub fn augment_batch(
    sources: &[&[f32]],
    geometry: Geometry,
    config: &AugmentConfig,
    seed: u64,
    stream: u64,
) -> Vec<f32> {
    let mut out = vec![0.0; sources.len() * geometry.len()];
    out.par_chunks_mut(geometry.len())
        .zip(sources.par_iter())
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(stream.wrapping_mul(1 << 32).wrapping_add(i as u64));
            augment_one(src, dst, geometry, config, &mut rng);
        });
    out
}

/// Augments one image into `dst`.
pub fn augment_one(
    src: &[f32],
    dst: &mut [f32],
    g: Geometry,
    config: &AugmentConfig,
    rng: &mut impl Rng,
) {
    let (h, w) = (g.height as f32, g.width as f32);
    // Random resized crop: choose an area fraction and aspect ratio, then place the box.
    let (mut ch, mut cw) = (h, w);
    if config.crop_scale[0] < 1.0 {
        let area = rng.random_range(config.crop_scale[0]..=config.crop_scale[1]) * h * w;
        let log_ratio = rng.random_range(config.crop_ratio[0].ln()..=config.crop_ratio[1].ln());
        let ratio = log_ratio.exp();
        cw = (area * ratio).sqrt().min(w);
        ch = (area / ratio).sqrt().min(h);
    }
    let y0 = rng.random_range(0.0..=(h - ch).max(0.0));
    let x0 = rng.random_range(0.0..=(w - cw).max(0.0));
    let flip_x = rng.random::<f32>() < config.hflip;
    let flip_y = rng.random::<f32>() < config.vflip;
    let angle = if rng.random::<f32>() < config.rotation_p && config.rotation_degrees > 0.0 {
        rng.random_range(-config.rotation_degrees..=config.rotation_degrees)
            .to_radians()
    } else {
        0.0
    };
    let view = ViewGeometry {
        x0,
        y0,
        crop_width: cw,
        crop_height: ch,
        flip_x,
        flip_y,
        angle,
    };
    resample(src, dst, g, &view);
    let plane = g.height * g.width;
    if rng.random::<f32>() < config.jitter_p {
        let b = 1.0 + rng.random_range(-config.brightness..=config.brightness);
        let k = 1.0 + rng.random_range(-config.contrast..=config.contrast);
        let s = 1.0 + rng.random_range(-config.saturation..=config.saturation);
        let hue = config.hue.min(0.5);
        let hue_shift = rng.random_range(-hue..=hue);
        let gamma = 1.0 + rng.random_range(-config.gamma..=config.gamma);
        dst.iter_mut().for_each(|v| *v = (*v * b).clamp(0.0, 1.0));
        let mean = dst.iter().sum::<f32>() / dst.len() as f32;
        dst.iter_mut()
            .for_each(|v| *v = ((*v - mean) * k + mean).clamp(0.0, 1.0));
        if g.channels == 3 {
            blend_with_gray(dst, plane, s);
            if hue_shift != 0.0 {
                shift_hue(dst, plane, hue_shift);
            }
        } else if gamma != 1.0 {
            dst.iter_mut()
                .for_each(|v| *v = v.clamp(0.0, 1.0).powf(gamma));
        }
    }
    if g.channels == 3 && rng.random::<f32>() < config.grayscale_p {
        blend_with_gray(dst, plane, 0.0);
    }
    if rng.random::<f32>() < config.blur_p {
        let sigma = rng.random_range(config.blur_sigma[0]..=config.blur_sigma[1]) * w / 224.0;
        gaussian_blur(dst, g, sigma);
    }
    dst.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
}

/// Where one view samples its source: a crop box, flips, and a rotation about the box centre.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ViewGeometry {
    x0: f32,
    y0: f32,
    crop_width: f32,
    crop_height: f32,
    flip_x: bool,
    flip_y: bool,
    /// Radians, counter-clockwise in image coordinates.
    angle: f32,
}

/// Samples the view once: output pixel → crop-box coordinates relative to its centre → rotate
/// → source pixel, bilinear.
fn resample(src: &[f32], dst: &mut [f32], g: Geometry, view: &ViewGeometry) {
    let (h, w) = (g.height as f32, g.width as f32);
    let (sin, cos) = view.angle.sin_cos();
    let cx = view.x0 + view.crop_width / 2.0;
    let cy = view.y0 + view.crop_height / 2.0;
    let plane = g.height * g.width;
    for oy in 0..g.height {
        let fy = if view.flip_y { g.height - 1 - oy } else { oy } as f32;
        let v = ((fy + 0.5) / h - 0.5) * view.crop_height;
        for ox in 0..g.width {
            let fx = if view.flip_x { g.width - 1 - ox } else { ox } as f32;
            let u = ((fx + 0.5) / w - 0.5) * view.crop_width;
            let sx = cx + cos * u - sin * v - 0.5;
            let sy = cy + sin * u + cos * v - 0.5;
            for c in 0..g.channels {
                let src_plane = &src[c * plane..(c + 1) * plane];
                dst[c * plane + oy * g.width + ox] =
                    bilinear_reflect(src_plane, g.width, g.height, sx, sy);
            }
        }
    }
}

/// `gray + factor · (colour − gray)` per pixel: 0 gives gray, 1 the original colour.
fn blend_with_gray(chw: &mut [f32], plane: usize, factor: f32) {
    for i in 0..plane {
        let (r, g, b) = (chw[i], chw[plane + i], chw[2 * plane + i]);
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        chw[i] = y + factor * (r - y);
        chw[plane + i] = y + factor * (g - y);
        chw[2 * plane + i] = y + factor * (b - y);
    }
}

/// Rotates every pixel's hue by `shift` turns (HSV), as torchvision's `adjust_hue`.
fn shift_hue(chw: &mut [f32], plane: usize, shift: f32) {
    for i in 0..plane {
        let (r, g, b) = (
            chw[i].clamp(0.0, 1.0),
            chw[plane + i].clamp(0.0, 1.0),
            chw[2 * plane + i].clamp(0.0, 1.0),
        );
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let delta = max - min;
        if delta <= f32::EPSILON {
            continue; // gray: no hue to turn
        }
        let hue = if max == r {
            ((g - b) / delta).rem_euclid(6.0)
        } else if max == g {
            (b - r) / delta + 2.0
        } else {
            (r - g) / delta + 4.0
        } / 6.0;
        let hue = (hue + shift).rem_euclid(1.0) * 6.0;
        let sector = hue.floor();
        let f = hue - sector;
        let (p, q, t) = (min, max - delta * f, min + delta * f);
        let (r, g, b) = match sector as u32 {
            0 => (max, t, p),
            1 => (q, max, p),
            2 => (p, max, t),
            3 => (p, q, max),
            4 => (t, p, max),
            _ => (max, p, q),
        };
        chw[i] = r;
        chw[plane + i] = g;
        chw[2 * plane + i] = b;
    }
}

/// Separable Gaussian blur of every channel, radius `⌈3σ⌉`, reflected borders.
fn gaussian_blur(chw: &mut [f32], g: Geometry, sigma: f32) {
    if sigma < 0.05 {
        return;
    }
    let radius = ((3.0 * sigma).ceil() as usize).clamp(1, g.width.max(g.height) / 2);
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|k| {
            let d = k as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        if i < 0 {
            i = -i;
        }
        if i >= n {
            i = 2 * (n - 1) - i;
        }
        i.clamp(0, n - 1) as usize
    };
    let plane = g.height * g.width;
    let mut tmp = vec![0.0; plane];
    for c in 0..g.channels {
        let data = &mut chw[c * plane..(c + 1) * plane];
        for y in 0..g.height {
            for x in 0..g.width {
                tmp[y * g.width + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        w * data[y * g.width
                            + reflect(x as isize + k as isize - radius as isize, g.width)]
                    })
                    .sum();
            }
        }
        for y in 0..g.height {
            for x in 0..g.width {
                data[y * g.width + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        w * tmp[reflect(y as isize + k as isize - radius as isize, g.height)
                            * g.width
                            + x]
                    })
                    .sum();
            }
        }
    }
}

/// Bilinear sample at `(x, y)`; outside the image the image is mirrored (no black corners
/// after rotation, which a model could learn to spot).
fn bilinear_reflect(plane: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let mirror = |v: f32, n: usize| {
        let last = (n - 1) as f32;
        let v = if v < 0.0 { -v } else { v };
        let v = if v > last { 2.0 * last - v } else { v };
        v.clamp(0.0, last)
    };
    let (x, y) = (mirror(x, w), mirror(y, h));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (x - x0 as f32, y - y0 as f32);
    let top = plane[y0 * w + x0] * (1.0 - tx) + plane[y0 * w + x1] * tx;
    let bottom = plane[y1 * w + x0] * (1.0 - tx) + plane[y1 * w + x1] * tx;
    top * (1.0 - ty) + bottom * ty
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Geometry = Geometry {
        channels: 3,
        height: 8,
        width: 8,
    };

    fn ramp() -> Vec<f32> {
        (0..G.len()).map(|i| (i % 64) as f32 / 64.0).collect()
    }

    #[test]
    fn no_augmentation_is_the_identity() {
        let src = ramp();
        let out = augment_batch(&[&src], G, &AugmentConfig::none(), 3, 0);
        for (a, b) in out.iter().zip(&src) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn views_are_deterministic_per_seed_and_differ_between_streams() {
        let src = ramp();
        let cfg = AugmentConfig::derm_ssl();
        let a = augment_batch(&[&src, &src], G, &cfg, 9, 0);
        assert_eq!(a, augment_batch(&[&src, &src], G, &cfg, 9, 0));
        assert_ne!(a, augment_batch(&[&src, &src], G, &cfg, 9, 1));
        assert_ne!(
            a[..G.len()],
            a[G.len()..],
            "two images of one batch drew the same view"
        );
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn horizontal_flip_mirrors_columns() {
        let src = ramp();
        let cfg = AugmentConfig {
            hflip: 1.0,
            ..AugmentConfig::none()
        };
        let out = augment_batch(&[&src], G, &cfg, 0, 0);
        assert!((out[0] - src[7]).abs() < 1e-6 && (out[7] - src[0]).abs() < 1e-6);
    }

    #[test]
    fn every_preset_is_deterministic_per_seed_and_stays_in_range() {
        let src = ramp();
        for preset in [Preset::Derm, Preset::Cxr, Preset::Generic] {
            for cfg in [preset.ssl(), preset.finetune()] {
                let a = augment_batch(&[&src, &src], G, &cfg, 5, 1);
                assert_eq!(a, augment_batch(&[&src, &src], G, &cfg, 5, 1), "{preset:?}");
                assert!(a.iter().all(|v| (0.0..=1.0).contains(v)), "{preset:?}");
            }
        }
    }

    /// `n` views of `src`, one seed each.
    fn views(src: &[f32], g: Geometry, cfg: &AugmentConfig, n: u64) -> Vec<Vec<f32>> {
        (0..n)
            .map(|seed| augment_batch(&[src], g, cfg, seed, 0))
            .collect()
    }

    // These run the augmentation: the old test compared the presets' literals with themselves.
    #[test]
    fn cxr_views_never_shift_hue() {
        let g = Geometry {
            channels: 3,
            height: 16,
            width: 16,
        };
        let plane = 256;
        // Pure red shades: green equals blue everywhere; brightness, contrast and saturation
        // keep them equal, a hue shift does not.
        let red: Vec<f32> = (0..g.len())
            .map(|i| {
                if i < plane {
                    0.2 + 0.05 * (i % 16) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let hue_moved = |cfg: &AugmentConfig| {
            views(&red, g, cfg, 100).iter().any(|v| {
                v[plane..2 * plane]
                    .iter()
                    .zip(&v[2 * plane..])
                    .any(|(green, blue)| (green - blue).abs() > 1e-3)
            })
        };
        assert!(!hue_moved(&Preset::Cxr.ssl()));
        assert!(
            hue_moved(&Preset::Derm.ssl()),
            "the check must see Derm's hue shifts"
        );
    }

    #[test]
    fn cxr_views_keep_up_up_and_most_of_the_image() {
        let g = Geometry {
            channels: 1,
            height: 16,
            width: 16,
        };
        // Dark top half, bright bottom half: a vertical flip (or a large turn) puts bright on top.
        let halves: Vec<f32> = (0..g.len())
            .map(|i| if i < 128 { 0.1 } else { 0.9 })
            .collect();
        let upside_down = |cfg: &AugmentConfig| {
            views(&halves, g, cfg, 100)
                .iter()
                .any(|v| v[..64].iter().sum::<f32>() >= v[192..].iter().sum::<f32>())
        };
        assert!(!upside_down(&Preset::Cxr.ssl()));
        assert!(
            upside_down(&Preset::Derm.ssl()),
            "the check must see Derm's flips"
        );
        // A horizontal ramp: the smallest crop of a preset shows the narrowest range of it.
        let ramp: Vec<f32> = (0..g.len()).map(|i| (i % 16) as f32 / 15.0).collect();
        let narrowest = |cfg: &AugmentConfig| {
            views(&ramp, g, cfg, 200)
                .iter()
                .map(|v| {
                    let (lo, hi) = v
                        .iter()
                        .fold((1.0_f32, 0.0_f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                    hi - lo
                })
                .fold(1.0_f32, f32::min)
        };
        let (cxr, generic) = (
            narrowest(&Preset::Cxr.ssl()),
            narrowest(&Preset::Generic.ssl()),
        );
        assert!(
            cxr > 0.3 && cxr > generic + 0.1,
            "Cxr {cxr}, Generic {generic}"
        );
    }

    #[test]
    fn a_half_turn_of_hue_maps_red_to_cyan_and_back() {
        let mut px = vec![1.0, 0.0, 0.0];
        shift_hue(&mut px, 1, 0.5);
        assert!(
            (px[0] - 0.0).abs() < 1e-5 && (px[1] - 1.0).abs() < 1e-5 && (px[2] - 1.0).abs() < 1e-5,
            "{px:?}"
        );
        shift_hue(&mut px, 1, 0.5);
        assert!(
            (px[0] - 1.0).abs() < 1e-5 && px[1].abs() < 1e-5 && px[2].abs() < 1e-5,
            "{px:?}"
        );
    }

    #[test]
    fn blur_keeps_the_mean_of_a_constant_image_and_smooths_an_edge() {
        let g = Geometry {
            channels: 1,
            height: 9,
            width: 9,
        };
        let mut flat = vec![0.3; g.len()];
        gaussian_blur(&mut flat, g, 1.0);
        assert!(flat.iter().all(|v| (v - 0.3).abs() < 1e-5));
        let mut edge: Vec<f32> = (0..g.len())
            .map(|i| if i % 9 < 4 { 0.0 } else { 1.0 })
            .collect();
        gaussian_blur(&mut edge, g, 1.0);
        assert!(edge[3] > 0.05 && edge[4] < 0.95, "{:?}", &edge[..9]);
    }

    #[test]
    fn a_right_angle_rotation_turns_the_image() {
        let g = Geometry {
            channels: 1,
            height: 4,
            width: 4,
        };
        let src: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut out = vec![0.0; 16];
        let view = ViewGeometry {
            x0: 0.0,
            y0: 0.0,
            crop_width: 4.0,
            crop_height: 4.0,
            flip_x: false,
            flip_y: false,
            angle: std::f32::consts::FRAC_PI_2,
        };
        resample(&src, &mut out, g, &view);
        // out(x, y) = src(x' = 3 - y, y' = x): columns become rows.
        for y in 0..4 {
            for x in 0..4 {
                assert!(
                    (out[y * 4 + x] - src[x * 4 + (3 - y)]).abs() < 1e-4,
                    "{out:?}"
                );
            }
        }
    }
}
