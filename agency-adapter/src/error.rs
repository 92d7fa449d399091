//! The adapter's one error type, and the one place a broker `Status` is sorted into "refused for good"
//! (the outbox row becomes `rejected`) or "try again later" (the row stays `pending`).

use std::path::PathBuf;

use spean_domain::FieldError;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("local store: {0}")]
    Store(#[from] sqlx::Error),

    /// From the store's writing connection, which talks to SQLite through `rusqlite`.
    #[error("local store: {0}")]
    StoreWrite(#[from] rusqlite::Error),

    #[error("local store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error("configuration: {0}")]
    Config(String),

    /// The identity folder is missing a file or holds something that is not a usable certificate.
    #[error("identity {path}: {reason}")]
    Identity { path: PathBuf, reason: String },

    /// A value given on the command line or in a file that does not parse; names the field. Owned,
    /// because the domain's parse errors carry a field path built at run time.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },

    /// An idempotency key (`client_ref` or `request_id`) already in the outbox for a different request.
    /// Queuing the new request under it would report the old row and never send the new one.
    #[error(
        "{field} {key:?} is already used for another request ({operation}, {status}); \
         give a new {field}"
    )]
    KeyReused {
        field: &'static str,
        key: String,
        /// The operation of the request that holds the key.
        operation: String,
        /// Where that request stands: `pending`, `sent` or `rejected`.
        status: String,
    },

    /// Stored or received bytes that are not the proto they claim to be. Names what, never the content.
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },

    /// A box could not be sealed or opened, or an agency's published key did not verify against
    /// the network CA (see `sealing`). Names the agency and why, never the content.
    #[error("sealing: {0}")]
    Sealing(String),

    /// A sealed column of the store did not open (another key, or a changed value), or the key
    /// could not be made. Names the column and row, never the content.
    #[error("store at rest: {0}")]
    AtRest(String),

    /// The key given does not open this store: nothing was read or written. Names the setting.
    #[error(
        "{setting} does not open the store {store}: another key or passphrase; nothing was read or written"
    )]
    WrongStoreKey { setting: String, store: PathBuf },

    /// The broker could not be reached or did not answer in time: the request stays queued.
    #[error("broker unavailable: {0}")]
    Unavailable(String),

    /// The broker refused the request for good (bad field, wrong state, wrong party, key reused...).
    #[error("{code}: {message}")]
    Rejected { code: &'static str, message: String },

    /// The broker answered with a status that is neither a refusal nor unavailability (internal error,
    /// resource exhausted...): retried later like unavailability, but reported as what it was.
    #[error("{code}: {message}")]
    Broker { code: &'static str, message: String },

    /// The broker refused the agency's certificate: revoked, expired, not yet valid, or not the
    /// network's. No call with it will go through, so this is neither "unavailable" nor the
    /// request's fault: the request stays queued (not rejected), for the daemon to send once it
    /// is restarted with a valid identity, and the command says why it failed.
    #[error("this agency's certificate is refused: {0}")]
    CertificateRefused(String),

    /// Something asked for by its id is not in the local store (a referral, an API key, a webhook
    /// endpoint or message, …): the HTTP API answers 404.
    #[error("NOT_FOUND: {what} {id} is not in the local store")]
    NotFound { what: &'static str, id: String },

    /// A request the broker refused before, asked for again under the same key: it stays
    /// refused and is not sent again; a new key sends it anew.
    #[error(
        "{field} {key:?} was refused by the broker before ({reason}) and is not sent again; \
         give a new {field}"
    )]
    RefusedBefore {
        field: &'static str,
        key: String,
        reason: String,
    },
}

/// What the broker's TLS alerts about a client certificate mean, by the alert's name as rustls
/// reports it (`received fatal alert: <name>`): the broker refuses a certificate in the handshake
/// when it is outside its validity period or not signed by the network's CA.
const CERTIFICATE_ALERTS: &[(&str, &str)] = &[
    (
        "CertificateExpired",
        "it has expired, or is not valid yet; ask the network operator for a new identity",
    ),
    (
        "CertificateRevoked",
        "it was revoked; ask the network operator for a new identity",
    ),
    (
        "CertificateRequired",
        "none was presented; check the identity folder",
    ),
    (
        "UnknownCA",
        "it was not issued by this network's CA; check the identity folder and the broker address",
    ),
    (
        "BadCertificate",
        "it is not a certificate the broker accepts; check the identity folder",
    ),
    (
        "DecryptError",
        "its signature does not verify against the network's CA; check the identity folder",
    ),
];

/// The explanation of a certificate alert the broker sent, if `text` (an error and its sources)
/// reports one.
fn certificate_alert(text: &str) -> Option<String> {
    let (_, after) = text.split_once("received fatal alert: ")?;
    CERTIFICATE_ALERTS
        .iter()
        .find(|(name, _)| after.starts_with(name))
        .map(|(name, meaning)| format!("{meaning} (TLS alert {name})"))
}

/// The metadata key of the broker's answer to a call over the agency's rate: milliseconds until
/// it may call again (gRPC's retry pushback).
pub const PUSHBACK: &str = "grpc-retry-pushback-ms";

impl AdapterError {
    /// Sorts a broker status: the codes the contract lists as definitive refusals become
    /// [`AdapterError::Rejected`]; unavailability and deadlines become [`AdapterError::Unavailable`].
    /// UNAUTHENTICATED, and a TLS alert about the agency's certificate on a failed call, become
    /// [`AdapterError::CertificateRefused`].
    pub fn from_status(status: tonic::Status) -> Self {
        let code = status.code();
        let name = code_name(code);
        if code == Code::Unauthenticated {
            return Self::CertificateRefused(status.message().to_owned());
        }
        if let Some(alert) = certificate_alert(&error_chain(&status)) {
            return Self::CertificateRefused(alert);
        }
        let message = status.message().to_owned();
        match code {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::NotFound
            | Code::AlreadyExists
            // A message over the broker's size limit, or a call it does not know, fails the same way
            // every time: retrying it would block the rows queued behind it forever.
            | Code::OutOfRange
            | Code::Unimplemented => Self::Rejected {
                code: name,
                message,
            },
            // Over the broker's size limit (and no pushback) is final; over an agency's rate
            // the broker says when to retry (`grpc-retry-pushback-ms`), and the row waits.
            Code::ResourceExhausted if status.metadata().get(PUSHBACK).is_none() => {
                Self::Rejected {
                    code: name,
                    message,
                }
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Self::Unavailable(format!("{name}: {message}"))
            }
            _ => Self::Broker {
                code: name,
                message,
            },
        }
    }

    /// True when sending the same request again cannot succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }

    /// True when the request should stay queued and be retried with the same key.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Broker { .. })
    }
}

/// The network's own rules ([`spean_domain::ids`]) refused a value: the same verdict the broker would
/// give, reached before anything is queued.
impl From<FieldError> for AdapterError {
    fn from(error: FieldError) -> Self {
        Self::Invalid {
            field: error.field,
            reason: error.reason,
        }
    }
}

impl From<tonic::Status> for AdapterError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(status)
    }
}

impl From<tonic::transport::Error> for AdapterError {
    fn from(error: tonic::transport::Error) -> Self {
        let chain = error_chain(&error);
        match certificate_alert(&chain) {
            Some(alert) => Self::CertificateRefused(alert),
            None => Self::Unavailable(chain),
        }
    }
}

/// The canonical gRPC name of a code, as users see it in `error: <CODE>: <message>`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Joins an error with its sources, because transport errors hide the useful part (refused, TLS) there.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_unavailability_are_told_apart() {
        assert!(AdapterError::from_status(tonic::Status::failed_precondition("x")).is_refusal());
        assert!(AdapterError::from_status(tonic::Status::already_exists("x")).is_refusal());
        assert!(AdapterError::from_status(tonic::Status::out_of_range("x")).is_refusal());
        assert!(AdapterError::from_status(tonic::Status::unimplemented("x")).is_refusal());
        assert!(AdapterError::from_status(tonic::Status::aborted("x")).is_transient());
        assert!(AdapterError::from_status(tonic::Status::unavailable("x")).is_transient());
        assert!(AdapterError::from_status(tonic::Status::deadline_exceeded("x")).is_transient());
        assert!(AdapterError::from_status(tonic::Status::internal("x")).is_transient());
        // Too large: final. Too fast: the broker says when to come back, and the row waits.
        assert!(AdapterError::from_status(tonic::Status::resource_exhausted("x")).is_refusal());
        let mut slow_down = tonic::Status::resource_exhausted("x");
        slow_down
            .metadata_mut()
            .insert(PUSHBACK, "20".parse().unwrap());
        assert!(AdapterError::from_status(slow_down).is_transient());
    }

    #[test]
    fn a_refused_certificate_is_neither_a_refusal_nor_transient_and_says_why() {
        let revoked = AdapterError::from_status(tonic::Status::unauthenticated(
            "the certificate of mlup-russey (serial 01, SHA-256 ab) was revoked as of \
             2026-12-04T12:00:00Z: laptop stolen",
        ));
        assert!(!revoked.is_refusal() && !revoked.is_transient());
        assert!(
            revoked.to_string().starts_with(
                "this agency's certificate is refused: the certificate of mlup-russey"
            ),
            "{revoked}"
        );
        let expired = certificate_alert(
            "transport error: connection error: received fatal alert: CertificateExpired",
        )
        .unwrap();
        assert!(
            expired.starts_with("it has expired")
                && expired.ends_with("(TLS alert CertificateExpired)"),
            "{expired}"
        );
        // The broker's own certificate refused by the adapter is another matter: no alert received.
        assert!(certificate_alert("invalid peer certificate: Expired").is_none());
    }

    #[test]
    fn a_refusal_reads_code_then_message() {
        let error = AdapterError::from_status(tonic::Status::invalid_argument("kind: unknown"));
        assert_eq!(error.to_string(), "INVALID_ARGUMENT: kind: unknown");
    }
}
