-- depends: 0003.notifications-channels-aftercare
-- Agency webhooks: one endpoint per agency. Each delivery is a scheduled job of kind
-- 'agency_webhook' (job_id = the delivery id) and is logged in deliveries with
-- channel 'webhook' and recipient = the agency id.

CREATE TABLE agency_webhooks (
    agency_id            text PRIMARY KEY,
    url                  text        NOT NULL,
    secret               text        NOT NULL,  -- signs deliveries (HMAC-SHA256); shown once
    enabled              bool        NOT NULL DEFAULT true,
    consecutive_failures int         NOT NULL DEFAULT 0,
    disabled_at          timestamptz,
    disabled_reason      text,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);

-- An agency's recent deliveries, newest first (GET /agency/v1/webhook/deliveries).
CREATE INDEX deliveries_webhooks_by_agency ON deliveries (recipient, updated_at DESC NULLS LAST)
    WHERE channel = 'webhook';
