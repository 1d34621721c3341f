#![forbid(unsafe_code)]
//! nuclei-operator library.

pub mod annotations;
pub mod api;
pub mod duration;
pub mod scan;
pub mod settings;
pub mod sources;
