//! # spean-testkit
//! What the broker's tests, the end-to-end tests and the benchmark share, written once: story 1's
//! referral, and the harness that starts the real `spean-broker` and `spean-adapter` binaries as
//! processes. A dev-only crate (the benchmark, a binary that is never shipped, is its one normal
//! dependent). It does not depend on `spean-broker`, so the broker's unit tests can use it.
//!
//! Everything that starts or reaches a process returns a [`Error`] rather than panicking: the
//! benchmark reports a failed run and goes on, where a test wrapper unwraps.
//!
//! # Layout
//! - [`story`]: story 1 of `shared/fixtures/scenarios.md` as the `SubmitRequest` a hospital sends.
//! - [`sealed`]: sealing and opening with per-agency test keys, for tests that speak gRPC themselves.
//! - [`binary`](mod@binary): finding the workspace's binaries beside the running test or benchmark.
//! - [`broker`]: [`BrokerProcess`], `spean-broker serve` on a data folder, once it listens.
//! - [`tls`]: a gRPC endpoint presenting an agency's certificate from its identity folder.
//! - [`adapter`]: [`AdapterProcess`], one agency's `spean-adapter` commands and daemon.
//! - [`wait`]: [`Patience`] and [`eventually`], bounded polling for effects across processes.
//! - [`log`]: reading the processes' text logs.
//! - [`browser`]: headless Chromium over the DevTools protocol, for the page tests.
//! - [`error`]: [`Error`], why a process could not be started or reached.

#![forbid(unsafe_code)]

pub mod adapter;
pub mod binary;
pub mod broker;
pub mod browser;
pub mod error;
pub mod log;
#[allow(clippy::expect_used)] // Test helpers: a key that does not seal is a broken test.
pub mod sealed;
pub mod story;
pub mod tls;
pub mod wait;

pub use adapter::AdapterProcess;
pub use binary::binary;
pub use broker::BrokerProcess;
pub use error::Error;
pub use story::{
    CHILD_PROTECTION_NARRATIVE, KHMER_NAME, LATIN_NAME, case_file, child_protection,
    guardian_consent, lama, lama_in_clear, placement, placement_in_clear,
};
pub use tls::agency_endpoint;
pub use wait::{PATIENCE, Patience, eventually};
