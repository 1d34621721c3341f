//! The NucleiScan side: phase machine, schedules, launchers.

pub mod launch;
pub mod probe;
pub mod reconcile;
pub mod schedule;
pub mod status;
