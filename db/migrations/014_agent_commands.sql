-- 014_agent_commands: the command queue the runner daemon on each gateway consumes (agent
-- start/stop/restart, config sync, system operations), with leases, attempts and results;
-- the RPCs lease_command, start_command, complete_command and fail_command; an operator
-- notification when a command fails for good; NOTIFY hq_agent_commands on insert.

CREATE TABLE IF NOT EXISTS agent_commands (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  gateway_id        uuid REFERENCES gateways (id) ON DELETE CASCADE,
  agent_id          uuid REFERENCES agents (id) ON DELETE CASCADE,
  command           text NOT NULL CHECK (command ~ '^[a-z_]+(\.[a-z_]+)*$'),
  payload           jsonb NOT NULL DEFAULT '{}'::jsonb,
  status            queue_status NOT NULL DEFAULT 'pending',
  priority          integer NOT NULL DEFAULT 0,
  attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts      integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
  available_at      timestamptz NOT NULL DEFAULT now(),
  lease_owner       uuid,
  lease_expires_at  timestamptz,
  started_at        timestamptz,
  completed_at      timestamptz,
  result            jsonb,
  error             text,
  requested_by      actor_kind NOT NULL DEFAULT 'operator',
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT agent_commands_has_target CHECK (gateway_id IS NOT NULL OR agent_id IS NOT NULL)
);
COMMENT ON COLUMN agent_commands.gateway_id IS 'The gateway that must run it; NULL means the agent''s current gateway.';
CREATE INDEX IF NOT EXISTS agent_commands_ready_idx ON agent_commands (priority DESC, available_at)
  WHERE status IN ('pending', 'leased', 'running');
CREATE INDEX IF NOT EXISTS agent_commands_agent_idx ON agent_commands (agent_id, created_at DESC);
CREATE OR REPLACE TRIGGER agent_commands_updated_at BEFORE UPDATE ON agent_commands
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE OR REPLACE FUNCTION notify_command_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('hq_agent_commands',
    json_build_object('id', NEW.id, 'gateway_id', NEW.gateway_id, 'agent_id', NEW.agent_id)::text);
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER agent_commands_notify AFTER INSERT ON agent_commands
  FOR EACH ROW EXECUTE FUNCTION notify_command_insert();

-- Lease up to p_limit commands for one gateway: pending and available, or leased/running
-- with an expired lease (the gateway died). Each lease counts as an attempt; an expired
-- lease on the last attempt fails the command instead. Concurrent callers never receive the
-- same command (SKIP LOCKED).
CREATE OR REPLACE FUNCTION lease_command(p_gateway_id uuid, p_lease_seconds integer DEFAULT 60,
                                         p_limit integer DEFAULT 1)
RETURNS SETOF agent_commands
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_cmd agent_commands;
BEGIN
  IF p_gateway_id IS NULL THEN
    RAISE EXCEPTION 'p_gateway_id is required' USING ERRCODE = '22023';
  END IF;
  IF p_lease_seconds IS NULL OR p_lease_seconds < 1 OR p_limit IS NULL OR p_limit < 1 THEN
    RAISE EXCEPTION 'p_lease_seconds and p_limit must be positive' USING ERRCODE = '22023';
  END IF;
  UPDATE gateways SET last_heartbeat_at = now(), status = 'online'
   WHERE id = p_gateway_id AND status <> 'disabled';
  FOR v_cmd IN
    UPDATE agent_commands c
       SET status = 'failed', completed_at = now(), lease_owner = NULL, lease_expires_at = NULL,
           error = coalesce(c.error || ' / ', '') || 'lease expired on the last attempt'
     WHERE c.status IN ('leased', 'running') AND c.lease_expires_at <= now()
       AND c.attempts >= c.max_attempts
       AND coalesce(c.gateway_id, (SELECT a.gateway_id FROM agents a WHERE a.id = c.agent_id)) = p_gateway_id
    RETURNING c.*
  LOOP
    PERFORM command_failed_notification(v_cmd);
  END LOOP;
  RETURN QUERY
  WITH ready AS (
    SELECT c.id FROM agent_commands c
      LEFT JOIN agents a ON a.id = c.agent_id
     WHERE coalesce(c.gateway_id, a.gateway_id) = p_gateway_id
       AND ((c.status = 'pending' AND c.available_at <= now())
            OR (c.status IN ('leased', 'running') AND c.lease_expires_at <= now()
                AND c.attempts < c.max_attempts))
     ORDER BY c.priority DESC, c.available_at, c.created_at
     LIMIT p_limit
     FOR UPDATE OF c SKIP LOCKED
  )
  UPDATE agent_commands c
     SET status = 'leased', attempts = c.attempts + 1, lease_owner = p_gateway_id,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds), started_at = NULL
    FROM ready
   WHERE c.id = ready.id
  RETURNING c.*;
END $$;

CREATE OR REPLACE FUNCTION start_command(p_command_id uuid, p_gateway_id uuid,
                                         p_lease_seconds integer DEFAULT 300)
RETURNS agent_commands
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_cmd agent_commands;
BEGIN
  UPDATE agent_commands
     SET status = 'running', started_at = now(),
         lease_expires_at = now() + make_interval(secs => p_lease_seconds)
   WHERE id = p_command_id AND status = 'leased' AND lease_owner = p_gateway_id
     AND lease_expires_at > now()
  RETURNING * INTO v_cmd;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'command % is not leased by gateway % (or its lease expired)', p_command_id, p_gateway_id
      USING ERRCODE = '55000';
  END IF;
  RETURN v_cmd;
END $$;

CREATE OR REPLACE FUNCTION complete_command(p_command_id uuid, p_gateway_id uuid,
                                            p_result jsonb DEFAULT NULL)
RETURNS agent_commands
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_cmd agent_commands;
BEGIN
  UPDATE agent_commands
     SET status = 'completed', completed_at = now(), result = p_result, error = NULL,
         lease_owner = NULL, lease_expires_at = NULL
   WHERE id = p_command_id AND status IN ('leased', 'running') AND lease_owner = p_gateway_id
  RETURNING * INTO v_cmd;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'command % is not leased by gateway %', p_command_id, p_gateway_id
      USING ERRCODE = '55000';
  END IF;
  RETURN v_cmd;
END $$;

CREATE OR REPLACE FUNCTION command_failed_notification(p_cmd agent_commands) RETURNS void
LANGUAGE sql VOLATILE AS $$
  SELECT notify_operator('command.failed', 'Command ' || p_cmd.command || ' failed',
                         p_cmd.error, 'error', p_cmd.agent_id, 'agent_command', p_cmd.id::text,
                         jsonb_build_object('command', p_cmd.command, 'attempts', p_cmd.attempts),
                         'command.failed:' || p_cmd.id)
$$;

-- Record a failure. With p_retry and attempts left, the command goes back to pending after
-- an exponential back-off; otherwise it fails for good and the operator is notified.
CREATE OR REPLACE FUNCTION fail_command(p_command_id uuid, p_gateway_id uuid, p_error text,
                                        p_retry boolean DEFAULT true,
                                        p_retry_delay_seconds integer DEFAULT 10)
RETURNS agent_commands
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_cmd agent_commands;
BEGIN
  UPDATE agent_commands
     SET status = CASE WHEN p_retry AND attempts < max_attempts THEN 'pending' ELSE 'failed' END::queue_status,
         available_at = CASE WHEN p_retry AND attempts < max_attempts
                             THEN now() + make_interval(secs => greatest(p_retry_delay_seconds, 0)
                                                                * power(2, attempts - 1))
                             ELSE available_at END,
         completed_at = CASE WHEN p_retry AND attempts < max_attempts THEN NULL ELSE now() END,
         error = p_error, lease_owner = NULL, lease_expires_at = NULL
   WHERE id = p_command_id AND status IN ('leased', 'running') AND lease_owner = p_gateway_id
  RETURNING * INTO v_cmd;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'command % is not leased by gateway %', p_command_id, p_gateway_id
      USING ERRCODE = '55000';
  END IF;
  IF v_cmd.status = 'failed' THEN
    PERFORM command_failed_notification(v_cmd);
  END IF;
  RETURN v_cmd;
END $$;
