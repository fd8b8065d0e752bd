//! The audit's oracle: what a row must hold after the writes a client saw acknowledged,
//! worked out from what the client sent. It is written here from the spec and shares no code
//! with the app (its name rule, its models, its verify), so that a bug there cannot hide from
//! the audit by being repeated in it.
//!
//! The spec, as the audit holds the app to it:
//! - `norm(s)`: every run of Unicode `White_Space` characters becomes one space; there is
//!   none at either end.
//! - `split(s)`: `norm(s)` up to its first space is the first name, the rest is the last name
//!   (empty for a single word).
//! - `join(first, last)`: the non-empty ones of the two, one space between them.
//! - A v1 write of `s` is read back by v1 as `norm(s)` and by v2 as `split(s)`; a v2 write of
//!   `(f, l)` is read back by v2 as `(norm(f), norm(l))` and by v1 as the join of those. An
//!   email is read back as sent, without surrounding whitespace.
//! - What each API reads of a stored row: v1 reads `full_name` until read_new, then
//!   `join(first_name, last_name)`; v2 (released at dual_write) reads the new columns where
//!   they hold the same name as `full_name`, `split(full_name)` elsewhere, and from read_new
//!   on the new columns as they are.
//! - A row diverges (I2) in dual_write when it has new columns that do not join to
//!   `norm(full_name)`, and once the backfill has run also when it lacks them; in backfilled
//!   and read_new when it lacks them or they do not join to it; in new_only and contracted
//!   when it lacks them (`full_name` is no longer kept).

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};

use crate::domain::Phase;

pub fn norm(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

pub fn split(s: &str) -> (String, String) {
    let name = norm(s);
    match name.find(' ') {
        Some(at) => (name[..at].to_owned(), name[at + 1..].to_owned()),
        None => (name, String::new()),
    }
}

pub fn join(first: &str, last: &str) -> String {
    [first, last]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The name fields of a write, as the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentName {
    /// v1: `full_name`.
    Full(String),
    /// v2: `first_name`, `last_name`.
    Parts(String, String),
}

/// A write as the client sent it (an update sends every field but, through JSON, the email).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub name: SentName,
    /// The row's email as the client last set it; `None` when no client ever did, so the
    /// seeded address must still be there.
    pub email: Option<String>,
}

impl Sent {
    /// What v1 must read back.
    pub fn v1_name(&self) -> String {
        match &self.name {
            SentName::Full(full) => norm(full),
            SentName::Parts(first, last) => join(&norm(first), &norm(last)),
        }
    }

    /// What v2 must read back.
    pub fn v2_name(&self) -> (String, String) {
        match &self.name {
            SentName::Full(full) => split(full),
            SentName::Parts(first, last) => (norm(first), norm(last)),
        }
    }

    pub fn email(&self) -> Option<&str> {
        self.email.as_deref().map(str::trim)
    }
}

/// A row as stored; a column the table lacks in its phase is `None`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Row {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub email: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub full_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub first_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_name: Option<String>,
}

impl Row {
    fn parts(&self) -> Option<(&str, &str)> {
        Some((self.first_name.as_deref()?, self.last_name.as_deref()?))
    }

    fn full_name(&self) -> &str {
        self.full_name.as_deref().unwrap_or_default()
    }

    /// Whether the new columns hold the name `full_name` holds.
    fn parts_agree(&self) -> bool {
        self.parts()
            .is_some_and(|(first, last)| join(first, last) == norm(self.full_name()))
    }

    /// The name v1 reads in `phase`.
    pub fn v1_name(&self, phase: Phase) -> String {
        if phase >= Phase::ReadNew {
            let (first, last) = self.parts().unwrap_or_default();
            join(first, last)
        } else {
            self.full_name().to_owned()
        }
    }

    /// The name v2 reads in `phase` (`None` before v2 is released).
    pub fn v2_name(&self, phase: Phase) -> Option<(String, String)> {
        if phase < Phase::DualWrite {
            return None;
        }
        let parts = self.parts().map(|(f, l)| (f.to_owned(), l.to_owned()));
        if phase >= Phase::ReadNew || self.parts_agree() {
            return Some(parts.unwrap_or_default());
        }
        Some(split(self.full_name()))
    }

    /// Whether the row breaks I2 as `phase` defines it; `backfilled`: the backfill has run to
    /// the end.
    pub fn diverges(&self, phase: Phase, backfilled: bool) -> bool {
        let has_parts = self.parts().is_some();
        match phase {
            Phase::Baseline | Phase::Expanded => false,
            Phase::DualWrite if !backfilled => {
                let any_part = self.first_name.is_some() || self.last_name.is_some();
                any_part && !self.parts_agree()
            }
            Phase::DualWrite | Phase::Backfilled | Phase::ReadNew => !self.parts_agree(),
            Phase::NewOnly | Phase::Contracted => !has_parts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(full: Option<&str>, first: Option<&str>, last: Option<&str>) -> Row {
        Row {
            id: 1,
            email: "a@example.com".to_owned(),
            full_name: full.map(str::to_owned),
            first_name: first.map(str::to_owned),
            last_name: last.map(str::to_owned),
        }
    }

    #[test]
    fn norm_collapses_every_unicode_space_and_trims() {
        assert_eq!(norm("  Ada \t Lovelace "), "Ada Lovelace");
        assert_eq!(norm("Ada\u{00A0}\u{2003}\u{3000}King"), "Ada King");
        assert_eq!(norm("\u{00A0} \u{2009}"), "");
        assert_eq!(norm(""), "");
        assert_eq!(norm("Zoë\u{0301} محمد 🙂"), "Zoë\u{0301} محمد 🙂");
        // Not White_Space: the zero-width space and the word joiner stay.
        assert_eq!(norm("A\u{200B}B\u{2060}C"), "A\u{200B}B\u{2060}C");
    }

    #[test]
    fn split_takes_the_first_word_and_join_skips_empty_parts() {
        assert_eq!(
            split(" Mary\u{00A0} Ann  Smith"),
            ("Mary".into(), "Ann Smith".into())
        );
        assert_eq!(split("Cher "), ("Cher".into(), String::new()));
        assert_eq!(split("   "), (String::new(), String::new()));
        assert_eq!(join("Mary Ann", "Smith"), "Mary Ann Smith");
        assert_eq!(join("Cher", ""), "Cher");
        assert_eq!(join("", "Smith"), "Smith");
        assert_eq!(join("", ""), "");
    }

    #[test]
    fn a_client_expects_its_write_normalised_in_both_apis() {
        let v1 = Sent {
            name: SentName::Full("  Mary  Ann Smith ".into()),
            email: Some(" m@example.com ".into()),
        };
        assert_eq!(v1.v1_name(), "Mary Ann Smith");
        assert_eq!(v1.v2_name(), ("Mary".into(), "Ann Smith".into()));
        assert_eq!(v1.email(), Some("m@example.com"));
        let v2 = Sent {
            name: SentName::Parts("Mary\u{00A0}Ann".into(), " Smith".into()),
            email: None,
        };
        assert_eq!(v2.v1_name(), "Mary Ann Smith");
        assert_eq!(v2.v2_name(), ("Mary Ann".into(), "Smith".into()));
    }

    #[test]
    fn the_apis_read_a_row_by_phase() {
        // Written by v2 as "Mary Ann" + "Smith": the parts agree with full_name.
        let agreeing = row(Some("Mary Ann Smith"), Some("Mary Ann"), Some("Smith"));
        // Written by a v1 instance that skipped the new columns.
        let stale_parts = row(Some("Ada King"), Some("Ada"), Some("Lovelace"));
        assert_eq!(agreeing.v2_name(Phase::Expanded), None);
        assert_eq!(
            agreeing.v2_name(Phase::DualWrite),
            Some(("Mary Ann".into(), "Smith".into()))
        );
        assert_eq!(
            stale_parts.v2_name(Phase::Backfilled),
            Some(("Ada".into(), "King".into()))
        );
        assert_eq!(stale_parts.v1_name(Phase::Backfilled), "Ada King");
        assert_eq!(stale_parts.v1_name(Phase::ReadNew), "Ada Lovelace");
        assert_eq!(
            stale_parts.v2_name(Phase::ReadNew),
            Some(("Ada".into(), "Lovelace".into()))
        );
        let contracted = row(None, Some("Cher"), Some(""));
        assert_eq!(contracted.v1_name(Phase::Contracted), "Cher");
    }

    #[test]
    fn divergence_follows_the_phase() {
        let unfilled = row(Some("Ada King"), None, None);
        let odd_spacing = row(Some(" Ada\u{00A0} King"), Some("Ada"), Some("King"));
        let stale_parts = row(Some("Ada King"), Some("Ada"), Some("Lovelace"));
        let half = row(Some("Ada King"), Some("Ada"), None);
        assert!(!stale_parts.diverges(Phase::Expanded, false));
        assert!(!unfilled.diverges(Phase::DualWrite, false));
        assert!(
            unfilled.diverges(Phase::DualWrite, true),
            "left out after the backfill"
        );
        assert!(!odd_spacing.diverges(Phase::DualWrite, true));
        assert!(stale_parts.diverges(Phase::DualWrite, false));
        assert!(half.diverges(Phase::DualWrite, false));
        assert!(unfilled.diverges(Phase::Backfilled, true));
        assert!(stale_parts.diverges(Phase::ReadNew, true));
        assert!(!stale_parts.diverges(Phase::NewOnly, true));
        assert!(row(None, None, Some("King")).diverges(Phase::Contracted, true));
    }
}
