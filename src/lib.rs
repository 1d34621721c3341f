#![forbid(unsafe_code)]
//! nuclei-operator library.

pub mod api;
pub mod cache;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod duration;
pub mod error;
pub mod events;
pub mod git;
pub mod hash;
pub mod http;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod reports;
pub mod scan;
pub mod scanner;
pub mod settings;
pub mod sources;
pub mod suppress;
pub mod target_policy;
pub mod template_cache;
pub mod url;
