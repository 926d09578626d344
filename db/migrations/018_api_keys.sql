-- 018_api_keys: API keys of the knowledge service. A key is shown once, when it is created;
-- only its SHA-256 is stored (keys are 256 random bits, so a fast hash is enough), with a
-- short prefix to recognise it in lists. `scope` is what the key may do (read < write <
-- admin); `agent_slug` binds a key to one agent, which then is who its caller is. A revoked
-- key stays as a row (revoked_at) so that lists and audits keep its name. Row-level security
-- is on with no policy: only the table's owner (the service) reads it, never Supabase's
-- `anon` or `authenticated` roles through its REST API.

CREATE TABLE IF NOT EXISTS api_keys (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name         text NOT NULL CHECK (btrim(name) <> '' AND length(name) <= 100),
  prefix       text NOT NULL CHECK (length(prefix) BETWEEN 4 AND 32),
  key_hash     bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
  scope        text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
  agent_slug   text CHECK (agent_slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at   timestamptz
);
COMMENT ON TABLE api_keys IS 'API keys of the knowledge service: SHA-256 of each key, its scope and optional agent.';

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    EXECUTE 'REVOKE ALL ON api_keys FROM anon';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    EXECUTE 'REVOKE ALL ON api_keys FROM authenticated';
  END IF;
END $$;
