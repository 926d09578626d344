-- 019_release_catch_up: brings a database created by an earlier release to the tables of a fresh install.
--
-- Files 001-018 are re-applied whenever a release changed them (functions, triggers, views and
-- policies are replaced; tables are created once). Three changes of earlier releases were made
-- inside CREATE TABLE or to an index, which a re-run does not reach; they are made here, each
-- guarded, so that on a fresh install (where 010, 011 and 015 already made them) nothing happens.
-- Later changes to a table belong in a new numbered file like this one.

-- 010: a comment's mentions never hold NULL (rows with a NULL mention lose it first).
DO $$
BEGIN
  IF to_regclass('comments') IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM pg_constraint
     WHERE conrelid = 'comments'::regclass AND conname = 'comments_mentions_no_nulls'
  ) THEN
    UPDATE comments SET mentions = array_remove(mentions, NULL) WHERE array_position(mentions, NULL) IS NOT NULL;
    ALTER TABLE comments ADD CONSTRAINT comments_mentions_no_nulls CHECK (array_position(mentions, NULL) IS NULL);
  END IF;
END $$;

-- 015: a budget's month starts in the workspace's time zone, not in UTC.
ALTER TABLE agent_budgets ALTER COLUMN period_start SET DEFAULT hq_month_start(now());

-- 011: HNSW indexes are built with ef_construction 256 (the value benchmarks/vector_index.py
-- chose at 1M passages). An index built by an earlier release with less is built again: on a
-- large table this takes minutes, and writes to chunk_embeddings wait for it.
DO $$
DECLARE
  m record;
  v_ef integer;
BEGIN
  FOR m IN SELECT name FROM embedding_models ORDER BY name LOOP
    SELECT (regexp_match(array_to_string(c.reloptions, ','), 'ef_construction=(\d+)'))[1]::integer
      INTO v_ef
      FROM pg_class c
     WHERE c.relname = hq_embedding_index_name(m.name) AND c.relnamespace = current_schema()::regnamespace;
    IF v_ef IS NOT NULL AND v_ef < 256 THEN
      RAISE NOTICE 'rebuilding the HNSW index of model % with ef_construction 256 (was %)', m.name, v_ef;
      EXECUTE format('DROP INDEX %I', hq_embedding_index_name(m.name));
      PERFORM hq_ensure_embedding_index(m.name);
    END IF;
  END LOOP;
END $$;
