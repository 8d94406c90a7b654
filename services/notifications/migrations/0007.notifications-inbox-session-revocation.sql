-- depends: 0006.notifications-api-key-failures
-- Logging out of the agency inbox ends the user's sessions on the server: a session cookie
-- is signed, not stored, so a copy kept from before the logout would otherwise still be let
-- in. A session that logged in at or before this time goes back to the login (inbox.py).
ALTER TABLE agency_users ADD COLUMN sessions_revoked_at timestamptz;
