//! The broker's errors, one enum per layer, and the one place they become a `tonic::Status`.
//!
//! Messages here may name fields, states, ids and agencies. They never carry case-file content or
//! free text from a request: the types that hold those ([`crate::referral::Sealed`],
//! [`crate::referral::FreeText`]) do not print their content.

use std::fmt;

use crate::referral::state::TransitionError;

pub use spean_domain::FieldError;

/// Failures of the storage layer (SQLite now; PostgreSQL behind the same trait).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// From the embedded store's writer and readers, which talk to SQLite through `rusqlite`.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row that does not decode: a bug or a hand-edited database, never a caller's fault.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// A stored value that its decoder refused, with the decoder's error as the cause.
    #[error("corrupt value in {table}")]
    Undecodable {
        table: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The embedded store could not start one of its threads.
    #[error("cannot start the store's {what} thread")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The write was committed together with others (see `store::writer`) and that commit failed.
    #[error("the transaction this write was part of failed")]
    Batch(#[source] std::sync::Arc<StoreError>),
    /// The embedded store's writer or reader threads are gone: the broker is shutting down.
    #[error("the store's threads have stopped")]
    Stopped,
}

impl StoreError {
    /// A failure that a retry can cure: the database is unreachable, restarting, or cut our session
    /// (PostgreSQL SQLSTATE classes 08 and 57, e.g. `pg_terminate_backend`), or SQLite is busy.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    code.starts_with("08")
                        || code.starts_with("57")
                        || code == "40001"
                        || code == "40P01"
                        || code == "5"
                        || code == "6"
                }),
                _ => false,
            },
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
            ),
            StoreError::Batch(e) => e.is_transient(),
            StoreError::Stopped => true,
            _ => false,
        }
    }
}

/// Everything a broker operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A party without the right to this action, outside the state machine's roles.
    #[error("{0}")]
    Forbidden(String),
    /// A valid request the network cannot carry out as it stands (e.g. no agency offers the service).
    #[error("{0}")]
    Unroutable(String),
    /// A valid request that the referral's state refuses outside the state machine's table (e.g.
    /// revoking a delegation that does not exist).
    #[error("{0}")]
    Precondition(String),
    /// The broker cannot serve this right now (RabbitMQ down, shutting down); the caller retries.
    #[error("{0}")]
    Unavailable(String),
    /// Another change to the same referral won every retry.
    #[error("the referral is being changed by another request; retry")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrokerError {
    /// A failure that a retry of the same request can cure.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Store(e) => e.is_transient(),
            BrokerError::Unavailable(_) | BrokerError::Contended => true,
            _ => false,
        }
    }
}

impl From<BrokerError> for tonic::Status {
    fn from(err: BrokerError) -> Self {
        use tonic::{Code, Status};
        match &err {
            BrokerError::InvalidField(e) => Status::invalid_argument(e.to_string()),
            BrokerError::NotFound(m) => Status::not_found(m.clone()),
            BrokerError::AlreadyExists(m) => Status::already_exists(m.clone()),
            BrokerError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
            BrokerError::Transition(t) => match t {
                TransitionError::WrongParty { .. } => Status::permission_denied(t.to_string()),
                TransitionError::WrongState { .. } | TransitionError::NotAnAction { .. } => {
                    Status::failed_precondition(t.to_string())
                }
            },
            BrokerError::Forbidden(m) => Status::permission_denied(m.clone()),
            BrokerError::Unroutable(m) | BrokerError::Precondition(m) => {
                Status::failed_precondition(m.clone())
            }
            BrokerError::Unavailable(m) => Status::unavailable(m.clone()),
            BrokerError::Contended => Status::new(Code::Aborted, err.to_string()),
            BrokerError::Store(source) => {
                // Logged with its cause chain; the caller learns only that it was ours.
                tracing::error!(error = %ErrorChain(source), "store failure");
                if source.is_transient() {
                    Status::unavailable("the broker's store is unavailable; retry")
                } else {
                    Status::internal("internal error")
                }
            }
        }
    }
}

/// Displays an error with its sources, `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
