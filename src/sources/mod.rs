//! Source objects (Ingress, Istio VirtualService, Gateway API HTTPRoute) and
//! what they expose.

pub mod annotations;
pub mod apply;
pub mod controller;
pub mod discovery;
pub mod gateway_api;
pub mod httproute;
pub mod istio;
pub mod migrate;
pub mod scope;
pub mod targets;
pub mod triggers;
