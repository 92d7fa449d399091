//! The shape of what agencies seal to each other (`spean.v1.Sealed`), checked without opening it:
//! the broker cannot open a box, but it can refuse one that is not a box, see whom each is for and
//! from, and keep only the boxes of the agencies a referral goes to.

use prost::Message;
use spean_proto::v1 as pb;

use crate::error::FieldError;
use crate::ids::AgencyId;

/// More boxes than any referral has readers: a broadcast goes to a province's providers, which
/// the directory keeps to a few dozen.
const MAX_BOXES: usize = 64;
/// X25519's public keys and HPKE's encapsulated keys, and SHA-256 key ids.
const KEY_BYTES: usize = 32;
/// ChaCha20-Poly1305's tag.
const TAG_BYTES: usize = 16;

/// Whom one box is for and from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    pub to: AgencyId,
    pub from: AgencyId,
}

/// Reads sealed bytes and checks every box's shape; `field` names them in errors. Returns whom
/// each box is for and from, in order.
pub fn parse(field: &'static str, bytes: &[u8]) -> Result<Vec<Addressing>, FieldError> {
    let sealed = pb::Sealed::decode(bytes).map_err(|_| {
        FieldError::new(
            field,
            "is not a sealed message (spean.v1.Sealed): cleartext is refused, seal it to its readers",
        )
    })?;
    if sealed.boxes.is_empty() {
        return Err(FieldError::new(field, "has no box: seal it to its readers"));
    }
    if sealed.boxes.len() > MAX_BOXES {
        return Err(FieldError::new(
            field,
            format!("has {} boxes; at most {MAX_BOXES}", sealed.boxes.len()),
        ));
    }
    sealed.boxes.iter().map(|b| addressing(field, b)).collect()
}

fn addressing(field: &'static str, b: &pb::SealedBox) -> Result<Addressing, FieldError> {
    let malformed =
        |what: &str, why: String| FieldError::new(field, format!("a box's {what} {why}"));
    for (what, bytes) in [
        ("to_key_id", &b.to_key_id),
        ("from_key_id", &b.from_key_id),
        ("enc", &b.enc),
    ] {
        if bytes.len() != KEY_BYTES {
            return Err(malformed(
                what,
                format!("is {} bytes, not {KEY_BYTES}", bytes.len()),
            ));
        }
    }
    if b.ciphertext.len() < TAG_BYTES {
        return Err(malformed(
            "ciphertext",
            format!("is {} bytes, shorter than its tag", b.ciphertext.len()),
        ));
    }
    let agency = |raw: &str| AgencyId::parse(field, raw).map_err(|e| malformed("agency", e.reason));
    Ok(Addressing {
        to: agency(&b.to_agency_id)?,
        from: agency(&b.from_agency_id)?,
    })
}

/// The same sealed message with only the boxes for which `keep` says yes, re-encoded. Bytes that
/// do not decode (checked before, so never) come back empty.
pub fn keep_boxes(bytes: &[u8], keep: impl Fn(&str) -> bool) -> Vec<u8> {
    let Ok(mut sealed) = pb::Sealed::decode(bytes) else {
        return Vec::new();
    };
    sealed.boxes.retain(|b| keep(&b.to_agency_id));
    sealed.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_box(to: &str, from: &str) -> pb::SealedBox {
        pb::SealedBox {
            to_agency_id: to.into(),
            to_key_id: vec![1; 32],
            from_agency_id: from.into(),
            from_key_id: vec![2; 32],
            enc: vec![3; 32],
            ciphertext: vec![4; 40],
        }
    }

    fn encoded(boxes: Vec<pb::SealedBox>) -> Vec<u8> {
        pb::Sealed { boxes }.encode_to_vec()
    }

    #[test]
    fn a_well_formed_message_says_whom_each_box_is_for_and_from() {
        let bytes = encoded(vec![
            sealed_box("mlup-russey", "calmette-sw"),
            sealed_box("calmette-sw", "calmette-sw"),
        ]);
        let boxes = parse("case_file", &bytes).unwrap();
        assert_eq!(boxes.len(), 2);
        assert_eq!(boxes[0].to.as_str(), "mlup-russey");
        assert_eq!(boxes[1].from.as_str(), "calmette-sw");
    }

    #[test]
    fn cleartext_and_malformed_boxes_are_refused_naming_the_field() {
        // A cleartext case file: protobuf of `CaseFile` whose first field is a name.
        let plain = b"\x0a\x10\x0a\x0esok sreyleak".to_vec();
        let err = parse("case_file", &plain).unwrap_err();
        assert_eq!(err.field, "case_file");
        assert!(parse("case_file", b"").is_err());
        assert!(parse("case_file", &[0xff, 0xff]).is_err());
        let mut short = sealed_box("mlup-russey", "ahc-swu");
        short.enc.pop();
        assert!(
            parse("case_file", &encoded(vec![short]))
                .unwrap_err()
                .reason
                .contains("enc")
        );
        let mut untagged = sealed_box("mlup-russey", "ahc-swu");
        untagged.ciphertext.truncate(15);
        assert!(parse("x", &encoded(vec![untagged])).is_err());
        assert!(parse("x", &encoded(vec![sealed_box("Not An Id!", "ahc-swu")])).is_err());
        let many = vec![sealed_box("mlup-russey", "ahc-swu"); MAX_BOXES + 1];
        assert!(parse("x", &encoded(many)).is_err());
    }

    #[test]
    fn keeping_boxes_drops_the_others_and_nothing_else() {
        let bytes = encoded(vec![
            sealed_box("mlup-russey", "ahc-swu"),
            sealed_box("dosvy-24", "ahc-swu"),
            sealed_box("ahc-swu", "ahc-swu"),
        ]);
        let kept = keep_boxes(&bytes, |to| to != "dosvy-24");
        let boxes = parse("case_file", &kept).unwrap();
        let to: Vec<_> = boxes.iter().map(|b| b.to.as_str()).collect();
        assert_eq!(to, ["mlup-russey", "ahc-swu"]);
        assert_eq!(
            pb::Sealed::decode(kept.as_slice()).unwrap().boxes[0],
            sealed_box("mlup-russey", "ahc-swu")
        );
    }
}
