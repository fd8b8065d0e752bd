//! `zdm seed`: bulk-loads realistic users with `COPY ... FROM STDIN (FORMAT binary)`.
//!
//! Names mix cultures and shapes on purpose: accents and non-Latin scripts, middle names,
//! multi-word family names ("de la Cruz"), single names, and about 1 % of legacy rows with the
//! untidy spacing old data has (doubled, leading, trailing or non-breaking spaces). Emails are
//! unique: every run has its own tag.

use anyhow::Context;
use diesel::prelude::*;

use crate::domain::Phase;
use crate::domain::name_rule::split_full_name;
use crate::schema::{SchemaVersion, expanded, v1, v2};

// `COPY` needs every column of the target list, so there is one row type per schema version.
#[derive(Insertable)]
#[diesel(table_name = v1::users, treat_none_as_default_value = false)]
struct V1Row {
    full_name: String,
    email: String,
}

#[derive(Insertable)]
#[diesel(table_name = expanded::users, treat_none_as_default_value = false)]
struct ExpandedRow {
    full_name: String,
    first_name: Option<String>,
    last_name: Option<String>,
    email: String,
}

#[derive(Insertable)]
#[diesel(table_name = v2::users, treat_none_as_default_value = false)]
struct V2Row {
    first_name: String,
    last_name: String,
    email: String,
}

impl V1Row {
    fn new((full_name, email): (String, String)) -> Self {
        Self { full_name, email }
    }
}

impl ExpandedRow {
    /// Dual-written, as every phase with both columns writes a row.
    fn new((full_name, email): (String, String)) -> Self {
        let (first, last) = split_full_name(&full_name);
        Self {
            full_name,
            first_name: Some(first),
            last_name: Some(last),
            email,
        }
    }
}

impl V2Row {
    fn new((full_name, email): (String, String)) -> Self {
        let (first_name, last_name) = split_full_name(&full_name);
        Self {
            first_name,
            last_name,
            email,
        }
    }
}

/// Rows per COPY statement; each chunk commits on its own, so progress is visible and an
/// interrupted seed keeps what it loaded.
pub const CHUNK_ROWS: usize = 25_000;

const GIVEN: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Edsger",
    "Frances",
    "Donald",
    "Mary Ann",
    "Jean-Luc",
    "José",
    "María José",
    "Zoë",
    "Søren",
    "Łukasz",
    "Björn",
    "Chloé",
    "Aoife",
    "Siobhán",
    "Nguyễn",
    "Mehmet",
    "Ayşe",
    "Olusegun",
    "Chiamaka",
    "Kwame",
    "Amara",
    "Priya",
    "Arjun",
    "Anaïs",
    "Hiroshi",
    "Yuki",
    "Wei",
    "Mei",
    "Ji-woo",
    "Min-jun",
    "Fatima",
    "Omar",
    "Layla",
    "Юрий",
    "Анна",
    "Δημήτρης",
    "Ελένη",
    "محمد",
    "فاطمة",
    "דוד",
    "שרה",
    "李",
    "王芳",
    "Oluwaseun",
    "Tomás",
    "Inés",
    "Mateus",
    "Giulia",
    "Luca",
    "Sven",
    "Ingrid",
    "Pierre",
    "Camille",
    "Hamish",
    "Eilidh",
    "Kai",
    "Leilani",
    "Tariq",
    "Noor",
    "Rafael",
];

const FAMILY: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Dijkstra",
    "Allen",
    "Knuth",
    "Smith",
    "García",
    "de la Cruz",
    "van der Berg",
    "O'Brien",
    "Müller",
    "Kierkegaard",
    "Łukasiewicz",
    "Nguyễn Văn",
    "Yılmaz",
    "Adeyemi",
    "Okafor",
    "Mensah",
    "Patel",
    "Sharma",
    "Tanaka",
    "Suzuki",
    "Zhang",
    "Kim",
    "Park",
    "Al-Farsi",
    "Haddad",
    "Иванов",
    "Петрова",
    "Παπαδόπουλος",
    "عبد الله",
    "כהן",
    "王",
    "Silva",
    "Santos",
    "Rossi",
    "Bianchi",
    "Johansson",
    "Dubois",
    "Lefèvre",
    "MacDonald",
    "Ó Súilleabháin",
    "Kahananui",
    "bin Abdullah",
    "da Silva Santos",
    "Smith-Jones",
    "St. John",
];

/// Single names, as some people have only one.
const MONONYMS: &[&str] = &["Sukarno", "Madonna", "Pelé", "Teller", "Björk", "Zendaya"];

/// One person's name; `rng` decides its shape.
pub fn random_full_name(rng: &mut fastrand::Rng) -> String {
    let shape = rng.u32(0..100);
    let name = if shape < 2 {
        MONONYMS[rng.usize(..MONONYMS.len())].to_owned()
    } else {
        let given = GIVEN[rng.usize(..GIVEN.len())];
        let family = FAMILY[rng.usize(..FAMILY.len())];
        format!("{given} {family}")
    };
    if shape == 99 {
        // Legacy data: spacing nobody cleaned up.
        return match rng.u32(0..4) {
            0 => format!("  {name}"),
            1 => format!("{name} "),
            2 => name.replacen(' ', "  ", 1),
            _ => name.replacen(' ', "\u{00A0}", 1),
        };
    }
    name
}

/// ASCII letters and digits of a name, lower-cased, for the local part of an email.
fn email_slug(name: &str) -> String {
    let slug: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if slug.is_empty() {
        "user".to_owned()
    } else {
        slug
    }
}

/// Inserts `count` users the way `phase` writes them (dual-written from dual_write on),
/// calling `progress` with the rows loaded so far after each chunk.
pub fn seed_users(
    conn: &mut PgConnection,
    phase: Phase,
    count: u64,
    rng_seed: u64,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let mut rng = fastrand::Rng::with_seed(rng_seed);
    let run_tag = format!("{:x}", rng_seed & 0xffff_ffff);
    let mut done = 0u64;
    while done < count {
        let rows = (count - done).min(CHUNK_ROWS as u64);
        let chunk = random_users(&mut rng, &run_tag, done..done + rows);
        copy_users(conn, SchemaVersion::for_phase(phase), chunk).with_context(|| {
            format!(
                "copying users {done}..{} into the table as {phase} has it",
                done + rows
            )
        })?;
        done += rows;
        progress(done);
    }
    Ok(done)
}

/// `(full_name, email)` of the users numbered `numbers`; `run_tag` keeps the emails of one
/// run apart from another's.
fn random_users(
    rng: &mut fastrand::Rng,
    run_tag: &str,
    numbers: std::ops::Range<u64>,
) -> Vec<(String, String)> {
    numbers
        .map(|i| {
            let full_name = random_full_name(rng);
            let email = format!("{}.{run_tag}.{i}@example.com", email_slug(&full_name));
            (full_name, email)
        })
        .collect()
}

/// One `COPY` of `users` into the table as `version` has it, in one statement.
fn copy_users(
    conn: &mut PgConnection,
    version: SchemaVersion,
    users: Vec<(String, String)>,
) -> QueryResult<usize> {
    let users = users.into_iter();
    match version {
        SchemaVersion::V1 => diesel::copy_from(v1::users::table)
            .from_insertable(users.map(V1Row::new).collect::<Vec<_>>())
            .execute(conn),
        SchemaVersion::Expanded => diesel::copy_from(expanded::users::table)
            .from_insertable(users.map(ExpandedRow::new).collect::<Vec<_>>())
            .execute(conn),
        SchemaVersion::V2 => diesel::copy_from(v2::users::table)
            .from_insertable(users.map(V2Row::new).collect::<Vec<_>>())
            .execute(conn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_varied_and_mostly_tidy() {
        let mut rng = fastrand::Rng::with_seed(7);
        let names: Vec<String> = (0..5000).map(|_| random_full_name(&mut rng)).collect();
        let untidy = names
            .iter()
            .filter(|n| crate::domain::name_rule::normalize_whitespace(n) != **n)
            .count();
        assert!(untidy > 0 && untidy < 150, "untidy legacy rows: {untidy}");
        assert!(
            names.iter().any(|n| !n.contains(' ')),
            "single names appear"
        );
        assert!(
            names.iter().any(|n| n.split(' ').count() >= 4),
            "long names appear"
        );
        assert!(names.iter().all(|n| !n.trim().is_empty()));
    }

    #[test]
    fn email_slugs_are_ascii() {
        assert_eq!(email_slug("Zoë O'Brien"), "zoobrien");
        assert_eq!(email_slug("李 王"), "user");
    }
}
