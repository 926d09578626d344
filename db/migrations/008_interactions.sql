-- 008_interactions: the contact interaction timeline (calls, messages, notes, meetings),
-- and triggers that keep contacts.last_interaction_at / interaction_count and
-- organizations.last_interaction_at in sync on every insert, update and delete.

CREATE TABLE IF NOT EXISTS interactions (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  contact_id       uuid NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
  organization_id  uuid REFERENCES organizations (id) ON DELETE SET NULL,
  agent_id         uuid REFERENCES agents (id) ON DELETE SET NULL,
  kind             interaction_kind NOT NULL DEFAULT 'note',
  direction        interaction_direction NOT NULL DEFAULT 'internal',
  subject          text,
  body             text,
  occurred_at      timestamptz NOT NULL DEFAULT now(),
  metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS interactions_contact_time_idx ON interactions (contact_id, occurred_at DESC);
CREATE INDEX IF NOT EXISTS interactions_org_time_idx ON interactions (organization_id, occurred_at DESC);
CREATE OR REPLACE TRIGGER interactions_updated_at BEFORE UPDATE ON interactions
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Recompute from the timeline rather than increment: correct under update, delete and
-- back-dated inserts alike.
CREATE OR REPLACE FUNCTION sync_contact_interactions(p_contact_id uuid) RETURNS void
LANGUAGE sql AS $$
  UPDATE contacts c
     SET last_interaction_at = s.last_at,
         interaction_count = s.n
    FROM (SELECT max(occurred_at) AS last_at, count(*)::integer AS n
            FROM interactions WHERE contact_id = p_contact_id) s
   WHERE c.id = p_contact_id
     AND (c.last_interaction_at IS DISTINCT FROM s.last_at OR c.interaction_count <> s.n)
$$;

CREATE OR REPLACE FUNCTION sync_organization_interactions(p_organization_id uuid) RETURNS void
LANGUAGE sql AS $$
  UPDATE organizations o
     SET last_interaction_at = (SELECT max(occurred_at) FROM interactions
                                 WHERE organization_id = p_organization_id)
   WHERE o.id = p_organization_id
$$;

CREATE OR REPLACE FUNCTION interactions_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_contacts uuid[];
  v_organizations uuid[];
BEGIN
  -- Lock the contacts and organizations to recompute (in id order, so that two movers cannot
  -- deadlock) before reading the timeline: the recount then runs on a snapshot taken after
  -- every other transaction touching those rows has committed, and counts their rows too.
  -- Without the lock, two concurrent inserts for one contact each count only their own row.
  -- (Under REPEATABLE READ the lock raises a serialization error instead.)
  IF TG_OP = 'INSERT' THEN
    v_contacts := ARRAY[NEW.contact_id];
    v_organizations := ARRAY[NEW.organization_id];
  ELSIF TG_OP = 'UPDATE' THEN
    v_contacts := ARRAY[NEW.contact_id, OLD.contact_id];
    v_organizations := ARRAY[NEW.organization_id, OLD.organization_id];
  ELSE
    v_contacts := ARRAY[OLD.contact_id];
    v_organizations := ARRAY[OLD.organization_id];
  END IF;
  PERFORM 1 FROM contacts WHERE id = ANY (v_contacts) ORDER BY id FOR NO KEY UPDATE;
  PERFORM 1 FROM organizations WHERE id = ANY (v_organizations) ORDER BY id FOR NO KEY UPDATE;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM sync_contact_interactions(NEW.contact_id);
    IF NEW.organization_id IS NOT NULL THEN
      PERFORM sync_organization_interactions(NEW.organization_id);
    END IF;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    IF TG_OP = 'DELETE' OR OLD.contact_id <> NEW.contact_id THEN
      PERFORM sync_contact_interactions(OLD.contact_id);
    END IF;
    IF OLD.organization_id IS NOT NULL
       AND (TG_OP = 'DELETE' OR OLD.organization_id IS DISTINCT FROM NEW.organization_id) THEN
      PERFORM sync_organization_interactions(OLD.organization_id);
    END IF;
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER interactions_sync
  AFTER INSERT OR UPDATE OR DELETE ON interactions
  FOR EACH ROW EXECUTE FUNCTION interactions_sync();
