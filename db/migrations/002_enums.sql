-- 002_enums: the enum types shared across tables.
-- Each type is created once (a guarded block per type) and later files may only add values
-- (ALTER TYPE ... ADD VALUE IF NOT EXISTS), so re-running this file changes nothing.

DO $$
DECLARE
  spec record;
BEGIN
  FOR spec IN
    SELECT * FROM (VALUES
      ('agent_status',          ARRAY['active', 'idle', 'paused', 'error', 'offline', 'archived']),
      ('gateway_status',        ARRAY['pending', 'online', 'offline', 'disabled']),
      ('task_status',           ARRAY['todo', 'in_progress', 'blocked', 'review', 'done', 'cancelled']),
      ('task_priority',         ARRAY['low', 'medium', 'high', 'urgent']),
      ('interaction_kind',      ARRAY['call', 'email', 'message', 'meeting', 'note', 'other']),
      ('interaction_direction', ARRAY['inbound', 'outbound', 'internal']),
      ('actor_kind',            ARRAY['operator', 'agent', 'system']),
      ('queue_status',          ARRAY['pending', 'leased', 'running', 'completed', 'failed', 'cancelled']),
      ('asset_type',            ARRAY['sop', 'research', 'image', 'video', 'audio', 'template',
                                      'script', 'spreadsheet', 'link', 'other']),
      ('content_format',        ARRAY['tiptap', 'markdown', 'html']),
      ('embedding_status',      ARRAY['pending', 'processing', 'indexed', 'failed']),
      ('notification_severity', ARRAY['info', 'warning', 'error']),
      ('budget_status',         ARRAY['ok', 'warned', 'exceeded'])
    ) AS t(name, labels)
  LOOP
    IF NOT EXISTS (
      SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE t.typname = spec.name AND n.nspname = current_schema()
    ) THEN
      EXECUTE format('CREATE TYPE %I AS ENUM (%s)', spec.name,
        (SELECT string_agg(quote_literal(l), ', ') FROM unnest(spec.labels) AS l));
    END IF;
  END LOOP;
END $$;
