//! int8 kernels as free functions. Each optimised variant added later keeps the generic
//! reference here and is tested against it.

pub mod fully_connected;
