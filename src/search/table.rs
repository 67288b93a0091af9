//! The table a benchmark suite produces: one row per model, one column per
//! evaluator and an average column, written as Markdown, CSV or JSON (`soup
//! evaluate`'s outputs, and a section of a search's report).
//!
//! Scores are printed as the shortest decimal that reads back as the same number
//! ([`format_score`]), as in the reports. A failed evaluation is an empty cell
//! (`null` in JSON) whose reason is listed below the Markdown table and in the
//! JSON's `"failures"`; a row with a failure has no average, since a mean over the
//! evaluators that happened to succeed would not compare with the other rows.

use std::fmt::Write as _;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::search::report::format_score;

/// Models × evaluators.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The evaluators, in the suite's order.
    pub evaluators: Vec<String>,
    /// The models (paths as given, or names like `uniform soup`), in order.
    pub models: Vec<String>,
    /// `cells[m][e]`: model `m`'s score on evaluator `e`, or why it has none.
    pub cells: Vec<Vec<Result<f64, String>>>,
}

impl Table {
    /// The mean of a row, when none of its evaluations failed.
    pub fn average(&self, model: usize) -> Option<f64> {
        let row = self.cells.get(model)?;
        let sum = row.iter().map(|c| c.as_ref().ok().copied()).sum::<Option<f64>>()?;
        (!row.is_empty()).then(|| sum / row.len() as f64)
    }

    /// Every failed evaluation: model, evaluator, reason.
    pub fn failures(&self) -> Vec<(&str, &str, &str)> {
        let mut out = Vec::new();
        for (model, row) in self.models.iter().zip(&self.cells) {
            for (evaluator, cell) in self.evaluators.iter().zip(row) {
                if let Err(reason) = cell {
                    out.push((model.as_str(), evaluator.as_str(), reason.as_str()));
                }
            }
        }
        out
    }

    /// A Markdown table, then the failures as a list.
    pub fn markdown(&self) -> String {
        let mut md = String::from("| model |");
        for e in &self.evaluators {
            let _ = write!(md, " {} |", cell(e));
        }
        md += " average |\n|---|";
        md += &"---:|".repeat(self.evaluators.len() + 1);
        md += "\n";
        for (m, (model, row)) in self.models.iter().zip(&self.cells).enumerate() {
            let _ = write!(md, "| {} |", cell(model));
            for value in row {
                match value {
                    Ok(v) => {
                        let _ = write!(md, " {} |", format_score(*v));
                    }
                    Err(_) => md += " failed |",
                }
            }
            let average = self.average(m).map(format_score).unwrap_or_default();
            let _ = writeln!(md, " {average} |");
        }
        let failures = self.failures();
        if !failures.is_empty() {
            md += "\nFailed evaluations:\n\n";
            for (model, evaluator, reason) in failures {
                let _ = writeln!(md, "- {} on {}: {}", cell(model), cell(evaluator), cell(reason));
            }
        }
        md
    }

    /// CSV (RFC 4180): a header `model,EVALUATOR…,average`, then one row per
    /// model; failed evaluations and their row's average are empty.
    pub fn csv(&self) -> String {
        let mut header = vec![csv_field("model")];
        header.extend(self.evaluators.iter().map(|e| csv_field(e)));
        header.push(csv_field("average"));
        let mut out = header.join(",") + "\n";
        for (m, (model, row)) in self.models.iter().zip(&self.cells).enumerate() {
            let mut fields = vec![csv_field(model)];
            fields.extend(
                row.iter().map(|c| c.as_ref().map(|v| format_score(*v)).unwrap_or_default()),
            );
            fields.push(self.average(m).map(format_score).unwrap_or_default());
            out += &fields.join(",");
            out += "\n";
        }
        out
    }
}

/// `{"evaluators": [...], "models": [...], "scores": {MODEL: {EVALUATOR: score or
/// null}}, "failures": {MODEL: {EVALUATOR: reason}}}`, every object in the
/// table's order; `failures` holds only the failed evaluations.
impl Serialize for Table {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut table = serializer.serialize_struct("Table", 4)?;
        table.serialize_field("evaluators", &self.evaluators)?;
        table.serialize_field("models", &self.models)?;
        table.serialize_field("scores", &Rows { table: self, failures: false })?;
        table.serialize_field("failures", &Rows { table: self, failures: true })?;
        table.end()
    }
}

/// The `scores` or `failures` object of a table.
struct Rows<'a> {
    table: &'a Table,
    failures: bool,
}

struct Row<'a> {
    evaluators: &'a [String],
    cells: &'a [Result<f64, String>],
    failures: bool,
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (model, cells) in self.table.models.iter().zip(&self.table.cells) {
            if self.failures && cells.iter().all(Result::is_ok) {
                continue;
            }
            let row = Row { evaluators: &self.table.evaluators, cells, failures: self.failures };
            map.serialize_entry(model, &row)?;
        }
        map.end()
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (evaluator, cell) in self.evaluators.iter().zip(self.cells) {
            match (cell, self.failures) {
                (Ok(score), false) => map.serialize_entry(evaluator, score)?,
                (Err(_), false) => map.serialize_entry(evaluator, &None::<f64>)?,
                (Err(reason), true) => map.serialize_entry(evaluator, reason)?,
                (Ok(_), true) => {}
            }
        }
        map.end()
    }
}

/// `text` made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// One CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            evaluators: vec!["val".into(), "acc,none".into()],
            models: vec!["runs/b/".into(), "runs/a|x/".into()],
            cells: vec![
                vec![Ok(0.8), Ok(0.5)],
                vec![Ok(1.0 / 3.0), Err("exited with code 1".into())],
            ],
        }
    }

    #[test]
    fn json_has_the_documented_shape_in_the_table_order() {
        let json = serde_json::to_string(&table()).unwrap();
        assert_eq!(
            json,
            r#"{"evaluators":["val","acc,none"],"models":["runs/b/","runs/a|x/"],"scores":{"runs/b/":{"val":0.8,"acc,none":0.5},"runs/a|x/":{"val":0.3333333333333333,"acc,none":null}},"failures":{"runs/a|x/":{"acc,none":"exited with code 1"}}}"#
        );
    }

    #[test]
    fn markdown_and_csv_rows_average_only_complete_rows() {
        let t = table();
        assert_eq!(t.average(0), Some(0.65));
        assert_eq!(t.average(1), None);
        let md = t.markdown();
        assert!(
            md.starts_with("| model | val | acc,none | average |\n|---|---:|---:|---:|\n"),
            "{md}"
        );
        assert!(md.contains("| runs/b/ | 0.8 | 0.5 | 0.65 |\n"), "{md}");
        assert!(md.contains("| runs/a\\|x/ | 0.3333333333333333 | failed |  |\n"), "{md}");
        assert!(md.contains("- runs/a\\|x/ on acc,none: exited with code 1"), "{md}");
        assert_eq!(
            t.csv(),
            "model,val,\"acc,none\",average\nruns/b/,0.8,0.5,0.65\nruns/a|x/,0.3333333333333333,,\n"
        );
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
    }
}
