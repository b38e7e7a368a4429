//! Every operation of the spec reaches the Rust client, or `build.rs` adapted it in a way
//! `clients/README.md` documents. An operation progenitor rejected for an unknown reason is
//! left out so the workspace still builds, and fails here with progenitor's own message.

#[test]
fn no_operation_is_left_out_for_an_undocumented_reason() {
    let unsupported: Vec<String> = agentplane_client::ADAPTATIONS
        .iter()
        .filter(|a| !matches!(a.kind, "untyped-success-body" | "request-body-omitted"))
        .map(|a| format!("{}: {} ({})", a.operation_id, a.detail, a.kind))
        .collect();
    assert!(
        unsupported.is_empty(),
        "progenitor cannot generate these operations; adjust the spec, or teach \
         clients/rust/build.rs an adaptation and document it in clients/README.md:\n{}",
        unsupported.join("\n")
    );
}

#[test]
fn the_adapted_operations_are_the_documented_ones() {
    // When this fails because a new operation needed a documented adaptation, list it here and
    // in clients/README.md.
    let expected: &[&str] = &["executeAgent", "sendMessage", "uploadKnowledgeFile"];
    let actual: Vec<&str> = agentplane_client::ADAPTATIONS
        .iter()
        .map(|a| a.operation_id)
        .collect();
    assert_eq!(actual, expected, "{:?}", agentplane_client::ADAPTATIONS);
}
