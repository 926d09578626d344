-- 001_extensions: the Postgres extensions HQ uses.
-- vector (pgvector) is required: passage embeddings and their HNSW index live on it.
-- pgcrypto, pg_cron and pg_textsearch (BM25) are used when the server has them and are
-- skipped with a NOTICE where it does not (the embedded server has no pgcrypto or pg_cron;
-- Supabase has no pg_textsearch). Nothing else in the schema depends on pgcrypto: hashing
-- uses the core sha256() and ids the core gen_random_uuid().

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
    RAISE EXCEPTION 'the pgvector extension is not installed on this server'
      USING HINT = 'Install pgvector (Debian/Ubuntu: apt install postgresql-NN-pgvector; '
                   'Supabase: enable "vector" under Database > Extensions) and run the migrations again.';
  END IF;
END $$;

CREATE EXTENSION IF NOT EXISTS vector;

DO $$
DECLARE
  ext text;
BEGIN
  FOREACH ext IN ARRAY ARRAY['pgcrypto', 'pg_cron', 'pg_textsearch'] LOOP
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = ext) THEN
      CONTINUE;
    ELSIF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = ext) THEN
      RAISE NOTICE 'extension % is not available on this server: the parts that need it are left out', ext;
      CONTINUE;
    END IF;
    BEGIN
      EXECUTE format('CREATE EXTENSION IF NOT EXISTS %I', ext);
    EXCEPTION WHEN OTHERS THEN
      -- pg_cron and pg_textsearch refuse to load unless listed in shared_preload_libraries.
      RAISE NOTICE 'extension % could not be created (%): the parts that need it are left out', ext, SQLERRM;
    END;
  END LOOP;
END $$;
