//! Host integration tests of the int8 core.

mod blob;
mod device_layer;
