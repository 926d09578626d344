-- 013_agent_inbox: the agents' background-work queue (agent_inbox_items) with leases, retry
-- counters, back-off, dedup keys and a final failed state; its RPCs lease_inbox_item,
-- complete_inbox_item and fail_inbox_item; enqueue_inbox_item; the inbox triggers (a task
-- assigned to an agent, a comment on its task or mentioning it); and automation_rules, which
-- turn task, comment, contact, organization and interaction changes into inbox items.

CREATE TABLE IF NOT EXISTS agent_inbox_items (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  agent_id          uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
  kind              text NOT NULL CHECK (kind ~ '^[a-z_]+(\.[a-z_]+)*$'),
  title             text NOT NULL,
  payload           jsonb NOT NULL DEFAULT '{}'::jsonb,
  source_type       text,
  source_id         uuid,
  rule_id           uuid,
  dedup_key         text,
  status            queue_status NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'leased', 'completed', 'failed', 'cancelled')),
  priority          integer NOT NULL DEFAULT 0,
  attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts      integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
  available_at      timestamptz NOT NULL DEFAULT now(),
  lease_owner       text,
  lease_expires_at  timestamptz,
  last_error        text,
  result            jsonb,
  completed_at      timestamptz,
  failed_at         timestamptz,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN agent_inbox_items.dedup_key IS 'While an item with this key is open (pending or leased) for the agent, another is not enqueued.';
CREATE UNIQUE INDEX IF NOT EXISTS agent_inbox_items_open_dedup
  ON agent_inbox_items (agent_id, dedup_key)
  WHERE dedup_key IS NOT NULL AND status IN ('pending', 'leased');
CREATE INDEX IF NOT EXISTS agent_inbox_items_ready_idx
  ON agent_inbox_items (agent_id, priority DESC, available_at)
  WHERE status IN ('pending', 'leased');
CREATE OR REPLACE TRIGGER agent_inbox_items_updated_at BEFORE UPDATE ON agent_inbox_items
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Wake dispatchers on plain Postgres (LISTEN hq_agent_inbox); Supabase uses Realtime (016).
CREATE OR REPLACE FUNCTION notify_queue_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], json_build_object('id', NEW.id, 'agent_id', NEW.agent_id)::text);
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER agent_inbox_items_notify AFTER INSERT ON agent_inbox_items
  FOR EACH ROW EXECUTE FUNCTION notify_queue_insert('hq_agent_inbox');

-- Enqueue an item; returns its id, or NULL when an open item with the same dedup key exists.
CREATE OR REPLACE FUNCTION enqueue_inbox_item(p_agent_id uuid, p_kind text, p_title text,
                                              p_payload jsonb DEFAULT '{}'::jsonb,
                                              p_dedup_key text DEFAULT NULL,
                                              p_priority integer DEFAULT 0,
                                              p_max_attempts integer DEFAULT 3,
                                              p_source_type text DEFAULT NULL,
                                              p_source_id uuid DEFAULT NULL,
                                              p_rule_id uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_id uuid;
BEGIN
  INSERT INTO agent_inbox_items (agent_id, kind, title, payload, dedup_key, priority, max_attempts,
                                 source_type, source_id, rule_id)
  VALUES (p_agent_id, p_kind, p_title, coalesce(p_payload, '{}'::jsonb), p_dedup_key, p_priority,
          p_max_attempts, p_source_type, p_source_id, p_rule_id)
  ON CONFLICT (agent_id, dedup_key) WHERE dedup_key IS NOT NULL AND status IN ('pending', 'leased')
  DO NOTHING
  RETURNING id INTO v_id;
  RETURN v_id;
END $$;

-- Lease up to p_limit ready items of one agent: pending and available, or leased with an
-- expired lease. Each lease counts as an attempt; an expired lease on the last attempt ends
-- the item failed instead. Concurrent callers never receive the same item (SKIP LOCKED).
CREATE OR REPLACE FUNCTION lease_inbox_item(p_agent_id uuid, p_lease_owner text,
                                            p_lease_seconds integer DEFAULT 300,
                                            p_limit integer DEFAULT 1)
RETURNS SETOF agent_inbox_items
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF p_lease_owner IS NULL OR btrim(p_lease_owner) = '' THEN
    RAISE EXCEPTION 'p_lease_owner must name the leasing worker' USING ERRCODE = '22023';
  END IF;
  IF p_lease_seconds IS NULL OR p_lease_seconds < 1 OR p_limit IS NULL OR p_limit < 1 THEN
    RAISE EXCEPTION 'p_lease_seconds and p_limit must be positive' USING ERRCODE = '22023';
  END IF;
  UPDATE agent_inbox_items
     SET status = 'failed', failed_at = now(), lease_owner = NULL, lease_expires_at = NULL,
         last_error = coalesce(last_error || ' / ', '') || 'lease expired on the last attempt'
   WHERE agent_id = p_agent_id AND status = 'leased' AND lease_expires_at <= now()
     AND attempts >= max_attempts;
  RETURN QUERY
  WITH ready AS (
    SELECT id FROM agent_inbox_items
     WHERE agent_id = p_agent_id
       AND ((status = 'pending' AND available_at <= now())
            OR (status = 'leased' AND lease_expires_at <= now() AND attempts < max_attempts))
     ORDER BY priority DESC, available_at, created_at
     LIMIT p_limit
     FOR UPDATE SKIP LOCKED
  )
  UPDATE agent_inbox_items i
     SET status = 'leased', attempts = i.attempts + 1, lease_owner = p_lease_owner,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds)
    FROM ready
   WHERE i.id = ready.id
  RETURNING i.*;
END $$;

CREATE OR REPLACE FUNCTION complete_inbox_item(p_item_id uuid, p_lease_owner text DEFAULT NULL,
                                               p_result jsonb DEFAULT NULL)
RETURNS agent_inbox_items
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_item agent_inbox_items;
BEGIN
  UPDATE agent_inbox_items
     SET status = 'completed', completed_at = now(), result = p_result,
         lease_owner = NULL, lease_expires_at = NULL
   WHERE id = p_item_id AND status = 'leased'
     AND (p_lease_owner IS NULL OR lease_owner = p_lease_owner)
  RETURNING * INTO v_item;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'inbox item % is not leased%', p_item_id,
      CASE WHEN p_lease_owner IS NULL THEN '' ELSE ' by ' || p_lease_owner END
      USING ERRCODE = '55000';
  END IF;
  RETURN v_item;
END $$;

-- Record a failed attempt: back to pending after an exponential back-off
-- (p_retry_delay_seconds * 2^(attempts-1)), or failed for good after the last attempt.
CREATE OR REPLACE FUNCTION fail_inbox_item(p_item_id uuid, p_error text,
                                           p_lease_owner text DEFAULT NULL,
                                           p_retry_delay_seconds integer DEFAULT 30)
RETURNS agent_inbox_items
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_item agent_inbox_items;
BEGIN
  UPDATE agent_inbox_items
     SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END::queue_status,
         failed_at = CASE WHEN attempts >= max_attempts THEN now() END,
         available_at = CASE WHEN attempts >= max_attempts THEN available_at
                             ELSE now() + make_interval(secs => greatest(p_retry_delay_seconds, 0)
                                                                * power(2, attempts - 1)) END,
         last_error = p_error, lease_owner = NULL, lease_expires_at = NULL
   WHERE id = p_item_id AND status = 'leased'
     AND (p_lease_owner IS NULL OR lease_owner = p_lease_owner)
  RETURNING * INTO v_item;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'inbox item % is not leased%', p_item_id,
      CASE WHEN p_lease_owner IS NULL THEN '' ELSE ' by ' || p_lease_owner END
      USING ERRCODE = '55000';
  END IF;
  RETURN v_item;
END $$;

-- ---- automation rules -------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS automation_rules (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name             text NOT NULL,
  description      text,
  enabled          boolean NOT NULL DEFAULT true,
  event            text NOT NULL CHECK (event IN (
                     'task.created', 'task.updated', 'task.status_changed',
                     'comment.created',
                     'contact.created', 'contact.updated', 'contact.stage_changed',
                     'organization.created', 'organization.updated',
                     'interaction.created')),
  conditions       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(conditions) = 'object'),
  target_agent_id  uuid REFERENCES agents (id) ON DELETE CASCADE,
  target_assignee  boolean NOT NULL DEFAULT false,
  item_kind        text NOT NULL DEFAULT 'automation' CHECK (item_kind ~ '^[a-z_]+(\.[a-z_]+)*$'),
  title_template   text NOT NULL DEFAULT '{event}: {title}',
  priority         integer NOT NULL DEFAULT 0,
  last_fired_at    timestamptz,
  fire_count       bigint NOT NULL DEFAULT 0,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT automation_rules_has_target CHECK (target_agent_id IS NOT NULL OR target_assignee)
);
COMMENT ON COLUMN automation_rules.conditions IS 'The changed row must contain this JSON (jsonb @>), e.g. {"status": "blocked"}.';
COMMENT ON COLUMN automation_rules.target_assignee IS 'Send to the task''s assignee (task and comment events) instead of, or when there is no, target agent.';
COMMENT ON COLUMN automation_rules.title_template IS '{event}, {title} and {id} are replaced.';
CREATE INDEX IF NOT EXISTS automation_rules_event_idx ON automation_rules (event) WHERE enabled;
CREATE OR REPLACE TRIGGER automation_rules_updated_at BEFORE UPDATE ON automation_rules
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Turn one change into inbox items for every enabled rule of that event that matches it.
CREATE OR REPLACE FUNCTION run_automation_rules(p_event text, p_entity_type text, p_row jsonb,
                                                p_assignee uuid DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r automation_rules;
  v_target uuid;
  v_title text;
  v_n integer := 0;
  -- A contact's title column is its job title: name a contact by its name (or email).
  v_label text := CASE WHEN p_entity_type = 'contact'
                       THEN coalesce(nullif(concat_ws(' ', p_row->>'first_name', p_row->>'last_name'), ''),
                                     p_row->>'email', '')
                       ELSE coalesce(p_row->>'title', p_row->>'name', p_row->>'subject', '') END;
BEGIN
  FOR r IN SELECT * FROM automation_rules
            WHERE enabled AND event = p_event AND p_row @> conditions
            ORDER BY created_at
  LOOP
    v_target := CASE WHEN r.target_assignee THEN coalesce(p_assignee, r.target_agent_id)
                     ELSE r.target_agent_id END;
    CONTINUE WHEN v_target IS NULL;
    v_title := replace(replace(replace(r.title_template,
                 '{event}', p_event),
                 '{title}', v_label),
                 '{id}', p_row->>'id');
    IF enqueue_inbox_item(v_target, r.item_kind, v_title,
                          jsonb_build_object('event', p_event, 'entity_type', p_entity_type,
                                             'entity_id', p_row->'id', 'rule', r.name, 'record', p_row),
                          'rule:' || r.id || ':' || p_event || ':' || (p_row->>'id'),
                          r.priority, 3, p_entity_type, (p_row->>'id')::uuid, r.id) IS NOT NULL THEN
      v_n := v_n + 1;
      UPDATE automation_rules SET last_fired_at = now(), fire_count = fire_count + 1 WHERE id = r.id;
    END IF;
  END LOOP;
  RETURN v_n;
END $$;

-- Row triggers: name the event and call the rules; tasks and comments also notify the agents
-- they concern (the built-in inbox triggers).
CREATE OR REPLACE FUNCTION automation_dispatch() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_entity text := TG_ARGV[0];
  v_row jsonb := to_jsonb(NEW);
  v_assignee uuid;
  v_task tasks;
  v_mention uuid;
BEGIN
  IF v_entity = 'task' THEN
    v_assignee := NEW.assignee_agent_id;
    IF TG_OP = 'INSERT' THEN
      PERFORM run_automation_rules('task.created', 'task', v_row, v_assignee);
    ELSE
      IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM run_automation_rules('task.status_changed', 'task', v_row, v_assignee);
      END IF;
      PERFORM run_automation_rules('task.updated', 'task', v_row, v_assignee);
    END IF;
    IF NEW.assignee_agent_id IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.assignee_agent_id IS DISTINCT FROM OLD.assignee_agent_id) THEN
      PERFORM enqueue_inbox_item(NEW.assignee_agent_id, 'task.assigned', 'Task assigned: ' || NEW.title,
                                 jsonb_build_object('task_id', NEW.id),
                                 'task.assigned:' || NEW.id, 0, 3, 'task', NEW.id);
    END IF;
  ELSIF v_entity = 'comment' THEN
    IF NEW.entity_type = 'task' THEN
      SELECT * INTO v_task FROM tasks WHERE id = NEW.entity_id;
      v_assignee := v_task.assignee_agent_id;
      v_row := v_row || jsonb_build_object('title', v_task.title);
      IF v_assignee IS NOT NULL AND v_assignee IS DISTINCT FROM NEW.author_agent_id
         AND NOT v_assignee = ANY (NEW.mentions) THEN
        PERFORM enqueue_inbox_item(v_assignee, 'task.comment', 'New comment on: ' || v_task.title,
                                   jsonb_build_object('task_id', v_task.id, 'comment_id', NEW.id),
                                   'task.comment:' || NEW.id, 0, 3, 'comment', NEW.id);
      END IF;
    END IF;
    FOREACH v_mention IN ARRAY NEW.mentions LOOP
      CONTINUE WHEN v_mention IS NOT DISTINCT FROM NEW.author_agent_id;
      CONTINUE WHEN NOT EXISTS (SELECT 1 FROM agents WHERE id = v_mention);
      PERFORM enqueue_inbox_item(v_mention, 'comment.mention', 'You were mentioned in a comment',
                                 jsonb_build_object('comment_id', NEW.id, 'entity_type', NEW.entity_type,
                                                    'entity_id', NEW.entity_id),
                                 'comment.mention:' || NEW.id, 0, 3, 'comment', NEW.id);
    END LOOP;
    PERFORM run_automation_rules('comment.created', 'comment', v_row, v_assignee);
  ELSIF v_entity = 'contact' THEN
    IF TG_OP = 'INSERT' THEN
      PERFORM run_automation_rules('contact.created', 'contact', v_row);
    ELSE
      IF NEW.pipeline_stage IS DISTINCT FROM OLD.pipeline_stage THEN
        PERFORM run_automation_rules('contact.stage_changed', 'contact', v_row);
      END IF;
      PERFORM run_automation_rules('contact.updated', 'contact', v_row);
    END IF;
  ELSIF v_entity = 'organization' THEN
    PERFORM run_automation_rules(CASE TG_OP WHEN 'INSERT' THEN 'organization.created'
                                            ELSE 'organization.updated' END, 'organization', v_row);
  ELSIF v_entity = 'interaction' THEN
    PERFORM run_automation_rules('interaction.created', 'interaction', v_row);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER tasks_automation AFTER INSERT OR UPDATE ON tasks
  FOR EACH ROW EXECUTE FUNCTION automation_dispatch('task');
CREATE OR REPLACE TRIGGER comments_automation AFTER INSERT ON comments
  FOR EACH ROW EXECUTE FUNCTION automation_dispatch('comment');
-- The interaction sync trigger touches contacts: those updates are bookkeeping, not changes.
CREATE OR REPLACE TRIGGER contacts_automation AFTER INSERT OR UPDATE ON contacts
  FOR EACH ROW WHEN (pg_trigger_depth() < 1)
  EXECUTE FUNCTION automation_dispatch('contact');
CREATE OR REPLACE TRIGGER organizations_automation AFTER INSERT OR UPDATE ON organizations
  FOR EACH ROW WHEN (pg_trigger_depth() < 1)
  EXECUTE FUNCTION automation_dispatch('organization');
CREATE OR REPLACE TRIGGER interactions_automation AFTER INSERT ON interactions
  FOR EACH ROW EXECUTE FUNCTION automation_dispatch('interaction');
