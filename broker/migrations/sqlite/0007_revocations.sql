-- Revoked certificates (issue 23): `spean-broker pki revoke` and `pki rotate` write them, from a
-- process of their own, and every broker re-reads them every `tls.revocation_refresh_ms`. A row
-- names one certificate by the SHA-256 of its DER, not the agency: a rotation ends the agency's
-- old certificate at `effective_at` while its new one goes on working. The agency and the serial
-- number are for people reading the table. (0006 is another change's number.)
CREATE TABLE revocations (
    fingerprint  TEXT    PRIMARY KEY,     -- SHA-256 of the certificate's DER, 64 lowercase hex digits
    agency_id    TEXT    NOT NULL,
    serial       TEXT    NOT NULL,        -- colon-separated hex, as openssl prints it
    effective_at INTEGER NOT NULL,        -- unix microseconds: refused from then on
    reason       TEXT    NOT NULL,
    recorded_at  INTEGER NOT NULL
);
