//! int8 kernels as free functions over NHWC tensors (batch 1). Each optimised variant keeps
//! its generic reference beside it and is tested against it bit for bit.

pub mod conv;
pub mod fully_connected;
pub mod pool_add;
pub mod softmax;
