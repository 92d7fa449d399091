-- The audit log: every action the broker accepted, one entry each, chained by hash
-- (docs/security.md#audit). Rows are only ever appended, by spean_audit_append below, which every
-- accepting statement calls in its own transaction: an action is never recorded without its entry.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,            -- 1, 2, 3, … with no gaps
    at          BIGINT NOT NULL,               -- unix microseconds
    actor       TEXT   NOT NULL,               -- the agency that acted
    action      TEXT   NOT NULL,               -- an event kind, publish_key, revoke, adapter_head
    referral_id TEXT,                          -- the referral acted on, if any
    digest      BYTEA  NOT NULL,               -- SHA-256 of the action's details, never content
    prev_hash   BYTEA  NOT NULL,               -- the previous entry's hash; 32 zero bytes first
    hash        BYTEA  NOT NULL                -- SHA-256(prev_hash || canonical entry)
);

-- The last head of its own log each agency's adapter reported (AuditService.WitnessHead), so that
-- a cut tail of an adapter's log shows against what the broker saw.
CREATE TABLE audit_witnessed (
    agency_id   TEXT   PRIMARY KEY,
    seq         BIGINT NOT NULL,
    hash        BYTEA  NOT NULL,
    at          BIGINT NOT NULL                -- unix microseconds
);

-- A field of the canonical encoding: its length as 4 big-endian bytes, then its bytes.
CREATE FUNCTION spean_audit_field(v BYTEA) RETURNS BYTEA
LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT int4send(octet_length(v)) || v $$;

-- Appends one entry after the current head and returns its seq. The encoding is
-- spean_domain::audit::canonical, byte for byte (its test pins it): version 1, seq and at as
-- 8 big-endian bytes, then actor, action, referral id ('' for none) and digest as fields.
--
-- Brokers share this table, so appends are serialised by a transaction-scoped advisory lock,
-- taken here, at the end of the accepting statement, and released at its commit. The function is
-- VOLATILE, so under READ COMMITTED its SELECT takes a snapshot after the lock is granted and
-- sees the head the previous holder committed.
CREATE FUNCTION spean_audit_append(p_at BIGINT, p_actor TEXT, p_action TEXT, p_referral TEXT,
                                   p_digest BYTEA) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    last_seq  BIGINT;
    last_hash BYTEA;
BEGIN
    PERFORM pg_advisory_xact_lock(6003374450072966468);  -- 'SPEANAUD'
    SELECT seq, hash INTO last_seq, last_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF last_seq IS NULL THEN
        last_seq := 0;
        last_hash := decode(repeat('00', 32), 'hex');
    END IF;
    INSERT INTO audit_log (seq, at, actor, action, referral_id, digest, prev_hash, hash)
    VALUES (last_seq + 1, p_at, p_actor, p_action, p_referral, p_digest, last_hash,
            sha256(last_hash || '\x01'::bytea || int8send(last_seq + 1) || int8send(p_at)
                   || spean_audit_field(convert_to(p_actor, 'UTF8'))
                   || spean_audit_field(convert_to(p_action, 'UTF8'))
                   || spean_audit_field(convert_to(coalesce(p_referral, ''), 'UTF8'))
                   || spean_audit_field(p_digest)));
    RETURN last_seq + 1;
END
$$;
