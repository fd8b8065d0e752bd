//! `zdm verify`: counts the rows that break the current phase's invariant.

use super::connect;
use crate::config::Config;
use crate::migration::control;
use crate::startup::StartupError;

pub(super) fn run_verify(config: &Config) -> Result<(), StartupError> {
    let (phase, result) = control::verify_now(&mut connect(config)?.conn)?;
    println!("verify ({phase}): {} divergent row(s)", result.divergent);
    if !result.sample_ids.is_empty() {
        println!("  e.g. ids {:?}", result.sample_ids);
    }
    Ok(())
}
