//! `devcluster up | down | env | serve`: a local control plane for the demo and
//! for running the operator by hand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use devcluster::{Config, DevCluster, ImageMapping};

#[derive(Parser)]
#[command(
    about = "Local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager + a process kubelet"
)]
struct Cli {
    /// State directory (certs, logs, pods, kubeconfig).
    #[arg(long, global = true, env = "DEVCLUSTER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cluster in the background and wait until it is ready.
    Up(ServeArgs),
    /// Stop a cluster started with `up`.
    Down,
    /// Print `export KUBECONFIG=…` for a running cluster.
    Env,
    /// Run the cluster in the foreground until SIGINT/SIGTERM.
    Serve(ServeArgs),
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// JSON or YAML file with a list of image mappings for the process kubelet
    /// (`[{image, entrypoint, files, path, env}]`).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Host names that resolve to 127.0.0.1 inside pods (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
}

fn state_dir(cli: &Cli) -> PathBuf {
    cli.state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("nuclei-operator-devcluster"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let dir = state_dir(&cli);
    match &cli.command {
        Command::Serve(args) => serve(&dir, args).await,
        Command::Up(args) => up(&dir, args).await,
        Command::Down => down(&dir).await,
        Command::Env => {
            let kc = dir.join("admin.kubeconfig");
            if !dir.join("ready").exists() {
                bail!(
                    "no running devcluster in {} (run `devcluster up`)",
                    dir.display()
                );
            }
            println!("export KUBECONFIG={}", kc.display());
            Ok(())
        }
    }
}

async fn serve(dir: &Path, args: &ServeArgs) -> Result<()> {
    let images: Vec<ImageMapping> = match &args.images {
        Some(p) => serde_yaml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing image mappings in {}", p.display()))?,
        None => Vec::new(),
    };
    let _ = std::fs::remove_file(dir.join("ready"));
    let started = Instant::now();
    let cluster = DevCluster::start(Config {
        images,
        hosts: args.hosts.clone(),
        state_dir: Some(dir.to_owned()),
        no_kubelet: false,
        tools: None,
    })
    .await?;
    std::fs::write(dir.join("pid"), std::process::id().to_string())?;
    std::fs::write(
        dir.join("ready"),
        format!("{:.1}\n", started.elapsed().as_secs_f64()),
    )?;
    eprintln!(
        "devcluster ready in {:.1}s; export KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        cluster.kubeconfig().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut check = tokio::time::interval(Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = check.tick() => if let Err(e) = cluster.check() { break Err(e) },
        }
    };
    let _ = std::fs::remove_file(dir.join("ready"));
    let _ = std::fs::remove_file(dir.join("pid"));
    tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result
}

async fn up(dir: &Path, args: &ServeArgs) -> Result<()> {
    if dir.join("ready").exists() && pid_alive(dir) {
        eprintln!("devcluster already running in {}", dir.display());
        println!(
            "export KUBECONFIG={}",
            dir.join("admin.kubeconfig").display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(dir.join("ready"));
    let log = dir.join("serve.log");
    let out = std::fs::File::create(&log)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("--state-dir").arg(dir).arg("serve");
    if let Some(i) = &args.images {
        cmd.arg("--images").arg(std::fs::canonicalize(i)?);
    }
    for h in &args.hosts {
        cmd.arg("--host").arg(h);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    let started = Instant::now();
    loop {
        if dir.join("ready").exists() {
            eprintln!("devcluster up in {:.1}s", started.elapsed().as_secs_f64());
            println!(
                "export KUBECONFIG={}",
                dir.join("admin.kubeconfig").display()
            );
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "devcluster serve exited ({st}); log: {}\n{}",
                log.display(),
                devcluster::process::log_tail(&log, 20)
            );
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill().await;
            bail!(
                "devcluster did not become ready in 180s; log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pid_alive(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

async fn down(dir: &Path) -> Result<()> {
    let Some(pid) = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        eprintln!("no devcluster running in {}", dir.display());
        return Ok(());
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    while nix::sys::signal::kill(pid, None).is_ok() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(dir.join("ready"));
    let _ = std::fs::remove_file(dir.join("pid"));
    eprintln!("devcluster stopped");
    Ok(())
}
