//! Sealing what only agencies read: case files and the free text of feedback.
//!
//! The writing agency's adapter seals a plaintext once per reader with HPKE (RFC 9180) in Auth
//! mode, DHKEM(X25519, HKDF-SHA256) + HKDF-SHA256 + ChaCha20-Poly1305: each box opens only with the
//! reader's private key, and only if it was sealed with the writer's private key, so the broker
//! that stores and forwards the boxes can neither read them nor forge one in an agency's name.
//!
//! # Layout
//! - [`keys`]: an agency's X25519 key pairs and their ids (SHA-256 of the public key).
//! - [`sealing`]: sealing a plaintext to several agencies, and opening one's own box; what each
//!   purpose binds a box to (the `info` and `aad` of HPKE).
//! - [`binding`]: an agency's public key bound to its TLS certificate by a signature, as the
//!   directory publishes it, and the check every other agency makes before sealing to it.

pub mod binding;
pub mod keys;
pub mod sealing;

pub use binding::{BindingError, check_signature, sign_binding, verify_binding};
pub use keys::{KeyId, PublicKey, SecretKey};
pub use sealing::{Purpose, SealError, box_for, open_box, seal};
