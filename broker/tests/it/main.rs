//! The broker's integration tests: a real server on port 0 with real mutual TLS and a real SQLite
//! database per test. One binary, one module per capability.

mod auth;
mod delivery;
mod feedback;
mod helpers;
mod submit;
