-- A watched table shaped like the seed's hotspots: a bigint key, a watched updated_at, and
-- columns that are not watched (name, firmware). Used by several integration tests.
CREATE TABLE devices (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    firmware text,
    updated_at timestamptz NOT NULL
);
