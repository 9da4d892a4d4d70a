-- A platform is a registered name (chat4all.domain.platforms): the three built-ins and any a deployment adds
-- (CHAT4ALL_CHANNEL_MODULES), so the columns take any name of a platform's shape; which names are known is the
-- registry's to say, as the API checks it (422) before anything is stored.
ALTER TABLE external_identities
    DROP CONSTRAINT external_identities_platform_check,
    ADD CONSTRAINT external_identities_platform_check CHECK (platform ~ '^[A-Z][A-Z0-9_]{1,31}$');
ALTER TABLE channels
    DROP CONSTRAINT channels_platform_check,
    ADD CONSTRAINT channels_platform_check CHECK (platform ~ '^[A-Z][A-Z0-9_]{1,31}$');
