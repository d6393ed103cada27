//! The console's page frame and the pieces every page uses. maud escapes every value it
//! interpolates, so text from the database (names, emails, reasons, JSON) cannot become markup.
//! Everything a page loads is served here: one stylesheet, one small script (busy states;
//! every page works without it), no CDN.
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

pub const STYLE: &str = include_str!("assets/console.css");
pub const SCRIPT: &str = include_str!("assets/console.js");

/// The sections of the admin console, in the navigation's order.
pub const SECTIONS: [(&str, &str); 6] = [
    ("/admin", "Overview"),
    ("/admin/customers", "Customers"),
    ("/admin/plans", "Plans"),
    ("/admin/revenue", "Revenue"),
    ("/admin/security", "Security"),
    ("/admin/operations", "Operations"),
];

/// What the frame needs to know about the request.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The navigation entry to mark current; None outside the admin sections.
    pub section: Option<&'a str>,
    /// The signed-in session's CSRF token (for the sign-out form); None when signed out.
    pub csrf: Option<&'a str>,
    /// Admin navigation shown (admins only).
    pub admin: bool,
}

pub fn page(frame: Frame<'_>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · Entitlements" }
                link rel="stylesheet" href="/console/console.css";
                script src="/console/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    span class="brand" { "Entitlements" }
                    @if frame.admin {
                        nav aria-label="Console" {
                            ul {
                                @for (href, label) in SECTIONS {
                                    li {
                                        @if frame.section == Some(href) {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(csrf) = frame.csrf {
                        div class="me" {
                            a href="/account" { "My account" }
                            form method="post" action="/sign-out" class="inline" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" class="link" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (frame.title) }
                    (body)
                }
            }
        }
    };
    ([(header::CACHE_CONTROL, "no-store")], Html(markup.into_string())).into_response()
}

pub fn error_page(status: StatusCode, title: &str, message: &str) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Entitlements" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                main id="main" {
                    h1 { (title) }
                    p role="alert" class="error" data-status=(status.as_u16()) { (message) }
                    p { a href="/admin" { "Console" } " · " a href="/account" { "Account" } " · " a href="/sign-in" { "Sign in" } }
                }
            }
        }
    };
    Html(markup.into_string())
}

/// A hidden CSRF field for a form of this session.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// Cents as money: `$1,234.56` (USD) or `1,234.56 EUR`.
pub fn money(cents: i64, currency: &str) -> String {
    let negative = cents < 0;
    let cents = cents.unsigned_abs();
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if negative { "-" } else { "" };
    if currency.eq_ignore_ascii_case("usd") {
        format!("{sign}${grouped}.{:02}", cents % 100)
    } else {
        format!("{sign}{grouped}.{:02} {}", cents % 100, currency.to_uppercase())
    }
}

/// A number as JSON shows it (numeric limits come as JSON numbers), without a trailing `.0`.
pub fn number(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "unlimited".into(),
        serde_json::Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// A usage bar: a <meter> (read by screen readers as a value of a range) with the figures in
/// words beside it.
pub fn usage_bar(feature: &str, used: f64, limit: Option<f64>, resets_at: Option<&str>) -> Markup {
    let label = match limit {
        Some(l) => format!("{} of {}", trim_float(used), trim_float(l)),
        None => format!("{} (unlimited)", trim_float(used)),
    };
    html! {
        div class="usage" data-feature=(feature) data-used=(trim_float(used)) data-limit=(limit.map(trim_float).unwrap_or_default()) {
            @if let Some(l) = limit {
                meter min="0" max=(trim_float(l.max(0.0))) value=(trim_float(used.min(l).max(0.0))) high=(trim_float(l * 0.8)) optimum="0"
                    aria-label=(format!("{feature}: {label}")) {}
            }
            span class="figures" { (label) }
            @if let Some(r) = resets_at { span class="resets" { " · resets " time datetime=(r) { (r) } } }
        }
    }
}

pub fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A notice after an action (`?done=...`), announced to screen readers.
pub fn notice(text: Option<&str>) -> Markup {
    html! { @if let Some(t) = text { p role="status" class="notice" { (t) } } }
}

/// The static files.
pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], STYLE)
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        SCRIPT,
    )
}

/// Pre-rendered markup (the charts' SVG, built by charts.rs from numbers only).
pub fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_groups_thousands_and_names_other_currencies() {
        assert_eq!(money(123456789, "usd"), "$1,234,567.89");
        assert_eq!(money(-5, "usd"), "-$0.05");
        assert_eq!(money(100000, "eur"), "1,000.00 EUR");
        assert_eq!(money(0, "usd"), "$0.00");
    }

    #[test]
    fn text_from_the_database_is_escaped() {
        let m = usage_bar("<script>", 1.0, Some(2.0), Some("\"><b>"));
        let s = m.into_string();
        assert!(!s.contains("<script>") && !s.contains("\"><b>"), "{s}");
    }
}
