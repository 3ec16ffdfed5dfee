-- Media beyond one machine (issue 10): every media row names the store its object is in.
-- Rows written before this migration are in the local directory ([media] directory).
-- `alchemy media copy-to-s3` moves them (the object first, then this column).

ALTER TABLE media
    ADD COLUMN store text NOT NULL DEFAULT 'local' CHECK (store IN ('local', 's3'));
