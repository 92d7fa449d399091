//! # spean-broker
//! The central service of Spean: it accepts referrals from agencies, routes them through the
//! directory, tracks each one until its loop closes, and delivers referrals and feedback to agencies'
//! adapters at least once.
//!
//! # Layout
//! In the order a request flows through them:
//! - [`config`]: the one typed configuration (defaults → file → `SPEAN_BROKER_*`).
//! - [`telemetry`]: logging, set up once.
//! - [`startup`]: `Broker::build` and `run_until_stopped`.
//! - [`pki`]: the network CA; certificates identify agencies.
//! - [`gateway`]: the tonic services, mutual TLS, proto ↔ domain conversion.
//! - [`ids`], [`referral`]: domain values that parse, the state machine ([`referral::state`]) and
//!   the use cases ([`referral::workflow`]). No I/O, no wire types.
//! - [`directory`]: agencies, services, provinces; resolving a service in a province.
//! - [`store`]: the storage contract, its SQLite (embedded) and PostgreSQL (production) implementations.
//! - [`delivery`]: handing queued deliveries to connected adapters, from the mailbox or RabbitMQ.
//! - [`error`]: one error type per layer, mapped to `tonic::Status` in one place.

pub mod config;
pub mod delivery;
pub mod directory;
pub mod error;
pub mod gateway;
pub mod pki;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod wire;
pub mod workflow;

pub use spean_domain::{ids, referral};

pub use config::Config;
pub use startup::Broker;
