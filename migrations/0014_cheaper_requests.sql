-- 014: requests cost the server less.
--
-- A request that is its transaction's first write commits without waiting for its WAL flush.
-- Every transaction that sends a NOTIFY holds one server-wide lock from its commit until the
-- commit is flushed, so requests and the daemons' stored answers queued behind each other's
-- flushes. A request holds no token value and is cheap to lose in a server crash (the asker's
-- timeout covers it, as it covers a lost LISTEN connection); a transaction that had written
-- before the request keeps its own durability.
--
-- The waiting requests are read in PL/pgSQL, whose plan is kept per session (a SQL function
-- that cannot be inlined is planned on every call), and those another worker holds come
-- last, so a page of waiting requests is never filled by refreshes already under way.
CREATE OR REPLACE FUNCTION token_refresher_request_refresh(p_tenant_id TEXT, p_token_id INTEGER)
    RETURNS BOOLEAN
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    AS $$
    DECLARE
        first_write BOOLEAN := pg_current_xact_id_if_assigned() IS NULL;
    BEGIN
        UPDATE oauth_tokens
        SET refresh_requested_at = now(), refresh_requested_by = 'request:' || session_user
        WHERE id = p_token_id AND tenant_id = p_tenant_id;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        IF first_write THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        PERFORM pg_notify('token_refresher_requests',
                          json_build_object('token_id', p_token_id,
                                            'tenant_id', p_tenant_id)::text);
        RETURN true;
    END
    $$;

CREATE OR REPLACE FUNCTION token_refresher_requested_tokens(p_min_interval INTERVAL, p_limit INTEGER)
    RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, expires_at TIMESTAMPTZ,
                   refresh_status TEXT, rate_limited BOOLEAN, leased BOOLEAN,
                   recently_refreshed BOOLEAN, platform_state TEXT)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    AS $$
    BEGIN
        RETURN QUERY
        SELECT t.id, t.tenant_id, t.platform, t.expires_at, t.refresh_status,
               coalesce(t.last_error_kind = 'rate_limited' AND t.next_attempt_at > now(), false),
               coalesce(t.lease_expires_at > now(), false),
               coalesce(t.last_refreshed_at > now() - p_min_interval, false),
               coalesce(p.state, 'active')
        FROM oauth_tokens AS t
        LEFT JOIN token_refresher_platforms AS p ON p.platform = t.platform
        WHERE t.refresh_requested_at IS NOT NULL
        ORDER BY coalesce(t.lease_expires_at > now(), false), t.refresh_requested_at, t.id
        LIMIT p_limit;
    END
    $$;

-- Replacing a function keeps its owner and grants, not its settings: search_path again.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_request_refresh(TEXT, INTEGER) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_requested_tokens(INTERVAL, INTEGER) SET search_path = %I, pg_temp', current_schema());
END
$$;
