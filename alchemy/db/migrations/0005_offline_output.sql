-- What the offline provider wrote, marked (issue 14): an `offline` flag on every table it
-- writes, so placeholders can be found and regenerated (docs/schema.md, "Offline output").
-- The flags follow the provider columns the handlers already write, so no code path can
-- forget one: generated columns where the row itself says, triggers where another row does.

-- A piece of content or a research run: written by the offline provider.
ALTER TABLE contents
    ADD COLUMN offline boolean GENERATED ALWAYS AS (provider = 'offline') STORED;
ALTER TABLE research_runs
    ADD COLUMN offline boolean GENERATED ALWAYS AS (provider = 'offline') STORED;

-- An idea: one of its research sections (and so its scores) came from the offline provider.
ALTER TABLE ideas ADD COLUMN offline boolean GENERATED ALWAYS AS (
    coalesce(research @? '$.*.provider ? (@ == "offline")', false)
) STORED;

-- A content request: its content is offline output (cleared when that content is deleted,
-- so the row can be generated again).
ALTER TABLE content_queue ADD COLUMN offline boolean NOT NULL DEFAULT false;
UPDATE content_queue q SET offline = true FROM contents c
WHERE c.content_queue_id = q.id AND c.offline;

CREATE FUNCTION content_queue_offline() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE content_queue SET offline = false WHERE id = OLD.content_queue_id;
        RETURN OLD;
    END IF;
    UPDATE content_queue SET offline = NEW.offline WHERE id = NEW.content_queue_id;
    RETURN NEW;
END $$;
CREATE TRIGGER content_queue_offline AFTER INSERT OR DELETE ON contents
    FOR EACH ROW EXECUTE FUNCTION content_queue_offline();

-- An image from the offline provider, or a thumbnail cut from one.
ALTER TABLE media ADD COLUMN offline boolean NOT NULL DEFAULT false;
UPDATE media SET offline = true WHERE provider = 'offline';
UPDATE media t SET offline = true FROM media s WHERE t.source_media_id = s.id AND s.offline;

CREATE FUNCTION media_offline() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.offline := coalesce(NEW.provider = 'offline', false) OR EXISTS (
        SELECT 1 FROM media s WHERE s.id = NEW.source_media_id AND s.offline
    );
    RETURN NEW;
END $$;
CREATE TRIGGER media_offline BEFORE INSERT OR UPDATE OF provider, source_media_id ON media
    FOR EACH ROW EXECUTE FUNCTION media_offline();

CREATE INDEX contents_offline ON contents (created_at) WHERE offline;
CREATE INDEX media_offline ON media (created_at) WHERE offline;
