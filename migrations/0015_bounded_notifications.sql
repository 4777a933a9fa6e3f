-- 015: a row's values never stop a statement that serves other rows.
--
-- PostgreSQL refuses a NOTIFY payload of 8000 bytes or more, and refuses it by raising: a
-- tenant id of a few thousand characters made the suite's own UPDATE of that tenant's row
-- fail (the event's announcement), its refresh requests fail, and the commit group storing
-- other tenants' answers beside it fail (the result notification). Every notification now goes
-- through one function that sends the payload as built when it fits, and otherwise sends it
-- with the unbounded text members (`tenant_id`, `platform`) as null and `"truncated": true`:
-- the ids it keeps let the listener read the row.
CREATE FUNCTION token_refresher_notify(p_channel TEXT, p_payload JSON)
    RETURNS VOID
    LANGUAGE plpgsql VOLATILE
    AS $$
    DECLARE
        payload TEXT := p_payload::text;
    BEGIN
        IF octet_length(payload) >= 8000 THEN
            payload := (p_payload::jsonb
                        || jsonb_build_object('tenant_id', NULL, 'platform', NULL,
                                              'truncated', true))::text;
        END IF;
        PERFORM pg_notify(p_channel, payload);
    END
    $$;

CREATE OR REPLACE FUNCTION token_refresher_announce_event() RETURNS TRIGGER
    LANGUAGE plpgsql
    AS $$
    BEGIN
        PERFORM token_refresher_notify('token_refresher_events',
                                       json_build_object('id', NEW.id, 'type', NEW.type,
                                                         'tenant_id', NEW.tenant_id,
                                                         'token_id', NEW.token_id,
                                                         'platform', NEW.platform));
        RETURN NULL;
    END
    $$;

CREATE OR REPLACE FUNCTION token_refresher_request_refresh(p_tenant_id TEXT, p_token_id INTEGER)
    RETURNS BOOLEAN
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    AS $$
    DECLARE
        first_write BOOLEAN := pg_current_xact_id_if_assigned() IS NULL;
    BEGIN
        UPDATE oauth_tokens
        SET refresh_requested_at = now(), refresh_requested_by = 'request:' || session_user
        WHERE id = p_token_id AND tenant_id = p_tenant_id;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        IF first_write THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        PERFORM token_refresher_notify('token_refresher_requests',
                                       json_build_object('token_id', p_token_id,
                                                         'tenant_id', p_tenant_id));
        RETURN true;
    END
    $$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_notify(TEXT, JSON) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_announce_event() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION token_refresher_request_refresh(TEXT, INTEGER) SET search_path = %I, pg_temp', current_schema());
END
$$;
