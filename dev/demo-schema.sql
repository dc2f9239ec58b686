-- The seed's example tables: hotspots and their rewards.
CREATE TABLE IF NOT EXISTS hotspots (
    id bigint PRIMARY KEY,
    address text NOT NULL,
    name text,
    location text,
    owner text,
    status text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS rewards (
    id bigserial PRIMARY KEY,
    hotspot_id bigint NOT NULL REFERENCES hotspots (id) ON DELETE CASCADE,
    amount numeric(20, 8) NOT NULL,
    currency text NOT NULL,
    timestamp timestamptz NOT NULL DEFAULT now()
);
