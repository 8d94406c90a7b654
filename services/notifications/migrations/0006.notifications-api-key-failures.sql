-- depends: 0005.notifications-agency-inbox
-- Requests to the agency API with an unknown or revoked key, per client address: the API
-- refuses keys from an address while it has too many in the window (services/notifications/
-- agency_keys.py). Rows older than the window are deleted as new ones come in.

CREATE TABLE api_key_failures (
    address   text        NOT NULL,
    failed_at timestamptz NOT NULL
);
CREATE INDEX api_key_failures_by_address ON api_key_failures (address, failed_at);
CREATE INDEX api_key_failures_by_time ON api_key_failures (failed_at);
