//! Any bytes given as a file to screen — PNG, JPEG or DICOM with any of its codecs — must give
//! an image or an error naming the file, never a panic, an abort or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scanside_runtime::decode::{decode_bytes, dicom_attributes_from_bytes, read_dicom_values};

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzzed");
    let _ = decode_bytes(path, data);
    // `inspect --values` reads every frame's values without the display pipeline.
    let _ = read_dicom_values(path, data);
    // The input rules read these from the header before anything is decoded.
    let _ = dicom_attributes_from_bytes(path, data);
});
