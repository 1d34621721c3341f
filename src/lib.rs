#![forbid(unsafe_code)]
//! nuclei-operator library.

pub mod api;
