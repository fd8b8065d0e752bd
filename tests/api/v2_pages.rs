//! The v2 pages: released at dual_write, first and last name apart, and still right after
//! the contract; v1 pages keep working through the new columns.

use zdm::domain::Phase;

use crate::helpers::TestApp;

async fn text(response: reqwest::Response) -> String {
    response.text().await.expect("a text body")
}

#[actix_web::test]
async fn v2_pages_appear_at_dual_write_and_keep_the_parts_apart() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.get("/v2/users").await.status(),
        404,
        "not released in baseline"
    );
    assert_eq!(app.get("/v2/users/new").await.status(), 404);
    app.walk_to(Phase::DualWrite).await;

    let form = text(app.get("/v2/users/new").await).await;
    assert!(form.contains(r#"<label for="first_name">First name</label>"#));
    assert!(form.contains(r#"<label for="last_name">Last name</label>"#));

    let response = app
        .post_form(
            "/v2/users",
            &[
                ("first_name", " "),
                ("last_name", "Smith"),
                ("email", "mary@example.com"),
            ],
        )
        .await;
    assert_eq!(response.status(), 422);
    let page = text(response).await;
    assert!(page.contains("First name must not be blank."));
    assert!(page.contains(r#"value="Smith""#), "the input is kept");

    let response = app
        .post_form(
            "/v2/users",
            &[
                ("first_name", "Mary  Ann"),
                ("last_name", "Smith"),
                ("email", "mary@example.com"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let list = text(
        app.get(response.headers()["location"].to_str().unwrap())
            .await,
    )
    .await;
    assert!(list.contains("<td>Mary Ann</td><td>Smith</td>"), "{list}");
    let v1_list = text(app.get("/v1/users").await).await;
    assert!(
        v1_list.contains("<td>Mary Ann Smith</td>"),
        "v1 sees the joined name"
    );

    app.walk_to(Phase::Contracted).await;
    let list = text(app.get("/v2/users").await).await;
    assert!(list.contains("<td>Mary Ann</td><td>Smith</td>"));
    let id = list
        .split(r#"<a href="/v2/users/"#)
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let response = app
        .post_form(
            &format!("/v1/users/{id}"),
            &[
                ("full_name", "Mary Ann Smith-Jones"),
                ("email", "mary@example.com"),
            ],
        )
        .await;
    assert_eq!(
        response.status(),
        303,
        "v1 forms still write after the contract"
    );
    let edit = text(app.get(&format!("/v2/users/{id}/edit")).await).await;
    assert!(
        edit.contains(r#"value="Mary""#) && edit.contains(r#"value="Ann Smith-Jones""#),
        "{edit}"
    );
}
