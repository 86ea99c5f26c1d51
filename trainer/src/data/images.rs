//! Loading images: decoded, resized sets ([`ImageSet`]) with their targets and groups, the
//! training set with its normalisation resolved from its own statistics, and evenly spread
//! samples of a partition. Images are read in the order they are asked for, so a seed gives the
//! same set whatever the thread count; nothing here augments or normalises.

use std::path::PathBuf;

use rayon::prelude::*;
use scanside_runtime::preprocess::{to_model_pixels, PreprocessConfig};

use super::{DatasetIndex, Target};
use crate::runlog::progress;
use crate::{Error, Result};

/// Decoded, resized images (`C×H×W`, values in `[0, 1]`, not normalised) with their targets.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// `len × sample_len` floats.
    pub pixels: Vec<f32>,
    /// Label per image.
    pub targets: Vec<Target>,
    /// Sample ids.
    pub ids: Vec<String>,
    /// Group (lesion / patient) per image, for MICLe bags.
    pub groups: Vec<String>,
    /// Where each image came from (file path or array id), for reports.
    pub sources: Vec<String>,
    /// Floats per image.
    pub sample_len: usize,
    /// Files that could not be read and were left out (`--skip-bad`), each with the reason.
    pub skipped: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * self.sample_len..(i + 1) * self.sample_len]
    }

    /// Class index per image, for multi-class data; `None` for multi-label data.
    pub fn class_labels(&self) -> Option<Vec<usize>> {
        self.targets.iter().map(Target::class).collect()
    }

    /// Per-channel mean and standard deviation over all pixels (for the normalisation).
    pub fn channel_stats(&self, channels: usize) -> (Vec<f32>, Vec<f32>) {
        let plane = self.sample_len / channels;
        let mut sum = vec![0.0_f64; channels];
        let mut sq = vec![0.0_f64; channels];
        for img in self.pixels.chunks_exact(self.sample_len) {
            for (c, values) in img.chunks_exact(plane).enumerate() {
                for &v in values {
                    sum[c] += f64::from(v);
                    sq[c] += f64::from(v) * f64::from(v);
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| ((q / n - (s / n).powi(2)).max(1e-8).sqrt()) as f32)
            .collect();
        (mean, std)
    }
}

/// Decodes and resizes the given samples in parallel; the first failure names its file.
pub fn load_images(
    index: &DatasetIndex,
    which: &[usize],
    preprocess: &PreprocessConfig,
) -> Result<ImageSet> {
    load_images_with(index, which, preprocess, false)
}

/// Like [`load_images`]; with `skip_bad`, unreadable images are left out and listed in
/// [`ImageSet::skipped`] instead of stopping the load.
pub fn load_images_with(
    index: &DatasetIndex,
    which: &[usize],
    preprocess: &PreprocessConfig,
    skip_bad: bool,
) -> Result<ImageSet> {
    if which.is_empty() {
        return Err(Error::Data {
            path: index.root().to_path_buf(),
            reason: "the selected partition holds no images".into(),
        });
    }
    let started = std::time::Instant::now();
    let bar = progress(which.len() as u64, "decode");
    let decoded: Vec<Result<Vec<f32>>> = which
        .par_iter()
        .map(|&i| {
            let image = index.decode(i)?;
            let name = PathBuf::from(index.describe_sample(i));
            let pixels = to_model_pixels(&image, preprocess, &name)?;
            bar.inc(1);
            Ok(pixels)
        })
        .collect();
    bar.finish_and_clear();
    let mut set = ImageSet {
        pixels: Vec::with_capacity(which.len() * preprocess.input_len()),
        targets: Vec::with_capacity(which.len()),
        ids: Vec::with_capacity(which.len()),
        groups: Vec::with_capacity(which.len()),
        sources: Vec::with_capacity(which.len()),
        sample_len: preprocess.input_len(),
        skipped: Vec::new(),
    };
    for (&i, d) in which.iter().zip(decoded) {
        let pixels = match d {
            Ok(p) => p,
            Err(e) if skip_bad => {
                set.skipped.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let sample = &index.samples[i];
        set.pixels.extend(pixels);
        set.targets.push(sample.target.clone());
        set.ids.push(sample.id.clone());
        set.groups.push(sample.group.clone());
        set.sources.push(index.describe_sample(i));
    }
    if set.is_empty() {
        return Err(Error::Data {
            path: index.root().to_path_buf(),
            reason: format!("none of the {} selected images could be read", which.len()),
        });
    }
    log::debug!(
        "{}: {} images decoded to {}×{} in {:.1} s ({} skipped)",
        index.root().display(),
        set.len(),
        preprocess.width,
        preprocess.height,
        started.elapsed().as_secs_f64(),
        set.skipped.len()
    );
    Ok(set)
}

/// Loads the given samples and resolves preprocessing from their statistics when unset.
/// With `skip_bad`, unreadable images are listed on stderr and left out.
pub fn load_training_images(
    index: &DatasetIndex,
    which: &[usize],
    image_size: u32,
    channels: usize,
    preprocess: Option<PreprocessConfig>,
    skip_bad: bool,
) -> Result<(ImageSet, PreprocessConfig)> {
    let unnormalised = preprocess.clone().unwrap_or_else(|| {
        PreprocessConfig::new(
            image_size,
            channels as u32,
            vec![0.0; channels],
            vec![1.0; channels],
        )
    });
    let images = load_images_with(index, which, &unnormalised, skip_bad)?;
    report_skipped(&images);
    let resolved = match preprocess {
        Some(p) => p,
        None => {
            let (mean, std) = images.channel_stats(channels);
            PreprocessConfig {
                mean,
                std,
                ..unnormalised
            }
        }
    };
    Ok((images, resolved))
}

/// Lists images left out by `--skip-bad` on stderr.
pub fn report_skipped(images: &ImageSet) {
    for reason in &images.skipped {
        eprintln!("skipped unreadable image: {reason}");
    }
    if !images.skipped.is_empty() {
        eprintln!(
            "skipped {} unreadable image(s); {} loaded",
            images.skipped.len(),
            images.len()
        );
    }
}

/// Every `step`-th of `indices`, at most `n` (spread over the partition, not its head).
pub fn spread(indices: &[usize], n: usize) -> Vec<usize> {
    if n == 0 || n >= indices.len() {
        return indices.to_vec();
    }
    (0..n).map(|i| indices[i * indices.len() / n]).collect()
}
