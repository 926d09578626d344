-- 003_shared_functions: trigger functions shared by many tables.
-- set_updated_at() stamps updated_at on every UPDATE; hq_sha256_hex() hashes text with the
-- core sha256() so that nothing needs pgcrypto.

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION hq_sha256_hex(p_text text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT encode(sha256(convert_to(p_text, 'UTF8')), 'hex')
$$;
