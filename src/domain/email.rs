//! An email address, checked for shape (not deliverability) and brought to one canonical
//! form, so that addresses a person would read as the same are the same to the uniqueness
//! check.

use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;
use unicode_security::MixedScript;

use super::FieldError;

/// The longest address SMTP can carry.
pub const EMAIL_MAX_CHARS: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// The canonical form: NFKC, then lower case (and NFKC again, as lower-casing can undo it).
/// NFKC folds compatibility look-alikes into the ordinary letter (fullwidth `ｅ` → `e`, the
/// Kelvin sign `K` → `K`), lower-casing folds case, for the whole of Unicode (PostgreSQL's
/// `lower()` of the unique index folds only what its locale knows).
fn canonical(raw: &str) -> String {
    raw.trim()
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect()
}

impl Email {
    /// Surrounding whitespace is trimmed and the address brought to its canonical form
    /// (`canonical`); the result must be a valid address per RFC 5321/5322 (checked by the
    /// `email_address` crate) with a dot in the domain, without a quoted local part, and with
    /// the local part and each domain label in one script each (a Cyrillic `е` among Latin
    /// letters is refused: no normalisation maps it to `e`).
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "email";
        let email = canonical(raw);
        if email.is_empty() {
            return Err(FieldError::new(FIELD, "Email must not be blank."));
        }
        if email.chars().count() > EMAIL_MAX_CHARS {
            return Err(FieldError::new(
                FIELD,
                format!("Email must be at most {EMAIL_MAX_CHARS} characters."),
            ));
        }
        let valid = email_address::EmailAddress::from_str(&email)
            .map(|parsed| parsed.domain().contains('.') && !email.contains(char::is_whitespace))
            .unwrap_or(false);
        if !valid {
            return Err(FieldError::new(
                FIELD,
                "Email must look like name@example.com.",
            ));
        }
        let (local, domain) = email.rsplit_once('@').unwrap_or((&email, ""));
        if local.starts_with('"') {
            return Err(FieldError::new(
                FIELD,
                "Email must not have a quoted local part (\"name\"@example.com).",
            ));
        }
        if !local.is_single_script() || !domain.split('.').all(|label| label.is_single_script()) {
            return Err(FieldError::new(
                FIELD,
                "Email must not mix letters of different scripts (such as Latin and Cyrillic) in its name or in one part of its domain.",
            ));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        assert!(Email::parse("o'brien+tag@mail.example.co.uk").is_ok());
        assert_eq!(
            Email::parse("Zoë@example.com").unwrap().as_str(),
            "zoë@example.com"
        );
        assert!(Email::parse("кельвин@пример.рф").is_ok(), "one script each");
        assert!(
            Email::parse("кельвин@пример.com").is_ok(),
            "per domain label"
        );
    }

    #[test]
    fn look_alikes_become_the_address_they_look_like() {
        for look_alike in [
            "kelvin@example.com",
            "KELVIN@EXAMPLE.COM",
            "\u{212A}elvin@example.com",            // Kelvin sign
            "k\u{FF45}lvin@example.com",            // fullwidth e
            "ｋｅｌｖｉｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", // all fullwidth
        ] {
            assert_eq!(
                Email::parse(look_alike).unwrap().as_str(),
                "kelvin@example.com",
                "{look_alike}"
            );
        }
        // NFC and NFD spellings of the same letter are one address.
        assert_eq!(
            Email::parse("zoe\u{0308}@example.com").unwrap(),
            Email::parse("zo\u{00EB}@example.com").unwrap()
        );
    }

    #[test]
    fn refuses_quoted_and_mixed_script_addresses() {
        let quoted = Email::parse("\"kelvin\"@example.com").unwrap_err();
        assert!(quoted.message.contains("quoted"), "{quoted:?}");
        for mixed in [
            "k\u{0435}lvin@example.com", // Cyrillic е among Latin letters
            "kelvin@\u{0435}xample.com",
        ] {
            let err = Email::parse(mixed).unwrap_err();
            assert!(err.message.contains("scripts"), "{mixed}: {err:?}");
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "a b@example.com",
            "ada@@example.com",
            "ada@exa mple.com",
        ] {
            assert_eq!(Email::parse(bad).unwrap_err().field, "email", "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }
}
