//! The receiver's first contact with a peer: dicom-ul reads each PDU from the socket with the
//! receiver's maximum length. Any bytes give a PDU or an error, never a panic or an
//! allocation beyond that maximum; a P-DATA PDU's command fragments then go to the command
//! parser, as in the receiver.
#![no_main]

use dicom_ul::pdu::{read_pdu, PDataValueType, Pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for strict in [true, false] {
        if let Ok(Some(Pdu::PData { data: values })) = read_pdu(data, 16_384, strict) {
            for value in values {
                if value.value_type == PDataValueType::Command {
                    let _ = scanside_runtime::watch::receive::read_command_set(&value.data);
                }
            }
        }
    }
});
