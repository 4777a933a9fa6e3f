-- 014: a claim, and each step of a commit group, in one call whatever the number of tenants.
--
-- Each function below acts for every tenant its arrays name, one after the other, exactly as
-- the separate statements it replaces did: token_refresher_act_for sets app.tenant_id (and the
-- lock_timeout) for the rest of the transaction before that tenant's statements, so row-level
-- security checks every row they touch under the tenant's own policy. One call instead of two
-- statements per tenant saves the round trips that dominated claims and commits spread over
-- many tenants. Callers pass their arrays grouped by tenant (the
-- positions of each tenant's entries slice every array); rows of a tenant are locked by id.
--
-- They are SECURITY INVOKER: they run with the caller's rights and under its row-level
-- security, so they let a caller do nothing it could not do with plain statements. EXECUTE is
-- revoked from PUBLIC all the same and granted to the daemon's role (README's SQL).
--
-- Their statements are planned once per session (plan_cache_mode = force_generic_plan): a
-- plan made again for each tenant's values would cost more than the statement it plans, many
-- times per call.
--
-- Result columns are cast to the types the daemon reads, so a suite's table whose columns
-- were declared with a wider type still returns the same shape.

-- Makes the rest of the transaction act for p_tenant_id, waiting at most p_lock_timeout for
-- a lock another session holds. (It has no SET clause of its own: one would undo these
-- settings as it returns. The SET clauses of the functions calling it name another
-- parameter, so the settings outlast them too.)
CREATE FUNCTION token_refresher_act_for(p_tenant_id TEXT, p_lock_timeout TEXT)
    RETURNS VOID
    LANGUAGE plpgsql VOLATILE
    AS $$
    BEGIN
        PERFORM set_config('app.tenant_id', p_tenant_id, true),
                set_config('lock_timeout', p_lock_timeout, true);
    END
    $$;

-- The runs of equal tenants in p_tenant_ids, in order: each tenant with the first and last
-- position (1-based) of its run, which slice the arrays that go with it. Callers pass their
-- arrays grouped by tenant, so each tenant is one run; a tenant met again starts another.
CREATE FUNCTION token_refresher_tenant_runs(p_tenant_ids TEXT[])
    RETURNS TABLE (tenant_id TEXT, first_at INTEGER, last_at INTEGER)
    LANGUAGE plpgsql IMMUTABLE
    SET plan_cache_mode = force_generic_plan
    AS $$
    #variable_conflict use_column
    BEGIN
        RETURN QUERY
        SELECT r.tenant_id, min(r.at)::integer, max(r.at)::integer
        FROM (SELECT u.tenant_id, u.at,
                     u.at - row_number() OVER (PARTITION BY u.tenant_id ORDER BY u.at) AS run
              FROM unnest(p_tenant_ids) WITH ORDINALITY AS u(tenant_id, at)) AS r
        GROUP BY r.tenant_id, r.run
        ORDER BY min(r.at);
    END
    $$;

-- Sends a requested refresh's result on token_refresher_results (at commit): the JSON the
-- suite's agents wait for.
CREATE FUNCTION token_refresher_notify_result(
    p_token_id INTEGER, p_tenant_id TEXT, p_platform TEXT, p_outcome TEXT, p_error_kind TEXT,
    p_expires_at TIMESTAMPTZ)
    RETURNS VOID
    LANGUAGE plpgsql VOLATILE
    AS $$
    BEGIN
        PERFORM pg_notify('token_refresher_results', json_build_object(
            'token_id', p_token_id, 'tenant_id', p_tenant_id, 'platform', p_platform,
            'outcome', p_outcome, 'error_kind', p_error_kind,
            'expires_at', p_expires_at)::text);
    END
    $$;

-- Claims, with a lease for p_owner, the rows p_ids names (each of the tenant at its position in
-- p_tenant_ids) that are free and, unless p_force, due — or, with p_requested, still requested,
-- not refreshed within p_min_interval and not waiting out a provider's Retry-After — of a
-- platform neither suspended nor in an outage. Rows another session holds are skipped, not
-- waited for.
CREATE FUNCTION token_refresher_claim(
    p_tenant_ids TEXT[], p_ids INTEGER[], p_owner TEXT, p_lease INTERVAL, p_force BOOLEAN,
    p_leads JSONB, p_requested BOOLEAN, p_min_interval INTERVAL, p_lock_timeout TEXT)
    RETURNS TABLE (id INTEGER, tenant_id TEXT, platform TEXT, access_token TEXT,
                   refresh_token TEXT, expires_at TIMESTAMPTZ, consecutive_failures INTEGER,
                   permanent_failures INTEGER, last_error_kind TEXT, claimed_at TIMESTAMPTZ,
                   taken_over BOOLEAN, requested_by TEXT, provider_metadata JSONB)
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
    AS $$
    #variable_conflict use_column
    DECLARE
        v_run RECORD;
    BEGIN
        FOR v_run IN SELECT * FROM token_refresher_tenant_runs(p_tenant_ids) LOOP
            PERFORM token_refresher_act_for(v_run.tenant_id, p_lock_timeout);
            RETURN QUERY
            WITH free AS (
                SELECT c.id, c.lease_owner IS NOT NULL AS taken_over FROM oauth_tokens AS c
                WHERE c.tenant_id = v_run.tenant_id
                  AND c.id = ANY (p_ids[v_run.first_at:v_run.last_at])
                  AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
                  AND (p_force OR (c.refresh_status IN ('active', 'failing')
                      AND CASE WHEN p_requested THEN
                              c.refresh_requested_at IS NOT NULL
                              AND NOT coalesce(c.last_error_kind = 'rate_limited'
                                               AND c.next_attempt_at > now(), false)
                              AND (c.last_refreshed_at IS NULL
                                   OR c.last_refreshed_at <= now() - p_min_interval)
                          ELSE
                              (c.next_attempt_at IS NULL OR c.next_attempt_at <= now())
                              AND c.expires_at <= now() + (p_leads ->> c.platform)::interval
                          END
                      AND c.platform <> ALL (SELECT p.platform
                                             FROM token_refresher_platforms AS p
                                             WHERE p.state <> 'active')))
                ORDER BY c.id
                FOR UPDATE SKIP LOCKED)
            UPDATE oauth_tokens AS t
            SET lease_owner = p_owner, lease_expires_at = now() + p_lease
            FROM free WHERE t.id = free.id
            RETURNING t.id::integer, t.tenant_id::text, t.platform::text, t.access_token::text,
                      t.refresh_token::text, t.expires_at::timestamptz,
                      t.consecutive_failures::integer, t.permanent_failures::integer,
                      t.last_error_kind::text, now(), free.taken_over,
                      t.refresh_requested_by::text, t.provider_metadata::jsonb;
        END LOOP;
    END
    $$;

-- Locks, for a commit group, the rows p_ids names that no other session holds (locked = true,
-- with their values, and whether a request waits on them); when some could not be locked, the
-- rows that exist are returned again with locked = false and no values, so the caller can tell
-- a row held elsewhere from a row that is gone.
CREATE FUNCTION token_refresher_lock_answered(
    p_tenant_ids TEXT[], p_ids INTEGER[], p_lock_timeout TEXT)
    RETURNS TABLE (id INTEGER, platform TEXT, access_token TEXT, refresh_token TEXT,
                   expires_at TIMESTAMPTZ, requested BOOLEAN, locked BOOLEAN)
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
    AS $$
    #variable_conflict use_column
    DECLARE
        v_run RECORD;
        v_ids INTEGER[];
        v_locked BIGINT;
    BEGIN
        FOR v_run IN SELECT * FROM token_refresher_tenant_runs(p_tenant_ids) LOOP
            v_ids := p_ids[v_run.first_at:v_run.last_at];
            PERFORM token_refresher_act_for(v_run.tenant_id, p_lock_timeout);
            RETURN QUERY
            SELECT t.id::integer, t.platform::text, t.access_token::text, t.refresh_token::text,
                   t.expires_at::timestamptz, t.refresh_requested_at IS NOT NULL, true
            FROM oauth_tokens AS t
            WHERE t.tenant_id = v_run.tenant_id AND t.id = ANY (v_ids)
            ORDER BY t.id
            FOR UPDATE SKIP LOCKED;
            GET DIAGNOSTICS v_locked = ROW_COUNT;
            IF v_locked < cardinality(v_ids) THEN
                RETURN QUERY
                SELECT t.id::integer, t.platform::text, NULL::text, NULL::text,
                       NULL::timestamptz, false, false
                FROM oauth_tokens AS t
                WHERE t.tenant_id = v_run.tenant_id AND t.id = ANY (v_ids);
            END IF;
        END LOOP;
    END
    $$;

-- Answers the requests waiting on p_ids' rows of p_tenant_id, in the caller's transaction:
-- clears each request and queues its result notification (sent at commit) with the row's
-- platform and expiry as this transaction leaves them and the outcome and error kind at the
-- same position. A row without a request (or whose request another transaction answered
-- first) is left alone.
CREATE FUNCTION token_refresher_answer_requests(
    p_tenant_id TEXT, p_ids INTEGER[], p_outcomes TEXT[], p_error_kinds TEXT[])
    RETURNS VOID
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_answered RECORD;
    BEGIN
        FOR v_answered IN
            UPDATE oauth_tokens AS t
            SET refresh_requested_at = NULL, refresh_requested_by = NULL
            FROM unnest(p_ids, p_outcomes, p_error_kinds) AS a(id, outcome, error_kind)
            WHERE t.id = a.id AND t.tenant_id = p_tenant_id AND t.refresh_requested_at IS NOT NULL
            RETURNING t.id, t.tenant_id, t.platform, t.expires_at, a.outcome, a.error_kind
        LOOP
            PERFORM token_refresher_notify_result(
                v_answered.id, v_answered.tenant_id, v_answered.platform, v_answered.outcome,
                v_answered.error_kind, v_answered.expires_at);
        END LOOP;
    END
    $$;

-- Stores providers' answers into rows the caller's transaction has locked (p_ids, each of the
-- tenant at its position in p_tenant_ids, with the other arrays at the same position): the
-- sealed values, the expiry counted from when the request was sent, the grant end (the first
-- of the answer's grant lifetime, the platform's grant_lifetime and the new expiry of a renewal
-- that does not extend the grant; else the stored one stays) and its grant.expiring marker
-- when it is within p_grant_warning, a cleared failure state, the answer's metadata fields,
-- and the lease given back if still the answer's owner's. A row with p_requested (a request
-- waited on it when it was locked) has its request answered as refreshed by the same UPDATE.
-- Returns each row written with its new expiry.
CREATE FUNCTION token_refresher_store_answers(
    p_tenant_ids TEXT[], p_ids INTEGER[], p_access_tokens TEXT[], p_refresh_tokens TEXT[],
    p_since_sent FLOAT8[], p_expires_in FLOAT8[], p_owners TEXT[], p_paced FLOAT8[],
    p_grant_in FLOAT8[], p_grant_lifetime FLOAT8[], p_grant_at_expiry BOOLEAN[],
    p_trace_ids TEXT[], p_http_statuses INTEGER[], p_metadata JSONB[], p_requested BOOLEAN[],
    p_grant_warning INTERVAL, p_lock_timeout TEXT)
    RETURNS TABLE (id INTEGER, expires_at TIMESTAMPTZ)
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
    AS $$
    #variable_conflict use_column
    DECLARE
        v_run RECORD;
        v_written RECORD;
    BEGIN
        FOR v_run IN SELECT * FROM token_refresher_tenant_runs(p_tenant_ids) LOOP
            PERFORM token_refresher_act_for(v_run.tenant_id, p_lock_timeout);
            FOR v_written IN
                UPDATE oauth_tokens AS t
                SET access_token = a.access_token, refresh_token = a.refresh_token,
                    expires_at = now() - make_interval(secs => a.since_sent)
                                       + make_interval(secs => a.expires_in),
                    refresh_status = 'active', consecutive_failures = 0, permanent_failures = 0,
                    next_attempt_at = now() - make_interval(secs => a.since_sent)
                                            + make_interval(secs => a.paced),
                    grant_expires_at = coalesce(a.new_grant, t.grant_expires_at),
                    grant_event_for = CASE
                        WHEN coalesce(a.new_grant, t.grant_expires_at) <= now() + p_grant_warning
                             AND (t.grant_event_for IS NULL
                                  OR abs(extract(epoch FROM coalesce(a.new_grant,
                                                                     t.grant_expires_at)
                                                            - t.grant_event_for)) >= 60)
                            THEN coalesce(a.new_grant, t.grant_expires_at)
                        ELSE t.grant_event_for END,
                    last_error_kind = NULL, last_refreshed_at = now(),
                    last_trace_id = a.trace_id, last_http_status = a.http_status,
                    provider_metadata = CASE WHEN a.metadata = '{}'::jsonb
                                                 THEN t.provider_metadata
                                             ELSE coalesce(t.provider_metadata, '{}'::jsonb)
                                                  || a.metadata
                                        END,
                    lease_owner = CASE WHEN t.lease_owner = a.owner THEN NULL
                                       ELSE t.lease_owner END,
                    lease_expires_at = CASE WHEN t.lease_owner = a.owner THEN NULL
                                            ELSE t.lease_expires_at END,
                    refresh_requested_at = CASE WHEN a.requested THEN NULL
                                                ELSE t.refresh_requested_at END,
                    refresh_requested_by = CASE WHEN a.requested THEN NULL
                                                ELSE t.refresh_requested_by END
                FROM (SELECT u.*,
                             CASE WHEN u.grant_in IS NOT NULL
                                      THEN now() - make_interval(secs => u.since_sent)
                                                 + make_interval(secs => u.grant_in)
                                  WHEN u.grant_lifetime IS NOT NULL
                                      THEN now() + make_interval(secs => u.grant_lifetime)
                                  WHEN u.grant_at_expiry
                                      THEN now() - make_interval(secs => u.since_sent)
                                                 + make_interval(secs => u.expires_in)
                             END AS new_grant
                      FROM unnest(p_ids[v_run.first_at:v_run.last_at],
                                  p_access_tokens[v_run.first_at:v_run.last_at],
                                  p_refresh_tokens[v_run.first_at:v_run.last_at],
                                  p_since_sent[v_run.first_at:v_run.last_at],
                                  p_expires_in[v_run.first_at:v_run.last_at],
                                  p_owners[v_run.first_at:v_run.last_at],
                                  p_paced[v_run.first_at:v_run.last_at],
                                  p_grant_in[v_run.first_at:v_run.last_at],
                                  p_grant_lifetime[v_run.first_at:v_run.last_at],
                                  p_grant_at_expiry[v_run.first_at:v_run.last_at],
                                  p_trace_ids[v_run.first_at:v_run.last_at],
                                  p_http_statuses[v_run.first_at:v_run.last_at],
                                  p_metadata[v_run.first_at:v_run.last_at],
                                  p_requested[v_run.first_at:v_run.last_at])
                           AS u(id, access_token, refresh_token, since_sent, expires_in, owner,
                                paced, grant_in, grant_lifetime, grant_at_expiry, trace_id,
                                http_status, metadata, requested)) AS a
                WHERE t.id = a.id AND t.tenant_id = v_run.tenant_id
                RETURNING t.id, t.tenant_id, t.platform, t.expires_at, a.requested
            LOOP
                IF v_written.requested THEN
                    PERFORM token_refresher_notify_result(
                        v_written.id, v_written.tenant_id, v_written.platform, 'refreshed', NULL,
                        v_written.expires_at);
                END IF;
                id := v_written.id;
                expires_at := v_written.expires_at;
                RETURN NEXT;
            END LOOP;
        END LOOP;
    END
    $$;

-- Inserts the agent_executions and audit_events rows of the audits between p_first and p_last
-- (1-based positions in the arrays) under p_tenant_id, one statement for both.
CREATE FUNCTION token_refresher_insert_audits(
    p_tenant_id TEXT, p_first INTEGER, p_last INTEGER, p_dry_runs BOOLEAN[], p_results TEXT[],
    p_user_ids TEXT[], p_endpoints TEXT[], p_methods TEXT[], p_status_codes INTEGER[],
    p_latencies INTEGER[], p_agent_id TEXT, p_action TEXT)
    RETURNS VOID
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
    AS $$
    BEGIN
        WITH audit AS (
            SELECT u.* FROM unnest(p_dry_runs[p_first:p_last], p_results[p_first:p_last],
                                   p_user_ids[p_first:p_last], p_endpoints[p_first:p_last],
                                   p_methods[p_first:p_last], p_status_codes[p_first:p_last],
                                   p_latencies[p_first:p_last])
                AS u(dry_run, result, user_id, endpoint, method, status_code, latency_ms)),
        executions AS (
            INSERT INTO agent_executions (tenant_id, agent_id, dry_run, result)
            SELECT p_tenant_id, p_agent_id, audit.dry_run, audit.result FROM audit)
        INSERT INTO audit_events
            (tenant_id, user_id, action, endpoint, method, status_code, latency_ms)
        SELECT p_tenant_id, audit.user_id, p_action, audit.endpoint, audit.method,
               audit.status_code, audit.latency_ms
        FROM audit;
    END
    $$;

-- Records the audit rows the arrays hold, each under the tenant at its position in
-- p_tenant_ids. A tenant with an entry in p_guarded (its token's row was gone, so the tenant
-- may be too) has its rows inserted inside a savepoint, and left out if the tenant no longer
-- exists, rather than failing the others'.
CREATE FUNCTION token_refresher_record_audits(
    p_tenant_ids TEXT[], p_dry_runs BOOLEAN[], p_results TEXT[], p_user_ids TEXT[],
    p_endpoints TEXT[], p_methods TEXT[], p_status_codes INTEGER[], p_latencies INTEGER[],
    p_guarded BOOLEAN[], p_agent_id TEXT, p_action TEXT, p_lock_timeout TEXT)
    RETURNS VOID
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
    AS $$
    DECLARE
        v_run RECORD;
    BEGIN
        FOR v_run IN SELECT * FROM token_refresher_tenant_runs(p_tenant_ids) LOOP
            PERFORM token_refresher_act_for(v_run.tenant_id, p_lock_timeout);
            IF true = ANY (p_guarded[v_run.first_at:v_run.last_at]) THEN
                BEGIN
                    PERFORM token_refresher_insert_audits(
                        v_run.tenant_id, v_run.first_at, v_run.last_at, p_dry_runs, p_results,
                        p_user_ids, p_endpoints, p_methods, p_status_codes, p_latencies,
                        p_agent_id, p_action);
                EXCEPTION WHEN foreign_key_violation THEN
                    NULL;
                END;
            ELSE
                PERFORM token_refresher_insert_audits(
                    v_run.tenant_id, v_run.first_at, v_run.last_at, p_dry_runs, p_results,
                    p_user_ids, p_endpoints, p_methods, p_status_codes, p_latencies,
                    p_agent_id, p_action);
            END IF;
        END LOOP;
    END
    $$;

REVOKE ALL ON FUNCTION token_refresher_act_for(TEXT, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_tenant_runs(TEXT[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_notify_result(INTEGER, TEXT, TEXT, TEXT, TEXT,
                                                     TIMESTAMPTZ) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_claim(TEXT[], INTEGER[], TEXT, INTERVAL, BOOLEAN, JSONB,
                                             BOOLEAN, INTERVAL, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_lock_answered(TEXT[], INTEGER[], TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_answer_requests(TEXT, INTEGER[], TEXT[], TEXT[])
    FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_store_answers(TEXT[], INTEGER[], TEXT[], TEXT[],
                                                     FLOAT8[], FLOAT8[], TEXT[], FLOAT8[],
                                                     FLOAT8[], FLOAT8[], BOOLEAN[], TEXT[],
                                                     INTEGER[], JSONB[], BOOLEAN[], INTERVAL,
                                                     TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_insert_audits(TEXT, INTEGER, INTEGER, BOOLEAN[], TEXT[],
                                                     TEXT[], TEXT[], TEXT[], INTEGER[],
                                                     INTEGER[], TEXT, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION token_refresher_record_audits(TEXT[], BOOLEAN[], TEXT[], TEXT[], TEXT[],
                                                     TEXT[], INTEGER[], INTEGER[], BOOLEAN[],
                                                     TEXT, TEXT, TEXT) FROM PUBLIC;
