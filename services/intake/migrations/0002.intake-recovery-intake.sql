-- depends: 0001.intake-initial
-- The full recovery intake: versioned Part 2 consents, returning persons, idempotent
-- submission, API tokens, login throttling, the tracker's columns and the disclosure ledger.

ALTER TABLE workers ADD CONSTRAINT workers_role CHECK (role IN ('intake_worker', 'admin'));
-- Login looks accounts up case-insensitively, so uniqueness must be case-insensitive too.
UPDATE workers SET email = lower(email);
CREATE UNIQUE INDEX workers_email_lower ON workers (lower(email));

CREATE TABLE worker_tokens (
    token_digest bytea PRIMARY KEY,          -- sha256 of the token; the token is shown once
    worker_id    uuid        NOT NULL REFERENCES workers,
    label        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE login_failures (
    failure_id bigserial PRIMARY KEY,
    account    text        NOT NULL,         -- lower-cased email as typed
    address    text        NOT NULL,
    failed_at  timestamptz NOT NULL
);
CREATE INDEX login_failures_by_account ON login_failures (account, failed_at);
CREATE INDEX login_failures_by_address ON login_failures (address, failed_at);

-- Identifiers stay in the sealed pii column; these are coarse or operational facts.
ALTER TABLE persons
    ADD COLUMN match_key         bytea,      -- keyed digest of legal name + date of birth
    ADD COLUMN county            text,
    ADD COLUMN languages         text[],
    ADD COLUMN preferred_channel text NOT NULL DEFAULT 'email',
    ADD COLUMN contact_from      time,
    ADD COLUMN contact_until     time,
    ADD COLUMN updated_at        timestamptz;
UPDATE persons SET languages = ARRAY[preferred_language], updated_at = created_at;
ALTER TABLE persons
    ALTER COLUMN languages SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL,
    DROP COLUMN preferred_language;
CREATE INDEX persons_by_match_key ON persons (match_key);

-- One row per consent the person gives; a renewed consent is a new version, and a
-- revocation is recorded on the version it ends.
ALTER TABLE consents
    ADD COLUMN version            int  NOT NULL DEFAULT 1,
    ADD COLUMN form_version       text NOT NULL DEFAULT 'refnet-part2-consent-2026-10',
    ADD COLUMN discloser          text NOT NULL DEFAULT 'refnet referral network',
    ADD COLUMN information         text NOT NULL DEFAULT '',
    ADD COLUMN named_agencies     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN expiry_event       text,
    ADD COLUMN signature          bytea,     -- sealed: the typed name is an identifier
    ADD COLUMN signed_on          date,
    ADD COLUMN revoked_by         uuid REFERENCES workers,
    ADD COLUMN revocation_method  text,
    ADD CONSTRAINT consents_version_per_person UNIQUE (person_id, version),
    ADD CONSTRAINT consents_recipients CHECK (recipients IN ('network', 'named'));

ALTER TABLE intakes
    ADD COLUMN submission_id  uuid UNIQUE,   -- the form's idempotency token
    ADD COLUMN recovery_stage text,
    ADD COLUMN barc10         smallint[],
    ADD COLUMN constraints    jsonb NOT NULL DEFAULT '{}';

ALTER TABLE needs
    ADD COLUMN note       bytea,             -- sealed; never leaves intake
    ADD COLUMN attempt    int  NOT NULL DEFAULT 0,
    ADD COLUMN declines   int  NOT NULL DEFAULT 0,
    ADD COLUMN offered_at timestamptz,
    ADD COLUMN excluded   jsonb NOT NULL DEFAULT '[]';
CREATE INDEX needs_open ON needs (status)
    WHERE status NOT IN ('completed', 'failed', 'cancelled');

-- Every release of a person's identifying data to a recipient outside intake. Append-only:
-- the accounting of disclosures (42 CFR 2.24) is produced from it.
CREATE TABLE disclosures (
    disclosure_id uuid PRIMARY KEY,
    person_id     uuid        NOT NULL REFERENCES persons,
    consent_id    uuid        NOT NULL REFERENCES consents,
    need_id       uuid        REFERENCES needs,
    recipient_id  text        NOT NULL,
    recipient     text        NOT NULL,
    information   text[]      NOT NULL,
    purpose       text        NOT NULL,
    disclosed_at  timestamptz NOT NULL
);
CREATE INDEX disclosures_by_person ON disclosures (person_id, disclosed_at);

CREATE FUNCTION disclosures_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the disclosure ledger is append-only';
END $$;
CREATE TRIGGER disclosures_append_only BEFORE UPDATE OR DELETE ON disclosures
    FOR EACH ROW EXECUTE FUNCTION disclosures_append_only();
CREATE TRIGGER disclosures_never_truncated BEFORE TRUNCATE ON disclosures
    FOR EACH STATEMENT EXECUTE FUNCTION disclosures_append_only();
