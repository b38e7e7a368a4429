//! The tables, as both backends' migrations create them.

diesel::table! {
    organizations (id) {
        id -> Text,
        name -> Text,
        created_at -> Text,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        org_id -> Text,
        username -> Text,
        email -> Text,
        role -> Text,
        created_at -> Text,
        preferences -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        org_id -> Text,
        user_id -> Text,
        name -> Text,
        prefix -> Text,
        key_hash -> Text,
        scopes -> Text,
        created_at -> Text,
        expires_at -> Nullable<Text>,
        last_used_at -> Nullable<Text>,
        revoked_at -> Nullable<Text>,
        rate_limit_per_hour -> Nullable<BigInt>,
        rate_limit_burst -> Nullable<BigInt>,
    }
}

diesel::table! {
    agents (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        agent_type -> Text,
        status -> Text,
        description -> Nullable<Text>,
        body -> Text,
        secrets -> Text,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::joinable!(users -> organizations (org_id));
diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(agents -> organizations (org_id));
diesel::allow_tables_to_appear_in_same_query!(
    organizations,
    users,
    api_keys,
    agents,
    idempotency_keys
);

diesel::table! {
    idempotency_keys (org_id, operation, idempotency_key) {
        org_id -> Text,
        operation -> Text,
        idempotency_key -> Text,
        request_hash -> Text,
        resource_id -> Text,
        created_at -> Text,
    }
}

// knowledge

diesel::table! {
    knowledge_bases (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        kb_type -> Text,
        description -> Nullable<Text>,
        body -> Text,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    knowledge_sources (id) {
        id -> Text,
        org_id -> Text,
        kb_id -> Text,
        name -> Text,
        source_type -> Text,
        status -> Text,
        body -> Text,
        last_sync_at -> Nullable<Text>,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    knowledge_documents (id) {
        id -> Text,
        org_id -> Text,
        kb_id -> Text,
        source_id -> Nullable<Text>,
        title -> Text,
        content_type -> Text,
        metadata -> Text,
        chunk_count -> BigInt,
        char_count -> BigInt,
        created_at -> Text,
    }
}

diesel::table! {
    /// The full-text index (`tsv` on PostgreSQL, the FTS5 table on SQLite) is not listed:
    /// the database maintains it, and search uses raw SQL per backend.
    knowledge_chunks (id) {
        id -> Text,
        org_id -> Text,
        kb_id -> Text,
        document_id -> Text,
        position -> BigInt,
        text -> Text,
        metadata -> Text,
    }
}

diesel::table! {
    knowledge_syncs (id) {
        id -> Text,
        org_id -> Text,
        kb_id -> Text,
        source_id -> Text,
        status -> Text,
        error -> Nullable<Text>,
        documents -> BigInt,
        chunks -> BigInt,
        created_at -> Text,
        started_at -> Nullable<Text>,
        finished_at -> Nullable<Text>,
    }
}

diesel::table! {
    jobs (id) {
        id -> Text,
        kind -> Text,
        org_id -> Text,
        agent_id -> Nullable<Text>,
        payload -> Text,
        status -> Text,
        attempts -> BigInt,
        max_attempts -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Text>,
        run_after -> Text,
        last_error -> Nullable<Text>,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    tools (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        tool_type -> Text,
        description -> Nullable<Text>,
        body -> Text,
        secrets -> Text,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

// execution
diesel::table! {
    prompt_templates (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        description -> Nullable<Text>,
        template_type -> Text,
        template -> Text,
        variables -> Text,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    models (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        provider -> Text,
        model_name -> Text,
        endpoint -> Nullable<Text>,
        api_key_encrypted -> Nullable<Text>,
        body -> Text,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    executions (id) {
        id -> Text,
        org_id -> Text,
        agent_id -> Text,
        status -> Text,
        request -> Text,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        model_id -> Nullable<Text>,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        cost_nano_usd -> BigInt,
        steps -> Text,
        cancel_requested -> BigInt,
        created_at -> Text,
        started_at -> Nullable<Text>,
        finished_at -> Nullable<Text>,
    }
}

diesel::table! {
    execution_continuations (execution_id) {
        execution_id -> Text,
        state -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    conversations (id) {
        id -> Text,
        org_id -> Text,
        agent_id -> Text,
        user_id -> Nullable<Text>,
        title -> Nullable<Text>,
        metadata -> Text,
        message_count -> BigInt,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        org_id -> Text,
        conversation_id -> Text,
        role -> Text,
        content -> Text,
        execution_id -> Nullable<Text>,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        created_at -> Text,
    }
}

diesel::table! {
    usage_records (id) {
        id -> Text,
        org_id -> Text,
        agent_id -> Text,
        model_id -> Text,
        execution_id -> Nullable<Text>,
        conversation_id -> Nullable<Text>,
        message_id -> Nullable<Text>,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        cost_nano_usd -> BigInt,
        created_at -> Text,
    }
}

// operations: rate limits, security

diesel::table! {
    /// Each key's hourly budget as leased to replicas (`db::ratelimit`).
    rate_limit_leases (key_id) {
        key_id -> Text,
        window_start -> BigInt,
        leased -> BigInt,
        granted -> BigInt,
        denials -> BigInt,
    }
}

diesel::table! {
    /// Per-request counters of earlier versions, kept for replicas of the previous version
    /// during a rolling upgrade; nothing reads them now.
    rate_limit_counters (key_id) {
        key_id -> Text,
        window_start -> BigInt,
        window_count -> BigInt,
        burst_start -> BigInt,
        burst_count -> BigInt,
    }
}

diesel::table! {
    security_events (id) {
        id -> Text,
        org_id -> Nullable<Text>,
        event_type -> Text,
        severity -> Text,
        message -> Text,
        key_id -> Nullable<Text>,
        user_id -> Nullable<Text>,
        resource_type -> Nullable<Text>,
        resource_id -> Nullable<Text>,
        details -> Text,
        request_id -> Nullable<Text>,
        created_at -> Text,
    }
}
diesel::table! {
    security_scans (id) {
        id -> Text,
        org_id -> Text,
        agent_id -> Text,
        agent_version -> BigInt,
        findings -> Text,
        critical_count -> BigInt,
        high_count -> BigInt,
        medium_count -> BigInt,
        low_count -> BigInt,
        max_severity -> BigInt,
        created_at -> Text,
    }
}
diesel::table! {
    events (id) {
        id -> Text,
        org_id -> Text,
        event_type -> Text,
        subject_id -> Nullable<Text>,
        data -> Text,
        created_at -> Text,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Text,
        org_id -> Text,
        url -> Text,
        events -> Text,
        secret_encrypted -> Text,
        active -> BigInt,
        description -> Nullable<Text>,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        org_id -> Text,
        webhook_id -> Nullable<Text>,
        target -> Nullable<Text>,
        event_id -> Text,
        event_type -> Text,
        status -> Text,
        attempts -> BigInt,
        next_attempt_at -> Nullable<Text>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Text>,
        last_attempt_at -> Nullable<Text>,
        response_status -> Nullable<BigInt>,
        error -> Nullable<Text>,
        created_at -> Text,
        completed_at -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_delivery_attempts (delivery_id, attempt) {
        delivery_id -> Text,
        attempt -> BigInt,
        org_id -> Text,
        started_at -> Text,
        duration_ms -> BigInt,
        response_status -> Nullable<BigInt>,
        error -> Nullable<Text>,
    }
}

// deployments

diesel::table! {
    agent_deployments (agent_id) {
        agent_id -> Text,
        org_id -> Text,
        state -> Text,
        target_replicas -> BigInt,
        revision -> BigInt,
        drain_before -> Nullable<Text>,
        deployed_at -> Text,
        last_updated -> Text,
    }
}

diesel::table! {
    agent_logs (id) {
        id -> Text,
        org_id -> Text,
        agent_id -> Text,
        level -> Text,
        message -> Text,
        revision -> BigInt,
        execution_id -> Nullable<Text>,
        created_at -> Text,
    }
}

// evaluations

diesel::table! {
    evaluations (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        target_id -> Text,
        body -> Text,
        latest_run_id -> Nullable<Text>,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    evaluation_runs (id) {
        id -> Text,
        org_id -> Text,
        evaluation_id -> Text,
        status -> Text,
        summary -> Nullable<Text>,
        results -> Text,
        error -> Nullable<Text>,
        created_at -> Text,
        started_at -> Nullable<Text>,
        finished_at -> Nullable<Text>,
    }
}

diesel::table! {
    vault_credentials (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        cred_type -> Text,
        environment -> Nullable<Text>,
        description -> Nullable<Text>,
        body -> Text,
        value_sealed -> Text,
        last_accessed_at -> Nullable<Text>,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    vault_tokens (id) {
        id -> Text,
        org_id -> Text,
        user_id -> Text,
        name -> Text,
        prefix -> Text,
        token_hash -> Text,
        created_at -> Text,
        expires_at -> Nullable<Text>,
        last_used_at -> Nullable<Text>,
        revoked_at -> Nullable<Text>,
    }
}

diesel::table! {
    twins (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        twin_type -> Text,
        description -> Nullable<Text>,
        body -> Text,
        secrets -> Text,
        version -> BigInt,
        created_at -> Text,
        updated_at -> Text,
    }
}

diesel::table! {
    simulations (id) {
        id -> Text,
        org_id -> Text,
        twin_id -> Text,
        scenario -> Text,
        model -> Text,
        status -> Text,
        parameters -> Text,
        seed -> BigInt,
        runs -> BigInt,
        run_async -> BigInt,
        notification_webhook -> Nullable<Text>,
        results -> Nullable<Text>,
        error -> Nullable<Text>,
        created_at -> Text,
        started_at -> Nullable<Text>,
        finished_at -> Nullable<Text>,
    }
}
