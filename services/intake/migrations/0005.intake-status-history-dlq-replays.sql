-- depends: 0004.intake-agency-contact-release
-- The operator dashboard: every referral status change intake has heard of (for the funnel,
-- time to accept and agencies' response times), and the audit trail of dead-letter replays.

-- One row per ReferralStatusChanged for a need intake holds, written in the transaction
-- that applies it to needs, out-of-order ones included (needs keeps only the latest).
-- Append-only: it is the history the dashboard's numbers come from.
CREATE TABLE status_changes (
    need_id     uuid        NOT NULL REFERENCES needs,
    sequence    int         NOT NULL,         -- matching's per-need sequence
    status      text        NOT NULL,
    agency_id   text,
    agency_name text,
    offer_id    uuid,                         -- the offer this change is about
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (need_id, sequence)
);
CREATE INDEX status_changes_by_time ON status_changes (occurred_at);
CREATE INDEX status_changes_by_offer ON status_changes (offer_id) WHERE offer_id IS NOT NULL;

-- Needs that moved before this table existed: their latest status is all intake knows.
INSERT INTO status_changes (need_id, sequence, status, agency_id, agency_name, occurred_at)
SELECT need_id, status_sequence, status, agency_id, agency_name, status_at
FROM needs WHERE status_sequence > 0;

-- Every replay of a dead letter to its original topic (shared/dlq.py): who, when, which
-- record, and where the copy went. One replay per dead letter, and per original record (two
-- consumers may dead-letter the same record; one replay reaches them both).
CREATE TABLE dlq_replays (
    dlq_topic          text        NOT NULL,
    dlq_partition      int         NOT NULL,
    dlq_offset         bigint      NOT NULL,
    topic              text        NOT NULL,  -- the original record's
    original_partition int         NOT NULL,
    original_offset    bigint      NOT NULL,
    replay_partition   int         NOT NULL,  -- where the replayed copy was written
    replay_offset      bigint      NOT NULL,
    replayed_by        text        NOT NULL,  -- worker:<email> or cli:<os user>
    replayed_at        timestamptz NOT NULL,
    consumer           text,                  -- what the dead letter said, for the record
    reason             text,
    ce_type            text,
    key                text,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset),
    UNIQUE (topic, original_partition, original_offset)
);

CREATE FUNCTION history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER status_changes_append_only BEFORE UPDATE OR DELETE ON status_changes
    FOR EACH ROW EXECUTE FUNCTION history_append_only();
CREATE TRIGGER status_changes_never_truncated BEFORE TRUNCATE ON status_changes
    FOR EACH STATEMENT EXECUTE FUNCTION history_append_only();
CREATE TRIGGER dlq_replays_append_only BEFORE UPDATE OR DELETE ON dlq_replays
    FOR EACH ROW EXECUTE FUNCTION history_append_only();
CREATE TRIGGER dlq_replays_never_truncated BEFORE TRUNCATE ON dlq_replays
    FOR EACH STATEMENT EXECUTE FUNCTION history_append_only();
