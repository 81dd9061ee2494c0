//! `stop --pipeline --wait`: every execution of the batch followed at once, one row each
//! (execution, account and region, status, the time since its stop, what holds it). On a
//! terminal, a table redrawn in place from the moment the batch is answered; elsewhere, one
//! line per change of a row.

use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::view::{self, Origin, emit};
use crate::{
    holding,
    pb::{self, step::Metadata},
};

/// One execution's row.
struct Row {
    origin: Option<Origin>,
    status: String,
    holds: String,
    /// Since when its watch is broken.
    stale: Option<DateTime<Utc>>,
}

/// The rows, shared with the task that redraws the table every second.
struct Rows(BTreeMap<String, Row>);

/// The table (or the lines) of a batch's executions.
pub(crate) struct Fleet {
    rows: Arc<Mutex<Rows>>,
    live: Option<(ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl Fleet {
    /// Rows for the executions the batch stopped, from its answers, shown at once.
    pub(crate) fn new(stopped: &[(String, pb::StopExecutionResponse)]) -> Arc<Self> {
        let rows = Rows(
            stopped
                .iter()
                .map(|(arn, answer)| {
                    let row = Row {
                        origin: view::stop_origin(answer.first_requested_at.as_ref()),
                        status: view::status_name(answer.status()).to_string(),
                        holds: String::new(),
                        stale: None,
                    };
                    (arn.clone(), row)
                })
                .collect(),
        );
        let rows = Arc::new(Mutex::new(rows));
        let live = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout_with_hz(4));
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix}\n{msg}") {
                bar.set_style(style.tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "));
            }
            bar.enable_steady_tick(Duration::from_millis(500));
            let refresher = super::view::redraw_every_second(&bar, &rows, Rows::draw);
            (bar, refresher)
        });
        let fleet = Arc::new(Self { rows, live });
        if let Ok(rows) = fleet.rows.lock() {
            match &fleet.live {
                Some((bar, _)) => rows.draw(bar),
                None => rows.0.keys().for_each(|arn| rows.line(arn)),
            }
        }
        fleet
    }

    /// Changes `arn`'s row; shows it when it changed.
    fn change(&self, arn: &str, change: impl FnOnce(&mut Row)) {
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        let Some(row) = rows.0.get_mut(arn) else {
            return;
        };
        let before = (row.status.clone(), row.holds.clone(), row.stale);
        change(row);
        if before == (row.status.clone(), row.holds.clone(), row.stale) {
            return;
        }
        match &self.live {
            Some((bar, _)) => rows.draw(bar),
            None => rows.line(arn),
        }
    }

    /// The end: the table is printed once more, for good.
    pub(crate) fn finish(&self) {
        if let Some((bar, refresher)) = &self.live {
            refresher.abort();
            bar.finish_and_clear();
            if let Ok(rows) = self.rows.lock() {
                rows.table().iter().for_each(|line| emit(line));
            }
        }
    }
}

impl view::Rows for Fleet {
    fn show(&self, arn: &str, execution: &pb::Execution) {
        self.change(arn, |row| {
            row.status = view::status_name(execution.status()).to_string();
            row.holds = holds(execution);
            row.stale = None;
        });
    }

    fn stale(&self, arn: &str) {
        self.change(arn, |row| {
            row.stale.get_or_insert_with(Utc::now);
        });
    }

    fn live_again(&self, arn: &str) {
        self.change(arn, |row| row.stale = None);
    }
}

impl Rows {
    fn cells(arn: &str, row: &Row, now: DateTime<Utc>) -> Vec<String> {
        let (account, region) = view::account_and_region(arn);
        let status = match row.stale {
            Some(since) => format!(
                "{} (stale since {}; reconnecting)",
                row.status,
                holding::when(since)
            ),
            None => row.status.clone(),
        };
        vec![
            view::short_arn(arn).to_string(),
            account,
            region,
            status,
            row.origin
                .map_or_else(|| "-".to_string(), |origin| origin.clock(now)),
            if row.holds.is_empty() {
                "-".to_string()
            } else {
                row.holds.clone()
            },
        ]
    }

    fn table(&self) -> Vec<String> {
        let now = Utc::now();
        let mut rows = vec![
            [
                "EXECUTION",
                "ACCOUNT",
                "REGION",
                "STATUS",
                "SINCE STOP",
                "WHAT HOLDS IT",
            ]
            .map(String::from)
            .to_vec(),
        ];
        rows.extend(self.0.iter().map(|(arn, row)| Self::cells(arn, row, now)));
        view::table(&rows)
    }

    fn draw(&self, bar: &ProgressBar) {
        let ended = self
            .0
            .values()
            .filter(|row| !matches!(row.status.as_str(), "Stopping" | "Executing" | "Unknown"))
            .count();
        bar.set_prefix(format!("{ended} of {} executions ended", self.0.len()));
        bar.set_message(self.table().join("\n"));
    }

    /// `arn`'s row as one plain line.
    fn line(&self, arn: &str) {
        let Some(row) = self.0.get(arn) else {
            return;
        };
        let [short, account, region, status, since, holds] =
            <[String; 6]>::try_from(Self::cells(arn, row, Utc::now())).unwrap_or_default();
        let held = if holds == "-" {
            String::new()
        } else {
            format!("; held by {holds}")
        };
        emit(&format!(
            "[{since}] {short} ({account} {region}) {status}{held}"
        ));
    }
}

/// What holds a Stopping execution, in a few words per step.
fn holds(execution: &pb::Execution) -> String {
    execution
        .steps
        .iter()
        .filter(|step| !step.blocking_reason.is_empty())
        .map(|step| match &step.metadata {
            Some(Metadata::Callback(callback)) => {
                format!("{} (Callback) token {}", step.name, callback.callback_token)
            }
            Some(Metadata::Lambda(_)) => {
                let latest = super::view::started(step)
                    .map(|start| {
                        format!(
                            ", ends by {}",
                            holding::when(holding::lambda_latest_end(start))
                        )
                    })
                    .unwrap_or_default();
                format!("{} (Lambda){latest}", step.name)
            }
            _ => step.name.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
