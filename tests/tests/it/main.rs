//! Cross-crate end-to-end tests: pretrain → fine-tune → export → screen, through the trainer's
//! burn model and the runtime's tract model, on generated images and on real data.
//! `import` exports ONNX classifiers trained elsewhere and screens them.

mod import;
mod real_data;
mod synthetic;
mod util;
