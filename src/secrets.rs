//! Secrets: the generated admin token, admin session ids and CSRF tokens.
//!
//! Every one is 256 bits from the operating system's CSPRNG (`getrandom`), written as 43
//! characters of unpadded base64url. A value from a client counts as one of ours only in
//! exactly that form, so a cookie holding anything else (`zdm_csrf=!`) is refused before it is
//! compared with anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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

#[cfg(test)]
mod tests {
    use super::*;

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
