//! Soup searches: greedy and pruned soups scored by the user's evaluator.

pub mod candidate;
pub mod groups;
pub mod report;
pub mod scorer;
pub mod sequential;
