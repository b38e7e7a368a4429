-- Every attempt of a webhook delivery (the delivery row keeps only its last one's status).
CREATE TABLE webhook_delivery_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    response_status BIGINT,
    error TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
