-- 022: when a token is due is written once, in token_refresher_is_due(), which the due scan
-- and the claim's re-check under the row lock both call. A single SQL expression, it is
-- inlined by the planner: the scan still walks its partial index in order. The scan keeps its
-- own copy of the two conditions its index needs to be chosen (the states of the partial
-- index, and the bound of the longest lead time), which narrow the rows and decide nothing.
CREATE FUNCTION token_refresher_is_due(p_refresh_status TEXT, p_expires_at TIMESTAMPTZ,
                                       p_next_attempt_at TIMESTAMPTZ, p_lead INTERVAL)
    RETURNS BOOLEAN
    LANGUAGE sql STABLE
    AS $$
        SELECT p_refresh_status IN ('active', 'failing')
           AND (p_next_attempt_at IS NULL OR p_next_attempt_at <= now())
           AND p_expires_at <= now() + p_lead
    $$;

CREATE OR REPLACE FUNCTION token_refresher_candidates(
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
    SET plan_cache_mode = force_custom_plan
    SET max_parallel_workers_per_gather = 0
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
              AND token_refresher_is_due(t.refresh_status, t.expires_at, t.next_attempt_at,
                                         coalesce((p_leads ->> t.platform)::interval, p_other_lead))
              AND NOT (t.platform = ANY (coalesce(p_exclude, '{}')))
              AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now())
              AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
              AND (p_token_ids IS NULL OR t.id = ANY (p_token_ids))
            ORDER BY t.expires_at, t.id
            LIMIT p_limit;
    END IF;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_candidates(JSONB, INTERVAL, TEXT[], TEXT, INTEGER[], BOOLEAN, TIMESTAMPTZ, INTEGER, INTEGER) SET search_path = %I, pg_temp', current_schema());
END
$$;
