//! A tiny inline-SVG chart: time on the x axis (seconds since run start), either a numeric
//! y axis (lines) or labelled rows (bars), with shaded fault intervals. No scripts, no fonts
//! beyond the browser's default, so the report works offline forever.

use std::fmt::Write;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;
const PLOT_HEIGHT: f64 = 220.0;
const ROW_HEIGHT: f64 = 22.0;
const LEGEND_ENTRY: f64 = 110.0;

/// Colours for series and holders, picked to stay distinguishable in print.
pub(super) const PALETTE: [&str; 8] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

/// Escapes text for HTML and SVG.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A "nice" tick step (1, 2 or 5 × 10ⁿ) giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(magnitude * 10.0)
}

enum YAxis {
    Numeric { max: f64, label: String },
    Rows(Vec<String>),
}

pub(super) struct Chart {
    title: String,
    x_max_s: f64,
    y: YAxis,
    body: String,
    legend: Vec<(String, &'static str)>,
}

impl Chart {
    /// A chart with a numeric y axis from 0 to `y_max`.
    pub(super) fn numeric(title: &str, x_max_s: f64, y_max: f64, y_label: &str) -> Chart {
        let max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
        Chart::new(title, x_max_s, YAxis::Numeric { max, label: y_label.to_string() })
    }

    /// A chart with one labelled row per entry of `rows`.
    pub(super) fn rows(title: &str, x_max_s: f64, rows: Vec<String>) -> Chart {
        Chart::new(title, x_max_s, YAxis::Rows(rows))
    }

    fn new(title: &str, x_max_s: f64, y: YAxis) -> Chart {
        Chart { title: title.to_string(), x_max_s: x_max_s.max(1.0), y, body: String::new(), legend: Vec::new() }
    }

    fn plot_height(&self) -> f64 {
        match &self.y {
            YAxis::Numeric { .. } => PLOT_HEIGHT,
            YAxis::Rows(rows) => ROW_HEIGHT * rows.len().max(1) as f64,
        }
    }

    fn x(&self, s: f64) -> f64 {
        LEFT + s.clamp(0.0, self.x_max_s) / self.x_max_s * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        let max = match &self.y {
            YAxis::Numeric { max, .. } => *max,
            YAxis::Rows(_) => 1.0,
        };
        TOP + (1.0 - (v / max).clamp(0.0, 1.0)) * self.plot_height()
    }

    /// Shades `[from, to)` seconds over the whole plot height (a fault interval).
    pub(super) fn shade(&mut self, from_s: f64, to_s: f64, label: &str) {
        let (x0, x1) = (self.x(from_s), self.x(to_s));
        let _ = write!(
            self.body,
            r##"<rect class="fault" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f4c7c3" opacity="0.6"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            self.plot_height(),
            escape(label)
        );
    }

    /// A line through `(seconds, value)` points, broken where a point is `None` (no data is
    /// not zero), with a legend entry.
    pub(super) fn line(&mut self, points: &[Option<(f64, f64)>], color: &'static str, label: &str) {
        for run in points.split(Option::is_none).filter(|run| !run.is_empty()) {
            let path: Vec<String> =
                run.iter().flatten().map(|&(s, v)| format!("{:.1},{:.1}", self.x(s), self.y(v))).collect();
            let _ = write!(
                self.body,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
                path.join(" "),
                escape(label)
            );
        }
        self.legend.push((label.to_string(), color));
    }

    /// A bar on row `row` from `from_s` to `to_s`, with hover text and, if it fits, a label.
    pub(super) fn bar(&mut self, row: usize, (from_s, to_s): (f64, f64), color: &str, label: &str, hover: &str) {
        let (x0, x1) = (self.x(from_s), self.x(to_s));
        let y = TOP + row as f64 * ROW_HEIGHT + 3.0;
        let width = (x1 - x0).max(2.0);
        let _ = write!(
            self.body,
            r#"<rect x="{x0:.1}" y="{y:.1}" width="{width:.1}" height="{:.1}" fill="{color}"><title>{}</title></rect>"#,
            ROW_HEIGHT - 6.0,
            escape(hover)
        );
        if width > 7.0 * label.len() as f64 {
            let _ = write!(
                self.body,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="white">{}</text>"#,
                x0 + 3.0,
                y + ROW_HEIGHT - 10.0,
                escape(label)
            );
        }
    }

    /// The finished `<svg>` element.
    pub(super) fn finish(self) -> String {
        let height = TOP + self.plot_height() + BOTTOM;
        let bottom = TOP + self.plot_height();
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(svg, r#"<text x="{LEFT}" y="18" font-weight="bold">{}</text>"#, escape(&self.title));
        let step = tick_step(self.x_max_s);
        let mut tick = 0.0;
        while tick <= self.x_max_s + step / 1000.0 {
            let x = self.x(tick);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{tick}</text>"##,
                bottom + 15.0
            );
            tick += step;
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since run start</text>"#,
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
            bottom + 32.0
        );
        match &self.y {
            YAxis::Numeric { max, label } => {
                let step = tick_step(*max);
                let mut tick = 0.0;
                while tick <= *max {
                    let y = self.y(tick);
                    let _ = write!(
                        svg,
                        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                        WIDTH - RIGHT,
                        LEFT - 5.0,
                        y + 4.0,
                        format_tick(tick)
                    );
                    tick += step;
                }
                let _ = write!(
                    svg,
                    r#"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
                    TOP + PLOT_HEIGHT / 2.0,
                    TOP + PLOT_HEIGHT / 2.0,
                    escape(label)
                );
            }
            YAxis::Rows(rows) => {
                for (i, row) in rows.iter().enumerate() {
                    let y = TOP + i as f64 * ROW_HEIGHT + ROW_HEIGHT / 2.0 + 4.0;
                    let _ = write!(
                        svg,
                        r#"<text x="{:.1}" y="{y:.1}" text-anchor="end">{}</text>"#,
                        LEFT - 5.0,
                        escape(row)
                    );
                }
            }
        }
        svg.push_str(&self.body);
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
            WIDTH - LEFT - RIGHT,
            self.plot_height()
        );
        // The legend sits on the title line, right-aligned, clear of the data.
        let legend_left = WIDTH - RIGHT - LEGEND_ENTRY * self.legend.len() as f64;
        for (i, (label, color)) in self.legend.iter().enumerate() {
            let x = legend_left + i as f64 * LEGEND_ENTRY;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="8" width="10" height="10" fill="{color}"/><text x="{:.1}" y="17">{}</text>"#,
                x + 14.0,
                escape(label)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

fn format_tick(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: tick steps are 1/2/5 × 10ⁿ and about five per axis.
    #[test]
    fn nice_ticks() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(60.0), 20.0);
        assert!((tick_step(0.3) - 0.1).abs() < 1e-12);
    }

    /// Goal: text is escaped, so a nemesis detail cannot break the page.
    #[test]
    fn labels_are_escaped() {
        let mut chart = Chart::rows("t", 10.0, vec!["<w1>".into()]);
        chart.shade(1.0, 2.0, "a & b");
        let svg = chart.finish();
        assert!(svg.contains("&lt;w1&gt;") && svg.contains("a &amp; b") && !svg.contains("<w1>"));
    }
}
