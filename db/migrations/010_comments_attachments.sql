-- 010_comments_attachments: polymorphic comments (on tasks, contacts, organizations,
-- documents, assets, agents) with @-mentions of agents and threads, and task attachments
-- pointing at a document, an asset, a stored file or a URL. Comments of a deleted record are
-- deleted with it (triggers here and in 011).

CREATE TABLE IF NOT EXISTS comments (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  entity_type      text NOT NULL CHECK (entity_type IN
                     ('task', 'contact', 'organization', 'document', 'asset', 'agent')),
  entity_id        uuid NOT NULL,
  parent_id        uuid REFERENCES comments (id) ON DELETE CASCADE,
  author_kind      actor_kind NOT NULL DEFAULT 'operator',
  author_agent_id  uuid REFERENCES agents (id) ON DELETE SET NULL,
  body             text NOT NULL CHECK (btrim(body) <> ''),
  mentions         uuid[] NOT NULL DEFAULT '{}',
  edited_at        timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CHECK (author_kind <> 'agent' OR author_agent_id IS NOT NULL),
  CONSTRAINT comments_mentions_no_nulls CHECK (array_position(mentions, NULL) IS NULL)
);
CREATE INDEX IF NOT EXISTS comments_entity_idx ON comments (entity_type, entity_id, created_at);
CREATE INDEX IF NOT EXISTS comments_mentions_idx ON comments USING gin (mentions);
COMMENT ON COLUMN comments.mentions IS 'Ids of the agents @-mentioned in the body.';
CREATE OR REPLACE TRIGGER comments_updated_at BEFORE UPDATE ON comments
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Comments are polymorphic (no foreign key): the owner's delete trigger removes them.
-- TG_ARGV[0] is the entity_type the table's rows are commented as.
CREATE OR REPLACE FUNCTION delete_entity_comments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM comments WHERE entity_type = TG_ARGV[0] AND entity_id = OLD.id;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER tasks_delete_comments AFTER DELETE ON tasks
  FOR EACH ROW EXECUTE FUNCTION delete_entity_comments('task');
CREATE OR REPLACE TRIGGER contacts_delete_comments AFTER DELETE ON contacts
  FOR EACH ROW EXECUTE FUNCTION delete_entity_comments('contact');
CREATE OR REPLACE TRIGGER organizations_delete_comments AFTER DELETE ON organizations
  FOR EACH ROW EXECUTE FUNCTION delete_entity_comments('organization');
CREATE OR REPLACE TRIGGER agents_delete_comments AFTER DELETE ON agents
  FOR EACH ROW EXECUTE FUNCTION delete_entity_comments('agent');

-- document_id / asset_id get their foreign keys in 011, where those tables are created.
CREATE TABLE IF NOT EXISTS task_attachments (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  task_id       uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
  kind          text NOT NULL CHECK (kind IN ('document', 'asset', 'file', 'url')),
  document_id   uuid,
  asset_id      uuid,
  storage_path  text,
  url           text,
  name          text,
  mime_type     text,
  size_bytes    bigint CHECK (size_bytes >= 0),
  added_by_agent_id uuid REFERENCES agents (id) ON DELETE SET NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT task_attachments_target CHECK (
    (kind = 'document' AND document_id IS NOT NULL AND asset_id IS NULL) OR
    (kind = 'asset'    AND asset_id IS NOT NULL AND document_id IS NULL) OR
    (kind = 'file'     AND storage_path IS NOT NULL AND document_id IS NULL AND asset_id IS NULL) OR
    (kind = 'url'      AND url IS NOT NULL AND document_id IS NULL AND asset_id IS NULL)
  )
);
CREATE INDEX IF NOT EXISTS task_attachments_task_idx ON task_attachments (task_id);
