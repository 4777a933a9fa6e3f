-- 017: `platform.resumed` names the token whose answer resumed the platform.
--
-- A resume took its token from the row as it was (the token whose refusal had suspended the
-- platform), so a probe's success was announced under another tenant's token and without the
-- probe's trace. The statement resuming after an answer now stores that answer's token in
-- `failed_token_id` / `failed_tenant_id` for the moment of the change (the platform being
-- active, nothing else reads them), and the event takes the new values when there are any;
-- a resume on new credentials leaves them empty and still names the suspension's token.
CREATE OR REPLACE FUNCTION token_refresher_platform_events() RETURNS TRIGGER
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
        IF NEW.state = 'active' AND NEW.failed_tenant_id IS NULL THEN
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

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_platform_events() SET search_path = %I, pg_temp', current_schema());
END
$$;
