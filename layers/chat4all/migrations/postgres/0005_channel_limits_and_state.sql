-- Contract v1.2: a channel's own send rate (messages per second; NULL: its platform's published default, see
-- chat4all.domain.channel_limits) and, when the platform refused its token, why (credentials REJECTED until
-- PATCH sets new credentials, which clears it). The breaker's state lives in Redis, shared by the functions.
ALTER TABLE channels
    ADD COLUMN rate_limit            integer CHECK (rate_limit BETWEEN 1 AND 100000),
    ADD COLUMN credentials_rejection text;
