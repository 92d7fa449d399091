//! The broker's integration tests: a real server on port 0 with real mutual TLS and a real SQLite
//! database per test. One binary, one module per capability.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod config;
mod delivery;
mod delivery_conformance;
mod feedback;
mod files;
mod helpers;
mod keys;
mod limits;
mod migrations;
mod sealed;
mod store_conformance;
mod submit;
