-- depends: 0002.matching-need-facts-and-consents
-- Two sides of the directory in one schema, kept apart by name:
--   directory_*: the directory's owner: the HSDS package as imported (export writes it back)
--                and what it last published to refnet.agencies.v1;
--   the rest:    matching's own view, materialised from that topic, plus the offers it made.

CREATE TABLE directory_rows (
    table_name text  NOT NULL,
    row_id     text  NOT NULL,
    position   int   NOT NULL,  -- file order, so an export reads like the import
    data       jsonb NOT NULL,
    PRIMARY KEY (table_name, row_id)
);

CREATE TABLE directory_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    metadata  jsonb   NOT NULL,
    revision  bigint  NOT NULL
);

-- A digest per published profile: an unchanged agency is not re-sent, a vanished one gets
-- a tombstone.
CREATE TABLE directory_published (
    agency_id text   PRIMARY KEY,
    revision  bigint NOT NULL,
    digest    text   NOT NULL
);

-- A tombstone is a record with a null value.
ALTER TABLE outbox ALTER COLUMN value DROP NOT NULL;

DROP TABLE agency_services;
DROP TABLE agencies;

CREATE TABLE agency_profiles (
    agency_id text   PRIMARY KEY,
    revision  bigint NOT NULL,
    name      text   NOT NULL,
    profile   jsonb  NOT NULL
);

-- One row per active service, with the facts eligibility and ranking read.
CREATE TABLE match_services (
    service_id      text    PRIMARY KEY,
    agency_id       text    NOT NULL REFERENCES agency_profiles ON DELETE CASCADE,
    name            text    NOT NULL,
    category        text    NOT NULL,
    minimum_age     int,
    maximum_age     int,
    gender          text,
    mat_friendly    boolean,
    insurance       text[]  NOT NULL,
    languages       text[]  NOT NULL,
    capacity_status text    NOT NULL,
    available       int,
    capacity_as_of  timestamptz,
    postal_codes    text[]  NOT NULL,
    counties        text[]  NOT NULL,
    radius_km       double precision,
    locations       jsonb   NOT NULL,  -- [[latitude, longitude], ...]
    schedule        jsonb   NOT NULL   -- [[weekdays, opens_at, closes_at], ...]
);
-- A new profile replaces its agency's services.
CREATE INDEX match_services_by_agency ON match_services (agency_id);

-- Where each service works, so a need finds its candidates by index lookups, not a scan.
-- A radius is stored as the grid cells (see services/matching/geo.py) its circle touches.
CREATE TABLE service_coverage (
    kind       text NOT NULL,  -- postal_code | county | cell
    area       text NOT NULL,  -- the ZIP code, the county in lower case, or the cell
    category   text NOT NULL,
    service_id text NOT NULL REFERENCES match_services ON DELETE CASCADE,
    PRIMARY KEY (kind, area, category, service_id)
);
CREATE INDEX service_coverage_by_service ON service_coverage (service_id);

-- Places held by open offers and taken by acceptances since the agency last counted.
-- Kept apart from match_services, which a new profile replaces.
CREATE TABLE capacity_counters (
    service_id  text        PRIMARY KEY,
    reserved    int         NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    consumed    int         NOT NULL DEFAULT 0 CHECK (consumed >= 0),
    baseline_at timestamptz
);

-- Recent behaviour, as moving averages, for ranking.
CREATE TABLE agency_stats (
    agency_id       text             PRIMARY KEY,
    answered        int              NOT NULL,
    acceptance_rate double precision NOT NULL,
    response_hours  double precision NOT NULL
);

-- Every offer made; several are open at once when an urgent need fans out.
CREATE TABLE offers (
    offer_id    uuid        PRIMARY KEY,
    need_id     uuid        NOT NULL REFERENCES referrals,
    agency_id   text        NOT NULL,
    service_id  text,
    attempt     int         NOT NULL,
    status      text        NOT NULL,  -- open | accepted | declined | expired | withdrawn
    respond_by  timestamptz NOT NULL,
    offered_at  timestamptz NOT NULL,
    answered_at timestamptz,
    explanation jsonb       NOT NULL DEFAULT '[]'
);
CREATE INDEX offers_by_need ON offers (need_id);
CREATE INDEX offers_open_by_service ON offers (service_id) WHERE status = 'open';

INSERT INTO offers (offer_id, need_id, agency_id, attempt, status, respond_by, offered_at)
SELECT offer_id, need_id, agency_id, attempt, 'open', respond_by, updated_at
FROM referrals WHERE status = 'offered';

ALTER TABLE referrals
    ADD COLUMN gender     text,
    ADD COLUMN service_id text;
