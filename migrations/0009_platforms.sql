-- 009: what the daemons know about each platform as a whole, shared through the database.
--
-- A client-level refusal (a wrong client secret, say) suspends a platform and an outage pauses
-- it, for every daemon at once: no token of a platform in another state than 'active' is
-- claimed, except one probe at a time (next_probe_at) and an operator's forced refresh. The
-- table is not tenant-scoped: it holds no token and no tenant's data, and
-- credentials_fingerprint is a digest of the platform's token URL, client id and secret, never
-- the secret.

CREATE TABLE token_refresher_platforms (
    platform                TEXT PRIMARY KEY,
    state                   TEXT NOT NULL DEFAULT 'active',
    error_kind              TEXT,
    http_status             INTEGER,
    changed_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_probe_at           TIMESTAMPTZ,
    credentials_fingerprint TEXT,
    -- The token whose refusal suspended the platform: never its probe, and charged one
    -- permanent failure if a probe then shows the platform is fine.
    failed_token_id         INTEGER,
    failed_tenant_id        TEXT,
    -- The wait before the next probe of an outage, doubled by each probe.
    probe_delay_seconds     DOUBLE PRECISION,
    CONSTRAINT token_refresher_platforms_state_known
        CHECK (state IN ('active', 'suspended', 'outage'))
);

-- The soonest-expiring token of a platform other than p_exclude_id that a worker could claim
-- now, due or not (but not before its own retry time, which may be a provider's Retry-After):
-- a suspended or paused platform's probe. Like the other cross-tenant
-- functions it is SECURITY DEFINER and returns no token value.
CREATE FUNCTION token_refresher_probe_candidate(p_platform TEXT, p_exclude_id INTEGER)
    RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, expires_at TIMESTAMPTZ)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id, t.platform, t.expires_at
        FROM oauth_tokens AS t
        WHERE t.refresh_status IN ('active', 'failing')
          AND t.platform = p_platform
          AND t.id IS DISTINCT FROM p_exclude_id
          AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= now())
          AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now())
        ORDER BY t.expires_at, t.id
        LIMIT 1
    $$;

-- Tokens of a platform waiting out a backoff after one of p_error_kinds: once the platform's
-- outage is over they are due again at once.
CREATE FUNCTION token_refresher_backed_off_tokens(p_platform TEXT, p_error_kinds TEXT[])
    RETURNS TABLE (id INTEGER, tenant_id TEXT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id
        FROM oauth_tokens AS t
        WHERE t.refresh_status = 'failing'
          AND t.platform = p_platform
          AND t.next_attempt_at > now()
          AND t.last_error_kind = ANY (p_error_kinds)
    $$;

REVOKE ALL ON FUNCTION token_refresher_probe_candidate(TEXT, INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_backed_off_tokens(TEXT, TEXT[]) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_probe_candidate(TEXT, INTEGER) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_backed_off_tokens(TEXT, TEXT[]) SET search_path = %I, pg_temp', current_schema());
END
$$;
