-- 004_workspace: the singleton workspace profile (owner, preferences, setup state, budget
-- defaults) with its seed row, the runtime-configurable CRM pipeline stages with defaults,
-- and custom field definitions per entity type.

CREATE TABLE IF NOT EXISTS workspace (
  id                          smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  name                        text NOT NULL DEFAULT 'My workspace',
  owner_name                  text,
  owner_email                 text,
  timezone                    text NOT NULL DEFAULT 'UTC',
  preferences                 jsonb NOT NULL DEFAULT '{}'::jsonb,
  setup_step                  text NOT NULL DEFAULT 'welcome',
  setup_completed_at          timestamptz,
  default_monthly_budget_usd  numeric(12, 2) CHECK (default_monthly_budget_usd >= 0),
  budget_warn_ratio           numeric(4, 3) NOT NULL DEFAULT 0.8
                                CHECK (budget_warn_ratio > 0 AND budget_warn_ratio <= 1),
  created_at                  timestamptz NOT NULL DEFAULT now(),
  updated_at                  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE workspace IS 'Singleton (id = 1): workspace profile, owner preferences, setup state, budget defaults.';

INSERT INTO workspace (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE TRIGGER workspace_updated_at BEFORE UPDATE ON workspace
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS pipeline_stages (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  key         text NOT NULL UNIQUE CHECK (key ~ '^[a-z0-9][a-z0-9_-]*$'),
  label       text NOT NULL,
  position    integer NOT NULL DEFAULT 0,
  color       text,
  is_won      boolean NOT NULL DEFAULT false,
  is_lost     boolean NOT NULL DEFAULT false,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CHECK (NOT (is_won AND is_lost))
);
COMMENT ON TABLE pipeline_stages IS 'CRM pipeline stages, editable at run time; contacts.pipeline_stage refers to key.';

INSERT INTO pipeline_stages (key, label, position, is_won, is_lost) VALUES
  ('lead',        'Lead',        10, false, false),
  ('contacted',   'Contacted',   20, false, false),
  ('qualified',   'Qualified',   30, false, false),
  ('proposal',    'Proposal',    40, false, false),
  ('won',         'Won',         50, true,  false),
  ('lost',        'Lost',        60, false, true)
ON CONFLICT (key) DO NOTHING;

CREATE OR REPLACE TRIGGER pipeline_stages_updated_at BEFORE UPDATE ON pipeline_stages
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS field_definitions (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  entity_type  text NOT NULL CHECK (entity_type IN
                 ('contact', 'organization', 'task', 'agent', 'document', 'asset')),
  key          text NOT NULL CHECK (key ~ '^[a-z][a-z0-9_]*$'),
  label        text NOT NULL,
  field_type   text NOT NULL CHECK (field_type IN
                 ('text', 'number', 'date', 'boolean', 'select', 'multiselect', 'url', 'email')),
  options      jsonb NOT NULL DEFAULT '[]'::jsonb,
  required     boolean NOT NULL DEFAULT false,
  position     integer NOT NULL DEFAULT 0,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  UNIQUE (entity_type, key)
);
COMMENT ON TABLE field_definitions IS 'Custom fields per entity type; values live in each entity''s extended jsonb.';

CREATE OR REPLACE TRIGGER field_definitions_updated_at BEFORE UPDATE ON field_definitions
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
