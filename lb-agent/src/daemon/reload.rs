//! Reloads (SIGHUP and `lb-agent reload`): re-read the config file and
//! apply it to the running agent and its VRRP instance.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{hide_secrets, lock, CheckTargetsFeed};
use crate::{
    agent::Agent,
    config::{Config, VrrpConfig},
    vrrp::instance::{PreparedVrrp, VrrpContext, VrrpInstance},
};

/// A reload to run, and where its outcome goes (`None`: SIGHUP, the log
/// has it).
pub(super) struct ReloadRequest {
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// What a reload acts on; owned by the reload task, which runs reloads
/// one at a time.
pub(super) struct Reloader {
    pub path: std::path::PathBuf,
    pub agent: Arc<Mutex<Agent>>,
    pub check_targets: CheckTargetsFeed,
    pub vrrp: Option<VrrpInstance>,
    pub vrrp_context: Option<VrrpContext>,
}

impl Reloader {
    /// Re-reads the config file and applies it: services, backends, health
    /// checks and timeouts to the maps; changed `[vrrp]` settings by
    /// replacing the VRRP instance (the floating IP stays where it is). An
    /// invalid file, or one that changes what needs a restart, changes
    /// nothing.
    pub async fn reload(&mut self) -> Result<String, String> {
        let shown = self.path.display().to_string();
        let (new, text) = read_config(&self.path)?;
        let prepared = self.prepare_vrrp(new.vrrp.as_ref())?;
        let summary = {
            let Some(mut agent) = lock(&self.agent) else {
                return Err(
                    "agent state is poisoned by an earlier panic; restart the agent".into(),
                );
            };
            let summary = agent.reload(new).map_err(|error| {
                let message = error.located(&shown, &text);
                warn!(config = %shown, error = %message, "reload refused");
                message
            })?;
            self.check_targets.publish(&agent);
            summary
        };
        if let Some(prepared) = prepared {
            self.replace_vrrp(prepared).await?;
        }
        info!(config = %shown, changes = %summary, "config reloaded");
        Ok(format!("reloaded {shown}: {summary}"))
    }

    /// A new VRRP instance for changed `[vrrp]` settings, ready to start
    /// (`None`: unchanged). Adding or removing `[vrrp]` is refused.
    fn prepare_vrrp(&self, new: Option<&VrrpConfig>) -> Result<Option<PreparedVrrp>, String> {
        let running = self.vrrp.as_ref().map(|v| &v.config);
        match (new, running, &self.vrrp_context) {
            (new, running, _) if new == running => Ok(None),
            (Some(new), Some(_), Some(context)) => PreparedVrrp::new(context, new)
                .map(Some)
                .map_err(|error| format!("[vrrp]: {error:#}; nothing was changed")),
            _ => Err(format!(
                "{}: adding or removing [vrrp] needs a restart of the agent (nothing was changed)",
                self.path.display()
            )),
        }
    }

    /// Hands over from the running instance to `prepared`.
    async fn replace_vrrp(&mut self, prepared: PreparedVrrp) -> Result<(), String> {
        if let Some(old) = self.vrrp.take() {
            old.handover().await;
        }
        let started = prepared.start().await.map_err(|error| {
            error!(%error, "the reloaded VRRP instance did not start; VRRP is stopped until the agent restarts");
            format!("[vrrp]: {error:#}; the config was applied but VRRP is stopped: restart the agent")
        })?;
        self.vrrp = Some(started);
        info!("VRRP instance restarted with the new settings");
        Ok(())
    }

    /// Resigns and releases the floating IP (before the data path goes).
    pub async fn shutdown(&mut self) {
        if let Some(instance) = self.vrrp.take() {
            instance.shutdown().await;
        }
    }
}

/// The config at `path` and its text (for locating errors).
fn read_config(path: &Path) -> Result<(Config, String), String> {
    let stays = |error: &dyn std::fmt::Display| format!("{error}\nthe running config stays");
    let text = crate::config::read_text(path).map_err(|error| stays(&error))?;
    let config =
        Config::parse(&text, &path.display().to_string()).map_err(|error| stays(&error))?;
    hide_secrets(&config);
    Ok((config, text))
}
