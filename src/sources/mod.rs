//! Source objects (Ingress, Istio VirtualService) and what they expose.

pub mod targets;
