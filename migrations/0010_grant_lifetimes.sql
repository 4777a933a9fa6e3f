-- 010: when each grant itself ends, so a person can be asked to reconnect before it does.
--
-- grant_expires_at is the end of the grant (NULL: unknown), whatever refreshes do.
-- grant_warned_for is the grant_expires_at the grant_expiring alert was last raised for: a
-- daemon raises it again only once grant_expires_at has moved a minute or more from it, so
-- restarts and several daemons raise it once.

ALTER TABLE oauth_tokens
    ADD COLUMN grant_expires_at TIMESTAMPTZ,
    ADD COLUMN grant_warned_for TIMESTAMPTZ;

CREATE INDEX ix_oauth_tokens_grant_expires ON oauth_tokens (grant_expires_at)
    WHERE grant_expires_at IS NOT NULL;

-- Tokens whose grant ends within p_warning and whose alert was not raised for this end yet.
-- SECURITY DEFINER like the other cross-tenant functions; it returns no token value.
CREATE FUNCTION token_refresher_unwarned_grants(p_warning INTERVAL)
    RETURNS TABLE (id INTEGER, tenant_id TEXT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id
        FROM oauth_tokens AS t
        WHERE t.grant_expires_at IS NOT NULL
          AND t.grant_expires_at <= now() + p_warning
          AND (t.grant_warned_for IS NULL
               OR abs(extract(epoch FROM t.grant_expires_at - t.grant_warned_for)) >= 60)
    $$;

-- The soonest grant end per platform among tokens that are not needs_reauth (a person is
-- already asked to reconnect those): what the metrics show.
CREATE FUNCTION token_refresher_soonest_grants()
    RETURNS TABLE (platform TEXT, soonest_grant TIMESTAMPTZ)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.platform, min(t.grant_expires_at)
        FROM oauth_tokens AS t
        WHERE t.grant_expires_at IS NOT NULL AND t.refresh_status <> 'needs_reauth'
        GROUP BY t.platform
    $$;

-- Migration 005's problem tokens, with the tokens whose grant ends within p_grant_warning and
-- each token's grant_expires_at. The two-argument function stays for older versions.
CREATE FUNCTION token_refresher_problem_tokens(p_tenant TEXT, p_limit INTEGER,
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
               OR t.grant_expires_at <= now() + p_grant_warning)
          AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
        ORDER BY t.expires_at NULLS LAST, t.id
        LIMIT p_limit
    $$;

REVOKE ALL ON FUNCTION token_refresher_unwarned_grants(INTERVAL) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_soonest_grants() FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_problem_tokens(TEXT, INTEGER, INTERVAL) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_unwarned_grants(INTERVAL) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_soonest_grants() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_problem_tokens(TEXT, INTEGER, INTERVAL) SET search_path = %I, pg_temp', current_schema());
END
$$;
