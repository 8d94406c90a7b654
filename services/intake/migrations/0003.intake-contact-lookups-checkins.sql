-- depends: 0002.intake-recovery-intake
-- The audit of every contact lookup by another refnet service, and the person's answers to
-- aftercare check-ins (for the worker's tracker).

-- Every time the notifications service asked for a person's address, granted or refused.
-- Append-only, like the disclosure ledger: it answers "who looked this person up, and why".
CREATE TABLE contact_lookups (
    lookup_id    uuid PRIMARY KEY,
    need_id      uuid        NOT NULL,        -- no foreign key: unknown needs are audited too
    person_id    uuid        REFERENCES persons,
    requested_by text        NOT NULL,
    purpose      text        NOT NULL,
    channel      text,
    granted      boolean     NOT NULL,
    reason       text,                        -- why it was refused
    looked_up_at timestamptz NOT NULL
);
CREATE INDEX contact_lookups_by_person ON contact_lookups (person_id, looked_up_at);
CREATE INDEX contact_lookups_by_need ON contact_lookups (need_id, looked_up_at);

CREATE FUNCTION contact_lookups_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the contact lookup audit is append-only';
END $$;
CREATE TRIGGER contact_lookups_append_only BEFORE UPDATE OR DELETE ON contact_lookups
    FOR EACH ROW EXECUTE FUNCTION contact_lookups_append_only();
CREATE TRIGGER contact_lookups_never_truncated BEFORE TRUNCATE ON contact_lookups
    FOR EACH STATEMENT EXECUTE FUNCTION contact_lookups_append_only();

-- One answer per check-in day; a later answer to the same day replaces it. need-help stays
-- on the worker's list until they record that they followed it up.
CREATE TABLE check_in_answers (
    need_id        uuid        NOT NULL REFERENCES needs,
    day            int         NOT NULL,
    answer         text        NOT NULL,
    answered_at    timestamptz NOT NULL,
    followed_up_at timestamptz,
    followed_up_by uuid        REFERENCES workers,
    PRIMARY KEY (need_id, day)
);
