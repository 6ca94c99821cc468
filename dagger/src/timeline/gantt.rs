//! The Gantt chart (SVG) of a timeline, drawn with plotters' SVG backend.

use super::{Timeline, TimelineError};
use dagger_core::{ProcId, WorkerId};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

/// Width of the whole picture, of its legend column, and height of a processor's row.
const WIDTH: u32 = 1200;
const LEGEND_WIDTH: u32 = 200;
const ROW_HEIGHT: u32 = 28;
/// Room above and below the rows: caption, time axis and margins.
const CHROME_HEIGHT: u32 = 110;
/// A bar takes this share of its row's height.
const BAR: f64 = 0.7;
/// Moves over the network, and through shared memory.
const NET: RGBColor = RGBColor(0x30, 0x30, 0x30);
const SHM: RGBColor = RGBColor(0x99, 0x99, 0x99);
const FAILED: RGBColor = RGBColor(0xd6, 0x27, 0x28);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> TimelineError {
    TimelineError::Draw {
        message: e.to_string(),
    }
}

pub(super) fn render(t: &Timeline) -> Result<String, TimelineError> {
    let rows = t.rows();
    let n = rows.len().max(1);
    let height = CHROME_HEIGHT + ROW_HEIGHT * n as u32;
    let row_of: HashMap<ProcId, usize> =
        rows.iter().enumerate().map(|(i, (p, _))| (*p, i)).collect();
    // Row i is drawn at y = n - 1 - i, so the first row is on top.
    let y_of = |row: usize| (n - 1 - row) as f64;

    // The time range: every start and end, a little padding on both sides.
    let times = t
        .tasks()
        .iter()
        .flat_map(|s| [s.started, s.finished])
        .chain(t.moves().iter().flat_map(|m| [m.started, m.finished]));
    let (lo, hi) = times.fold((None::<Duration>, None::<Duration>), |(lo, hi), x| {
        (
            Some(lo.map_or(x, |l| l.min(x))),
            Some(hi.map_or(x, |h| h.max(x))),
        )
    });
    let (lo, hi) = (lo.map_or(0.0, ms), hi.map_or(1.0, ms));
    let span = (hi - lo).max(1e-3);
    let (x0, x1) = (lo - span * 0.02, hi + span * 0.02);
    // The narrowest bar is one pixel wide, so that a short task still shows.
    let min_width = (x1 - x0) / f64::from(WIDTH - LEGEND_WIDTH);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND_WIDTH);

        // A processor's label names its worker where it does not already.
        let labels: Vec<String> = rows
            .iter()
            .map(|(proc, label)| {
                let worker = proc.worker.to_string();
                if label.contains(&worker) {
                    label.clone()
                } else {
                    format!("{label} @ {worker}")
                }
            })
            .collect();
        let label_width = labels.iter().map(|l| l.len()).max().unwrap_or(0) as u32 * 7 + 16;
        let mut chart = ChartBuilder::on(&plot)
            .caption("tasks by processor", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(label_width.min(320))
            .build_cartesian_2d(x0..x1, RowAxis { rows: n })
            .map_err(draw_error)?;
        let row_label = |y: &f64| {
            let i = y.round();
            if (y - i).abs() > 1e-6 || i < 0.0 || i >= n as f64 {
                return String::new();
            }
            labels.get(n - 1 - i as usize).cloned().unwrap_or_default()
        };
        let time_label = |x: &f64| format!("{x:.1}");
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("time (ms, driver clock)")
            .x_label_formatter(&time_label)
            .y_label_formatter(&row_label)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(draw_error)?;

        let colors: HashMap<String, [u8; 3]> = t.function_colors().into_iter().collect();
        for span in t.tasks() {
            let Some(&row) = row_of.get(&span.proc) else {
                continue;
            };
            let y = y_of(row);
            let [r, g, b] = colors.get(&span.func).copied().unwrap_or([0xcc; 3]);
            let (s, f) = (
                ms(span.started),
                ms(span.finished).max(ms(span.started) + min_width),
            );
            let corners = [(s, y - BAR / 2.0), (f, y + BAR / 2.0)];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    corners,
                    RGBColor(r, g, b).filled(),
                )))
                .map_err(draw_error)?;
            if span.error.is_some() {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        corners,
                        FAILED.stroke_width(2),
                    )))
                    .map_err(draw_error)?;
            }
        }

        // Moves: from the producer's row to the first consumer's row on the destination
        // (or the destination's first row), from the move's start to its end.
        let consumers = t.consumers();
        for mv in t.moves() {
            let from_row = t
                .span(mv.chunk.task())
                .and_then(|p| row_of.get(&p.proc).copied())
                .or_else(|| first_row(&rows, mv.from));
            let to_row = consumers
                .get(&mv.chunk.task())
                .and_then(|list| {
                    list.iter()
                        .map(|&c| &t.tasks()[c])
                        .find(|c| c.worker == mv.to)
                })
                .and_then(|c| row_of.get(&c.proc).copied())
                .or_else(|| first_row(&rows, mv.to));
            let (Some(a), Some(b)) = (from_row, to_row) else {
                continue;
            };
            let color = if mv.shared_memory { SHM } else { NET };
            let start = (ms(mv.started), y_of(a));
            let end = (ms(mv.finished), y_of(b));
            chart
                .draw_series([
                    PathElement::new(vec![start, end], color.stroke_width(1)).into_dyn(),
                    Circle::new(end, 2, color.filled()).into_dyn(),
                ])
                .map_err(draw_error)?;
        }

        // The legend: one swatch per function, then the two kinds of move.
        let text = ("sans-serif", 12).into_font();
        let mut y = 40;
        legend
            .draw(&Text::new("functions", (10, y - 18), text.clone()))
            .map_err(draw_error)?;
        for (name, [r, g, b]) in t.function_colors() {
            legend
                .draw(&Rectangle::new(
                    [(10, y), (24, y + 12)],
                    RGBColor(r, g, b).filled(),
                ))
                .map_err(draw_error)?;
            legend
                .draw(&Text::new(name, (30, y), text.clone()))
                .map_err(draw_error)?;
            y += 18;
        }
        for (label, color) in [("move (net)", NET), ("move (shm)", SHM)] {
            legend
                .draw(&PathElement::new(
                    vec![(10, y + 6), (24, y + 6)],
                    color.stroke_width(1),
                ))
                .map_err(draw_error)?;
            legend
                .draw(&Text::new(label, (30, y), text.clone()))
                .map_err(draw_error)?;
            y += 18;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// The first row of `worker`'s processors.
fn first_row(rows: &[(ProcId, String)], worker: WorkerId) -> Option<usize> {
    rows.iter().position(|(p, _)| p.worker == worker)
}

/// The vertical axis: rows `0..rows` centred on whole numbers, with a key point (and so a
/// label) on each row and nowhere else.
struct RowAxis {
    rows: usize,
}

impl Ranged for RowAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value + 0.5) / self.rows as f64;
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.rows).map(|i| i as f64).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        -0.5..self.rows as f64 - 0.5
    }
}
