//! Printing the shared-init check: the warning `merge`, `greedy`, `pruned` and
//! `learned` give before any work, and the lines `angles` and `inspect` report.

use modelsoup::analysis::init_check::{check_shared_init, InitCheck};
use modelsoup::Checkpoint;

/// Pairs listed in a warning before the rest are counted.
const LISTED: usize = 5;

/// Runs the check unless `skip`, and prints a warning on stderr when the
/// ingredients look independently initialised. Never fails: it only advises.
pub fn warn_if_independent(ingredients: &[Checkpoint], labels: &[String], skip: bool) {
    if skip || ingredients.len() < 2 {
        return;
    }
    let check = check_shared_init(ingredients);
    if check.looks_independent() {
        errln!("{}\n--no-init-check skips this check.", warning(&check, labels));
    }
}

/// The warning text, naming the pairs and their measured values.
pub fn warning(check: &InitCheck, labels: &[String]) -> String {
    let mut text = format!(
        "warning: these ingredients do not look fine-tuned from one pretrained model \
         (median cosine similarity of raw weights over {}, below {}):",
        matrices(check.matrices),
        check.threshold
    );
    for pair in check.independent.iter().take(LISTED) {
        text.push_str(&format!(
            "\n  {} vs {}: {:.3}",
            labels[pair.a], labels[pair.b], pair.median_cosine
        ));
    }
    if check.independent.len() > LISTED {
        let more = check.independent.len() - LISTED;
        text.push_str(&format!("\n  … and {more} more pair{}", if more == 1 { "" } else { "s" }));
    }
    text.push_str(
        "\nFine-tunes of one model measure near 1 (typically above 0.9); independently \
         initialised models near 0. A soup of models trained from scratch usually \
         collapses to chance accuracy.",
    );
    text
}

/// A one-line summary for reports.
pub fn summary(check: &InitCheck, labels: &[String]) -> String {
    match check.lowest() {
        None => "shared-init check: no weight matrix to compare".to_owned(),
        Some(_) if check.looks_independent() => warning(check, labels),
        Some(lowest) => format!(
            "shared-init check: lowest median cosine of raw weights {lowest:.3} over {} \
             (threshold {}): looks fine-tuned from one model",
            matrices(check.matrices),
            check.threshold
        ),
    }
}

/// "1 weight matrix", "12 weight matrices".
fn matrices(n: usize) -> String {
    if n == 1 {
        "1 weight matrix".to_owned()
    } else {
        format!("{n} weight matrices")
    }
}
