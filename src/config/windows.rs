//! `activation_windows` and `time_zone` in `[repositories.hosts.<name>]`, and
//! `[[repositories.windows]]`: parsed into a `deploy::windows::WindowPolicy` at start-up, so
//! a window or zone the server cannot read stops it there, naming the key.

use std::collections::BTreeMap;

use super::{ConfigError, RawHost, RawWindowGroup};
use crate::deploy::rollout::Selector;
use crate::deploy::windows::{Group, WindowPolicy, Windows};

/// Activation windows: each host's own and the groups', parsed and their zones found.
pub fn window_policy(
    hosts: &BTreeMap<String, RawHost>,
    groups: Vec<RawWindowGroup>,
) -> Result<WindowPolicy, ConfigError> {
    let windows = |key: &'static str, what: &str, text: Vec<String>, zone: Option<&str>| {
        let bad = |reason: String| ConfigError::Invalid { key, reason: format!("{what}: {reason}") };
        if text.is_empty() {
            return Err(bad("no windows: leave the key out to allow any time".into()));
        }
        let parsed = text.iter().map(|w| w.parse().map_err(|e| bad(format!("{e}")))).collect::<Result<_, _>>()?;
        let time_zone = match zone {
            None => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|e| bad(format!("{name:?} is not a time zone this server knows ({e})")))?,
        };
        Ok(Windows { text, windows: parsed, time_zone })
    };
    let mut policy = WindowPolicy::default();
    for (name, host) in hosts {
        match (&host.activation_windows, &host.time_zone) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "repositories.hosts.time_zone",
                    reason: format!("host {name}: time_zone without activation_windows"),
                })
            }
            (Some(text), zone) => {
                let what = format!("host {name}");
                let w = windows("repositories.hosts.activation_windows", &what, text.clone(), zone.as_deref())?;
                policy.hosts.insert(name.clone(), w);
            }
        }
    }
    for (i, group) in groups.into_iter().enumerate() {
        if group.hosts.is_empty() {
            return Err(ConfigError::Invalid {
                key: "repositories.windows.hosts",
                reason: format!("windows entry {}: selects no host", i + 1),
            });
        }
        let what = format!("windows entry {}", i + 1);
        let w = windows(
            "repositories.windows.activation_windows",
            &what,
            group.activation_windows,
            group.time_zone.as_deref(),
        )?;
        let hosts = group.hosts.iter().map(|h| Selector::parse(h)).collect();
        policy.groups.push(Group { hosts, windows: w });
    }
    Ok(policy)
}
