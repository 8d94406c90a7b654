-- depends: 0000.shared-outbox-inbox
-- Matching owns the agency directory and the referral state machine.

CREATE TABLE agencies (
    agency_id text PRIMARY KEY,
    name      text NOT NULL,
    email     text
);

CREATE TABLE agency_services (
    service_id   text PRIMARY KEY,
    agency_id    text   NOT NULL REFERENCES agencies ON DELETE CASCADE,
    name         text   NOT NULL,
    category     text   NOT NULL,
    postal_codes text[] NOT NULL,
    languages    text[] NOT NULL
);
CREATE INDEX agency_services_by_category ON agency_services (category);

CREATE TABLE referrals (
    need_id     uuid PRIMARY KEY,
    person_ref  uuid        NOT NULL,
    category    text        NOT NULL,
    urgency     text        NOT NULL,
    postal_code text        NOT NULL,
    languages   text[]      NOT NULL,
    consent     jsonb       NOT NULL,
    status      text        NOT NULL,
    sequence    int         NOT NULL,
    attempt     int         NOT NULL DEFAULT 0,
    agency_id   text,
    offer_id    uuid,
    respond_by  timestamptz,
    tried       text[]      NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL
);
