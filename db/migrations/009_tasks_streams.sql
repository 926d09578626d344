-- 009_tasks_streams: streams (task lanes), tasks for the operator and agents, recurring
-- task series, and spawn_due_task_series(), which creates the tasks a series owes. Where
-- pg_cron exists it runs every minute; elsewhere the service calls it.

CREATE TABLE IF NOT EXISTS streams (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  key          text NOT NULL UNIQUE CHECK (key ~ '^[a-z0-9][a-z0-9_-]*$'),
  name         text NOT NULL,
  description  text,
  color        text,
  position     integer NOT NULL DEFAULT 0,
  is_default   boolean NOT NULL DEFAULT false,
  archived_at  timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS streams_one_default ON streams (is_default) WHERE is_default;
CREATE OR REPLACE TRIGGER streams_updated_at BEFORE UPDATE ON streams
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

INSERT INTO streams (key, name, position, is_default) VALUES ('general', 'General', 0, true)
ON CONFLICT (key) DO NOTHING;

CREATE TABLE IF NOT EXISTS task_series (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  title              text NOT NULL,
  description        text,
  stream_id          uuid REFERENCES streams (id) ON DELETE SET NULL,
  assignee_agent_id  uuid REFERENCES agents (id) ON DELETE SET NULL,
  priority           task_priority NOT NULL DEFAULT 'medium',
  every              interval NOT NULL CHECK (every >= interval '1 minute'),
  timezone           text NOT NULL DEFAULT 'UTC',
  next_run_at        timestamptz NOT NULL,
  last_run_at        timestamptz,
  ends_at            timestamptz,
  active             boolean NOT NULL DEFAULT true,
  task_defaults      jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS task_series_due_idx ON task_series (next_run_at) WHERE active;
CREATE OR REPLACE TRIGGER task_series_updated_at BEFORE UPDATE ON task_series
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS tasks (
  id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  title                text NOT NULL CHECK (btrim(title) <> ''),
  description          text,
  status               task_status NOT NULL DEFAULT 'todo',
  priority             task_priority NOT NULL DEFAULT 'medium',
  stream_id            uuid REFERENCES streams (id) ON DELETE SET NULL,
  assignee_agent_id    uuid REFERENCES agents (id) ON DELETE SET NULL,
  created_by_agent_id  uuid REFERENCES agents (id) ON DELETE SET NULL,
  contact_id           uuid REFERENCES contacts (id) ON DELETE SET NULL,
  organization_id      uuid REFERENCES organizations (id) ON DELETE SET NULL,
  campaign_id          uuid REFERENCES campaigns (id) ON DELETE SET NULL,
  series_id            uuid REFERENCES task_series (id) ON DELETE SET NULL,
  series_run_at        timestamptz,
  due_at               timestamptz,
  scheduled_for        timestamptz,
  started_at           timestamptz,
  completed_at         timestamptz,
  position             integer NOT NULL DEFAULT 0,
  tags                 text[] NOT NULL DEFAULT '{}',
  metadata             jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tasks_stream_status_idx ON tasks (stream_id, status);
CREATE INDEX IF NOT EXISTS tasks_assignee_status_idx ON tasks (assignee_agent_id, status);
CREATE INDEX IF NOT EXISTS tasks_due_idx ON tasks (due_at) WHERE status NOT IN ('done', 'cancelled');
-- One task per series occurrence, even when two schedulers run at once.
CREATE UNIQUE INDEX IF NOT EXISTS tasks_series_run_key ON tasks (series_id, series_run_at)
  WHERE series_id IS NOT NULL;
CREATE OR REPLACE TRIGGER tasks_updated_at BEFORE UPDATE ON tasks
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- started_at / completed_at follow the status.
CREATE OR REPLACE FUNCTION tasks_track_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    IF NEW.status = 'in_progress' AND NEW.started_at IS NULL THEN
      NEW.started_at := now();
    END IF;
    IF NEW.status = 'done' THEN
      NEW.completed_at := coalesce(NEW.completed_at, now());
    ELSIF NEW.status <> 'cancelled' THEN
      NEW.completed_at := NULL;
    END IF;
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER tasks_track_status BEFORE INSERT OR UPDATE OF status ON tasks
  FOR EACH ROW EXECUTE FUNCTION tasks_track_status();

-- Create the tasks every active series owes up to p_now (several if it fell behind: the
-- newest p_max_per_series of them) and move next_run_at past p_now. Returns the number created.
CREATE OR REPLACE FUNCTION spawn_due_task_series(p_now timestamptz DEFAULT now(),
                                                 p_max_per_series integer DEFAULT 10)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  s task_series;
  v_run timestamptz;
  v_n integer;
  v_owed integer;
  v_created integer := 0;
BEGIN
  FOR s IN
    SELECT * FROM task_series
     WHERE active AND next_run_at <= p_now AND (ends_at IS NULL OR next_run_at <= ends_at)
     ORDER BY next_run_at
     FOR UPDATE SKIP LOCKED
  LOOP
    v_run := s.next_run_at;
    -- Far behind: skip the oldest missed occurrences and create the newest p_max_per_series.
    -- The count is exact for fixed intervals and close for calendar ones; v_n caps either way.
    v_owed := floor(extract(epoch FROM p_now - v_run) / extract(epoch FROM s.every))::integer + 1;
    IF v_owed > p_max_per_series THEN
      v_run := v_run + s.every * (v_owed - p_max_per_series);
    END IF;
    v_n := 0;
    WHILE v_run <= p_now AND (s.ends_at IS NULL OR v_run <= s.ends_at) LOOP
      IF v_n < p_max_per_series THEN
        INSERT INTO tasks (title, description, priority, stream_id, assignee_agent_id,
                           series_id, series_run_at, scheduled_for, metadata)
        VALUES (s.title, s.description, s.priority, s.stream_id, s.assignee_agent_id,
                s.id, v_run, v_run, s.task_defaults)
        ON CONFLICT (series_id, series_run_at) WHERE series_id IS NOT NULL DO NOTHING;
        IF FOUND THEN
          v_created := v_created + 1;
        END IF;
        v_n := v_n + 1;
      END IF;
      v_run := v_run + s.every;
    END LOOP;
    UPDATE task_series
       SET next_run_at = v_run, last_run_at = p_now,
           active = (ends_at IS NULL OR v_run <= ends_at)
     WHERE id = s.id;
  END LOOP;
  RETURN v_created;
END $$;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
    PERFORM cron.schedule('hq-spawn-task-series', '* * * * *', 'SELECT spawn_due_task_series()');
  ELSE
    RAISE NOTICE 'pg_cron is not installed: recurring tasks are spawned by the service calling spawn_due_task_series()';
  END IF;
END $$;
