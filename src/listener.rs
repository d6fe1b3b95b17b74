//! The public listener: accepts TCP (optionally TLS) connections up to
//! `server.max_connections`, serves each with hyper's HTTP/1.1 under the header size and
//! header read time limits, and drains them at shutdown.
//!
//! We serve connections ourselves instead of `axum::serve` because the defences against
//! slow and oversized headers (hyper's `header_read_timeout`, `max_buf_size`), the
//! connection cap and TLS all live at this level.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::Instrument;

use crate::config::{ServerLimits, TlsFiles};

/// How connections are accepted and read.
#[derive(Clone)]
pub struct Settings {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub tls: Option<TlsAcceptor>,
}

impl Settings {
    /// Reads the TLS certificate and key when `server.tls` is set.
    pub fn from_limits(limits: &ServerLimits) -> anyhow::Result<Settings> {
        Ok(Settings {
            max_connections: limits.max_connections,
            header_read_timeout: limits.header_read_timeout,
            max_header_bytes: limits.max_header_bytes,
            tls: limits.tls.as_ref().map(tls_acceptor).transpose()?,
        })
    }
}

/// A rustls acceptor for the PEM certificate chain and private key in `files`.
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading server.tls.cert {}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "server.tls.cert {} holds no certificate",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading server.tls.key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls: the key does not fit the certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets open connections finish
/// the request they are in and returns when they have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, limit = settings.max_connections, "connection limit reached, closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let router = router.clone();
        let settings = settings.clone();
        connections.spawn(
            async move {
                let _permit = permit;
                match &settings.tls {
                    None => {
                        serve_connection(TokioIo::new(stream), peer, router, &settings, watcher)
                            .await
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            settings.header_read_timeout,
                            acceptor.accept(stream),
                        )
                        .await;
                        match handshake {
                            Ok(Ok(tls)) => {
                                serve_connection(
                                    TokioIo::new(tls),
                                    peer,
                                    router,
                                    &settings,
                                    watcher,
                                )
                                .await
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
                            Err(_) => tracing::debug!("tls handshake too slow"),
                        }
                    }
                }
            }
            .instrument(tracing::debug_span!("connection", peer = %peer)),
        );
    }
    graceful.shutdown().await;
    connections.close();
    connections.wait().await;
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    settings: &Settings,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes);
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
