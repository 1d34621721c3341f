//! The NucleiScan reconciler: phase machine, schedule, intents.

pub mod schedule;
