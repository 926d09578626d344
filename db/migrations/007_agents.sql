-- 007_agents: the agent registry (slug, status, gateway, template metadata), the org chart
-- (reports_to_id), agent_reports_chain() returning an agent's manager chain, and a trigger
-- that rejects a manager assignment that would close a reporting cycle.

CREATE TABLE IF NOT EXISTS agents (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  slug           text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  name           text NOT NULL,
  role           text,
  description    text,
  status         agent_status NOT NULL DEFAULT 'idle',
  gateway_id     uuid REFERENCES gateways (id) ON DELETE SET NULL,
  reports_to_id  uuid REFERENCES agents (id) ON DELETE SET NULL,
  model          text,
  template       jsonb NOT NULL DEFAULT '{}'::jsonb,
  config         jsonb NOT NULL DEFAULT '{}'::jsonb,
  avatar_url     text,
  last_seen_at   timestamptz,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT agents_no_self_report CHECK (reports_to_id IS NULL OR reports_to_id <> id)
);
CREATE INDEX IF NOT EXISTS agents_reports_to_idx ON agents (reports_to_id);
CREATE INDEX IF NOT EXISTS agents_gateway_idx ON agents (gateway_id);
COMMENT ON COLUMN agents.template IS 'Metadata of the template the agent was created from.';
CREATE OR REPLACE TRIGGER agents_updated_at BEFORE UPDATE ON agents
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- The agent itself (depth 0), its manager (1), that one's manager (2), ... up to p_max_depth.
-- A chain that loops back on itself stops at the repeat instead of recursing forever.
CREATE OR REPLACE FUNCTION agent_reports_chain(p_agent_id uuid, p_max_depth integer DEFAULT 32)
RETURNS TABLE (depth integer, agent_id uuid, slug text, name text)
LANGUAGE sql STABLE AS $$
  WITH RECURSIVE chain AS (
    SELECT 0 AS depth, a.id, a.slug, a.name, a.reports_to_id, ARRAY[a.id] AS seen
      FROM agents a
     WHERE a.id = p_agent_id
    UNION ALL
    SELECT c.depth + 1, m.id, m.slug, m.name, m.reports_to_id, c.seen || m.id
      FROM chain c
      JOIN agents m ON m.id = c.reports_to_id
     WHERE c.depth < p_max_depth
       AND NOT m.id = ANY (c.seen)
  )
  SELECT depth, id, slug, name FROM chain ORDER BY depth
$$;

CREATE OR REPLACE FUNCTION agents_reject_reporting_cycle() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.reports_to_id IS NULL THEN
    RETURN NEW;
  END IF;
  -- Serialise manager changes: two concurrent changes (a -> b, b -> a) would each pass alone.
  -- The chain below is read after the lock, so it sees the other change once committed.
  PERFORM pg_advisory_xact_lock(hashtext('hq.agents.reports_to'));
  -- Under REPEATABLE READ or SERIALIZABLE the chain is read from the transaction's snapshot,
  -- which the lock does not refresh. Share-locking the rows of that chain makes a manager
  -- change committed since the snapshot fail with a serialization error instead of going
  -- unseen: the first changed row on the real path to a cycle is always on the stale chain.
  PERFORM 1 FROM agents a
   WHERE a.id IN (SELECT c.agent_id FROM agent_reports_chain(NEW.reports_to_id, 1000) c)
     FOR SHARE OF a;
  IF EXISTS (
    SELECT 1 FROM agent_reports_chain(NEW.reports_to_id, 1000) c WHERE c.agent_id = NEW.id
  ) THEN
    RAISE EXCEPTION 'agent % cannot report to %: that would create a reporting cycle',
      NEW.slug, (SELECT slug FROM agents WHERE id = NEW.reports_to_id)
      USING ERRCODE = '23514';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER agents_reject_reporting_cycle
  BEFORE INSERT OR UPDATE OF reports_to_id ON agents
  FOR EACH ROW EXECUTE FUNCTION agents_reject_reporting_cycle();
