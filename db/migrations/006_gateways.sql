-- 006_gateways: gateway hosts (the machines that run agents), their short-lived registration
-- tokens, stored only as sha256 hashes, and consume_gateway_token(), which trades a valid
-- token, once, for a registered gateway.

CREATE TABLE IF NOT EXISTS gateways (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name               text NOT NULL,
  hostname           text,
  url                text,
  labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
  status             gateway_status NOT NULL DEFAULT 'pending',
  version            text,
  last_heartbeat_at  timestamptz,
  metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE TRIGGER gateways_updated_at BEFORE UPDATE ON gateways
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS gateway_registration_tokens (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  token_hash  text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
  label       text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL DEFAULT now() + interval '1 hour',
  used_at     timestamptz,
  gateway_id  uuid REFERENCES gateways (id) ON DELETE SET NULL,
  CHECK (expires_at > created_at)
);
COMMENT ON TABLE gateway_registration_tokens IS 'Single-use gateway registration tokens; only the sha256 of a token is stored.';

-- Issue a token: returns the plain token once; only its hash is kept.
CREATE OR REPLACE FUNCTION create_gateway_token(p_label text DEFAULT NULL,
                                                p_ttl interval DEFAULT interval '1 hour')
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_token text;
BEGIN
  IF p_ttl IS NULL OR p_ttl <= interval '0' THEN
    RAISE EXCEPTION 'p_ttl must be a positive interval, got %', p_ttl USING ERRCODE = '22023';
  END IF;
  -- Two v4 UUIDs: 244 random bits from the server's strong random source.
  v_token := 'hqgw_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
  INSERT INTO gateway_registration_tokens (token_hash, label, expires_at)
  VALUES (hq_sha256_hex(v_token), p_label, now() + p_ttl);
  RETURN v_token;
END $$;

-- Trade a token for a gateway: succeeds once per token, before it expires.
CREATE OR REPLACE FUNCTION consume_gateway_token(p_token text, p_name text,
                                                 p_hostname text DEFAULT NULL,
                                                 p_url text DEFAULT NULL,
                                                 p_labels jsonb DEFAULT '{}'::jsonb,
                                                 p_version text DEFAULT NULL)
RETURNS gateways
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_token gateway_registration_tokens;
  v_gateway gateways;
BEGIN
  IF p_name IS NULL OR btrim(p_name) = '' THEN
    RAISE EXCEPTION 'p_name must be a non-empty gateway name' USING ERRCODE = '22023';
  END IF;
  -- The UPDATE claims the token atomically: of two concurrent callers only one gets a row.
  UPDATE gateway_registration_tokens
     SET used_at = now()
   WHERE token_hash = hq_sha256_hex(coalesce(p_token, ''))
     AND used_at IS NULL
     AND expires_at > now()
  RETURNING * INTO v_token;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'gateway registration token is invalid, expired or already used'
      USING ERRCODE = '28000', HINT = 'Create a new token in Settings > Gateways > Add Gateway.';
  END IF;
  INSERT INTO gateways (name, hostname, url, labels, version, status, last_heartbeat_at)
  VALUES (btrim(p_name), p_hostname, p_url, coalesce(p_labels, '{}'::jsonb), p_version, 'online', now())
  RETURNING * INTO v_gateway;
  UPDATE gateway_registration_tokens SET gateway_id = v_gateway.id WHERE id = v_token.id;
  RETURN v_gateway;
END $$;
