//! Rebooting into a confirmed generation whose kernel, initrd or kernel modules changed, when
//! the policy allows and inside its window; and noticing that the host has booted into it.

use tracing::{error, info, warn};

use super::plan;
use super::Agent;

impl Agent {
    /// Called between polls: clears `needs_reboot` once the host runs the new boot files, and
    /// otherwise reboots when [`plan::reboot_now`] says so.
    pub(super) async fn maybe_reboot(&mut self) {
        let Some(target) = self.state.needs_reboot.clone() else {
            return;
        };
        if !self.needs_reboot(self.opts.activation, &target) {
            info!(system = target, "booted into the new boot files");
            self.state.needs_reboot = None;
            self.save_or_warn("the reboot done");
            return;
        }
        let now = u64::try_from(super::apply::now()).unwrap_or(0);
        if !plan::reboot_now(&self.opts.reboot, now, Some(&target), self.state.rebooted_for.as_deref()) {
            return;
        }
        // Recorded first: if the reboot does not bring the new kernel up, there is no second one.
        self.state.rebooted_for = Some(target.clone());
        if let Err(e) = self.save() {
            warn!("not rebooting: cannot record it first: {e}");
            self.state.rebooted_for = None;
            return;
        }
        info!(system = target, command = ?self.opts.reboot_command, "rebooting into the new generation");
        self.flush().await;
        if let Err(e) = self.system.reboot(&self.opts.reboot_command).await {
            error!("reboot failed: {e}");
        }
    }
}
