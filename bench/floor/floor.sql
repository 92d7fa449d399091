-- One pgbench transaction = 16 referrals through the PostgreSQL writes and reads Spean's
-- production path makes for them, and nothing else: no broker, no gRPC, no RabbitMQ, no adapter.
-- Each statement commits on its own, as Spean's batch statements do. See docs/performance.md,
-- "The floor under the production path".
--
-- Switches (pgbench -D name=0 leaves that part out, to price it; run.sh sets all to 1):
--   outbox    the outbox rows: their inserts, leases and deletes
--   carry     the encoded delivery carried in each outbox row (NULL without it)
--   access    the referral_access rows (who may see a referral)
--   snapshot  the read of the referrals before recording `delivered`
--   lease     how the relay claims outbox rows before deleting them: 1 an UPDATE of
--             lease_until (the relay's lease), 0 not at all (the relay's handoff), 2 row locks
--             (FOR UPDATE SKIP LOCKED) held in one transaction with the delete
-- Submit: 16 referrals (1 KiB case file), their events, access rows and outbox rows (carrying
-- the referral with its case file again, as the broker's carried deliveries do).
WITH c AS (
  SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
          || substr(md5(random()::text), 1, 20))::uuid AS id,
         'bench-' || lpad(s::text, 4, '0') AS sender,
         'bench-' || lpad(((s + 1 + (random() * 14)::int) % 16)::text, 4, '0') AS recipient,
         md5(random()::text) AS client_ref
  FROM (SELECT (random() * 15)::int AS s FROM generate_series(1, 16)) AS g),
r AS (
  INSERT INTO referrals (id, sender, client_ref, fingerprint, addressee_agency, addressee_service,
    addressee_province, recipient, kind, urgency, subject_sex, subject_age_band,
    subject_province, client_pseudonym, state, version, created_at, updated_at, case_file)
  SELECT id, sender, client_ref, md5(client_ref) || md5(client_ref), recipient, NULL, NULL,
    recipient, 'lama', 'routine', 'female', '0-4', 'KH-12', NULL, 'sent', 1, 1, 1,
    decode(repeat('e19e9f', 341), 'hex')
  FROM c RETURNING id, sender, recipient),
e AS (
  INSERT INTO referral_events (id, referral_id, kind, actor, actor_person, at, note, state_after,
    details, request_id)
  SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
          || substr(md5(random()::text), 1, 20))::uuid, r.id, 'submitted', r.sender,
    'សុខ ចាន់', 1, '', 'sent', '{}', md5(random()::text)
  FROM r),
a AS (
  INSERT INTO referral_access (referral_id, agency_id)
  SELECT r.id, x FROM r, unnest(ARRAY[r.sender, r.recipient]) AS x WHERE :access::int = 1
  ON CONFLICT DO NOTHING),
m AS (
  INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at, body)
  SELECT r.recipient, gen_random_uuid(), r.id, NULL, 1,
    CASE WHEN :carry::int = 1 THEN decode(repeat('e19e9f', 380), 'hex') END
  FROM r WHERE :outbox::int = 1 RETURNING seq)
SELECT (SELECT array_agg(id) FROM r) AS ids, (SELECT array_agg(seq) FROM m) AS sent
\gset
-- The relay leases the referrals' outbox rows, publishes them, and deletes them.
\if :outbox
\if :lease = 2
BEGIN;
SELECT seq, body FROM mailbox WHERE seq = ANY (:sent::bigint[]) FOR UPDATE SKIP LOCKED;
\elif :lease = 1
UPDATE mailbox SET lease_until = 1 WHERE seq = ANY (:sent::bigint[]) RETURNING seq, body;
\endif
DELETE FROM mailbox WHERE seq = ANY (:sent::bigint[]);
\if :lease = 2
COMMIT;
\endif
\endif
-- The recipients confirm: one read of the referrals' snapshots, then one change each recording
-- `delivered`, with its event and its delivery to both parties.
\if :snapshot
SELECT r.id, r.state, r.version, r.recipient,
  ARRAY(SELECT agency_id FROM referral_access WHERE referral_id = r.id) AS parties,
  ARRAY(SELECT kind FROM referral_events WHERE referral_id = r.id ORDER BY seq) AS history
FROM referrals r WHERE r.id = ANY (:ids::uuid[]);
\endif
WITH u AS (
  UPDATE referrals SET state = 'delivered', version = version + 1, updated_at = 2
  WHERE id = ANY (:ids::uuid[]) AND version = 1 RETURNING id, sender, recipient),
e AS (
  INSERT INTO referral_events (id, referral_id, kind, actor, actor_person, at, note, state_after,
    details, request_id)
  SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
          || substr(md5(random()::text), 1, 20))::uuid, u.id, 'delivered', u.recipient, '', 2,
    '', 'delivered', '{}', NULL
  FROM u RETURNING id, referral_id),
m AS (
  INSERT INTO mailbox (agency_id, delivery_id, referral_id, event_id, created_at, body)
  SELECT x, gen_random_uuid(), u.id, e.id, 2,
    CASE WHEN :carry::int = 1 THEN decode(repeat('0a', 200), 'hex') END
  FROM u JOIN e ON e.referral_id = u.id, unnest(ARRAY[u.sender, u.recipient]) AS x
  WHERE :outbox::int = 1 RETURNING seq)
SELECT array_agg(seq) AS feedback FROM m
\gset
-- The relay leases and deletes the two feedback deliveries of each.
\if :outbox
\if :lease = 2
BEGIN;
SELECT seq, body FROM mailbox WHERE seq = ANY (:feedback::bigint[]) FOR UPDATE SKIP LOCKED;
\elif :lease = 1
UPDATE mailbox SET lease_until = 1 WHERE seq = ANY (:feedback::bigint[]) RETURNING seq, body;
\endif
DELETE FROM mailbox WHERE seq = ANY (:feedback::bigint[]);
\if :lease = 2
COMMIT;
\endif
\endif
