//! The JPEG-LS decoder alone (reached through DICOM only behind a valid data set): any
//! codestream gives samples or an error, never a panic or an allocation beyond its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scanside_runtime::decode::jpegls::decode(data, 1 << 22);
});
