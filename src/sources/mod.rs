//! Source objects (Ingress, Istio VirtualService) and what they expose.

pub mod apply;
pub mod controller;
pub mod scope;
pub mod targets;
pub mod triggers;
