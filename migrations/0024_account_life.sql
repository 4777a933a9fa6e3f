-- 024: the account's life as the database sees it: reconnects, revocations, health, budgets.
--
-- A reconnect is the suite writing new token values into a row (plaintext, Fernet or sealed).
-- Triggers on the values make the row a new grant, whoever wrote it and whether or not a
-- daemon runs: active, failure counters and markers cleared, due by its new expiry, one
-- token.reconnected event and one audit row. The daemon's own writes (answers stored, keys
-- re-encrypted) are made in transactions that set token_refresher.own_write, which the
-- triggers' own condition leaves alone, so those writes never call them.
--
-- A revocation the platform told the suite about is reported through
-- token_refresher_report_revoked(), like a refresh request: the token waits for a person,
-- nothing is sent to the platform.
--
-- token_refresher_health is the current picture per tenant and platform, read with the
-- reader's rights: under the suite's row-level security, a tenant sees its own rows.

-- New values written by anyone else: the row is a new grant.
CREATE FUNCTION token_refresher_new_grant() RETURNS TRIGGER
    LANGUAGE plpgsql
    AS $$
    BEGIN
        NEW.refresh_status := 'active';
        NEW.consecutive_failures := 0;
        NEW.permanent_failures := 0;
        NEW.next_attempt_at := NULL;
        NEW.last_error_kind := NULL;
        NEW.last_http_status := NULL;
        NEW.last_trace_id := NULL;
        -- A new grant's end comes from its first answer or the platform's grant_lifetime,
        -- unless the writer states it.
        IF NEW.grant_expires_at IS NOT DISTINCT FROM OLD.grant_expires_at THEN
            NEW.grant_expires_at := NULL;
        END IF;
        NEW.grant_warned_for := NULL;
        NEW.grant_event_for := NULL;
        NEW.expired_event_for := NULL;
        RETURN NEW;
    END
    $$;

CREATE TRIGGER token_refresher_new_grant
    BEFORE UPDATE OF access_token, refresh_token ON oauth_tokens
    FOR EACH ROW
    WHEN ((NEW.access_token IS DISTINCT FROM OLD.access_token
           OR NEW.refresh_token IS DISTINCT FROM OLD.refresh_token)
          AND coalesce(current_setting('token_refresher.own_write', true), '') <> 'on')
    EXECUTE FUNCTION token_refresher_new_grant();

-- The reconnect's event and audit row, under the row's tenant.
CREATE FUNCTION token_refresher_reconnected() RETURNS TRIGGER
    LANGUAGE plpgsql SECURITY DEFINER
    AS $$
    BEGIN
        PERFORM token_refresher_write_event(
            'token.reconnected', NEW.tenant_id, NEW.id, NEW.platform, NEW.refresh_status,
            NULL, NULL, NEW.expires_at, NEW.grant_expires_at, NULL);
        INSERT INTO audit_events (tenant_id, user_id, action)
        VALUES (NEW.tenant_id, 'system:token-refresher', 'oauth_token.reconnected');
        RETURN NULL;
    END
    $$;

CREATE TRIGGER token_refresher_reconnected
    AFTER UPDATE OF access_token, refresh_token ON oauth_tokens
    FOR EACH ROW
    WHEN ((NEW.access_token IS DISTINCT FROM OLD.access_token
           OR NEW.refresh_token IS DISTINCT FROM OLD.refresh_token)
          AND coalesce(current_setting('token_refresher.own_write', true), '') <> 'on')
    EXECUTE FUNCTION token_refresher_reconnected();

-- The suite's word that a user removed the app: the token waits for a person. False for an
-- unknown id or another tenant's token.
CREATE FUNCTION token_refresher_report_revoked(p_tenant_id TEXT, p_token_id INTEGER,
                                               p_reason TEXT)
    RETURNS BOOLEAN
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    AS $$
    DECLARE
        reason TEXT := left(coalesce(p_reason, ''), 200);
        token  RECORD;
    BEGIN
        UPDATE oauth_tokens
        SET refresh_status = 'needs_reauth', last_error_kind = 'revoked',
            next_attempt_at = NULL, last_http_status = NULL, last_trace_id = NULL
        WHERE id = p_token_id AND tenant_id = p_tenant_id
        RETURNING id, platform, expires_at INTO token;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        INSERT INTO agent_executions (tenant_id, agent_id, dry_run, result)
        VALUES (p_tenant_id, 'token-refresher', false,
                json_build_object('token_id', p_token_id, 'platform', token.platform,
                                  'outcome', 'needs_reauth', 'error_kind', 'revoked',
                                  'reason', reason, 'trace_id', NULL,
                                  'expires_at', token.expires_at)::text);
        INSERT INTO audit_events (tenant_id, user_id, action)
        VALUES (p_tenant_id, 'request:' || session_user, 'oauth_token.revoked');
        RETURN true;
    END
    $$;

REVOKE EXECUTE ON FUNCTION token_refresher_report_revoked(TEXT, INTEGER, TEXT) FROM PUBLIC;

-- Usable now: active, or failing and not yet expired, on a platform that is not suspended.
CREATE FUNCTION token_refresher_is_usable(p_refresh_status TEXT, p_expires_at TIMESTAMPTZ,
                                          p_platform_state TEXT)
    RETURNS BOOLEAN
    LANGUAGE sql STABLE
    AS $$
        SELECT coalesce(p_platform_state, 'active') <> 'suspended'
           AND (p_refresh_status = 'active'
                OR (p_refresh_status = 'failing' AND p_expires_at > now()))
    $$;

CREATE VIEW token_refresher_health WITH (security_invoker = true) AS
    SELECT t.tenant_id,
           t.platform,
           count(*) AS tokens,
           count(*) FILTER (WHERE token_refresher_is_usable(t.refresh_status, t.expires_at,
                                                             p.state)) AS usable,
           count(*) FILTER (WHERE t.refresh_status IN ('needs_reauth', 'undecryptable'))
               AS needs_person,
           count(*) FILTER (WHERE t.grant_event_for IS NOT NULL
                              AND NOT token_refresher_moved_a_minute(t.grant_expires_at,
                                                                     t.grant_event_for))
               AS grants_ending,
           min(t.grant_expires_at) FILTER (WHERE t.grant_event_for IS NOT NULL
                              AND NOT token_refresher_moved_a_minute(t.grant_expires_at,
                                                                     t.grant_event_for))
               AS soonest_grant_end,
           max(t.last_refreshed_at) AS last_success_at
    FROM oauth_tokens AS t
    LEFT JOIN token_refresher_platforms AS p ON p.platform = t.platform
    GROUP BY t.tenant_id, t.platform;

-- Every tenant's usable share per platform, for the daemon's gauge.
CREATE FUNCTION token_refresher_usable_by_platform()
    RETURNS TABLE (platform TEXT, tokens BIGINT, usable BIGINT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT t.platform, count(*),
               count(*) FILTER (WHERE token_refresher_is_usable(t.refresh_status,
                                                                 t.expires_at, p.state))
        FROM oauth_tokens AS t
        LEFT JOIN token_refresher_platforms AS p ON p.platform = t.platform
        GROUP BY t.platform
    $$;

REVOKE EXECUTE ON FUNCTION token_refresher_usable_by_platform() FROM PUBLIC;

-- Token-endpoint budgets shared by every daemon. A platform's `rate_limit` (N requests per
-- period) is kept as the time its next request may be sent: each request is spaced a period/N
-- after the one before, whichever daemon sends it, so no window of one period ever holds more
-- than N. A daemon takes, in one statement, as many send times as it wants for each platform
-- within a short horizon; a 429's Retry-After pauses the platform for all of them. The table
-- holds no tenant's data.
CREATE TABLE token_refresher_budgets (
    platform     TEXT PRIMARY KEY,
    -- When the platform's next request may go out.
    next_send_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- No request before this time: the platform answered 429 with a Retry-After.
    paused_until TIMESTAMPTZ
);

-- Send times for `p_wanted[i]` requests to `p_platforms[i]`, spaced `p_spacing[i]` apart, as
-- many as start before now() + p_horizon. Returns, per platform, how many were granted, when
-- the first may go out and the rest follow (seconds from now), and when more could be granted
-- (seconds from now). A value that is not a finite time (written by hand) counts as now.
CREATE FUNCTION token_refresher_take_budget(p_platforms TEXT[], p_wanted INTEGER[],
                                            p_spacing INTERVAL[], p_horizon INTERVAL)
    RETURNS TABLE (platform TEXT, granted INTEGER, first_in DOUBLE PRECISION,
                   spacing DOUBLE PRECISION, more_in DOUBLE PRECISION, database_now TIMESTAMPTZ)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    AS $$
    #variable_conflict use_column
    DECLARE
        i        INTEGER;
        gap      DOUBLE PRECISION;
        start    TIMESTAMPTZ;
        room     DOUBLE PRECISION;
        taken    INTEGER;
        next_at  TIMESTAMPTZ;
        paused   TIMESTAMPTZ;
    BEGIN
        FOR i IN 1 .. coalesce(cardinality(p_platforms), 0) LOOP
            gap := greatest(extract(epoch FROM p_spacing[i]), 0.000001);
            INSERT INTO token_refresher_budgets AS b (platform) VALUES (p_platforms[i])
                ON CONFLICT (platform) DO NOTHING;
            SELECT b.next_send_at, b.paused_until INTO next_at, paused
                FROM token_refresher_budgets AS b WHERE b.platform = p_platforms[i] FOR UPDATE;
            IF NOT isfinite(next_at) THEN
                next_at := now();
            END IF;
            IF paused IS NULL OR NOT isfinite(paused) THEN
                paused := now();
            END IF;
            start := greatest(next_at, paused, now());
            room := extract(epoch FROM (now() + p_horizon) - start) / gap;
            taken := CASE WHEN room < 0 THEN 0
                          ELSE least(greatest(p_wanted[i], 0)::DOUBLE PRECISION,
                                     floor(room) + 1)::INTEGER END;
            IF taken > 0 THEN
                UPDATE token_refresher_budgets AS b
                    SET next_send_at = start + make_interval(secs => taken * gap)
                    WHERE b.platform = p_platforms[i];
            END IF;
            platform := p_platforms[i];
            granted := taken;
            first_in := extract(epoch FROM start - now());
            spacing := gap;
            more_in := greatest(extract(epoch FROM (start + make_interval(secs => taken * gap))
                                                   - (now() + p_horizon)), 0);
            database_now := now();
            RETURN NEXT;
        END LOOP;
    END
    $$;

-- A 429 with Retry-After: no daemon sends to `p_platform` before now() + p_for.
CREATE FUNCTION token_refresher_pause_budget(p_platform TEXT, p_for INTERVAL)
    RETURNS VOID
    LANGUAGE sql VOLATILE SECURITY DEFINER
    AS $$
        INSERT INTO token_refresher_budgets AS b (platform, paused_until)
        VALUES (p_platform, now() + p_for)
        ON CONFLICT (platform) DO UPDATE
            SET paused_until = CASE
                WHEN b.paused_until IS NULL OR NOT isfinite(b.paused_until)
                    THEN EXCLUDED.paused_until
                ELSE greatest(b.paused_until, EXCLUDED.paused_until) END
    $$;

REVOKE EXECUTE ON FUNCTION token_refresher_take_budget(TEXT[], INTEGER[], INTERVAL[], INTERVAL),
    token_refresher_pause_budget(TEXT, INTERVAL) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_reconnected() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_report_revoked(TEXT, INTEGER, TEXT) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_usable_by_platform() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_take_budget(TEXT[], INTEGER[], INTERVAL[], INTERVAL) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_pause_budget(TEXT, INTERVAL) SET search_path = %I, pg_temp', current_schema());
END
$$;

-- The group roles' grants, with this revision's objects.
CREATE OR REPLACE FUNCTION token_refresher_grant_roles() RETURNS BOOLEAN
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        scoped TEXT;
    BEGIN
        IF to_regrole('token_refresher_daemon') IS NULL
           OR to_regrole('token_refresher_suite') IS NULL THEN
            RETURN false;
        END IF;
        -- Only the database's and the schema's owners may grant these; PUBLIC holds both by
        -- default, so a migrating role that owns only the tables goes on without them.
        BEGIN
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO token_refresher_daemon, token_refresher_suite',
                           current_database());
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO token_refresher_daemon, token_refresher_suite',
                           current_schema());
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'CONNECT and USAGE are left to the database''s owner';
        END;
        GRANT SELECT ON tenants, _sqlx_migrations TO token_refresher_daemon;
        GRANT SELECT, UPDATE ON oauth_tokens TO token_refresher_daemon;
        GRANT INSERT ON agent_executions, audit_events TO token_refresher_daemon;
        GRANT USAGE ON SEQUENCE agent_executions_id_seq, audit_events_id_seq
            TO token_refresher_daemon;
        GRANT SELECT, INSERT, UPDATE ON token_refresher_platforms TO token_refresher_daemon;
        GRANT SELECT, UPDATE ON token_refresher_events TO token_refresher_daemon;
        GRANT SELECT, DELETE ON token_refresher_refresh_requests TO token_refresher_daemon;
        GRANT EXECUTE ON FUNCTION
            token_refresher_candidates(jsonb, interval, text[], text, integer[], boolean,
                                       timestamptz, integer, integer),
            token_refresher_status_counts(text),
            token_refresher_problem_tokens(text, integer),
            token_refresher_problem_tokens(text, integer, interval),
            token_refresher_idle_tokens(jsonb, text, integer),
            token_refresher_key_ids(),
            token_refresher_probe_candidate(text, integer),
            token_refresher_backed_off_tokens(text, text[]),
            token_refresher_unwarned_grants(interval),
            token_refresher_soonest_grants(),
            token_refresher_requested_tokens(interval, integer),
            token_refresher_unreported_expiries(),
            token_refresher_due_events(integer),
            token_refresher_due_events(integer, interval),
            token_refresher_forget_events(interval),
            token_refresher_forget_events(interval, interval),
            token_refresher_backlog(interval)
            TO token_refresher_daemon;
        GRANT EXECUTE ON FUNCTION token_refresher_usable_by_platform(),
            token_refresher_take_budget(text[], integer[], interval[], interval),
            token_refresher_pause_budget(text, interval)
            TO token_refresher_daemon;
        GRANT EXECUTE ON FUNCTION token_refresher_request_refresh(text, integer),
            token_refresher_report_revoked(text, integer, text)
            TO token_refresher_suite;
        -- The health view runs with its reader's rights, under the reader's row-level
        -- security: the suite's roles read the columns it shows, never a token value.
        GRANT SELECT (id, tenant_id, platform, refresh_status, expires_at, grant_expires_at,
                      grant_event_for, last_refreshed_at) ON oauth_tokens TO token_refresher_suite;
        GRANT SELECT (platform, state) ON token_refresher_platforms TO token_refresher_suite;
        GRANT SELECT ON token_refresher_health TO token_refresher_suite, token_refresher_daemon;
        FOREACH scoped IN ARRAY ARRAY['oauth_tokens', 'agent_executions', 'audit_events',
                                      'token_refresher_events',
                                      'token_refresher_refresh_requests'] LOOP
            EXECUTE format('DROP POLICY IF EXISTS token_refresher_daemon ON %I', scoped);
            EXECUTE format('CREATE POLICY token_refresher_daemon ON %I TO token_refresher_daemon'
                           ' USING (true) WITH CHECK (true)', scoped);
        END LOOP;
        RETURN true;
    END
    $$;

REVOKE EXECUTE ON FUNCTION token_refresher_grant_roles() FROM PUBLIC;

SELECT token_refresher_grant_roles();
