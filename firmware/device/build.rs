//! Puts `memory.x` where the linker (driven by cortex-m-rt's `link.x`) finds it, and, when
//! `SCANSIDE_GOLDEN` names a folder written by `scanside mcu-vectors` (model.i8 +
//! vectors.bin), compiles the golden model run in (`cfg(golden)`).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x into OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rustc-check-cfg=cfg(golden)");
    println!("cargo:rerun-if-env-changed=SCANSIDE_GOLDEN");
    if let Some(dir) = env::var_os("SCANSIDE_GOLDEN") {
        let dir = PathBuf::from(dir)
            .canonicalize()
            .expect("SCANSIDE_GOLDEN must name an existing folder (scanside mcu-vectors --out)");
        for file in ["model.i8", "vectors.bin"] {
            let path = dir.join(file);
            assert!(
                path.is_file(),
                "{} is missing (scanside mcu-vectors writes it)",
                path.display()
            );
            println!("cargo:rerun-if-changed={}", path.display());
        }
        println!("cargo:rustc-env=SCANSIDE_GOLDEN_DIR={}", dir.display());
        println!("cargo:rustc-cfg=golden");
    }
}
