//! Request bodies are read whole, up to `BODY_LIMIT` and within `BODY_TIMEOUT`, before any
//! handler runs: a client that sends its body a byte at a time cannot hold a connection (and
//! a worker's attention) open for minutes, and the time a handler is measured by starts only
//! once its input is there, so a slow client does not look like a slow app to the backfill's
//! latency throttle.
//!
//! Form bodies must decode to UTF-8 here too: the form parser would quietly replace invalid
//! bytes with U+FFFD and store what the client never sent, where the JSON API answers 400.

use std::time::Duration;

use actix_web::dev::ServiceRequest;
use actix_web::http::ConnectionType;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::{BODY_LIMIT, is_api};
use crate::error::{AppError, HtmlError};

/// The longest a client may take to send its whole body: as long as actix gives it for the
/// headers.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the request's body into memory and puts it back for the extractors; on a body too
/// large, too slow or (for a form) not UTF-8, the answer to send instead.
pub async fn read_whole(req: &mut ServiceRequest) -> Result<(), HttpResponse> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > BODY_LIMIT) {
        return Err(refusal(
            req,
            AppError::PayloadTooLarge { limit: BODY_LIMIT },
        ));
    }
    let mut payload = req.take_payload();
    let read = actix_web::rt::time::timeout(BODY_TIMEOUT, async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| AppError::BadRequest(format!("Could not read the body: {e}.")))?;
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(AppError::PayloadTooLarge { limit: BODY_LIMIT });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    })
    .await;
    let body = match read {
        Err(_elapsed) => return Err(refusal(req, AppError::RequestTimeout)),
        Ok(Err(e)) => return Err(refusal(req, e)),
        Ok(Ok(body)) => body,
    };
    // Case-insensitive, as media types are (and as the form extractor reads them).
    let form = req
        .content_type()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded");
    if form && !form_is_utf8(&body) {
        return Err(refusal(
            req,
            AppError::BadRequest("Malformed form: a field is not valid UTF-8.".to_owned()),
        ));
    }
    req.set_payload(actix_web::dev::Payload::from(body));
    Ok(())
}

/// Whether every name and value of a urlencoded form decodes to UTF-8.
fn form_is_utf8(body: &Bytes) -> bool {
    body.split(|b| *b == b'&')
        .flat_map(|pair| pair.splitn(2, |b| *b == b'='))
        .all(|part| percent_encoding::percent_decode(part).decode_utf8().is_ok())
}

/// The error as the client expects it (JSON for the API, a page otherwise), closing the
/// connection when the body was not read to its end.
fn refusal(req: &ServiceRequest, err: AppError) -> HttpResponse {
    let unread = matches!(
        err,
        AppError::PayloadTooLarge { .. } | AppError::RequestTimeout
    );
    let mut response = if is_api(req.request()) {
        err.error_response()
    } else {
        HtmlError(err).error_response()
    };
    if unread {
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_must_decode_to_utf8() {
        for ok in [
            "",
            "full_name=Ada+Lovelace&email=a%40example.com",
            "full_name=Zo%C3%AB",
            "a&b=&=c",
        ] {
            assert!(form_is_utf8(&Bytes::from(ok)), "{ok}");
        }
        for bad in [
            "full_name=A%ff%feB",
            "x%C3=1",
            "name=\u{0}\u{0}".replace('\u{0}', "%80").as_str(),
        ] {
            assert!(!form_is_utf8(&Bytes::from(bad.to_owned())), "{bad}");
        }
        assert!(!form_is_utf8(&Bytes::from_static(b"raw=\xff")));
    }
}
