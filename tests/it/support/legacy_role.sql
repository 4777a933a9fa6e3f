-- The daemon role of installs made before migration 021: explicit grants, no group role.
CREATE ROLE token_refresher LOGIN PASSWORD 'change-me'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
GRANT CONNECT ON DATABASE suite TO token_refresher;
GRANT USAGE ON SCHEMA public TO token_refresher;
-- the tenant list, and the migration state that `check` verifies
GRANT SELECT ON tenants, _sqlx_migrations TO token_refresher;
-- tokens: read and update, always under app.tenant_id (row-level security applies)
GRANT SELECT, UPDATE ON oauth_tokens TO token_refresher;
-- one agent_executions and one audit_events row per attempt, under the token's tenant
GRANT INSERT ON agent_executions, audit_events TO token_refresher;
GRANT USAGE ON SEQUENCE agent_executions_id_seq, audit_events_id_seq TO token_refresher;
-- platforms' shared states (suspended, outage), which hold no tenant data
GRANT SELECT, INSERT, UPDATE ON token_refresher_platforms TO token_refresher;
-- events: written by triggers in the transaction of each change; the daemon reads them
-- under their tenant to deliver them, and marks each delivery
GRANT SELECT, UPDATE ON token_refresher_events TO token_refresher;
-- refresh requests the suite recorded: read, and deleted by the transaction that answers each
GRANT SELECT, DELETE ON token_refresher_refresh_requests TO token_refresher;
-- the cross-tenant due-scan, which returns no token values
GRANT EXECUTE ON FUNCTION
    token_refresher_candidates(jsonb, interval, text[], text, integer[], boolean, timestamptz, integer, integer),
    token_refresher_status_counts(text),
    token_refresher_problem_tokens(text, integer),
    token_refresher_idle_tokens(jsonb, text, integer),
    token_refresher_key_ids(),
    token_refresher_probe_candidate(text, integer),
    token_refresher_backed_off_tokens(text, text[]),
    token_refresher_unwarned_grants(interval),
    token_refresher_soonest_grants(),
    token_refresher_problem_tokens(text, integer, interval),
    token_refresher_requested_tokens(interval, integer),
    token_refresher_unreported_expiries(),
    token_refresher_due_events(integer),
    token_refresher_forget_events(interval),
    token_refresher_due_events(integer, interval),
    token_refresher_forget_events(interval, interval)
    TO token_refresher;
