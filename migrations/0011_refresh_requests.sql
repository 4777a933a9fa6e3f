-- 011: refreshes asked for by the suite (an agent got a 401), served at once by every daemon.
--
-- refresh_requested_at is the request itself: set by token_refresher_request_refresh, cleared
-- by the transaction that stores the refresh answering it (or the reason none is made), which
-- also sends its NOTIFY token_refresher_results. A request outlives any daemon: one that starts
-- serves the requests recorded while none ran. refresh_requested_by is who asked
-- ('request:' || session_user), the audit user_id of the refresh.

ALTER TABLE oauth_tokens
    ADD COLUMN refresh_requested_at TIMESTAMPTZ,
    ADD COLUMN refresh_requested_by TEXT;

CREATE INDEX ix_oauth_tokens_refresh_requested ON oauth_tokens (refresh_requested_at)
    WHERE refresh_requested_at IS NOT NULL;

-- Asks the daemons for a refresh of p_token_id, if it belongs to p_tenant_id: true when the
-- request was recorded (and NOTIFY token_refresher_requests sent on commit), false for an
-- unknown id or another tenant's token. SECURITY DEFINER so that the suite's role needs no
-- access to the table; it returns no token value.
CREATE FUNCTION token_refresher_request_refresh(p_tenant_id TEXT, p_token_id INTEGER)
    RETURNS BOOLEAN
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    AS $$
    BEGIN
        UPDATE oauth_tokens
        SET refresh_requested_at = now(), refresh_requested_by = 'request:' || session_user
        WHERE id = p_token_id AND tenant_id = p_tenant_id;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        PERFORM pg_notify('token_refresher_requests',
                          json_build_object('token_id', p_token_id,
                                            'tenant_id', p_tenant_id)::text);
        RETURN true;
    END
    $$;

-- The tokens with a request waiting, and what decides how each is answered: its state, whether
-- a provider's Retry-After is pending, whether another worker's lease is on it, whether it was
-- refreshed within p_min_interval, and its platform's shared state. No token value.
CREATE FUNCTION token_refresher_requested_tokens(p_min_interval INTERVAL, p_limit INTEGER)
    RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, expires_at TIMESTAMPTZ,
                   refresh_status TEXT, rate_limited BOOLEAN, leased BOOLEAN,
                   recently_refreshed BOOLEAN, platform_state TEXT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id, t.platform, t.expires_at, t.refresh_status,
               coalesce(t.last_error_kind = 'rate_limited' AND t.next_attempt_at > now(), false),
               coalesce(t.lease_expires_at > now(), false),
               coalesce(t.last_refreshed_at > now() - p_min_interval, false),
               coalesce(p.state, 'active')
        FROM oauth_tokens AS t
        LEFT JOIN token_refresher_platforms AS p ON p.platform = t.platform
        WHERE t.refresh_requested_at IS NOT NULL
        ORDER BY t.refresh_requested_at, t.id
        LIMIT p_limit
    $$;

REVOKE ALL ON FUNCTION token_refresher_request_refresh(TEXT, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_requested_tokens(INTERVAL, INTEGER) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_request_refresh(TEXT, INTEGER) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_requested_tokens(INTERVAL, INTEGER) SET search_path = %I, pg_temp', current_schema());
END
$$;
