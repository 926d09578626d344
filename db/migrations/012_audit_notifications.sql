-- 012_audit_notifications: the append-style audit log of important UI and system actions,
-- and operator-visible notifications (budget warnings, command outcomes, ...), which can be
-- de-duplicated by key and marked read or dismissed.

CREATE TABLE IF NOT EXISTS audit_log (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  occurred_at  timestamptz NOT NULL DEFAULT now(),
  actor_kind   actor_kind NOT NULL DEFAULT 'system',
  actor_id     text,
  action       text NOT NULL CHECK (action ~ '^[a-z_]+(\.[a-z_]+)+$'),
  entity_type  text,
  entity_id    text,
  details      jsonb NOT NULL DEFAULT '{}'::jsonb
);
COMMENT ON TABLE audit_log IS 'Append-style audit events; action is dotted, e.g. workspace.setup_completed.';
CREATE INDEX IF NOT EXISTS audit_log_entity_idx ON audit_log (entity_type, entity_id, occurred_at DESC);
CREATE INDEX IF NOT EXISTS audit_log_time_idx ON audit_log (occurred_at DESC);

CREATE TABLE IF NOT EXISTS notifications (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  kind          text NOT NULL CHECK (kind ~ '^[a-z_]+(\.[a-z_]+)+$'),
  severity      notification_severity NOT NULL DEFAULT 'info',
  title         text NOT NULL,
  body          text,
  agent_id      uuid REFERENCES agents (id) ON DELETE CASCADE,
  entity_type   text,
  entity_id     text,
  data          jsonb NOT NULL DEFAULT '{}'::jsonb,
  dedup_key     text UNIQUE,
  read_at       timestamptz,
  dismissed_at  timestamptz,
  created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN notifications.dedup_key IS 'A second notification with the same key is not created.';
CREATE INDEX IF NOT EXISTS notifications_unread_idx ON notifications (created_at DESC)
  WHERE read_at IS NULL AND dismissed_at IS NULL;

-- Create a notification unless one with the same dedup key exists; returns its id or NULL.
CREATE OR REPLACE FUNCTION notify_operator(p_kind text, p_title text, p_body text DEFAULT NULL,
                                           p_severity notification_severity DEFAULT 'info',
                                           p_agent_id uuid DEFAULT NULL,
                                           p_entity_type text DEFAULT NULL,
                                           p_entity_id text DEFAULT NULL,
                                           p_data jsonb DEFAULT '{}'::jsonb,
                                           p_dedup_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_id uuid;
BEGIN
  INSERT INTO notifications (kind, title, body, severity, agent_id, entity_type, entity_id, data, dedup_key)
  VALUES (p_kind, p_title, p_body, p_severity, p_agent_id, p_entity_type, p_entity_id,
          coalesce(p_data, '{}'::jsonb), p_dedup_key)
  ON CONFLICT (dedup_key) DO NOTHING
  RETURNING id INTO v_id;
  RETURN v_id;
END $$;
