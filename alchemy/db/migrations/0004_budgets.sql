-- Spend budgets per brand (issue 13). A reservation is the ledger row of the call itself:
-- written in_flight with its worst-case cost (reserved_usd) before the request is sent,
-- counted against the brand's and the provider's windows while it is in flight and
-- unexpired (reserved_until, PostgreSQL's clock), replaced by the actual cost when the
-- call ends. docs/schema.md explains every column.

-- The clock of every budget window and of the ledger's started_at: PostgreSQL's now(),
-- one clock for every process and host. (Tests replace it to move time.)
CREATE FUNCTION alchemy_now() RETURNS timestamptz LANGUAGE sql STABLE AS 'SELECT now()';

ALTER TABLE provider_calls
    ADD COLUMN reserved_usd   numeric(16, 8) CHECK (reserved_usd >= 0),
    ADD COLUMN reserved_until timestamptz;

-- A brand's own budget, overriding [budgets] in config.toml. NULL: the configured default;
-- 0: no budget of that kind for this brand.
CREATE TABLE brand_budgets (
    brand_id    uuid PRIMARY KEY REFERENCES brands (id) ON DELETE CASCADE,
    daily_usd   numeric(16, 8) CHECK (daily_usd >= 0),
    monthly_usd numeric(16, 8) CHECK (monthly_usd >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text
);

CREATE INDEX provider_calls_provider ON provider_calls (provider, started_at);
CREATE INDEX provider_calls_reserved ON provider_calls (brand_id)
    WHERE outcome = 'in_flight' AND reserved_usd IS NOT NULL;
