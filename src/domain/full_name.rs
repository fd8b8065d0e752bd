//! A person's whole name as v1 clients send it.

use super::FieldError;
use super::name_rule::normalize_whitespace;

/// Longest accepted name, in characters (Unicode scalar values) after normalisation.
pub const FULL_NAME_MAX_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

/// Bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069): they
/// make the text after them display in another order than it is stored, so a name could
/// show as something else entirely (and reorder the page around it). Joiners such as
/// U+200D, which emoji and some scripts need, are not among them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show nothing by themselves: Unicode's default-ignorable code points
/// (zero-width spaces and joiners, the soft hyphen, word joiners, byte order marks, bidi
/// marks, variation selectors, Hangul fillers, tags...) and the blank braille pattern. A
/// name may hold them (an emoji needs its joiners, a long word its soft hyphens) but not be
/// made of them alone: it would show as blank.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Whether a normalised name shows nothing: empty, or spaces and invisible characters only.
pub(crate) fn looks_blank(name: &str) -> bool {
    name.chars().all(|c| c == ' ' || is_invisible(c))
}

/// Why a name part cannot be stored as sent, if it cannot: control characters, or
/// bidirectional controls.
pub(crate) fn refused_characters(
    raw: &str,
    field: &'static str,
    label: &str,
) -> Option<FieldError> {
    if raw.chars().any(char::is_control) {
        return Some(FieldError::new(
            field,
            format!(
                "{label} must not contain control characters (such as tabs, line breaks or NUL)."
            ),
        ));
    }
    if raw.chars().any(is_bidi_control) {
        return Some(FieldError::new(
            field,
            format!(
                "{label} must not contain bidirectional override or isolate characters (U+202A–U+202E, U+2066–U+2069)."
            ),
        ));
    }
    None
}

impl FullName {
    /// Whitespace is normalised (see `name_rule`); control characters such as NUL, tabs or
    /// newlines, bidirectional controls, blank names (invisible characters only count as
    /// blank) and names over `FULL_NAME_MAX_CHARS` characters are refused.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "full_name";
        if let Some(refused) = refused_characters(raw, FIELD, "Full name") {
            return Err(refused);
        }
        let name = normalize_whitespace(raw);
        if looks_blank(&name) {
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
            // Emoji joined by U+200D stay whole.
            "Ada 👩\u{200D}💻",
            // A visible name keeps its invisible characters.
            "Ada\u{00AD}line",
            "\u{05D3}\u{05D5}\u{05D3} Cohen",
        ] {
            assert_eq!(FullName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bidirectional_overrides_and_isolates() {
        for bad in [
            "Ada \u{202E}ecalevol",
            "\u{202A}Ada",
            "Ada\u{202B}",
            "Ada\u{202C}",
            "Ada\u{202D}",
            "\u{2066}Ada\u{2069}",
            "\u{2067}Ada",
            "\u{2068}Ada",
        ] {
            let err = FullName::parse(bad).unwrap_err();
            assert_eq!(err.field, "full_name", "{bad:?}");
            assert!(err.message.contains("bidirectional"), "{bad:?}");
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
            "\u{200B}",
            "\u{FEFF}\u{2060}",
            "\u{00AD} \u{3164}",
            "\u{115F}\u{180E}\u{061C}\u{200E}",
            "\u{2800}",
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
