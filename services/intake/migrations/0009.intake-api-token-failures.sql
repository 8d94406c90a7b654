-- depends: 0008.intake-guard-plans
-- Requests to the JSON API with an unknown or revoked worker token, per client address:
-- the API refuses tokens from an address while it has too many in the window
-- (shared/throttle.py). Rows older than the window are deleted as new ones come in.

CREATE TABLE api_token_failures (
    address   text        NOT NULL,
    failed_at timestamptz NOT NULL
);
CREATE INDEX api_token_failures_by_address ON api_token_failures (address, failed_at);
CREATE INDEX api_token_failures_by_time ON api_token_failures (failed_at);
