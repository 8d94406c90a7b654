-- depends: 0002.notifications-consent-revocation
-- Channels, aftercare and the closed loop: what notifications keeps about each need to
-- decide who is told what, a delivery log that knows a send in flight, and one-use links.

-- The person's choice (never their address: intake gives that at the moment of sending)
-- and the agency holding the need once it is accepted.
ALTER TABLE need_referrers
    ADD COLUMN languages            text[] NOT NULL DEFAULT '{}',
    ADD COLUMN contact_channel      text   NOT NULL DEFAULT 'none',
    ADD COLUMN window_from          time,
    ADD COLUMN window_until         time,
    ADD COLUMN first_offered_at     timestamptz,
    ADD COLUMN accepted_offer_id    uuid,
    ADD COLUMN agency_id            text,
    ADD COLUMN agency_name          text,
    ADD COLUMN reminders_stopped_at timestamptz;

-- One row per message (or webhook call), keyed by the idempotency key the provider sees.
-- 'sending' is written and committed before the send; a row still 'sending' after a crash
-- means the provider may have it, so the retry reuses the key and is counted as a repeat.
ALTER TABLE deliveries
    ALTER COLUMN sent_at DROP NOT NULL,
    ADD COLUMN job_id      uuid,
    ADD COLUMN kind        text,
    ADD COLUMN error       text,
    ADD COLUMN provider_id text,
    ADD COLUMN repeats     int NOT NULL DEFAULT 0,
    ADD COLUMN updated_at  timestamptz;
UPDATE deliveries SET updated_at = sent_at WHERE updated_at IS NULL;
CREATE INDEX deliveries_by_job ON deliveries (job_id);

-- A check-in or outcome link works once: its first use is recorded here.
CREATE TABLE link_uses (
    link_id  uuid PRIMARY KEY,
    need_id  uuid        NOT NULL,
    purpose  text        NOT NULL,  -- check-in | outcome
    answer   text        NOT NULL,
    used_at  timestamptz NOT NULL
);
