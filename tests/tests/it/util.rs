//! Shared helpers: a tiny pipeline configuration, and the burn-vs-runtime comparison.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use scanside_runtime::bundle::{Bundle, ModelFile};
use scanside_runtime::infer::EngineKind;
use scanside_runtime::pipeline::Screener;
use scanside_trainer::config::{
    EvalSettings, ExportOptions, FinetuneConfig, PretrainConfig, QuantizeConfig,
};
use scanside_trainer::data::{load_images, make_split, open_dataset, ImageRef, Partition};
use scanside_trainer::evaluate::{evaluate_run, EvalReport};
use scanside_trainer::export::{export_run, ExportReport};
use scanside_trainer::finetune::finetune;
use scanside_trainer::metrics::predict_logits;
use scanside_trainer::pretrain::pretrain;
use scanside_trainer::run_dir::load_finetuned;
use scanside_trainer::runlog::save_json;

pub type Train = Autodiff<Flex>;

/// Where the shared real data lives, if anywhere.
pub fn shared_data() -> Option<PathBuf> {
    let root = std::env::var_os("SCANSIDE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    root.join("ham10000/metadata.csv").is_file().then_some(root)
}

pub struct PipelineResult {
    pub bundle: PathBuf,
    pub export: ExportReport,
    pub test: EvalReport,
    pub pretrain_losses: (f32, f32),
}

/// Runs the whole training path quickly on `data` into `out`.
pub fn run_pipeline(
    data: &Path,
    out: &Path,
    image_size: u32,
    steps: usize,
) -> anyhow::Result<PipelineResult> {
    let device = Default::default();
    let index = open_dataset(data)?;
    let split_path = out.join("split.json");
    save_json(&split_path, &make_split(&index, 3, [0.6, 0.2, 0.2])?)?;

    let mut pre = PretrainConfig::new(data.to_path_buf(), split_path.clone());
    pre.image_size = image_size;
    pre.model.width_multiplier = 0.125;
    pre.batch_size = 16;
    pre.epochs = 50;
    pre.max_steps = Some(steps);
    let pre_summary = pretrain::<Train>(&pre, &out.join("pretrain"), &device)?;

    let mut fine = FinetuneConfig::new(data.to_path_buf(), split_path, Some(out.join("pretrain")));
    fine.batch_size = 16;
    fine.epochs = 2;
    fine.max_steps = Some(steps);
    finetune::<Train>(&fine, &out.join("finetune"), &device)?;
    let test = evaluate_run::<Flex>(
        &out.join("finetune"),
        Partition::Test,
        &EvalSettings::default(),
        &device,
    )?;
    let bundle = out.join("bundle");
    // Signed like a release: the pipeline's key pair lives beside the bundle.
    let key = scanside_runtime::bundle::signing::generate_key()?;
    scanside_runtime::bundle::signing::write_key_pair(&out.join("site"), &key)?;
    let options = ExportOptions {
        check_images: 4,
        int8: true,
        quantize: QuantizeConfig {
            calibration_images: 32,
            ..QuantizeConfig::default()
        },
        ..ExportOptions::default()
    };
    let export = export_run::<Flex>(
        &out.join("finetune"),
        &bundle,
        &options,
        Some(&key),
        &device,
    )?;
    Ok(PipelineResult {
        bundle,
        export,
        test,
        pretrain_losses: (pre_summary.first_loss, pre_summary.final_loss),
    })
}

/// The pipeline's public key as the runtime's trust.
pub fn trusted(out: &Path) -> anyhow::Result<scanside_runtime::bundle::Trust> {
    let public = scanside_runtime::bundle::signing::read_verifying_key(&out.join("site.pub"))?;
    Ok(scanside_runtime::bundle::Trust::Keys(vec![public]))
}

/// Screens the first `n` test images with the runtime and with burn; returns the largest
/// probability difference and how many top classes agreed.
pub fn compare_runtime_with_burn(
    data: &Path,
    out: &Path,
    n: usize,
) -> anyhow::Result<(f32, usize, usize)> {
    let device = Default::default();
    let (config, model) = load_finetuned::<Flex>(&out.join("finetune"), &device)?;
    let preprocess = config.preprocess.clone().unwrap();
    let index = open_dataset(data)?;
    let split = scanside_trainer::data::SplitFile::load(&config.split, &index)?;
    let test: Vec<usize> = split
        .indices(&index, Partition::Test)
        .into_iter()
        .take(n)
        .collect();
    let images = load_images(&index, &test, &preprocess)?;
    let bundle = Bundle::load(&out.join("bundle"), &trusted(out)?)?;
    // As the runtime reports them: with the bundle's temperature.
    let burn_probs: Vec<Vec<f32>> = predict_logits(&model, &images, &preprocess, &device)
        .iter()
        .map(|z| bundle.manifest.probabilities(z))
        .collect();
    // `fp32` is the direct engine on hosts with AVX2 and FMA (tract elsewhere); both are held
    // to the same tolerance against burn.
    let screener = Screener::new(&bundle)?;
    let tract = Screener::with_engine(&bundle, EngineKind::Tract)?;
    let mut max_diff = 0.0_f32;
    let mut agree = 0;
    for (k, &i) in test.iter().enumerate() {
        let ImageRef::File(path) = &index.samples[i].image else {
            anyhow::bail!("file dataset expected")
        };
        let result = screener.screen_file(path)?;
        let on_tract = tract.screen_file(path)?;
        anyhow::ensure!(
            (result.engine, on_tract.engine) == (EngineKind::Fp32, EngineKind::Tract),
            "engines reported {:?} and {:?}",
            result.engine,
            on_tract.engine
        );
        for (((_, p), (_, t)), q) in result
            .probabilities
            .iter()
            .zip(&on_tract.probabilities)
            .zip(&burn_probs[k])
        {
            max_diff = max_diff.max((p - q).abs()).max((t - q).abs());
        }
        let burn_top = scanside_trainer::metrics::argmax(&burn_probs[k]);
        agree +=
            usize::from(result.top_class.as_deref() == Some(config.class_names[burn_top].as_str()));
    }
    Ok((max_diff, agree, test.len()))
}

/// Screens the first `n` test images with the bundle's fp32 (tract) and int8 (int8 core)
/// models; returns the largest logit difference and how many top classes agreed.
pub fn compare_int8_with_fp32(
    data: &Path,
    out: &Path,
    n: usize,
) -> anyhow::Result<(f32, usize, usize)> {
    let index = open_dataset(data)?;
    let (config, _) = load_finetuned::<Flex>(&out.join("finetune"), &Default::default())?;
    let split = scanside_trainer::data::SplitFile::load(&config.split, &index)?;
    let bundle = Bundle::load(&out.join("bundle"), &trusted(out)?)?;
    let fp32 = Screener::with_engine(&bundle, EngineKind::Fp32)?;
    let int8 = Screener::with_engine(&bundle, EngineKind::Int8)?;
    // The QDQ twin on tract carries the same quantisation: within 2 of the blob's output steps.
    let qdq = Screener::with_engine(&bundle, EngineKind::Qdq)?;
    let blob =
        scanside_int8::blob::write::AlignedBlob::new(&bundle.read_model(ModelFile::Int8Blob)?);
    let step = scanside_int8::blob::Model::parse(blob.bytes())
        .map_err(|e| anyhow::anyhow!("int8 blob: {e}"))?
        .output()
        .scale;
    let test: Vec<usize> = split
        .indices(&index, Partition::Test)
        .into_iter()
        .take(n)
        .collect();
    let (mut max_diff, mut agree) = (0.0_f32, 0);
    for &i in &test {
        let ImageRef::File(path) = &index.samples[i].image else {
            anyhow::bail!("file dataset expected")
        };
        let (a, b) = (fp32.screen_file(path)?, int8.screen_file(path)?);
        anyhow::ensure!(
            b.engine == EngineKind::Int8,
            "the int8 screener reported {:?}",
            b.engine
        );
        for (x, y) in a.logits.iter().zip(&b.logits) {
            max_diff = max_diff.max((x - y).abs());
        }
        let c = qdq.screen_file(path)?;
        anyhow::ensure!(
            c.engine == EngineKind::Qdq,
            "the qdq screener reported {:?}",
            c.engine
        );
        for (y, z) in b.logits.iter().zip(&c.logits) {
            anyhow::ensure!(
                (y - z).abs() <= 2.0 * step + 1e-6,
                "{}: tract on the QDQ model gives {z}, the int8 engine {y} (output step {step})",
                path.display()
            );
        }
        agree += usize::from(a.top_class == b.top_class);
    }
    Ok((max_diff, agree, test.len()))
}

/// Checks the int8 export's report and that the int8 engine tracks fp32 on test images within
/// a small multiple of the validation delta the report states.
pub fn assert_int8_tracks_fp32(data: &Path, out: &Path, export: &ExportReport, n: usize) {
    let int8 = export.int8.as_ref().expect("the mcu target was exported");
    let best = &int8.methods[0];
    assert_eq!(best.method, int8.method);
    assert_eq!(
        int8.methods.len(),
        3,
        "minmax, percentile and entropy compared"
    );
    assert!(
        int8.arena_bytes > 0 && int8.arena_bytes < int8.unplanned_arena_bytes,
        "{int8:?}"
    );
    let (max_diff, agree, total) = compare_int8_with_fp32(data, out, n).unwrap();
    let bound = 2.0 * best.max_abs_logit_diff + 0.05;
    assert!(
        max_diff <= bound,
        "int8 vs fp32 logits differ by {max_diff} (> {bound}; report {best:?})"
    );
    assert!(
        4 * agree >= 3 * total,
        "int8 and fp32 top classes agree on only {agree} of {total}"
    );
}
