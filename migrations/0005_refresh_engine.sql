-- 005: what the refresh engine and `status` need.
--
-- permanent_failures counts invalid_grant-class failures in a row, separately from
-- consecutive_failures, so that transient failures in between (a provider outage) reset it and
-- never push a healthy token to needs_reauth.
--
-- The due-scan of 004 becomes token_refresher_candidates(), which also serves manual
-- selections (tenant, token ids, --force) and the report of tokens whose platform is not
-- configured. Like every cross-tenant function here it is SECURITY DEFINER, returns no token
-- value, and is executable only by roles granted it.

ALTER TABLE oauth_tokens
    ADD COLUMN permanent_failures INTEGER NOT NULL DEFAULT 0,
    ADD CONSTRAINT oauth_tokens_permanent_failures_non_negative
        CHECK (permanent_failures >= 0);

DROP FUNCTION token_refresher_due_tokens(INTERVAL, JSONB, INTEGER);

-- Tokens to work on, across tenants.
--   p_leads        platform -> lead time (interval text) for the platforms to consider
--   p_other_lead   lead time for platforms absent from p_leads; NULL leaves them out
--   p_exclude      platforms never returned (NULL: none)
--   p_tenant       only this tenant (NULL: all)
--   p_token_ids    only these tokens (NULL: all)
--   p_force        ignore due-ness, state and retry time (leases still hold)
--   p_after_*      keyset paging: rows after this (expires_at, id), or after this id when forced
CREATE FUNCTION token_refresher_candidates(
    p_leads           JSONB,
    p_other_lead      INTERVAL,
    p_exclude         TEXT[],
    p_tenant          TEXT,
    p_token_ids       INTEGER[],
    p_force           BOOLEAN,
    p_after_expires   TIMESTAMPTZ,
    p_after_id        INTEGER,
    p_limit           INTEGER
) RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, expires_at TIMESTAMPTZ)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    AS $$
BEGIN
    IF p_force THEN
        RETURN QUERY
            SELECT t.id, t.tenant_id, t.platform, t.expires_at
            FROM oauth_tokens AS t
            WHERE t.id > coalesce(p_after_id, 0)
              AND (p_leads ? t.platform OR p_other_lead IS NOT NULL)
              AND NOT (t.platform = ANY (coalesce(p_exclude, '{}')))
              AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now())
              AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
              AND (p_token_ids IS NULL OR t.id = ANY (p_token_ids))
            ORDER BY t.id
            LIMIT p_limit;
    ELSE
        RETURN QUERY
            SELECT t.id, t.tenant_id, t.platform, t.expires_at
            FROM oauth_tokens AS t
            WHERE t.refresh_status IN ('active', 'failing')
              AND (t.expires_at, t.id) > (coalesce(p_after_expires, '-infinity'), coalesce(p_after_id, 0))
              AND t.expires_at <= now() + (
                    SELECT greatest(p_other_lead, max(lead.value::interval))
                    FROM jsonb_each_text(p_leads) AS lead)
              AND t.expires_at <= now() + coalesce((p_leads ->> t.platform)::interval, p_other_lead)
              AND NOT (t.platform = ANY (coalesce(p_exclude, '{}')))
              AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= now())
              AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now())
              AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
              AND (p_token_ids IS NULL OR t.id = ANY (p_token_ids))
            ORDER BY t.expires_at, t.id
            LIMIT p_limit;
    END IF;
END
$$;

-- Token counts per tenant, platform and state, with the soonest expiry: what `status` shows.
CREATE FUNCTION token_refresher_status_counts(p_tenant TEXT)
    RETURNS TABLE (tenant_id TEXT, platform TEXT, refresh_status TEXT, tokens BIGINT,
                   soonest_expiry TIMESTAMPTZ)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.tenant_id, t.platform, t.refresh_status, count(*), min(t.expires_at)
        FROM oauth_tokens AS t
        WHERE p_tenant IS NULL OR t.tenant_id = p_tenant
        GROUP BY t.tenant_id, t.platform, t.refresh_status
        ORDER BY t.tenant_id, t.platform, t.refresh_status
    $$;

-- Tokens that are failing, need re-authorisation or do not decrypt, soonest expiry first.
CREATE FUNCTION token_refresher_problem_tokens(p_tenant TEXT, p_limit INTEGER)
    RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, refresh_status TEXT,
                   consecutive_failures INTEGER, last_error_kind TEXT, expires_at TIMESTAMPTZ,
                   next_attempt_at TIMESTAMPTZ)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id, t.platform, t.refresh_status, t.consecutive_failures,
               t.last_error_kind, t.expires_at, t.next_attempt_at
        FROM oauth_tokens AS t
        WHERE t.refresh_status IN ('failing', 'needs_reauth', 'undecryptable')
          AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
        ORDER BY t.expires_at NULLS LAST, t.id
        LIMIT p_limit
    $$;

REVOKE ALL ON FUNCTION token_refresher_candidates(JSONB, INTERVAL, TEXT[], TEXT, INTEGER[], BOOLEAN, TIMESTAMPTZ, INTEGER, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_status_counts(TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_problem_tokens(TEXT, INTEGER) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_candidates(JSONB, INTERVAL, TEXT[], TEXT, INTEGER[], BOOLEAN, TIMESTAMPTZ, INTEGER, INTEGER) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_status_counts(TEXT) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_problem_tokens(TEXT, INTEGER) SET search_path = %I, pg_temp', current_schema());
END
$$;
