//! A user's fields as v1 or v2 clients send them, validated together so a form can show
//! every problem at once.

use super::name_rule::{join_name, split_full_name};
use super::{Email, FieldError, FullName, NameParts};

/// A validated, normalised name in the form its client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// From v1: the whole name.
    Full(FullName),
    /// From v2: first and last name apart.
    Parts(NameParts),
}

impl Name {
    /// The name as one string (v2 parts joined by the name rule).
    pub fn full_name(&self) -> String {
        match self {
            Name::Full(full) => full.as_str().to_owned(),
            Name::Parts(parts) => join_name(&parts.first_name, &parts.last_name),
        }
    }

    /// The name as `(first_name, last_name)` (a v1 name split by the name rule).
    pub fn parts(&self) -> (String, String) {
        match self {
            Name::Full(full) => split_full_name(full.as_str()),
            Name::Parts(parts) => (parts.first_name.clone(), parts.last_name.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: Name,
    pub email: Email,
}

/// Validated changes to a user; at least one field is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChanges {
    pub name: Option<Name>,
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

fn collect<A, B>(
    a: Result<A, FieldError>,
    b: Result<B, FieldError>,
) -> Result<(A, B), FieldErrors> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err([a.err(), b.err()].into_iter().flatten().collect()),
    }
}

fn v1_name(full_name: &str) -> Result<Name, FieldError> {
    FullName::parse(full_name).map(Name::Full)
}

fn v2_name(first_name: Option<&str>, last_name: Option<&str>) -> Result<Name, FieldError> {
    let first = required(first_name, "first_name", "First name")?;
    let last = required(last_name, "last_name", "Last name")?;
    NameParts::parse(first, last).map(Name::Parts)
}

impl NewUser {
    pub fn parse_v1(full_name: Option<&str>, email: Option<&str>) -> Result<Self, FieldErrors> {
        let name = required(full_name, "full_name", "Full name").and_then(v1_name);
        let email = required(email, "email", "Email").and_then(Email::parse);
        collect(name, email).map(|(name, email)| Self { name, email })
    }

    /// `last_name` may be empty but must be sent.
    pub fn parse_v2(
        first_name: Option<&str>,
        last_name: Option<&str>,
        email: Option<&str>,
    ) -> Result<Self, FieldErrors> {
        let name = v2_name(first_name, last_name);
        let email = required(email, "email", "Email").and_then(Email::parse);
        collect(name, email).map(|(name, email)| Self { name, email })
    }
}

fn nothing_to_change(name_field: &'static str, what: &str) -> FieldErrors {
    vec![FieldError::new(
        name_field,
        format!("Nothing to change: send {what} and/or email."),
    )]
}

impl UserChanges {
    pub fn parse_v1(full_name: Option<&str>, email: Option<&str>) -> Result<Self, FieldErrors> {
        if full_name.is_none() && email.is_none() {
            return Err(nothing_to_change("full_name", "full_name"));
        }
        let name = full_name.map(v1_name).transpose();
        let email = email.map(Email::parse).transpose();
        collect(name, email).map(|(name, email)| Self { name, email })
    }

    /// A v2 name changes as a whole: `first_name` and `last_name` come together, so the
    /// write is one statement whatever the row held before.
    pub fn parse_v2(
        first_name: Option<&str>,
        last_name: Option<&str>,
        email: Option<&str>,
    ) -> Result<Self, FieldErrors> {
        if first_name.is_none() && last_name.is_none() && email.is_none() {
            return Err(nothing_to_change("first_name", "first_name + last_name"));
        }
        let name = match (first_name, last_name) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(FieldError::new(
                "last_name",
                "Send last_name together with first_name.",
            )),
            (None, Some(_)) => Err(FieldError::new(
                "first_name",
                "Send first_name together with last_name.",
            )),
            (first, last) => v2_name(first, last).map(Some),
        };
        let email = email.map(Email::parse).transpose();
        collect(name, email).map(|(name, email)| Self { name, email })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_user_reports_every_field() {
        let errors = NewUser::parse_v1(Some(" "), Some("nope")).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["full_name", "email"]);
        let missing = NewUser::parse_v1(None, Some("a@example.com")).unwrap_err();
        assert_eq!(missing[0].message, "Full name is required.");
        let v2 = NewUser::parse_v2(Some("Ann"), None, Some("a@example.com")).unwrap_err();
        assert_eq!(v2[0].field, "last_name");
    }

    #[test]
    fn changes_need_at_least_one_field() {
        assert!(UserChanges::parse_v1(None, None).is_err());
        let only_email = UserChanges::parse_v1(None, Some("b@example.com")).unwrap();
        assert!(only_email.name.is_none());
        assert_eq!(only_email.email.unwrap().as_str(), "b@example.com");
        assert!(UserChanges::parse_v2(None, None, None).is_err());
    }

    #[test]
    fn v2_names_change_as_a_whole() {
        let half = UserChanges::parse_v2(Some("Ann"), None, None).unwrap_err();
        assert_eq!(half[0].field, "last_name");
        let whole = UserChanges::parse_v2(Some("Mary Ann"), Some("Smith"), None).unwrap();
        assert_eq!(whole.name.unwrap().full_name(), "Mary Ann Smith");
    }

    #[test]
    fn names_convert_by_the_rule() {
        let full = Name::Full(FullName::parse("Mary Ann Smith").unwrap());
        assert_eq!(full.parts(), ("Mary".to_owned(), "Ann Smith".to_owned()));
        let parts = Name::Parts(NameParts::parse("Mary Ann", "Smith").unwrap());
        assert_eq!(parts.full_name(), "Mary Ann Smith");
    }
}
