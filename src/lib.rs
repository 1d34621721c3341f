#![forbid(unsafe_code)]
//! nuclei-operator library.

pub mod api;
pub mod duration;
pub mod scan;
pub mod settings;
