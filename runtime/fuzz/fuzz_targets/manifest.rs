//! A bundle manifest is read from disk (after its signature is checked, or unsigned with
//! `--allow-unsigned`): any bytes must parse and validate or give an error, never a panic; a
//! manifest that validates must then score logits and apply its guards without one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scanside_runtime::bundle::BundleManifest;
use scanside_runtime::decode::DicomAttributes;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = serde_json::from_slice::<BundleManifest>(data) else {
        return;
    };
    if manifest
        .validate(std::path::Path::new("manifest.json"))
        .is_err()
    {
        return;
    }
    let logits: Vec<f32> = (0..manifest.class_names.len())
        .map(|i| data.get(i).map_or(0.0, |&b| f32::from(b) - 128.0))
        .collect();
    let _ = manifest.probabilities(&logits);
    if let Some(ood) = &manifest.ood {
        let input: Vec<f32> = data.iter().take(48).map(|&b| f32::from(b) / 255.0).collect();
        let _ = ood.assess(&logits, &input);
    }
    if let Some(rules) = &manifest.input_rules {
        let _ = rules.check_image(3, 64, 48);
        let attributes = DicomAttributes {
            modality: Some(String::from_utf8_lossy(&data[..data.len().min(16)]).into_owned()),
            image_type: Some("ORIGINAL\\PRIMARY\\AXIAL".into()),
            ..DicomAttributes::default()
        };
        let _ = rules.check_dicom(&attributes);
    }
});
