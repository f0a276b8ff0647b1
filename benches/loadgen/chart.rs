//! The loadgen run as pictures: SVG written by hand (a few dozen elements each; a plotting
//! crate would cost more build time than the whole harness).
//!
//! - [`latency_cdf`]: the read-latency distribution of every system, on a log scale of
//!   microseconds against a "nines" scale of percentiles (0, 90, 99, 99.9, 99.99), so both the
//!   L1 hits (microseconds) and the tail (milliseconds) are visible.
//! - [`throughput_and_cpu`]: operations per second, and CPU per operation (the process's and
//!   redis-server's, stacked), side by side.

use std::fmt::Write as _;

/// The percentiles a child reports its read latency at: evenly spaced on the nines scale
/// (`-log10(1 - p)` from 0 to 4 by 0.05: 0 %, 10.9 %, … 90 %, … 99.99 %).
pub(crate) fn cdf_points() -> Vec<f64> {
    (0..=80)
        .map(|i| 1.0 - 10f64.powf(-f64::from(i) * 0.05))
        .collect()
}

/// One system's line or bar.
pub(crate) struct Series {
    pub(crate) name: String,
    /// Read latency in µs at each of [`cdf_points`].
    pub(crate) cdf: Vec<f64>,
    pub(crate) ops: f64,
    /// CPU µs per operation: the process's, and redis-server's.
    pub(crate) cpu: (f64, f64),
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const FONT: &str = "font-family=\"sans-serif\" font-size=\"12\"";

fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The picture's frame, its title, and the workload it shows (a second, smaller line).
fn header(w: u32, h: u32, title: &str, workload: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{x}\" y=\"20\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"14\" font-weight=\"bold\">{}</text>\n\
         <text x=\"{x}\" y=\"37\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"11\" fill=\"#555\">{}</text>\n",
        escape(title),
        escape(workload),
        x = w / 2,
    )
}

/// The read-latency CDF of each series.
pub(crate) fn latency_cdf(series: &[Series], workload: &str) -> String {
    let (w, h) = (720u32, 440u32);
    let (left, right, top, bottom) = (70.0, 180.0, 60.0, 50.0);
    let pw = f64::from(w) - left - right;
    let ph = f64::from(h) - top - bottom;
    // x: log10 of µs, whole decades covering every value (at least 1 µs .. 10 ms).
    let max = series
        .iter()
        .flat_map(|s| s.cdf.iter().copied())
        .fold(1.0f64, f64::max);
    let decades = max.log10().ceil().max(4.0);
    let x = |us: f64| left + pw * (us.max(1.0).log10() / decades);
    let points = cdf_points();
    let nines = |p: f64| -(1.0 - p).max(1e-4).log10();
    let y = |p: f64| top + ph * (1.0 - nines(p) / 4.0);
    let mut svg = header(w, h, "Read latency", workload);
    // Grid and axes.
    for d in 0..=decades as u32 {
        let gx = x(10f64.powi(d as i32));
        let label = match d {
            0..=2 => format!("{} µs", 10u64.pow(d)),
            3..=5 => format!("{} ms", 10u64.pow(d - 3)),
            _ => format!("{} s", 10u64.pow(d - 6)),
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT}>{label}</text>",
            top + ph,
            top + ph + 16.0
        );
    }
    for (p, label) in [
        (0.0, "0"),
        (0.5, "50"),
        (0.9, "90"),
        (0.99, "99"),
        (0.999, "99.9"),
        (0.9999, "99.99"),
    ] {
        let gy = y(p);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT}>{label}</text>",
            left + pw,
            left - 6.0,
            gy + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT}>read latency (log scale)</text>\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" {FONT} transform=\"rotate(-90 16 {:.1})\">percentile</text>",
        left + pw / 2.0,
        f64::from(h) - 10.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // One step line per series.
    for (i, s) in series.iter().enumerate() {
        let mut d = String::new();
        for (p, us) in points.iter().zip(&s.cdf) {
            let cmd = if d.is_empty() { 'M' } else { 'L' };
            let _ = write!(d, "{cmd}{:.1},{:.1} ", x(*us), y(*p));
        }
        let _ = writeln!(
            svg,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
            color(i)
        );
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + pw + 12.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" {FONT}>{}</text>",
            lx + 18.0,
            color(i),
            lx + 24.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Operations per second (left) and CPU per operation, process and redis-server stacked
/// (right), one bar per series.
pub(crate) fn throughput_and_cpu(series: &[Series], workload: &str) -> String {
    let (w, h) = (760u32, 380u32);
    let (top, bottom) = (70.0, 110.0);
    let ph = f64::from(h) - top - bottom;
    let mut svg = header(w, h, "Throughput and CPU per operation", workload);
    let panel = |svg: &mut String, left: f64, label: &str, values: &[(f64, f64)]| {
        let pw = 300.0;
        let max = values.iter().map(|(a, b)| a + b).fold(0.0f64, f64::max);
        let step = nice_step(max / 4.0);
        let top_value = (max / step).ceil().max(1.0) * step;
        let ys = |v: f64| top + ph * (1.0 - v / top_value);
        let mut t = 0.0;
        while t <= top_value + step / 2.0 {
            let gy = ys(t);
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT}>{}</text>",
                left + pw,
                left - 6.0,
                gy + 4.0,
                short(t)
            );
            t += step;
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT}>{}</text>",
            left + pw / 2.0,
            top - 6.0,
            escape(label)
        );
        let slot = pw / values.len().max(1) as f64;
        for (i, (a, b)) in values.iter().enumerate() {
            let bx = left + slot * i as f64 + slot * 0.15;
            let bw = slot * 0.7;
            let _ = writeln!(
                svg,
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                ys(*a),
                ys(0.0) - ys(*a),
                color(i)
            );
            if *b > 0.0 {
                let _ = writeln!(
                    svg,
                    "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"0.35\"/>",
                    ys(a + b),
                    ys(*a) - ys(a + b),
                    color(i)
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT}>{}</text>",
                bx + bw / 2.0,
                ys(a + b) - 4.0,
                short(a + b)
            );
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT} transform=\"rotate(-35 {:.1} {:.1})\">{}</text>",
                bx + bw / 2.0,
                ys(0.0) + 14.0,
                bx + bw / 2.0,
                ys(0.0) + 14.0,
                escape(&series[i].name)
            );
        }
    };
    let ops: Vec<(f64, f64)> = series.iter().map(|s| (s.ops, 0.0)).collect();
    panel(&mut svg, 70.0, "operations per second", &ops);
    let cpu: Vec<(f64, f64)> = series.iter().map(|s| s.cpu).collect();
    panel(
        &mut svg,
        440.0,
        "CPU µs per operation (solid: process; light: redis)",
        &cpu,
    );
    svg.push_str("</svg>\n");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// A short label: 12.5, 250, 12k, 1.5M.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
