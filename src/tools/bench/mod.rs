//! Benchmarks: commands that print figures (never timed tests), each on a scratch database
//! or cluster of its own: `backfill` (the zdm backfill against one UPDATE), `http` (the
//! serving path against pgbench) and `replicas` (the backfill's effect on a lagging replica).

pub mod backfill;
pub mod http;
pub mod replicas;
