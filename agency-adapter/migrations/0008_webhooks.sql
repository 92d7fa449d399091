-- Webhooks (docs/integration.md#webhooks): the endpoints an agency's own system registered, the
-- messages waiting for or delivered to them, and every attempt. IF NOT EXISTS as in 0001-0006, so
-- that a daemon and a command migrating a file at once do not trip over each other.

-- One endpoint per row. `event_types` is a JSON array of the types it wants. `secret` is the
-- Standard Webhooks signing secret (`whsec_...`), sealed at rest under the store key (`at_rest`,
-- purpose `webhook_endpoints.secret`, bound to the endpoint id): it stays on this machine.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id     TEXT    PRIMARY KEY,   -- ep_<uuidv7>
    url             TEXT    NOT NULL,
    event_types     TEXT    NOT NULL,      -- JSON array of strings, never empty
    description     TEXT    NOT NULL DEFAULT '',
    secret          BLOB    NOT NULL,
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    disabled_at     INTEGER,               -- unix milliseconds
    -- Set when a POST found nobody listening (no HTTP answer): no message to this endpoint is tried
    -- before then, so that an endpoint that is down is not hammered once per referral.
    down_until      INTEGER,               -- unix milliseconds
    created_at      INTEGER NOT NULL,      -- unix milliseconds
    -- The `Idempotency-Key` it was registered under through the API: the same key registers
    -- nothing new. NULL when registered from the command line.
    idempotency_key TEXT UNIQUE
);

-- One message per (endpoint, event), written in the transaction that stored the event. `order_key`
-- is the referral id (or, for a message about no referral, its own id): a message is not attempted
-- while an earlier one (smaller seq) of the same endpoint and key is undelivered. Only the thin
-- payload is kept: ids, kinds, states and times, never case data.
CREATE TABLE IF NOT EXISTS webhook_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL UNIQUE,  -- msg_<uuidv7>, the `webhook-id` of every attempt
    endpoint_id     TEXT    NOT NULL REFERENCES webhook_endpoints (endpoint_id) ON DELETE CASCADE,
    event_type      TEXT    NOT NULL,
    order_key       TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,         -- unix milliseconds
    delivered_at    INTEGER,                  -- NULL while undelivered
    next_attempt_at INTEGER NOT NULL,
    first_failed_at INTEGER,                  -- the first failure since the last success or resend
    attempts        INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0, -- failed attempts in a row: what the backoff grows on
    last_status     INTEGER,                  -- HTTP status of the last attempt, if it got one
    last_error      TEXT,
    last_latency_ms INTEGER
);

CREATE INDEX IF NOT EXISTS webhook_messages_due
    ON webhook_messages (delivered_at, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_messages_order
    ON webhook_messages (endpoint_id, order_key, seq);

-- Every attempt to post a message: when, what came back (a status code, or an error), how long.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    message_id  TEXT    NOT NULL REFERENCES webhook_messages (message_id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,   -- unix milliseconds
    status_code INTEGER,
    error       TEXT,
    latency_ms  INTEGER NOT NULL,
    PRIMARY KEY (message_id, attempt)
);
