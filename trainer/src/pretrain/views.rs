//! What a pretraining step trains on, made on a background thread while the previous step
//! trains: two augmented views of each image of the batch (for MICLe, the second from another
//! image of the same case when it has one) and, when those objectives are on, turned views with
//! their quarter turns and masked views with their patch targets — cut into micro-batches
//! alike. Every random draw derives from the seed and the step, so a resumed run redraws
//! exactly; nothing here touches the model.

use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scanside_runtime::preprocess::PreprocessConfig;

use crate::augment::{augment_batch, AugmentConfig, Geometry};
use crate::config::{Method, Objectives, PretrainConfig};
use crate::data::{ImageSet, Prefetch};
use crate::model::RECONSTRUCTION_GRID;
use crate::optim::step_seed;

/// Turns a square `C×S×S` image by `quarter_turns × 90°`.
pub fn rotate_quarter(chw: &[f32], channels: usize, side: usize, quarter_turns: usize) -> Vec<f32> {
    let plane = side * side;
    let mut out = vec![0.0; chw.len()];
    for c in 0..channels {
        for y in 0..side {
            for x in 0..side {
                let (sy, sx) = match quarter_turns % 4 {
                    0 => (y, x),
                    1 => (x, side - 1 - y),
                    2 => (side - 1 - y, side - 1 - x),
                    _ => (side - 1 - x, y),
                };
                out[c * plane + y * side + x] = chw[c * plane + sy * side + sx];
            }
        }
    }
    out
}

/// Blanks half of the `G×G` patches of a `C×H×W` view (to the normalisation mean, i.e. 0
/// after normalising) and returns the per-patch means of the original (normalised) as targets
/// with a mask of the blanked patches (`C·G·G` each).
fn mask_patches(
    view: &mut [f32],
    preprocess: &PreprocessConfig,
    rng: &mut impl Rng,
) -> (Vec<f32>, Vec<f32>) {
    let (c, h, w) = (
        preprocess.channels as usize,
        preprocess.height as usize,
        preprocess.width as usize,
    );
    let g = RECONSTRUCTION_GRID;
    let mut targets = vec![0.0; c * g * g];
    let mut mask = vec![0.0; c * g * g];
    let blanked: Vec<bool> = (0..g * g).map(|_| rng.random::<bool>()).collect();
    for ch in 0..c {
        for py in 0..g {
            for px in 0..g {
                let (y0, y1) = (py * h / g, (py + 1) * h / g);
                let (x0, x1) = (px * w / g, (px + 1) * w / g);
                let mut sum = 0.0;
                for y in y0..y1 {
                    for x in x0..x1 {
                        let at = ch * h * w + y * w + x;
                        sum += view[at];
                        if blanked[py * g + px] {
                            view[at] = preprocess.mean[ch];
                        }
                    }
                }
                let count = ((y1 - y0) * (x1 - x0)).max(1) as f32;
                let k = ch * g * g + py * g + px;
                targets[k] = (sum / count - preprocess.mean[ch]) / preprocess.std[ch];
                mask[k] = f32::from(u8::from(blanked[py * g + px]));
            }
        }
    }
    (targets, mask)
}

/// One step's inputs, prepared on the loader thread.
pub(super) struct StepInputs {
    /// Two views per image (`2N` images).
    views: Vec<f32>,
    /// MICLe pairs made of two different images.
    pub(super) cross: usize,
    /// Turned views and how many quarter turns each.
    rotated: Option<(Vec<f32>, Vec<i64>)>,
    /// Masked views, patch-mean targets and mask.
    masked: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

/// The inputs of one micro-batch: slices of a step's inputs, in the same layout.
pub(super) struct MicroBatch {
    /// Images in this micro-batch.
    pub(super) images: usize,
    /// Both views of its images: `images` first views, then their `images` second views.
    pub(super) views: Vec<f32>,
    /// Turned views and how many quarter turns each.
    pub(super) rotated: Option<(Vec<f32>, Vec<i64>)>,
    /// Masked views, patch-mean targets and mask.
    pub(super) masked: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

impl StepInputs {
    /// Micro-batch `k` of `count` (of `image_len` floats per image): the step's images cut into
    /// `count` equal runs, every input cut alike.
    pub(super) fn micro_batch(&self, k: usize, count: usize, image_len: usize) -> MicroBatch {
        let n = self.views.len() / image_len / 2;
        let m = n / count;
        let rows = |v: &[f32], per: usize| v[k * m * per..(k + 1) * m * per].to_vec();
        let mut views = rows(&self.views[..n * image_len], image_len);
        views.extend(rows(&self.views[n * image_len..], image_len));
        MicroBatch {
            images: m,
            views,
            rotated: self.rotated.as_ref().map(|(turned, turns)| {
                (rows(turned, image_len), turns[k * m..(k + 1) * m].to_vec())
            }),
            masked: self.masked.as_ref().map(|(blanked, targets, mask)| {
                let per = targets.len() / n;
                (
                    rows(blanked, image_len),
                    rows(targets, per),
                    rows(mask, per),
                )
            }),
        }
    }
}

/// MICLe partners: for each training image, the other images of its bag.
fn bag_partners(images: &ImageSet) -> Vec<Vec<usize>> {
    let mut by_group: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, g) in images.groups.iter().enumerate() {
        by_group.entry(g.as_str()).or_default().push(i);
    }
    images
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            by_group[g.as_str()]
                .iter()
                .copied()
                .filter(|&j| j != i)
                .collect()
        })
        .collect()
}

/// Makes any step's inputs; it moves to the loader thread.
pub(super) struct ViewMaker {
    images: Arc<ImageSet>,
    /// MICLe partners of each image (none for SimCLR).
    partners: Vec<Vec<usize>>,
    augment: AugmentConfig,
    objectives: Objectives,
    seed: u64,
    geometry: Geometry,
    preprocess: PreprocessConfig,
}

impl ViewMaker {
    /// The views a run's config asks for, of its training images.
    pub(super) fn new(
        config: &PretrainConfig,
        images: Arc<ImageSet>,
        geometry: Geometry,
        preprocess: &PreprocessConfig,
    ) -> Self {
        let partners = match config.method {
            Method::Simclr => vec![Vec::new(); images.len()],
            Method::Micle => bag_partners(&images),
        };
        Self {
            images,
            partners,
            augment: config.augment.clone(),
            objectives: config.objectives,
            seed: config.seed,
            geometry,
            preprocess: preprocess.clone(),
        }
    }

    /// The inputs of step `step`, whose images are `batch`.
    pub(super) fn step_inputs(&self, step: usize, batch: &[usize]) -> StepInputs {
        // MICLe: the second view comes from another image of the same case when there is one.
        // One generator serves the pairing, then the turns, then the masks, in that order.
        let mut rng = ChaCha8Rng::seed_from_u64(step_seed(self.seed, step) ^ 0x006d_6963_6c65);
        let second: Vec<usize> = batch
            .iter()
            .map(|&i| match self.partners[i].len() {
                0 => i,
                n => self.partners[i][rng.random_range(0..n)],
            })
            .collect();
        let cross = batch.iter().zip(&second).filter(|(a, b)| a != b).count();
        let first: Vec<&[f32]> = batch.iter().map(|&i| self.images.image(i)).collect();
        let other: Vec<&[f32]> = second.iter().map(|&i| self.images.image(i)).collect();
        let seed = step_seed(self.seed, step);
        let view_a = augment_batch(&first, self.geometry, &self.augment, seed, 0);
        let mut views = view_a.clone();
        views.extend(augment_batch(&other, self.geometry, &self.augment, seed, 1));
        let rotated = (self.objectives.rotation > 0.0).then(|| self.turned(&view_a, &mut rng));
        let masked = (self.objectives.reconstruction > 0.0).then(|| self.masked(&view_a, &mut rng));
        StepInputs {
            views,
            cross,
            rotated,
            masked,
        }
    }

    /// Each first view turned by a random number of quarter turns, and the turns.
    fn turned(&self, view_a: &[f32], rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<i64>) {
        let geometry = self.geometry;
        let mut turned = Vec::with_capacity(view_a.len());
        let mut turns = Vec::with_capacity(view_a.len() / geometry.len());
        for v in view_a.chunks_exact(geometry.len()) {
            let q = rng.random_range(0..4_usize);
            turned.extend(rotate_quarter(v, geometry.channels, geometry.width, q));
            turns.push(q as i64);
        }
        (turned, turns)
    }

    /// Each first view with half its patches blanked, the patch-mean targets and the mask.
    fn masked(&self, view_a: &[f32], rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut blanked = view_a.to_vec();
        let (mut targets, mut mask) = (Vec::new(), Vec::new());
        for v in blanked.chunks_exact_mut(self.geometry.len()) {
            let (t, m) = mask_patches(v, &self.preprocess, rng);
            targets.extend(t);
            mask.extend(m);
        }
        (blanked, targets, mask)
    }
}

/// The inputs of the steps of `schedule` from `first_step` on, made two steps ahead on a
/// background thread.
pub(super) fn spawn_loader(
    maker: ViewMaker,
    schedule: Vec<Vec<usize>>,
    first_step: usize,
) -> Prefetch<StepInputs> {
    Prefetch::spawn(schedule.len() - first_step, 2, move |k| {
        let step = first_step + k;
        maker.step_inputs(step, &schedule[step])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cut_every_input_alike_and_reassemble_the_step() {
        let image_len = 3;
        let n = 4;
        // Image i's first view holds i, its second view 100 + i, turned 200 + i, masked 300 + i.
        let fill = |base: f32| -> Vec<f32> {
            (0..n)
                .flat_map(|i| vec![base + i as f32; image_len])
                .collect()
        };
        let mut views = fill(0.0);
        views.extend(fill(100.0));
        let inputs = StepInputs {
            views,
            cross: 0,
            rotated: Some((fill(200.0), (0..n as i64).collect())),
            masked: Some((fill(300.0), fill(400.0), fill(500.0))),
        };
        let first = |v: &[f32]| v.chunks(image_len).map(|c| c[0]).collect::<Vec<_>>();
        for k in 0..2 {
            let micro = inputs.micro_batch(k, 2, image_len);
            let (a, b) = (2.0 * k as f32, 2.0 * k as f32 + 1.0);
            assert_eq!(micro.images, 2);
            assert_eq!(first(&micro.views), vec![a, b, 100.0 + a, 100.0 + b]);
            let (turned, turns) = micro.rotated.unwrap();
            assert_eq!(first(&turned), vec![200.0 + a, 200.0 + b]);
            assert_eq!(turns, vec![a as i64, b as i64]);
            let (blanked, targets, mask) = micro.masked.unwrap();
            assert_eq!(first(&blanked), vec![300.0 + a, 300.0 + b]);
            assert_eq!(first(&targets), vec![400.0 + a, 400.0 + b]);
            assert_eq!(first(&mask), vec![500.0 + a, 500.0 + b]);
        }
        let whole = inputs.micro_batch(0, 1, image_len);
        assert_eq!(whole.views, inputs.views);
    }

    #[test]
    fn four_quarter_turns_are_the_identity_and_one_turns_columns_into_rows() {
        let img: Vec<f32> = (0..2 * 9).map(|i| i as f32).collect();
        let mut t = img.clone();
        for _ in 0..4 {
            t = rotate_quarter(&t, 2, 3, 1);
        }
        assert_eq!(t, img);
        let once = rotate_quarter(&img, 2, 3, 1);
        assert_eq!(&once[..3], &[2.0, 5.0, 8.0]);
        assert_eq!(
            rotate_quarter(&img, 2, 3, 2),
            rotate_quarter(&once, 2, 3, 1)
        );
    }

    #[test]
    fn masking_blanks_patches_to_the_mean_and_targets_their_normalised_means() {
        let pre = PreprocessConfig::new(16, 1, vec![0.5], vec![0.25]);
        let mut view = vec![0.75_f32; 256];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (targets, mask) = mask_patches(&mut view, &pre, &mut rng);
        assert_eq!(targets.len(), 64);
        assert!(
            targets.iter().all(|t| (t - 1.0).abs() < 1e-6),
            "(0.75 - 0.5) / 0.25"
        );
        let blanked = mask.iter().filter(|&&m| m == 1.0).count();
        assert!(blanked > 10 && blanked < 54, "{blanked} of 64");
        let at_mean = view.iter().filter(|&&v| v == 0.5).count();
        assert_eq!(
            at_mean,
            blanked * 4,
            "each blanked 2×2 patch is set to the mean"
        );
    }
}
