//! The demo's HTML report, rendered in a real headless Chromium: with phases short enough
//! for their labels to collide, no two phase labels overlap, measured on the rendered text.

use fantoccini::Locator;
use zdm::tools::demo::chart::LABEL_CHAR_PX;
use zdm::tools::demo::report::{self, DemoSummary, Segment};

use crate::browser::{browser, screenshot};

/// Segments of a zdm run lasting `lengths_ms`, in the run's order.
fn segments(lengths_ms: &[u32]) -> Vec<Segment> {
    let names = [
        "baseline",
        "expanding",
        "expanded",
        "dual_write",
        "backfill",
        "dual_write",
        "backfilled",
        "read_new",
        "new_only",
        "contracting",
        "contracted",
    ];
    let mut start_ms = 0;
    names
        .iter()
        .zip(lengths_ms)
        .map(|(name, length)| {
            let segment = Segment {
                name: (*name).to_owned(),
                start_ms,
                end_ms: start_ms + length,
            };
            start_ms += length;
            segment
        })
        .collect()
}

#[derive(Debug, serde::Deserialize)]
struct Rendered {
    text: String,
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

#[actix_web::test]
async fn phase_labels_of_short_phases_do_not_overlap_in_a_browser() {
    let Some(b) = browser("phase_labels_of_short_phases_do_not_overlap_in_a_browser").await else {
        return;
    };
    let c = &b.client;
    let dir = std::env::temp_dir().join(format!("zdm-report-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runs: [(&str, Vec<u32>); 3] = [
        // The quick demo's shape: short expand, contract and second dual_write.
        (
            "quick",
            vec![
                3000, 2500, 3200, 3900, 4200, 1300, 3300, 3300, 3000, 2500, 3000,
            ],
        ),
        // A long baseline, then everything within seconds.
        ("squeezed", {
            let mut v = vec![600_000];
            v.extend([1500; 10]);
            v
        }),
        // Long phases around very short ones.
        (
            "alternating",
            vec![
                60_000, 200, 60_000, 200, 60_000, 200, 200, 60_000, 200, 200, 200,
            ],
        ),
    ];
    for (name, lengths) in runs {
        let summary = DemoSummary {
            mode: "zdm".to_owned(),
            passed: true,
            ..DemoSummary::default()
        };
        let html = report::html(&summary, &segments(&lengths), &[]).unwrap();
        let file = dir.join(format!("{name}.html"));
        std::fs::write(&file, html).unwrap();
        c.goto(&format!("file://{}", file.display())).await.unwrap();
        c.find(Locator::Css("svg")).await.unwrap();
        screenshot(c, &format!("demo-report-labels-{name}")).await;
        let boxes = c
            .execute(
                "return Array.from(document.querySelectorAll('text.phase-label')).map(t => {
                   const b = t.getBBox();
                   return { text: t.textContent, x: b.x, y: b.y, width: b.width, height: b.height };
                 });",
                vec![],
            )
            .await
            .unwrap();
        let boxes: Vec<Rendered> = serde_json::from_value(boxes).unwrap();
        assert_eq!(boxes.len(), 11, "{name}: every phase has its label");
        for (i, a) in boxes.iter().enumerate() {
            // The layout reserves LABEL_CHAR_PX per character; the rendered text fits in it.
            assert!(
                a.width <= a.text.chars().count() as f64 * LABEL_CHAR_PX,
                "{name}: {a:?} is wider than the layout assumed"
            );
            for b in &boxes[i + 1..] {
                let apart = a.x + a.width <= b.x
                    || b.x + b.width <= a.x
                    || a.y + a.height <= b.y
                    || b.y + b.height <= a.y;
                assert!(apart, "{name}: {a:?} overlaps {b:?}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
