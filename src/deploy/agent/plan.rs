//! PURE: what the agent does, given its state, the activation mode and what it observed. The
//! steps are data ([`Step`]); `apply.rs` runs them.
//!
//! The two-phase switch keeps one invariant: until the health checks pass, neither the system
//! profile nor the bootloader changes, so whatever happens (a crash, a power cut, a reboot by
//! a panicking operator) the host boots the previous generation.

use crate::nix::system::{BootFiles, SwitchAction};

use super::config::{Activation, RebootPolicy};

/// How many times a deploy is started before a leftover `pending` record is rolled back:
/// the first run and one retry. The retry covers an agent restarted by the activation itself
/// or by a reboot; a deploy that stops the agent twice is not going to succeed.
pub const MAX_ATTEMPTS: u32 = 2;
/// How many times realising a generation may fail before it is given up.
pub const MAX_DOWNLOADS: u32 = 3;

/// One thing done to the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `<system>/bin/switch-to-configuration <action>`.
    Activate(String, SwitchAction),
    /// `nix-env -p <profile> --set <system>`.
    SetProfile(String),
}

/// The steps before the health checks: the new system running, nothing made permanent.
pub fn trial(activation: Activation, new: &str) -> Vec<Step> {
    match activation {
        Activation::Switch | Activation::Test => vec![Step::Activate(new.to_owned(), SwitchAction::Test)],
        Activation::Boot => Vec::new(),
    }
}

/// The steps after the health checks passed: the new system made the boot default.
pub fn commit(activation: Activation, new: &str) -> Vec<Step> {
    match activation {
        Activation::Switch | Activation::Boot => {
            vec![Step::SetProfile(new.to_owned()), Step::Activate(new.to_owned(), SwitchAction::Boot)]
        }
        Activation::Test => Vec::new(),
    }
}

/// What `switch-to-configuration dry-activate` said the switch would do, in one line: its
/// `would stop|restart|reload|start the following units: …` lines, as `restart a, b; start
/// c` (`None` when it names no unit).
pub fn dry_activation_summary(lines: &[String]) -> Option<String> {
    let parts: Vec<String> = lines
        .iter()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("would ")?;
            let (verb, units) = rest.split_once(" the following units: ")?;
            matches!(verb, "stop" | "restart" | "reload" | "start").then(|| format!("{verb} {}", units.trim()))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Whether a deploy in `activation` mode makes a new generation of the system profile.
pub fn sets_profile(activation: Activation) -> bool {
    commit(activation, "").iter().any(|step| matches!(step, Step::SetProfile(_)))
}

/// Why there is no way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPrevious;

/// The steps that return the host, after a failure, to what booted before (`previous`, the
/// profile's target then) and what ran before (`running`, `/run/current-system` then, when
/// known; otherwise `previous`), given what the profile points at now.
///
/// The running system is re-activated with `switch-to-configuration test`, not `switch`:
/// `switch` would also reinstall the bootloader, which in the usual case was never touched
/// (the profile is set only after the checks pass), so `test` restores exactly the state
/// before the deploy, without one more bootloader write that could itself fail halfway. Only
/// when the profile did move (a failure in or after the commit steps, or an agent that died
/// there) are the profile and the bootloader restored first, with `boot`. `test` mode never
/// touches them, not even on the way back.
pub fn rollback(
    activation: Activation,
    previous: Option<&str>,
    running: Option<&str>,
    profile_now: Option<&str>,
) -> Result<Vec<Step>, NoPrevious> {
    let mut steps = Vec::new();
    if activation != Activation::Test && profile_now != previous {
        let previous = previous.ok_or(NoPrevious)?;
        steps.push(Step::SetProfile(previous.to_owned()));
        steps.push(Step::Activate(previous.to_owned(), SwitchAction::Boot));
    }
    if activation != Activation::Boot {
        let running = running.or(previous).ok_or(NoPrevious)?;
        steps.push(Step::Activate(running.to_owned(), SwitchAction::Test));
    }
    Ok(steps)
}

/// What to do with a `pending` record found at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Run the deploy again (its attempt count goes up first).
    Retry,
    /// Give up: return to the previous generation.
    RollBack,
}

/// See [`MAX_ATTEMPTS`].
pub fn resume(attempts: u32) -> Resume {
    if attempts < MAX_ATTEMPTS {
        Resume::Retry
    } else {
        Resume::RollBack
    }
}

/// What `systemctl is-system-running` says about the new system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Good.
    Pass,
    /// Still starting: ask again.
    Wait,
    /// Bad, with why.
    Fail(String),
}

/// `after` is the state since the switch; `before` the state before it, when known. A system
/// that was already degraded before the deploy does not fail it for being degraded after: the
/// deploy did not cause it, and refusing would block the fix.
pub fn system_state(before: Option<&str>, after: &str) -> Verdict {
    match after {
        "running" => Verdict::Pass,
        "starting" | "initializing" => Verdict::Wait,
        "degraded" if before == Some("degraded") => Verdict::Pass,
        other => Verdict::Fail(format!("systemctl is-system-running: {other}")),
    }
}

/// Whether the new generation needs a reboot to be fully running: `boot` mode always does
/// (unless it is the booted system); `switch` when its kernel, initrd or kernel modules differ
/// from the booted system's (as NixOS's `system.autoUpgrade` decides); `test` never (it does
/// not change what boots). Without a known booted system (not NixOS) nothing is claimed.
pub fn needs_reboot(activation: Activation, new: (&str, &BootFiles), booted: Option<(&str, &BootFiles)>) -> bool {
    match (activation, booted) {
        (Activation::Test, _) | (Activation::Switch, None) => false,
        (Activation::Boot, None) => true,
        (Activation::Boot, Some((path, _))) => path != new.0,
        (Activation::Switch, Some((_, files))) => files != new.1,
    }
}

/// Whether to reboot now, for the confirmed system `needed` that still differs from the booted
/// one: only when the policy allows, inside its window, and never twice for the same system (a
/// host whose reboot did not bring up the new kernel must not reboot in a loop).
pub fn reboot_now(policy: &RebootPolicy, unix_secs: u64, needed: Option<&str>, rebooted_for: Option<&str>) -> bool {
    let RebootPolicy::WhenNeeded { window } = policy else {
        return false;
    };
    needed.is_some() && needed != rebooted_for && window.map_or(true, |w| w.is_open(unix_secs))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::nix::system::SwitchAction::{Boot, Test};
    use Activation as A;

    #[test]
    fn dry_activation_names_the_units_a_switch_touches() {
        // As NixOS's switch-to-configuration prints it.
        let lines: Vec<String> = [
            "would stop the following units: old.service",
            "would activate the configuration...",
            "would restart systemd",
            "would restart the following units: nginx.service, sshd.service",
            "would start the following units: new.timer",
            "would reload the following units: dbus.service",
            "would frobnicate the following units: x",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            dry_activation_summary(&lines).as_deref(),
            Some("stop old.service; restart nginx.service, sshd.service; start new.timer; reload dbus.service")
        );
        assert_eq!(dry_activation_summary(&["would activate the configuration...".into()]), None);
        assert_eq!(dry_activation_summary(&[]), None);
    }

    const OLD: &str = "/nix/store/00000000000000000000000000000000-old";
    const NEW: &str = "/nix/store/11111111111111111111111111111111-new";

    fn activate(path: &str, action: SwitchAction) -> Step {
        Step::Activate(path.into(), action)
    }

    #[test]
    fn forward_steps_per_mode() {
        assert_eq!(trial(A::Switch, NEW), [activate(NEW, Test)]);
        assert_eq!(commit(A::Switch, NEW), [Step::SetProfile(NEW.into()), activate(NEW, Boot)]);
        assert_eq!(trial(A::Boot, NEW), []);
        assert_eq!(commit(A::Boot, NEW), [Step::SetProfile(NEW.into()), activate(NEW, Boot)]);
        assert_eq!(trial(A::Test, NEW), [activate(NEW, Test)]);
        assert_eq!(commit(A::Test, NEW), []);
    }

    #[track_caller]
    fn check_rollback(
        mode: Activation,
        (previous, running, now): (Option<&str>, Option<&str>, Option<&str>),
        expected: Result<Vec<Step>, NoPrevious>,
    ) {
        assert_eq!(rollback(mode, previous, running, now), expected);
    }

    #[test]
    fn rollback_steps() {
        const RUN: &str = "/nix/store/22222222222222222222222222222222-tested-by-hand";
        let restore = || vec![Step::SetProfile(OLD.into()), activate(OLD, Boot)];
        // The usual case: the checks failed, nothing permanent happened.
        check_rollback(A::Switch, (Some(OLD), Some(OLD), Some(OLD)), Ok(vec![activate(OLD, Test)]));
        check_rollback(A::Switch, (Some(OLD), None, Some(OLD)), Ok(vec![activate(OLD, Test)]));
        // Something else ran than what boots: each goes back to what it was.
        check_rollback(A::Switch, (Some(OLD), Some(RUN), Some(OLD)), Ok(vec![activate(RUN, Test)]));
        // The commit ran (or the agent died in it): profile and bootloader back first.
        check_rollback(A::Switch, (Some(OLD), None, Some(NEW)), Ok([restore(), vec![activate(OLD, Test)]].concat()));
        check_rollback(A::Boot, (Some(OLD), Some(OLD), Some(NEW)), Ok(restore()));
        check_rollback(A::Boot, (Some(OLD), Some(OLD), Some(OLD)), Ok(vec![]));
        // `test` mode never touches the profile.
        check_rollback(A::Test, (Some(OLD), Some(RUN), Some(NEW)), Ok(vec![activate(RUN, Test)]));
        // A first deploy has nothing to return to.
        check_rollback(A::Switch, (None, None, None), Err(NoPrevious));
        check_rollback(A::Test, (None, None, None), Err(NoPrevious));
        check_rollback(A::Boot, (None, None, Some(NEW)), Err(NoPrevious));
        check_rollback(A::Boot, (None, None, None), Ok(vec![]));
        check_rollback(A::Switch, (None, Some(RUN), None), Ok(vec![activate(RUN, Test)]));
    }

    #[test]
    fn a_pending_deploy_is_retried_once() {
        assert_eq!(
            [resume(0), resume(1), resume(2), resume(7)],
            [Resume::Retry, Resume::Retry, Resume::RollBack, Resume::RollBack]
        );
    }

    #[test]
    fn system_state_verdicts() {
        assert_eq!(system_state(None, "running"), Verdict::Pass);
        assert_eq!(system_state(Some("running"), "starting"), Verdict::Wait);
        assert_eq!(
            system_state(Some("running"), "degraded"),
            Verdict::Fail("systemctl is-system-running: degraded".into())
        );
        assert_eq!(system_state(None, "degraded"), Verdict::Fail("systemctl is-system-running: degraded".into()));
        assert_eq!(system_state(Some("degraded"), "degraded"), Verdict::Pass);
        assert!(matches!(system_state(None, "maintenance"), Verdict::Fail(_)));
    }

    #[test]
    fn reboots_once_per_system_inside_the_window() {
        let window = Some("02:00-04:00".parse().unwrap());
        let (night, day) = (1_767_225_600 + 3 * 3600, 1_767_225_600 + 12 * 3600);
        let anytime = RebootPolicy::WhenNeeded { window: None };
        let nightly = RebootPolicy::WhenNeeded { window };
        assert!(reboot_now(&anytime, day, Some(NEW), None));
        assert!(reboot_now(&anytime, day, Some(NEW), Some(OLD)));
        assert!(!reboot_now(&anytime, day, Some(NEW), Some(NEW)));
        assert!(!reboot_now(&anytime, day, None, None));
        assert!(reboot_now(&nightly, night, Some(NEW), None));
        assert!(!reboot_now(&nightly, day, Some(NEW), None));
        assert!(!reboot_now(&RebootPolicy::Never, night, Some(NEW), None));
    }

    #[test]
    fn reboot_when_boot_files_change() {
        let files = |kernel: &str| BootFiles { kernel: Some(PathBuf::from(kernel)), ..Default::default() };
        let (k1, k2) = (files("/nix/store/k1"), files("/nix/store/k2"));
        assert!(!needs_reboot(A::Switch, (NEW, &k1), Some((OLD, &k1))));
        assert!(needs_reboot(A::Switch, (NEW, &k2), Some((OLD, &k1))));
        assert!(!needs_reboot(A::Switch, (NEW, &k2), None));
        assert!(!needs_reboot(A::Test, (NEW, &k2), Some((OLD, &k1))));
        assert!(needs_reboot(A::Boot, (NEW, &k1), Some((OLD, &k1))));
        assert!(!needs_reboot(A::Boot, (NEW, &k1), Some((NEW, &k1))));
        assert!(needs_reboot(A::Boot, (NEW, &k1), None));
    }
}
