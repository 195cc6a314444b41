//! The measurements of one run: rows, the markdown tables, the JSON file and the SVG plots.

use plotters::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// One measurement.
#[derive(Clone, Debug)]
pub struct Row {
    /// "forward", "decode" or "limit".
    pub section: &'static str,
    /// What ran, e.g. "attnc c64" or "dfdx quadratic".
    pub implementation: String,
    /// The attention variant (or the limit's name).
    pub variant: String,
    pub b: usize,
    pub h: usize,
    pub n: usize,
    pub threads: usize,
    /// Milliseconds per call (forward), nanoseconds per token per head (decode) or GFLOP/s
    /// (limit): see `unit`.
    pub value: f64,
    pub unit: &'static str,
}

/// All rows of a run.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Adds a row and prints it as it comes (long runs show progress).
    pub fn push(&mut self, row: Row) {
        println!(
            "  {:<8} {:<26} {:<12} B={} H={} N={:<6} t={} {:>12.3} {}",
            row.section,
            row.implementation,
            row.variant,
            row.b,
            row.h,
            row.n,
            row.threads,
            row.value,
            row.unit
        );
        self.rows.push(row);
    }

    /// The value of the first row matching all of these, if any.
    pub fn find(
        &self,
        section: &str,
        imp: &str,
        variant: &str,
        n: usize,
        threads: usize,
    ) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| {
                r.section == section
                    && r.implementation == imp
                    && r.variant == variant
                    && r.n == n
                    && r.threads == threads
            })
            .map(|r| r.value)
    }

    /// The run as JSON.
    pub fn write_json(&self, path: &Path, machine: &str, command: &str) -> std::io::Result<()> {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "section": r.section, "implementation": r.implementation, "variant": r.variant,
                    "b": r.b, "h": r.h, "n": r.n, "threads": r.threads, "value": r.value, "unit": r.unit,
                })
            })
            .collect();
        let doc = json!({ "machine": machine, "command": command, "rows": rows });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
    }

    /// A markdown table of one section: one row per (variant, N), one column per
    /// (implementation, threads), in first-seen order.
    pub fn markdown(&self, section: &str, h: usize) -> String {
        let rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.section == section && r.h == h)
            .collect();
        let mut columns: Vec<(String, usize)> = Vec::new();
        let mut lines: Vec<(String, usize)> = Vec::new();
        for r in &rows {
            let col = (r.implementation.clone(), r.threads);
            if !columns.contains(&col) {
                columns.push(col);
            }
            let line = (r.variant.clone(), r.n);
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        let unit = rows.first().map_or("", |r| r.unit);
        let mut out = format!("| variant | N | {} |\n", {
            let heads: Vec<String> = columns
                .iter()
                .map(|(imp, t)| format!("{imp} ({t}t), {unit}"))
                .collect();
            heads.join(" | ")
        });
        out.push_str(&format!("|---|---:|{}\n", "---:|".repeat(columns.len())));
        for (variant, n) in &lines {
            let cells: Vec<String> = columns
                .iter()
                .map(|(imp, t)| {
                    rows.iter()
                        .find(|r| {
                            &r.variant == variant
                                && r.n == *n
                                && &r.implementation == imp
                                && r.threads == *t
                        })
                        .map_or("–".to_string(), |r| format!("{:.3}", r.value))
                })
                .collect();
            out.push_str(&format!("| {variant} | {n} | {} |\n", cells.join(" | ")));
        }
        out
    }

    /// A log-log SVG of value against N for one section and variant, one line per
    /// (implementation, threads).
    pub fn plot(
        &self,
        path: &Path,
        section: &str,
        variant: &str,
        h: usize,
        title: &str,
    ) -> Result<(), String> {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in self
            .rows
            .iter()
            .filter(|r| r.section == section && r.variant == variant && r.h == h && r.value > 0.0)
        {
            series
                .entry(format!("{} ({}t)", r.implementation, r.threads))
                .or_default()
                .push((r.n as f64, r.value));
        }
        if series.is_empty() {
            return Ok(());
        }
        let xs = series.values().flatten().map(|p| p.0);
        let ys = series.values().flatten().map(|p| p.1);
        let (x0, x1) = (xs.clone().fold(f64::MAX, f64::min), xs.fold(0.0, f64::max));
        let (y0, y1) = (ys.clone().fold(f64::MAX, f64::min), ys.fold(0.0, f64::max));
        let unit = self
            .rows
            .iter()
            .find(|r| r.section == section)
            .map_or("", |r| r.unit);
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x0 * 0.8..x1 * 1.25).log_scale(),
                (y0 * 0.5..y1 * 2.0).log_scale(),
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("N (tokens)")
            .y_desc(unit)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, mut pts)) in series.into_iter().enumerate() {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))
    }
}
