//! The command line: `serve` and `messages`. `main` only calls [`main`] and exits with its code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, LogFormat};
use crate::ids::OrgId;
use crate::store;

/// Exit status for a bad configuration or bad arguments (sysexits' EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "obm-gate",
    version,
    about = "Receives Salesforce Outbound Messages over mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the receiver.
    Serve {
        /// The TOML config file; every key can be overridden by OBM_GATE_<SECTION>_<KEY>.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inspect stored notifications.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
}

#[derive(Subcommand, Debug)]
enum MessagesCommand {
    /// List stored notifications, oldest first.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only this org (15 or 18 characters).
        #[arg(long)]
        org: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Loads the config: an explicit `--config` must exist; the default path may be absent.
fn load_config(path: Option<&Path>) -> Result<Config, config::ConfigErrors> {
    match path {
        Some(p) => config::load(p, true),
        None => config::load(Path::new(config::DEFAULT_CONFIG_PATH), false),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Messages {
            command:
                MessagesCommand::List {
                    config,
                    org,
                    limit,
                    json,
                },
        } => messages_list(config.as_deref(), org.as_deref(), limit, json),
    }
}

fn serve(config_path: Option<&Path>) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("obm-gate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(config.log.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("obm-gate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let address = config.listen.address;
        let server = crate::Server::start(config)?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
        server.run(listener, shutdown_signal()).await?;
        Ok(())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("obm-gate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn messages_list(
    config_path: Option<&Path>,
    org: Option<&str>,
    limit: Option<usize>,
    json: bool,
) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("obm-gate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let org = match org.map(OrgId::parse).transpose() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("obm-gate: --org: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !config.store.path.exists() {
        eprintln!(
            "obm-gate: no store at {} (nothing received yet, or a different [store] path)",
            config.store.path.display()
        );
        return ExitCode::FAILURE;
    }
    let rows = match store::list(&config.store.path, &store::Filter { org, limit }) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("obm-gate: {e}");
            return ExitCode::FAILURE;
        }
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for row in rows {
        let line = if json {
            serde_json::to_string(&row).unwrap_or_default()
        } else {
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                row.received_at,
                row.org_id,
                row.notification_id,
                row.object_type,
                row.action_id,
                row.fields
            )
        };
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}
