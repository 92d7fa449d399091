//! Listening: on a local address by default; beyond localhost only over TLS (the API carries case
//! files, and an API key in clear on a network is a key given away).

use std::{net::SocketAddr, sync::Arc};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{AdapterError, config::ApiSettings};

/// Loads the API's TLS certificate chain and key (PEM).
fn tls_config(settings: &ApiSettings) -> Result<Option<rustls::ServerConfig>, AdapterError> {
    let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) else {
        return Ok(None);
    };
    let invalid = |field: &str, reason: String| AdapterError::Invalid {
        field: field.into(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("api.tls_cert", format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(
            "api.tls_cert",
            format!("{} holds no certificate", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid("api.tls_key", format!("{}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("api.tls_key", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(config))
}

/// The bound listener and whether it speaks TLS: bound before the daemon reports it is up, so a
/// port already taken fails the start rather than a later request.
pub struct Listening {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub addr: SocketAddr,
}

/// The file the daemon writes the API's bound address to: the store's path with `.api-addr`.
pub fn address_file(store: &std::path::Path) -> std::path::PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".api-addr");
    std::path::PathBuf::from(name)
}

/// Binds the API's address; `None` when the API is not served.
pub async fn bind(settings: &ApiSettings) -> Result<Option<Listening>, AdapterError> {
    let Some(wanted) = settings.address()? else {
        return Ok(None);
    };
    let tls = tls_config(settings)?.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    let listener = TcpListener::bind(wanted)
        .await
        .map_err(|e| AdapterError::Config(format!("api.listen {wanted}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AdapterError::Config(format!("api.listen: {e}")))?;
    Ok(Some(Listening {
        listener,
        tls,
        addr,
    }))
}

/// Serves `router` until `shutdown`.
pub async fn serve(listening: Listening, router: axum::Router, shutdown: CancellationToken) {
    let Listening {
        listener,
        tls,
        addr,
        ..
    } = listening;
    tracing::info!(%addr, tls = tls.is_some(), "API and staff pages listening");
    let Some(tls) = tls else {
        let stop = shutdown.clone();
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::error!(%error, "API server stopped");
        }
        return;
    };
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "API accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (tls, router) = (tls.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let service = TowerToHyperService::new(router);
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "API connection ended");
            }
        });
    }
}
