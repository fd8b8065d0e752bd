//! `zdm serve` (the default): the web app and the API.

use clap::Args;

#[derive(Debug, Default, Args)]
pub(super) struct ServeArgs {
    /// Break this instance on purpose (`lagging-v1`, `lose-writes=N`): only `zdm demo --fault`
    /// passes it, to the instances it starts, so that its audit has something to catch. Hidden
    /// because no one else should: the instance says so loudly at start.
    #[arg(long, hide = true, value_name = "FAULT")]
    pub(super) inject_fault: Vec<crate::faults::InjectedFault>,
}
