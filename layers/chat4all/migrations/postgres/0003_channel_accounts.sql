-- Webhooks are attributed to the installed channel they name (contract v1.1), found without decrypting every
-- channel: the account a channel's webhooks name (WhatsApp phone_number_id, Instagram ig_user_id, Telegram the
-- bot id, the part of the bot token before the colon) and, for Telegram, the SHA-256 (hex) of the secret_token
-- its webhooks carry in X-Telegram-Bot-Api-Secret-Token. Neither is a secret: an account id is public and the
-- token's digest does not give the token back. One channel per platform account, one per Telegram secret.
--
-- Existing rows hold their credentials only as KMS ciphertext, which SQL cannot read, so they start NULL and are
-- backfilled by the application: `prepare_databases` (every deployment and every local start) decrypts the
-- rows still NULL and fills both columns, and a webhook naming an account no row has yet backfills the rows
-- of its platform first (PostgresChannelRepository.backfill_webhook_keys). A row whose credentials do not
-- decrypt, or whose account another channel already has, stays NULL (and logged): it receives no webhooks
-- until its credentials are rotated, as a channel with an unreadable secret could not verify them anyway.

ALTER TABLE channels
    ADD COLUMN account_id            text CHECK (length(account_id) BETWEEN 1 AND 64),
    ADD COLUMN webhook_secret_digest text CHECK (webhook_secret_digest ~ '^[0-9a-f]{64}$');

CREATE UNIQUE INDEX channels_platform_account_key ON channels (platform, account_id) WHERE account_id IS NOT NULL;
CREATE UNIQUE INDEX channels_webhook_secret_digest_key ON channels (webhook_secret_digest)
    WHERE webhook_secret_digest IS NOT NULL;

-- the functions' role (0002) keeps exactly its table grants on channels; new columns are covered by them
