-- Seed revision 001: tenants and the audit log, as the suite created them.
-- Never edit after release: databases adopted from the suite record this revision as applied.

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    slug       TEXT UNIQUE,
    plan       TEXT DEFAULT 'starter',
    created_at TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE audit_logs (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    trace_id    TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    mode        TEXT,
    status      TEXT,
    http_status INTEGER,
    latency_ms  INTEGER,
    user_id     TEXT,
    error       TEXT,
    created_at  TIMESTAMPTZ DEFAULT now()
);

CREATE INDEX ix_audit_logs_tenant_created ON audit_logs (tenant_id, created_at DESC);
CREATE INDEX ix_audit_logs_agent_created ON audit_logs (agent_id, created_at DESC);
CREATE INDEX ix_audit_logs_trace_id ON audit_logs (trace_id);

ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_logs
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
