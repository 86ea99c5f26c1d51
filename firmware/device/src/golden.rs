//! The golden model run: the int8 blob and test vectors written by `scanside mcu-vectors`
//! (the host runtime's int8 engine), embedded at build time from `$SCANSIDE_GOLDEN`. Every
//! vector's output must equal the host's bit for bit.

use scanside_int8::blob::Model;
use scanside_int8::engine::run;
use scanside_int8::vectors::Vectors;

/// 4-byte alignment for data embedded with `include_bytes!` (the blob's int32 arrays are read
/// in place).
#[repr(C, align(4))]
struct Aligned<T: ?Sized>(T);

static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("SCANSIDE_GOLDEN_DIR"),
    "/model.i8"
)));
static VECTORS: &[u8] = include_bytes!(concat!(env!("SCANSIDE_GOLDEN_DIR"), "/vectors.bin"));

/// Activation arena: static, sized for the models this binary is built for (the blob's
/// memory plan says how much of it a model needs).
pub const ARENA_BYTES: usize = 160 * 1024;

/// Runs every vector; true when all outputs are bit-exact. `clock` reads a down-counting
/// 24-bit tick counter (SysTick) for the per-inference cost.
pub fn run_all(arena: &mut [i8; ARENA_BYTES], clock: &impl Fn() -> u32) -> bool {
    let model = match Model::parse(&MODEL.0) {
        Ok(m) => m,
        Err(e) => {
            defmt::error!("model blob refused: {}", e);
            return false;
        }
    };
    let vectors = match Vectors::parse(VECTORS) {
        Ok(v) => v,
        Err(e) => {
            defmt::error!("vectors refused: {}", e);
            return false;
        }
    };
    defmt::info!(
        "model: {=usize} layers, {=u64} MACs, {=usize} B weights, arena {=usize} B of {=usize} B; {=usize} vectors",
        model.layer_count(),
        model.macs(),
        model.weights_bytes(),
        model.arena_bytes(),
        ARENA_BYTES,
        vectors.len()
    );
    let mut all_equal = true;
    for i in 0..vectors.len() {
        let Some((input, expected)) = vectors.get(i) else {
            return false;
        };
        let start = clock();
        let result = run(&model, &mut arena[..], input, |layer, op| {
            // Ticks since the vector started, as each layer begins: a per-layer profile
            // (`tools/firmware_profile.py` turns it into instructions per MAC).
            let at = start.wrapping_sub(clock()) & 0x00FF_FFFF;
            defmt::debug!(
                "vector {=usize} layer {=usize}: {} ({=u64} MACs) at {=u32} ticks",
                i,
                layer,
                op,
                model.layer_macs(layer),
                at
            );
        });
        let ticks = start.wrapping_sub(clock()) & 0x00FF_FFFF;
        match result {
            Ok(output) if output == expected => {
                defmt::info!(
                    "vector {=usize}: output {} bit-exact, {=u32} SysTick ticks",
                    i,
                    output,
                    ticks
                );
            }
            Ok(output) => {
                defmt::error!(
                    "vector {=usize}: output {} expected {}",
                    i,
                    output,
                    expected
                );
                all_equal = false;
            }
            Err(e) => {
                defmt::error!("vector {=usize}: inference failed: {}", i, e);
                all_equal = false;
            }
        }
    }
    all_equal
}
