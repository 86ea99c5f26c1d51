//! `data preview`: a PNG grid of original images and their augmented views, so that a person can
//! check by eye that a preset keeps the lesion or finding in view.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use scanside_runtime::preprocess::{to_model_pixels, PreprocessConfig};

use super::{open_split_or_source, DatasetIndex, Partition, SourceSpec};
use crate::augment::{augment_batch, Geometry, Preset};
use crate::{Error, Result};

/// What to draw.
#[derive(Debug, Clone)]
pub struct PreviewConfig {
    /// Augmentation preset.
    pub preset: Preset,
    /// Show the fine-tuning set instead of the self-supervised one.
    pub finetune: bool,
    /// Rows (source images).
    pub images: usize,
    /// Augmented views per image (columns after the original).
    pub views: usize,
    /// Tile side in pixels (the model input size to preview).
    pub size: u32,
    /// Picks the images and the views.
    pub seed: u64,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Derm,
            finetune: false,
            images: 6,
            views: 6,
            size: 96,
            seed: 0,
        }
    }
}

/// `data preview`: the grid of a split's training images (or of a whole source without a
/// split), written to `out`; returns a line for people naming the rows.
pub fn preview_split_or_source(
    split: Option<&Path>,
    source: Option<&SourceSpec>,
    config: &PreviewConfig,
    out: &Path,
) -> Result<String> {
    let (index, split) = open_split_or_source(split, source)?;
    let which = match &split {
        Some(split) => split.indices(&index, Partition::Train),
        None => (0..index.samples.len()).collect(),
    };
    let ids = write_preview(&index, &which, config, out)?;
    Ok(format!(
        "{}: {} images × (original + {} {:?} views), rows: {}",
        out.display(),
        ids.len(),
        config.views,
        config.preset,
        ids.join(", ")
    ))
}

/// Writes the grid to `out` (PNG, atomically) and returns the sample ids shown.
pub fn write_preview(
    index: &DatasetIndex,
    which: &[usize],
    config: &PreviewConfig,
    out: &Path,
) -> Result<Vec<String>> {
    if which.is_empty() || config.images == 0 || config.size == 0 {
        return Err(Error::Config {
            path: out.to_path_buf(),
            reason: "nothing to preview (no images selected, or zero rows or size)".into(),
        });
    }
    let mut picked = which.to_vec();
    picked.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed));
    picked.truncate(config.images);
    // Chest X-rays are previewed as the single-channel images a CXR model would see.
    let channels = if config.preset == Preset::Cxr { 1 } else { 3 };
    let preprocess = PreprocessConfig::new(
        config.size,
        channels,
        vec![0.0; channels as usize],
        vec![1.0; channels as usize],
    );
    let geometry = Geometry::of(&preprocess);
    let augment = if config.finetune {
        config.preset.finetune()
    } else {
        config.preset.ssl()
    };
    let gap = 2;
    let tile = config.size + gap;
    let mut grid = image::RgbImage::from_pixel(
        tile * (1 + config.views as u32) + gap,
        tile * picked.len() as u32 + gap,
        image::Rgb([255, 255, 255]),
    );
    let mut ids = Vec::new();
    for (row, &i) in picked.iter().enumerate() {
        let decoded = index.decode(i)?;
        let name = PathBuf::from(index.describe_sample(i));
        let original = to_model_pixels(&decoded, &preprocess, &name)?;
        let sources: Vec<&[f32]> = vec![original.as_slice(); config.views];
        let views = augment_batch(&sources, geometry, &augment, config.seed, row as u64);
        let tiles = std::iter::once(original.as_slice()).chain(views.chunks_exact(geometry.len()));
        for (col, chw) in tiles.enumerate() {
            let plane = geometry.height * geometry.width;
            for y in 0..geometry.height {
                for x in 0..geometry.width {
                    let at = |c: usize| {
                        let c = if channels == 1 { 0 } else { c };
                        (chw[c * plane + y * geometry.width + x].clamp(0.0, 1.0) * 255.0).round()
                            as u8
                    };
                    grid.put_pixel(
                        gap + col as u32 * tile + x as u32,
                        gap + row as u32 * tile + y as u32,
                        image::Rgb([at(0), at(1), at(2)]),
                    );
                }
            }
        }
        ids.push(index.samples[i].id.clone());
    }
    let mut png = Vec::new();
    grid.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Config {
            path: out.to_path_buf(),
            reason: format!("cannot encode the preview PNG: {e}"),
        })?;
    scanside_runtime::persist::write_atomically(out, &png)?;
    Ok(ids)
}
