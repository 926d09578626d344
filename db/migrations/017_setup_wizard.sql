-- 017_setup_wizard: complete_setup(), the last step of the first-run wizard. It records the
-- workspace profile and budget defaults, marks setup complete and writes an audit entry;
-- it succeeds once, and a second call is refused so that a replayed request changes nothing.

CREATE OR REPLACE FUNCTION complete_setup(p_workspace_name text,
                                          p_owner_name text DEFAULT NULL,
                                          p_owner_email text DEFAULT NULL,
                                          p_timezone text DEFAULT 'UTC',
                                          p_default_monthly_budget_usd numeric DEFAULT NULL,
                                          p_preferences jsonb DEFAULT '{}'::jsonb)
RETURNS workspace
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_ws workspace;
BEGIN
  IF p_workspace_name IS NULL OR btrim(p_workspace_name) = '' THEN
    RAISE EXCEPTION 'p_workspace_name must be a non-empty name' USING ERRCODE = '22023';
  END IF;
  IF p_owner_email IS NOT NULL AND p_owner_email !~ '^[^@\s]+@[^@\s]+$' THEN
    RAISE EXCEPTION 'p_owner_email is not an email address: %', p_owner_email USING ERRCODE = '22023';
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_timezone) THEN
    RAISE EXCEPTION 'p_timezone is not a known time zone: % (e.g. UTC, Europe/Paris)', p_timezone
      USING ERRCODE = '22023';
  END IF;
  INSERT INTO workspace (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
  UPDATE workspace
     SET name = btrim(p_workspace_name), owner_name = p_owner_name, owner_email = p_owner_email,
         timezone = p_timezone,
         default_monthly_budget_usd = coalesce(p_default_monthly_budget_usd, default_monthly_budget_usd),
         preferences = preferences || coalesce(p_preferences, '{}'::jsonb),
         setup_step = 'done', setup_completed_at = now()
   WHERE id = 1 AND setup_completed_at IS NULL
  RETURNING * INTO v_ws;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'setup was already completed on %',
      (SELECT setup_completed_at FROM workspace WHERE id = 1) USING ERRCODE = '55000';
  END IF;
  INSERT INTO audit_log (actor_kind, action, entity_type, entity_id, details)
  VALUES ('operator', 'workspace.setup_completed', 'workspace', '1',
          jsonb_build_object('name', v_ws.name, 'owner_email', v_ws.owner_email));
  RETURN v_ws;
END $$;
