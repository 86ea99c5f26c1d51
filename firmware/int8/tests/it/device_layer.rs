//! The firmware's built-in layer gives, on the host reference, exactly the output the firmware
//! checks itself against and prints (`firmware/device/expected.log`, compared in CI).

#[path = "../../../device/src/demo_layer.rs"]
#[allow(dead_code)]
mod demo_layer;

use scanside_int8::{fully_connected, PerChannelRequant};

fn reference_output() -> [i8; demo_layer::OUTPUT_LEN] {
    let mut output = [0_i8; demo_layer::OUTPUT_LEN];
    fully_connected(
        &demo_layer::PARAMS,
        &demo_layer::INPUT,
        &demo_layer::WEIGHTS,
        &demo_layer::BIAS,
        PerChannelRequant {
            multipliers: &demo_layer::MULTIPLIERS,
            shifts: &demo_layer::SHIFTS,
        },
        &mut output,
    )
    .expect("the built-in layer is well formed");
    output
}

#[test]
fn device_expected_output_is_the_host_reference() {
    assert_eq!(reference_output(), demo_layer::EXPECTED);
}

#[test]
fn device_expected_output_is_not_degenerate() {
    // A layer whose outputs all saturate or all vanish would prove nothing about the arithmetic.
    let out = reference_output();
    let distinct = out.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct >= 5, "only {distinct} distinct outputs: {out:?}");
    assert!(
        out.iter().all(|&v| v > -128 && v < 127),
        "saturated outputs: {out:?}"
    );
}

#[test]
fn golden_log_lists_the_expected_output() {
    let log = include_str!("../../../device/expected.log");
    let values: Vec<String> = demo_layer::EXPECTED.iter().map(|v| v.to_string()).collect();
    let line = format!("output = [{}]", values.join(", "));
    assert!(log.contains(&line), "expected.log lacks `{line}`:\n{log}");
}
