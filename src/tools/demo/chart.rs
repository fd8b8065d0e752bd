//! The report's latency-over-time chart, as geometry the template only places: a band per
//! phase with its label (staggered so that short phases' labels never overlap), the p50, p99
//! and max curves, the failed requests and the faults.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::{DemoSummary, Segment, latency_ms};
use super::traffic::{Outcome, Sample};

/// The phase labels above the chart: their font size, a width per character that the
/// labels' glyphs stay under on average (short lowercase words; a browser test holds the
/// rendered boxes to it), the space kept between two labels on a row, and the row height.
pub const LABEL_FONT_PX: f64 = 11.0;
pub const LABEL_CHAR_PX: f64 = 7.0;
pub const LABEL_GAP_PX: f64 = 6.0;
pub const LABEL_ROW_PX: f64 = 15.0;

/// Where a label goes: its left edge, its width (as `LABEL_CHAR_PX` estimates it) and its row
/// (0 just above the chart, then upwards).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelBox {
    pub x: f64,
    pub width: f64,
    pub row: usize,
}

/// Places each label (`(band start, text)`, in time order) a little right of its band's
/// start, kept within `[left, right]`, on the lowest row where it keeps `LABEL_GAP_PX` from
/// every label placed before it: short phases stagger instead of overlapping, whatever the
/// run's length.
pub fn place_labels<'a>(
    labels: impl IntoIterator<Item = (f64, &'a str)>,
    left: f64,
    right: f64,
) -> Vec<LabelBox> {
    // The right end of the last label on each row; labels go left to right, so a label
    // starting past a row's end (plus the gap) overlaps nothing on it.
    let mut row_ends: Vec<f64> = Vec::new();
    labels
        .into_iter()
        .map(|(start, text)| {
            let width = text.chars().count() as f64 * LABEL_CHAR_PX;
            let x = (start + 3.0).min(right - width).max(left);
            let row = match row_ends.iter().position(|end| end + LABEL_GAP_PX <= x) {
                Some(row) => row,
                None => {
                    row_ends.push(f64::NEG_INFINITY);
                    row_ends.len() - 1
                }
            };
            row_ends[row] = x + width;
            LabelBox { x, width, row }
        })
        .collect()
}

/// Chart geometry, computed here so the template only places it.
pub(super) struct Band {
    pub x: f64,
    pub width: f64,
    pub name: String,
    pub shade: bool,
    pub label_x: f64,
    pub label_y: f64,
}

/// A fault's dashed line.
pub(super) struct Line {
    pub x: f64,
    pub label: String,
}

/// The chart, laid out: what the report's template draws.
pub(super) struct Chart {
    pub label_font_px: f64,
    pub width: f64,
    pub height: f64,
    pub plot_top: f64,
    pub plot_bottom: f64,
    pub bands: Vec<Band>,
    pub markers: Vec<Line>,
    pub p50: String,
    pub p99: String,
    pub max: String,
    /// The instances' own p99 of each segment, as a step: SVG polyline points.
    pub server_p99: String,
    pub failures: Vec<(f64, f64)>,
    /// 503s (`Outcome::Unavailable`) per time bucket, apart from the failures.
    pub unavailable: Vec<(f64, f64)>,
    /// A chaos run's faults, from when each struck until its effect ended: x and width.
    pub fault_spans: Vec<(f64, f64)>,
    pub y_ticks: Vec<(f64, String)>,
    pub x_ticks: Vec<(f64, String)>,
}

/// Lays out the chart of a run: its `segments` as bands, its `samples` as curves, the
/// summary's faults as lines.
pub(super) fn chart(summary: &DemoSummary, segments: &[Segment], samples: &[Sample]) -> Chart {
    let width = 1100.0;
    let time = TimeScale::of(segments);
    let labels = place_labels(
        segments
            .iter()
            .map(|s| (time.x(s.start_ms), s.name.as_str())),
        time.left,
        width - 4.0,
    );
    // Every row of labels above the first makes the chart that much taller.
    let extra_rows = labels.iter().map(|l| l.row).max().unwrap_or(0) as f64;
    let top = 30.0 + LABEL_ROW_PX * extra_rows;
    let latency = LatencyScale::new(top, top + 310.0, samples);
    let Curves {
        p50,
        p99,
        max,
        failures,
        unavailable,
    } = curves(&time, &latency, samples);
    Chart {
        label_font_px: LABEL_FONT_PX,
        width,
        height: top + 350.0,
        plot_top: top,
        plot_bottom: latency.bottom,
        bands: bands(&time, segments, &labels, top),
        markers: summary
            .faults
            .iter()
            .map(|m| Line {
                x: time.x(m.at_ms),
                label: m.label.clone(),
            })
            .collect(),
        p50,
        p99,
        max,
        server_p99: server_p99_steps(summary, segments, &time, &latency),
        failures,
        unavailable,
        fault_spans: summary
            .fault_windows
            .iter()
            .map(|(start, end)| {
                let x = time.x(*start);
                (x, (time.x(*end) - x).max(2.0))
            })
            .collect(),
        y_ticks: latency.ticks(),
        x_ticks: time.ticks(),
    }
}

/// The instances' p99 of each segment (`SegmentStats::server_p99_ms`) as a flat line over
/// the segment, in SVG polyline points; a segment without one is skipped.
fn server_p99_steps(
    summary: &DemoSummary,
    segments: &[Segment],
    time: &TimeScale,
    latency: &LatencyScale,
) -> String {
    summary
        .segments
        .iter()
        .zip(segments)
        .filter_map(|(stats, seg)| {
            let y = latency.y(stats.server_p99_ms?);
            Some(format!(
                "{:.1},{y:.1} {:.1},{y:.1}",
                time.x(seg.start_ms),
                time.x(seg.end_ms)
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The chart's time axis: the run, from its start to the end of its last segment, between
/// `left` and `right`.
struct TimeScale {
    left: f64,
    right: f64,
    end_ms: u32,
}

impl TimeScale {
    fn of(segments: &[Segment]) -> Self {
        Self {
            left: 60.0,
            right: 1080.0,
            end_ms: segments.last().map_or(1, |s| s.end_ms.max(1)),
        }
    }

    fn x(&self, ms: u32) -> f64 {
        self.left + (self.right - self.left) * f64::from(ms) / f64::from(self.end_ms)
    }

    /// About ten ticks, on whole seconds.
    fn ticks(&self) -> Vec<(f64, String)> {
        let step_s = ((f64::from(self.end_ms) / 1000.0 / 10.0).ceil() as u32).max(1);
        (0..=self.end_ms / 1000)
            .step_by(step_s as usize)
            .map(|s| (self.x(s * 1000), format!("{s}s")))
            .collect()
    }
}

/// The chart's latency axis: logarithmic, from 0.1 ms at `bottom` to the slowest request (at
/// least 10 ms) at `top`, so that sub-millisecond reads and multi-second stalls both show.
struct LatencyScale {
    top: f64,
    bottom: f64,
    lo: f64,
    hi: f64,
}

impl LatencyScale {
    fn new(top: f64, bottom: f64, samples: &[Sample]) -> Self {
        let max_ms = samples.iter().map(|s| s.latency_us).max().unwrap_or(1000) as f64 / 1000.0;
        Self {
            top,
            bottom,
            lo: 0.1_f64.log10(),
            hi: max_ms.max(10.0).log10(),
        }
    }

    fn y(&self, ms: f64) -> f64 {
        self.bottom
            - (self.bottom - self.top) * ((ms.max(0.1).log10() - self.lo) / (self.hi - self.lo))
    }

    /// A tick per power of ten within the scale.
    fn ticks(&self) -> Vec<(f64, String)> {
        [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
            .into_iter()
            .filter(|ms: &f64| ms.log10() <= self.hi + 1e-9)
            .map(|ms| {
                (
                    self.y(ms),
                    if ms < 1.0 {
                        format!("{ms}")
                    } else {
                        format!("{ms:.0}")
                    },
                )
            })
            .collect()
    }
}

/// Requests are grouped by the 250 ms in which they started.
const BUCKET_MS: u32 = 250;

/// The chart's curves: p50, p99 and max of each bucket's requests as SVG polyline points,
/// and the failed requests of each bucket.
struct Curves {
    p50: String,
    p99: String,
    max: String,
    failures: Vec<(f64, f64)>,
    unavailable: Vec<(f64, f64)>,
}

fn curves(time: &TimeScale, latency: &LatencyScale, samples: &[Sample]) -> Curves {
    let mut buckets: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut failed: BTreeMap<u32, usize> = BTreeMap::new();
    let mut unavailable: BTreeMap<u32, usize> = BTreeMap::new();
    for s in samples {
        buckets
            .entry(s.at_ms / BUCKET_MS)
            .or_default()
            .push(s.latency_us);
        match s.outcome {
            Outcome::Ok => {}
            Outcome::Unavailable | Outcome::LostWithInstance => {
                *unavailable.entry(s.at_ms / BUCKET_MS).or_default() += 1
            }
            _ => *failed.entry(s.at_ms / BUCKET_MS).or_default() += 1,
        }
    }
    let middle = |bucket: u32| time.x(bucket * BUCKET_MS + BUCKET_MS / 2);
    let mut lines = [String::new(), String::new(), String::new()];
    for (b, lat) in &mut buckets {
        lat.sort_unstable();
        let bx = middle(*b);
        for (line, q) in lines.iter_mut().zip([0.5, 0.99, 1.0]) {
            let _ = write!(line, "{bx:.1},{:.1} ", latency.y(latency_ms(lat, q)));
        }
    }
    let [p50, p99, max] = lines;
    Curves {
        p50,
        p99,
        max,
        failures: failed
            .iter()
            .map(|(b, n)| (middle(*b), *n as f64))
            .collect(),
        unavailable: unavailable
            .iter()
            .map(|(b, n)| (middle(*b), *n as f64))
            .collect(),
    }
}

/// A shaded band per segment, alternately, with its label where `place_labels` put it above
/// the plot's `top`.
fn bands(time: &TimeScale, segments: &[Segment], labels: &[LabelBox], top: f64) -> Vec<Band> {
    segments
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (s, label))| Band {
            x: time.x(s.start_ms),
            width: (time.x(s.end_ms) - time.x(s.start_ms)).max(0.5),
            name: s.name.clone(),
            shade: i % 2 == 0,
            label_x: label.x,
            label_y: top - 8.0 - LABEL_ROW_PX * label.row as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The segments of a zdm run, in order.
    const NAMES: [&str; 11] = [
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

    /// Places the labels of segments lasting `lengths_ms` on the report's chart.
    fn layout(lengths_ms: &[u32]) -> Vec<LabelBox> {
        let total: f64 = lengths_ms.iter().map(|l| f64::from(*l)).sum();
        let mut start = 0.0;
        let starts: Vec<f64> = lengths_ms
            .iter()
            .map(|l| {
                let x = 60.0 + 1020.0 * start / total;
                start += f64::from(*l);
                x
            })
            .collect();
        place_labels(starts.into_iter().zip(NAMES), 60.0, 1096.0)
    }

    fn assert_apart(boxes: &[LabelBox]) {
        for (i, a) in boxes.iter().enumerate() {
            assert!(
                a.x >= 60.0 && a.x + a.width <= 1096.0,
                "{a:?} leaves the chart"
            );
            for b in &boxes[i + 1..] {
                let apart = a.row != b.row
                    || a.x + a.width + LABEL_GAP_PX <= b.x
                    || b.x + b.width + LABEL_GAP_PX <= a.x;
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn labels_of_short_phases_go_up_a_row_and_long_ones_stay_on_the_first() {
        let even = layout(&[3000; 11]);
        assert!(even.iter().all(|l| l.row == 0), "{even:?}");
        // A 30-minute baseline, then every phase over in a few seconds.
        let mut lengths = vec![1_800_000];
        lengths.extend([2000; 10]);
        let squeezed = layout(&lengths);
        assert_apart(&squeezed);
        assert!(squeezed.iter().any(|l| l.row >= 2), "{squeezed:?}");
        // The end of the run: labels pushed left of the chart's right edge, still apart.
        assert!(squeezed.iter().all(|l| l.x + l.width <= 1096.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn no_two_labels_overlap_whatever_the_phase_lengths(
            lengths in prop::collection::vec(1u32..600_000, 11)
        ) {
            assert_apart(&layout(&lengths));
        }
    }
}
