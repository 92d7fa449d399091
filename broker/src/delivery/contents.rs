//! What a delivery carries, made when it is sent: the one place where deliveries meet the rule of
//! who sees what.
//!
//! The mailbox backend loads every delivery here. The RabbitMQ backend sends a message as it was
//! published, except a referral that was redirected since (through any broker of the deployment):
//! its former recipient must not get the case file, so that delivery is made again here. An
//! event published to RabbitMQ was made for each party when it was written (see
//! `workflow::change_for`); one loaded here is made for its party as the referral stands now.

use std::collections::HashMap;

use crate::error::StoreError;
use crate::ids::{AgencyId, ReferralId};
use crate::referral::{Audience, DeliveryContent, Event, Referral};
use crate::store::{DeliveryRef, PartiesNow, Store};

/// What each delivery carries, loaded for a batch in one query per table: the referral as its
/// agency may see it now ([`Referral::as_seen_by`]), or one event; `None` where it no longer
/// exists.
pub async fn contents(
    store: &dyn Store,
    wanted: &[(AgencyId, DeliveryRef)],
) -> Result<Vec<Option<DeliveryContent>>, StoreError> {
    let mut referral_ids: Vec<ReferralId> = wanted
        .iter()
        .filter(|(_, d)| d.event_id.is_none())
        .map(|(_, d)| d.referral_id)
        .collect();
    referral_ids.sort_unstable();
    referral_ids.dedup();
    let event_ids: Vec<uuid::Uuid> = wanted.iter().filter_map(|(_, d)| d.event_id).collect();
    let referrals: HashMap<ReferralId, (Referral, Vec<Event>)> = if referral_ids.is_empty() {
        HashMap::new()
    } else {
        store
            .referrals_with_history(&referral_ids)
            .await?
            .into_iter()
            .map(|(r, history)| (r.id, (r, history)))
            .collect()
    };
    let events: HashMap<uuid::Uuid, Event> = if event_ids.is_empty() {
        HashMap::new()
    } else {
        store
            .events(&event_ids)
            .await?
            .into_iter()
            .map(|e| (e.id, e))
            .collect()
    };
    // Who each event's referral is with now, so that a former recipient reads it through the view.
    let mut event_referrals: Vec<ReferralId> = events.values().map(|e| e.referral_id).collect();
    event_referrals.sort_unstable();
    event_referrals.dedup();
    let parties: HashMap<ReferralId, PartiesNow> = if event_referrals.is_empty() {
        HashMap::new()
    } else {
        store
            .parties_now(&event_referrals)
            .await?
            .into_iter()
            .map(|p| (p.referral_id, p))
            .collect()
    };
    Ok(wanted
        .iter()
        .map(|(agency, d)| match d.event_id {
            None => referrals.get(&d.referral_id).map(|(referral, history)| {
                let standing = Audience::outside_party(history, agency);
                DeliveryContent::Referral(
                    Box::new(referral.clone().as_seen_by_as(agency, standing)),
                    history.clone(),
                )
            }),
            Some(event_id) => events.get(&event_id).map(|e| {
                let event = match parties.get(&e.referral_id) {
                    Some(now) => {
                        let audience =
                            Audience::of_event(e, &now.sender, now.recipient.as_ref(), agency);
                        e.clone().as_seen_by(agency, audience)
                    }
                    None => e.clone(),
                };
                DeliveryContent::Event(Box::new(event))
            }),
        })
        .collect())
}
