-- depends: 0001.matching-initial
-- The coarse facts an agency needs to decide on an offer (copied onto every offer), the
-- consent each referral is under, and the consents matching has seen revoked.

ALTER TABLE referrals
    ADD COLUMN county         text,
    ADD COLUMN age_years      int,
    ADD COLUMN recovery_stage text,
    ADD COLUMN constraints    jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN consent_id     uuid;

UPDATE referrals SET consent_id = (consent ->> 'consent_id')::uuid;
ALTER TABLE referrals ALTER COLUMN consent_id SET NOT NULL;
-- A revocation cancels every referral under the consent.
CREATE INDEX referrals_by_consent ON referrals (consent_id);

-- One row per consent a need or a revocation has named. The row is also the lock that
-- orders a need arriving under a consent against that consent's revocation: the two come
-- on different topics, so different workers may handle them at the same time.
CREATE TABLE consents (
    consent_id uuid PRIMARY KEY,
    person_ref uuid        NOT NULL,
    revoked_at timestamptz
);
