//! [`AdapterProcess`]: one agency's `spean-adapter`, as its staff run it: one-shot commands, and a
//! daemon (`run`) that can be started, SIGKILLed and started again over the same store.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};

use tokio::process::{Child, Command};

use crate::{Error, binary};

/// One agency's adapter: its identity folder, its own store file and log under a folder of the
/// caller's, and the broker it talks to.
pub struct AdapterProcess {
    /// The agency it acts for, to name it in failure messages.
    pub agency: String,
    /// The identity folder the broker's PKI issued for the agency (`--identity`).
    identity: PathBuf,
    /// The adapter's SQLite store (`--store`): `<dir>/<agency>.db`, kept across restarts.
    store: PathBuf,
    /// Where the daemon's stderr goes: `<dir>/<agency>.log`, appended to by every start.
    log: PathBuf,
    /// The broker's URL (`--broker`); a test can point the adapter at another broker.
    broker_url: String,
    /// Variables every command and start gets (a test's log level, say).
    env: Vec<(String, String)>,
    /// The daemon, while one runs.
    daemon: Option<Child>,
}

impl AdapterProcess {
    /// The adapter of `agency` with the identity folder `identity`, talking to `broker_url`, with
    /// its store and log in `dir`. Nothing runs yet.
    pub fn new(agency: &str, identity: PathBuf, broker_url: String, dir: &Path) -> Self {
        Self {
            agency: agency.to_owned(),
            identity,
            store: dir.join(format!("{agency}.db")),
            log: dir.join(format!("{agency}.log")),
            broker_url,
            env: Vec::new(),
            daemon: None,
        }
    }

    /// Adds `key=value` to the environment of every later command and daemon start.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `spean-adapter --identity … --broker … --store …`, to which the caller adds a command.
    pub fn command(&self) -> Result<Command, Error> {
        let mut cmd = Command::new(binary("spean-adapter")?);
        cmd.arg("--identity")
            .arg(&self.identity)
            .arg("--broker")
            .arg(&self.broker_url)
            .arg("--store")
            .arg(&self.store)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs a one-shot command and returns its output, whatever its exit status.
    pub async fn run(&self, args: &[&str]) -> Result<Output, Error> {
        Ok(self.command()?.args(args).output().await?)
    }

    /// Points later commands and daemon starts at the broker at `url`.
    pub fn point_to(&mut self, url: String) {
        self.broker_url = url;
    }

    /// Starts the daemon (`run`), with extra environment variables, its stderr appended to the log.
    pub fn start_with(&mut self, env: &[(&str, &str)]) -> Result<(), Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = self.command()?;
        cmd.arg("run").stdout(Stdio::null()).stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.daemon = Some(cmd.spawn()?);
        Ok(())
    }

    /// Starts the daemon (`run`).
    pub fn start(&mut self) -> Result<(), Error> {
        self.start_with(&[])
    }

    /// SIGKILL: the daemon gets no chance to finish anything. Nothing to do if none runs.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        match self.daemon.take() {
            Some(mut child) => child.kill().await,
            None => Ok(()),
        }
    }

    /// How the daemon ended, if it has; `None` while it runs.
    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>, Error> {
        Ok(self.daemon.as_mut().ok_or(Error::NoDaemon)?.try_wait()?)
    }

    /// Hands over the daemon, to wait for it to exit on its own.
    pub fn take_daemon(&mut self) -> Result<Child, Error> {
        self.daemon.take().ok_or(Error::NoDaemon)
    }

    /// The daemon's process id, to read its memory; `None` if none runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Child::id)
    }

    /// The adapter's store file.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The daemon's log so far (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
