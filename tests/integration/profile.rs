//! `PUT /v1/users/me`: a user edits their own profile, and only their own.

use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::json;
use agentplane_api::models::Role;

backend_test!(a_user_changes_email_and_notifications, |app| {
    let (status, before) = json(app.get("/v1/users/me").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        before["notifications"],
        json!({"email": true, "slack": false})
    );
    assert_eq!(before["updated_at"], before["created_at"]);

    let (status, after) = json(
        app.send_json(
            Method::PUT,
            "/v1/users/me",
            &json!({"email": "new@example.com", "notifications": {"slack": true}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["email"], "new@example.com");
    assert_eq!(
        after["notifications"],
        json!({"email": true, "slack": true}),
        "a channel left out keeps its setting"
    );
    assert!(after["updated_at"].as_str() > before["updated_at"].as_str());
    assert_eq!(
        (&after["id"], &after["username"]),
        (&before["id"], &before["username"])
    );

    // What was stored is what the next read sees; an empty change changes nothing else.
    let (_, again) = json(app.send_json(Method::PUT, "/v1/users/me", &json!({})).await).await;
    assert_eq!(again["email"], "new@example.com");
    assert_eq!(again["notifications"], after["notifications"]);
});

backend_test!(
    a_profile_update_is_validated_and_touches_only_the_caller,
    |app| {
        for (body, field) in [
            (json!({"email": "not an address"}), "email"),
            (
                json!({"notifications": {"email": "yes"}}),
                "notifications.email",
            ),
            (json!({"username": "root"}), "username"),
        ] {
            let (status, err) = json(app.send_json(Method::PUT, "/v1/users/me", &body).await).await;
            assert_eq!(status, 422, "{body}: {err}");
            let named = err["error"]["details"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["field"] == field));
            assert!(named, "{body} should name {field}: {err}");
        }
        let viewer = app.key_for("default", "vera", Role::Viewer, None).await;
        let (status, vera) = json(
            app.as_key(&viewer, Method::PUT, "/v1/users/me")
                .json(&json!({"email": "vera@example.com"}))
                .send()
                .await
                .expect("put"),
        )
        .await;
        assert_eq!((status, vera["username"].clone()), (200, json!("vera")));
        let (_, admin) = json(app.get("/v1/users/me").await).await;
        assert_ne!(
            admin["email"], "vera@example.com",
            "the admin's profile is untouched"
        );
        let resp = app
            .as_key("ap_not_a_key", Method::PUT, "/v1/users/me")
            .json(&json!({"email": "x@example.com"}))
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), 401);
    }
);
