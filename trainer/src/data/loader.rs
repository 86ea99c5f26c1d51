//! Prefetching: batches for the next steps are prepared on a background thread (augmentation
//! itself fans out over rayon) while the current step trains, so the trainer never waits for
//! the CPU-side pipeline when that pipeline is faster than a step.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use scanside_runtime::preprocess::{normalize_in_place, to_model_pixels, PreprocessConfig};
use serde::Serialize;

use super::{DatasetIndex, SourceSpec};
use crate::augment::{augment_one, Geometry, Preset};
use crate::Result;

/// An iterator over `make(0), make(1), …, make(steps - 1)`, computed up to `depth` items ahead.
pub struct Prefetch<T: Send + 'static> {
    receiver: Option<Receiver<T>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts producing items in order on a background thread.
    pub fn spawn<F>(steps: usize, depth: usize, mut make: F) -> Self
    where
        F: FnMut(usize) -> T + Send + 'static,
    {
        let (sender, receiver) = sync_channel(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("scanside-prefetch".into())
            .spawn(move || {
                for step in 0..steps {
                    // The consumer hung up (stopped early): nothing more to do.
                    if sender.send(make(step)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the prefetch thread");
        Self {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }
}

impl<T: Send + 'static> Iterator for Prefetch<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let item = self.receiver.as_ref()?.recv().ok();
        if item.is_none() {
            // The producer finished or panicked: surface a panic instead of ending quietly.
            self.receiver = None;
            if let Some(worker) = self.worker.take() {
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        item
    }
}

impl<T: Send + 'static> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Hang up first so that a blocked producer wakes, then wait for it.
        self.receiver = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Throughput of decoding plus two augmented, normalised views per image.
#[derive(Debug, Clone, Serialize)]
pub struct LoaderBench {
    /// Images per repetition.
    pub images: usize,
    /// Model input size.
    pub size: u32,
    /// Augmentation preset.
    pub preset: Preset,
    /// rayon worker threads.
    pub threads: usize,
    /// Best wall time of one repetition.
    pub seconds: f64,
    /// Images (each giving two views) per second.
    pub images_per_second: f64,
}

/// `data bench`: [`bench_decode_augment`] over the first `images` images of a source.
pub fn bench_source(
    source: &SourceSpec,
    images: usize,
    size: u32,
    preset: Preset,
    repeat: usize,
) -> Result<LoaderBench> {
    let index = source.open()?;
    let which: Vec<usize> = (0..index.samples.len().min(images)).collect();
    bench_decode_augment(&index, &which, size, preset, repeat.max(1))
}

/// Reads, decodes, resizes to `size` and draws two normalised views of every image, in parallel
/// over images; reports the best of `repeat` passes.
pub fn bench_decode_augment(
    index: &DatasetIndex,
    which: &[usize],
    size: u32,
    preset: Preset,
    repeat: usize,
) -> Result<LoaderBench> {
    let preprocess = PreprocessConfig::new(size, 3, vec![0.5; 3], vec![0.25; 3]);
    let geometry = Geometry::of(&preprocess);
    let augment = preset.ssl();
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        let checksum: f64 = which
            .par_iter()
            .map(|&i| -> Result<f64> {
                let decoded = index.decode(i)?;
                let name = index.describe_sample(i);
                let pixels = to_model_pixels(&decoded, &preprocess, Path::new(&name))?;
                let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
                let mut sum = 0.0;
                for _ in 0..2 {
                    let mut view = vec![0.0; geometry.len()];
                    augment_one(&pixels, &mut view, geometry, &augment, &mut rng);
                    normalize_in_place(&mut view, &preprocess);
                    sum += f64::from(view[view.len() / 2]);
                }
                Ok(sum)
            })
            .sum::<Result<f64>>()?;
        best = best.min(started.elapsed().as_secs_f64());
        std::hint::black_box(checksum);
    }
    Ok(LoaderBench {
        images: which.len(),
        size,
        preset,
        threads: rayon::current_num_threads(),
        seconds: best,
        images_per_second: which.len() as f64 / best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_in_order_and_all_of_them() {
        let items: Vec<usize> = Prefetch::spawn(50, 3, |s| s * s).collect();
        assert_eq!(items, (0..50).map(|s| s * s).collect::<Vec<_>>());
    }

    #[test]
    fn stopping_early_does_not_hang() {
        let mut it = Prefetch::spawn(1_000_000, 2, |s| vec![s; 16]);
        assert_eq!(it.next().unwrap()[0], 0);
        drop(it);
    }
}
