//! An email address, checked for shape (not deliverability).

use std::str::FromStr;

use super::FieldError;

/// The longest address SMTP can carry.
pub const EMAIL_MAX_CHARS: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Surrounding whitespace is trimmed; the rest must be a valid address per RFC 5321/5322
    /// (checked by the `email_address` crate) with a dot in the domain.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "email";
        let email = raw.trim();
        if email.is_empty() {
            return Err(FieldError::new(FIELD, "Email must not be blank."));
        }
        if email.chars().count() > EMAIL_MAX_CHARS {
            return Err(FieldError::new(
                FIELD,
                format!("Email must be at most {EMAIL_MAX_CHARS} characters."),
            ));
        }
        let valid = email_address::EmailAddress::from_str(email)
            .map(|parsed| parsed.domain().contains('.') && !email.contains(char::is_whitespace))
            .unwrap_or(false);
        if !valid {
            return Err(FieldError::new(
                FIELD,
                "Email must look like name@example.com.",
            ));
        }
        Ok(Self(email.to_owned()))
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
    fn accepts_ordinary_addresses_trimmed() {
        assert_eq!(
            Email::parse(" ada@example.com ").unwrap().as_str(),
            "ada@example.com"
        );
        assert!(Email::parse("o'brien+tag@mail.example.co.uk").is_ok());
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
