//! What a DICOM peer sends as a command set reaches the receiver's parser before any check of
//! who sent it beyond the AE title: any bytes give a command or an error, never a panic or a
//! stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scanside_runtime::watch::receive::read_command_set(data);
});
