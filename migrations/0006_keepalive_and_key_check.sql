-- 006: keep-alive refreshes and the stored-key check.
--
-- Some providers revoke refresh tokens left unused; platforms with keepalive_after refresh a
-- token whose last successful refresh (or, never refreshed, its creation) is older than that,
-- even when it is far from expiry. token_refresher_key_ids() lets `check` confirm that every
-- key id named by a stored value is in the keyring. Both are SECURITY DEFINER like 005's
-- functions and return no token value.

CREATE INDEX ix_oauth_tokens_idle ON oauth_tokens ((coalesce(last_refreshed_at, created_at)), id)
    WHERE refresh_status = 'active';

-- Active tokens of the platforms in p_keepalive (platform -> interval text) idle for longer
-- than their platform's interval, longest idle first.
CREATE FUNCTION token_refresher_idle_tokens(p_keepalive JSONB, p_tenant TEXT, p_limit INTEGER)
    RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, expires_at TIMESTAMPTZ)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id, t.platform, t.expires_at
        FROM oauth_tokens AS t
        WHERE t.refresh_status = 'active'
          AND p_keepalive ? t.platform
          AND coalesce(t.last_refreshed_at, t.created_at)
              <= now() - (p_keepalive ->> t.platform)::interval
          AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now())
          AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
        ORDER BY coalesce(t.last_refreshed_at, t.created_at), t.id
        LIMIT p_limit
    $$;

-- How stored values are held: key id ('' for values not in the enc:v1 format) and count.
CREATE FUNCTION token_refresher_key_ids()
    RETURNS TABLE (key_id TEXT, stored_values BIGINT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT CASE WHEN v.value LIKE 'enc:v1:%' THEN split_part(v.value, ':', 3) ELSE '' END,
               count(*)
        FROM oauth_tokens AS t
        CROSS JOIN LATERAL (VALUES (t.access_token), (t.refresh_token)) AS v (value)
        WHERE v.value IS NOT NULL
        GROUP BY 1
        ORDER BY 1
    $$;

REVOKE ALL ON FUNCTION token_refresher_idle_tokens(JSONB, TEXT, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_key_ids() FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_idle_tokens(JSONB, TEXT, INTEGER) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_key_ids() SET search_path = %I, pg_temp', current_schema());
END
$$;
