//! A person's name as v2 clients send it: first and last name apart.

use super::FieldError;
use super::full_name::{FULL_NAME_MAX_CHARS, looks_blank, refused_characters};
use super::name_rule::{join_name, normalize_whitespace};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts {
    pub first_name: String,
    pub last_name: String,
}

fn part(raw: &str, field: &'static str, label: &str) -> Result<String, FieldError> {
    match refused_characters(raw, field, label) {
        Some(refused) => Err(refused),
        None => Ok(normalize_whitespace(raw)),
    }
}

impl NameParts {
    /// Both parts are normalised by the name rule. The first name is required; the last name
    /// may be empty (people with one name), but not invisible characters only (it would look
    /// empty and be something else). Together they obey the full name's length cap.
    pub fn parse(first_name: &str, last_name: &str) -> Result<Self, FieldError> {
        let first_name = part(first_name, "first_name", "First name")?;
        let last_name = part(last_name, "last_name", "Last name")?;
        if looks_blank(&first_name) {
            return Err(FieldError::new(
                "first_name",
                "First name must not be blank.",
            ));
        }
        if !last_name.is_empty() && looks_blank(&last_name) {
            return Err(FieldError::new(
                "last_name",
                "Last name has no visible character: leave it empty or write it out.",
            ));
        }
        let chars = join_name(&first_name, &last_name).chars().count();
        if chars > FULL_NAME_MAX_CHARS {
            return Err(FieldError::new(
                "last_name",
                format!(
                    "First and last name together must be at most {FULL_NAME_MAX_CHARS} characters (got {chars})."
                ),
            ));
        }
        Ok(Self {
            first_name,
            last_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_keeps_multi_word_parts() {
        let name = NameParts::parse(" Mary\u{00A0} Ann ", "  Smith ").unwrap();
        assert_eq!(name.first_name, "Mary Ann");
        assert_eq!(name.last_name, "Smith");
        assert_eq!(NameParts::parse("Cher", "").unwrap().last_name, "");
    }

    #[test]
    fn rejects_blank_first_control_and_long_names() {
        assert_eq!(
            NameParts::parse("  ", "Smith").unwrap_err().field,
            "first_name"
        );
        assert_eq!(
            NameParts::parse("\u{200B}", "Smith").unwrap_err().field,
            "first_name"
        );
        assert_eq!(
            NameParts::parse("Ann", "\u{FEFF}").unwrap_err().field,
            "last_name"
        );
        assert_eq!(
            NameParts::parse("Ann", "Sm\0ith").unwrap_err().field,
            "last_name"
        );
        assert_eq!(
            NameParts::parse("Ann", "\u{2067}Smith").unwrap_err().field,
            "last_name"
        );
        assert_eq!(
            NameParts::parse("\u{202E}Ann", "Smith").unwrap_err().field,
            "first_name"
        );
        let long = "x".repeat(150);
        assert_eq!(
            NameParts::parse(&long, &long).unwrap_err().field,
            "last_name"
        );
    }
}
