//! The golden-vector file parser the firmware reads: never panics on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scanside_int8::vectors::Vectors;

fuzz_target!(|data: &[u8]| {
    if let Ok(vectors) = Vectors::parse(data) {
        for i in 0..vectors.len() + 1 {
            if let Some((input, output)) = vectors.get(i) {
                assert!(input.len() + output.len() <= data.len());
            }
        }
    }
});
