-- Per-key request limits (contract v1.2): an API key's own rate in requests per second; NULL takes the platform's
-- default (CHAT4ALL_API_RATE_LIMIT). Checked on every request, in the function, against a token bucket in Redis.
ALTER TABLE api_keys ADD COLUMN rate_limit integer CHECK (rate_limit BETWEEN 1 AND 100000);
