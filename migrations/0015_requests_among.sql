-- 015: the requests a notification named.
--
-- Each NOTIFY token_refresher_requests names its token; a daemon woken by some reads only the
-- state of those tokens, not every request waiting (most of which another daemon's refreshes
-- already hold), so the work of a pass follows the new requests rather than all outstanding
-- ones. The full read (token_refresher_requested_tokens) stays for start-up, reconnection and
-- the periodic sweep.

-- The tokens of p_ids with a request waiting, as token_refresher_requested_tokens returns them;
-- no token value.
CREATE FUNCTION token_refresher_requested_among(p_min_interval INTERVAL, p_ids INTEGER[])
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
        WHERE t.id = ANY (p_ids) AND t.refresh_requested_at IS NOT NULL
        ORDER BY t.refresh_requested_at, t.id
    $$;

REVOKE ALL ON FUNCTION token_refresher_requested_among(INTERVAL, INTEGER[]) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_requested_among(INTERVAL, INTEGER[]) SET search_path = %I, pg_temp', current_schema());
END
$$;
