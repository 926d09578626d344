-- 020_sql_bm25: BM25 over the passages in ordinary tables, for every PostgreSQL.
--
-- pg_textsearch gives BM25 where it is installed; Supabase, RDS and Debian's PostgreSQL do not
-- have it, and its 1.0 index pages do not reach streaming standbys. These tables hold the same
-- statistics as plain rows, kept by statement triggers on knowledge_chunks in the transaction
-- that writes the passages: WAL-logged (so replicated), transactional, and exact under
-- concurrent writers.
--
--   bm25_postings  one row per (lexeme, passage): the lexeme's frequency in the passage and
--                  the passage's length, both read from knowledge_chunks.search_tsv
--                  (to_tsvector('english', indexed_text): the analysis pg_textsearch applies
--                  with text_config 'english': stemming and stop words). A lexeme's document
--                  frequency is its number of rows, counted when a query reads them.
--   bm25_corpus    the corpus totals (passages, summed lengths), spread over 16 slots so that
--                  concurrent writers add to different rows instead of queueing on one.
--
-- hq_sql_bm25_top(query, k) ranks with them: the postings of the query's lexemes through the
-- primary key's btree (an index-only scan), scored with k1 1.2 and b 0.75 and the IDF
-- ln(1 + (N - df + 0.5) / (df + 0.5)), as pg_textsearch scores.

CREATE TABLE IF NOT EXISTS bm25_postings (
  term      text NOT NULL,
  chunk_id  bigint NOT NULL,
  tf        integer NOT NULL CHECK (tf > 0),
  dl        integer NOT NULL CHECK (dl > 0),
  CONSTRAINT bm25_postings_pkey PRIMARY KEY (term, chunk_id) INCLUDE (tf, dl)
);
COMMENT ON TABLE bm25_postings IS
  'BM25 postings: a lexeme''s frequency (tf) in a passage and the passage''s length (dl), kept by knowledge_chunks'' triggers.';

CREATE TABLE IF NOT EXISTS bm25_corpus (
  slot          smallint PRIMARY KEY CHECK (slot BETWEEN 0 AND 15),
  passages      bigint NOT NULL DEFAULT 0,
  total_length  bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE bm25_corpus IS
  'BM25 corpus totals (passages and their summed lengths): the sum over the slots; writers add to the slot of their backend.';

-- Internal to the service: row-level security without a policy (Supabase's API roles see
-- nothing); the triggers below write as the tables' owner, whoever writes the passages.
ALTER TABLE bm25_postings ENABLE ROW LEVEL SECURITY;
ALTER TABLE bm25_corpus ENABLE ROW LEVEL SECURITY;
-- The postings are ordinary rows that change with every passage: vacuumed often enough that
-- the index-only scans of queries rarely visit the heap.
ALTER TABLE bm25_postings SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- Postings of a set of passages: one row per lexeme of search_tsv, with the passage length.
CREATE OR REPLACE FUNCTION hq_bm25_rows(p_id bigint, p_tsv tsvector)
RETURNS TABLE (term text, chunk_id bigint, tf integer, dl integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  WITH t AS (SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf FROM unnest(p_tsv) u)
  SELECT t.lexeme, p_id, t.tf, (sum(t.tf) OVER ())::integer FROM t
$$;

-- A passage's length: the sum of its lexemes' frequencies (stop words not counted).
CREATE OR REPLACE FUNCTION hq_bm25_length(p_tsv tsvector) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0)::bigint FROM unnest(p_tsv) u
$$;

CREATE OR REPLACE FUNCTION hq_bm25_add(p_passages bigint, p_length bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
  INSERT INTO bm25_corpus AS c (slot, passages, total_length)
  VALUES (pg_backend_pid() % 16, p_passages, p_length)
  ON CONFLICT (slot) DO UPDATE
    SET passages = c.passages + excluded.passages, total_length = c.total_length + excluded.total_length
$$;

CREATE OR REPLACE FUNCTION hq_bm25_on_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  v_passages bigint;
  v_length bigint;
BEGIN
  INSERT INTO bm25_postings (term, chunk_id, tf, dl)
  SELECT r.term, r.chunk_id, r.tf, r.dl FROM new_rows n, hq_bm25_rows(n.id, n.search_tsv) r;
  SELECT count(*), coalesce(sum(hq_bm25_length(n.search_tsv)), 0) INTO v_passages, v_length FROM new_rows n;
  IF v_passages > 0 THEN
    PERFORM hq_bm25_add(v_passages, v_length);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION hq_bm25_on_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  v_passages bigint;
  v_length bigint;
BEGIN
  -- Through the primary key: the deleted passages' own lexemes name their postings.
  DELETE FROM bm25_postings p
   USING (SELECT o.id, u.lexeme FROM old_rows o, unnest(o.search_tsv) u) x
   WHERE p.term = x.lexeme AND p.chunk_id = x.id;
  SELECT count(*), coalesce(sum(hq_bm25_length(o.search_tsv)), 0) INTO v_passages, v_length FROM old_rows o;
  IF v_passages > 0 THEN
    PERFORM hq_bm25_add(-v_passages, -v_length);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION hq_bm25_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  v_length bigint;
BEGIN
  -- Only passages whose text changed count (the worker mostly renumbers kept passages).
  SELECT sum(hq_bm25_length(n.search_tsv) - hq_bm25_length(o.search_tsv)) INTO v_length
    FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.search_tsv IS DISTINCT FROM n.search_tsv;
  IF v_length IS NULL THEN
    RETURN NULL;  -- no text changed
  END IF;
  DELETE FROM bm25_postings p
   USING (SELECT o.id, u.lexeme FROM old_rows o JOIN new_rows n ON n.id = o.id, unnest(o.search_tsv) u
           WHERE o.search_tsv IS DISTINCT FROM n.search_tsv) x
   WHERE p.term = x.lexeme AND p.chunk_id = x.id;
  INSERT INTO bm25_postings (term, chunk_id, tf, dl)
  SELECT r.term, r.chunk_id, r.tf, r.dl
    FROM old_rows o JOIN new_rows n ON n.id = o.id, hq_bm25_rows(n.id, n.search_tsv) r
   WHERE o.search_tsv IS DISTINCT FROM n.search_tsv;
  IF v_length <> 0 THEN
    PERFORM hq_bm25_add(0, v_length);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION hq_bm25_on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  TRUNCATE bm25_postings;
  DELETE FROM bm25_corpus;
  RETURN NULL;
END $$;

-- Rebuilt from the passages: the statistics a recount gives. For an operator after a bulk
-- load done with triggers disabled, and run once here for passages written before this file.
CREATE OR REPLACE FUNCTION hq_sql_bm25_rebuild() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  v_rows bigint;
BEGIN
  LOCK TABLE knowledge_chunks IN SHARE MODE;  -- no passage changes while counting
  TRUNCATE bm25_postings;
  DELETE FROM bm25_corpus;
  INSERT INTO bm25_postings (term, chunk_id, tf, dl)
  SELECT r.term, r.chunk_id, r.tf, r.dl FROM knowledge_chunks c, hq_bm25_rows(c.id, c.search_tsv) r;
  GET DIAGNOSTICS v_rows = ROW_COUNT;
  INSERT INTO bm25_corpus (slot, passages, total_length)
  SELECT 0, count(*), coalesce(sum(hq_bm25_length(c.search_tsv)), 0) FROM knowledge_chunks c;
  RETURN v_rows;
END $$;
COMMENT ON FUNCTION hq_sql_bm25_rebuild() IS
  'Recount the SQL BM25 tables from knowledge_chunks (returns the number of postings).';

CREATE OR REPLACE TRIGGER knowledge_chunks_bm25_insert AFTER INSERT ON knowledge_chunks
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hq_bm25_on_insert();
CREATE OR REPLACE TRIGGER knowledge_chunks_bm25_update AFTER UPDATE ON knowledge_chunks
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hq_bm25_on_update();
CREATE OR REPLACE TRIGGER knowledge_chunks_bm25_delete AFTER DELETE ON knowledge_chunks
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION hq_bm25_on_delete();
CREATE OR REPLACE TRIGGER knowledge_chunks_bm25_truncate AFTER TRUNCATE ON knowledge_chunks
  FOR EACH STATEMENT EXECUTE FUNCTION hq_bm25_on_truncate();

-- Passages written before this file (an upgrade): counted once. The triggers above already
-- hold their lock on knowledge_chunks, so no write slips between them and the count.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM bm25_corpus) AND EXISTS (SELECT 1 FROM knowledge_chunks) THEN
    PERFORM hq_sql_bm25_rebuild();
  END IF;
END $$;

-- The BM25 top k passages for a query, best first, with their owners and scores. A lexeme
-- the query repeats counts as often as it appears (as in pg_textsearch). Each query lexeme's
-- document frequency is counted from its postings (an index-only count through the primary
-- key), which gives its weight qtf * 2.2 * idf; its postings are then read again through the
-- same btree, scored and summed per passage in a hash. Reading each lexeme's postings beside
-- a window count instead, or joining the totals per row, took twice as long at 100k passages.
-- 1.2 * (1 - b + b * dl / avgdl) with b 0.75 is 0.3 + (0.9 / avgdl) * dl.
CREATE OR REPLACE FUNCTION hq_sql_bm25_top(query text, k integer)
RETURNS TABLE (id bigint, document_id uuid, asset_id uuid, score float8)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 100 AS $$
  WITH corpus AS MATERIALIZED (
    SELECT sum(passages)::float8 AS n, 0.9 * sum(passages)::float8 / nullif(sum(total_length), 0)::float8 AS per_len
      FROM bm25_corpus
  ), terms AS MATERIALIZED (
    SELECT u.lexeme AS term,
           coalesce(array_length(u.positions, 1), 1) * 2.2::float8
             * ln(1 + (c.n - df.n + 0.5) / (df.n + 0.5)) AS w,
           c.per_len
      FROM unnest(to_tsvector('english', query)) u CROSS JOIN corpus c
      CROSS JOIN LATERAL (SELECT count(*)::float8 AS n FROM bm25_postings p WHERE p.term = u.lexeme) df
     WHERE df.n > 0
  ), scored AS (
    SELECT p.chunk_id, sum(t.w * p.tf / (p.tf + 0.3 + t.per_len * p.dl)) AS score
      FROM terms t CROSS JOIN LATERAL (SELECT x.chunk_id, x.tf::float8 AS tf, x.dl::float8 AS dl FROM bm25_postings x WHERE x.term = t.term) p
     GROUP BY p.chunk_id
     ORDER BY score DESC, p.chunk_id
     LIMIT k
  )
  SELECT s.chunk_id, c.document_id, c.asset_id, s.score
    FROM scored s JOIN knowledge_chunks c ON c.id = s.chunk_id
   ORDER BY s.score DESC, s.chunk_id
$$;
COMMENT ON FUNCTION hq_sql_bm25_top(text, integer) IS
  'BM25 top k passages for a query from the SQL keyword index (bm25_postings, bm25_corpus), best first, with owners and scores.';
