//! `[keys]`: how old a deploy key and the cache key may grow, how long a rotation may take,
//! and how early `key_expiring` warns (`deploy::rotation::expires_at`, `warn_due`).

use serde::Deserialize;

use super::ConfigError;

const DAY: i64 = 86_400;

/// `[keys]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Days after its creation a deploy key expires (default: never).
    pub deploy_max_age_days: Option<u64>,
    /// Days a rotation may wait for hosts before the current key expires (default: no limit).
    pub transition_days: Option<u64>,
    /// Days before an expiry that `key_expiring` is raised (default 14).
    pub warn_days: Option<u64>,
    /// Days after berth first signed with it that the cache key expires (default: never).
    pub cache_max_age_days: Option<u64>,
}

/// `[keys]`, validated; seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysPolicy {
    /// A deploy key's greatest age.
    pub deploy_max_age: Option<i64>,
    /// A rotation's greatest duration.
    pub transition: Option<i64>,
    /// How long before an expiry it is announced.
    pub warn_lead: i64,
    /// The cache key's greatest age, from its first use.
    pub cache_max_age: Option<i64>,
}

impl Default for KeysPolicy {
    fn default() -> Self {
        Self { deploy_max_age: None, transition: None, warn_lead: 14 * DAY, cache_max_age: None }
    }
}

impl KeysPolicy {
    /// Whether any key can expire (else nothing is ever looked at).
    pub fn expires(&self) -> bool {
        self.deploy_max_age.is_some() || self.transition.is_some() || self.cache_max_age.is_some()
    }
}

fn days(key: &'static str, value: Option<u64>, min: u64) -> Result<Option<i64>, ConfigError> {
    match value {
        None => Ok(None),
        Some(d) if (min..=36_500).contains(&d) => Ok(Some(d as i64 * DAY)),
        Some(d) => Err(ConfigError::Invalid { key, reason: format!("{d} is not between {min} and 36500 days") }),
    }
}

impl RawKeys {
    /// Checks the values: ages from one day, at most a century.
    pub fn validate(self) -> Result<KeysPolicy, ConfigError> {
        Ok(KeysPolicy {
            deploy_max_age: days("keys.deploy_max_age_days", self.deploy_max_age_days, 1)?,
            transition: days("keys.transition_days", self.transition_days, 1)?,
            warn_lead: days("keys.warn_days", self.warn_days, 0)?.unwrap_or(14 * DAY),
            cache_max_age: days("keys.cache_max_age_days", self.cache_max_age_days, 1)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_days_from_one_to_a_century() {
        let ok = RawKeys {
            deploy_max_age_days: Some(365),
            transition_days: Some(30),
            warn_days: Some(0),
            cache_max_age_days: Some(730),
        };
        assert_eq!(
            ok.validate().unwrap(),
            KeysPolicy {
                deploy_max_age: Some(365 * DAY),
                transition: Some(30 * DAY),
                warn_lead: 0,
                cache_max_age: Some(730 * DAY)
            }
        );
        let cache_only = RawKeys { cache_max_age_days: Some(1), ..Default::default() };
        assert!(cache_only.validate().unwrap().expires());
        assert_eq!(RawKeys::default().validate().unwrap(), KeysPolicy::default());
        assert!(!KeysPolicy::default().expires());
        let cases = [
            RawKeys { deploy_max_age_days: Some(0), ..Default::default() },
            RawKeys { transition_days: Some(0), ..Default::default() },
            RawKeys { warn_days: Some(36_501), ..Default::default() },
            RawKeys { deploy_max_age_days: Some(u64::MAX), ..Default::default() },
            RawKeys { cache_max_age_days: Some(0), ..Default::default() },
        ];
        for raw in cases {
            let err = raw.validate().unwrap_err().to_string();
            assert!(err.contains("keys.") && err.contains("between"), "{err}");
        }
    }
}
