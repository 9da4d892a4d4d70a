-- Identity administration: audit entries with before/after and request context, case-folded emails for link
-- suggestions, channel default agents and encryption-context-bound credentials, and the functions' own
-- least-privilege role, for which the audit log is append-only by grant, not only by trigger.

ALTER TABLE audit_log RENAME COLUMN data TO after;
ALTER TABLE audit_log ALTER COLUMN after DROP NOT NULL;
ALTER TABLE audit_log ALTER COLUMN after DROP DEFAULT;
ALTER TABLE audit_log
    ADD COLUMN before     jsonb,
    ADD COLUMN actor_role text,
    ADD COLUMN request_id text,
    ADD COLUMN source_ip  text;

-- the email as link suggestions compare it (Unicode case folding, done by the application)
ALTER TABLE users ADD COLUMN email_key text;
-- users made before: lower() is case folding for all but a few scripts; the application folds from now on
UPDATE users SET email_key = lower(email) WHERE email IS NOT NULL;
CREATE INDEX users_email_key_idx ON users (email_key) WHERE email_key IS NOT NULL;
DROP INDEX users_email_idx;

ALTER TABLE channels
    ADD COLUMN default_agent_id  uuid REFERENCES users (user_id),
    -- false for credentials encrypted before they were bound to their channel by a KMS encryption context
    ADD COLUMN credentials_bound boolean NOT NULL DEFAULT false;

CREATE INDEX api_keys_user_idx ON api_keys (user_id) WHERE revoked_at IS NULL;

-- The role the functions connect as. It owns nothing, so it can neither alter the audit log nor drop its
-- triggers; it may read and append audit entries and nothing more. Roles are per cluster: create it once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chat4all_app') THEN
        CREATE ROLE chat4all_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOBYPASSRLS;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO chat4all_app', current_database());
END;
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM chat4all_app;
GRANT USAGE ON SCHEMA public TO chat4all_app;
GRANT SELECT, INSERT, UPDATE ON users TO chat4all_app;
GRANT SELECT, INSERT, DELETE ON external_identities TO chat4all_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON channels TO chat4all_app;
GRANT SELECT, INSERT, UPDATE ON api_keys TO chat4all_app;
GRANT SELECT, INSERT ON audit_log TO chat4all_app;
-- tables of later migrations are the functions' to use unless that migration says otherwise
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO chat4all_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO chat4all_app;
