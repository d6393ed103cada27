//! Charts as SVG drawn on the server: a line for a series over time (MRR, ARR), bars for
//! signed amounts (a month's movements). Each has a title and a description and the figures
//! as a table beside it, so they read without sight and without JavaScript.
use maud::{html, Markup};

const W: f64 = 720.0;
const H: f64 = 240.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 12.0;

/// A round step for about four grid lines up to `max`.
fn step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(raw)
}

/// A line through `points` (label, value), values formatted by `format` on the axis.
pub fn line(id: &str, title: &str, points: &[(String, f64)], format: impl Fn(f64) -> String) -> Markup {
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let step = step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let n = points.len().max(2) as f64;
    let x = |i: usize| LEFT + (W - LEFT - 30.0) * i as f64 / (n - 1.0);
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v / top);
    let path: Vec<String> = points.iter().enumerate().map(|(i, (_, v))| format!("{:.1},{:.1}", x(i), y(*v))).collect();
    let grid: Vec<f64> = (0..=((top / step).round() as usize)).map(|k| k as f64 * step).collect();
    html! {
        svg class="chart" id=(id) viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby=(format!("{id}-t {id}-d")) {
            title id=(format!("{id}-t")) { (title) }
            desc id=(format!("{id}-d")) {
                @for (label, v) in points { (label) ": " (format(*v)) "; " }
            }
            @for g in &grid {
                line x1=(LEFT) x2=(W - 10.0) y1=(y(*g)) y2=(y(*g)) stroke="#d0d7de" {}
                text x=(LEFT - 6.0) y=(y(*g) + 4.0) text-anchor="end" { (format(*g)) }
            }
            polyline points=(path.join(" ")) fill="none" stroke="#0b57d0" stroke-width="2.5" {}
            @for (i, (label, v)) in points.iter().enumerate() {
                circle cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*v))) r="3" fill="#0b57d0" data-value=(v) {}
                text x=(format!("{:.1}", x(i))) y=(H - 8.0) text-anchor="middle" { (label) }
            }
        }
    }
}

/// Bars of signed amounts (label, value): up green, down red, from a zero line.
pub fn bars(id: &str, title: &str, bars: &[(&str, f64)], format: impl Fn(f64) -> String) -> Markup {
    let max = bars.iter().map(|b| b.1.abs()).fold(0.0, f64::max);
    let step = step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let has_negative = bars.iter().any(|b| b.1 < 0.0);
    let (lo, hi) = if has_negative { (-top, top) } else { (0.0, top) };
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (hi - v) / (hi - lo);
    let slot = (W - LEFT - 10.0) / bars.len().max(1) as f64;
    html! {
        svg class="chart" id=(id) viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby=(format!("{id}-t {id}-d")) {
            title id=(format!("{id}-t")) { (title) }
            desc id=(format!("{id}-d")) {
                @for (label, v) in bars { (label) ": " (format(*v)) "; " }
            }
            line x1=(LEFT) x2=(W - 10.0) y1=(y(0.0)) y2=(y(0.0)) stroke="#57606a" {}
            text x=(LEFT - 6.0) y=(y(hi) + 4.0) text-anchor="end" { (format(hi)) }
            @if has_negative { text x=(LEFT - 6.0) y=(y(lo) + 4.0) text-anchor="end" { (format(lo)) } }
            @for (i, (label, v)) in bars.iter().enumerate() {
                @let x0 = LEFT + slot * i as f64 + slot * 0.2;
                @let (y0, h) = if *v >= 0.0 { (y(*v), y(0.0) - y(*v)) } else { (y(0.0), y(*v) - y(0.0)) };
                rect x=(format!("{x0:.1}")) y=(format!("{y0:.1}")) width=(format!("{:.1}", slot * 0.6)) height=(format!("{:.1}", h.max(0.5)))
                    fill=(if *v >= 0.0 { "#1a7f37" } else { "#b3261e" }) data-value=(v) {}
                text x=(format!("{:.1}", x0 + slot * 0.3)) y=(H - 8.0) text-anchor="middle" { (label) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(step(1000.0), 250.0);
        assert_eq!(step(90.0), 25.0);
        assert_eq!(step(0.0), 1.0);
    }

    #[test]
    fn charts_carry_their_figures_and_escape_labels() {
        let points = vec![("Jan".to_owned(), 100.0), ("<Feb>".to_owned(), 250.0)];
        let svg = line("mrr", "MRR", &points, |v| format!("{v}")).into_string();
        assert!(svg.contains("data-value=\"250\"") && svg.contains("&lt;Feb&gt;"), "{svg}");
        let svg = bars("m", "Movements", &[("new", 5.0), ("churn", -3.0)], |v| format!("{v}")).into_string();
        assert!(svg.contains("#b3261e") && svg.contains("data-value=\"-3\""), "{svg}");
    }
}
