//! A model's outputs over an image set, in inference mode and in batches: class
//! probabilities, logits (and their sigmoids for multi-label heads), and backbone features.
//! Everything that scores a model goes through here; nothing here trains or writes files.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use scanside_runtime::preprocess::PreprocessConfig;

use crate::data::ImageSet;
use crate::model::{input_tensor, to_vec, Classifier, ResNet};

/// Images per inference batch.
const EVAL_BATCH: usize = 256;

/// Class probabilities for every image of a set (inference mode, batched).
pub fn predict<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    batched_outputs(model, images, preprocess, device, true)
}

/// Logits for every image of a set (inference mode, batched).
pub fn predict_logits<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    batched_outputs(model, images, preprocess, device, false)
}

fn batched_outputs<B: Backend>(
    model: &Classifier<B>,
    images: &ImageSet,
    preprocess: &PreprocessConfig,
    device: &B::Device,
    probabilities: bool,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for start in (0..images.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(images.len());
        let pixels = images.pixels[start * images.sample_len..end * images.sample_len].to_vec();
        let logits = model.forward(input_tensor::<B>(pixels, preprocess, device));
        let classes = logits.dims()[1];
        let values = if probabilities {
            to_vec(softmax(logits, 1))
        } else {
            to_vec(logits)
        };
        out.extend(values.chunks_exact(classes).map(|c| c.to_vec()));
    }
    out
}

/// Backbone features of images given as consecutive `C×H×W` blocks of `sample_len` floats
/// (`N × feature_dim`), in batches.
pub fn embed<B: Backend>(
    backbone: &ResNet<B>,
    pixels: &[f32],
    sample_len: usize,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let n = pixels.len() / sample_len.max(1);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(n);
        let batch = pixels[start * sample_len..end * sample_len].to_vec();
        let features = backbone.forward(input_tensor::<B>(batch, preprocess, device));
        let dim = features.dims()[1];
        out.extend(to_vec(features).chunks_exact(dim).map(|c| c.to_vec()));
    }
    out
}

/// Sigmoid of every logit.
pub fn sigmoid_rows(logits: &[Vec<f32>]) -> Vec<Vec<f32>> {
    logits
        .iter()
        .map(|z| z.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect())
        .collect()
}
