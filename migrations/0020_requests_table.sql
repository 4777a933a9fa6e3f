-- 020: a refresh request costs the suite one row of a small table of its own.
--
-- A request was the column oauth_tokens.refresh_requested_at, which an index covers: each
-- request wrote a new version of the token row and an entry in every index of the table, about
-- half the server's work at hundreds of requests a second. A request is now a row of
-- token_refresher_refresh_requests, keyed by the token: written by the request function,
-- deleted (and answered with NOTIFY token_refresher_results) by the transaction that stores the
-- outcome, whoever it is; it outlives any daemon, as before. The old columns stay, unused, so
-- that nothing reading them breaks; requests waiting in them are moved here.
CREATE TABLE token_refresher_refresh_requests (
    token_id     INTEGER PRIMARY KEY REFERENCES oauth_tokens (id) ON DELETE CASCADE,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    requested_by TEXT
);

ALTER TABLE token_refresher_refresh_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON token_refresher_refresh_requests
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

INSERT INTO token_refresher_refresh_requests (token_id, tenant_id, requested_at, requested_by)
    SELECT id, tenant_id, refresh_requested_at, refresh_requested_by
    FROM oauth_tokens WHERE refresh_requested_at IS NOT NULL;
UPDATE oauth_tokens SET refresh_requested_at = NULL, refresh_requested_by = NULL
    WHERE refresh_requested_at IS NOT NULL;

CREATE OR REPLACE FUNCTION token_refresher_request_refresh(p_tenant_id TEXT, p_token_id INTEGER)
    RETURNS BOOLEAN
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    AS $$
    DECLARE
        first_write BOOLEAN := pg_current_xact_id_if_assigned() IS NULL;
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM oauth_tokens
                       WHERE id = p_token_id AND tenant_id = p_tenant_id) THEN
            RETURN false;
        END IF;
        IF first_write THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        INSERT INTO token_refresher_refresh_requests (token_id, tenant_id, requested_by)
        VALUES (p_token_id, p_tenant_id, 'request:' || session_user)
        ON CONFLICT (token_id) DO UPDATE SET requested_by = EXCLUDED.requested_by;
        PERFORM token_refresher_notify('token_refresher_requests',
                                       json_build_object('token_id', p_token_id,
                                                         'tenant_id', p_tenant_id));
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
        FROM token_refresher_refresh_requests AS r
        JOIN oauth_tokens AS t ON t.id = r.token_id AND t.tenant_id = r.tenant_id
        LEFT JOIN token_refresher_platforms AS p ON p.platform = t.platform
        ORDER BY coalesce(t.lease_expires_at > now(), false), r.requested_at, t.id
        LIMIT p_limit;
    END
    $$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_request_refresh(TEXT, INTEGER) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_requested_tokens(INTERVAL, INTEGER) SET search_path = %I, pg_temp', current_schema());
END
$$;
