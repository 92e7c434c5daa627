//! Everything the VRRP master holds: the floating IP through its provider,
//! and the floating SNAT addresses (`vrrp.snat_address`, `snat_pool`) on
//! the private interface. The SNAT addresses are always held the `local`
//! way, whichever provider the floating IP uses: backends reach them over
//! the private network, where the nodes answer ARP themselves.

use std::net::Ipv4Addr;

use super::{FloatingIpError, Garp, LocalProvider, Provider, Wish};
use crate::config::VrrpConfig;

/// The floating IP's provider and, with a floating SNAT address, the
/// `local` provider of the private side.
pub struct Holder {
    vip: Provider,
    snat: Option<LocalProvider>,
}

/// What a holder holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub vip: Vec<Ipv4Addr>,
    pub snat: Vec<Ipv4Addr>,
}

impl Holder {
    /// The holder `config` asks for: the floating IP's provider for
    /// `addresses` (on `public_interface` when `local`), and the floating
    /// SNAT addresses on `private_interface`.
    pub fn from_config(
        config: &VrrpConfig,
        public_interface: &str,
        private_interface: &str,
        addresses: Vec<Ipv4Addr>,
        instance: &str,
    ) -> Result<Self, FloatingIpError> {
        let garp = Garp {
            count: config.garp_count.get(),
            interval: config.garp_interval,
            refresh: config.garp_refresh,
        };
        let vip = Provider::from_config(
            &config.floating_ip,
            public_interface,
            addresses,
            garp,
            instance,
        )?;
        let shared = config.floating_snat();
        let snat = if shared.is_empty() {
            None
        } else {
            Some(LocalProvider::new(private_interface, shared, garp)?)
        };
        Ok(Self { vip, snat })
    }

    /// The floating IP provider's name.
    pub fn name(&self) -> &'static str {
        self.vip.name()
    }

    /// Whether this node still holds the floating IP at start (it was
    /// master when it stopped). The floating IP decides: the SNAT
    /// addresses follow it (taken on resuming, dropped with a stale VIP).
    pub async fn held_at_start(&mut self) -> bool {
        self.vip.held_at_start().await
    }

    pub async fn held(&mut self) -> Held {
        let snat = match &self.snat {
            Some(snat) => snat.held().await,
            None => Vec::new(),
        };
        Held {
            vip: self.vip.held().await,
            snat,
        }
    }

    /// Takes the SNAT addresses first (local and quick: the backends'
    /// replies to moved flows wait for them), then the floating IP; a
    /// failure of one does not keep the other from being taken.
    pub(super) async fn acquire(&mut self, wish: &mut Wish) -> Result<(), FloatingIpError> {
        let snat = match &mut self.snat {
            Some(snat) => snat.acquire().await,
            None => Ok(()),
        };
        let vip = self.vip.acquire(wish).await;
        vip.and(snat)
    }

    pub(super) async fn release(&mut self) -> Result<(), FloatingIpError> {
        let snat = match &mut self.snat {
            Some(snat) => snat.release().await,
            None => Ok(()),
        };
        self.vip.release().await.and(snat)
    }

    pub(super) async fn reconcile(&mut self, wish: &mut Wish) -> Result<(), FloatingIpError> {
        let snat = match &mut self.snat {
            Some(snat) => snat.reconcile().await,
            None => Ok(()),
        };
        self.vip.reconcile(wish).await.and(snat)
    }

    /// Times another node answered ARP for an address held, both sides.
    pub(super) fn second_owners(&self) -> u64 {
        self.vip.second_owners() + self.snat.as_ref().map_or(0, LocalProvider::second_owners)
    }

    /// Operations and failures of both sides.
    pub(super) fn counts(&self) -> (u64, u64) {
        let (calls, errors) = self.vip.counts();
        let (snat_calls, snat_errors) = self.snat.as_ref().map_or((0, 0), LocalProvider::counts);
        (calls + snat_calls, errors + snat_errors)
    }
}
