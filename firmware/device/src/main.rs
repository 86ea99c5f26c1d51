//! Cortex-M4F firmware: runs the scanside int8 core's fully connected kernel on the built-in
//! layer in `demo_layer.rs`, logs the result with defmt and exits through semihosting with
//! success only when the output equals the host reference's bit for bit.
#![no_std]
#![no_main]

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use defmt_semihosting as _;
use panic_probe as _;
use scanside_int8::{fully_connected, PerChannelRequant};

/// Passes of the two-instruction calibration loop timed to relate SysTick ticks to executed
/// instructions.
const CALIBRATION_PASSES: u32 = 500_000;

/// Exactly `2 · passes` instructions (`SUBS` + `BNE` per pass): a loop written out so the
/// count does not depend on what the compiler makes of a Rust loop. (An earlier calibration
/// timed `nop`s inside Rust loops and assumed ≤ 3 % loop overhead; the compiled loop added
/// 24 %, so every instruction count derived from it was 24 % low.)
#[inline(always)]
fn calibration_loop(passes: u32) {
    #[allow(unsafe_code)]
    // SAFETY: register-only loop on a counter the asm owns; touches no memory or stack.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {n}, {n}, #1",
            "bne 2b",
            n = inout(reg) passes => _,
            options(nomem, nostack),
        );
    }
}

mod demo_layer;
#[cfg(golden)]
mod golden;
mod kernel_check;
mod stack;

#[entry]
fn main() -> ! {
    stack::paint();
    defmt::info!(
        "scanside firmware: int8 fully connected {=usize} -> {=usize}",
        demo_layer::PARAMS.input_len,
        demo_layer::PARAMS.output_len
    );
    if cfg!(feature = "panic-demo") {
        panic!("panic-demo: deliberate panic");
    }

    let mut output = [0_i8; demo_layer::OUTPUT_LEN];
    let requant = PerChannelRequant {
        multipliers: &demo_layer::MULTIPLIERS,
        shifts: &demo_layer::SHIFTS,
    };
    // SysTick as a free-running 24-bit down-counter on the core clock: under QEMU with
    // `-icount shift=0` (qemu-run.sh) the virtual clock advances one nanosecond per executed
    // instruction, so ticks measure instructions; a run of known length calibrates the ratio.
    let Some(mut core) = cortex_m::Peripherals::take() else {
        defmt::error!("core peripherals already taken");
        debug::exit(EXIT_FAILURE);
        loop {
            cortex_m::asm::wfi();
        }
    };
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(0x00FF_FFFF);
    core.SYST.clear_current();
    core.SYST.enable_counter();
    let clock = || SYST::get_current();
    let start = clock();
    calibration_loop(CALIBRATION_PASSES);
    let ticks = start.wrapping_sub(clock()) & 0x00FF_FFFF;
    defmt::info!(
        "calibration: {=u32} instructions in {=u32} SysTick ticks",
        2 * CALIBRATION_PASSES,
        ticks
    );

    match kernel_check::run() {
        Ok(layers) => defmt::info!(
            "kernel check: DSP convolution bit-exact with the reference on {=usize} layers",
            layers
        ),
        Err(_) => {
            defmt::error!("FAIL: DSP convolution differs from the reference");
            debug::exit(EXIT_FAILURE);
        }
    }

    #[cfg(golden)]
    {
        // On the stack of `main`, which never returns: lives as long as the program.
        let mut arena = [0_i8; golden::ARENA_BYTES];
        if golden::run_all(&mut arena, &clock) {
            defmt::info!("PASS: golden model bit-exact with the host int8 engine");
        } else {
            defmt::error!("FAIL: golden model differs from the host");
            debug::exit(EXIT_FAILURE);
        }
    }

    let status = match fully_connected(
        &demo_layer::PARAMS,
        &demo_layer::INPUT,
        &demo_layer::WEIGHTS,
        &demo_layer::BIAS,
        requant,
        &mut output,
    ) {
        Ok(()) => {
            defmt::info!("output = {}", output);
            if output == demo_layer::EXPECTED {
                defmt::info!("PASS: bit-exact with the host reference");
                EXIT_SUCCESS
            } else {
                defmt::error!("FAIL: expected {}", demo_layer::EXPECTED);
                EXIT_FAILURE
            }
        }
        Err(e) => {
            defmt::error!("kernel refused the layer: {}", e);
            EXIT_FAILURE
        }
    };
    defmt::info!(
        "stack high-water mark: {=usize} bytes",
        stack::high_water_bytes()
    );
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

// A panic (panic-probe traps with `udf`) or any fault lands here: leave QEMU with a failure
// status instead of spinning forever.
#[allow(unsafe_code)]
#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    debug::exit(EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
