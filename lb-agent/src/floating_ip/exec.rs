//! The `exec` provider: the operator's own commands move the floating IP,
//! as keepalived's `notify_master` script did in the classic pair (the
//! DigitalOcean `assign-ip` script works unchanged:
//! `assign = "/usr/local/bin/assign-ip 203.0.113.10 $(curl -s http://169.254.169.254/metadata/v1/id)"`).
//! Commands run through `/bin/sh -c` with `LB_FLOATING_IPS` (space
//! separated), `LB_INSTANCE` and `LB_STATE`, each bounded by
//! `request_timeout`; `assign` is retried `tries` times, `retry_interval`
//! apart.

use std::{net::Ipv4Addr, time::Duration};

use tracing::{info, warn};

use super::{cancelled, FloatingIpError, Wish};
use crate::config::FloatingIpConfig;

pub struct ExecProvider {
    assign: String,
    release: Option<String>,
    check: Option<String>,
    addresses: Vec<Ipv4Addr>,
    instance: String,
    tries: u32,
    retry_interval: Duration,
    timeout: Duration,
    held: bool,
    calls: u64,
    errors: u64,
}

impl ExecProvider {
    pub fn new(
        config: &FloatingIpConfig,
        addresses: Vec<Ipv4Addr>,
        instance: &str,
    ) -> Result<Self, FloatingIpError> {
        let assign = config
            .assign
            .clone()
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                FloatingIpError::Exec(
                    "provider = \"exec\" needs vrrp.floating_ip.assign = \"command\"".into(),
                )
            })?;
        Ok(Self {
            assign,
            release: config.release.clone(),
            check: config.check.clone(),
            addresses,
            instance: instance.to_string(),
            tries: config.tries.max(1),
            retry_interval: config.retry_interval,
            timeout: config.request_timeout,
            held: false,
            calls: 0,
            errors: 0,
        })
    }

    pub fn counts(&self) -> (u64, u64) {
        (self.calls, self.errors)
    }

    pub fn held(&self) -> Vec<Ipv4Addr> {
        if self.held {
            self.addresses.clone()
        } else {
            Vec::new()
        }
    }

    /// Runs `command`; Ok(()) on exit 0, else why not.
    async fn run(&mut self, command: &str, state: &str) -> Result<(), String> {
        self.calls += 1;
        let ips: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
        let ips = ips.join(" ");
        let env = [
            ("LB_FLOATING_IPS", ips.as_str()),
            ("LB_INSTANCE", self.instance.as_str()),
            ("LB_STATE", state),
        ];
        let outcome =
            crate::shell::run(command, "floating-ip", &[], &env, Some(self.timeout)).await;
        match outcome {
            Ok(done) if done.success() => Ok(()),
            Ok(done) => {
                self.errors += 1;
                Err(format!(
                    "{command:?} failed ({}): {}",
                    done.status,
                    done.last_words()
                ))
            }
            Err(error) => {
                self.errors += 1;
                Err(format!("{command:?}: {error}"))
            }
        }
    }

    /// Runs `assign` until it succeeds (at most `tries` times).
    pub async fn assign(&mut self, wish: &Wish) -> Result<(), FloatingIpError> {
        let command = self.assign.clone();
        let mut last = String::new();
        for attempt in 1..=self.tries {
            if cancelled(wish) {
                return Err(FloatingIpError::Cancelled);
            }
            match self.run(&command, "MASTER").await {
                Ok(()) => {
                    info!(attempt, "floating IP assigned by the exec provider");
                    self.held = true;
                    return Ok(());
                }
                Err(why) => {
                    warn!(attempt, tries = self.tries, reason = %why, "exec provider: assign failed");
                    last = why;
                }
            }
            if attempt < self.tries {
                let mut watch = wish.clone();
                tokio::select! {
                    _ = tokio::time::sleep(self.retry_interval) => {}
                    _ = watch.changed() => {}
                }
            }
        }
        Err(FloatingIpError::Exec(format!(
            "assign gave up after {} tries: {last}",
            self.tries
        )))
    }

    pub async fn release(&mut self) -> Result<(), FloatingIpError> {
        self.held = false;
        let Some(command) = self.release.clone() else {
            return Ok(());
        };
        self.run(&command, "BACKUP")
            .await
            .map_err(FloatingIpError::Exec)
    }

    /// Whether `check` says the addresses are here (`None`: no check).
    pub async fn check(&mut self) -> Option<bool> {
        let command = self.check.clone()?;
        Some(self.run(&command, "CHECK").await.is_ok())
    }

    /// While master: when `check` fails, assign again.
    pub async fn reconcile(&mut self, wish: &Wish) -> Result<(), FloatingIpError> {
        match self.check().await {
            Some(false) => {
                warn!("exec provider: check says the floating IP is not here; assigning again");
                self.held = false;
                self.assign(wish).await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floating_ip::Desired;

    fn provider(assign: &str, check: Option<&str>, tries: u32) -> ExecProvider {
        let config = FloatingIpConfig {
            provider: crate::config::ProviderKind::Exec,
            assign: Some(assign.into()),
            check: check.map(Into::into),
            tries,
            retry_interval: Duration::from_millis(10),
            request_timeout: Duration::from_secs(2),
            ..FloatingIpConfig::default()
        };
        ExecProvider::new(&config, vec![Ipv4Addr::new(10, 100, 0, 100)], "lb1").expect("exec")
    }

    fn holding() -> (tokio::sync::watch::Sender<Desired>, Wish) {
        tokio::sync::watch::channel(Desired {
            hold: Some(true),
            generation: 0,
        })
    }

    #[tokio::test]
    async fn assign_gets_the_addresses_and_retries_until_it_succeeds() {
        let dir = std::env::temp_dir().join(format!("lb-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let count = dir.join("count");
        let out = dir.join("out");
        // Fails twice, then writes what it was given.
        let script = format!(
            "echo x >> {c}; [ $(wc -l < {c}) -ge 3 ] && echo \"$LB_FLOATING_IPS $LB_INSTANCE $LB_STATE\" > {o}",
            c = count.display(),
            o = out.display()
        );
        let mut p = provider(&script, None, 5);
        let (_tx, wish) = holding();
        p.assign(&wish).await.expect("third try works");
        assert_eq!(
            std::fs::read_to_string(&out).expect("out").trim(),
            "10.100.0.100 lb1 MASTER"
        );
        assert_eq!(p.counts(), (3, 2));
        assert_eq!(p.held(), vec![Ipv4Addr::new(10, 100, 0, 100)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn gives_up_after_its_tries_and_a_failing_check_assigns_again() {
        let mut p = provider("echo nope >&2; exit 3", None, 2);
        let (_tx, wish) = holding();
        let error = p.assign(&wish).await.expect_err("always fails");
        assert!(error.to_string().contains("2 tries"), "{error}");
        assert!(error.to_string().contains("nope"), "{error}");

        let mut p = provider("true", Some("false"), 1);
        p.reconcile(&wish).await.expect("assigned again");
        assert_eq!(p.counts(), (2, 1), "check failed, assign ran");
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed() {
        let mut p = provider("sleep 30", None, 1);
        p.timeout = Duration::from_millis(100);
        let (_tx, wish) = holding();
        let error = p.assign(&wish).await.expect_err("timed out");
        assert!(error.to_string().contains("timed out"), "{error}");
    }
}
