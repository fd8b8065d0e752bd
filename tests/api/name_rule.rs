//! The name rule, differentially: thousands of generated names through the Rust side
//! (dual-write) and the SQL side (backfill, verify) of a real database must agree exactly.

use diesel::prelude::*;
use diesel::sql_types::Text;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zdm::domain::name_rule::{is_consistent, join_name, normalize_whitespace, split_full_name};
use zdm::migration::name_sql::{zdm_name_first, zdm_name_join, zdm_name_last, zdm_name_norm};

use crate::helpers::TestDb;

/// Every Unicode White_Space character, the ones names meet in practice among them.
const WHITESPACE: &[char] = &[
    '\t', '\n', '\u{0B}', '\u{0C}', '\r', ' ', '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}',
    '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}',
    '\u{2009}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}',
];

/// Look-alikes that are *not* whitespace and must stay inside a word.
const NOT_WHITESPACE: &[char] = &[
    '\u{200B}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{180E}', '\u{00AD}',
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z'\\-]{1,12}",
        // accents, precomposed and combining
        "[a-zé]{1,6}\u{0301}[a-z]{0,4}",
        Just("Zoë".to_owned()),
        Just("Łukasiewicz".to_owned()),
        // right-to-left scripts and marks
        "[\u{0627}-\u{064A}]{1,8}",
        "[\u{05D0}-\u{05EA}]{1,8}",
        Just("\u{200F}עברית\u{200E}".to_owned()),
        // CJK, emoji with joiners and modifiers
        "[\u{4E00}-\u{4E80}]{1,4}",
        Just("👩‍💻".to_owned()),
        Just("🙂🏽".to_owned()),
        proptest::sample::select(NOT_WHITESPACE).prop_map(|c| format!("a{c}b")),
        // anything printable at all
        "\\PC{1,6}",
    ]
}

fn spaces() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(WHITESPACE), 0..4)
        .prop_map(|v| v.into_iter().collect())
}

/// Names of 0 to 40 words with any whitespace around and between them.
fn name() -> impl Strategy<Value = String> {
    (
        spaces(),
        proptest::collection::vec((word(), spaces()), 0..40),
    )
        .prop_map(|(lead, words)| {
            let mut s = lead;
            for (w, sep) in words {
                s.push_str(&w);
                s.push_str(if sep.is_empty() { " " } else { &sep });
            }
            s
        })
}

#[test]
fn rust_and_sql_apply_the_same_name_rule() {
    let db = TestDb::migrated();
    let conn = std::cell::RefCell::new(db.conn());
    let config = Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&(name(), name()), |(full, other)| {
            let (sql_norm, sql_first, sql_last, sql_join): (String, String, String, String) =
                diesel::select((
                    zdm_name_norm(full.as_str().into_sql::<Text>()),
                    zdm_name_first(full.as_str().into_sql::<Text>()),
                    zdm_name_last(full.as_str().into_sql::<Text>()),
                    zdm_name_join(
                        Some(normalize_whitespace(&full))
                            .into_sql::<diesel::sql_types::Nullable<Text>>(),
                        Some(normalize_whitespace(&other))
                            .into_sql::<diesel::sql_types::Nullable<Text>>(),
                    ),
                ))
                .get_result(&mut *conn.borrow_mut())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (first, last) = split_full_name(&full);
            prop_assert_eq!(
                &sql_norm,
                &normalize_whitespace(&full),
                "norm of {:?}",
                full
            );
            prop_assert_eq!(&sql_first, &first, "first of {:?}", full);
            prop_assert_eq!(&sql_last, &last, "last of {:?}", full);
            prop_assert_eq!(
                &sql_join,
                &join_name(&normalize_whitespace(&full), &normalize_whitespace(&other)),
                "join of {:?} and {:?}",
                full,
                other
            );
            // The rule's own promise: joining a split gives back the normalised name.
            prop_assert_eq!(join_name(&first, &last), normalize_whitespace(&full));
            Ok(())
        })
        .unwrap();
}

/// A stored name part, as the backfill and verify meet it: missing (NULL, a row not filled
/// yet), empty, or any text at all, normalised or not (a row written by other code).
fn stored_part() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(String::new())),
        6 => name().prop_map(Some),
    ]
}

#[test]
fn rust_and_sql_join_and_judge_any_stored_parts_alike() {
    let db = TestDb::migrated();
    let conn = std::cell::RefCell::new(db.conn());
    let config = Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(
            &(stored_part(), stored_part(), name()),
            |(first, last, full)| {
                type Part = diesel::sql_types::Nullable<Text>;
                let (sql_join, sql_consistent): (Option<String>, Option<bool>) = diesel::select((
                    zdm_name_join(
                        first.clone().into_sql::<Part>(),
                        last.clone().into_sql::<Part>(),
                    )
                    .nullable(),
                    // verify's I2 test on a row whose parts are both there
                    zdm_name_norm(full.as_str().into_sql::<Text>())
                        .nullable()
                        .eq(zdm_name_join(
                            first.clone().into_sql::<Part>(),
                            last.clone().into_sql::<Part>(),
                        )
                        .nullable()),
                ))
                .get_result(&mut *conn.borrow_mut())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                // NULL joins as the empty part.
                let (f, l) = (
                    first.as_deref().unwrap_or_default(),
                    last.as_deref().unwrap_or_default(),
                );
                prop_assert_eq!(
                    sql_join,
                    Some(join_name(f, l)),
                    "join of {:?} and {:?}",
                    first,
                    last
                );
                prop_assert_eq!(
                    sql_consistent,
                    Some(is_consistent(&full, f, l)),
                    "I2 of {:?} against {:?} and {:?}",
                    full,
                    first,
                    last
                );
                Ok(())
            },
        )
        .unwrap();
}

/// The SQL side is fast only if PostgreSQL inlines it: a function it cannot inline (a FROM
/// clause, say) runs a query of its own for every row the backfill updates.
#[test]
fn postgres_inlines_every_name_function_into_the_statement_that_calls_it() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    for call in [
        "zdm_name_norm(full_name)",
        "zdm_name_first(full_name)",
        "zdm_name_last(full_name)",
        "zdm_name_join(full_name, email)",
    ] {
        let plan: String = diesel::sql_query(format!("EXPLAIN VERBOSE SELECT {call} FROM users"))
            .load::<Explained>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|row| row.plan + "\n")
            .collect();
        let output = plan.split("Output: ").nth(1).expect("a verbose plan");
        assert!(
            !output.contains("zdm_name_"),
            "{call} is not inlined: {plan}"
        );
    }
}

#[derive(QueryableByName)]
struct Explained {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    plan: String,
}

#[test]
fn the_rule_on_the_cases_people_ask_about() {
    let cases = [
        ("", "", ""),
        ("   ", "", ""),
        ("Cher", "Cher", ""),
        ("  Mary\u{00A0}Ann \t Smith ", "Mary", "Ann Smith"),
        ("José\u{3000}García", "José", "García"),
        ("محمد علي", "محمد", "علي"),
        ("a\u{200B}b c", "a\u{200B}b", "c"),
    ];
    for (full, first, last) in cases {
        assert_eq!(
            split_full_name(full),
            (first.to_owned(), last.to_owned()),
            "{full:?}"
        );
    }
}
