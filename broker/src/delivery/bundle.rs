//! Several deliveries for one agency in one RabbitMQ message.
//!
//! Under load, a batch the relay leases from the outbox holds many rows for the same agency.
//! Published one message each, every delivery costs RabbitMQ a write to the quorum queue's log, a
//! publisher confirm, a delivery to the consumer and an ack; a bundle pays those once for all of
//! its deliveries. On a quiet network a bundle holds one delivery, and nothing waits to fill one.
//!
//! A message's AMQP `type` property says which form it has: [`BUNDLE_TYPE`] for a
//! [`DeliveryBundle`], none for a single `spean.v1.Delivery`, as a broker that does not bundle
//! publishes it. Both are read, so that an upgrade leaves no such message behind in the queues.
//!
//! A bundle is acked once every delivery in it is settled ([`BundleAck`]). Until then a lost
//! connection returns the whole bundle to its queue, and deliveries the adapter already confirmed
//! reach it again: at least once to the adapter, whose store keeps one copy of each, so exactly
//! once to its user. For the same reason a bundle counts against the queue's delivery limit as
//! one message, and is dead-lettered (and re-driven) whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::Acker;
use lapin::options::BasicAckOptions;
use prost::Message;
use spean_proto::v1 as pb;

use super::DeliveryRef;
use crate::ids::{AgencyId, ReferralId};

/// The AMQP `type` of a message holding a [`DeliveryBundle`].
pub const BUNDLE_TYPE: &str = "spean.v1.DeliveryBundle";

/// A bundle closes at this many bytes of deliveries, whatever the count allows: the largest case
/// file allowed by default. A consumer's prefetch counts messages, so this bounds what one
/// delivery session may hold in memory to about prefetch × one large delivery, as if each message
/// carried one delivery; a single larger delivery still goes, alone.
const MAX_BUNDLE_BYTES: usize = 256 * 1024;

/// The body of a bundled message: deliveries for one agency, in the order they were queued. Kept
/// out of the public protos because only brokers write and read it; its field is a `Delivery`
/// exactly as adapters receive it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeliveryBundle {
    #[prost(message, repeated, tag = "1")]
    pub deliveries: Vec<pb::Delivery>,
}

/// The same wire form as [`DeliveryBundle`] (field 1, length-delimited, repeated), written from
/// deliveries already encoded: a carried delivery goes out without being decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedBundle {
    #[prost(bytes = "vec", repeated, tag = "1")]
    deliveries: Vec<Vec<u8>>,
}

/// One message to publish: its agency, its body, and what it carries (the relay's delivery ids,
/// whose outbox rows are deleted once RabbitMQ confirms it).
#[derive(Debug)]
pub struct Outgoing<K = uuid::Uuid> {
    pub agency: AgencyId,
    pub ids: Vec<K>,
    pub body: Vec<u8>,
}

/// Groups a batch's deliveries (each an encoded `spean.v1.Delivery`), already in outbox order,
/// into messages: one per agency and at most `max` deliveries (and about [`MAX_BUNDLE_BYTES`])
/// each. Each agency's deliveries keep their order, within a message and from one message to the
/// next. `max` of 1 publishes every delivery alone, still as a bundle.
pub fn bundle<K>(deliveries: Vec<(AgencyId, K, Vec<u8>)>, max: usize) -> Vec<Outgoing<K>> {
    let max = max.max(1);
    // Agencies in order of their first delivery in the batch; a batch holds few agencies.
    let mut open: Vec<(AgencyId, Vec<K>, EncodedBundle, usize)> = Vec::new();
    let mut done = Vec::new();
    for (agency, id, delivery) in deliveries {
        let size = delivery.len();
        let slot = match open.iter().position(|(a, ..)| *a == agency) {
            Some(i) => i,
            None => {
                open.push((agency.clone(), Vec::new(), EncodedBundle::default(), 0));
                open.len() - 1
            }
        };
        let (_, ids, bundle, bytes) = &mut open[slot];
        if !ids.is_empty() && (ids.len() >= max || *bytes + size > MAX_BUNDLE_BYTES) {
            done.push(Outgoing {
                agency,
                ids: std::mem::take(ids),
                body: std::mem::take(bundle).encode_to_vec(),
            });
            *bytes = 0;
        }
        ids.push(id);
        bundle.deliveries.push(delivery);
        *bytes += size;
    }
    done.extend(open.into_iter().map(|(agency, ids, bundle, _)| Outgoing {
        agency,
        ids,
        body: bundle.encode_to_vec(),
    }));
    done
}

/// The deliveries a message carries, each with what it refers to. `None` if the message is not
/// something Spean wrote: an unknown `type`, a body that does not decode, an empty bundle, or any
/// delivery in it without a valid delivery id, referral id or event id. Such a message is
/// dead-lettered whole, so nothing in it is lost without trace.
pub fn unbundle(
    message_type: Option<&str>,
    body: &[u8],
) -> Option<Vec<(pb::Delivery, DeliveryRef)>> {
    let deliveries = match message_type {
        Some(BUNDLE_TYPE) => DeliveryBundle::decode(body).ok()?.deliveries,
        None => vec![pb::Delivery::decode(body).ok()?],
        Some(_) => return None,
    };
    if deliveries.is_empty() {
        return None;
    }
    deliveries
        .into_iter()
        .map(|d| reference(&d).map(|r| (d, r)))
        .collect()
}

/// What a delivery refers to, or `None` for one Spean did not write.
fn reference(message: &pb::Delivery) -> Option<DeliveryRef> {
    let delivery_id = uuid::Uuid::parse_str(&message.delivery_id).ok()?;
    let (referral, event) = match message.payload.as_ref()? {
        pb::delivery::Payload::Referral(r) => (r.envelope.as_ref()?.referral_id.as_str(), None),
        pb::delivery::Payload::Feedback(e) => (
            e.referral_id.as_str(),
            Some(uuid::Uuid::parse_str(&e.event_id).ok()?),
        ),
    };
    Some(DeliveryRef {
        delivery_id,
        referral_id: ReferralId::parse("referral_id", referral).ok()?,
        event_id: event,
    })
}

/// One received message's ack, shared by the deliveries it carries: the message is acked when the
/// last of them is settled.
pub struct BundleAck {
    acker: Acker,
    unsettled: AtomicUsize,
}

impl BundleAck {
    pub fn new(acker: Acker, deliveries: usize) -> Arc<Self> {
        Arc::new(Self {
            acker,
            unsettled: AtomicUsize::new(deliveries),
        })
    }

    /// Settles one of the message's deliveries; acks the message if it was the last.
    pub async fn settle_one(&self) -> Result<(), lapin::Error> {
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.acker.ack(BasicAckOptions::default()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(id: &str) -> AgencyId {
        AgencyId::parse("agency", id).unwrap()
    }

    fn referral(n: u32, note: &str) -> pb::Delivery {
        pb::Delivery {
            delivery_id: uuid::Uuid::now_v7().to_string(),
            payload: Some(pb::delivery::Payload::Referral(pb::Referral {
                envelope: Some(pb::Envelope {
                    referral_id: uuid::Uuid::now_v7().to_string(),
                    client_ref: format!("ref-{n}"),
                    ..Default::default()
                }),
                case_file: note.as_bytes().to_vec(),
                ..Default::default()
            })),
            audit_head: None,
        }
    }

    fn encoded(batch: Vec<(AgencyId, i64, pb::Delivery)>) -> Vec<(AgencyId, i64, Vec<u8>)> {
        batch
            .into_iter()
            .map(|(a, s, d)| (a, s, d.encode_to_vec()))
            .collect()
    }

    fn contents(out: &Outgoing<i64>) -> Vec<pb::Delivery> {
        unbundle(Some(BUNDLE_TYPE), &out.body)
            .unwrap()
            .into_iter()
            .map(|(d, _)| d)
            .collect()
    }

    #[test]
    fn each_agency_gets_its_deliveries_in_order_in_bundles_of_at_most_max() {
        let (a, b) = (agency("mlup-russey"), agency("friends-international"));
        let batch: Vec<_> = (0..7)
            .map(|n| {
                let to = if n % 3 == 0 { &b } else { &a };
                (to.clone(), i64::from(n), referral(n, "សុខា"))
            })
            .collect();
        let sent = batch.clone();
        let out = bundle(encoded(batch), 2);
        let per_agency = |who: &AgencyId| -> Vec<i64> {
            out.iter()
                .filter(|o| o.agency == *who)
                .flat_map(|o| o.ids.clone())
                .collect()
        };
        assert_eq!(per_agency(&a), vec![1, 2, 4, 5]);
        assert_eq!(per_agency(&b), vec![0, 3, 6]);
        assert!(out.iter().all(|o| !o.ids.is_empty() && o.ids.len() <= 2));
        for o in &out {
            let expected: Vec<_> = o
                .ids
                .iter()
                .map(|s| sent.iter().find(|(_, seq, _)| seq == s).unwrap().2.clone())
                .collect();
            assert_eq!(
                contents(o),
                expected,
                "Khmer text and order survive the bundle"
            );
        }
    }

    #[test]
    fn a_bundle_closes_at_its_byte_limit_and_a_large_delivery_goes_alone() {
        let a = agency("mlup-russey");
        // Each about a third of the limit (ក is three bytes): two fit, a third does not.
        let big = "ក".repeat(MAX_BUNDLE_BYTES / 3 / 3);
        let batch = (0..4)
            .map(|n| (a.clone(), i64::from(n), referral(n, &big)))
            .collect();
        let out = bundle(encoded(batch), 64);
        let sizes: Vec<usize> = out.iter().map(|o| o.ids.len()).collect();
        assert_eq!(sizes, vec![2, 2]);
        let huge = "ក".repeat(MAX_BUNDLE_BYTES);
        let out = bundle(encoded(vec![(a.clone(), 1, referral(1, &huge))]), 64);
        assert_eq!(out.len(), 1);
        assert_eq!(contents(&out[0]).len(), 1);
    }

    #[test]
    fn a_carried_delivery_with_its_id_is_the_delivery_encoded_whole() {
        use crate::referral::{DeliveryContent, Event, EventDetails, EventKind, FreeText, State};
        use crate::wire;
        let event = Event {
            id: uuid::Uuid::now_v7(),
            referral_id: ReferralId::new(),
            kind: EventKind::Acknowledged,
            actor: agency("mlup-russey"),
            actor_person: FreeText::parse("actor_person", "សុខា", 200).unwrap(),
            at: time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap(),
            note: FreeText::parse("note", "បានទទួល — received", 200).unwrap(),
            state_after: State::Acknowledged,
            details: EventDetails::None,
            request_id: None,
            next_visit: None,
            sealed_text: Default::default(),
        };
        let delivery_id = uuid::Uuid::now_v7();
        let whole = wire::delivery(delivery_id, DeliveryContent::Event(Box::new(event.clone())));
        let body = wire::carried(DeliveryContent::Event(Box::new(event)));
        assert!(
            !String::from_utf8_lossy(&body).contains(&delivery_id.to_string()),
            "a carried delivery has no id of its own"
        );
        let joined = wire::with_id(delivery_id, &body);
        assert_eq!(joined, whole.encode_to_vec());
        let out = bundle(vec![(agency("mlup-russey"), 7, joined)], 64);
        let read = unbundle(Some(BUNDLE_TYPE), &out[0].body).unwrap();
        assert_eq!(read[0].0, whole);
        assert_eq!(read[0].1.delivery_id, delivery_id);
    }

    #[test]
    fn a_single_delivery_without_a_type_is_still_read() {
        let d = referral(1, "old form");
        let read = unbundle(None, &d.encode_to_vec()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, d);
        assert_eq!(read[0].1.delivery_id.to_string(), d.delivery_id);
    }

    #[test]
    fn anything_spean_did_not_write_is_refused_whole() {
        let good = referral(1, "good");
        let mut bad = referral(2, "bad");
        bad.delivery_id = "not-a-uuid".into();
        let mixed = DeliveryBundle {
            deliveries: vec![good.clone(), bad],
        }
        .encode_to_vec();
        assert!(unbundle(Some(BUNDLE_TYPE), &mixed).is_none());
        assert!(
            unbundle(
                Some(BUNDLE_TYPE),
                &DeliveryBundle::default().encode_to_vec()
            )
            .is_none()
        );
        assert!(unbundle(Some(BUNDLE_TYPE), b"\xff\xfe not a bundle").is_none());
        assert!(unbundle(Some("text/plain"), &good.encode_to_vec()).is_none());
        assert!(unbundle(None, b"\xff\xfe not a delivery").is_none());
    }
}
