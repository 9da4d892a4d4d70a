-- Users, how they are known on each platform, channels, API keys and the append-only audit log.

CREATE TABLE users (
    user_id      uuid PRIMARY KEY,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    user_type    text NOT NULL CHECK (user_type IN ('AGENT', 'CUSTOMER')),
    email        text,
    phone        text,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX users_email_idx ON users (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX users_phone_idx ON users (phone) WHERE phone IS NOT NULL;

CREATE TABLE external_identities (
    identity_id      uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (user_id),
    platform         text NOT NULL CHECK (platform IN ('WHATSAPP', 'TELEGRAM', 'INSTAGRAM')),
    platform_user_id text NOT NULL CHECK (length(platform_user_id) BETWEEN 1 AND 200),
    verified         boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    CONSTRAINT external_identities_platform_account_key UNIQUE (platform, platform_user_id)
);
CREATE INDEX external_identities_user_idx ON external_identities (user_id, platform);

CREATE TABLE channels (
    channel_id             uuid PRIMARY KEY,
    platform               text NOT NULL CHECK (platform IN ('WHATSAPP', 'TELEGRAM', 'INSTAGRAM')),
    name                   text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    credentials_ciphertext bytea NOT NULL,
    enabled                boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL
);
CREATE INDEX channels_platform_idx ON channels (platform, created_at) WHERE enabled;

CREATE TABLE api_keys (
    key_id     uuid PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL CHECK (role IN ('admin', 'agent')),
    user_id    uuid REFERENCES users (user_id),
    key_hash   text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CHECK (role = 'admin' OR user_id IS NOT NULL)
);

CREATE TABLE audit_log (
    entry_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL,
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity_id, entry_id DESC);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
