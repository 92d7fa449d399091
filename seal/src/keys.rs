//! An agency's key pairs for sealing. The id of a key is the SHA-256 of its public key: boxes name
//! the key they were sealed to, so an agency that rotated its key still opens what was sealed to
//! the old one.

use std::fmt;

use hpke::{Deserializable, Kem as _, Serializable, kem::X25519HkdfSha256};
use rand_core::{OsRng, TryRngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// SHA-256 of a public key's 32 bytes.
pub type KeyId = [u8; 32];

type Kem = X25519HkdfSha256;

/// A private key and its public half. `Debug` shows only the id.
#[derive(Clone)]
pub struct SecretKey {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", short(&self.public.id))
    }
}

impl SecretKey {
    /// A new key pair from the operating system's random source.
    pub fn generate() -> Self {
        let (private, public) = Kem::gen_keypair(&mut OsRng.unwrap_err());
        Self::from_parts(private, public)
    }

    /// A key pair derived from seed bytes (at least 32 bytes of entropy). For tests and
    /// benchmarks that need the same keys in several processes; never for an agency's real key.
    pub fn derive(seed: &[u8]) -> Self {
        let (private, public) = Kem::derive_keypair(seed);
        Self::from_parts(private, public)
    }

    /// Reads a private key as [`SecretKey::to_bytes`] wrote it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, hpke::HpkeError> {
        let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)?;
        let public = Kem::sk_to_pk(&private);
        Ok(Self::from_parts(private, public))
    }

    fn from_parts(
        private: <Kem as hpke::Kem>::PrivateKey,
        public: <Kem as hpke::Kem>::PublicKey,
    ) -> Self {
        Self {
            private,
            public: PublicKey::from_hpke(public),
        }
    }

    /// The private key's 32 bytes, wiped from memory when dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.private.to_bytes().to_vec())
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn id(&self) -> KeyId {
        self.public.id
    }

    pub(crate) fn hpke(&self) -> &<Kem as hpke::Kem>::PrivateKey {
        &self.private
    }
}

/// A public key and its id.
#[derive(Clone)]
pub struct PublicKey {
    key: <Kem as hpke::Kem>::PublicKey,
    bytes: [u8; 32],
    id: KeyId,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", short(&self.id))
    }
}

impl PublicKey {
    /// Reads a public key's 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, hpke::HpkeError> {
        Ok(Self::from_hpke(<Kem as hpke::Kem>::PublicKey::from_bytes(
            bytes,
        )?))
    }

    fn from_hpke(key: <Kem as hpke::Kem>::PublicKey) -> Self {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&key.to_bytes());
        Self {
            id: key_id(&bytes),
            key,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn hpke(&self) -> &<Kem as hpke::Kem>::PublicKey {
        &self.key
    }
}

/// The id of a public key given as bytes.
pub fn key_id(public_key: &[u8]) -> KeyId {
    Sha256::digest(public_key).into()
}

/// The first bytes of an id in hex, as logs and `Debug` show it.
pub fn short(id: &[u8]) -> String {
    id.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_key_reads_back_with_the_same_public_key_and_id() {
        let key = SecretKey::generate();
        let again = SecretKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(again.id(), key_id(key.public().as_bytes()));
        assert_ne!(SecretKey::generate().id(), key.id());
    }

    #[test]
    fn derived_keys_are_the_same_for_the_same_seed_only() {
        let seed = [7u8; 32];
        assert_eq!(SecretKey::derive(&seed).id(), SecretKey::derive(&seed).id());
        assert_ne!(
            SecretKey::derive(&seed).id(),
            SecretKey::derive(&[8u8; 32]).id()
        );
    }

    #[test]
    fn debug_never_prints_key_material() {
        let key = SecretKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&format!("{:?}", key.to_bytes().as_slice())));
        assert!(shown.len() < 40, "{shown}");
    }
}
