//! Any bytes given to the blob parser, and any blob it accepts given to the engine, must give
//! an error or a result, never a panic, an out-of-bounds access or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scanside_int8::blob::write::AlignedBlob;
use scanside_int8::blob::Model;
use scanside_int8::engine::run;

/// Arenas larger than this are not allocated (a device would not have them either).
const MAX_ARENA: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    // The CRC would stop nearly every mutation at the door: fuzz the checks behind it (the
    // device runs them all, CRC first). Copied for the 4-byte alignment the parser requires.
    let blob = AlignedBlob::new(data);
    if let Ok(model) = Model::parse_checked_before(blob.bytes()) {
        if model.arena_bytes() <= MAX_ARENA {
            let mut arena = vec![0_i8; model.arena_bytes()];
            let input: Vec<i8> = (0..model.input().len()).map(|i| i as i8).collect();
            let _ = run(&model, &mut arena, &input, |_, _| ());
        }
    }
    let _ = Model::parse(blob.bytes());
});
