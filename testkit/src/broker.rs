//! [`BrokerProcess`]: a real `spean-broker serve` over a data folder, started once it listens.
//!
//! The data folder outlives the process, so a test can kill the broker and start it again on the
//! same data; the log is appended to across starts, so the whole history stays readable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tonic::transport::Endpoint;

use crate::{Error, Patience, binary};

/// A running `spean-broker serve`. Dropping it kills the process.
pub struct BrokerProcess {
    /// The broker's `--data-dir`: its address file, log, embedded database and (by default) PKI.
    pub data_dir: PathBuf,
    /// Where it listens, from the address file it writes once bound: tests listen on port 0.
    pub addr: SocketAddr,
    /// The `SPEAN_BROKER_*` (and other) variables it was started with, to find its PKI folder.
    pub env: Vec<(String, String)>,
    /// How long from spawn until it accepted connections (creating the PKI, the database and
    /// the queues included): the benchmark reports it.
    pub startup: Duration,
    child: Child,
}

impl BrokerProcess {
    /// Starts the broker on `listen` (`127.0.0.1:0` for a free port) over `data_dir` with `env`
    /// added to this process's environment, and returns once it accepts TCP connections. Fails if
    /// it exits first (with the end of its log) or is not listening after `patience.limit`.
    pub async fn start(
        data_dir: &Path,
        listen: &str,
        env: &[(String, String)],
        patience: Patience,
    ) -> Result<Self, Error> {
        // Ignored on purpose: it fails only when a provider is already installed. The gRPC
        // clients built from this broker's identities need one for the whole process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr_file = data_dir.join("broker.addr");
        // A restart over the same folder must not read the address its predecessor left.
        let _ = std::fs::remove_file(&addr_file);
        std::fs::create_dir_all(data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(data_dir))?;
        let began = Instant::now();
        let mut child = Command::new(binary("spean-broker")?)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("serve")
            .arg("--listen")
            .arg(listen)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let listening = patience
            .poll(|| {
                let exited = child.try_wait();
                let addr: Option<SocketAddr> = std::fs::read_to_string(&addr_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                async move {
                    match exited {
                        Err(e) => return Some(Err(Error::Io(e))),
                        Ok(Some(status)) => {
                            return Some(Err(Error::BrokerExited {
                                status,
                                log_tail: crate::log::tail(&log_path(data_dir)),
                            }));
                        }
                        Ok(None) => {}
                    }
                    let addr = addr?;
                    tokio::net::TcpStream::connect(addr)
                        .await
                        .ok()
                        .map(|_| Ok(addr))
                }
            })
            .await;
        let addr = listening.unwrap_or(Err(Error::BrokerSilent(patience.limit)))?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            addr,
            env: env.to_vec(),
            startup: began.elapsed(),
            child,
        })
    }

    /// The URL agencies and adapters reach the broker at.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PKI folder: `<data_dir>/pki`, or the one shared through `SPEAN_BROKER_TLS__PKI_DIR`
    /// (brokers that must trust the same agencies share one).
    pub fn pki_dir(&self) -> PathBuf {
        self.env
            .iter()
            .find(|(k, _)| k == "SPEAN_BROKER_TLS__PKI_DIR")
            .map_or_else(|| self.data_dir.join("pki"), |(_, v)| PathBuf::from(v))
    }

    /// `agency`'s identity folder (CA, certificate, key), as the broker's PKI issued it.
    pub fn identity(&self, agency: &str) -> PathBuf {
        self.pki_dir().join("agencies").join(agency)
    }

    /// An endpoint to this broker presenting `agency`'s certificate; see [`crate::agency_endpoint`].
    pub fn endpoint(&self, agency: &str) -> Result<Endpoint, Error> {
        crate::agency_endpoint(&self.url(), &self.identity(agency))
    }

    /// The broker's log so far, over every start on this data folder.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.data_dir)).unwrap_or_default()
    }

    /// The end of the broker's log, to say why something failed; see [`crate::log::tail`].
    pub fn log_tail(&self) -> String {
        crate::log::tail(&log_path(&self.data_dir))
    }

    /// The process id, to read its memory or CPU time; `None` once it has exited and been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs, as when a machine loses power.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}

/// Where the broker's stderr goes: `<data_dir>/broker.log`.
fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("broker.log")
}
