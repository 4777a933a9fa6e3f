-- 004: the daemon's refresh state on oauth_tokens, the due-scan index, and the one
-- cross-tenant read the daemon needs.
--
-- Per-tenant work (reading and writing a token, its agent_executions and audit_events rows) runs
-- under `SET LOCAL app.tenant_id` and is checked by the tenant_isolation policies. Only the
-- due-scan crosses tenants: it goes through token_refresher_due_tokens(), a SECURITY DEFINER
-- function owned by the migrating (owner) role, which returns ids and metadata but never a token
-- value. The daemon's role therefore needs neither BYPASSRLS nor ownership.

ALTER TABLE oauth_tokens
    ADD COLUMN refresh_status       TEXT NOT NULL DEFAULT 'active',
    ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at      TIMESTAMPTZ,
    ADD COLUMN last_error_kind      TEXT,
    ADD COLUMN last_refreshed_at    TIMESTAMPTZ,
    ADD COLUMN lease_owner          TEXT,
    ADD COLUMN lease_expires_at     TIMESTAMPTZ,
    ADD CONSTRAINT oauth_tokens_refresh_status_known
        CHECK (refresh_status IN ('active', 'failing', 'needs_reauth', 'undecryptable')),
    ADD CONSTRAINT oauth_tokens_consecutive_failures_non_negative
        CHECK (consecutive_failures >= 0),
    ADD CONSTRAINT oauth_tokens_lease_owned
        CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL));

-- Serves the due-scan below: its WHERE on refresh_status and its ORDER BY (expires_at, id).
CREATE INDEX ix_oauth_tokens_due ON oauth_tokens (expires_at, id)
    WHERE refresh_status IN ('active', 'failing');

-- Tokens due for refresh across every tenant, soonest expiry first.
-- p_platform_leads maps a platform name to its lead time (an interval string); platforms absent
-- from it use p_default_lead. Rows waiting for a retry or leased by a live worker are left out.
CREATE FUNCTION token_refresher_due_tokens(
    p_default_lead   INTERVAL,
    p_platform_leads JSONB,
    p_limit          INTEGER
) RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, expires_at TIMESTAMPTZ)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id, t.platform, t.expires_at
        FROM oauth_tokens AS t
        WHERE t.refresh_status IN ('active', 'failing')
          AND t.expires_at <= now() + (
                SELECT greatest(p_default_lead, max(lead.value::interval))
                FROM jsonb_each_text(p_platform_leads) AS lead)
          AND t.expires_at <= now() + coalesce((p_platform_leads ->> t.platform)::interval, p_default_lead)
          AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= now())
          AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= now())
        ORDER BY t.expires_at, t.id
        LIMIT p_limit
    $$;

REVOKE ALL ON FUNCTION token_refresher_due_tokens(INTERVAL, JSONB, INTEGER) FROM PUBLIC;

-- Pin the function's search_path to the schema it was created in, so a caller cannot redirect
-- its table references; pg_temp last, as PostgreSQL recommends for SECURITY DEFINER functions.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION token_refresher_due_tokens(INTERVAL, JSONB, INTEGER) SET search_path = %I, pg_temp',
        current_schema());
END
$$;
