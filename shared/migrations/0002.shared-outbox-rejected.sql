-- depends: 0001.shared-outbox-notify
-- A row the broker can never take (larger than the producer may send, say) is set aside
-- with the reason instead of being retried for ever, so the rows behind it go out.
ALTER TABLE outbox
    ADD COLUMN rejected_at timestamptz,
    ADD COLUMN rejection   text,
    ADD CONSTRAINT outbox_rejection_has_reason CHECK ((rejected_at IS NULL) = (rejection IS NULL));

DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND rejected_at IS NULL;
