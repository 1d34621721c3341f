//! The scanner side of a scan run, as pure parts: the nuclei command line and
//! exit classification ([`command`]), the streaming JSONL parser ([`jsonl`]),
//! the budgeted findings report for the NucleiScan status ([`report`]) and
//! what changed since the previous run ([`history`]); the template cache's
//! archives ([`cached`]); then the run itself
//! ([`run`]), in a scanner pod ([`entry`], the `scanner` subcommand) or in
//! the operator's process (`crate::scan::launch::sync`).

pub mod command;
pub mod history;
pub mod jsonl;
pub mod report;

pub use command::{
    NUCLEI_TEMPLATES_DIR_ENV, Outcome, ScanOptions, classify_exit, nuclei_args, nuclei_env,
};
pub use jsonl::{LineError, ParseStats, ReadLimits, parse_line, read_findings, read_findings_with};
pub use report::{Report, ReportLimits, clamp_finding};

pub mod cached;
pub mod entry;
pub mod run;
