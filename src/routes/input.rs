//! How malformed requests are answered: extractor settings shared by every route.
//!
//! JSON and query errors answer JSON; form and path errors answer a page when the request
//! was for a page. No bad input ends in a 500.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError, UrlencodedError};
use actix_web::{HttpMessage, HttpRequest, web};
use serde::de::{DeserializeOwned, Visitor};
use serde_json::Value;

use super::{BODY_LIMIT, is_api};
use crate::domain::FieldError;
use crate::error::{AppError, HtmlError};

fn respond(req: &HttpRequest, err: AppError) -> actix_web::Error {
    if is_api(req) {
        err.into()
    } else {
        HtmlError(err).into()
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(BODY_LIMIT)
        .error_handler(|err, req| {
            let app_err = match err {
                JsonPayloadError::Overflow { limit } => AppError::PayloadTooLarge { limit },
                JsonPayloadError::OverflowKnownLength { limit, .. } => {
                    AppError::PayloadTooLarge { limit }
                }
                JsonPayloadError::ContentType => AppError::UnsupportedMediaType(
                    "Send the body as JSON with Content-Type: application/json.".to_owned(),
                ),
                JsonPayloadError::Deserialize(e) => {
                    AppError::BadRequest(format!("Malformed JSON body: {e}."))
                }
                other => AppError::BadRequest(format!("Could not read the body: {other}.")),
            };
            respond(req, app_err)
        })
}

pub fn form_config() -> web::FormConfig {
    web::FormConfig::default()
        .limit(BODY_LIMIT)
        .error_handler(|err, req| {
            let app_err = match err {
                UrlencodedError::Overflow { limit, .. } => AppError::PayloadTooLarge { limit },
                UrlencodedError::ContentType => AppError::UnsupportedMediaType(
                    "Send the form as application/x-www-form-urlencoded.".to_owned(),
                ),
                other => AppError::BadRequest(format!("Malformed form: {other}.")),
            };
            respond(req, app_err)
        })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, req| {
        respond(
            req,
            AppError::BadRequest(format!("Malformed query string: {err}.")),
        )
    })
}

/// A path that does not parse (`/api/v1/users/abc`) names no resource: 404.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|_err: PathError, req| respond(req, AppError::NotFound))
}

/// A JSON body that may be left out, parsed by the handler (after authentication) instead of
/// an extractor: an empty body is `T::default()`; anything else must be a JSON object of
/// `T`'s fields (415 for another content type, 400 for JSON that does not parse or a field
/// of the wrong type, 422 naming the field for one `T` does not have or one whose text holds
/// a NUL byte, which PostgreSQL refuses to store, 422 naming `body` for an array or any other
/// value in place of the object). Unlike `Option<web::Json<T>>`, a
/// malformed body is never taken for a missing one, and a misspelt knob is never ignored.
pub fn optional_json<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // Media types are case-insensitive: Application/JSON is JSON.
    if !req.content_type().eq_ignore_ascii_case("application/json") {
        return Err(AppError::UnsupportedMediaType(
            "Send the body as JSON with Content-Type: application/json.".to_owned(),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("Malformed JSON body: {e}.")))?;
    let Value::Object(object) = &value else {
        return Err(AppError::Validation(FieldError::new(
            "body",
            "The body must be a JSON object of named fields (or left empty).",
        )));
    };
    let fields = struct_fields::<T>();
    if let Some(unknown) = object.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(AppError::UnknownField {
            field: unknown.clone(),
            expected: fields,
        });
    }
    if let Some(field) = fields
        .iter()
        .find(|f| object.get(**f).is_some_and(holds_nul))
    {
        return Err(AppError::Validation(FieldError::new(
            field,
            format!("{field} must not contain a NUL byte."),
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            AppError::BadRequest(format!("Malformed JSON body: {inner}."))
        } else {
            AppError::BadRequest(format!("Malformed JSON body: field {path}: {inner}."))
        }
    })
}

/// Whether a JSON value holds a NUL byte in any of its text.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The fields of the struct `T`, as serde's derive names them to the deserializer (so that
/// they cannot drift from the struct): asked of a deserializer that only listens.
fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Listener<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Listener<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only listening"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Listener(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::backfill::Knobs;

    #[test]
    fn a_structs_fields_are_read_from_its_derive() {
        assert_eq!(
            struct_fields::<Knobs>(),
            [
                "batch_size",
                "sleep_ms",
                "batch_target_ms",
                "workers",
                "triggers"
            ]
        );
        #[derive(serde::Deserialize)]
        struct Nothing {}
        assert!(struct_fields::<Nothing>().is_empty());
    }

    #[test]
    fn nul_bytes_are_found_at_any_depth() {
        for (json, nul) in [
            (r#""auto""#, false),
            (r#""auto\u0000""#, true),
            (r#"["a", {"b": "c\u0000"}]"#, true),
            (r#"{"\u0000": 1}"#, true),
            ("7", false),
        ] {
            assert_eq!(
                holds_nul(&serde_json::from_str(json).unwrap()),
                nul,
                "{json}"
            );
        }
    }
}
