-- 018: the events outbox ages out whether or not webhooks deliver, and an event the daemon
-- never tried is not POSTed once it is older than `webhooks.max_age`.
--
-- With webhooks off (the default) nothing was ever deleted, given-up events stayed for good,
-- and turning webhooks on later POSTed the whole history. Now:
-- - events due for delivery are those younger than p_max_age, or already tried (those are
--   given up, with their alert, once a retry fails past p_max_age); an untried event older
--   than that neither goes out nor holds back its token's later events;
-- - retention deletes delivered events p_retention after their delivery, and every other
--   event p_retention after it was written, but never before p_max_age (the time delivery is
--   tried); with webhooks off the daemon passes a zero p_max_age.
CREATE FUNCTION token_refresher_due_events(p_limit INTEGER, p_max_age INTERVAL)
    RETURNS TABLE (id BIGINT, tenant_id TEXT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT e.id, e.tenant_id
        FROM token_refresher_events AS e
        WHERE e.delivered_at IS NULL
          AND (e.next_attempt_at IS NULL OR e.next_attempt_at <= now())
          AND (e.created_at > now() - p_max_age OR coalesce(e.attempts, 0) > 0)
          AND NOT EXISTS (
              SELECT 1 FROM token_refresher_events AS earlier
              WHERE earlier.delivered_at IS NULL
                AND earlier.next_attempt_at IS DISTINCT FROM 'infinity'
                AND (earlier.created_at > now() - p_max_age OR coalesce(earlier.attempts, 0) > 0)
                AND earlier.tenant_id = e.tenant_id
                AND earlier.token_id IS NOT DISTINCT FROM e.token_id
                AND earlier.id < e.id)
        ORDER BY e.id
        LIMIT p_limit
    $$;

CREATE FUNCTION token_refresher_forget_events(p_retention INTERVAL, p_max_age INTERVAL)
    RETURNS BIGINT
    LANGUAGE sql VOLATILE SECURITY DEFINER
    AS $$
        WITH forgotten AS (
            DELETE FROM token_refresher_events
            WHERE (delivered_at IS NOT NULL AND delivered_at < now() - p_retention)
               OR (delivered_at IS NULL
                   AND created_at < now() - greatest(p_retention, p_max_age))
            RETURNING 1)
        SELECT count(*) FROM forgotten
    $$;

REVOKE ALL ON FUNCTION token_refresher_due_events(INTEGER, INTERVAL) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_forget_events(INTERVAL, INTERVAL) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_due_events(INTEGER, INTERVAL) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_forget_events(INTERVAL, INTERVAL) SET search_path = %I, pg_temp', current_schema());
END
$$;
