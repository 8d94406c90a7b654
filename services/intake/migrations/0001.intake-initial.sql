-- depends: 0000.shared-outbox-inbox
-- Intake owns the person's identifying data (encrypted), the consent, intakes and needs.

CREATE TABLE workers (
    worker_id     uuid PRIMARY KEY,
    email         text        NOT NULL UNIQUE,
    display_name  text        NOT NULL,
    password_hash text        NOT NULL,
    role          text        NOT NULL DEFAULT 'intake_worker',
    active        boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE persons (
    person_id          uuid PRIMARY KEY,
    person_ref         uuid        NOT NULL UNIQUE,  -- the opaque id that may travel on Kafka
    pii                bytea       NOT NULL,         -- Fernet-encrypted JSON of direct identifiers
    postal_code        text        NOT NULL,
    preferred_language text        NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE consents (
    consent_id   uuid PRIMARY KEY,
    person_id    uuid        NOT NULL REFERENCES persons,
    categories   text[]      NOT NULL,
    recipients   text        NOT NULL,
    purpose      text        NOT NULL,
    expires_on   date        NOT NULL,
    given_at     timestamptz NOT NULL,
    witnessed_by uuid        NOT NULL REFERENCES workers,
    revoked_at   timestamptz
);

CREATE TABLE intakes (
    intake_id  uuid PRIMARY KEY,
    person_id  uuid        NOT NULL REFERENCES persons,
    worker_id  uuid        NOT NULL REFERENCES workers,
    consent_id uuid        NOT NULL REFERENCES consents,
    created_at timestamptz NOT NULL
);

CREATE TABLE needs (
    need_id         uuid PRIMARY KEY,
    intake_id       uuid        NOT NULL REFERENCES intakes,
    position        int         NOT NULL,
    category        text        NOT NULL,
    urgency         text        NOT NULL,
    status          text        NOT NULL DEFAULT 'submitted',
    status_sequence int         NOT NULL DEFAULT 0,
    status_at       timestamptz NOT NULL,
    agency_id       text,
    agency_name     text,
    status_reason   text,
    respond_by      timestamptz
);
CREATE INDEX needs_by_intake ON needs (intake_id, position);
