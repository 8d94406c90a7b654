-- depends: 0004.notifications-webhooks
-- The agency inbox: what each offer looked like to the agency, where its referral stands for
-- that agency, the agency's own users, and the log of their views of a person's contact.

-- The de-identified offer as matching sent it to the agency's topic (ReferralOffered).
ALTER TABLE offers ADD COLUMN details jsonb;
ALTER TABLE offers ADD COLUMN offered_at timestamptz;
-- Where the referral stands for this agency: offered, accepted, declined, expired,
-- placed_elsewhere, withdrawn, cancelled, completed, failed. `status` stays the answer
-- bookkeeping (open, answered, placed, closed) the API has always used.
ALTER TABLE offers ADD COLUMN stage text NOT NULL DEFAULT 'offered';
ALTER TABLE offers ADD COLUMN stage_reason text;
ALTER TABLE offers ADD COLUMN stage_at timestamptz;
UPDATE offers o SET stage = 'accepted'
    FROM need_referrers n WHERE n.accepted_offer_id = o.offer_id;
UPDATE offers SET stage = 'placed_elsewhere' WHERE status = 'placed';
CREATE INDEX offers_by_agency_stage ON offers (agency_id, stage);

CREATE TABLE agency_users (
    user_id       uuid PRIMARY KEY,
    agency_id     text        NOT NULL,
    email         text        NOT NULL UNIQUE,  -- stored lower-case
    name          text        NOT NULL,
    password_hash text        NOT NULL,         -- argon2
    created_at    timestamptz NOT NULL,
    disabled_at   timestamptz
);

CREATE TABLE agency_login_failures (
    account   text        NOT NULL,
    address   text        NOT NULL,
    failed_at timestamptz NOT NULL
);
CREATE INDEX agency_login_failures_by_account ON agency_login_failures (account, failed_at);
CREATE INDEX agency_login_failures_by_address ON agency_login_failures (address, failed_at);

-- Every time someone at an agency asked to see a person's contact details, shown or refused.
-- Intake's disclosure ledger holds the disclosures; this answers "who at the agency looked".
CREATE TABLE contact_views (
    view_id   uuid PRIMARY KEY,
    agency_id text        NOT NULL,
    viewer    text        NOT NULL,  -- 'user:<email>' or 'api-key'
    offer_id  uuid        NOT NULL,
    need_id   uuid        NOT NULL,
    shown     boolean     NOT NULL,
    reason    text,
    viewed_at timestamptz NOT NULL
);
CREATE INDEX contact_views_by_need ON contact_views (need_id, viewed_at);

CREATE FUNCTION contact_views_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the contact view log is append-only';
END $$;
CREATE TRIGGER contact_views_append_only BEFORE UPDATE OR DELETE ON contact_views
    FOR EACH ROW EXECUTE FUNCTION contact_views_append_only();
CREATE TRIGGER contact_views_never_truncated BEFORE TRUNCATE ON contact_views
    FOR EACH STATEMENT EXECUTE FUNCTION contact_views_append_only();
