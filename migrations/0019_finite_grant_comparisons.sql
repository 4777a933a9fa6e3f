-- 019: one row's infinite grant end never stops the grant warnings of every tenant.
--
-- "Moved by a minute or more" was `abs(extract(epoch FROM a - b)) >= 60`, and PostgreSQL
-- refuses to subtract infinite timestamps: a row whose `grant_expires_at` was `-infinity`
-- (warned about once, which stores it in `grant_warned_for`) made the cross-tenant read of
-- unwarned grants fail on every cycle, for every tenant, and the commit of that token's
-- answers fail with it. The comparison is one function now, defined for every value.
CREATE FUNCTION token_refresher_moved_a_minute(p_now TIMESTAMPTZ, p_before TIMESTAMPTZ)
    RETURNS BOOLEAN
    LANGUAGE sql IMMUTABLE
    AS $$
        SELECT CASE
            WHEN p_now IS NULL OR p_before IS NULL THEN p_now IS DISTINCT FROM p_before
            WHEN isfinite(p_now) AND isfinite(p_before)
                THEN abs(extract(epoch FROM p_now - p_before)) >= 60
            ELSE p_now IS DISTINCT FROM p_before
        END
    $$;

CREATE OR REPLACE FUNCTION token_refresher_unwarned_grants(p_warning INTERVAL)
    RETURNS TABLE (id INTEGER, tenant_id TEXT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id
        FROM oauth_tokens AS t
        WHERE t.grant_expires_at IS NOT NULL
          AND t.grant_expires_at <= now() + p_warning
          AND token_refresher_moved_a_minute(t.grant_expires_at, t.grant_warned_for)
    $$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_moved_a_minute(TIMESTAMPTZ, TIMESTAMPTZ) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_unwarned_grants(INTERVAL) SET search_path = %I, pg_temp', current_schema());
END
$$;
