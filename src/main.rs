//! `nuclei-operator`: `controller` (the default), `scanner`,
//! `publish-templates`, `crd`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use nuclei_operator::crd::{self, Applied};
use nuclei_operator::scanner::entry::ScannerArgs;
use nuclei_operator::settings::{LogFormat, Settings, treat_empty_env_as_unset};
use nuclei_operator::template_cache::publish::PublishArgs;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps every Ingress and VirtualService scanned with nuclei"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (the default).
    Controller {
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Run one scan and write its result into the NucleiScan's status (what
    /// the scanner Job's pod runs).
    Scanner(Box<ScannerArgs>),
    /// Pack the template repositories a fetch Job cloned and publish them
    /// as the template cache (what the fetch Job's pod runs).
    PublishTemplates(Box<PublishArgs>),
    /// Print the NucleiScan CustomResourceDefinition as YAML, or apply it.
    Crd {
        /// Apply it over the installed CRD instead (server-side, waiting
        /// until it is served) unless that CRD is of a newer operator
        /// version: the chart's pre-upgrade hook.
        #[arg(long)]
        apply: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into());
    // Colours only for a person at a terminal: a pod's log file would keep
    // the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn log_format_from_env() -> LogFormat {
    match std::env::var("LOG_FORMAT").map(|v| v.to_ascii_lowercase()) {
        Ok(v) if v == "json" => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let scan_namespace = std::env::var("SCAN_NAMESPACE").ok();
    let args = match nuclei_operator::cli::legacy_args(&args, scan_namespace.as_deref()) {
        Ok(rewritten) => rewritten.unwrap_or(args),
        Err(e) => {
            // A usage error, as clap reports its own.
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut matches = treat_empty_env_as_unset(Cli::command()).get_matches_from(&args);
    if matches.subcommand().is_none() {
        matches = treat_empty_env_as_unset(Cli::command())
            .get_matches_from([args[0].as_str(), "controller"]);
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command.expect("a subcommand") {
        Command::Crd { apply: false } => {
            print!("{}", nuclei_operator::api::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd { apply: true } => {
            init_logging(log_format_from_env());
            let client = kube::Client::try_default()
                .await
                .context("connecting to the API server")?;
            for (crd, applied) in crd::apply(client, Duration::from_secs(60)).await? {
                match applied {
                    Applied::Created => {
                        tracing::info!(crd, to = env!("CARGO_PKG_VERSION"), "CRD created")
                    }
                    Applied::Updated { from } => tracing::info!(
                        crd,
                        from = from.as_deref().unwrap_or("unlabelled"),
                        to = env!("CARGO_PKG_VERSION"),
                        "CRD applied"
                    ),
                    Applied::KeptNewer { installed } => tracing::warn!(
                        crd,
                        installed,
                        ours = env!("CARGO_PKG_VERSION"),
                        "the installed CRD is of a newer operator version: left alone"
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller { settings } => {
            if let Err(e) = settings.validate() {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
            init_logging(settings.log_format);
            nuclei_operator::controller::run(*settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Scanner(args) => {
            init_logging(log_format_from_env());
            Ok(nuclei_operator::scanner::entry::main(*args).await)
        }
        Command::PublishTemplates(args) => {
            init_logging(log_format_from_env());
            Ok(nuclei_operator::template_cache::publish::main(*args).await)
        }
    }
}
