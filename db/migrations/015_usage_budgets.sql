-- 015_usage_budgets: append-only LLM usage records per agent (provider, model, tokens, cache
-- tokens, estimated cost), per-agent monthly budgets with a running rollup kept by the
-- agent_usage_rollup trigger, which raises budget.warned and budget.exceeded notifications
-- once each per month; check_agent_budget() for enforcement and recompute_agent_budget().

-- Budget months follow the workspace's time zone, whatever the session's TimeZone is.
CREATE OR REPLACE FUNCTION hq_month_start(p_at timestamptz) RETURNS date
LANGUAGE sql STABLE AS $$
  SELECT date_trunc('month', p_at AT TIME ZONE
                    coalesce((SELECT timezone FROM workspace WHERE id = 1), 'UTC'))::date
$$;

CREATE TABLE IF NOT EXISTS agent_usage (
  id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent_id            uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
  occurred_at         timestamptz NOT NULL DEFAULT now(),
  provider            text NOT NULL,
  model               text NOT NULL,
  input_tokens        bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
  output_tokens       bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
  cache_read_tokens   bigint NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
  cache_write_tokens  bigint NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0),
  cost_usd            numeric(14, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
  request_id          text UNIQUE,
  task_id             uuid REFERENCES tasks (id) ON DELETE SET NULL,
  metadata            jsonb NOT NULL DEFAULT '{}'::jsonb
);
COMMENT ON TABLE agent_usage IS 'Append-only LLM call records; request_id makes a retried report idempotent.';
CREATE INDEX IF NOT EXISTS agent_usage_agent_time_idx ON agent_usage (agent_id, occurred_at DESC);

CREATE OR REPLACE FUNCTION agent_usage_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  -- Deleting an agent cascades to its usage (a foreign-key trigger, hence the depth).
  IF TG_OP = 'DELETE' AND pg_trigger_depth() > 1 THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'agent_usage is append-only: usage records cannot be changed or deleted'
    USING ERRCODE = '55000';
END $$;
CREATE OR REPLACE TRIGGER agent_usage_append_only BEFORE UPDATE OR DELETE ON agent_usage
  FOR EACH ROW EXECUTE FUNCTION agent_usage_append_only();

CREATE TABLE IF NOT EXISTS agent_budgets (
  agent_id              uuid PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
  monthly_limit_usd     numeric(12, 2) CHECK (monthly_limit_usd >= 0),
  warn_ratio            numeric(4, 3) CHECK (warn_ratio > 0 AND warn_ratio <= 1),
  hard_stop             boolean NOT NULL DEFAULT true,
  period_start          date NOT NULL DEFAULT hq_month_start(now()),
  period_cost_usd       numeric(14, 6) NOT NULL DEFAULT 0,
  period_input_tokens   bigint NOT NULL DEFAULT 0,
  period_output_tokens  bigint NOT NULL DEFAULT 0,
  period_calls          integer NOT NULL DEFAULT 0,
  status                budget_status NOT NULL DEFAULT 'ok',
  warned_at             timestamptz,
  exceeded_at           timestamptz,
  updated_at            timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN agent_budgets.monthly_limit_usd IS 'NULL: the workspace default_monthly_budget_usd applies; no limit when both are NULL.';
COMMENT ON COLUMN agent_budgets.warn_ratio IS 'NULL: the workspace budget_warn_ratio applies.';

-- Move the budget's status up to what its spend warrants, notifying once per threshold and
-- month. A status never moves down inside a month (a raised limit is for recompute).
CREATE OR REPLACE FUNCTION agent_budget_evaluate(p_agent_id uuid) RETURNS agent_budgets
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  b agent_budgets;
  v_limit numeric;
  v_warn numeric;
  v_slug text;
BEGIN
  SELECT * INTO b FROM agent_budgets WHERE agent_id = p_agent_id FOR UPDATE;
  SELECT coalesce(b.monthly_limit_usd, w.default_monthly_budget_usd),
         coalesce(b.warn_ratio, w.budget_warn_ratio)
    INTO v_limit, v_warn FROM workspace w WHERE w.id = 1;
  IF v_limit IS NULL THEN
    RETURN b;
  END IF;
  SELECT slug INTO v_slug FROM agents WHERE id = p_agent_id;
  -- The status follows the spend even when the threshold was already notified this month
  -- (after a raised limit and a recompute, spend can cross the new limit again).
  IF b.period_cost_usd >= v_limit * v_warn THEN
    b.status := greatest(b.status, 'warned');
    IF b.warned_at IS NULL THEN
      b.warned_at := now();
      PERFORM notify_operator('budget.warned',
        format('Agent %s has used %s%% of its monthly budget', v_slug,
               round(100 * b.period_cost_usd / nullif(v_limit, 0))),
        format('$%s of $%s spent since %s.', round(b.period_cost_usd, 2), v_limit, b.period_start),
        'warning', p_agent_id, 'agent', p_agent_id::text,
        jsonb_build_object('spent_usd', b.period_cost_usd, 'limit_usd', v_limit, 'period_start', b.period_start),
        'budget.warned:' || p_agent_id || ':' || b.period_start);
    END IF;
  END IF;
  IF b.period_cost_usd >= v_limit THEN
    b.status := 'exceeded';
    IF b.exceeded_at IS NULL THEN
      b.exceeded_at := now();
      PERFORM notify_operator('budget.exceeded',
        format('Agent %s has exceeded its monthly budget', v_slug),
        format('$%s of $%s spent since %s.%s', round(b.period_cost_usd, 2), v_limit, b.period_start,
               CASE WHEN b.hard_stop THEN ' New work is blocked until the budget is raised or the month ends.' ELSE '' END),
        'error', p_agent_id, 'agent', p_agent_id::text,
        jsonb_build_object('spent_usd', b.period_cost_usd, 'limit_usd', v_limit, 'period_start', b.period_start),
        'budget.exceeded:' || p_agent_id || ':' || b.period_start);
    END IF;
  END IF;
  UPDATE agent_budgets SET status = b.status, warned_at = b.warned_at, exceeded_at = b.exceeded_at,
                           updated_at = now()
   WHERE agent_id = p_agent_id
  RETURNING * INTO b;
  RETURN b;
END $$;

-- The rollup: add each usage row to its agent's current month (a new month starts afresh;
-- a row dated before the current period only stays in agent_usage).
CREATE OR REPLACE FUNCTION agent_usage_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_month date := hq_month_start(NEW.occurred_at);
BEGIN
  INSERT INTO agent_budgets (agent_id, period_start) VALUES (NEW.agent_id, v_month)
  ON CONFLICT (agent_id) DO NOTHING;
  -- Rows are locked: concurrent usage of one agent is added up one row at a time.
  UPDATE agent_budgets
     SET period_start = v_month, period_cost_usd = 0, period_input_tokens = 0,
         period_output_tokens = 0, period_calls = 0, status = 'ok',
         warned_at = NULL, exceeded_at = NULL
   WHERE agent_id = NEW.agent_id AND period_start < v_month;
  UPDATE agent_budgets
     SET period_cost_usd = period_cost_usd + NEW.cost_usd,
         period_input_tokens = period_input_tokens + NEW.input_tokens,
         period_output_tokens = period_output_tokens + NEW.output_tokens,
         period_calls = period_calls + 1,
         updated_at = now()
   WHERE agent_id = NEW.agent_id AND period_start = v_month;
  IF FOUND THEN
    PERFORM agent_budget_evaluate(NEW.agent_id);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER agent_usage_rollup AFTER INSERT ON agent_usage
  FOR EACH ROW EXECUTE FUNCTION agent_usage_rollup();

-- Rebuild an agent's current month from agent_usage (after a limit change or a repair).
CREATE OR REPLACE FUNCTION recompute_agent_budget(p_agent_id uuid) RETURNS agent_budgets
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_month date := hq_month_start(now());
BEGIN
  INSERT INTO agent_budgets (agent_id, period_start) VALUES (p_agent_id, v_month)
  ON CONFLICT (agent_id) DO NOTHING;
  UPDATE agent_budgets b
     SET period_start = v_month,
         period_cost_usd = s.cost, period_input_tokens = s.input_tokens,
         period_output_tokens = s.output_tokens, period_calls = s.calls,
         status = 'ok',
         warned_at = CASE WHEN b.period_start = v_month THEN b.warned_at END,
         exceeded_at = CASE WHEN b.period_start = v_month THEN b.exceeded_at END
    FROM (SELECT coalesce(sum(cost_usd), 0) AS cost, coalesce(sum(input_tokens), 0) AS input_tokens,
                 coalesce(sum(output_tokens), 0) AS output_tokens, count(*)::integer AS calls
            FROM agent_usage
           WHERE agent_id = p_agent_id AND hq_month_start(occurred_at) = v_month) s
   WHERE b.agent_id = p_agent_id;
  -- Keep the thresholds already notified this month; re-derive the status from spend.
  UPDATE agent_budgets b
     SET status = CASE
           WHEN lim.v IS NULL THEN 'ok'
           WHEN b.period_cost_usd >= lim.v THEN 'exceeded'
           WHEN b.period_cost_usd >= lim.v * lim.w THEN 'warned'
           ELSE 'ok' END::budget_status
    FROM (SELECT coalesce(bb.monthly_limit_usd, w.default_monthly_budget_usd) AS v,
                 coalesce(bb.warn_ratio, w.budget_warn_ratio) AS w
            FROM agent_budgets bb, workspace w WHERE bb.agent_id = p_agent_id AND w.id = 1) lim
   WHERE b.agent_id = p_agent_id;
  RETURN agent_budget_evaluate(p_agent_id);
END $$;

-- Enforcement: may this agent start more paid work now?
CREATE OR REPLACE FUNCTION check_agent_budget(p_agent_id uuid)
RETURNS TABLE (allowed boolean, status budget_status, spent_usd numeric, limit_usd numeric,
               period_start date)
LANGUAGE sql STABLE AS $$
  SELECT NOT coalesce(coalesce(b.hard_stop, true) AND b.period_start = hq_month_start(now())
              AND b.period_cost_usd >= coalesce(b.monthly_limit_usd, w.default_monthly_budget_usd), false),
         CASE WHEN b.period_start = hq_month_start(now()) THEN b.status ELSE 'ok' END,
         CASE WHEN b.period_start = hq_month_start(now()) THEN b.period_cost_usd ELSE 0 END,
         coalesce(b.monthly_limit_usd, w.default_monthly_budget_usd),
         hq_month_start(now())
    FROM agents a
    CROSS JOIN workspace w
    LEFT JOIN agent_budgets b ON b.agent_id = a.id
   WHERE a.id = p_agent_id AND w.id = 1
$$;

CREATE OR REPLACE TRIGGER agent_budgets_updated_at BEFORE UPDATE ON agent_budgets
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
