//! Cross-crate end-to-end tests: pretrain → fine-tune → export → screen, through the trainer's
//! burn model and the runtime's tract model, on generated images and on real data.

mod real_data;
mod synthetic;
mod util;
