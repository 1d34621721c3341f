//! The NucleiScan side: the pure phase machine and its reconciler, schedules,
//! fenced status writes, the slots runs hold, and the launchers.
//!
//! A scan goes: the reconciler decides (`phase`) and queues an intent → the
//! dispatcher admits it → the launcher (`launch`) checks the targets, creates
//! the run's Job and records Running (`fence`) → the scanner pod records the
//! result (`fence`) → the Job's end frees the slot (`slots`) → the reconciler
//! schedules the next run.

pub mod fence;
pub mod launch;
pub mod phase;
pub mod probe;
pub mod reconcile;
pub mod schedule;
pub mod slots;
pub mod status;
#[cfg(test)]
mod testing;
