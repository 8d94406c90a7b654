-- depends: 0000.shared-outbox-inbox
-- Notifications owns what it tracks about needs and offers, the agencies' API keys, the
-- durable schedule and the delivery log.

CREATE TABLE need_referrers (
    need_id      uuid PRIMARY KEY,
    worker_ref   uuid NOT NULL,
    notify_email text NOT NULL,
    category     text NOT NULL,
    urgency      text NOT NULL
);

CREATE TABLE offers (
    offer_id    uuid PRIMARY KEY,
    need_id     uuid        NOT NULL,
    agency_id   text        NOT NULL,
    agency_name text,
    respond_by  timestamptz NOT NULL,
    status      text        NOT NULL,  -- open | answered | expiring | closed
    updated_at  timestamptz NOT NULL
);
CREATE INDEX offers_open_by_agency ON offers (agency_id) WHERE status = 'open';

CREATE TABLE agency_api_keys (
    key_hash   text PRIMARY KEY,  -- sha256 of a 256-bit random key; the key itself is never stored
    agency_id  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE scheduled_jobs (
    job_id      uuid PRIMARY KEY,  -- deterministic, so a redelivered event schedules nothing twice
    kind        text        NOT NULL,
    need_id     uuid        NOT NULL,
    offer_id    uuid,
    due_at      timestamptz NOT NULL,
    payload     jsonb       NOT NULL DEFAULT '{}',
    status      text        NOT NULL DEFAULT 'pending',  -- pending | done | cancelled | failed
    lease_until timestamptz,
    attempts    int         NOT NULL DEFAULT 0,
    last_error  text,
    done_at     timestamptz
);
CREATE INDEX scheduled_jobs_due ON scheduled_jobs (due_at) WHERE status = 'pending';

CREATE TABLE deliveries (
    idempotency_key text PRIMARY KEY,
    channel         text        NOT NULL,
    recipient       text        NOT NULL,
    subject         text        NOT NULL,
    status          text        NOT NULL,
    attempts        int         NOT NULL,
    sent_at         timestamptz NOT NULL
);
