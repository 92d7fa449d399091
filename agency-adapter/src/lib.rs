//! # Layout
//! The agency side of Spean, in the order data flows through it:
//!
//! - [`config`]: the typed settings (defaults, TOML file, `SPEAN_ADAPTER_*` env vars, flags).
//! - [`identity`]: the agency's certificate folder, its agency id, and the TLS identity it presents.
//! - [`referral`]: the adapter's vocabulary with no I/O: idempotency keys (checked by the network's
//!   rules in `spean_domain::ids`, as the broker checks them), the names of states and kinds, and who
//!   must act next.
//! - [`broadcast`]: a broadcast read from its envelope and history, with no I/O: its candidates,
//!   how each answered, which won, and whether the sender was told that none accepted.
//! - [`case_file`]: the JSON form of the case file, converted to and from the `CaseFile` proto, and
//!   the follow-up part of it that a recipient hands to the agency it delegates visits to.
//! - [`follow_up`]: the follow-up schedule and its delegation, read from a referral's history: who
//!   makes the visits, which were made or missed, and whether the next is upcoming, due or overdue.
//! - [`at_rest`]: the store's columns that hold case data or secrets, sealed under a key kept apart
//!   from the store (a key file or a passphrase).
//! - [`private_files`]: files that can hold case data are the adapter's user's alone (umask, 0600).
//! - [`store`]: the local SQLite copy (referrals, events, outbox, deliveries); every write is one
//!   transaction and every delivery write is idempotent.
//! - [`retention`]: case files of referrals closed longer than the set period, purged; counts kept.
//! - [`backup`]: `backup` and `restore` of the store while the daemon runs.
//! - [`audit`]: the audit trail: every read of a case file appended to a hash-chained log, and the
//!   newest head of the broker's log that a delivery carried.
//! - [`outbox`]: outgoing requests, written locally first, then sent to the broker with their own key.
//! - [`sealing`]: the agency's sealing keys; what it sends sealed to its readers, and what it
//!   receives opened before it is stored.
//! - [`broker`]: the tonic channel to the broker (mutual TLS, timeouts).
//! - [`directory`]: the provinces a recipient serves, read from the broker's directory.
//! - [`coordinator`]: the calls a coordinator makes (overdue referrals, the network's figures), and
//!   an agency's own figures.
//! - [`figures`]: figures as agencies report them: counts with women and girls, human durations,
//!   tables, CSV and JSON.
//! - [`delivery`]: the `Subscribe` stream: store each delivery, then confirm it.
//! - [`backoff`]: exponential backoff with jitter for reconnects and retries.
//! - [`webhooks`]: endpoints the agency's own system registers, the signed messages queued for
//!   them with what they announce, and the dispatcher that posts them in order per referral.
//! - [`link`]: whether the broker can be reached, as the daemon last found it (for the API's health,
//!   and so that commands queue at once while it cannot).
//! - [`api_keys`]: the keys of the local HTTP API, stored hashed.
//! - [`api`]: the local HTTP API (axum, OpenAPI from utoipa) over the same code as the command line.
//! - [`daemon`]: `run`: delivery, outbox relay, webhook dispatch and the API until shutdown.
//! - [`cli`]: the command line: parse, dispatch, print tables or JSON.
//! - [`telemetry`]: the tracing subscriber, built once, writing to stderr.
//! - [`error`]: the one error type, and how a broker status becomes "retry later" or "refused".

pub mod api;
pub mod api_keys;
pub mod at_rest;
pub mod audit;
pub mod backoff;
pub mod backup;
pub mod broadcast;
pub mod broker;
pub mod case_file;
pub mod cli;
pub mod config;
pub mod consent;
pub mod coordinator;
pub mod daemon;
pub mod delivery;
pub mod directory;
pub mod error;
pub mod figures;
pub mod follow_up;
pub mod identity;
pub mod link;
pub mod outbox;
pub mod private_files;
pub mod referral;
pub mod retention;
pub mod sealing;
pub mod staff;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod webhooks;

pub use error::AdapterError;
