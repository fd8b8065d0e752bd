//! The whitespace part of the name rule, shared by every writer.
//!
//! `normalize_whitespace` treats every Unicode `White_Space` character (space, tab, NBSP,
//! the U+2000 block, ideographic space...) as a separator: it trims both ends and turns each
//! run into one ASCII space. Names are stored normalised, so the same person typed twice with
//! different spacing is the same string.

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

#[cfg(test)]
mod tests {
    use super::normalize_whitespace;

    #[test]
    fn collapses_and_trims_all_unicode_whitespace() {
        assert_eq!(normalize_whitespace("  Ada \t Lovelace "), "Ada Lovelace");
        assert_eq!(normalize_whitespace("Ada\u{00A0}\u{2003}King"), "Ada King");
        assert_eq!(normalize_whitespace("\u{3000}"), "");
        assert_eq!(normalize_whitespace("Zoë"), "Zoë");
    }
}
