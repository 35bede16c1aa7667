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
    /// Maintain the SQLite store file.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The operator's signing CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// The registry of org certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Send an Outbound Message like Salesforce does, to test a deployment. Exits 0 only on Ack true.
    Send {
        /// The endpoint, e.g. https://obm.example.com/obm
        #[arg(long)]
        url: String,
        /// Client certificate: PEM (with --key) or PKCS#12 (.p12/.pfx).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Password of a PKCS#12 file.
        #[arg(
            long,
            default_value = "",
            env = "OBM_GATE_SEND_PASSWORD",
            hide_env_values = true
        )]
        password: String,
        /// CA certificate(s) to trust for the server (default: the public web roots).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A SOAP message to send.
        #[arg(conflicts_with = "sample")]
        file: Option<PathBuf>,
        /// Send a built-in sample message for --org.
        #[arg(long, requires = "org")]
        sample: bool,
        /// The org of the sample message.
        #[arg(long)]
        org: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create the signing CA (refuses to overwrite an existing one).
    Init {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory for ca.pem and ca.key (default: [ca] directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The CA's common name.
        #[arg(long, default_value = "obm-gate client CA")]
        name: String,
    },
    /// Sign a CSR downloaded from Salesforce and register the certificate for the org.
    Sign {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The org the certificate belongs to (15 or 18 characters).
        #[arg(long)]
        org: String,
        /// The certificate signing request (PEM).
        csr: PathBuf,
        /// Where to write the signed certificate followed by the CA, for Salesforce's
        /// "Upload Signed Certificate" (default: <OrgId>-<fingerprint>.pem).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days (default: [ca] default_days; at most [ca] max_days).
        #[arg(long)]
        days: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Register an existing certificate (bring your own) for an org.
    Add {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        org: String,
        cert: PathBuf,
    },
    /// One line per registered certificate.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Only certificates expiring within this many days.
        #[arg(long, conflicts_with = "revoked")]
        expiring_within: Option<i64>,
        /// The revoked certificates instead (`certs revoke`), oldest revocation first.
        #[arg(long)]
        revoked: bool,
    },
    /// Remove a certificate from every org it is registered to.
    Remove {
        #[arg(long)]
        config: Option<PathBuf>,
        /// SHA-256 fingerprint (hex, colons allowed).
        #[arg(long)]
        fingerprint: String,
    },
    /// Revoke a certificate (a lost or compromised key): refused from now on, by name, at the
    /// handshake and on connections already open, and never registered again. Its files are
    /// removed from every org; `revoked.toml` in the registry directory records it.
    Revoke {
        #[arg(long)]
        config: Option<PathBuf>,
        /// SHA-256 fingerprint (hex, colons allowed).
        #[arg(long)]
        fingerprint: String,
        /// Why, for the record and the refusals: "key compromised", "laptop lost", …
        #[arg(long)]
        reason: String,
    },
    /// Lift a revocation made by mistake. The certificate is not registered again: `certs add`
    /// can do that now.
    Unrevoke {
        #[arg(long)]
        config: Option<PathBuf>,
        /// SHA-256 fingerprint (hex, colons allowed).
        #[arg(long)]
        fingerprint: String,
    },
    /// Would the receiver accept this certificate now? Exits 1 if not.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The org the certificate should belong to.
        #[arg(long)]
        org: Option<String>,
        cert: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Rewrite the store without its free pages, at 16 KiB pages: for a store made before
    /// 16 KiB pages, or grown by a schema upgrade that rebuilt a table. Stop the receiver first;
    /// it needs free space for a copy in the temporary directory and for a journal beside it.
    Compact {
        #[arg(long)]
        config: Option<PathBuf>,
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
        /// Only those received since: an RFC 3339 time (2026-11-23T10:00:00Z) or a duration ago (2h).
        #[arg(long)]
        since: Option<String>,
        /// Only those in this webhook forwarding state: pending, delivered or dead.
        #[arg(long)]
        state: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Queue notifications for the webhook again: one by ID, or an org's dead-lettered ones.
    /// The running receiver re-sends them within a second.
    Replay {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The notification ID.
        #[arg(required_unless_present = "org")]
        id: Option<String>,
        /// Every notification of this org in --state.
        #[arg(long)]
        org: Option<String>,
        /// Which state to take them from: dead (default), delivered or pending.
        #[arg(long, default_value = "dead")]
        state: String,
    },
    /// Print one stored notification (every org's, unless --org is given).
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        org: Option<String>,
        /// The notification ID.
        id: String,
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
                    since,
                    state,
                    json,
                },
        } => report(messages(
            config.as_deref(),
            ListArgs {
                org,
                id: None,
                limit,
                since,
                state,
                json,
            },
        )),
        Command::Messages {
            command: MessagesCommand::Show { config, org, id },
        } => report(messages(
            config.as_deref(),
            ListArgs {
                org,
                id: Some(id),
                json: true,
                ..ListArgs::default()
            },
        )),
        Command::Messages {
            command:
                MessagesCommand::Replay {
                    config,
                    id,
                    org,
                    state,
                },
        } => report(replay(config.as_deref(), id, org, &state)),
        Command::Send {
            url,
            cert,
            key,
            password,
            ca,
            file,
            sample,
            org,
        } => report(send(url, cert, key, password, ca, file, sample, org)),
        Command::Store {
            command: StoreCommand::Compact { config },
        } => report(compact(config.as_deref())),
        Command::Ca { command } => report(certificates::ca(command)),
        Command::Certs { command } => report(certificates::certs(command)),
    }
}

/// A command's failure: what to print, and the exit status.
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl std::fmt::Display) -> Failure {
        Failure {
            status: EXIT_CONFIG,
            message: message.to_string(),
        }
    }

    fn failed(message: impl std::fmt::Display) -> Failure {
        Failure {
            status: 1,
            message: message.to_string(),
        }
    }
}

fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("obm-gate: {}", f.message);
            }
            ExitCode::from(f.status)
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `ca` and `certs`.
mod certificates {
    use super::*;
    use crate::ca;
    use crate::checklist::Checklist;
    use crate::ids::Fingerprint;
    use crate::registry::{self, Snapshot, format_time, read_pem_certificate};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn config(path: Option<&Path>) -> Result<Config, Failure> {
        load_config(path).map_err(Failure::usage)
    }

    fn org(s: &str) -> Result<OrgId, Failure> {
        OrgId::parse(s).map_err(|e| Failure::usage(format!("--org: {e}")))
    }

    fn read(path: &Path) -> Result<Vec<u8>, Failure> {
        std::fs::read(path)
            .map_err(|e| Failure::failed(format!("cannot read {}: {e}", path.display())))
    }

    pub(super) fn ca(command: CaCommand) -> Result<(), Failure> {
        match command {
            CaCommand::Init {
                config: c,
                dir,
                name,
            } => {
                let cfg = config(c.as_deref())?;
                let dir = dir.unwrap_or(cfg.ca.directory);
                let info = ca::init(&dir, &name).map_err(Failure::failed)?;
                println!("created CA in {}", dir.display());
                println!("  certificate  {}", dir.join("ca.pem").display());
                println!(
                    "  private key  {} (mode 0600; keep it secret)",
                    dir.join("ca.key").display()
                );
                println!("  subject      {}", info.subject);
                println!("  fingerprint  {}", info.fingerprint);
                println!("  expires      {}", format_time(info.not_after));
                Ok(())
            }
            CaCommand::Sign {
                config: c,
                org: o,
                csr,
                out,
                days,
            } => {
                let cfg = config(c.as_deref())?;
                let org = org(&o)?;
                let days = days.unwrap_or(cfg.ca.default_days);
                let files = ca::CaFiles::in_dir(&cfg.ca.directory);
                let signed = ca::sign(&files, &read(&csr)?, org, days, cfg.ca.max_days)
                    .map_err(Failure::failed)?;
                let fp = signed.info.fingerprint;
                let out = out
                    .unwrap_or_else(|| PathBuf::from(format!("{org}-{}.pem", &fp.to_hex()[..16])));
                std::fs::write(&out, &signed.chain_pem)
                    .map_err(|e| Failure::failed(format!("cannot write {}: {e}", out.display())))?;
                let registered =
                    registry::add(&cfg.registry.directory, org, &signed.info, now_secs())
                        .map_err(Failure::failed)?;
                println!("signed for org {org}");
                println!("  fingerprint  {fp}");
                println!("  subject      {}", signed.info.subject);
                println!("  expires      {}", format_time(signed.info.not_after));
                println!(
                    "  upload       {} (certificate + CA) in Salesforce: Upload Signed Certificate",
                    out.display()
                );
                println!("  registered   {}", registered.display());
                Ok(())
            }
        }
    }

    pub(super) fn certs(command: CertsCommand) -> Result<(), Failure> {
        match command {
            CertsCommand::Add {
                config: c,
                org: o,
                cert,
            } => {
                let cfg = config(c.as_deref())?;
                let org = org(&o)?;
                let info = read_pem_certificate(&read(&cert)?)
                    .map_err(|e| Failure::failed(format!("{}: {e}", cert.display())))?;
                let path = registry::add(&cfg.registry.directory, org, &info, now_secs())
                    .map_err(Failure::failed)?;
                println!("registered {} for org {org}", info.fingerprint);
                println!("  subject  {}", info.subject);
                println!(
                    "  expires  {} ({} days left)",
                    format_time(info.not_after),
                    info.days_left(now_secs())
                );
                println!("  file     {}", path.display());
                Ok(())
            }
            CertsCommand::List {
                config: c,
                json,
                expiring_within,
                revoked,
            } => {
                let cfg = config(c.as_deref())?;
                let snapshot =
                    Snapshot::read_dir(&cfg.registry.directory).map_err(Failure::failed)?;
                if revoked {
                    for r in snapshot.revocations() {
                        match json {
                            true => println!("{}", serde_json::json!(r)),
                            false => println!(
                                "{}  revoked_at={}  reason={:?}  {}",
                                r.fingerprint, r.revoked_at, r.reason, r.subject
                            ),
                        }
                    }
                    return Ok(());
                }
                let now = now_secs();
                let mut rows: Vec<_> = snapshot
                    .iter()
                    .flat_map(|r| r.orgs.iter().map(move |o| (o, r)))
                    .filter(|(_, r)| expiring_within.is_none_or(|d| r.cert.days_left(now) <= d))
                    .collect();
                rows.sort_by_key(|(o, r)| (**o, r.cert.not_after));
                for (org, r) in rows {
                    let c = &r.cert;
                    let kind = if c.self_signed {
                        "self-signed"
                    } else {
                        "ca-issued"
                    };
                    if json {
                        let line = serde_json::json!({
                            "org_id": org.as_str(),
                            "fingerprint": c.fingerprint.to_hex(),
                            "subject": c.subject,
                            "issuer": c.issuer,
                            "not_after": format_time(c.not_after),
                            "days_left": c.days_left(now),
                            "kind": kind,
                        });
                        println!("{line}");
                    } else {
                        println!(
                            "{org}  {}  {}  issuer={}  not_after={}  days_left={}  {kind}",
                            c.fingerprint,
                            c.subject,
                            c.issuer,
                            format_time(c.not_after),
                            c.days_left(now)
                        );
                    }
                }
                for p in &snapshot.problems {
                    eprintln!("skipped {}: {}", p.path.display(), p.reason);
                }
                Ok(())
            }
            CertsCommand::Remove {
                config: c,
                fingerprint,
            } => {
                let cfg = config(c.as_deref())?;
                let fp = Fingerprint::parse(&fingerprint).map_err(Failure::usage)?;
                let removed =
                    registry::remove(&cfg.registry.directory, &fp).map_err(Failure::failed)?;
                for path in removed {
                    println!("removed {}", path.display());
                }
                Ok(())
            }
            CertsCommand::Revoke {
                config: c,
                fingerprint,
                reason,
            } => {
                let cfg = config(c.as_deref())?;
                let fp = Fingerprint::parse(&fingerprint).map_err(Failure::usage)?;
                let reason = reason.trim();
                if reason.is_empty() {
                    return Err(Failure::usage(
                        "--reason must say why the certificate is revoked",
                    ));
                }
                let done = registry::revoke(&cfg.registry.directory, &fp, reason, now_secs())
                    .map_err(Failure::failed)?;
                let r = &done.revocation;
                match done.orgs.is_empty() {
                    true => println!("revoked {fp} (it was not registered to any org)"),
                    false => {
                        let orgs: Vec<&str> = done.orgs.iter().map(OrgId::as_str).collect();
                        println!(
                            "revoked {fp} ({}), registered to {}",
                            r.subject,
                            orgs.join(", ")
                        )
                    }
                }
                for path in done.removed {
                    println!("removed {}", path.display());
                }
                println!(
                    "a running receiver refuses it from its next reload (at once when it watches {})",
                    cfg.registry.directory.display()
                );
                Ok(())
            }
            CertsCommand::Unrevoke {
                config: c,
                fingerprint,
            } => {
                let cfg = config(c.as_deref())?;
                let fp = Fingerprint::parse(&fingerprint).map_err(Failure::usage)?;
                let lifted =
                    registry::unrevoke(&cfg.registry.directory, &fp).map_err(Failure::failed)?;
                println!(
                    "lifted the revocation of {fp} ({}), revoked on {} ({}); `certs add` can \
                     register it again",
                    lifted.subject, lifted.revoked_at, lifted.reason
                );
                Ok(())
            }
            CertsCommand::Check {
                config: c,
                org: o,
                cert,
            } => {
                let cfg = config(c.as_deref())?;
                let expected = o.as_deref().map(org).transpose()?;
                let bytes = read(&cert)?;
                let info = read_pem_certificate(&bytes)
                    .map_err(|e| Failure::failed(format!("{}: {e}", cert.display())))?;
                let intermediates: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&bytes)
                        .filter_map(Result::ok)
                        .skip(1)
                        .collect();
                let snapshot =
                    Snapshot::read_dir(&cfg.registry.directory).map_err(Failure::failed)?;
                let checklist = Checklist::new(
                    info,
                    &intermediates,
                    &snapshot,
                    expected,
                    &ca::chain_verified_cas(&cfg),
                    cfg.registry.expiry_warning_days,
                    now_secs(),
                )
                .map_err(Failure::failed)?;
                print!("{}", checklist.render());
                if checklist.refusals().is_empty() {
                    Ok(())
                } else {
                    Err(Failure::failed(""))
                }
            }
        }
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
        let server = crate::Server::start(config).await?;
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
            // Not `{e:#}`: every error here already ends with the text of its cause, and
            // anyhow's chain would repeat it once per level.
            tracing::error!("{e}");
            eprintln!("obm-gate: {e}");
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

/// What `messages list` and `messages show` select.
#[derive(Default)]
struct ListArgs {
    org: Option<String>,
    id: Option<String>,
    limit: Option<usize>,
    since: Option<String>,
    state: Option<String>,
    json: bool,
}

fn parse_org(org: Option<&str>) -> Result<Option<OrgId>, Failure> {
    org.map(OrgId::parse)
        .transpose()
        .map_err(|e| Failure::usage(format!("--org: {e}")))
}

fn parse_state(state: &str) -> Result<store::ForwardState, Failure> {
    store::ForwardState::parse(state).ok_or_else(|| {
        Failure::usage(format!(
            "--state: {state:?} is not pending, delivered or dead"
        ))
    })
}

/// The configured store, for the CLI.
fn store_backend(config: &Config) -> Result<store::Backend, Failure> {
    match &config.store.url {
        Some(url) => Ok(store::Backend::Postgres(
            store::postgres::Target::new(url, &config.store.ca_certificates)
                .map_err(Failure::usage)?,
        )),
        None if !config.store.path.exists() => Err(Failure::failed(format!(
            "no store at {} (nothing received yet, or a different [store] path)",
            config.store.path.display()
        ))),
        None => Ok(store::Backend::Sqlite(config.store.path.clone())),
    }
}

fn small_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::failed)
}

/// `store compact`.
fn compact(config_path: Option<&Path>) -> Result<(), Failure> {
    let config = load_config(config_path).map_err(Failure::usage)?;
    let path = match store_backend(&config)? {
        store::Backend::Sqlite(path) => path,
        store::Backend::Postgres(_) => {
            return Err(Failure::usage(
                "store compact applies to the SQLite store; this configuration uses PostgreSQL \
                 ([store] url), which reclaims space with its own (auto)vacuum",
            ));
        }
    };
    let done = store::compact(&path).map_err(Failure::failed)?;
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!(
        "compacted {}: {:.1} MB -> {:.1} MB ({} free pages dropped), pages {} -> {} bytes, \
         {} notifications",
        path.display(),
        mb(done.bytes_before),
        mb(done.bytes_after),
        done.free_pages_before,
        done.page_size_before,
        done.page_size_after,
        done.notifications
    );
    Ok(())
}

/// `messages replay`.
fn replay(
    config_path: Option<&Path>,
    id: Option<String>,
    org: Option<String>,
    state: &str,
) -> Result<(), Failure> {
    let config = load_config(config_path).map_err(Failure::usage)?;
    let which = store::Requeue {
        notification_id: id,
        org: parse_org(org.as_deref())?,
        state: parse_state(state)?,
    };
    let backend = store_backend(&config)?;
    let n = small_runtime()?
        .block_on(store::requeue(&backend, &which))
        .map_err(Failure::failed)?;
    if n == 0 {
        return Err(Failure::failed(format!(
            "nothing to replay: no {} notification matches",
            which.state.as_str()
        )));
    }
    println!(
        "queued {n} notification(s) for the webhook again; the running receiver re-sends them \
         within a second"
    );
    if config.forward.url.is_none() {
        eprintln!("note: [forward] url is not set in this configuration");
    }
    Ok(())
}

/// `messages list` and `messages show`.
fn messages(config_path: Option<&Path>, args: ListArgs) -> Result<(), Failure> {
    let config = load_config(config_path).map_err(Failure::usage)?;
    let org = parse_org(args.org.as_deref())?;
    let since = args
        .since
        .as_deref()
        .map(parse_since)
        .transpose()
        .map_err(Failure::usage)?;
    let state = args.state.as_deref().map(parse_state).transpose()?;
    let backend = store_backend(&config)?;
    let (id, json) = (args.id, args.json);
    let show = id.is_some();
    let filter = store::Filter {
        org,
        limit: args.limit,
        since,
        notification_id: id.clone(),
        state,
    };
    let rows = small_runtime()?
        .block_on(store::list_backend(&backend, &filter))
        .map_err(Failure::failed)?;
    if show && rows.is_empty() {
        return Err(Failure::failed(format!(
            "no stored notification with ID {}",
            id.unwrap_or_default()
        )));
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for row in rows {
        let line = if show {
            serde_json::to_string_pretty(&row).unwrap_or_default()
        } else if json {
            let mut row = row;
            row.peer_addr.clear(); // the documented keys only
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
    Ok(())
}

/// An RFC 3339 time, or a duration before now ("2h", "30m").
fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("--since: {s:?} is neither an RFC 3339 time nor a duration such as 2h")
    })?;
    Ok(std::time::SystemTime::now() - ago)
}

#[allow(clippy::too_many_arguments)]
fn send(
    url: String,
    cert: PathBuf,
    key: Option<PathBuf>,
    password: String,
    ca: Option<PathBuf>,
    file: Option<PathBuf>,
    sample: bool,
    org: Option<String>,
) -> Result<(), Failure> {
    let body = match (file, sample) {
        (Some(path), _) => std::fs::read(&path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?,
        (None, true) => {
            let org = OrgId::parse(org.as_deref().unwrap_or_default())
                .map_err(|e| Failure::usage(format!("--org: {e}")))?;
            let id = format!("04l{:015}", now_secs());
            crate::soap::sample_message(&org, &id).into_bytes()
        }
        (None, false) => return Err(Failure::usage("give a message FILE or --sample --org ORG")),
    };
    let runtime = tokio::runtime::Runtime::new().map_err(Failure::failed)?;
    let options = crate::send::Options {
        url,
        cert,
        key,
        password,
        ca,
        body,
        timeout: std::time::Duration::from_secs(60),
    };
    let report = runtime
        .block_on(crate::send::send(options))
        .map_err(Failure::failed)?;
    println!("HTTP {}", report.status);
    println!("TLS {} {}", report.protocol, report.cipher);
    match &report.reply {
        crate::soap::Reply::Ack(true) => {
            println!("Ack: true");
            Ok(())
        }
        crate::soap::Reply::Ack(false) => {
            Err(Failure::failed("Ack: false (Salesforce would retry)"))
        }
        crate::soap::Reply::Fault { code, string } => {
            println!("fault: {code}: {string}");
            Err(Failure::failed("the receiver answered with a fault"))
        }
        crate::soap::Reply::Other => {
            println!("{}", report.body.chars().take(2000).collect::<String>());
            Err(Failure::failed(
                "the answer is not SOAP (Salesforce would say: Content is not allowed in prolog)",
            ))
        }
    }
}
