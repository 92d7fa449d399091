//! # spean-broker
//! The central service of Spean: it accepts referrals from agencies, routes them through the
//! directory, tracks each one until its loop closes, and delivers referrals and feedback to agencies'
//! adapters at least once.
//!
//! # Layout
//! One straight stack, each layer using only those below it (checked by a test in `layering.rs`):
//! main → startup → gateway → workflow → delivery → store → wire, directory → referral, ids.
//! In the order a request flows through them:
//! - [`config`]: the one typed configuration (defaults → file → `SPEAN_BROKER_*`).
//! - [`telemetry`]: logging, set up once.
//! - [`startup`]: `Broker::build` and `run_until_stopped`; joins the background loops on shutdown.
//! - [`pki`]: the network CA; certificates identify agencies.
//! - [`revocation`]: revoked certificates: what names one, from when, and the set every call is
//!   checked against.
//! - [`gateway`]: the tonic services behind mutual TLS; the caller is its certificate.
//! - [`wire`]: the one codec between proto and domain, for the gateway and delivery alike.
//! - [`workflow`]: the use cases: submit, read, act, confirm a delivery.
//! - [`delivery`]: getting deliveries to connected adapters at least once, from the mailbox or
//!   RabbitMQ; what a delivery carries is made when it is sent ([`delivery::contents`]).
//! - [`store`]: the storage contract, its SQLite (embedded) and PostgreSQL (production) backends.
//! - [`directory`]: agencies, services, provinces; resolving a service in a province.
//! - [`ids`], [`referral`]: the domain, from the `spean-domain` crate: values that parse, the state
//!   machine, and who may see what ([`referral::view`]). No I/O, no wire types.
//! - [`error`]: one error type per layer, mapped to `tonic::Status` in one place.

pub mod config;
pub mod delivery;
pub mod directory;
pub mod error;
pub mod gateway;
pub mod pki;
pub mod revocation;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod wire;
pub mod workflow;

pub use spean_domain::{ids, referral};

#[cfg(test)]
mod layering;

pub use config::Config;
pub use startup::Broker;
