-- depends: 0001.notifications-initial
-- Revoking a consent stops everything notifications would still do for needs under it.

-- Which person and consent each need is under (from NeedSubmitted). Needs remembered before
-- this migration have neither; their jobs stop when matching reports them cancelled.
ALTER TABLE need_referrers
    ADD COLUMN person_ref uuid,
    ADD COLUMN consent_id uuid;
CREATE INDEX need_referrers_by_consent ON need_referrers (consent_id);

-- Revocations seen, so a job or an offer for a need under one is never started later, in
-- whatever order the consent, need and referral topics are read.
CREATE TABLE revoked_consents (
    consent_id uuid PRIMARY KEY,
    person_ref uuid        NOT NULL,
    revoked_at timestamptz NOT NULL
);

CREATE INDEX scheduled_jobs_pending_by_need ON scheduled_jobs (need_id) WHERE status = 'pending';
CREATE INDEX offers_by_need ON offers (need_id);
