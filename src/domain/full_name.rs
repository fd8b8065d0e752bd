//! A person's whole name as v1 clients send it.

use super::FieldError;
use super::name_rule::normalize_whitespace;

/// Longest accepted name, in characters (Unicode scalar values) after normalisation.
pub const FULL_NAME_MAX_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    /// Whitespace is normalised (see `name_rule`); control characters such as NUL, tabs or
    /// newlines, blank names and names over `FULL_NAME_MAX_CHARS` characters are refused.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "full_name";
        if raw.chars().any(char::is_control) {
            return Err(FieldError::new(
                FIELD,
                "Full name must not contain control characters (such as tabs, line breaks or NUL).",
            ));
        }
        let name = normalize_whitespace(raw);
        if name.is_empty() {
            return Err(FieldError::new(FIELD, "Full name must not be blank."));
        }
        let chars = name.chars().count();
        if chars > FULL_NAME_MAX_CHARS {
            return Err(FieldError::new(
                FIELD,
                format!(
                    "Full name must be at most {FULL_NAME_MAX_CHARS} characters (got {chars})."
                ),
            ));
        }
        Ok(Self(name))
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
    fn normalises_whitespace() {
        let name = FullName::parse("  Grace\u{00A0} Hopper  ").unwrap();
        assert_eq!(name.as_str(), "Grace Hopper");
    }

    #[test]
    fn keeps_unicode_names() {
        for ok in [
            "李小龍",
            "Zoë O'Brien-Łukasiewicz",
            "محمد علي",
            "Nguyễn Văn A",
            "🙂",
        ] {
            assert_eq!(FullName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_blank_control_and_long_names() {
        for bad in [
            "",
            "   ",
            "\u{00A0}",
            "Ada\0Lovelace",
            "Ada\nLovelace",
            "Ada\tL",
            "A\u{7f}",
        ] {
            let err = FullName::parse(bad).unwrap_err();
            assert_eq!(err.field, "full_name", "{bad:?}");
        }
        let at_cap = "é".repeat(FULL_NAME_MAX_CHARS);
        assert!(
            FullName::parse(&at_cap).is_ok(),
            "the cap counts characters, not bytes"
        );
        let over = "é".repeat(FULL_NAME_MAX_CHARS + 1);
        assert!(
            FullName::parse(&over)
                .unwrap_err()
                .message
                .contains("at most 200")
        );
    }
}
