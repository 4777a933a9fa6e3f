-- 021: the daemon's rights are a group role, and tenant correctness is the statements' own.
--
-- token_refresher_daemon (NOLOGIN) holds every grant the daemon needs and a row-level-security
-- policy of its own on the tenant-scoped tables it reads and writes, so that one statement may
-- cover the rows of many tenants: every row the daemon writes takes its tenant_id from the
-- locked token row in the same statement, never from a parameter. Operators create the login
-- role `IN ROLE token_refresher_daemon`. token_refresher_suite holds the suite's EXECUTE on the
-- request function. A migrating role that may not create roles gets neither: `migrate` then
-- prints the SQL that creates them, and token_refresher_grant_roles() (re-defined by any later
-- migration that needs more) grants the rest whenever it runs with the roles present.
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
            token_refresher_forget_events(interval, interval)
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

-- Roles belong to the whole cluster: another database's migration may be creating the same
-- role at this moment, which is as good as this one creating it.
DO $$
DECLARE
    may_create BOOLEAN := (SELECT rolsuper OR rolcreaterole FROM pg_roles
                           WHERE rolname = current_user);
    wanted TEXT;
BEGIN
    IF may_create THEN
        FOREACH wanted IN ARRAY ARRAY['token_refresher_daemon', 'token_refresher_suite'] LOOP
            BEGIN
                IF to_regrole(wanted) IS NULL THEN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
                END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END LOOP;
    END IF;
    PERFORM token_refresher_grant_roles();
END
$$;
