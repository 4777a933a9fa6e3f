-- Seed revision 002: the tenant-scoped tables, as the suite created them.
-- Never edit after release: databases adopted from the suite record this revision as applied.

CREATE TABLE users (
    id         SERIAL PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    email      TEXT NOT NULL,
    role       TEXT DEFAULT 'viewer',
    created_at TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX ix_users_tenant_id ON users (tenant_id);

CREATE TABLE oauth_tokens (
    id            SERIAL PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    platform      TEXT NOT NULL,
    access_token  TEXT NOT NULL,
    refresh_token TEXT,
    expires_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX ix_oauth_tokens_tenant_id ON oauth_tokens (tenant_id);
CREATE INDEX ix_oauth_tokens_tenant_platform ON oauth_tokens (tenant_id, platform);

CREATE TABLE agent_executions (
    id         SERIAL PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    agent_id   TEXT NOT NULL,
    dry_run    BOOLEAN DEFAULT true,
    result     TEXT,
    created_at TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX ix_agent_executions_tenant_id ON agent_executions (tenant_id);
CREATE INDEX ix_agent_executions_agent_id ON agent_executions (agent_id);

CREATE TABLE audit_events (
    id          SERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    user_id     TEXT,
    action      TEXT,
    endpoint    TEXT,
    method      TEXT,
    status_code INTEGER,
    latency_ms  INTEGER,
    "timestamp" TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX ix_audit_events_tenant_id ON audit_events (tenant_id);
CREATE INDEX ix_audit_events_timestamp ON audit_events ("timestamp" DESC);

CREATE TABLE tenant_config (
    id        SERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL UNIQUE REFERENCES tenants (id),
    meta_live BOOLEAN DEFAULT false,
    sendgrid  BOOLEAN DEFAULT false
);
