//! A v1 user's fields, validated together so a form can show every problem at once.

use super::{Email, FieldError, FullName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub full_name: FullName,
    pub email: Email,
}

/// Validated changes to a user; at least one field is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChanges {
    pub full_name: Option<FullName>,
    pub email: Option<Email>,
}

/// Every field problem found, in field order (a JSON answer names the first).
pub type FieldErrors = Vec<FieldError>;

fn required<'a>(
    value: Option<&'a str>,
    field: &'static str,
    label: &str,
) -> Result<&'a str, FieldError> {
    value.ok_or_else(|| FieldError::new(field, format!("{label} is required.")))
}

impl NewUser {
    pub fn parse(full_name: Option<&str>, email: Option<&str>) -> Result<Self, FieldErrors> {
        let full_name = required(full_name, "full_name", "Full name").and_then(FullName::parse);
        let email = required(email, "email", "Email").and_then(Email::parse);
        match (full_name, email) {
            (Ok(full_name), Ok(email)) => Ok(Self { full_name, email }),
            (full_name, email) => Err([full_name.err(), email.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

impl UserChanges {
    pub fn parse(full_name: Option<&str>, email: Option<&str>) -> Result<Self, FieldErrors> {
        if full_name.is_none() && email.is_none() {
            return Err(vec![FieldError::new(
                "full_name",
                "Nothing to change: send full_name and/or email.",
            )]);
        }
        let full_name = full_name.map(FullName::parse).transpose();
        let email = email.map(Email::parse).transpose();
        match (full_name, email) {
            (Ok(full_name), Ok(email)) => Ok(Self { full_name, email }),
            (full_name, email) => Err([full_name.err(), email.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_user_reports_every_field() {
        let errors = NewUser::parse(Some(" "), Some("nope")).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["full_name", "email"]);
        let missing = NewUser::parse(None, Some("a@example.com")).unwrap_err();
        assert_eq!(missing[0].message, "Full name is required.");
    }

    #[test]
    fn changes_need_at_least_one_field() {
        assert!(UserChanges::parse(None, None).is_err());
        let only_email = UserChanges::parse(None, Some("b@example.com")).unwrap();
        assert!(only_email.full_name.is_none());
        assert_eq!(only_email.email.unwrap().as_str(), "b@example.com");
    }
}
