//! `nuclei-operator`: `controller` (the default), `scanner`, `crd`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use nuclei_operator::api::Severity;
use nuclei_operator::crd::{self, Applied};
use nuclei_operator::scanner::run::{
    RunId, RunResult, ScannerDefaults, children_peak_rss_bytes, run,
};
use nuclei_operator::settings::{LogFormat, Settings, treat_empty_env_as_unset};
use nuclei_operator::target_policy::TargetPolicy;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps every Ingress and VirtualService scanned with nuclei"
)]
struct Cli {
    /// The seed design's form: `--mode=scanner --scan-id=NAMESPACE/NAME`.
    #[arg(long, hide = true)]
    mode: Option<String>,
    /// With `--mode=scanner`: the scan, `NAMESPACE/NAME` (or `NAME` with
    /// SCAN_NAMESPACE set).
    #[arg(long, hide = true)]
    scan_id: Option<String>,
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
    /// Print the NucleiScan CustomResourceDefinition as YAML, or apply it.
    Crd {
        /// Apply it over the installed CRD instead (server-side, waiting
        /// until it is served) unless that CRD is of a newer operator
        /// version: the chart's pre-upgrade hook.
        #[arg(long)]
        apply: bool,
    },
}

#[derive(clap::Args)]
struct ScannerArgs {
    /// The scan to run, `NAMESPACE/NAME`.
    #[arg(long, env = "SCAN_KEY")]
    scan: String,
    /// Built-in templates directory.
    #[arg(
        long,
        env = "NUCLEI_TEMPLATES_PATH",
        default_value = "/nuclei-templates"
    )]
    templates_path: PathBuf,
    /// More template directories (ConfigMaps, git clones), `:`-separated.
    #[arg(long, env = "EXTRA_TEMPLATE_DIRS", value_delimiter = ':')]
    extra_template_dirs: Vec<PathBuf>,
    /// Scan timeout when the scan sets none (Go duration).
    #[arg(long, env = "SCANNER_TIMEOUT", default_value = "30m", value_parser = nuclei_operator::duration::parse_duration)]
    timeout: Duration,
    /// The nuclei binary.
    #[arg(long, env = "NUCLEI_BINARY", default_value = "nuclei")]
    nuclei: PathBuf,
    /// Templates when the scan lists none (comma-separated).
    #[arg(long, env = "DEFAULT_TEMPLATES", value_delimiter = ',')]
    default_templates: Vec<String>,
    /// Severities when the scan lists none (comma-separated).
    #[arg(long, env = "DEFAULT_SEVERITY", value_delimiter = ',', value_parser = nuclei_operator::settings::parse_severity)]
    default_severity: Vec<Severity>,
    /// Most requests per second a scan may send (0: no cap).
    #[arg(long, env = "MAX_RATE_LIMIT", default_value = "0")]
    max_rate_limit: u32,
    /// Interactsh server for OAST templates; unset turns interactsh off.
    #[arg(long, env = "INTERACTSH_URL")]
    interactsh_url: Option<String>,
    /// Which hosts and addresses the scan may reach, as JSON; unset applies
    /// the built-in defaults.
    #[arg(long, env = "TARGET_POLICY", value_parser = parse_target_policy)]
    target_policy: Option<TargetPolicy>,
    /// The scan's uid: nothing is written to a scan of another uid.
    #[arg(long, env = "SCAN_UID")]
    scan_uid: String,
    /// The run's token: nothing is written once the scan has moved on from it.
    #[arg(long, env = "SCAN_RUN")]
    run: String,
    /// This pod's name (downward API).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

fn parse_target_policy(s: &str) -> Result<TargetPolicy, String> {
    serde_json::from_str(s).map_err(|e| format!("not a target policy: {e}"))
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
async fn main() -> Result<()> {
    let matches = treat_empty_env_as_unset(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let command = match (cli.mode.as_deref(), cli.command) {
        (Some("scanner"), _) => {
            let id = cli
                .scan_id
                .context("--mode=scanner needs --scan-id=NAMESPACE/NAME")?;
            let key = if id.contains('/') {
                id
            } else {
                let ns = std::env::var("SCAN_NAMESPACE")
                    .context("--scan-id without a namespace needs SCAN_NAMESPACE")?;
                format!("{ns}/{id}")
            };
            let mut args = vec![
                "nuclei-operator".to_string(),
                "scanner".into(),
                "--scan".into(),
                key,
            ];
            args.extend(
                std::env::args()
                    .skip(1)
                    .filter(|a| !a.starts_with("--mode") && !a.starts_with("--scan-id")),
            );
            let m = treat_empty_env_as_unset(Cli::command()).get_matches_from(args);
            Cli::from_arg_matches(&m)
                .unwrap_or_else(|e| e.exit())
                .command
                .expect("scanner")
        }
        (Some(other), _) if other != "controller" => {
            bail!("unknown --mode={other} (controller or scanner)")
        }
        (_, Some(c)) => c,
        (_, None) => {
            let m = treat_empty_env_as_unset(Cli::command())
                .get_matches_from(["nuclei-operator", "controller"]);
            Cli::from_arg_matches(&m)
                .unwrap_or_else(|e| e.exit())
                .command
                .expect("controller")
        }
    };
    match command {
        Command::Crd { apply: false } => {
            print!("{}", nuclei_operator::api::crd_yaml());
            Ok(())
        }
        Command::Crd { apply: true } => {
            init_logging(log_format_from_env());
            let client = kube::Client::try_default()
                .await
                .context("connecting to the API server")?;
            match crd::apply(client, Duration::from_secs(60)).await? {
                Applied::Updated { from } => tracing::info!(
                    from = from.as_deref().unwrap_or("unlabelled"),
                    to = env!("CARGO_PKG_VERSION"),
                    "NucleiScan CRD applied"
                ),
                Applied::KeptNewer { installed } => tracing::warn!(
                    installed,
                    ours = env!("CARGO_PKG_VERSION"),
                    "the installed NucleiScan CRD is of a newer operator version: left alone"
                ),
            }
            Ok(())
        }
        Command::Controller { settings } => {
            if let Err(e) = settings.validate() {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
            init_logging(settings.log_format);
            nuclei_operator::controller::run(*settings).await
        }
        Command::Scanner(args) => {
            init_logging(log_format_from_env());
            let (namespace, name) = args
                .scan
                .split_once('/')
                .context("--scan must be NAMESPACE/NAME")?;
            let defaults = ScannerDefaults {
                templates_path: args.templates_path,
                extra_template_dirs: args.extra_template_dirs,
                timeout: args.timeout,
                templates: args.default_templates,
                severity: args.default_severity,
                interactsh_url: args.interactsh_url,
                max_rate_limit: (args.max_rate_limit > 0).then_some(args.max_rate_limit),
                nuclei: args.nuclei,
                pod_name: args.pod_name,
                target_policy: args.target_policy.unwrap_or_default(),
            };
            let client = kube::Client::try_default()
                .await
                .context("in-cluster configuration")?;
            // Exit codes: 0 scan completed (or the scan moved on: nothing to
            // record), 1 scan failed (recorded in the status), 2 the result
            // could not be recorded.
            let id = RunId {
                uid: args.scan_uid,
                token: args.run,
            };
            let result = run(client, namespace, name, &defaults, &id).await;
            if let Some(bytes) = children_peak_rss_bytes().filter(|b| *b > 0) {
                // What to size the scanner's memory request and limit by.
                tracing::info!(
                    namespace,
                    name,
                    nuclei_peak_rss_bytes = bytes,
                    "nuclei exited"
                );
            }
            match result {
                Ok(RunResult::Completed { .. } | RunResult::MovedOn { .. }) => Ok(()),
                Ok(RunResult::Failed { message }) => {
                    eprintln!("scan failed: {message}");
                    std::fs::write("/dev/termination-log", &message).ok();
                    std::process::exit(1)
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::fs::write("/dev/termination-log", format!("{e:#}")).ok();
                    std::process::exit(2)
                }
            }
        }
    }
}
