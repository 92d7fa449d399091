-- Revoked certificates (issue 23): `spean-broker pki revoke` and `pki rotate` write them, and every
-- broker sharing this database reads them: at once on the NOTIFY `spean_revocations` that a write
-- sends on commit, and every `tls.revocation_refresh_ms` in case a notice was missed. A row names
-- one certificate by the SHA-256 of its DER, not the agency: a rotation ends the agency's old
-- certificate at `effective_at` while its new one goes on working. (0005 is another change's
-- number.)
CREATE TABLE revocations (
    fingerprint  TEXT    PRIMARY KEY,     -- SHA-256 of the certificate's DER, 64 lowercase hex digits
    agency_id    TEXT    NOT NULL,
    serial       TEXT    NOT NULL,        -- colon-separated hex, as openssl prints it
    effective_at BIGINT  NOT NULL,        -- unix microseconds: refused from then on
    reason       TEXT    NOT NULL,
    recorded_at  BIGINT  NOT NULL
);
