-- depends: 0003.matching-directory-capacity-offers
-- The candidate lookup, made to cost what the services near a person cost, whatever the
-- size of the directory.
--
-- A radius service was found through service_coverage by grid cell, then each one in the
-- cell was fetched and its jsonb locations parsed to learn whether its circle reaches the
-- need: most did not (a cell is far larger than a circle's share of it). Each cell row now
-- carries one location and the radius, so the distance is decided in the lookup itself.

CREATE TABLE service_reach (
    cell       text             NOT NULL,  -- a grid cell the circle touches (geo.cell_of)
    category   text             NOT NULL,
    service_id text             NOT NULL REFERENCES match_services ON DELETE CASCADE,
    location   int              NOT NULL,  -- the location's place in match_services.locations
    latitude   double precision NOT NULL,
    longitude  double precision NOT NULL,
    radius_km  double precision NOT NULL,
    PRIMARY KEY (cell, category, service_id, location)
        INCLUDE (latitude, longitude, radius_km)
);
CREATE INDEX service_reach_by_service ON service_reach (service_id);

-- Every location of a service under each cell it was stored under: a location whose own
-- circle misses the cell only costs a row, since the distance still decides.
INSERT INTO service_reach
SELECT c.area, c.category, c.service_id, l.n - 1, (l.xy ->> 0)::float8, (l.xy ->> 1)::float8,
       s.radius_km
FROM service_coverage c
JOIN match_services s USING (service_id)
CROSS JOIN LATERAL jsonb_array_elements(s.locations) WITH ORDINALITY AS l(xy, n)
WHERE c.kind = 'cell' AND s.radius_km IS NOT NULL;

DELETE FROM service_coverage WHERE kind = 'cell';
ALTER TABLE service_coverage ADD CONSTRAINT service_coverage_named_area
    CHECK (kind IN ('postal_code', 'county'));

-- The agency's name travels with its services (a new profile rewrites both), so the lookup
-- needs no join for it.
ALTER TABLE match_services ADD COLUMN agency_name text;
UPDATE match_services s SET agency_name = p.name FROM agency_profiles p
WHERE p.agency_id = s.agency_id;
ALTER TABLE match_services ALTER COLUMN agency_name SET NOT NULL;
