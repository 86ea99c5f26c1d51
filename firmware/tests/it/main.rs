//! Host integration tests of the int8 core.

mod device_layer;
