//! The self-supervised objectives' losses: NT-Xent between two views (SimCLR, MICLe pairs),
//! SimSiam's negative cosine with stop-gradient, rotation prediction and masked-patch
//! reconstruction — each weighted, from one backbone pass over a micro-batch. Losses only:
//! nothing here steps an optimiser or makes views.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use scanside_runtime::preprocess::PreprocessConfig;

use super::views::MicroBatch;
use crate::config::PretrainConfig;
use crate::model::{input_tensor, SimClr};

/// Negative cosine similarity of `p` with `z`, averaged (SimSiam's `D`); `z` is not
/// differentiated through (stop-gradient).
pub fn negative_cosine<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    let z = z.detach();
    let norm = |t: Tensor<B, 2>| {
        let n = t.clone().square().sum_dim(1).sqrt().clamp_min(1e-8);
        t / n
    };
    (norm(p) * norm(z)).sum_dim(1).mean().neg()
}

/// NT-Xent (normalised temperature-scaled cross entropy) over `2N` projections where rows `i`
/// and `i + N` are the two views of one image.
pub fn nt_xent_loss<B: Backend>(z: Tensor<B, 2>, temperature: f32) -> Tensor<B, 1> {
    let device = z.device();
    let [rows, _] = z.dims();
    let n = rows / 2;
    let norm = z.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
    let z = z / norm;
    let similarity = z.clone().matmul(z.transpose()).div_scalar(temperature);
    // Exclude each view's similarity with itself. An additive float mask rather than a Bool
    // tensor: not every backend (candle) can build Bool tensors from host data.
    let diagonal: Vec<f32> = (0..rows * rows)
        .map(|k| if k / rows == k % rows { 1.0e9 } else { 0.0 })
        .collect();
    let mask = Tensor::<B, 2>::from_data(TensorData::new(diagonal, [rows, rows]), &device);
    let logits = similarity - mask;
    let positives: Vec<i64> = (0..rows).map(|i| ((i + n) % rows) as i64).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(positives, [rows]), &device);
    CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets)
}

/// Each weighted objective's loss on one micro-batch, from one backbone pass over everything
/// the objectives need: `2m` views, then `m` turned, then `m` masked images.
pub(super) fn objective_losses<B: AutodiffBackend>(
    model: &SimClr<B>,
    batch: MicroBatch,
    config: &PretrainConfig,
    preprocess: &PreprocessConfig,
    device: &B::Device,
) -> Vec<(&'static str, Tensor<B, 1>)> {
    let n = batch.images;
    let mut pixels = batch.views;
    let mut rotation_labels = None;
    let mut reconstruction = None;
    if let Some((turned, turns)) = batch.rotated {
        pixels.extend(turned);
        rotation_labels = Some(turns);
    }
    if let Some((blanked, targets, mask)) = batch.masked {
        pixels.extend(blanked);
        reconstruction = Some((targets, mask));
    }
    let h = model
        .backbone
        .forward(input_tensor::<B>(pixels, preprocess, device));
    let feature_dim = h.dims()[1];
    let views_h = h.clone().slice([0..2 * n, 0..feature_dim]);
    let mut offset = 2 * n;
    let mut parts: Vec<(&'static str, Tensor<B, 1>)> = Vec::new();
    let objectives = config.objectives;
    if objectives.contrastive > 0.0 || objectives.simsiam > 0.0 {
        let z = model.project(views_h);
        if objectives.contrastive > 0.0 {
            parts.push((
                "contrastive",
                nt_xent_loss(z.clone(), config.temperature).mul_scalar(objectives.contrastive),
            ));
        }
        if objectives.simsiam > 0.0 {
            let dim = z.dims()[1];
            let z1 = z.clone().slice([0..n, 0..dim]);
            let z2 = z.clone().slice([n..2 * n, 0..dim]);
            let p1 = model.predict(z1.clone());
            let p2 = model.predict(z2.clone());
            let loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)).mul_scalar(0.5);
            parts.push(("simsiam", loss.mul_scalar(objectives.simsiam)));
        }
    }
    if let (Some(turns), Some(head)) = (rotation_labels, &model.rotation_head) {
        let logits = head.forward(h.clone().slice([offset..offset + n, 0..feature_dim]));
        offset += n;
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(turns, [n]), device);
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, y);
        parts.push(("rotation", loss.mul_scalar(objectives.rotation)));
    }
    if let (Some((targets, mask)), Some(decoder)) = (reconstruction, &model.decoder) {
        let out = decoder.forward(h.clone().slice([offset..offset + n, 0..feature_dim]));
        let len = targets.len() / n;
        let targets = Tensor::<B, 2>::from_data(TensorData::new(targets, [n, len]), device);
        let blanked: f32 = mask.iter().sum::<f32>().max(1.0);
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, len]), device);
        let loss = ((out - targets).square() * mask).sum().div_scalar(blanked);
        parts.push(("reconstruction", loss.mul_scalar(objectives.reconstruction)));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn nt_xent_prefers_matching_views() {
        let device = Default::default();
        // Views 0/2 and 1/3 are identical: the loss must be far below that of mismatched pairs.
        let aligned = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0_f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], [4, 2]),
            &device,
        );
        let crossed = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0_f32, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0], [4, 2]),
            &device,
        );
        let good: f32 = nt_xent_loss(aligned, 0.1)
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap();
        let bad: f32 = nt_xent_loss(crossed, 0.1)
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap();
        assert!(good < 0.01, "aligned loss {good}");
        assert!(bad > 5.0, "crossed loss {bad}");
    }

    #[test]
    fn negative_cosine_is_minus_one_for_aligned_vectors() {
        let device = Default::default();
        let p = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0_f32, 2.0, -3.0, 0.5], [2, 2]),
            &device,
        );
        let z = p.clone().mul_scalar(3.0);
        let d: f32 = negative_cosine(p, z).into_scalar();
        assert!((d + 1.0).abs() < 1e-6, "{d}");
    }
}
