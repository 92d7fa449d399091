//! # Layout
//! The agency side of Spean, in the order data flows through it:
//!
//! - [`config`]: the typed settings (defaults, TOML file, `SPEAN_ADAPTER_*` env vars, flags).
//! - [`identity`]: the agency's certificate folder, its agency id, and the TLS identity it presents.
//! - [`referral`]: the adapter's vocabulary with no I/O: idempotency keys (checked by the network's
//!   rules in `spean_domain::ids`, as the broker checks them), the names of states and kinds, and who
//!   must act next.
//! - [`case_file`]: the JSON form of the case file, converted to and from the `CaseFile` proto.
//! - [`store`]: the local SQLite copy (referrals, events, outbox, deliveries); every write is one
//!   transaction and every delivery write is idempotent.
//! - [`outbox`]: outgoing requests, written locally first, then sent to the broker with their own key.
//! - [`broker`]: the tonic channel to the broker (mutual TLS, timeouts).
//! - [`directory`]: the provinces a recipient serves, read from the broker's directory.
//! - [`delivery`]: the `Subscribe` stream: store each delivery, then confirm it.
//! - [`backoff`]: exponential backoff with jitter for reconnects and retries.
//! - [`daemon`]: `run`: delivery and outbox relay until shutdown.
//! - [`cli`]: the command line: parse, dispatch, print tables or JSON.
//! - [`telemetry`]: the tracing subscriber, built once, writing to stderr.
//! - [`error`]: the one error type, and how a broker status becomes "retry later" or "refused".

pub mod backoff;
pub mod broker;
pub mod case_file;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod directory;
pub mod error;
pub mod identity;
pub mod outbox;
pub mod referral;
pub mod store;
pub mod telemetry;

pub use error::AdapterError;
