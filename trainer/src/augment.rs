//! Augmentations for self-supervised views and fine-tuning, on `C×H×W` images in `[0, 1]`.
//!
//! burn has no RandomResizedCrop or ColorJitter, so they are written here on plain slices. They
//! run on the CPU in parallel (rayon), and are deterministic: image `i` of step `s` draws from
//! its own RNG seeded by `(seed, s, i)`, whatever the thread count. The crop's minimum scale is
//! kept large by default so that a small lesion is not cropped out of the view.

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
    /// Probability of applying colour jitter.
    pub jitter_p: f32,
    /// Brightness jitter strength (factor drawn from `[1-b, 1+b]`).
    pub brightness: f32,
    /// Contrast jitter strength.
    pub contrast: f32,
    /// Saturation jitter strength (colour images only).
    pub saturation: f32,
    /// Probability of converting a colour view to gray.
    pub grayscale_p: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::derm_ssl()
    }
}

impl AugmentConfig {
    /// SimCLR-style views for dermoscopy, with a gentler crop (≥ 35 % of the area).
    pub fn derm_ssl() -> Self {
        Self {
            crop_scale: [0.35, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            hflip: 0.5,
            vflip: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            grayscale_p: 0.2,
        }
    }

    /// Light augmentation for supervised fine-tuning: flips and a mild crop.
    pub fn finetune() -> Self {
        Self {
            crop_scale: [0.7, 1.0],
            jitter_p: 0.5,
            brightness: 0.1,
            contrast: 0.1,
            saturation: 0.1,
            grayscale_p: 0.0,
            ..Self::derm_ssl()
        }
    }

    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            crop_scale: [1.0, 1.0],
            crop_ratio: [1.0, 1.0],
            hflip: 0.0,
            vflip: 0.0,
            jitter_p: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            grayscale_p: 0.0,
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
    let plane = g.height * g.width;
    for c in 0..g.channels {
        let src_plane = &src[c * plane..(c + 1) * plane];
        for oy in 0..g.height {
            for ox in 0..g.width {
                let fx = if flip_x { g.width - 1 - ox } else { ox } as f32;
                let fy = if flip_y { g.height - 1 - oy } else { oy } as f32;
                // Bilinear sample at the centre of the output pixel mapped into the crop box.
                let sx = x0 + (fx + 0.5) * cw / w - 0.5;
                let sy = y0 + (fy + 0.5) * ch / h - 0.5;
                dst[c * plane + oy * g.width + ox] = bilinear(src_plane, g.width, g.height, sx, sy);
            }
        }
    }
    if rng.random::<f32>() < config.jitter_p {
        let b = 1.0 + rng.random_range(-config.brightness..=config.brightness);
        let k = 1.0 + rng.random_range(-config.contrast..=config.contrast);
        let s = 1.0 + rng.random_range(-config.saturation..=config.saturation);
        dst.iter_mut().for_each(|v| *v *= b);
        let mean = dst.iter().sum::<f32>() / dst.len() as f32;
        dst.iter_mut().for_each(|v| *v = (*v - mean) * k + mean);
        if g.channels == 3 {
            blend_with_gray(dst, plane, s);
        }
    }
    if g.channels == 3 && rng.random::<f32>() < config.grayscale_p {
        blend_with_gray(dst, plane, 0.0);
    }
    dst.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
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

fn bilinear(plane: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
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
}
