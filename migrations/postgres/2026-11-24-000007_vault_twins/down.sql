DROP TABLE simulations;
DROP TABLE twins;
DROP TABLE vault_tokens;
DROP TABLE vault_credentials;
