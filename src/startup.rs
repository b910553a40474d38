//! Server assembly.
use crate::config::Settings;

/// Runs the service until a shutdown signal.
pub async fn run(_settings: Settings) -> anyhow::Result<()> {
    Ok(())
}
