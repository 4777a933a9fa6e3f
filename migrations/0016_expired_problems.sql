-- 016: a token past its expiry that nothing refreshes is a problem, whatever its state says.
--
-- `status` listed only failing, needs_reauth and undecryptable tokens and ending grants among
-- its problems, so a token of a platform without credentials (never attempted, so never
-- failing) passed its expiry and stayed a green `active`. Active and failing tokens past their
-- expiry are problems now too.
CREATE OR REPLACE FUNCTION token_refresher_problem_tokens(p_tenant TEXT, p_limit INTEGER,
                                                          p_grant_warning INTERVAL)
    RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, refresh_status TEXT,
                   consecutive_failures INTEGER, last_error_kind TEXT, expires_at TIMESTAMPTZ,
                   next_attempt_at TIMESTAMPTZ, grant_expires_at TIMESTAMPTZ)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id, t.platform, t.refresh_status, t.consecutive_failures,
               t.last_error_kind, t.expires_at, t.next_attempt_at, t.grant_expires_at
        FROM oauth_tokens AS t
        WHERE (t.refresh_status IN ('failing', 'needs_reauth', 'undecryptable')
               OR t.grant_expires_at <= now() + p_grant_warning
               OR (t.refresh_status = 'active' AND t.expires_at <= now()))
          AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
        ORDER BY t.expires_at NULLS LAST, t.id
        LIMIT p_limit
    $$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_problem_tokens(TEXT, INTEGER, INTERVAL) SET search_path = %I, pg_temp', current_schema());
END
$$;
