//! A bundle manifest is read from disk (after its signature is checked, or unsigned with
//! `--allow-unsigned`): any bytes must parse and validate or give an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scanside_runtime::bundle::BundleManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = serde_json::from_slice::<BundleManifest>(data) {
        let _ = manifest.validate(std::path::Path::new("manifest.json"));
    }
});
