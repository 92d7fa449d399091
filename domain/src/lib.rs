//! # spean-domain
//! What Spean means by a referral, shared by the broker and the agency adapter: values that parse,
//! the state machine, and who may see what. No I/O and no wire types: the crate depends on no
//! transport, store or protobuf library, so the compiler refuses such an import here.
//!
//! # Layout
//! - [`audit`]: the hash-chained audit log: its entries, their encoding and [`audit::verify`].
//! - [`error`]: [`FieldError`], a value that failed to parse, naming its field.
//! - [`figures`]: the network's figures for a period (counts split by sex, times to answer), pure
//!   computation over referrals and their histories.
//! - [`ids`]: identifiers that parse (`AgencyId`, `ReferralId`, `ClientRef`, `ProvinceCode`, …).
//! - [`referral`]: what a sender submits, what is stored and what happened; [`referral::state`] is
//!   the state machine, written once; [`referral::view`] is the one rule for who sees the case file.

#![forbid(unsafe_code)]

pub mod audit;
pub mod error;
pub mod figures;
pub mod ids;
pub mod referral;

pub use error::FieldError;
