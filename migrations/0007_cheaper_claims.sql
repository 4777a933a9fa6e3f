-- The scans read one page of a few hundred rows through their partial indexes. Planned for
-- the actual lead times and page size, PostgreSQL walks the index in order and stops after
-- the page; the generic plan it would otherwise cache fetches every due row and sorts them.
-- A parallel plan only adds the cost of starting workers (several milliseconds, more than
-- the scan itself).
ALTER FUNCTION token_refresher_candidates(jsonb, interval, text[], text, integer[], boolean,
                                          timestamptz, integer, integer)
    SET plan_cache_mode = force_custom_plan
    SET max_parallel_workers_per_gather = 0;
ALTER FUNCTION token_refresher_idle_tokens(jsonb, text, integer)
    SET plan_cache_mode = force_custom_plan
    SET max_parallel_workers_per_gather = 0;

-- Claiming a token only sets its lease, which no index covers: with room left on the page
-- PostgreSQL updates the row in place (a HOT update) instead of adding a version to every
-- index. New pages of oauth_tokens keep a tenth free for that.
ALTER TABLE oauth_tokens SET (fillfactor = 90);
