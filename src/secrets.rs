//! Secrets: the generated admin token, admin session ids and CSRF tokens, and the signing of
//! the user forms' CSRF tokens.
//!
//! Every secret is 256 bits from the operating system's CSPRNG (`getrandom`), written as 43
//! characters of unpadded base64url. A value from a client counts as one of ours only in
//! exactly that form, so a cookie holding anything else (`zdm_csrf=!`) is refused before it is
//! compared with anything.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Random bytes per secret: 256 bits, twice the 128 that make guessing hopeless.
pub const SECRET_BYTES: usize = 32;

/// The length of a secret as text.
pub const SECRET_CHARS: usize = 43;

/// A new secret from the OS CSPRNG. Fails only if the operating system cannot give random
/// bytes, and then nothing should be issued.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `value` has the form of a secret this app issues (the canonical base64url text of
/// `SECRET_BYTES` bytes).
pub fn is_secret_form(value: &str) -> bool {
    value.len() == SECRET_CHARS
        && URL_SAFE_NO_PAD
            .decode(value)
            .is_ok_and(|bytes| bytes.len() == SECRET_BYTES)
}

/// Keeps the user forms' CSRF tokens apart from anything else the same key might sign.
const USER_FORM_CONTEXT: &[u8] = b"zdm user form\0";

fn user_form_mac(key: &[u8], cookie: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(USER_FORM_CONTEXT);
    mac.update(cookie.as_bytes());
    mac
}

/// The CSRF token of a user page's form for the browser whose `zdm_csrf` cookie is `cookie`:
/// the HMAC-SHA256 of the cookie under the server's key, as 43 characters of base64url. Only
/// the server can make it, so a cookie a client chose, repeated in the form, is no token.
pub fn user_form_token(key: &[u8], cookie: &str) -> String {
    URL_SAFE_NO_PAD.encode(user_form_mac(key, cookie).finalize().into_bytes())
}

/// Whether `given` is the token `user_form_token` makes for `cookie`, compared in constant
/// time.
pub fn is_user_form_token(key: &[u8], cookie: &str, given: &str) -> bool {
    is_secret_form(given)
        && URL_SAFE_NO_PAD
            .decode(given)
            .is_ok_and(|bytes| user_form_mac(key, cookie).verify_slice(&bytes).is_ok())
}

/// The user forms' key as an instance holds it: read from PostgreSQL at the first form it
/// shows or checks, then kept (cloning shares it).
#[derive(Clone, Default)]
pub struct UserFormKey(Arc<tokio::sync::OnceCell<Vec<u8>>>);

impl UserFormKey {
    /// The key, reading it with `load` the first time.
    pub async fn get<E, F>(&self, load: impl FnOnce() -> F) -> Result<&[u8], E>
    where
        F: Future<Output = Result<Vec<u8>, E>>,
    {
        self.0.get_or_try_init(load).await.map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_form_token_belongs_to_its_cookie_and_its_key() {
        let (key, other_key) = ([7u8; 32], [8u8; 32]);
        let cookie = new_secret().unwrap();
        let token = user_form_token(&key, &cookie);
        assert!(is_secret_form(&token));
        assert!(is_user_form_token(&key, &cookie, &token));
        assert!(
            !is_user_form_token(&key, &cookie, &cookie),
            "the cookie repeated"
        );
        assert!(!is_user_form_token(&other_key, &cookie, &token));
        assert!(!is_user_form_token(&key, &new_secret().unwrap(), &token));
        assert!(!is_user_form_token(&key, &cookie, ""));
    }

    #[test]
    fn secrets_are_fresh_and_of_their_own_form() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(is_secret_form(&a) && is_secret_form(&b));
        assert_eq!(a.len(), SECRET_CHARS);
    }

    #[test]
    fn anything_else_is_not_a_secret() {
        for other in [
            "",
            "!",
            "x",
            &"x".repeat(40),
            &"x".repeat(44),
            // 43 characters, but not the canonical form of 32 bytes (stray low bits).
            "dGVzdC1mb3JtLXRva2VuLXRlc3QtZm9ybS10b2tlbiF",
            "dGVzdC1mb3JtLXRva2VuLXRlc3QtZm9ybS10b2tlbi=",
            "dGVzdC1mb3JtLXRva2VuLXRlc3QtZm9ybS10b2tlb+E",
        ] {
            assert!(!is_secret_form(other), "{other:?}");
        }
        assert!(is_secret_form(
            "dGVzdC1mb3JtLXRva2VuLXRlc3QtZm9ybS10b2tlbiE"
        ));
    }
}
