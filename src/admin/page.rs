//! The status page: an HTML page, stylesheet and script embedded in the binary and served
//! without a token at `/` and `/pipelines/{name}`, and the SVG chart of a pipeline's last hour
//! it shows (`GET /admin/pipelines/{name}/chart.svg`).
//!
//! The page holds no data. Its script asks for an admin token, keeps it in the tab's
//! sessionStorage and sends it as a Bearer header to the admin API; there is no cookie, so
//! there is nothing for another site to ride on. The Content-Security-Policy allows only this
//! listener's own script, stylesheet and API, and no inline script.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::history::Minute;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/page.css");
const PAGE_JS: &str = include_str!("page/page.js");

/// What the page may load: its own script, stylesheet and admin API, nothing inline, no
/// frames, no plugins, no form posts.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, which need no token: the page holds nothing a token protects.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/pipelines/{name}",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/page.css",
            get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }),
        )
        .route(
            "/page.js",
            get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

/// Width and height of the chart's plot area, and its left and top margins.
const PLOT_W: f64 = 590.0;
const PLOT_H: f64 = 120.0;
const LEFT: f64 = 40.0;
const TOP: f64 = 10.0;

/// Where the chart's points go: the axis maximum and one point per minute for each line.
#[derive(Debug, PartialEq)]
struct Scale {
    max: u64,
    accepted: Vec<(f64, f64)>,
    delivered: Vec<(f64, f64)>,
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (1 for 0).
fn nice_max(v: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if let Some(c) = step.checked_mul(m)
                && c >= v
            {
                return c;
            }
        }
        match step.checked_mul(10) {
            Some(s) => step = s,
            None => return u64::MAX,
        }
    }
}

fn scale(minutes: &[Minute]) -> Scale {
    let top = minutes
        .iter()
        .map(|m| m.accepted.max(m.delivered))
        .max()
        .unwrap_or(0);
    let max = nice_max(top);
    let step = PLOT_W / (minutes.len().max(2) - 1) as f64;
    let point = |i: usize, v: u64| {
        (
            LEFT + step * i as f64,
            TOP + PLOT_H - PLOT_H * v as f64 / max as f64,
        )
    };
    Scale {
        max,
        accepted: minutes
            .iter()
            .enumerate()
            .map(|(i, m)| point(i, m.accepted))
            .collect(),
        delivered: minutes
            .iter()
            .enumerate()
            .map(|(i, m)| point(i, m.delivered))
            .collect(),
    }
}

fn points(ps: &[(f64, f64)]) -> String {
    ps.iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The chart of rows accepted and delivered per minute, oldest minute on the left. It holds
/// only numbers, so it is safe to place into the page as markup.
pub(super) fn chart_svg(minutes: &[Minute]) -> String {
    let s = scale(minutes);
    let (w, h) = (LEFT + PLOT_W + 10.0, TOP + PLOT_H + 20.0);
    let base = TOP + PLOT_H;
    let right = LEFT + PLOT_W;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="rows per minute, last hour" data-max="{max}">
<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#999"/>
<line x1="{LEFT}" y1="{base}" x2="{right}" y2="{base}" stroke="#999"/>
<text x="{lx}" y="{ty}" font-size="10" text-anchor="end" fill="#555">{max}</text>
<text x="{lx}" y="{base}" font-size="10" text-anchor="end" fill="#555">0</text>
<text x="{LEFT}" y="{by}" font-size="10" fill="#555">-60 min</text>
<text x="{right}" y="{by}" font-size="10" text-anchor="end" fill="#555">now</text>
<polyline class="accepted" fill="none" stroke="#1f6feb" stroke-width="2" points="{a}"/>
<polyline class="delivered" fill="none" stroke="#2da44e" stroke-width="2" points="{d}"/>
</svg>"##,
        max = s.max,
        lx = LEFT - 4.0,
        ty = TOP + 8.0,
        by = base + 14.0,
        a = points(&s.accepted),
        d = points(&s.delivered),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(values: &[(u64, u64)]) -> Vec<Minute> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(accepted, delivered))| Minute {
                start_ms: i as u64 * 60_000,
                accepted,
                delivered,
            })
            .collect()
    }

    #[test]
    fn the_axis_maximum_is_the_next_one_two_or_five_at_or_above_the_busiest_minute() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(1), 1);
        assert_eq!(nice_max(3), 5);
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(200), 200);
        assert_eq!(nice_max(201), 500);
        assert_eq!(nice_max(u64::MAX), u64::MAX);
        let mut hour = minutes(&[(0, 0); 60]);
        hour[10].accepted = 3;
        hour[20].delivered = 170;
        assert_eq!(scale(&hour).max, 200);
    }

    #[test]
    fn known_buckets_land_on_known_coordinates() {
        let mut hour = minutes(&[(0, 0); 60]);
        hour[0].accepted = 10;
        hour[59].delivered = 5;
        let s = scale(&hour);
        assert_eq!(s.max, 10);
        // The oldest minute is on the left edge at the top, the newest on the right edge.
        assert_eq!(s.accepted[0], (40.0, 10.0));
        assert_eq!(s.accepted[59], (630.0, 130.0));
        assert_eq!(s.delivered[59], (630.0, 70.0));
        assert_eq!(s.delivered[1], (50.0, 130.0));
        let svg = chart_svg(&hour);
        assert!(svg.contains(r#"data-max="10""#), "{svg}");
        assert!(svg.contains("40.0,10.0 50.0,130.0"), "{svg}");
        assert!(svg.contains("620.0,130.0 630.0,70.0"), "{svg}");
    }

    #[test]
    fn an_empty_history_draws_flat_lines_on_the_baseline_with_an_axis_of_one() {
        let s = scale(&minutes(&[(0, 0); 60]));
        assert_eq!(s.max, 1);
        assert!(
            s.accepted
                .iter()
                .chain(&s.delivered)
                .all(|&(_, y)| y == 130.0)
        );
        let none = scale(&[]);
        assert_eq!((none.max, none.accepted.len()), (1, 0));
        assert!(chart_svg(&[]).contains(r#"points="""#));
    }
}
