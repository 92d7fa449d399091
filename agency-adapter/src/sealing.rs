//! Sealing at the adapter: what this agency writes leaves it sealed to the agencies that may read
//! it, and what arrives sealed to it is opened before it is stored.
//!
//! - **Keys.** The agency's private keys live in its store (`seal_keys`); the newest is published
//!   through the broker's directory, signed with the agency's TLS key ([`publish_key`]). Other
//!   agencies' keys are fetched from the directory and checked against the network CA before they
//!   are used or kept ([`spean_seal::verify_binding`]): the broker relays keys but cannot swap one.
//! - **Sending** ([`seal_request`]): a submit's case file is sealed to the agencies the referral may
//!   go to and to this agency; an action's free text (the person, the note, the details' text) to
//!   this agency, the sender, the recipient and, for a delegation, the delegate; a redirect
//!   re-seals the case file held here to the new recipient; a delegation seals the follow-up part
//!   to the delegate. The outbox keeps the request as first sealed, so a retry sends the same bytes.
//! - **Receiving** ([`open_referral`], [`open_event`]): the box for this agency is opened with its
//!   key and the writer's published key, and the plaintext takes the sealed bytes' place, so the
//!   rest of the adapter reads case files and notes as before. A box that does not open is dropped
//!   with a warning naming the writer: it was not sealed by that agency for this referral.

use prost::Message;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use spean_domain::referral::FreeText as CheckedText;
use spean_proto::v1::{
    self as pb, AgencyKeysRequest, FeedbackEvent, PublishKeyRequest, Referral, feedback_event,
    recipient::Target,
};
use spean_seal::{PublicKey, Purpose, SecretKey, box_for, open_box, seal};

use crate::{
    AdapterError,
    broker::{Broker, REQUEST_TIMEOUT},
    outbox::OutgoingRequest,
    store::Store,
};

/// Longest note, reason or summary, in bytes: the network's limit, checked before sealing since
/// the broker can no longer read the text to check it.
pub const MAX_TEXT: usize = 8 * 1024;
/// Longest staff name, in bytes.
pub const MAX_PERSON: usize = 256;

/// What the broker answers when the referral is routed to an agency the case file was not sealed
/// to (the directory changed after sealing): the request is sealed again on its next attempt.
pub const UNSEALED_READER: &str = "case_file has no box for it";

/// Publishes this agency's newest key, signed with its certificate's key. Run on every connection
/// of the daemon: after a certificate rotation it publishes the key with the new certificate.
pub async fn publish_key(store: &Store, broker: &mut Broker) -> Result<(), AdapterError> {
    let keys = store.seal_keys().await?;
    let key = keys
        .first()
        .ok_or_else(|| AdapterError::Sealing("no sealing key".into()))?;
    let identity = broker.identity.clone();
    let certificate = CertificateDer::from_pem_slice(&identity.cert_pem)
        .map_err(|e| AdapterError::Identity {
            path: "cert.pem".into(),
            reason: e.to_string(),
        })?
        .to_vec();
    let signature = spean_seal::sign_binding(
        identity.agency_id.as_str(),
        key.public(),
        identity.key_pem(),
    )
    .map_err(|e| AdapterError::Sealing(e.to_string()))?;
    let request = PublishKeyRequest {
        key: Some(pb::AgencyKey {
            agency_id: identity.agency_id.to_string(),
            public_key: key.public().as_bytes().to_vec(),
            certificate,
            signature,
            published_at: None,
        }),
    };
    tokio::time::timeout(REQUEST_TIMEOUT, broker.directory.publish_key(request))
        .await
        .map_err(|_| AdapterError::Unavailable("no answer in time".into()))??;
    tracing::info!(key = %spean_seal::keys::short(&key.id()), "sealing key published");
    broker.key_published = true;
    Ok(())
}

/// Makes a new sealing key and publishes it. The older keys stay, so what is in flight to them
/// still opens.
pub async fn rotate_key(store: &Store, broker: &mut Broker) -> Result<SecretKey, AdapterError> {
    let key = store.add_seal_key().await?;
    publish_key(store, broker).await?;
    Ok(key)
}

/// The current published keys of `agencies`, each checked against the network CA. An agency
/// that published none is unavailable for now: its adapter has not connected since sealing began.
async fn current_keys(
    store: &Store,
    broker: &mut Broker,
    agencies: &[String],
) -> Result<Vec<(String, PublicKey)>, AdapterError> {
    let request = AgencyKeysRequest {
        agency_ids: agencies.to_vec(),
        key_ids: Vec::new(),
    };
    let found = tokio::time::timeout(REQUEST_TIMEOUT, broker.directory.agency_keys(request))
        .await
        .map_err(|_| AdapterError::Unavailable("no answer in time".into()))??
        .into_inner()
        .keys;
    let mut keys = Vec::with_capacity(agencies.len());
    for agency in agencies {
        let Some(published) = found.iter().find(|k| &k.agency_id == agency) else {
            return Err(AdapterError::Unavailable(format!(
                "{agency} has published no sealing key yet (its adapter has not connected since \
                 sealing began); the request waits in the outbox"
            )));
        };
        keys.push((agency.clone(), checked(store, broker, published).await?));
    }
    Ok(keys)
}

/// A published key checked against the network CA, and kept.
async fn checked(
    store: &Store,
    broker: &Broker,
    published: &pb::AgencyKey,
) -> Result<PublicKey, AdapterError> {
    let key = spean_seal::verify_binding(published, &broker.identity.ca_pem)
        .map_err(|e| AdapterError::Sealing(e.to_string()))?;
    store
        .keep_peer_key(
            &published.agency_id,
            &key,
            &crate::store::timestamp(published.published_at.as_ref()),
        )
        .await?;
    Ok(key)
}

/// The key `agency` sealed with, by its id: this agency's own, one kept before, or fetched and
/// checked.
async fn writer_key(
    store: &Store,
    broker: &mut Broker,
    own: &[SecretKey],
    agency: &str,
    key_id: &[u8],
) -> Result<PublicKey, AdapterError> {
    if agency == broker.agency_id
        && let Some(mine) = own.iter().find(|k| k.id().as_slice() == key_id)
    {
        return Ok(mine.public().clone());
    }
    if let Some((holder, key)) = store.peer_key(key_id).await? {
        return if holder == agency {
            Ok(key)
        } else {
            Err(AdapterError::Sealing(format!(
                "a box claims to come from {agency} but names a key of {holder}"
            )))
        };
    }
    let request = AgencyKeysRequest {
        agency_ids: Vec::new(),
        key_ids: vec![key_id.to_vec()],
    };
    let found = tokio::time::timeout(REQUEST_TIMEOUT, broker.directory.agency_keys(request))
        .await
        .map_err(|_| AdapterError::Unavailable("no answer in time".into()))??
        .into_inner()
        .keys;
    let published = found
        .iter()
        .find(|k| k.agency_id == agency)
        .ok_or_else(|| {
            AdapterError::Sealing(format!(
                "{agency} published no key with the id its box names"
            ))
        })?;
    let key = checked(store, broker, published).await?;
    if key.id().as_slice() != key_id {
        return Err(AdapterError::Sealing(format!(
            "{agency}'s key does not have the id its box names"
        )));
    }
    Ok(key)
}

/// Checks the free text of a request before it is queued, as the broker did when it could read
/// it: a person's name is one line, notes and reasons have no control characters or
/// bidirectional overrides, and each is within the network's limit.
pub fn check_free_text(request: &OutgoingRequest) -> Result<(), AdapterError> {
    let Some(action) = request.shared() else {
        return Ok(());
    };
    CheckedText::line("by", &action.actor_person, MAX_PERSON)?;
    CheckedText::parse("note", &action.note, MAX_TEXT)?;
    if let Some(detail) = request.detail_text() {
        CheckedText::parse("reason", detail, MAX_TEXT)?;
    }
    Ok(())
}

/// The request as it goes to the broker: everything a person wrote sealed to its readers, and
/// nothing of it left in clear.
pub async fn seal_request(
    store: &Store,
    broker: &mut Broker,
    request: &OutgoingRequest,
) -> Result<OutgoingRequest, AdapterError> {
    if !broker.key_published {
        // The readers open what this agency seals with its published key.
        publish_key(store, broker).await?;
    }
    let me = broker.agency_id.clone();
    let own = store.seal_keys().await?;
    let mine = own
        .first()
        .ok_or_else(|| AdapterError::Sealing("no sealing key".into()))?
        .clone();
    let mut sealed = request.clone();
    if let OutgoingRequest::Submit(submit) = &mut sealed {
        let readers = submit_readers(broker, submit).await?;
        let keys = keys_with_mine(store, broker, &readers, &mine).await?;
        let purpose = Purpose::CaseFile {
            sender: &me,
            client_ref: &submit.client_ref,
        };
        submit.case_file = seal_to(&submit.case_file, purpose, &me, &mine, &keys)?;
        return Ok(sealed);
    }
    let referral_id = request.referral_id().unwrap_or_default().to_owned();
    let row = store.referral(&referral_id).await?;
    // Who reads the action whole: the sender and the recipient (none while a broadcast is open:
    // then the candidate that acts), and the delegate of a delegation.
    let mut readers: Vec<String> = Vec::new();
    if let Some(row) = &row {
        readers.extend([row.sender.clone(), row.recipient.clone()]);
    }
    if let Some(to) = sealed.delegate() {
        readers.push(to.to_owned());
    }
    readers.retain(|a| !a.is_empty() && a != &me);
    readers.sort();
    readers.dedup();
    // The case file re-sealed to a redirect's new recipient, from the copy held here.
    if let OutgoingRequest::Redirect(redirect) = &mut sealed
        && let Some(details) = redirect.redirect.as_mut()
    {
        let held = match row.as_ref().filter(|r| !r.case_file.is_empty()) {
            Some(row) => (
                row.case_file.clone(),
                row.sender.clone(),
                row.client_ref.clone(),
            ),
            None => case_file_from_broker(store, broker, &referral_id).await?,
        };
        let (case_file, sender, client_ref) = held;
        if case_file.is_empty() {
            return Err(AdapterError::Invalid {
                field: "id".into(),
                reason: format!(
                    "this agency holds no case file for referral {referral_id} to re-seal to {}",
                    details.to_agency_id
                ),
            });
        }
        let keys = current_keys(store, broker, std::slice::from_ref(&details.to_agency_id)).await?;
        let purpose = Purpose::CaseFile {
            sender: &sender,
            client_ref: &client_ref,
        };
        details.case_file = seal_to(&case_file, purpose, &me, &mine, &keys)?;
    }
    // The follow-up part sealed to the delegate (and to this agency).
    if let OutgoingRequest::DelegateFollowUp(delegate) = &mut sealed
        && let Some(delegation) = delegate.delegation.as_mut()
        && !delegation.follow_up_case_file.is_empty()
    {
        let to = vec![delegation.to_agency_id.clone()];
        let keys = keys_with_mine(store, broker, &to, &mine).await?;
        let purpose = Purpose::FollowUpPart {
            referral_id: &referral_id,
        };
        delegation.follow_up_case_file =
            seal_to(&delegation.follow_up_case_file, purpose, &me, &mine, &keys)?;
    }
    let text = sealed.take_free_text();
    if text != pb::FreeText::default() {
        let keys = keys_with_mine(store, broker, &readers, &mine).await?;
        let purpose = Purpose::FreeText {
            referral_id: &referral_id,
        };
        let bytes = seal_to(&text.encode_to_vec(), purpose, &me, &mine, &keys)?;
        if let Some(action) = sealed.shared_mut() {
            action.sealed_text = bytes;
        }
    }
    Ok(sealed)
}

/// The case file of a referral this agency may read, asked of the broker and opened, with the
/// sender and `client_ref` it is bound to: for a command run where the daemon never stored the
/// referral. Empty if this agency has no box.
async fn case_file_from_broker(
    store: &Store,
    broker: &mut Broker,
    referral_id: &str,
) -> Result<(Vec<u8>, String, String), AdapterError> {
    let request = pb::GetRequest {
        referral_id: referral_id.to_owned(),
    };
    let mut referral = tokio::time::timeout(REQUEST_TIMEOUT, broker.referrals.get(request))
        .await
        .map_err(|_| AdapterError::Unavailable("no answer in time".into()))??
        .into_inner();
    open_referral(store, broker, &mut referral).await?;
    let envelope = referral.envelope.unwrap_or_default();
    Ok((
        referral.case_file,
        envelope.sender_agency_id,
        envelope.client_ref,
    ))
}

/// The agencies a submit may go to: the one named, or every agency the directory lists for the
/// service in the province (the broker picks among them).
async fn submit_readers(
    broker: &mut Broker,
    submit: &pb::SubmitRequest,
) -> Result<Vec<String>, AdapterError> {
    let target = submit.recipient.as_ref().and_then(|r| r.target.as_ref());
    let mut readers = match target {
        Some(Target::AgencyId(agency)) => vec![agency.clone()],
        Some(Target::Service(service)) => {
            let request = pb::ResolveServiceRequest {
                service: service.service.clone(),
                province: service.province.clone(),
            };
            tokio::time::timeout(REQUEST_TIMEOUT, broker.directory.resolve_service(request))
                .await
                .map_err(|_| AdapterError::Unavailable("no answer in time".into()))??
                .into_inner()
                .agencies
                .into_iter()
                .map(|a| a.id)
                .collect()
        }
        None => Vec::new(),
    };
    readers.retain(|a| a != &broker.agency_id);
    // As the broker routes it: a broadcast to every provider, otherwise to the first of them.
    let addressed_by_service = matches!(target, Some(Target::Service(_)));
    let broadcast = submit
        .broadcast
        .unwrap_or(submit.kind == spean_domain::referral::BROADCAST_BY_DEFAULT);
    if addressed_by_service && !broadcast {
        readers.truncate(1);
    }
    Ok(readers)
}

/// The checked keys of `readers`, with this agency's own key after them.
async fn keys_with_mine(
    store: &Store,
    broker: &mut Broker,
    readers: &[String],
    mine: &SecretKey,
) -> Result<Vec<(String, PublicKey)>, AdapterError> {
    let mut keys = if readers.is_empty() {
        Vec::new()
    } else {
        current_keys(store, broker, readers).await?
    };
    keys.push((broker.agency_id.clone(), mine.public().clone()));
    Ok(keys)
}

fn seal_to(
    plaintext: &[u8],
    purpose: Purpose<'_>,
    me: &str,
    mine: &SecretKey,
    keys: &[(String, PublicKey)],
) -> Result<Vec<u8>, AdapterError> {
    let to: Vec<(&str, &PublicKey)> = keys.iter().map(|(a, k)| (a.as_str(), k)).collect();
    seal(plaintext, purpose, (me, mine), &to)
        .map(|s| s.encode_to_vec())
        .map_err(|e| AdapterError::Sealing(e.to_string()))
}

/// Puts the plaintext of `request` back into what the broker answered for it: the broker returns
/// this agency's own words sealed, and the adapter keeps what it wrote as it wrote it.
pub fn restore_own(request: &OutgoingRequest, outcome: &mut crate::outbox::Outcome) {
    match (request, outcome) {
        (OutgoingRequest::Submit(submit), crate::outbox::Outcome::Submitted(referral)) => {
            referral.case_file = submit.case_file.clone();
        }
        (request, crate::outbox::Outcome::Recorded(event)) => {
            let mut plain = request.clone();
            let text = plain.take_free_text();
            fill_free_text(event, text);
            if let (
                OutgoingRequest::DelegateFollowUp(delegate),
                Some(feedback_event::Details::Delegated(delegation)),
            ) = (request, event.details.as_mut())
            {
                delegation.follow_up_case_file = delegate
                    .delegation
                    .as_ref()
                    .map(|d| d.follow_up_case_file.clone())
                    .unwrap_or_default();
            }
        }
        _ => {}
    }
}

/// What opening needs, loaded once for a batch of deliveries: this agency's keys, and the writers'
/// keys met so far (each checked once).
pub struct Opener {
    own: Vec<SecretKey>,
    writers: std::collections::HashMap<Vec<u8>, (String, PublicKey)>,
}

impl Opener {
    pub async fn load(store: &Store) -> Result<Self, AdapterError> {
        Ok(Self {
            own: store.seal_keys().await?,
            writers: std::collections::HashMap::new(),
        })
    }
}

/// Opens a referral that arrived: its case file (this agency's box) and every event of its
/// history. Fails only when the broker could not be asked for a writer's key (to retry); a box
/// that does not open is dropped with a warning.
pub async fn open_referral(
    store: &Store,
    broker: &mut Broker,
    referral: &mut Referral,
) -> Result<(), AdapterError> {
    let mut opener = Opener::load(store).await?;
    opener.referral(store, broker, referral).await
}

/// Opens one event that arrived: its free text and a delegation's follow-up part.
pub async fn open_event(
    store: &Store,
    broker: &mut Broker,
    event: &mut FeedbackEvent,
) -> Result<(), AdapterError> {
    let mut opener = Opener::load(store).await?;
    opener.event(store, broker, event).await
}

impl Opener {
    /// As [`open_referral`].
    pub async fn referral(
        &mut self,
        store: &Store,
        broker: &mut Broker,
        referral: &mut Referral,
    ) -> Result<(), AdapterError> {
        let (sender, client_ref, referral_id) = referral
            .envelope
            .as_ref()
            .map(|e| {
                (
                    e.sender_agency_id.clone(),
                    e.client_ref.clone(),
                    e.referral_id.clone(),
                )
            })
            .unwrap_or_default();
        if !referral.case_file.is_empty() {
            let purpose = Purpose::CaseFile {
                sender: &sender,
                client_ref: &client_ref,
            };
            let sealed = std::mem::take(&mut referral.case_file);
            referral.case_file = self
                .open(store, broker, &sealed, purpose, &referral_id)
                .await?;
        }
        for event in &mut referral.history {
            self.event(store, broker, event).await?;
        }
        Ok(())
    }

    /// As [`open_event`].
    pub async fn event(
        &mut self,
        store: &Store,
        broker: &mut Broker,
        event: &mut FeedbackEvent,
    ) -> Result<(), AdapterError> {
        let referral_id = event.referral_id.clone();
        if !event.sealed_text.is_empty() {
            let sealed = std::mem::take(&mut event.sealed_text);
            let purpose = Purpose::FreeText {
                referral_id: &referral_id,
            };
            let plain = self
                .open(store, broker, &sealed, purpose, &referral_id)
                .await?;
            match pb::FreeText::decode(plain.as_slice()) {
                Ok(text) => fill_free_text(event, checked_text(text, &event.actor_agency_id)),
                Err(_) if plain.is_empty() => {}
                Err(_) => tracing::warn!(
                    referral_id,
                    from = event.actor_agency_id,
                    "the sealed free text opened but is not a FreeText; dropped"
                ),
            }
        }
        if let Some(feedback_event::Details::Delegated(delegation)) = event.details.as_mut()
            && !delegation.follow_up_case_file.is_empty()
        {
            let sealed = std::mem::take(&mut delegation.follow_up_case_file);
            let purpose = Purpose::FollowUpPart {
                referral_id: &referral_id,
            };
            delegation.follow_up_case_file = self
                .open(store, broker, &sealed, purpose, &referral_id)
                .await?;
        }
        Ok(())
    }

    /// Opens this agency's box of `sealed`; empty when there is none or it does not open (logged).
    async fn open(
        &mut self,
        store: &Store,
        broker: &mut Broker,
        sealed: &[u8],
        purpose: Purpose<'_>,
        referral_id: &str,
    ) -> Result<Vec<u8>, AdapterError> {
        let Ok(sealed) = pb::Sealed::decode(sealed) else {
            tracing::warn!(
                referral_id,
                "a sealed field is not a Sealed message; dropped"
            );
            return Ok(Vec::new());
        };
        let me = broker.agency_id.clone();
        let Some(sealed_box) = box_for(&sealed, &me) else {
            tracing::debug!(referral_id, "nothing in this copy is sealed to this agency");
            return Ok(Vec::new());
        };
        let Some(mine) = self
            .own
            .iter()
            .find(|k| k.id().as_slice() == sealed_box.to_key_id)
        else {
            tracing::warn!(
                referral_id,
                from = sealed_box.from_agency_id,
                "a box was sealed to a key this agency does not hold; dropped"
            );
            return Ok(Vec::new());
        };
        let cached = self
            .writers
            .get(&sealed_box.from_key_id)
            .filter(|(agency, _)| agency == &sealed_box.from_agency_id)
            .map(|(_, key)| key.clone());
        let found = match cached {
            Some(key) => Ok(key),
            None => {
                writer_key(
                    store,
                    broker,
                    &self.own,
                    &sealed_box.from_agency_id,
                    &sealed_box.from_key_id,
                )
                .await
            }
        };
        let writer = match found {
            Ok(key) => {
                self.writers.insert(
                    sealed_box.from_key_id.clone(),
                    (sealed_box.from_agency_id.clone(), key.clone()),
                );
                key
            }
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::warn!(referral_id, %error, "the writer's key is not usable; box dropped");
                return Ok(Vec::new());
            }
        };
        match open_box(sealed_box, mine, &writer, purpose) {
            Ok(plain) => Ok(plain),
            Err(error) => {
                tracing::warn!(referral_id, %error, "a sealed box does not open; dropped");
                Ok(Vec::new())
            }
        }
    }
}

/// Free text opened from another agency, held to the rules the broker applied when it could read
/// it: what breaks them is dropped (logged), never shown.
fn checked_text(text: pb::FreeText, from: &str) -> pb::FreeText {
    let keep = |field: &'static str, raw: String, max: usize, line: bool| {
        let ok = if line {
            CheckedText::line(field, &raw, max).is_ok()
        } else {
            CheckedText::parse(field, &raw, max).is_ok()
        };
        if ok {
            raw
        } else {
            tracing::warn!(
                from,
                field,
                "free text breaking the network's rules; dropped"
            );
            String::new()
        }
    };
    pb::FreeText {
        actor_person: keep("actor_person", text.actor_person, MAX_PERSON, true),
        note: keep("note", text.note, MAX_TEXT, false),
        detail: keep("detail", text.detail, MAX_TEXT, false),
    }
}

/// Puts opened free text into the event's fields: the person, the note, and the details' text.
fn fill_free_text(event: &mut FeedbackEvent, text: pb::FreeText) {
    use feedback_event::Details;
    event.actor_person = text.actor_person;
    event.note = text.note;
    let detail = text.detail;
    match event.details.as_mut() {
        Some(Details::Accepted(a)) => a.planned_action = detail,
        Some(Details::Declined(d)) => d.reason_text = detail,
        Some(Details::Redirected(r)) => r.reason = detail,
        Some(Details::Completed(o)) => o.summary = detail,
        Some(Details::Failed(f)) => f.reason = detail,
        Some(Details::Delegated(d)) => d.reason = detail,
        _ => {}
    }
}
