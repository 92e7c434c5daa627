//! Floating IP providers: where the floating addresses live while this node
//! is VRRP master. `local` puts them on the client-facing interface and
//! sends gratuitous ARPs; `digitalocean` assigns a reserved IP to this
//! droplet through the API; `exec` runs the operator's command (the classic
//! `assign-ip` script works unchanged).
//!
//! A provider call can take long (an API with retries 3 s apart), and the
//! election must never wait for it: the runner only says what it wants
//! (`ProviderHandle::hold`, `release`, `reassert`) and a worker task does
//! it, aborting retries when the wish changes. While master, the worker
//! reconciles every `reconcile_interval`: the addresses are re-asserted if
//! they went missing (an address deleted by hand, a reserved IP moved
//! elsewhere, a link that flapped).

mod digitalocean;
mod exec;
mod holder;
mod local;

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::{runtime::Handle, sync::watch};
use tracing::{info, warn};

pub use digitalocean::{DigitalOcean, DoError, Token};
pub use exec::ExecProvider;
pub use holder::{Held, Holder};
pub use local::{arp_request, garp_frame, packet_socket, send_frame, Garp, LocalProvider};

use crate::config::{FloatingIpConfig, ProviderKind};

/// Errors of the floating IP providers.
#[derive(Debug, thiserror::Error)]
pub enum FloatingIpError {
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The interface does not exist.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// Adding or removing an address failed.
    #[error("{action} {addr} on {interface}: {source}")]
    Address {
        action: &'static str,
        addr: Ipv4Addr,
        interface: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// The DigitalOcean API refused or failed.
    #[error(transparent)]
    DigitalOcean(DoError),
    /// The exec provider's command failed.
    #[error("{0}")]
    Exec(String),
    /// Gave up because this node is no longer master.
    #[error("cancelled: no longer master")]
    Cancelled,
}

/// What the runner wants of the provider. `hold: None` until the first
/// decision: a floating IP found at startup is left alone until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Desired {
    pub hold: Option<bool>,
    /// Bumped to ask for a re-assertion (a peer claimed mastership).
    pub generation: u64,
}

/// The provider's side of `lb-agent status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStatus {
    pub name: String,
    /// Floating addresses this node holds, as the provider last saw it.
    pub held: Vec<Ipv4Addr>,
    /// Floating SNAT addresses it holds on the private interface.
    #[serde(default)]
    pub snat_held: Vec<Ipv4Addr>,
    /// Provider operations (API requests, commands, address changes) and
    /// how many failed.
    pub calls: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Times another node was found answering ARP for an address this
    /// master holds (each answered by announcing it again at once).
    #[serde(default)]
    pub second_owners: u64,
}

/// One provider.
pub enum Provider {
    Local(LocalProvider),
    DigitalOcean(Box<DigitalOcean>),
    Exec(ExecProvider),
}

/// The wish can change while a provider retries; `cancelled` tells it to
/// stop.
pub type Wish = watch::Receiver<Desired>;

pub(crate) fn cancelled(wish: &Wish) -> bool {
    wish.borrow().hold != Some(true)
}

impl Provider {
    /// The provider `config` selects, for `addresses`.
    pub fn from_config(
        config: &FloatingIpConfig,
        public_interface: &str,
        addresses: Vec<Ipv4Addr>,
        garp: Garp,
        instance: &str,
    ) -> Result<Self, FloatingIpError> {
        Ok(match config.provider {
            ProviderKind::Local => {
                Provider::Local(LocalProvider::new(public_interface, addresses, garp)?)
            }
            ProviderKind::Digitalocean => {
                let token = Token::from_config(config)?;
                Provider::DigitalOcean(Box::new(DigitalOcean::new(config, token, addresses)?))
            }
            ProviderKind::Exec => Provider::Exec(ExecProvider::new(config, addresses, instance)?),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Provider::Local(_) => "local",
            Provider::DigitalOcean(_) => "digitalocean",
            Provider::Exec(_) => "exec",
        }
    }

    /// The floating addresses held now (local: on the interface; others:
    /// as last seen, without a new request).
    pub async fn held(&mut self) -> Vec<Ipv4Addr> {
        match self {
            Provider::Local(p) => p.held().await,
            Provider::DigitalOcean(p) => p.held(),
            Provider::Exec(p) => p.held(),
        }
    }

    /// At startup: whether this node still holds every address (it was
    /// master when it stopped); may ask the API.
    pub async fn held_at_start(&mut self) -> bool {
        match self {
            Provider::Local(p) => {
                let held = p.held().await;
                !p.addresses().is_empty() && held.len() == p.addresses().len()
            }
            Provider::DigitalOcean(p) => p.refresh().await.is_ok_and(|all| all),
            Provider::Exec(p) => p.check().await.unwrap_or(false),
        }
    }

    /// Makes the addresses this node's (retrying as configured).
    async fn acquire(&mut self, wish: &mut Wish) -> Result<(), FloatingIpError> {
        match self {
            Provider::Local(p) => p.acquire().await,
            Provider::DigitalOcean(p) => p.acquire(wish).await.map_err(Into::into),
            Provider::Exec(p) => p.assign(wish).await,
        }
    }

    async fn release(&mut self) -> Result<(), FloatingIpError> {
        match self {
            Provider::Local(p) => p.release().await,
            // The next master assigns the reserved IP to itself; taking it
            // away here would only make an outage.
            Provider::DigitalOcean(p) => {
                p.forget();
                Ok(())
            }
            Provider::Exec(p) => p.release().await,
        }
    }

    /// While master: puts back what went missing.
    async fn reconcile(&mut self, wish: &mut Wish) -> Result<(), FloatingIpError> {
        match self {
            Provider::Local(p) => p.reconcile().await,
            Provider::DigitalOcean(p) => p.reconcile(wish).await.map_err(Into::into),
            Provider::Exec(p) => p.reconcile(wish).await,
        }
    }

    /// Times another node answered ARP for the addresses (`local` only).
    fn second_owners(&self) -> u64 {
        match self {
            Provider::Local(p) => p.second_owners(),
            _ => 0,
        }
    }

    /// Operations and failures so far.
    fn counts(&self) -> (u64, u64) {
        match self {
            Provider::Local(p) => p.counts(),
            Provider::DigitalOcean(p) => p.counts(),
            Provider::Exec(p) => p.counts(),
        }
    }
}

/// The provider's status as its worker last published it: the runner
/// loads snapshots and never waits for a worker in the middle of a call.
type SharedProviderStatus = Arc<ArcSwap<ProviderStatus>>;

/// The runner's handle on the provider worker.
pub struct ProviderHandle {
    desired: watch::Sender<Desired>,
    status: SharedProviderStatus,
    task: tokio::task::JoinHandle<()>,
}

impl ProviderHandle {
    /// Starts the worker for `provider` on `runtime`; it reconciles every
    /// `interval` while this node should hold the addresses.
    pub fn start(runtime: &Handle, provider: Holder, interval: Duration) -> Self {
        let (desired, wish) = watch::channel(Desired::default());
        let status = Arc::new(ArcSwap::from_pointee(ProviderStatus {
            name: provider.name().into(),
            ..ProviderStatus::default()
        }));
        let task = runtime.spawn(work(provider, wish, status.clone(), interval));
        Self {
            desired,
            status,
            task,
        }
    }

    /// Take (and keep) the addresses.
    pub fn hold(&self) {
        self.desired.send_modify(|d| d.hold = Some(true));
    }

    /// Give them up.
    pub fn release(&self) {
        self.desired.send_modify(|d| d.hold = Some(false));
    }

    /// Assert them again now (and announce them), if holding.
    pub fn reassert(&self) {
        self.desired.send_modify(|d| d.generation += 1);
    }

    pub fn status(&self) -> ProviderStatus {
        ProviderStatus::clone(&self.status.load())
    }

    /// Stops the worker without releasing anything (a reload hands the
    /// addresses to a new instance).
    pub async fn abandon(self) {
        drop(self.desired);
        let _ = self.task.await;
    }

    /// Releases the addresses and waits (at most `limit`) for the worker
    /// to finish doing so.
    pub async fn shutdown(self, limit: Duration) -> ProviderStatus {
        self.release();
        drop(self.desired);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            warn!("the floating IP provider did not finish releasing in time");
        }
        ProviderStatus::clone(&self.status.load())
    }
}

fn record(status: &mut ProviderStatus, provider: &Holder, result: Result<(), FloatingIpError>) {
    (status.calls, status.errors) = provider.counts();
    status.second_owners = provider.second_owners();
    match result {
        Ok(()) | Err(FloatingIpError::Cancelled) => {}
        Err(error) => {
            warn!(provider = provider.name(), %error, "floating IP provider");
            status.last_error = Some(error.to_string());
        }
    }
}

async fn work(
    mut provider: Holder,
    mut wish: Wish,
    shared: SharedProviderStatus,
    interval: Duration,
) {
    let mut status = ProviderStatus::clone(&shared.load());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Desired::default();
    loop {
        let changed = tokio::select! {
            changed = wish.changed() => {
                if changed.is_err() {
                    break;
                }
                true
            }
            _ = tick.tick() => false,
        };
        let now = *wish.borrow_and_update();
        match now.hold {
            Some(true)
                if changed && (seen.hold != Some(true) || now.generation != seen.generation) =>
            {
                if seen.hold != Some(true) {
                    info!(provider = provider.name(), "taking the floating IP");
                }
                let result = provider.acquire(&mut wish).await;
                record(&mut status, &provider, result);
            }
            Some(true) if !changed => {
                let result = provider.reconcile(&mut wish).await;
                record(&mut status, &provider, result);
            }
            Some(false) if seen.hold != Some(false) => {
                let result = provider.release().await;
                record(&mut status, &provider, result);
            }
            _ => {}
        }
        seen = now;
        let held = provider.held().await;
        (status.held, status.snat_held) = (held.vip, held.snat);
        shared.store(Arc::new(status.clone()));
    }
    // The runner dropped its handle: a final release it asked for has been
    // carried out above; nothing else to do.
}
