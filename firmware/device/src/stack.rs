//! Stack high-water mark by painting: at start-up every free word between the end of static
//! data (`_stack_end`, from cortex-m-rt's linker script) and a little below the current stack
//! pointer is filled with a pattern; afterwards the lowest word no longer holding it marks the
//! deepest the stack reached. The only raw memory access of the firmware, kept here.

/// The paint pattern.
const PAINT: u32 = 0xDEAD_C0DE;
/// Words below the current stack pointer left unpainted (this function's own frame).
const MARGIN_WORDS: usize = 64;

extern "C" {
    static _stack_end: u32;
    static _stack_start: u32;
}

fn bounds() -> (*mut u32, *mut u32) {
    // Only the symbols' addresses are taken (the linker script defines both).
    (
        core::ptr::addr_of!(_stack_end) as *mut u32,
        core::ptr::addr_of!(_stack_start) as *mut u32,
    )
}

/// Paints the unused stack. Call first thing in `main`.
pub fn paint() {
    let (bottom, _) = bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let end = sp.saturating_sub(MARGIN_WORDS * 4) & !3;
    let mut word = bottom;
    while (word as usize) < end {
        // SAFETY: `[_stack_end, sp − margin)` is RAM that holds no data yet (below every live
        // stack frame and above all statics), word aligned (the linker script asserts it).
        #[allow(unsafe_code)]
        unsafe {
            core::ptr::write_volatile(word, PAINT);
            word = word.add(1);
        }
    }
}

/// Bytes of stack used at the deepest point since [`paint`].
pub fn high_water_bytes() -> usize {
    let (bottom, top) = bounds();
    let mut word = bottom;
    while word < top {
        // SAFETY: reads aligned words inside the RAM region the linker script reserves for the
        // stack.
        #[allow(unsafe_code)]
        let value = unsafe { core::ptr::read_volatile(word) };
        if value != PAINT {
            break;
        }
        // SAFETY: still inside `[bottom, top)`.
        #[allow(unsafe_code)]
        unsafe {
            word = word.add(1);
        }
    }
    top as usize - word as usize
}
