//! The layout every console page shares, and the small pieces several pages show (an
//! execution's status, a time, a caller's or SageMaker's text). maud escapes every value
//! inserted here: a step name or a failure reason holding markup is shown as text; [`shown`]
//! also shows its control, bidirectional and invisible characters as escapes.

use maud::{DOCTYPE, Markup, html};

use crate::{holding, visible};

/// A whole page: `title`, the navigation, and `body`. The only script is the console's own
/// file, which only makes the live parts live: every page works without it.
pub(super) fn layout(title: &str, who: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (shown(title)) " · pipeline-control" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    nav {
                        a href="/" { "Being stopped now" }
                        a href="/history" { "History" }
                        form method="get" action="/executions" class="jump" {
                            input type="text" name="arn" placeholder="an execution or pipeline ARN" aria-label="ARN" required;
                            button type="submit" { "Open" }
                        }
                    }
                    @if let Some(who) = who {
                        p class="who" { "Signed in as " span class="principal" { (shown(who)) } }
                    }
                }
                main {
                    h1 { (shown(title)) }
                    (body)
                }
            }
        }
    }
}

/// The page of a refusal or an error.
pub(super) fn refusal(title: &str, text: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            p class="refusal" role="alert" { (shown(text)) }
        },
    )
}

/// A status as a badge (its class names the status, for the stylesheet).
pub(super) fn status(status: &str) -> Markup {
    html! { span class={ "status status-" (status.to_ascii_lowercase()) } { (status) } }
}

/// A time as the pages show it (UTC, to the second).
pub(super) fn time(time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    time.map(holding::when).unwrap_or_default()
}

/// Text from a caller or from SageMaker (a reason, a step's name or failure reason), with
/// its control, bidirectional and invisible characters shown as escapes (`\n`, `\u{202e}`):
/// a right-to-left override cannot make one name read as another. Not for form values,
/// which must carry the text as it is.
pub(super) fn shown(text: &str) -> Markup {
    html! { (visible::visible(text).as_ref()) }
}
