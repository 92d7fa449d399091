//! End-to-end tests: the real `spean-broker` and `spean-adapter` binaries, started as processes,
//! talking over real mutual TLS, killed with SIGKILL and restarted.
//!
//! The binaries are the ones cargo builds beside this test (`cargo test --workspace` builds them).

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adapter_crash;
mod audit;
mod broker_cli;
mod broker_crash;
mod certificates;
mod cluster;
mod consent;
mod escalation;
mod fairness;
mod faults;
mod follow_ups;
mod helpers;
mod linked_clients;
mod notified;
mod offline;
mod pages;
mod partitions;
mod placement;
mod production;
mod queues;
mod sealed;
mod story_lama;
mod traffic;
mod visibility;
