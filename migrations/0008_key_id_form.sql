-- 008: token_refresher_key_ids() names a key id only for a value of the sealed form.
--
-- 006 returned the third colon-separated field of every value with the enc:v1: prefix, so a
-- damaged value (the prefix in front of a raw token, say) had part of its text reported as a
-- key id. A key id is now returned only when the whole value has the sealed form
-- enc:v1:<key id>:<standard base64 of at least a nonce and a tag>, the key id being 1-64
-- letters, digits, '-', '_' or '.'. Other values with the prefix are counted under a NULL key
-- id; values without the prefix stay under ''.
CREATE OR REPLACE FUNCTION token_refresher_key_ids()
    RETURNS TABLE (key_id TEXT, stored_values BIGINT)
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
        SELECT CASE
                   WHEN v.value NOT LIKE 'enc:v1:%' THEN ''
                   ELSE (regexp_match(v.value,
                       '^enc:v1:([A-Za-z0-9._-]{1,64}):(?:[A-Za-z0-9+/]{4}){9,}(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)$'))[1]
               END,
               count(*)
        FROM oauth_tokens AS t
        CROSS JOIN LATERAL (VALUES (t.access_token), (t.refresh_token)) AS v (value)
        WHERE v.value IS NOT NULL
        GROUP BY 1
        ORDER BY 1
    $$;

-- Replacing a function keeps its owner and grants but not its settings.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION token_refresher_key_ids() SET search_path = %I, pg_temp', current_schema());
END
$$;
