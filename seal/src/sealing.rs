//! Sealing one plaintext to several agencies, and opening one's own box.
//!
//! Every box binds the plaintext to its purpose (HPKE's `info`) and to where it belongs (the
//! AEAD's associated data): a case file to its sender and the sender's idempotency key, free text
//! to its referral. So the broker cannot move a box from one referral to another, or pass a note
//! off as a case file, without the reader noticing: the box would not open.

use hpke::{
    Deserializable, OpModeR, OpModeS, Serializable, aead::ChaCha20Poly1305, kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use rand_core::{OsRng, TryRngCore};
use spean_proto::v1 as pb;

use crate::keys::{PublicKey, SecretKey};

type Kem = X25519HkdfSha256;

/// What a sealed plaintext is, and what it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose<'a> {
    /// A referral's case file (an encoded `CaseFile`), bound to its sender and `client_ref`: the
    /// same on a redirect, whose adapter re-seals it to the new recipient.
    CaseFile {
        sender: &'a str,
        client_ref: &'a str,
    },
    /// The follow-up part a recipient hands to the agency it delegates visits to, bound to its
    /// referral (the delegate may hold no more of the referral than its id when it arrives).
    FollowUpPart { referral_id: &'a str },
    /// The free text of one feedback action on a referral (an encoded `FreeText`).
    FreeText { referral_id: &'a str },
}

impl Purpose<'_> {
    fn info(&self) -> &'static [u8] {
        match self {
            Self::CaseFile { .. } => b"spean/v1 case file",
            Self::FollowUpPart { .. } => b"spean/v1 follow-up part",
            Self::FreeText { .. } => b"spean/v1 free text",
        }
    }

    fn aad(&self) -> Vec<u8> {
        let parts: [&str; 2] = match *self {
            Self::CaseFile { sender, client_ref } => [sender, client_ref],
            Self::FollowUpPart { referral_id } | Self::FreeText { referral_id } => {
                [referral_id, ""]
            }
        };
        let mut aad = Vec::with_capacity(parts[0].len() + parts[1].len() + 1);
        aad.extend_from_slice(parts[0].as_bytes());
        aad.push(0);
        aad.extend_from_slice(parts[1].as_bytes());
        aad
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("nothing is sealed to {0}")]
    NoBox(String),
    #[error("the box for {agency} was sealed to a key this agency does not hold ({key})")]
    UnknownKey { agency: String, key: String },
    #[error(
        "the box from {from} does not open: it was not sealed by that agency's key for this {what}, or was changed"
    )]
    DoesNotOpen { from: String, what: &'static str },
    #[error("the box's {0} is malformed")]
    Malformed(&'static str),
    #[error("sealing failed: {0}")]
    Hpke(hpke::HpkeError),
}

/// Seals `plaintext` once for each of `to` (agency id and its public key), as `from`.
pub fn seal(
    plaintext: &[u8],
    purpose: Purpose<'_>,
    from: (&str, &SecretKey),
    to: &[(&str, &PublicKey)],
) -> Result<pb::Sealed, SealError> {
    let (from_agency, from_key) = from;
    let mode = OpModeS::<Kem>::Auth((from_key.hpke().clone(), from_key.public().hpke().clone()));
    let aad = purpose.aad();
    let mut rng = OsRng.unwrap_err();
    let boxes = to
        .iter()
        .map(|(agency, key)| {
            let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
                &mode,
                key.hpke(),
                purpose.info(),
                plaintext,
                &aad,
                &mut rng,
            )
            .map_err(SealError::Hpke)?;
            Ok(pb::SealedBox {
                to_agency_id: (*agency).to_owned(),
                to_key_id: key.id().to_vec(),
                from_agency_id: from_agency.to_owned(),
                from_key_id: from_key.id().to_vec(),
                enc: enc.to_bytes().to_vec(),
                ciphertext,
            })
        })
        .collect::<Result<_, SealError>>()?;
    Ok(pb::Sealed { boxes })
}

/// The box sealed to `agency`, if any: the last one, so a box added later (a re-seal) wins.
pub fn box_for<'s>(sealed: &'s pb::Sealed, agency: &str) -> Option<&'s pb::SealedBox> {
    sealed.boxes.iter().rev().find(|b| b.to_agency_id == agency)
}

/// Opens a box with the reader's key and the key of the agency that sealed it (named in the box by
/// `from_agency_id` and `from_key_id`; the caller looks it up and checks its binding).
pub fn open_box(
    sealed_box: &pb::SealedBox,
    mine: &SecretKey,
    from: &PublicKey,
    purpose: Purpose<'_>,
) -> Result<Vec<u8>, SealError> {
    if sealed_box.to_key_id != mine.id() {
        return Err(SealError::UnknownKey {
            agency: sealed_box.to_agency_id.clone(),
            key: crate::keys::short(&sealed_box.to_key_id),
        });
    }
    if sealed_box.from_key_id != from.id() {
        return Err(SealError::Malformed("from_key_id"));
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed_box.enc)
        .map_err(|_| SealError::Malformed("enc"))?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Auth(from.hpke().clone()),
        mine.hpke(),
        &enc,
        purpose.info(),
        &sealed_box.ciphertext,
        &purpose.aad(),
    )
    .map_err(|_| SealError::DoesNotOpen {
        from: sealed_box.from_agency_id.clone(),
        what: match purpose {
            Purpose::CaseFile { .. } => "case file",
            Purpose::FollowUpPart { .. } => "follow-up part",
            Purpose::FreeText { .. } => "referral's free text",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KHMER: &str = "សុខ ស្រីល័ក្ខ";

    fn case_file<'a>() -> Purpose<'a> {
        Purpose::CaseFile {
            sender: "calmette-sw",
            client_ref: "ref-1",
        }
    }

    #[test]
    fn each_reader_opens_its_own_box_and_the_text_survives_byte_for_byte() {
        let sender = SecretKey::generate();
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        let sealed = seal(
            KHMER.as_bytes(),
            case_file(),
            ("calmette-sw", &sender),
            &[("mlup-russey", a.public()), ("dosvy-17", b.public())],
        )
        .unwrap();
        assert_eq!(sealed.boxes.len(), 2);
        for (agency, key) in [("mlup-russey", &a), ("dosvy-17", &b)] {
            let opened = open_box(
                box_for(&sealed, agency).unwrap(),
                key,
                sender.public(),
                case_file(),
            )
            .unwrap();
            assert_eq!(opened, KHMER.as_bytes());
        }
        for b in &sealed.boxes {
            assert!(
                !b.ciphertext
                    .windows(KHMER.len())
                    .any(|w| w == KHMER.as_bytes())
            );
        }
    }

    #[test]
    fn a_box_does_not_open_for_another_purpose_referral_sender_or_key() {
        let sender = SecretKey::generate();
        let reader = SecretKey::generate();
        let text = Purpose::FreeText { referral_id: "r-1" };
        let sealed = seal(b"note", text, ("a", &sender), &[("b", reader.public())]).unwrap();
        let one = &sealed.boxes[0];
        assert!(open_box(one, &reader, sender.public(), text).is_ok());
        let other_referral = Purpose::FreeText { referral_id: "r-2" };
        assert!(matches!(
            open_box(one, &reader, sender.public(), other_referral),
            Err(SealError::DoesNotOpen { .. })
        ));
        assert!(open_box(one, &reader, sender.public(), case_file()).is_err());
        // Someone else claiming to have sealed it (the broker cannot forge a sender).
        let forger = SecretKey::generate();
        let mut forged = one.clone();
        forged.from_key_id = forger.id().to_vec();
        assert!(open_box(&forged, &reader, forger.public(), text).is_err());
        // A key the reader does not hold.
        assert!(matches!(
            open_box(one, &SecretKey::generate(), sender.public(), text),
            Err(SealError::UnknownKey { .. })
        ));
        // A changed ciphertext.
        let mut changed = one.clone();
        changed.ciphertext[0] ^= 1;
        assert!(open_box(&changed, &reader, sender.public(), text).is_err());
    }

    #[test]
    fn the_last_box_for_an_agency_is_the_one_it_opens() {
        let sender = SecretKey::generate();
        let reader = SecretKey::generate();
        let mut sealed = seal(
            b"old",
            case_file(),
            ("a", &sender),
            &[("b", reader.public())],
        )
        .unwrap();
        let newer = seal(
            b"new",
            case_file(),
            ("a", &sender),
            &[("b", reader.public())],
        )
        .unwrap();
        sealed.boxes.extend(newer.boxes);
        let opened = open_box(
            box_for(&sealed, "b").unwrap(),
            &reader,
            sender.public(),
            case_file(),
        );
        assert_eq!(opened.unwrap(), b"new");
        assert!(box_for(&sealed, "c").is_none());
    }
}
