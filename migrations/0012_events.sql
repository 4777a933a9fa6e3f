-- 012: events the suite can show its tenants, written in the transaction of the change they
-- report (a transactional outbox), announced with NOTIFY token_refresher_events on commit and
-- delivered to a webhook by the daemons.
--
-- The events are written by triggers on the columns that record each change, so whatever
-- statement makes a change, the event exists exactly when the change committed, once:
--   refresh_status                           token.failing, token.needs_reauth,
--                                            token.recovered, token.undecryptable
--   expired_event_for (set by a cycle)        token.expired, once per expires_at
--   grant_event_for (set by a commit or cycle) grant.expiring, once per grant end
--   token_refresher_platforms.state          platform.suspended, platform.resumed
-- last_trace_id and last_http_status are the attempt that made a token's latest change, so
-- its event names it.

ALTER TABLE oauth_tokens
    ADD COLUMN last_trace_id     TEXT,
    ADD COLUMN last_http_status  INTEGER,
    ADD COLUMN expired_event_for TIMESTAMPTZ,
    ADD COLUMN grant_event_for   TIMESTAMPTZ;

CREATE TABLE token_refresher_events (
    id              BIGSERIAL PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_id        INTEGER,
    platform        TEXT,
    type            TEXT NOT NULL,
    data            JSONB NOT NULL,
    created_at      TIMESTAMPTZ DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    attempts        INTEGER DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error      TEXT
);

-- Undelivered events, by token and age: what a delivery pass reads.
CREATE INDEX ix_token_refresher_events_pending
    ON token_refresher_events (tenant_id, token_id, id)
    WHERE delivered_at IS NULL;
-- Delivered events by age: what retention deletes.
CREATE INDEX ix_token_refresher_events_delivered ON token_refresher_events (delivered_at)
    WHERE delivered_at IS NOT NULL;

ALTER TABLE token_refresher_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON token_refresher_events
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- One event: its row and its data, which never holds a token value.
CREATE FUNCTION token_refresher_write_event(
    p_type TEXT, p_tenant_id TEXT, p_token_id INTEGER, p_platform TEXT, p_state TEXT,
    p_error_kind TEXT, p_http_status INTEGER, p_expires_at TIMESTAMPTZ,
    p_grant_expires_at TIMESTAMPTZ, p_trace_id TEXT)
    RETURNS VOID
    LANGUAGE sql VOLATILE SECURITY DEFINER
    AS $$
        INSERT INTO token_refresher_events (tenant_id, token_id, platform, type, data)
        VALUES (p_tenant_id, p_token_id, p_platform, p_type,
                jsonb_build_object(
                    'tenant_id', p_tenant_id, 'token_id', p_token_id, 'platform', p_platform,
                    'state', p_state, 'error_kind', p_error_kind, 'http_status', p_http_status,
                    'expires_at', p_expires_at, 'grant_expires_at', p_grant_expires_at,
                    'trace_id', p_trace_id))
    $$;

-- A token's change, as events.
CREATE FUNCTION token_refresher_token_events() RETURNS TRIGGER
    LANGUAGE plpgsql SECURITY DEFINER
    AS $$
    DECLARE
        kinds TEXT[] := ARRAY[]::TEXT[];
        kind  TEXT;
    BEGIN
        IF NEW.refresh_status IS DISTINCT FROM OLD.refresh_status THEN
            IF NEW.refresh_status = 'failing' AND OLD.refresh_status = 'active' THEN
                kinds := kinds || 'token.failing'::TEXT;
            ELSIF NEW.refresh_status = 'needs_reauth' THEN
                kinds := kinds || 'token.needs_reauth'::TEXT;
            ELSIF NEW.refresh_status = 'undecryptable' THEN
                kinds := kinds || 'token.undecryptable'::TEXT;
            ELSIF NEW.refresh_status = 'active'
                  AND OLD.refresh_status IN ('failing', 'needs_reauth', 'undecryptable')
                  AND NEW.last_refreshed_at IS DISTINCT FROM OLD.last_refreshed_at THEN
                kinds := kinds || 'token.recovered'::TEXT;
            END IF;
        END IF;
        IF NEW.expired_event_for IS NOT NULL
           AND NEW.expired_event_for IS DISTINCT FROM OLD.expired_event_for THEN
            kinds := kinds || 'token.expired'::TEXT;
        END IF;
        IF NEW.grant_event_for IS NOT NULL
           AND NEW.grant_event_for IS DISTINCT FROM OLD.grant_event_for THEN
            kinds := kinds || 'grant.expiring'::TEXT;
        END IF;
        FOREACH kind IN ARRAY kinds LOOP
            PERFORM token_refresher_write_event(
                kind, NEW.tenant_id, NEW.id, NEW.platform, NEW.refresh_status,
                NEW.last_error_kind, NEW.last_http_status, NEW.expires_at,
                NEW.grant_expires_at, NEW.last_trace_id);
        END LOOP;
        RETURN NULL;
    END
    $$;

CREATE TRIGGER token_refresher_token_events
    AFTER UPDATE ON oauth_tokens
    FOR EACH ROW
    WHEN (NEW.refresh_status IS DISTINCT FROM OLD.refresh_status
          OR NEW.expired_event_for IS DISTINCT FROM OLD.expired_event_for
          OR NEW.grant_event_for IS DISTINCT FROM OLD.grant_event_for)
    EXECUTE FUNCTION token_refresher_token_events();

-- A platform's change of state, as an event under the tenant of the token whose answer caused
-- it (for a resume, the one that caused the suspension). A platform changed without such a
-- token (none is known) has no tenant to show the event to, and writes none.
CREATE FUNCTION token_refresher_platform_events() RETURNS TRIGGER
    LANGUAGE plpgsql SECURITY DEFINER
    AS $$
    DECLARE
        cause_tenant TEXT;
        cause_token  INTEGER;
        token        RECORD;
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state THEN
            RETURN NULL;
        END IF;
        IF TG_OP = 'INSERT' AND NEW.state = 'active' THEN
            RETURN NULL;
        END IF;
        IF NEW.state = 'active' THEN
            cause_tenant := OLD.failed_tenant_id;
            cause_token := OLD.failed_token_id;
        ELSE
            cause_tenant := NEW.failed_tenant_id;
            cause_token := NEW.failed_token_id;
        END IF;
        IF cause_tenant IS NULL OR NOT EXISTS (SELECT 1 FROM tenants WHERE id = cause_tenant) THEN
            RETURN NULL;
        END IF;
        SELECT t.expires_at, t.grant_expires_at, t.last_trace_id INTO token
        FROM oauth_tokens AS t WHERE t.id = cause_token AND t.tenant_id = cause_tenant;
        PERFORM token_refresher_write_event(
            CASE WHEN NEW.state = 'active' THEN 'platform.resumed' ELSE 'platform.suspended' END,
            cause_tenant, cause_token, NEW.platform, NEW.state, NEW.error_kind, NEW.http_status,
            token.expires_at, token.grant_expires_at, token.last_trace_id);
        RETURN NULL;
    END
    $$;

CREATE TRIGGER token_refresher_platform_events
    AFTER INSERT OR UPDATE ON token_refresher_platforms
    FOR EACH ROW
    EXECUTE FUNCTION token_refresher_platform_events();

-- Every event is announced on commit, without its data: the suite reads the row.
CREATE FUNCTION token_refresher_announce_event() RETURNS TRIGGER
    LANGUAGE plpgsql
    AS $$
    BEGIN
        PERFORM pg_notify('token_refresher_events',
                          json_build_object('id', NEW.id, 'type', NEW.type,
                                            'tenant_id', NEW.tenant_id,
                                            'token_id', NEW.token_id,
                                            'platform', NEW.platform)::text);
        RETURN NULL;
    END
    $$;

CREATE TRIGGER token_refresher_announce_event
    AFTER INSERT ON token_refresher_events
    FOR EACH ROW
    EXECUTE FUNCTION token_refresher_announce_event();

-- Active or failing tokens past their expiry with no token.expired event for that expiry.
-- SECURITY DEFINER like the other cross-tenant functions; it returns no token value.
CREATE FUNCTION token_refresher_unreported_expiries()
    RETURNS TABLE (id INTEGER, tenant_id TEXT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.id, t.tenant_id
        FROM oauth_tokens AS t
        WHERE t.refresh_status IN ('active', 'failing')
          AND t.expires_at <= now()
          AND t.expired_event_for IS DISTINCT FROM t.expires_at
    $$;

-- Undelivered events due for delivery, oldest first, at most one per token: a token's next
-- event waits until the one before it is delivered or given up (next_attempt_at 'infinity').
CREATE FUNCTION token_refresher_due_events(p_limit INTEGER)
    RETURNS TABLE (id BIGINT, tenant_id TEXT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT e.id, e.tenant_id
        FROM token_refresher_events AS e
        WHERE e.delivered_at IS NULL
          AND (e.next_attempt_at IS NULL OR e.next_attempt_at <= now())
          AND NOT EXISTS (
              SELECT 1 FROM token_refresher_events AS earlier
              WHERE earlier.delivered_at IS NULL
                AND earlier.next_attempt_at IS DISTINCT FROM 'infinity'
                AND earlier.tenant_id = e.tenant_id
                AND earlier.token_id IS NOT DISTINCT FROM e.token_id
                AND earlier.id < e.id)
        ORDER BY e.id
        LIMIT p_limit
    $$;

-- Deletes delivered events older than p_retention; how many it deleted.
CREATE FUNCTION token_refresher_forget_events(p_retention INTERVAL)
    RETURNS BIGINT
    LANGUAGE sql VOLATILE SECURITY DEFINER
    AS $$
        WITH forgotten AS (
            DELETE FROM token_refresher_events
            WHERE delivered_at IS NOT NULL AND delivered_at < now() - p_retention
            RETURNING 1)
        SELECT count(*) FROM forgotten
    $$;

REVOKE ALL ON FUNCTION token_refresher_write_event(TEXT, TEXT, INTEGER, TEXT, TEXT, TEXT,
    INTEGER, TIMESTAMPTZ, TIMESTAMPTZ, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_unreported_expiries() FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_due_events(INTEGER) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_forget_events(INTERVAL) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_write_event(TEXT, TEXT, INTEGER, TEXT, TEXT, TEXT, INTEGER, TIMESTAMPTZ, TIMESTAMPTZ, TEXT) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_token_events() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_platform_events() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_unreported_expiries() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_due_events(INTEGER) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_forget_events(INTERVAL) SET search_path = %I, pg_temp', current_schema());
END
$$;
