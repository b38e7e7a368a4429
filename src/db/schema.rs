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
