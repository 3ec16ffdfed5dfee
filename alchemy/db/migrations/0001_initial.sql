-- The content platform's data model: brands, ideas, the content queue the API writes,
-- generated contents, research runs and media. docs/schema.md explains every column.
-- gen_random_uuid() is built into PostgreSQL 13 and later.

CREATE TABLE brands (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (name <> ''),
    voice            text NOT NULL DEFAULT '',
    tone             text NOT NULL DEFAULT '',
    audience         text NOT NULL DEFAULT '',
    guidelines       text NOT NULL DEFAULT '',
    banned_phrases   text[] NOT NULL DEFAULT '{}',
    default_provider text CHECK (default_provider IN ('anthropic', 'openai', 'offline')),
    default_model    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ideas (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id          uuid NOT NULL REFERENCES brands (id) ON DELETE CASCADE,
    title             text NOT NULL CHECK (title <> ''),
    description       text NOT NULL DEFAULT '',
    keywords          text[] NOT NULL DEFAULT '{}',
    research          jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(research) = 'object'),
    virality_score    smallint CHECK (virality_score BETWEEN 0 AND 100),
    relevance_score   smallint CHECK (relevance_score BETWEEN 0 AND 100),
    competition_score smallint CHECK (competition_score BETWEEN 0 AND 100),
    researched_at     timestamptz,
    status            text NOT NULL DEFAULT 'new'
                      CHECK (status IN ('new', 'researching', 'researched', 'failed', 'archived')),
    error             text,
    error_detail      jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ideas_brand_id ON ideas (brand_id);

CREATE TABLE content_queue (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id     uuid NOT NULL REFERENCES brands (id) ON DELETE CASCADE,
    idea_id      uuid REFERENCES ideas (id) ON DELETE SET NULL,
    platform     text NOT NULL CHECK (platform <> ''),
    provider     text CHECK (provider IN ('anthropic', 'openai', 'offline')),
    model        text,
    options      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(options) = 'object'),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    error        text,
    error_detail jsonb,
    attempts     integer NOT NULL DEFAULT 0,
    job_id       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    completed_at timestamptz
);
CREATE INDEX content_queue_status ON content_queue (status, created_at);
CREATE INDEX content_queue_brand_id ON content_queue (brand_id);

CREATE TABLE contents (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    content_queue_id  uuid UNIQUE REFERENCES content_queue (id) ON DELETE SET NULL,
    brand_id          uuid NOT NULL REFERENCES brands (id) ON DELETE CASCADE,
    idea_id           uuid REFERENCES ideas (id) ON DELETE SET NULL,
    platform          text NOT NULL,
    title             text NOT NULL,
    body              text NOT NULL,
    hashtags          text[] NOT NULL DEFAULT '{}',
    call_to_action    text NOT NULL DEFAULT '',
    extras            jsonb NOT NULL DEFAULT '{}'::jsonb,
    quality_score     smallint NOT NULL CHECK (quality_score BETWEEN 0 AND 100),
    quality_breakdown jsonb NOT NULL,
    provider          text NOT NULL,
    model             text NOT NULL,
    input_tokens      integer NOT NULL DEFAULT 0,
    output_tokens     integer NOT NULL DEFAULT 0,
    job_id            text NOT NULL UNIQUE,
    media_job_id      text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contents_brand_id ON contents (brand_id);

CREATE TABLE research_runs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    idea_id       uuid NOT NULL REFERENCES ideas (id) ON DELETE CASCADE,
    research_type text NOT NULL CHECK (research_type IN ('keywords', 'competitors', 'trends', 'full')),
    result        jsonb NOT NULL,
    scores        jsonb NOT NULL,
    provider      text NOT NULL,
    model         text NOT NULL,
    input_tokens  integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    job_id        text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX research_runs_idea_id ON research_runs (idea_id);

CREATE TABLE media (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    content_id      uuid REFERENCES contents (id) ON DELETE CASCADE,
    brand_id        uuid REFERENCES brands (id) ON DELETE CASCADE,
    source_media_id uuid REFERENCES media (id) ON DELETE SET NULL,
    kind            text NOT NULL CHECK (kind IN ('image', 'thumbnail')),
    prompt          text NOT NULL DEFAULT '',
    revised_prompt  text,
    provider        text,
    model           text,
    size            text,
    quality         text,
    mime_type       text,
    bytes           bigint CHECK (bytes >= 0),
    width           integer,
    height          integer,
    sha256          text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    storage_path    text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    error           text,
    error_detail    jsonb,
    job_id          text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    CHECK (content_id IS NOT NULL OR brand_id IS NOT NULL),
    CHECK (status <> 'completed' OR (sha256 IS NOT NULL AND storage_path IS NOT NULL))
);
CREATE INDEX media_content_id ON media (content_id);
CREATE INDEX media_brand_id ON media (brand_id);
CREATE INDEX media_sha256 ON media (sha256);
