-- Every paid call once (issue 8): a lease per piece of paid work, the ledger of provider
-- calls, and the research job in progress on an idea. docs/schema.md explains every column.
-- Every lease time is PostgreSQL's clock (now()), never a worker's.

CREATE TABLE work_leases (
    work_key          text PRIMARY KEY CHECK (work_key <> ''),
    owner_token       text,            -- NULL: released (the work is committed or given up)
    owner_identity    text,
    owner_incarnation text,
    job_id            text,
    attempt           integer,
    acquired_at       timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    released_at       timestamptz,
    takeovers         integer NOT NULL DEFAULT 0
);

CREATE TABLE provider_calls (
    id            uuid PRIMARY KEY,    -- also sent with the request (X-Alchemy-Call)
    job_id        text NOT NULL,
    work_key      text NOT NULL,
    queue         text NOT NULL,
    brand_id      uuid,                -- no foreign key: spend outlives a deleted brand
    owner_token   text NOT NULL,
    provider      text NOT NULL,
    model         text NOT NULL,
    fingerprint   text NOT NULL,       -- sha256 of what was asked: a reply is reused only
                                       -- for the same request
    request_id    text,
    input_tokens  integer NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens integer NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    images        integer NOT NULL DEFAULT 0 CHECK (images >= 0),
    cost_usd      numeric(16, 8),      -- NULL: the model has no price in the table
    outcome       text NOT NULL
                  CHECK (outcome IN ('in_flight', 'ok', 'refused', 'rate_limited', 'timeout',
                                     'error', 'interrupted')),
    error         text,
    reply         jsonb,               -- an ok reply, kept until a committed result uses it
    consumed_at   timestamptz,
    consumed_by   text,                -- the job whose committed result used it, or why not
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX provider_calls_open ON provider_calls (work_key)
    WHERE consumed_at IS NULL AND outcome IN ('ok', 'in_flight');
CREATE INDEX provider_calls_job_id ON provider_calls (job_id);
CREATE INDEX provider_calls_brand_id ON provider_calls (brand_id, started_at);
CREATE INDEX provider_calls_started_at ON provider_calls (started_at);

ALTER TABLE ideas ADD COLUMN research_job_id text;
CREATE INDEX ideas_research_job_id ON ideas (research_job_id) WHERE research_job_id IS NOT NULL;
