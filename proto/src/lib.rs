//! # spean-proto
//! The wire contract of Spean, package `spean.v1`, generated at build time from `proto/spean/v1/*.proto`
//! by `protox` and `tonic-prost-build` (no system `protoc`).
//!
//! The split that matters: [`v1::Envelope`] is what the broker reads to route; the case file travels as
//! `bytes` that only the two agencies decode into [`v1::CaseFile`].

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("spean.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("spean_descriptor");
