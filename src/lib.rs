//! obm-gate receives Salesforce Outbound Messages over mutual TLS, binds each message's
//! `OrganizationId` to the client certificate it arrived with, stores every notification
//! durably, and only then acknowledges.
//!
//! # Layout
//!
//! The modules follow a message's path:
//!
//! - [`listener`]: accepting connections within the limits, the per-connection watchdog,
//!   graceful shutdown; [`proxy`]: the PROXY protocol header, when behind a load balancer.
//! - [`tls`]: the handshake and client identity; the registry-backed certificate verifier.
//!   The only module that knows rustls.
//! - [`http`]: routing, body limits, the request pipeline and its SOAP answers.
//! - [`soap`]: parsing envelopes, writing the ack and faults. The only module that knows XML.
//! - [`authz`]: binding the message's org to the certificate, against the registry of now.
//! - [`store`]: group-committed, deduplicated, durable storage. The only module that knows SQL.
//! - [`jetstream`]: publishing to NATS JetStream before the ack (opt-in, or instead of the store).
//! - [`forward`]: the webhook, fed from the store after the ack; [`document`] is the JSON both
//!   downstream paths send.
//!
//! Around it: [`admin`] (`/healthz`, `/readyz`, `/metrics`), [`registry`] (certificates per org) and [`reload`] (watching it and the server
//! certificate), [`ca`] (certificates we create), [`checklist`] (`certs check`), [`config`],
//! [`metrics`], [`ids`] (validated identifiers), [`send`] (a Salesforce-like sender) and [`cli`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod ca;
pub mod checklist;
pub mod cli;
pub mod config;
pub mod document;
pub mod forward;
pub mod http;
pub mod ids;
pub mod jetstream;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod send;
pub mod soap;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;

/// Why the receiver could not start. Everything here happens before the port accepts.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigErrors),
    #[error("development server certificate: {0}")]
    DevCertificate(#[from] ca::CaError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("registry: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    JetStream(#[from] jetstream::JetStreamError),
    #[error("{0}")]
    Forward(#[from] forward::ForwardError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A receiver, ready to serve: registry loaded, store open, TLS configured.
pub struct Server {
    state: Arc<http::AppState>,
    acceptor: tokio_rustls::TlsAcceptor,
    server_cert: Arc<tls::ServerCert>,
    watch: reload::Watch,
    forwarder: Option<forward::Forwarder>,
}

impl Server {
    /// Loads everything the configuration names. Creates a development server certificate
    /// if neither the certificate nor the key file exists.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let (cert, key) = (&config.tls.certificate, &config.tls.private_key);
        if ca::ensure_dev_server_certificate(cert, key)? {
            tracing::warn!(
                certificate = %cert.display(),
                key = %key.display(),
                "!!! CREATED A SELF-SIGNED DEVELOPMENT SERVER CERTIFICATE FOR localhost !!! \
                 Salesforce will not trust it: configure [tls] certificate and private_key \
                 with a publicly trusted chain before going live"
            );
        }
        for (setting, path) in config.secret_files() {
            reload::warn_loose_permissions(setting, path);
        }
        let server_cert = tls::ServerCert::new(tls::load_certified_key(cert, key)?);
        let metrics = Arc::new(metrics::Metrics::new());
        // Watch first, then read: a change made after the first read is always seen. A
        // directory that cannot be read stops the start before the watch would log about it.
        registry::check_directory(&config.registry.directory)?;
        let watch = reload::Watch::start(&config);
        let registry = Arc::new(registry::Registry::open(&config.registry.directory)?);
        let tls_config = tls::server_config(
            registry.clone(),
            server_cert.clone(),
            &ca::chain_verified_cas(&config),
            config.limits.tls_session_cache,
        )?;
        let stateless =
            config.jetstream.url.is_some() && config.jetstream.mode == config::JetStreamMode::Only;
        let store = if stateless {
            tracing::info!(
                "no local store: JetStream is the only durable step ([jetstream] mode = \"only\")"
            );
            None
        } else {
            let forward = config.forward.url.is_some();
            Some(Arc::new(
                store::Store::open(&config.store, forward, metrics.clone()).await?,
            ))
        };
        let jetstream = match &config.jetstream.url {
            Some(_) => Some(jetstream::Publisher::connect(&config.jetstream).await?),
            None => None,
        };
        let forwarder = match (&store, &config.forward.url) {
            (Some(store), Some(_)) => Some(forward::Forwarder::new(
                store.clone(),
                &config.forward,
                metrics.clone(),
            )?),
            _ => None,
        };
        let state = Arc::new(http::AppState {
            config,
            registry,
            store,
            jetstream,
            metrics,
            accepting: std::sync::atomic::AtomicBool::new(false),
            admin_address: std::sync::OnceLock::new(),
        });
        Ok(Server {
            state,
            acceptor: tokio_rustls::TlsAcceptor::from(tls_config),
            server_cert,
            watch,
            forwarder,
        })
    }

    /// Shared state, for tests and the admin side: registry, store, metrics.
    pub fn state(&self) -> Arc<http::AppState> {
        self.state.clone()
    }

    /// The server certificate in use; `replace` it to serve a new one.
    pub fn server_cert(&self) -> Arc<tls::ServerCert> {
        self.server_cert.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains and flushes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        let grace = self.state.config.shutdown.grace_period;
        let admin_address = self.state.config.admin.address;
        let admin_listener = TcpListener::bind(admin_address).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind the admin listener {admin_address}: {e}"),
            )
        })?;
        let admin_local = admin_listener.local_addr()?;
        let _ = self.state.admin_address.set(admin_local);
        tracing::info!(address = %admin_local, "admin listening (/healthz, /readyz, /metrics)");
        let stop_reload = tokio_util::sync::CancellationToken::new();
        let admin = tokio::spawn(admin::run(
            self.state.clone(),
            admin_listener,
            stop_reload.clone(),
        ));
        let reloader = tokio::spawn(reload::run(
            self.state.clone(),
            self.server_cert.clone(),
            self.watch,
            stop_reload.clone(),
        ));
        // The forwarder stops taking new work as soon as shutdown begins, and finishes what is
        // in flight while connections drain, so its results reach the store before it closes.
        let stop_forward = tokio_util::sync::CancellationToken::new();
        let forwarder = self
            .forwarder
            .map(|f| tokio::spawn(f.run(stop_forward.clone())));
        // Retention deletes between group commits, and stops with the forwarder: before the
        // store's writer flushes and closes.
        let retention = self.state.config.store.retention;
        let pruner = match &self.state.store {
            Some(store) if !retention.is_zero() => {
                let (store, stop) = (store.clone(), stop_forward.clone());
                Some(tokio::spawn(async move {
                    store.keep_for(retention, stop).await
                }))
            }
            _ => None,
        };
        // The accept loop runs on a worker, like the connections it spawns: a new connection
        // then starts in that worker's own queue, where from this thread (outside the runtime's
        // workers) each accept and each spawn was a wake-up of another thread.
        let stop_accepting = tokio_util::sync::CancellationToken::new();
        let mut accepting = tokio::spawn(listener::run(
            self.state,
            self.acceptor,
            listener,
            grace,
            stop_accepting.clone().cancelled_owned(),
        ));
        let served = tokio::select! {
            r = &mut accepting => r,
            () = shutdown => {
                stop_forward.cancel();
                stop_accepting.cancel();
                accepting.await
            }
        };
        let served = served.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        stop_forward.cancel();
        stop_reload.cancel();
        let _ = reloader.await;
        let _ = admin.await;
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await;
        }
        if let Some(pruner) = pruner {
            let _ = pruner.await;
        }
        served?;
        Ok(())
    }
}

/// Starts a receiver on a bound listener and serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    Server::start(config).await?.run(listener, shutdown).await
}
