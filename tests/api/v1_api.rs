//! The v1 JSON API, one test per status code a client can meet.

use serde_json::{Value, json};

use crate::helpers::TestApp;

async fn body(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[actix_web::test]
async fn create_answers_201_with_location_and_the_stored_user() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/users",
            &json!({ "full_name": "  Ada \u{00A0} Lovelace ", "email": " ada@example.com " }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created = body(response).await;
    assert_eq!(
        created["full_name"], "Ada Lovelace",
        "whitespace is normalised"
    );
    assert_eq!(created["email"], "ada@example.com");
    assert_eq!(location, format!("/api/v1/users/{}", created["id"]));

    let fetched = app.get(&location).await;
    assert_eq!(fetched.status(), 200);
    assert_eq!(body(fetched).await, created);

    let stored: String = {
        use diesel::prelude::*;
        use zdm::schema::v1::users;
        users::table
            .select(users::full_name)
            .first(&mut app.db.conn())
            .unwrap()
    };
    assert_eq!(
        stored, "Ada Lovelace",
        "the database holds the normalised name"
    );
}

#[actix_web::test]
async fn invalid_input_answers_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({ "full_name": "   ", "email": "a@example.com" }),
            "full_name",
        ),
        (
            json!({ "full_name": "Ada\u{0000}Lovelace", "email": "a@example.com" }),
            "full_name",
        ),
        (
            json!({ "full_name": "x".repeat(201), "email": "a@example.com" }),
            "full_name",
        ),
        (json!({ "email": "a@example.com" }), "full_name"),
        (
            json!({ "full_name": "Ada", "email": "not-an-email" }),
            "email",
        ),
        (json!({ "full_name": "Ada" }), "email"),
    ];
    for (input, field) in cases {
        let response = app.post_json("/api/v1/users", &input).await;
        assert_eq!(response.status(), 422, "{input}");
        let error = body(response).await;
        assert_eq!(error["field"], field, "{input}");
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let list = body(app.get("/api/v1/users").await).await;
    assert_eq!(list["users"], json!([]), "nothing invalid was stored");
}

#[actix_web::test]
async fn malformed_bodies_answer_400_and_wrong_content_type_415() {
    let app = TestApp::spawn().await;
    for raw in [
        "{\"full_name\": ",
        "[1,2]",
        "{\"full_name\": 5, \"email\": \"a@example.com\"}",
    ] {
        let response = app
            .client
            .post(app.url("/api/v1/users"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{raw}");
        assert!(
            body(response).await["error"]
                .as_str()
                .unwrap()
                .starts_with("Malformed JSON")
        );
    }
    let response = app
        .client
        .post(app.url("/api/v1/users"))
        .header("content-type", "text/plain")
        .body("full_name=Ada")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
}

#[actix_web::test]
async fn oversized_bodies_answer_413() {
    let app = TestApp::spawn().await;
    let huge = json!({ "full_name": "a".repeat(64 * 1024), "email": "a@example.com" });
    let response = app.post_json("/api/v1/users", &huge).await;
    assert_eq!(response.status(), 413);
    assert!(
        body(response).await["error"]
            .as_str()
            .unwrap()
            .contains("larger than")
    );
}

#[actix_web::test]
async fn duplicate_email_answers_409_without_database_text() {
    let app = TestApp::spawn().await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    let response = app
        .post_json(
            "/api/v1/users",
            &json!({ "full_name": "Other Ada", "email": "ADA@example.com" }),
        )
        .await;
    assert_eq!(
        response.status(),
        409,
        "emails are unique whatever their case"
    );
    let error = body(response).await;
    assert_eq!(error["field"], "email");
    assert_eq!(
        error["error"],
        "A user with this email address already exists."
    );

    let bob = app.create_user("Bob", "bob@example.com").await;
    let response = app
        .put_json(
            &format!("/api/v1/users/{bob}"),
            &json!({ "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(response.status(), 409);
}

#[actix_web::test]
async fn unknown_or_unparsable_ids_answer_404() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1/users/999999",
        "/api/v1/users/abc",
        "/api/v1/nothing-here",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(body(response).await["error"], "Not found.");
    }
    let response = app
        .put_json("/api/v1/users/999999", &json!({ "full_name": "X" }))
        .await;
    assert_eq!(response.status(), 404);
    let response = app
        .client
        .delete(app.url("/api/v1/users/999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[actix_web::test]
async fn put_changes_only_the_given_fields() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Grace Hopper", "grace@example.com").await;
    let path = format!("/api/v1/users/{id}");

    let response = app
        .put_json(&path, &json!({ "full_name": "Grace  Brewster Hopper" }))
        .await;
    assert_eq!(response.status(), 200);
    let updated = body(response).await;
    assert_eq!(updated["full_name"], "Grace Brewster Hopper");
    assert_eq!(updated["email"], "grace@example.com");

    let response = app
        .put_json(&path, &json!({ "email": "amazing.grace@example.com" }))
        .await;
    assert_eq!(response.status(), 200);
    let fetched = body(app.get(&path).await).await;
    assert_eq!(fetched["full_name"], "Grace Brewster Hopper");
    assert_eq!(fetched["email"], "amazing.grace@example.com");

    let response = app.put_json(&path, &json!({})).await;
    assert_eq!(response.status(), 422, "an empty change is refused");
    let response = app.put_json(&path, &json!({ "full_name": "" })).await;
    assert_eq!(response.status(), 422);
    assert_eq!(body(response).await["field"], "full_name");
}

#[actix_web::test]
async fn delete_answers_204_and_the_user_is_gone() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Alan Turing", "alan@example.com").await;
    let path = format!("/api/v1/users/{id}");
    let response = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.get(&path).await.status(), 404);
    let again = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(again.status(), 404);
}

#[actix_web::test]
async fn list_pages_by_id_with_keyset_paging() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.create_user(&format!("User {i}"), &format!("u{i}@example.com"))
                .await,
        );
    }
    let first = body(app.get("/api/v1/users?limit=2").await).await;
    let first_ids: Vec<i64> = first["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(first_ids, ids[..2]);
    let next = first["next_after_id"].as_i64().unwrap();

    let second = body(
        app.get(&format!("/api/v1/users?after_id={next}&limit=2"))
            .await,
    )
    .await;
    let second_ids: Vec<i64> = second["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(second_ids, ids[2..4]);

    let last = body(
        app.get(&format!("/api/v1/users?after_id={}&limit=2", ids[3]))
            .await,
    )
    .await;
    assert_eq!(last["users"].as_array().unwrap().len(), 1);
    assert!(last.get("next_after_id").is_none(), "the last page says so");

    for bad in [
        "/api/v1/users?limit=0",
        "/api/v1/users?limit=1001",
        "/api/v1/users?after_id=abc",
    ] {
        assert_eq!(app.get(bad).await.status(), 400, "{bad}");
    }
}

#[actix_web::test]
async fn healthz_reports_the_phase() {
    let app = TestApp::spawn().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let health = body(response).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["phase"], "baseline");
    assert_eq!(health["instance"], app.instance_id.as_str());
}

/// Reads that arrive together share one query (`db::reads`): each must still get its own
/// answer, also when several ask for the same id or for one that does not exist.
#[actix_web::test]
async fn concurrent_reads_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    let mut people = Vec::new();
    for n in 0..5 {
        let name = format!("Reader{n} Concurrent");
        let id = app
            .create_user(&name, &format!("reader{n}@example.com"))
            .await;
        people.push((id, Some(name)));
    }
    let missing = people.iter().map(|p| p.0).max().unwrap() + 1000;
    people.push((missing, None));
    let mut reads = Vec::new();
    for round in 0..60 {
        for (id, name) in &people {
            let (client, url) = (app.client.clone(), app.url(&format!("/api/v1/users/{id}")));
            let (id, name) = (*id, name.clone());
            reads.push(actix_web::rt::spawn(async move {
                let response = client.get(url).send().await.unwrap();
                (
                    round,
                    id,
                    name,
                    response.status(),
                    response.text().await.unwrap(),
                )
            }));
        }
    }
    for read in reads {
        let (round, id, name, status, text) = read.await.unwrap();
        match name {
            Some(name) => {
                assert_eq!(status, 200, "round {round}, id {id}: {text}");
                let user: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    (user["id"].as_i64(), user["full_name"].as_str()),
                    (Some(id), Some(name.as_str()))
                );
            }
            None => assert_eq!(status, 404, "round {round}, missing id {id}: {text}"),
        }
    }
}
