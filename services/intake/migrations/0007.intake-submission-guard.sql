-- depends: 0006.intake-worker-session-revocation
-- An intake submission in one round trip (services/intake/repository.py, write_intake): its
-- one write statement calls this first, for the locks that make submissions take turns and
-- the reads that must come after them. A volatile function's statements each read what is
-- committed when they run, so what it reads once the locks are its own includes whatever
-- the previous holder wrote; the calling statement's own reads are as of its start, before.
-- The locks are the transaction's: the statement's own, so released as it commits.

CREATE FUNCTION intake_submission_guard(
    submission_in uuid, match_key_in bytea, person_in uuid, check_known boolean, token_in bytea
) RETURNS TABLE (existing uuid, known boolean, token_valid boolean, consent_version int)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- Submissions of one form take turns; then intakes for one name and date of birth, so
    -- that they make one new person, not two. (Namespaces 1 and 2 of repository.py.)
    PERFORM pg_advisory_xact_lock(1, hashtext(submission_in::text));
    PERFORM pg_advisory_xact_lock(2, hashtext(encode(match_key_in, 'hex')));
    RETURN QUERY SELECT
        -- the intake this submission already made
        (SELECT i.intake_id FROM intakes i WHERE i.submission_id = submission_in),
        -- someone with this name and date of birth is on record (if the worker must choose)
        check_known AND EXISTS (SELECT FROM persons p WHERE p.match_key = match_key_in),
        -- the worker's API token, if one was sent, is still good
        token_in IS NULL OR EXISTS (
            SELECT FROM worker_tokens t JOIN workers w USING (worker_id)
            WHERE t.token_digest = token_in AND t.revoked_at IS NULL AND w.active
        ),
        -- the version the person's next consent gets
        (SELECT coalesce(max(c.version), 0) + 1 FROM consents c WHERE c.person_id = person_in);
END
$$;
