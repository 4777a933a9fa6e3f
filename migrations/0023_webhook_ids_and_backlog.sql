-- 023: each event carries a webhook id of its own, and the backlogs are read in one call.
--
-- `webhook_id` is a random UUID drawn when the event is written and kept with it: a webhook's
-- `webhook-id` is `msg_` and this UUID, the same on every retry of the event, and unlike the
-- serial `id` it does not repeat after a database is restored or in another database, so a
-- receiver that drops ids it has handled drops only repeats. Adding the column with a volatile
-- default fills every existing event with a UUID of its own.
ALTER TABLE token_refresher_events
    ADD COLUMN webhook_id UUID NOT NULL DEFAULT gen_random_uuid();

-- What waits, for the gauges: refresh requests not yet answered, and the events delivery will
-- still try (undelivered, not given up, and tried before or younger than p_max_age) with the
-- age of the oldest of them in seconds (0 when none). Counts only, across tenants.
CREATE FUNCTION token_refresher_backlog(p_max_age INTERVAL)
    RETURNS TABLE (requests_waiting BIGINT, webhook_pending BIGINT,
                   webhook_oldest_pending_seconds FLOAT8)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT (SELECT count(*) FROM token_refresher_refresh_requests),
               count(*),
               coalesce(greatest(extract(epoch FROM now() - min(e.created_at)), 0), 0)::float8
        FROM token_refresher_events AS e
        WHERE e.delivered_at IS NULL
          AND e.next_attempt_at IS DISTINCT FROM 'infinity'
          AND (e.created_at > now() - p_max_age OR coalesce(e.attempts, 0) > 0)
    $$;

REVOKE ALL ON FUNCTION token_refresher_backlog(INTERVAL) FROM PUBLIC;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_backlog(INTERVAL) SET search_path = %I, pg_temp',
                   current_schema());
END
$$;

-- The group role's grants, as 021 wrote them, with the backlog function.
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
        GRANT EXECUTE ON FUNCTION token_refresher_request_refresh(text, integer)
            TO token_refresher_suite;
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

-- Login roles of earlier installs hold explicit grants instead of the group: whoever may take
-- events for delivery may read the backlog too.
DO $$
DECLARE
    holder TEXT;
BEGIN
    PERFORM token_refresher_grant_roles();
    FOR holder IN
        SELECT rolname FROM pg_roles
        WHERE NOT rolsuper AND rolname <> current_user AND rolname NOT LIKE 'pg\_%'
          AND has_function_privilege(oid, 'token_refresher_due_events(integer, interval)',
                                     'EXECUTE')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION token_refresher_backlog(interval) TO %I',
                       holder);
    END LOOP;
END
$$;
