//! The embedded store's [`ReferralStore`]: the directory, referrals and their history. Reads go to
//! the readers; a submit or change is one job for the writer, which queues its deliveries in the
//! same savepoint ([`mailbox::queue`]).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, all, first, json_list, mailbox};
use crate::directory::Directory;
use crate::error::StoreError;
use crate::ids::{AgencyId, ClientRef, ReferralId, RequestId};
use crate::referral::{Event, ListQuery, Referral};
use crate::store::{
    Change, ChangeOutcome, DeadlineChange, DueDeadline, NewDelivery, PartiesNow, PublishedKey,
    ReferralStore, Snapshot, SubmitOutcome, micros, rows, with_histories,
};

/// The columns [`rows::referral`] reads, without the case file.
const REFERRAL_COLUMNS: &str = "id, sender, client_ref, fingerprint, addressee_agency, \
    addressee_service, addressee_province, recipient, kind, urgency, subject_sex, subject_age_band, \
    subject_province, client_pseudonym, state, version, created_at, updated_at, addressing";

fn insert_event(conn: &Connection, event: &Event) -> Result<(), StoreError> {
    let details = rows::details_column(event)?;
    conn.prepare_cached(
        "INSERT INTO referral_events \
         (id, referral_id, kind, actor, actor_person, at, note, state_after, details, request_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        event.id.to_string(),
        event.referral_id.to_string(),
        event.kind.as_str(),
        event.actor.as_str(),
        event.actor_person.as_str(),
        micros(event.at),
        event.note.as_str(),
        event.state_after.as_str(),
        details,
        event.request_id.as_ref().map(|r| r.as_str()),
    ])?;
    // Every accepted action writes its event here, once: its audit entry goes with it.
    super::audit::append(conn, crate::store::audit::event_record(event)?)?;
    Ok(())
}

/// Gives `agency` access to the referral as a party; one that was only notified becomes a party.
fn grant_access(
    conn: &Connection,
    referral_id: ReferralId,
    agency: &AgencyId,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO referral_access (referral_id, agency_id) VALUES (?, ?) \
         ON CONFLICT (agency_id, referral_id) DO UPDATE SET role = 'party' \
         WHERE referral_access.role <> 'party'",
    )?
    .execute(params![referral_id.to_string(), agency.as_str()])?;
    Ok(())
}

/// Gives `agency` access to the referral as notified, unless it has access already.
fn grant_notified(
    conn: &Connection,
    referral_id: ReferralId,
    agency: &AgencyId,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO referral_access (referral_id, agency_id, role) VALUES (?, ?, ?) \
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        referral_id.to_string(),
        agency.as_str(),
        rows::NOTIFIED
    ])?;
    Ok(())
}

/// Writes the referral's deadline as `deadline` says.
fn write_deadline(
    conn: &Connection,
    referral_id: ReferralId,
    deadline: DeadlineChange,
) -> Result<(), StoreError> {
    match deadline {
        DeadlineChange::Keep => {}
        DeadlineChange::Clear => {
            conn.prepare_cached("DELETE FROM referral_deadlines WHERE referral_id = ?")?
                .execute(params![referral_id.to_string()])?;
        }
        DeadlineChange::Set {
            due_at,
            escalations,
        } => {
            conn.prepare_cached(
                "INSERT INTO referral_deadlines (referral_id, due_at, escalations) \
                 VALUES (?, ?, ?) ON CONFLICT (referral_id) DO UPDATE \
                 SET due_at = excluded.due_at, escalations = excluded.escalations",
            )?
            .execute(params![
                referral_id.to_string(),
                micros(due_at),
                rows::escalations_column(escalations),
            ])?;
        }
    }
    Ok(())
}

fn event_by_request(
    conn: &Connection,
    actor: &AgencyId,
    request_id: &RequestId,
) -> Result<Option<Event>, StoreError> {
    let mut query =
        conn.prepare_cached("SELECT * FROM referral_events WHERE actor = ? AND request_id = ?")?;
    first(
        query.query(params![actor.as_str(), request_id.as_str()])?,
        |r| rows::event(r),
    )
}

/// Inserts a new referral with its access, first event, deliveries and deadline, unless its sender
/// already used its `client_ref`: then it returns the id of the referral that has it.
fn submit(
    conn: &Connection,
    referral: &Referral,
    event: &Event,
    deliveries: &[NewDelivery],
    deadline: Option<time::OffsetDateTime>,
) -> Result<Option<ReferralId>, StoreError> {
    let (agency, service, province) = rows::addressee_columns(&referral.addressee);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO referrals (id, sender, client_ref, fingerprint, addressee_agency, \
             addressee_service, addressee_province, recipient, kind, urgency, subject_sex, \
             subject_age_band, subject_province, client_pseudonym, state, version, created_at, \
             updated_at, case_file, addressing) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (sender, client_ref) DO NOTHING",
        )?
        .execute(params![
            referral.id.to_string(),
            referral.sender.as_str(),
            referral.client_ref.as_str(),
            referral.fingerprint,
            agency,
            service,
            province,
            rows::recipient_text(referral.recipient.as_ref()),
            referral.kind.as_str(),
            referral.urgency.as_str(),
            referral.subject.sex.as_str(),
            referral.subject.age_band.as_str(),
            referral.subject.province.as_str(),
            referral.client_pseudonym.as_ref().map(|p| p.as_str()),
            referral.state.as_str(),
            referral.version,
            micros(referral.created_at),
            micros(referral.updated_at),
            referral.case_file.as_bytes(),
            rows::addressing_column(referral)?,
        ])?;
    if inserted == 0 {
        let existing: String = conn
            .prepare_cached("SELECT id FROM referrals WHERE sender = ? AND client_ref = ?")?
            .query_row(
                params![referral.sender.as_str(), referral.client_ref.as_str()],
                |row| row.get(0),
            )?;
        return ReferralId::parse("id", &existing)
            .map(Some)
            .map_err(|e| rows::undecodable("referrals", e));
    }
    for (agency, role) in rows::access_of(referral) {
        if role == "notified" {
            grant_notified(conn, referral.id, agency)?;
        } else {
            grant_access(conn, referral.id, agency)?;
        }
    }
    insert_event(conn, event)?;
    mailbox::queue(conn, referral.id, deliveries, micros(event.at))?;
    if let Some(due_at) = deadline {
        write_deadline(
            conn,
            referral.id,
            DeadlineChange::Set {
                due_at,
                escalations: 0,
            },
        )?;
    }
    Ok(None)
}

/// Applies a change if its version is still current and its request id unused.
/// [`ReferralStore::forget_sealed`], in the writer's transaction.
fn forget_sealed(conn: &Connection, id: ReferralId) -> Result<(), StoreError> {
    let id = id.to_string();
    conn.prepare_cached("UPDATE referrals SET case_file = x'' WHERE id = ?")?
        .execute(params![id])?;
    let history = {
        let mut query = conn
            .prepare_cached("SELECT * FROM referral_events WHERE referral_id = ? ORDER BY seq")?;
        all(query.query(params![id])?, |r| rows::event(r))?
    };
    let mut update = conn.prepare_cached("UPDATE referral_events SET details = ? WHERE id = ?")?;
    for mut event in history {
        if event.forget_sealed() {
            update.execute(params![rows::details_column(&event)?, event.id.to_string()])?;
        }
    }
    Ok(())
}

fn apply(conn: &Connection, change: &Change) -> Result<ChangeOutcome, StoreError> {
    if let Some(request_id) = &change.event.request_id
        && let Some(done) = event_by_request(conn, &change.event.actor, request_id)?
    {
        return Ok(ChangeOutcome::Duplicate(Box::new(done)));
    }
    let updated = conn
        .prepare_cached(
            "UPDATE referrals SET state = ?, version = version + 1, updated_at = ?, \
             recipient = COALESCE(?, recipient) WHERE id = ? AND version = ?",
        )?
        .execute(params![
            change.state.as_str(),
            micros(change.at),
            change.new_recipient.as_ref().map(|a| a.as_str()),
            change.referral_id.to_string(),
            change.expected_version,
        ])?;
    if updated == 0 {
        return Ok(ChangeOutcome::Stale);
    }
    if let Some(recipient) = &change.new_recipient {
        grant_access(conn, change.referral_id, recipient)?;
    }
    for agency in &change.notified {
        grant_notified(conn, change.referral_id, agency)?;
    }
    write_deadline(conn, change.referral_id, change.deadline)?;
    insert_event(conn, &change.event)?;
    mailbox::queue(
        conn,
        change.referral_id,
        &change.deliveries,
        micros(change.at),
    )?;
    Ok(ChangeOutcome::Recorded)
}

impl SqliteStore {
    /// The timers `sql` selects by the time `now` (its first parameter) and `limit` (its second):
    /// the due ones, or the overdue list's.
    async fn timers(
        &self,
        sql: &'static str,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDeadline>, StoreError> {
        let (now, limit) = (micros(now), i64::from(limit));
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(sql)?;
                all(query.query(params![now, limit])?, |r| rows::due_deadline(r))
            })
            .await
    }
}

#[async_trait]
impl ReferralStore for SqliteStore {
    async fn import_directory(&self, directory: &Directory) -> Result<i64, StoreError> {
        let document =
            serde_json::to_string(directory).map_err(|e| rows::undecodable("directory", e))?;
        let at = micros(time::OffsetDateTime::now_utc());
        self.writer
            .write(Box::new(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "INSERT INTO directory (id, document, version, imported_at) \
                         VALUES (1, ?, 1, ?) \
                         ON CONFLICT (id) DO UPDATE SET document = excluded.document, \
                         version = directory.version + 1, imported_at = excluded.imported_at \
                         RETURNING version",
                    )?
                    .query_row(params![document, at], |row| row.get(0))?)
            }))
            .await
    }

    async fn directory(&self) -> Result<Option<(Directory, i64)>, StoreError> {
        let row: Option<(String, i64)> = self
            .readers
            .read(|conn| {
                Ok(conn
                    .prepare_cached("SELECT document, version FROM directory WHERE id = 1")?
                    .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?)
            })
            .await?;
        row.map(|(doc, version)| {
            let dir = serde_json::from_str(&doc).map_err(|e| rows::undecodable("directory", e))?;
            Ok((dir, version))
        })
        .transpose()
    }

    async fn directory_version(&self) -> Result<Option<i64>, StoreError> {
        self.readers
            .read(|conn| {
                Ok(conn
                    .prepare_cached("SELECT version FROM directory WHERE id = 1")?
                    .query_row([], |row| row.get(0))
                    .optional()?)
            })
            .await
    }

    async fn submit(
        &self,
        referral: &Referral,
        event: &Event,
        deliveries: &[NewDelivery],
        deadline: Option<time::OffsetDateTime>,
    ) -> Result<SubmitOutcome, StoreError> {
        let (new, first, deliveries) = (referral.clone(), event.clone(), deliveries.to_vec());
        let taken = self
            .writer
            .write(Box::new(move |conn| {
                submit(conn, &new, &first, &deliveries, deadline)
            }))
            .await?;
        let Some(existing) = taken else {
            return Ok(SubmitOutcome::Created);
        };
        match self.referral(existing).await? {
            Some(existing) => Ok(SubmitOutcome::Existing(Box::new(existing))),
            None => Err(rows::corrupt(
                "referrals",
                "a client_ref conflict without its referral",
            )),
        }
    }

    async fn referral(&self, id: ReferralId) -> Result<Option<Referral>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals WHERE id = ?"
                ))?;
                first(query.query(params![id])?, |r| rows::referral(r, true))
            })
            .await
    }

    async fn referral_by_client_ref(
        &self,
        sender: &AgencyId,
        client_ref: &ClientRef,
    ) -> Result<Option<Referral>, StoreError> {
        let (sender, client_ref) = (sender.clone(), client_ref.clone());
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals \
                     WHERE sender = ? AND client_ref = ?"
                ))?;
                first(
                    query.query(params![sender.as_str(), client_ref.as_str()])?,
                    |r| rows::referral(r, true),
                )
            })
            .await
    }

    async fn snapshot(&self, id: ReferralId) -> Result<Option<Snapshot>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                // The parties as `[agency, role]` pairs: both lists of the snapshot from one read
                // of the referral's access rows.
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, \
                     (SELECT json_group_array(json_array(agency_id, role)) FROM \
                      (SELECT agency_id, role FROM referral_access \
                      WHERE referral_id = r.id ORDER BY agency_id)) AS parties, \
                     (SELECT json_group_array(kind) FROM (SELECT kind FROM referral_events \
                      WHERE referral_id = r.id ORDER BY seq)) AS history \
                     FROM referrals r WHERE id = ?"
                ))?;
                first(query.query(params![id])?, |row| {
                    fn list<T: serde::de::DeserializeOwned>(
                        row: &rusqlite::Row<'_>,
                        column: &str,
                    ) -> Result<Vec<T>, StoreError> {
                        let json: String = row.get(column)?;
                        serde_json::from_str(&json).map_err(|e| rows::undecodable("referrals", e))
                    }
                    let access: Vec<(String, String)> = list(row, "parties")?;
                    let notified = access
                        .iter()
                        .filter(|(_, role)| role == rows::NOTIFIED)
                        .map(|(agency, _)| agency.clone())
                        .collect();
                    let parties = access.into_iter().map(|(agency, _)| agency).collect();
                    rows::snapshot(row, parties, notified, list(row, "history")?)
                })
            })
            .await
    }

    async fn has_access(&self, agency: &AgencyId, id: ReferralId) -> Result<bool, StoreError> {
        let (agency, id) = (agency.clone(), id.to_string());
        self.readers
            .read(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT 1 FROM referral_access WHERE agency_id = ? AND referral_id = ?",
                    )?
                    .exists(params![agency.as_str(), id])?)
            })
            .await
    }

    async fn history(&self, id: ReferralId) -> Result<Vec<Event>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM referral_events WHERE referral_id = ? ORDER BY seq",
                )?;
                all(query.query(params![id])?, |r| rows::event(r))
            })
            .await
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query =
                    conn.prepare_cached("SELECT * FROM referral_events WHERE id = ?")?;
                first(query.query(params![id])?, |r| rows::event(r))
            })
            .await
    }

    async fn parties_now(&self, ids: &[ReferralId]) -> Result<Vec<PartiesNow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(ids);
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT id, sender, recipient FROM referrals \
                     WHERE id IN (SELECT value FROM json_each(?))",
                )?;
                all(query.query(params![list])?, |r| rows::parties_now(r))
            })
            .await
    }

    async fn referrals_with_history(
        &self,
        ids: &[ReferralId],
    ) -> Result<Vec<(Referral, Vec<Event>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(ids);
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS}, case_file FROM referrals \
                     WHERE id IN (SELECT value FROM json_each(?))"
                ))?;
                let referrals = all(query.query(params![list])?, |r| rows::referral(r, true))?;
                let mut query = conn.prepare_cached(
                    "SELECT * FROM referral_events \
                     WHERE referral_id IN (SELECT value FROM json_each(?)) ORDER BY seq",
                )?;
                let events = all(query.query(params![list])?, |r| rows::event(r))?;
                Ok(with_histories(referrals, events))
            })
            .await
    }

    async fn events(&self, ids: &[uuid::Uuid]) -> Result<Vec<Event>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(ids);
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT * FROM referral_events \
                     WHERE id IN (SELECT value FROM json_each(?)) ORDER BY seq",
                )?;
                all(query.query(params![list])?, |r| rows::event(r))
            })
            .await
    }

    async fn event_by_request(
        &self,
        actor: &AgencyId,
        request_id: &RequestId,
    ) -> Result<Option<Event>, StoreError> {
        let (actor, request_id) = (actor.clone(), request_id.clone());
        self.readers
            .read(move |conn| event_by_request(conn, &actor, &request_id))
            .await
    }

    async fn list(
        &self,
        agency: &AgencyId,
        query: &ListQuery,
    ) -> Result<Vec<Referral>, StoreError> {
        let states = (!query.states.is_empty()).then(|| {
            serde_json::Value::from(query.states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .to_string()
        });
        let bound = (
            agency.as_str().to_owned(),
            query.role.map(|r| r.to_string()),
            states,
            query.kind.as_ref().map(|k| k.as_str().to_owned()),
            query.before.map(|b| b.to_string()),
            i64::from(query.limit),
            query
                .client_pseudonym
                .as_ref()
                .map(|p| p.as_str().to_owned()),
        );
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&format!(
                    "SELECT {REFERRAL_COLUMNS} FROM referrals r \
                     WHERE r.id IN (SELECT referral_id FROM referral_access WHERE agency_id = ?1) \
                     AND (?2 IS NULL OR (?2 = 'sender' AND r.sender = ?1) \
                                      OR (?2 = 'recipient' AND r.recipient = ?1)) \
                     AND (?3 IS NULL OR r.state IN (SELECT value FROM json_each(?3))) \
                     AND (?4 IS NULL OR r.kind = ?4) \
                     AND (?5 IS NULL OR r.id < ?5) \
                     AND (?7 IS NULL OR (r.client_pseudonym = ?7 \
                                         AND (r.sender = ?1 OR r.recipient = ?1))) \
                     ORDER BY r.id DESC LIMIT ?6"
                ))?;
                all(query.query(bound)?, |r| rows::referral(r, false))
            })
            .await
    }

    async fn forget_sealed(&self, id: ReferralId) -> Result<(), StoreError> {
        self.writer
            .write(Box::new(move |conn| forget_sealed(conn, id)))
            .await
    }

    async fn apply(&self, change: &Change) -> Result<ChangeOutcome, StoreError> {
        let change = change.clone();
        self.writer
            .write(Box::new(move |conn| apply(conn, &change)))
            .await
    }

    async fn due_deadlines(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDeadline>, StoreError> {
        self.timers(
            "SELECT referral_id, due_at, escalations FROM referral_deadlines \
             WHERE due_at <= ? ORDER BY due_at, referral_id LIMIT ?",
            now,
            limit,
        )
        .await
    }

    async fn deadline(&self, id: ReferralId) -> Result<Option<DueDeadline>, StoreError> {
        let id = id.to_string();
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT referral_id, due_at, escalations FROM referral_deadlines \
                     WHERE referral_id = ?",
                )?;
                first(query.query(params![id])?, |r| rows::due_deadline(r))
            })
            .await
    }

    async fn overdue_timers(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueDeadline>, StoreError> {
        self.timers(
            "SELECT referral_id, due_at, escalations FROM referral_deadlines \
             WHERE due_at <= ? OR escalations > 0 ORDER BY due_at, referral_id LIMIT ?",
            now,
            limit,
        )
        .await
    }

    async fn referrals_active_between(
        &self,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ReferralId>, StoreError> {
        let (from, to, limit) = (micros(from), micros(to), i64::from(limit));
        let sql = format!(
            "SELECT id FROM referrals WHERE created_at >= ?1 AND created_at < ?2 \
             UNION SELECT referral_id FROM referral_events \
             WHERE at >= ?1 AND at < ?2 AND kind IN ({}) LIMIT ?3",
            crate::store::FIGURED_EVENTS
        );
        self.readers
            .read(move |conn| {
                let mut query = conn.prepare_cached(&sql)?;
                all(query.query(params![from, to, limit])?, |r| {
                    let id: String = r.get(0)?;
                    ReferralId::parse("id", &id).map_err(|_| rows::corrupt("referrals", "id"))
                })
            })
            .await
    }

    /// Both halves answer: a reader, and the writer (an empty job, which also shows that writes are
    /// not stuck behind something).
    async fn publish_key(&self, key: &PublishedKey) -> Result<PublishedKey, StoreError> {
        let key = key.clone();
        self.writer
            .write(Box::new(move |conn| super::keys::publish(conn, &key)))
            .await
    }

    async fn agency_keys(
        &self,
        agencies: &[AgencyId],
        key_ids: &[Vec<u8>],
    ) -> Result<Vec<PublishedKey>, StoreError> {
        let (agencies, key_ids) = (agencies.to_vec(), key_ids.to_vec());
        self.readers
            .read(move |conn| super::keys::read(conn, &agencies, &key_ids))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.readers
            .read(|conn| Ok(conn.prepare_cached("SELECT 1")?.exists([])?))
            .await?;
        self.writer.write(Box::new(|_| Ok(()))).await
    }
}
