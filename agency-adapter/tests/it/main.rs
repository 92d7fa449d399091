//! The adapter's integration tests: the local store through its public API, the binary's offline
//! behaviour (queueing, the outbox, JSON output) with a throwaway identity and no broker, and the
//! binary against a real `spean-broker` process (feedback commands, reused keys, the subject's
//! province from the directory, the daemon and its fault switch), and the views of notified
//! parties and delegates with their follow-up schedule, and broadcasts with their candidates, and
//! the protection of local data (permissions, sealing at rest, backup and restore, retention).

// Tests may panic on a broken fixture: that is the failure we want to see.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod api;
mod audit;
mod broadcast;
mod cli;
mod daemon;
mod feedback;
mod files;
mod follow_up;
mod helpers;
mod idempotency;
mod local_data;
mod network;
mod pages;
mod redirect;
mod send;
mod store;
mod trust;
mod webhooks;
