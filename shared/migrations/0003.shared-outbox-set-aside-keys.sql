-- depends: 0002.shared-outbox-rejected
-- The relay's pruning keeps the published rows that a set-aside row with the same topic and
-- key is waiting behind, and looks for such a row for every row it deletes: this index holds
-- only the set-aside rows, so it costs nothing when an event is written or published.
CREATE INDEX outbox_set_aside_keys ON outbox (topic, key) WHERE rejected_at IS NOT NULL;
