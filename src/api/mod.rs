//! The `nuclei.homelab.mortenolsen.pro/v1alpha1` API.

mod finding;

pub use finding::{Finding, Severity};
