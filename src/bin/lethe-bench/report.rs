//! Figures, medians, the result table and the target ratios.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Figures of one round (or, in [`Row`], the medians over rounds).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Figures {
    /// Successful operations: appends (HTTP: requests answered 2xx), baseline writes, catch-up
    /// reads (one per event), forgets.
    pub ops: u64,
    /// Failed operations (HTTP answers other than 2xx); not counted in `ops`.
    pub failures: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Appends the group-commit writer put into one database transaction, on average.
    pub appends_per_txn: Option<f64>,
    /// The server process's peak resident set size (`VmHWM`), in MiB (HTTP scenarios).
    pub peak_rss_mb: Option<f64>,
}

/// One line of the result table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub engine: &'static str,
    /// `on`, `off`, or `-` where it does not apply (baselines).
    pub encrypted: &'static str,
    pub writers: usize,
    pub events_per_op: usize,
    /// Median of each figure over the rounds (figure by figure).
    pub median: Figures,
    pub rounds: Vec<Figures>,
}

/// Nearest-rank percentile of sorted latencies, in milliseconds (0 when there are none).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.is_empty() {
        0.0
    } else if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The median of each figure over the rounds, taken figure by figure.
pub fn median_figures(rounds: &[Figures]) -> Figures {
    let of = |get: fn(&Figures) -> f64| median(&mut rounds.iter().map(get).collect::<Vec<_>>());
    let of_some = |get: fn(&Figures) -> Option<f64>| {
        let mut values: Vec<f64> = rounds.iter().filter_map(get).collect();
        (!values.is_empty()).then(|| median(&mut values))
    };
    Figures {
        ops: of(|f| f.ops as f64).round() as u64,
        // Not a median: any round with failures shows.
        failures: rounds.iter().map(|f| f.failures).max().unwrap_or(0),
        seconds: of(|f| f.seconds),
        ops_per_sec: of(|f| f.ops_per_sec),
        events_per_sec: of(|f| f.events_per_sec),
        p50_ms: of(|f| f.p50_ms),
        p99_ms: of(|f| f.p99_ms),
        appends_per_txn: of_some(|f| f.appends_per_txn),
        // Not a median either: the peak is the figure that matters.
        peak_rss_mb: rounds.iter().filter_map(|f| f.peak_rss_mb).reduce(f64::max),
    }
}

/// The results as a Markdown table (readable as is, and pasteable into BENCHMARKS.md).
pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "engine",
        "enc",
        "writers",
        "ops/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "appends/txn",
        "peak RSS MiB",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let m = &row.median;
            vec![
                row.scenario.clone(),
                row.engine.to_owned(),
                row.encrypted.to_owned(),
                row.writers.to_string(),
                format!("{:.0}", m.ops_per_sec),
                format!("{:.0}", m.events_per_sec),
                format!("{:.2}", m.p50_ms),
                format!("{:.2}", m.p99_ms),
                m.appends_per_txn.map_or("-".to_owned(), |v| format!("{v:.1}")),
                m.peak_rss_mb.map_or("-".to_owned(), |v| format!("{v:.0}")),
            ]
        })
        .collect();
    markdown(&header, &cells, 3)
}

/// A Markdown table; columns from `first_numeric` on are right-aligned.
pub fn markdown(header: &[&str], cells: &[Vec<String>], first_numeric: usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |values: &[String]| {
        out.push('|');
        for (column, (value, &width)) in values.iter().zip(&widths).enumerate() {
            if column >= first_numeric {
                let _ = write!(out, " {value:>width$} |");
            } else {
                let _ = write!(out, " {value:<width$} |");
            }
        }
        out.push('\n');
    };
    line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(column, &width)| {
            if column >= first_numeric {
                format!("{}:", "-".repeat(width - 1))
            } else {
                "-".repeat(width)
            }
        })
        .collect();
    line(&rule);
    for cells in cells {
        line(cells);
    }
    out.trim_end().to_owned()
}

/// What a target's value must be.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

/// One target: a figure of this run, compared with its goal; or, without a goal, a comparison
/// printed for information (how Lethe stands against a baseline the issue sets no goal for).
#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    /// How the value was computed, e.g. `http-single@64 / message-db@64`.
    pub formula: String,
    pub value: Option<f64>,
    /// `None` for an informational comparison.
    pub goal: Option<Goal>,
    pub unit: &'static str,
    /// `None` when a figure it needs was not measured in this run, or there is no goal.
    pub met: Option<bool>,
}

impl Target {
    pub fn new(name: &str, formula: String, value: Option<f64>, goal: Goal, unit: &'static str) -> Self {
        let met = value.map(|v| match goal {
            Goal::AtLeast(goal) => v >= goal,
            Goal::AtMost(goal) => v <= goal,
        });
        Self {
            name: name.to_owned(),
            formula,
            value,
            goal: Some(goal),
            unit,
            met,
        }
    }

    /// A comparison with no goal to meet.
    pub fn informational(name: &str, formula: String, value: Option<f64>, unit: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            formula,
            value,
            goal: None,
            unit,
            met: None,
        }
    }
}

/// The targets as a Markdown table.
pub fn targets_table(targets: &[Target]) -> String {
    let header = ["target", "measured as", "value", "goal", "met"];
    let cells: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let value = |v: f64| match t.unit {
                "x" => format!("{v:.2}x"),
                "%" => format!("{v:.1}%"),
                unit => format!("{v:.0} {unit}"),
            };
            vec![
                t.name.clone(),
                t.formula.clone(),
                t.value.map_or("not measured".to_owned(), value),
                match t.goal {
                    Some(Goal::AtLeast(goal)) => format!(">= {}", value(goal)),
                    Some(Goal::AtMost(goal)) => format!("<= {}", value(goal)),
                    None => "(information)".to_owned(),
                },
                match t.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    markdown(&header, &cells, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }

    #[test]
    fn medians_are_taken_figure_by_figure() {
        let figures = |ops_per_sec: f64, rss: Option<f64>| Figures {
            ops: 1,
            failures: 0,
            seconds: 1.0,
            ops_per_sec,
            events_per_sec: ops_per_sec,
            p50_ms: 1.0,
            p99_ms: 2.0,
            appends_per_txn: None,
            peak_rss_mb: rss,
        };
        let m = median_figures(&[figures(3.0, Some(10.0)), figures(1.0, Some(30.0)), figures(2.0, None)]);
        assert_eq!(m.ops_per_sec, 2.0);
        assert_eq!(m.peak_rss_mb, Some(30.0));
        assert_eq!(m.appends_per_txn, None);
    }
}
