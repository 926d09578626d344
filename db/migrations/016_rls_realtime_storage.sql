-- 016_rls_realtime_storage: what Supabase adds around the schema, applied only where its
-- pieces exist. Row-level security on every HQ table with a policy giving the
-- `authenticated` role full access (HQ is single-user: the trust boundary is the project)
-- and grants to `authenticated` and `service_role`; the Realtime publication membership of
-- agent_commands and agent_inbox_items (the runner and dispatcher wake on their inserts);
-- Storage buckets for assets and task attachments. On plain Postgres each part is skipped
-- with a NOTICE: the service connects as the owner, and LISTEN/NOTIFY replaces Realtime.

CREATE OR REPLACE FUNCTION hq_tables() RETURNS SETOF text
LANGUAGE sql IMMUTABLE AS $$
  SELECT unnest(ARRAY[
    'workspace', 'pipeline_stages', 'field_definitions',
    'tags', 'campaigns', 'contacts', 'organizations', 'contact_organizations', 'templates',
    'gateways', 'gateway_registration_tokens', 'agents', 'interactions',
    'streams', 'task_series', 'tasks', 'comments', 'task_attachments',
    'document_folders', 'asset_folders', 'documents', 'assets', 'embedding_models',
    'knowledge_chunks', 'chunk_embeddings', 'reembed_jobs', 'reembed_items', 'draft_sets',
    'audit_log', 'notifications', 'agent_inbox_items', 'automation_rules',
    'agent_commands', 'agent_usage', 'agent_budgets'])
$$;

DO $$
DECLARE
  t text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated')
     OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    RAISE NOTICE 'roles authenticated / service_role not found (not Supabase): row-level security policies left out';
    RETURN;
  END IF;
  FOR t IN SELECT hq_tables() LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = current_schema()
                                              AND tablename = t AND policyname = 'hq_authenticated_all') THEN
      EXECUTE format('CREATE POLICY hq_authenticated_all ON %I FOR ALL TO authenticated '
                     'USING (true) WITH CHECK (true)', t);
    END IF;
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO authenticated, service_role', t);
  END LOOP;
  EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO authenticated, service_role', current_schema());
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO authenticated, service_role', current_schema());
  -- Objects created after this file (017 and later migrations) get the same grants, so a
  -- first run and a re-run end with identical privileges.
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES '
                 'TO authenticated, service_role', current_schema());
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE ON SEQUENCES TO authenticated, service_role',
                 current_schema());
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT EXECUTE ON FUNCTIONS TO authenticated, service_role',
                 current_schema());
END $$;

DO $$
DECLARE
  t text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
    RAISE NOTICE 'publication supabase_realtime not found (not Supabase): workers wake through LISTEN/NOTIFY instead';
    RETURN;
  END IF;
  FOREACH t IN ARRAY ARRAY['agent_commands', 'agent_inbox_items', 'notifications'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_publication_tables
                    WHERE pubname = 'supabase_realtime' AND schemaname = current_schema()
                      AND tablename = t) THEN
      EXECUTE format('ALTER PUBLICATION supabase_realtime ADD TABLE %I', t);
    END IF;
  END LOOP;
END $$;

DO $$
BEGIN
  IF to_regclass('storage.buckets') IS NULL OR to_regclass('storage.objects') IS NULL THEN
    RAISE NOTICE 'storage schema not found (not Supabase): asset files are referenced by URL or path only';
    RETURN;
  END IF;
  INSERT INTO storage.buckets (id, name, public) VALUES
    ('assets', 'assets', false),
    ('attachments', 'attachments', false)
  ON CONFLICT (id) DO NOTHING;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated')
     AND NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'storage' AND tablename = 'objects'
                                               AND policyname = 'hq_authenticated_files') THEN
    CREATE POLICY hq_authenticated_files ON storage.objects FOR ALL TO authenticated
      USING (bucket_id IN ('assets', 'attachments'))
      WITH CHECK (bucket_id IN ('assets', 'attachments'));
  END IF;
END $$;
