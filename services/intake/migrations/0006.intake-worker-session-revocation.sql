-- depends: 0005.intake-status-history-dlq-replays
-- Logging out ends the worker's sessions on the server: a session cookie is signed, not
-- stored, so a copy kept from before the logout would otherwise still be let in. A session
-- that logged in at or before this time is sent back to the login (services/intake/auth.py).
ALTER TABLE workers ADD COLUMN sessions_revoked_at timestamptz;
