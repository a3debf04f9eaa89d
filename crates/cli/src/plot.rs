//! Minimal SVG line charts (no dependencies): panels of named series with axes and a legend.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" tick step for a range.
fn tick_step(range: f64) -> f64 {
    let raw = range / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    mag * if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    }
}

/// Renders panels side by side into one SVG document.
pub fn line_charts(panels: &[Panel]) -> String {
    charts(panels, true)
}

/// Like `line_charts`, with points only (no connecting lines).
pub fn scatter_charts(panels: &[Panel]) -> String {
    charts(panels, false)
}

fn charts(panels: &[Panel], lines: bool) -> String {
    let (pw, ph0) = (440.0, 336.0);
    let (ml, mr, mb) = (60.0, 16.0, 46.0);
    // The legend sits in rows between the title and the plot, never over the data; entries
    // wrap to a new row where the plot width ends.
    let layouts: Vec<Vec<(f64, usize)>> = panels.iter().map(|p| legend_layout(p, pw - ml - mr)).collect();
    let legend_rows = layouts.iter().flatten().map(|&(_, r)| r + 1).max().unwrap_or(1);
    let mt = 34.0 + 16.0 * legend_rows as f64;
    let ph = ph0 + 16.0 * (legend_rows - 1) as f64;
    let width = pw * panels.len() as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{ph}" viewBox="0 0 {width} {ph}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (pi, p) in panels.iter().enumerate() {
        let x0 = pi as f64 * pw;
        let pts = p.series.iter().flat_map(|s| s.points.iter());
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
        if xmin > xmax {
            (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
        }
        if xmax - xmin < 1e-12 {
            xmax = xmin + 1.0;
        }
        if ymax - ymin < 1e-12 {
            ymax = ymin + 1.0;
        }
        let pad = (ymax - ymin) * 0.05;
        let (ymin, ymax) = (ymin - pad, ymax + pad);
        let (iw, ih) = (pw - ml - mr, ph - mt - mb);
        let sx = |x: f64| x0 + ml + (x - xmin) / (xmax - xmin) * iw;
        let sy = |y: f64| mt + ih - (y - ymin) / (ymax - ymin) * ih;
        let _ = write!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
            x0 + ml + iw / 2.0,
            escape(&p.title)
        );
        let _ = write!(s, r##"<rect x="{}" y="{mt}" width="{iw}" height="{ih}" fill="none" stroke="#888"/>"##, x0 + ml);
        let ys = tick_step(ymax - ymin);
        let mut t = (ymin / ys).ceil() * ys;
        while t <= ymax {
            let y = sy(t);
            let _ = write!(
                s,
                r##"<line x1="{}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 + ml,
                x0 + ml + iw,
                x0 + ml - 4.0,
                y + 4.0,
                fmt_tick(t, ys)
            );
            t += ys;
        }
        // integer x data (epochs, layers) gets integer ticks
        let integer_x = p.series.iter().flat_map(|s| s.points.iter()).all(|&(x, _)| x.fract() == 0.0);
        let xs = tick_step(xmax - xmin).max(if integer_x || xmax - xmin >= 5.0 { 1.0 } else { 0.0 });
        let mut t = (xmin / xs).ceil() * xs;
        while t <= xmax + 1e-9 {
            let x = sx(t);
            let _ =
                write!(s, r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#, mt + ih + 16.0, fmt_tick(t, xs));
            t += xs;
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + ml + iw / 2.0,
            ph - 8.0,
            escape(&p.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            x0 + 14.0,
            mt + ih / 2.0,
            escape(&p.y_label)
        );
        for (si, ser) in p.series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let path: Vec<String> = ser
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            if lines && path.len() > 1 {
                let _ = write!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    path.join(" ")
                );
            }
            for pt in &path {
                let (cx, cy) = pt.split_once(',').unwrap();
                let r = if lines { 2.5 } else { 4.0 };
                let _ = write!(s, r#"<circle cx="{cx}" cy="{cy}" r="{r}" fill="{color}" fill-opacity="0.8"/>"#);
            }
            let (lxo, row) = layouts[pi][si];
            let ly = 34.0 + 16.0 * row as f64 + 6.0;
            let lx = x0 + ml + lxo;
            let _ = write!(
                s,
                r#"<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{ly}">{}</text>"#,
                lx + 16.0,
                ly - 4.0,
                ly - 4.0,
                lx + 20.0,
                escape(&ser.name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// (x offset, row) of every legend entry of a panel, wrapping at `width`.
fn legend_layout(p: &Panel, width: f64) -> Vec<(f64, usize)> {
    let (mut x, mut row) = (0.0, 0);
    p.series
        .iter()
        .map(|s| {
            let w = 30.0 + 6.5 * s.name.chars().count() as f64;
            if x > 0.0 && x + w > width {
                (x, row) = (0.0, row + 1);
            }
            let at = (x, row);
            x += w;
            at
        })
        .collect()
}

/// One bar of a bar chart, with an optional ± error.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub error: Option<f64>,
}

/// The frame shared by the bar charts: size, margins, plot area and y range.
struct BarFrame {
    w: f64,
    h: f64,
    ml: f64,
    mt: f64,
    iw: f64,
    ih: f64,
    lo: f64,
    hi: f64,
}

impl BarFrame {
    /// The y pixel of value `v` (clamped to the plot area).
    fn y(&self, v: f64) -> f64 {
        self.mt + self.ih - ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0) * self.ih
    }

    /// The SVG opening: background, title, horizontal grid with y ticks, and the y label.
    fn open(&self, title: &str, y_label: &str) -> String {
        let (w, h, ml) = (self.w, self.h, self.ml);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
            ml + self.iw / 2.0,
            escape(title)
        );
        let step = tick_step(self.hi - self.lo);
        let mut t = (self.lo / step).ceil() * step;
        while t <= self.hi {
            let y = self.y(t);
            let _ = write!(
                s,
                r##"<line x1="{ml}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                ml + self.iw,
                ml - 4.0,
                y + 4.0,
                fmt_tick(t, step)
            );
            t += step;
        }
        let _ = write!(
            s,
            r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            self.mt + self.ih / 2.0,
            escape(y_label)
        );
        s
    }
}

/// A vertical bar chart with error bars; the y axis starts at `y_min` (None: 0), so small
/// differences between high accuracies stay visible.
pub fn bar_chart(title: &str, y_label: &str, bars: &[Bar], y_min: Option<f64>) -> String {
    let (ml, mt, mb) = (64.0, 36.0, 90.0);
    // wide enough for the bold title too
    let w = (120.0 + 90.0 * bars.len() as f64).max(ml + 40.0 + 8.0 * title.chars().count() as f64);
    let h = 360.0;
    let iw = w - ml - 20.0;
    let ih = h - mt - mb;
    let top = bars.iter().map(|b| b.value + b.error.unwrap_or(0.0)).fold(f64::MIN, f64::max);
    let lo = y_min.unwrap_or(0.0);
    let hi = if top > lo { top + (top - lo) * 0.08 } else { lo + 1.0 };
    let frame = BarFrame { w, h, ml, mt, iw, ih, lo, hi };
    let sy = |v: f64| frame.y(v);
    let mut s = frame.open(title, y_label);
    let slot = iw / bars.len().max(1) as f64;
    for (i, b) in bars.iter().enumerate() {
        let x = ml + slot * i as f64 + slot * 0.15;
        let bw = slot * 0.7;
        let y = sy(b.value);
        let color = COLORS[i % COLORS.len()];
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="{bw}" height="{}" fill="{color}" opacity="0.85"/>"#,
            (mt + ih - y).max(0.0)
        );
        if let Some(e) = b.error {
            let cx = x + bw / 2.0;
            let (y1, y2) = (sy(b.value - e), sy(b.value + e));
            let _ = write!(
                s,
                r##"<line x1="{cx}" x2="{cx}" y1="{y1}" y2="{y2}" stroke="#000"/><line x1="{}" x2="{}" y1="{y1}" y2="{y1}" stroke="#000"/><line x1="{}" x2="{}" y1="{y2}" y2="{y2}" stroke="#000"/>"##,
                cx - 5.0,
                cx + 5.0,
                cx - 5.0,
                cx + 5.0
            );
        }
        let label_y = sy(b.value + b.error.unwrap_or(0.0)) - 6.0; // above the error bar
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{:.2}</text>"#, x + bw / 2.0, label_y, b.value);
        let _ = write!(
            s,
            r#"<text transform="translate({},{}) rotate(-35)" text-anchor="end">{}</text>"#,
            x + bw / 2.0,
            mt + ih + 14.0,
            escape(&b.label)
        );
    }
    let _ = write!(s, r##"<line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#888"/>"##, ml + iw, mt + ih, mt + ih);
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64, step: f64) -> String {
    // a tick at -1e-13 must read 0, not -0
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let digits = (-step.log10()).ceil() as usize;
        format!("{v:.digits$}")
    }
}

/// Grouped vertical bars: one group per label, one coloured bar per series in each group,
/// a legend row under the title; the y axis starts at 0.
pub fn grouped_bars(title: &str, y_label: &str, groups: &[String], series: &[Series]) -> String {
    let per = series.len().max(1) as f64;
    let (ml, mt, mb) = (64.0, 58.0, 40.0);
    let slot = (40.0 * per + 30.0).max(110.0);
    let (w, h) = (ml + 20.0 + slot * groups.len() as f64, 340.0);
    let (iw, ih) = (w - ml - 20.0, h - mt - mb);
    let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let hi = if top > 0.0 { top * 1.12 } else { 1.0 };
    let frame = BarFrame { w, h, ml, mt, iw, ih, lo: 0.0, hi };
    let sy = |v: f64| frame.y(v);
    let mut s = frame.open(title, y_label);
    let mut lx = ml;
    for (si, ser) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="32" width="14" height="10" fill="{color}"/><text x="{}" y="41">{}</text>"#,
            lx + 18.0,
            escape(&ser.name)
        );
        lx += 34.0 + 6.5 * ser.name.chars().count() as f64;
    }
    let bw = (slot - 30.0) / per;
    for (gi, g) in groups.iter().enumerate() {
        let gx = ml + slot * gi as f64 + 15.0;
        for (si, ser) in series.iter().enumerate() {
            let Some(&(_, v)) = ser.points.get(gi) else { continue };
            let x = gx + bw * si as f64;
            let y = sy(v);
            let color = COLORS[si % COLORS.len()];
            let _ = write!(
                s,
                r#"<rect x="{x}" y="{y}" width="{}" height="{}" fill="{color}" opacity="0.85"/><text x="{}" y="{}" text-anchor="middle" font-size="11">{v:.2}</text>"#,
                bw - 4.0,
                (mt + ih - y).max(0.0),
                x + (bw - 4.0) / 2.0,
                y - 4.0
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            gx + (slot - 30.0) / 2.0,
            mt + ih + 18.0,
            escape(g)
        );
    }
    let _ = write!(s, r##"<line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#888"/>"##, ml + iw, mt + ih, mt + ih);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_looking_svg() {
        let svg = line_charts(&[Panel {
            title: "loss <train>".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            series: vec![Series { name: "train".into(), points: vec![(1.0, 2.0), (2.0, 1.0), (3.0, f64::NAN)] }],
        }]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;train&gt;") && svg.contains("polyline"));
        let bars = bar_chart("acc", "%", &[Bar { label: "a".into(), value: 91.0, error: Some(0.3) }], Some(85.0));
        assert!(bars.starts_with("<svg") && bars.contains("<rect") && bars.trim_end().ends_with("</svg>"));
    }
}
