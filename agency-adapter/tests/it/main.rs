//! The adapter's integration tests: the local store through its public API, and the binary's offline
//! behaviour (queueing, the outbox, JSON output) with a throwaway identity and no broker.

// Tests may panic on a broken fixture: that is the failure we want to see.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod cli;
mod helpers;
mod store;
