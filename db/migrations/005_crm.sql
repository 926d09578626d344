-- 005_crm: the CRM: a tag catalogue, campaigns, contacts, organizations, the links between
-- contacts and organizations, and outreach templates. Custom data sits in `extended` jsonb,
-- described by field_definitions.

CREATE TABLE IF NOT EXISTS tags (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text NOT NULL CHECK (name <> '' AND name = btrim(name) AND length(name) <= 100),
  color       text,
  description text,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS tags_name_key ON tags (lower(name));
COMMENT ON TABLE tags IS 'Tag catalogue (names, colours); records carry tag names in their tags text[] column.';

CREATE TABLE IF NOT EXISTS campaigns (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text NOT NULL,
  description text,
  status      text NOT NULL DEFAULT 'draft'
                CHECK (status IN ('draft', 'active', 'paused', 'completed', 'archived')),
  starts_at   timestamptz,
  ends_at     timestamptz,
  metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at >= starts_at)
);
CREATE OR REPLACE TRIGGER campaigns_updated_at BEFORE UPDATE ON campaigns
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS contacts (
  id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  first_name             text,
  last_name              text,
  email                  text,
  phone                  text,
  title                  text,
  pipeline_stage         text REFERENCES pipeline_stages (key) ON UPDATE CASCADE ON DELETE SET NULL,
  priority               task_priority NOT NULL DEFAULT 'medium',
  relationship_strength  smallint NOT NULL DEFAULT 0 CHECK (relationship_strength BETWEEN 0 AND 5),
  campaign_id            uuid REFERENCES campaigns (id) ON DELETE SET NULL,
  tags                   text[] NOT NULL DEFAULT '{}',
  notes                  text,
  extended               jsonb NOT NULL DEFAULT '{}'::jsonb,
  last_interaction_at    timestamptz,
  interaction_count      integer NOT NULL DEFAULT 0,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  CHECK (coalesce(first_name, last_name, email) IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS contacts_email_idx ON contacts (lower(email));
CREATE INDEX IF NOT EXISTS contacts_pipeline_stage_idx ON contacts (pipeline_stage);
CREATE INDEX IF NOT EXISTS contacts_tags_idx ON contacts USING gin (tags);
CREATE OR REPLACE TRIGGER contacts_updated_at BEFORE UPDATE ON contacts
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
COMMENT ON COLUMN contacts.last_interaction_at IS 'Kept in sync with interactions by trigger (008).';

CREATE TABLE IF NOT EXISTS organizations (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text NOT NULL,
  domain      text,
  industry    text,
  size        text,
  website     text,
  tags        text[] NOT NULL DEFAULT '{}',
  notes       text,
  extended    jsonb NOT NULL DEFAULT '{}'::jsonb,
  last_interaction_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS organizations_domain_idx ON organizations (lower(domain));
CREATE OR REPLACE TRIGGER organizations_updated_at BEFORE UPDATE ON organizations
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS contact_organizations (
  contact_id       uuid NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
  organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  role             text,
  is_primary       boolean NOT NULL DEFAULT false,
  created_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (contact_id, organization_id)
);
CREATE INDEX IF NOT EXISTS contact_organizations_org_idx ON contact_organizations (organization_id);
-- At most one primary organization per contact.
CREATE UNIQUE INDEX IF NOT EXISTS contact_organizations_one_primary
  ON contact_organizations (contact_id) WHERE is_primary;

CREATE TABLE IF NOT EXISTS templates (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text NOT NULL,
  channel     text NOT NULL DEFAULT 'email' CHECK (channel IN ('email', 'message', 'note', 'other')),
  subject     text,
  body        text NOT NULL DEFAULT '',
  variables   text[] NOT NULL DEFAULT '{}',
  metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE TRIGGER templates_updated_at BEFORE UPDATE ON templates
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
