//! Soup searches: greedy and pruned soups scored by the user's evaluator.

pub mod candidate;
pub mod cmaes;
pub mod groups;
pub mod learned;
pub mod report;
pub mod scorer;
pub mod sequential;
