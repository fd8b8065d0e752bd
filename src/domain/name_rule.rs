//! The name rule (invariant [I1]): how one `full_name` maps to `first_name` + `last_name` and
//! back. Dual-write uses this Rust side; the backfill and verify use the SQL side
//! (`zdm_name_*` functions in `migrations/…_name_rule_and_coordination/up.sql`). A
//! differential property test runs both on thousands of generated names and requires
//! identical results.
//!
//! - `normalize_whitespace(s)`: every run of Unicode `White_Space` characters (space, tab,
//!   NBSP, U+2000..U+200A, ideographic space…) becomes one ASCII space; both ends are trimmed.
//! - `split_full_name(s)`: the normalised name up to its first space is the first name, the
//!   rest is the last name; a single word is all first name, with an empty last name.
//! - `join_name(first, last)`: the non-empty parts, separated by one space.
//!
//! `join_name(split_full_name(s)) == normalize_whitespace(s)` for every `s`. The other way
//! round does not hold, and need not: a v2 client may write `"Mary Ann"` + `"Smith"`, whose
//! join splits as `"Mary"` + `"Ann Smith"`. Consistency (I2) is therefore defined on the
//! joined form: `normalize_whitespace(full_name) == join_name(first_name, last_name)`.
//!
//! [I1]: crate::migration#invariants

pub fn normalize_whitespace(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for word in input.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `(first_name, last_name)` of a full name.
pub fn split_full_name(full_name: &str) -> (String, String) {
    let normalized = normalize_whitespace(full_name);
    match normalized.split_once(' ') {
        Some((first, last)) => (first.to_owned(), last.to_owned()),
        None => (normalized, String::new()),
    }
}

/// The full name of `first_name` + `last_name`.
pub fn join_name(first_name: &str, last_name: &str) -> String {
    match (first_name.is_empty(), last_name.is_empty()) {
        (false, false) => format!("{first_name} {last_name}"),
        (false, true) => first_name.to_owned(),
        (true, _) => last_name.to_owned(),
    }
}

/// Invariant I2 for one row: the new columns hold the same name as `full_name`.
pub fn is_consistent(full_name: &str, first_name: &str, last_name: &str) -> bool {
    normalize_whitespace(full_name) == join_name(first_name, last_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_and_trims_all_unicode_whitespace() {
        assert_eq!(normalize_whitespace("  Ada \t Lovelace "), "Ada Lovelace");
        assert_eq!(normalize_whitespace("Ada\u{00A0}\u{2003}King"), "Ada King");
        assert_eq!(normalize_whitespace("\u{3000}"), "");
        assert_eq!(normalize_whitespace("Zoë"), "Zoë");
    }

    #[test]
    fn splits_at_the_first_space() {
        assert_eq!(
            split_full_name("Mary  Ann Smith"),
            ("Mary".into(), "Ann Smith".into())
        );
        assert_eq!(split_full_name(" Cher "), ("Cher".into(), String::new()));
        assert_eq!(split_full_name(""), (String::new(), String::new()));
    }

    #[test]
    fn joins_the_non_empty_parts() {
        assert_eq!(join_name("Mary Ann", "Smith"), "Mary Ann Smith");
        assert_eq!(join_name("Cher", ""), "Cher");
        assert_eq!(join_name("", ""), "");
    }

    #[test]
    fn consistency_is_judged_on_the_joined_form() {
        assert!(is_consistent("Mary Ann  Smith", "Mary Ann", "Smith"));
        assert!(is_consistent("Mary Ann Smith", "Mary", "Ann Smith"));
        assert!(!is_consistent("Mary Smith", "Mary", "Jones"));
    }
}
