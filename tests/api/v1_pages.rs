//! The v1 HTML pages as a browser uses them: forms, redirects, re-rendered errors.

use crate::helpers::TestApp;

async fn text(response: reqwest::Response) -> String {
    response.text().await.expect("a text body")
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[actix_web::test]
async fn home_page_says_what_zdm_is_and_the_current_phase() {
    let app = TestApp::spawn().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = text(response).await;
    assert!(page.contains("first_name"));
    // Every step is reversible, the drop of full_name too (its rollback re-adds the column).
    assert!(
        page.contains("Each step is reversible, the drop of the old column too"),
        "{page}"
    );
    assert!(page.contains(r#"<span class="phase-name" id="current-phase">baseline</span>"#));
    let css = app.get("/static/app.css").await;
    assert_eq!(css.status(), 200);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
}

#[actix_web::test]
async fn creating_through_the_form_redirects_to_the_list_showing_the_user() {
    let app = TestApp::spawn().await;
    let form = text(app.get("/v1/users/new").await).await;
    assert!(form.contains(r#"<label for="full_name">Full name</label>"#));
    assert!(form.contains(r#"<label for="email">Email</label>"#));

    let response = app
        .post_form(
            "/v1/users",
            &[
                ("full_name", "Katherine Johnson"),
                ("email", "kj@example.com"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let list = text(app.get(&location(&response)).await).await;
    assert!(list.contains("User created."));
    assert!(list.contains("Katherine Johnson"));
    assert!(list.contains("kj@example.com"));
}

#[actix_web::test]
async fn an_invalid_form_comes_back_with_the_message_and_the_input() {
    let app = TestApp::spawn().await;
    let response = app
        .post_form(
            "/v1/users",
            &[("full_name", "   "), ("email", "kj@@example")],
        )
        .await;
    assert_eq!(response.status(), 422);
    let page = text(response).await;
    assert!(page.contains("Full name must not be blank."));
    assert!(page.contains("Email must look like name@example.com."));
    assert!(
        page.contains(r#"value="kj@@example""#),
        "the typed email is kept"
    );
    assert!(page.contains(r#"aria-invalid="true""#));

    let response = app
        .post_form(
            "/v1/users",
            &[("full_name", "Dorothy Vaughan"), ("email", "bad")],
        )
        .await;
    let page = text(response).await;
    assert!(
        page.contains(r#"value="Dorothy Vaughan""#),
        "the valid field is kept too"
    );
}

#[actix_web::test]
async fn a_duplicate_email_in_the_form_answers_409_with_the_form() {
    let app = TestApp::spawn().await;
    app.create_user("Mary Jackson", "mary@example.com").await;
    let response = app
        .post_form(
            "/v1/users",
            &[("full_name", "Another Mary"), ("email", "mary@example.com")],
        )
        .await;
    assert_eq!(response.status(), 409);
    let page = text(response).await;
    assert!(page.contains("A user with this email address already exists."));
    assert!(page.contains(r#"value="Another Mary""#));
}

#[actix_web::test]
async fn editing_saves_and_invalid_edits_keep_the_input() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Edsger Dijkstra", "ewd@example.com").await;
    let form = text(app.get(&format!("/v1/users/{id}/edit")).await).await;
    assert!(form.contains(r#"value="Edsger Dijkstra""#));
    assert!(form.contains(&format!(r#"action="/v1/users/{id}""#)));

    let response = app
        .post_form(
            &format!("/v1/users/{id}"),
            &[
                ("full_name", "Edsger W. Dijkstra"),
                ("email", "ewd@example.com"),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let list = text(app.get(&location(&response)).await).await;
    assert!(list.contains("User saved."));
    assert!(list.contains("Edsger W. Dijkstra"));

    let response = app
        .post_form(
            &format!("/v1/users/{id}"),
            &[
                ("full_name", "Edsger\u{0007}"),
                ("email", "ewd@example.com"),
            ],
        )
        .await;
    assert_eq!(response.status(), 422);
    assert!(text(response).await.contains("control characters"));

    assert_eq!(app.get("/v1/users/424242/edit").await.status(), 404);
}

#[actix_web::test]
async fn deleting_asks_first_then_removes() {
    let app = TestApp::spawn().await;
    let id = app
        .create_user("Barbara Liskov", "liskov@example.com")
        .await;
    let confirm = app.get(&format!("/v1/users/{id}/delete")).await;
    assert_eq!(confirm.status(), 200);
    assert!(text(confirm).await.contains("Barbara Liskov"));

    let response = app.post_form(&format!("/v1/users/{id}/delete"), &[]).await;
    assert_eq!(response.status(), 303);
    let list = text(app.get(&location(&response)).await).await;
    assert!(list.contains("User deleted."));
    assert!(!list.contains("Barbara Liskov"));

    let again = app.post_form(&format!("/v1/users/{id}/delete"), &[]).await;
    assert_eq!(again.status(), 404);
    let page = text(again).await;
    assert!(
        page.contains("404 · Not Found"),
        "a page, not a bare status"
    );
}

#[actix_web::test]
async fn the_list_pages_with_next_links() {
    let app = TestApp::spawn().await;
    for i in 0..30 {
        app.create_user(&format!("Person {i:02}"), &format!("p{i}@example.com"))
            .await;
    }
    let first = text(app.get("/v1/users").await).await;
    assert!(first.contains("Person 00") && first.contains("Person 24"));
    assert!(!first.contains("Person 25"));
    let next = first
        .split(r#"<a rel="next" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a next link")
        .to_owned();
    let second = text(app.get(&next).await).await;
    assert!(second.contains("Person 25") && second.contains("Person 29"));
    assert!(!second.contains("Person 24"));
    assert!(
        !second.contains(r#"rel="next""#),
        "no next link on the last page"
    );
}

#[actix_web::test]
async fn names_are_shown_as_text_never_as_markup() {
    let app = TestApp::spawn().await;
    app.create_user("<script>alert(1)</script>", "xss@example.com")
        .await;
    let page = text(app.get("/v1/users").await).await;
    assert!(!page.contains("<script>alert(1)</script>"));
    assert!(page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
}

#[actix_web::test]
async fn unknown_pages_answer_an_html_404() {
    let app = TestApp::spawn().await;
    let response = app.get("/no/such/page").await;
    assert_eq!(response.status(), 404);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(text(response).await.contains("Back to the users"));
    assert_eq!(app.get("/v1/users/abc/edit").await.status(), 404);
}
