-- depends: 0001.shared-outbox-notify
-- A row the broker can never take (larger than the producer may send) is set aside with the
-- reason instead of being retried for ever, so the rows behind it go out.
ALTER TABLE outbox
    ADD COLUMN rejected_at timestamptz,
    ADD COLUMN rejection   text;
-- NOT VALID: every existing row has both NULL, and a long outbox is not scanned under lock.
ALTER TABLE outbox ADD CONSTRAINT outbox_rejection_has_reason
    CHECK ((rejected_at IS NULL) = (rejection IS NULL)) NOT VALID;

-- The relay's batch query leaves set-aside rows out; the new index is built before the old
-- one goes, so the relay is never without one.
CREATE INDEX outbox_to_publish ON outbox (id) WHERE published_at IS NULL AND rejected_at IS NULL;
DROP INDEX outbox_unpublished;
