//! Benchmarks: commands that print figures (never timed tests), each on a scratch database
//! or cluster of its own: `backfill` (the zdm backfill against one UPDATE), `http` (the
//! serving path against pgbench), `replicas` (the backfill's effect on a lagging replica)
//! and `pacing` (the backfill's cost to the users under a p99 budget, in demo runs).

pub mod backfill;
pub mod http;
pub mod pacing;
pub mod replicas;
