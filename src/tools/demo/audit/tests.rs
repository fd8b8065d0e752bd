//! The audit's unit tests: tables and clients' ledgers built by hand, judged by `judge`.

use super::super::oracle::SentName;
use super::*;

fn row(id: i64, full: Option<&str>, parts: Option<(&str, &str)>, email: &str) -> Row {
    Row {
        id,
        email: email.to_owned(),
        full_name: full.map(str::to_owned),
        first_name: parts.map(|p| p.0.to_owned()),
        last_name: parts.map(|p| p.1.to_owned()),
    }
}

fn written(name: SentName, email: Option<&str>) -> RowState {
    RowState::Written(Sent {
        name,
        email: email.map(str::to_owned),
    })
}

fn acknowledged(state: RowState, segment: usize) -> Acknowledged {
    Acknowledged {
        states: vec![state],
        segment,
    }
}

const NAMES: [&str; 4] = ["baseline", "expanded", "dual_write", "read_new"];

/// A run that went through the backfill.
fn record<'a>(ledgers: &'a [Ledger], seeded: &'a Snapshot) -> RunRecord<'a> {
    static NAMES_OWNED: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| NAMES.map(str::to_owned).to_vec());
    RunRecord {
        ledgers,
        seeded,
        segment_names: &NAMES_OWNED,
        backfilled: true,
        async_promotion: None,
    }
}

/// Five seeded rows, one with legacy spacing, as the snapshot saw them in baseline.
fn seeded_rows() -> Vec<Row> {
    vec![
        row(1, Some("Ada Lovelace"), None, "ada@example.com"),
        row(2, Some("Grace  Hopper "), None, "grace@example.com"),
        row(3, Some("Alan Turing"), None, "alan@example.com"),
        row(4, Some("Cher"), None, "cher@example.com"),
        row(5, Some("Edsger Dijkstra"), None, "edsger@example.com"),
    ]
}

/// The same rows backfilled in dual_write, as the end of a clean run leaves them: row 1
/// rewritten by v2 ("Ada Mary" + "King", new email), row 3 deleted.
fn clean_end() -> Vec<Row> {
    vec![
        row(
            1,
            Some("Ada Mary King"),
            Some(("Ada Mary", "King")),
            "ada.king@example.com",
        ),
        row(
            2,
            Some("Grace  Hopper "),
            Some(("Grace", "Hopper")),
            "grace@example.com",
        ),
        row(4, Some("Cher"), Some(("Cher", "")), "cher@example.com"),
        row(
            5,
            Some("Edsger Dijkstra"),
            Some(("Edsger", "Dijkstra")),
            "edsger@example.com",
        ),
    ]
}

fn clean_ledger() -> Ledger {
    let mut ledger = Ledger::default();
    ledger.rows.insert(
        1,
        acknowledged(
            written(
                SentName::Parts("Ada\u{00A0}Mary".into(), "King ".into()),
                Some("ada.king@example.com"),
            ),
            2,
        ),
    );
    ledger.rows.insert(3, acknowledged(RowState::Deleted, 1));
    ledger
}

#[test]
fn a_clean_run_passes() {
    let snapshot = Snapshot::of(Phase::Baseline, &seeded_rows());
    let result = judge(
        Phase::DualWrite,
        &clean_end(),
        &record(&[clean_ledger()], &snapshot),
    );
    assert!(!result.found_anything(), "{result:#?}");
    assert_eq!(result.rows_checked, 2);
    assert_eq!(result.untouched_rows, 3);
    assert_eq!(
        result.untouched_checksum_before,
        result.untouched_checksum_after
    );
}

#[test]
fn an_asynchronous_standby_may_lose_what_was_acknowledged_up_to_its_promotion_only() {
    let snapshot = Snapshot::of(Phase::Baseline, &seeded_rows());
    let lost_in = |segment| {
        let mut ledger = clean_ledger();
        ledger.rows.insert(
            5,
            acknowledged(
                written(SentName::Full("Edsger W. Dijkstra".into()), None),
                segment,
            ),
        );
        ledger
    };
    let judged = |segment, promoted| {
        let ledgers = [lost_in(segment)];
        let record = RunRecord {
            async_promotion: promoted,
            ..record(&ledgers, &snapshot)
        };
        let result = judge(Phase::DualWrite, &clean_end(), &record);
        (result.lost_writes, result.lost_to_async_replication)
    };
    // Promoted in segment 2: a write acknowledged in 1 may be gone, one in 3 may not.
    assert_eq!(judged(1, Some(2)), (0, 1));
    assert_eq!(judged(2, Some(2)), (0, 1));
    assert_eq!(judged(3, Some(2)), (1, 0));
    // With a synchronous standby (or none), every acknowledged write must be there.
    assert_eq!(judged(1, None), (1, 0));
}

#[test]
fn finds_a_lost_write_a_stale_read_and_a_divergent_row() {
    let snapshot = Snapshot::of(Phase::Baseline, &seeded_rows());
    let mut ledger = clean_ledger();
    // Acknowledged in expanded, but the row still holds the seeded name.
    ledger.rows.insert(
        5,
        acknowledged(
            written(SentName::Full("Edsger W. Dijkstra".into()), None),
            1,
        ),
    );
    ledger.stale_reads.push(StaleRead {
        id: 1,
        segment: 2,
        expected: "\"Ada Mary King\"".into(),
        seen: "\"Ada Lovelace\"".into(),
    });
    let mut rows = clean_end();
    // Cher's parts no longer join to her full_name: divergent. v1 still reads "Cher", so
    // her untouched row keeps its seeded digest.
    rows[2].first_name = Some("Cherilyn".into());
    let result = judge(Phase::DualWrite, &rows, &record(&[ledger], &snapshot));
    assert_eq!(result.lost_writes, 1, "{result:#?}");
    assert_eq!(result.lost_writes_by_phase["expanded"], 1);
    assert_eq!(result.stale_reads, 1);
    assert_eq!(result.divergent, 1);
    assert_eq!(result.divergent_ids, [4]);
    assert_eq!(
        result.untouched_altered, 0,
        "v1 still reads what was seeded"
    );
    assert!(
        result
            .examples
            .iter()
            .any(|e| e.contains("id 5 (written in expanded)"))
    );
}

#[test]
fn the_checksum_catches_an_untouched_row_changed_or_gone() {
    let snapshot = Snapshot::of(Phase::Baseline, &seeded_rows());
    for (what, change) in [
        (
            "name",
            (|rows: &mut Vec<Row>| {
                rows[1].full_name = Some("Grace Brewster Hopper".into());
                rows[1].first_name = Some("Grace".into());
                rows[1].last_name = Some("Brewster Hopper".into());
            }) as fn(&mut Vec<Row>),
        ),
        ("email", |rows| rows[3].email = "edsger@example.org".into()),
        ("row", |rows| {
            rows.remove(2);
        }),
    ] {
        let mut rows = clean_end();
        change(&mut rows);
        let result = judge(
            Phase::DualWrite,
            &rows,
            &record(&[clean_ledger()], &snapshot),
        );
        assert_eq!(result.untouched_altered, 1, "{what}: {result:#?}");
        assert_ne!(
            result.untouched_checksum_before, result.untouched_checksum_after,
            "{what}"
        );
        assert_eq!(result.divergent, 0, "{what}: a consistent change");
    }
}

#[test]
fn after_the_contract_untouched_rows_are_held_to_their_normalised_seeded_name() {
    let snapshot = Snapshot::of(Phase::Baseline, &seeded_rows());
    let contracted = |grace: (&str, &str)| {
        clean_end()
            .into_iter()
            .map(|mut r| {
                r.full_name = None;
                if r.id == 2 {
                    r.first_name = Some(grace.0.into());
                    r.last_name = Some(grace.1.into());
                }
                r
            })
            .collect::<Vec<_>>()
    };
    let judged = |rows: Vec<Row>| {
        judge(
            Phase::Contracted,
            &rows,
            &record(&[clean_ledger()], &snapshot),
        )
    };
    assert!(!judged(contracted(("Grace", "Hopper"))).found_anything());
    assert_eq!(judged(contracted(("Grace", "Hooper"))).untouched_altered, 1);
}

#[test]
fn a_write_whose_answer_was_lost_may_have_gone_either_way() {
    let snapshot = Snapshot::of(Phase::Baseline, &seeded_rows());
    let mut ledger = clean_ledger();
    let new = written(SentName::Full("Edsger W. Dijkstra".into()), None);
    ledger.rows.insert(
        5,
        Acknowledged {
            states: vec![RowState::Seeded, new],
            segment: 2,
        },
    );
    let result = judge(
        Phase::DualWrite,
        &clean_end(),
        &record(&[ledger.clone()], &snapshot),
    );
    assert!(!result.found_anything(), "{result:#?}");
    assert_eq!(result.uncertain, 1);
    let mut rows = clean_end();
    rows[3].full_name = Some("Edsger W. Dijkstra".into());
    rows[3].first_name = Some("Edsger".into());
    rows[3].last_name = Some("W. Dijkstra".into());
    let result = judge(
        Phase::DualWrite,
        &rows,
        &record(&[ledger.clone()], &snapshot),
    );
    assert!(!result.found_anything(), "{result:#?}");
    rows[3].full_name = Some("Edsger Wybe Dijkstra".into());
    rows[3].last_name = Some("Wybe Dijkstra".into());
    let result = judge(Phase::DualWrite, &rows, &record(&[ledger], &snapshot));
    assert_eq!(result.lost_writes, 1, "neither state: {result:#?}");
}
