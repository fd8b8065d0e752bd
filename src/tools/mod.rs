//! The tools beside the app, which use it and which nothing in the app uses: the proof under
//! live traffic (`zdm demo`), the figures (`zdm bench`), the data they start from (`zdm seed`,
//! scratch databases).

pub mod bench;
pub mod demo;
pub mod scratch;
pub mod seed;
pub mod stats;
