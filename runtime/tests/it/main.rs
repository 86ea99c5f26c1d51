//! Integration tests of the runtime: the `scanside` binary on real files and bad input, and the
//! DICOM decoder on files written with dicom-rs.

mod cli;
mod decode_regressions;
mod dicom;
mod folders;
mod guard;
mod service;
mod util;
mod validate;
