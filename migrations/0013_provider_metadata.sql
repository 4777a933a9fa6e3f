-- 013: what a templated token URL is filled from.
--
-- provider_metadata holds non-secret values about the connected account that its platform's
-- token URL may need (Salesforce's instance_url, a Shopify shop, a Zoho data centre): the
-- suite writes them when it connects an account, and the daemon copies the answer fields a
-- platform names in metadata_fields. It never holds a token value.

ALTER TABLE oauth_tokens ADD COLUMN provider_metadata JSONB;
