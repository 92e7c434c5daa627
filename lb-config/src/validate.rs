//! Rules that span sections: unique services, backends that are not the
//! balancer itself, limits of the kernel's tables.

use std::{collections::HashSet, net::Ipv4Addr};

use lb_common::{MAX_BACKENDS, MAX_SERVICES};

use crate::{
    bounded::Weight,
    is_unusable,
    problem::{Element, FieldPath, Problem, Problems},
    service::ServiceConfig,
    Config,
};

impl Config {
    /// Everything wrong with the config, each with its field path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::default();
        let root = FieldPath::root();
        self.node.check(&root.key("node"), &mut problems);
        self.conntrack.check(&root.key("conntrack"), &mut problems);
        if let Some(metrics) = &self.metrics {
            metrics.check(&root.key("metrics"), &mut problems);
        }
        if let Some(vrrp) = &self.vrrp {
            let at = root.key("vrrp");
            vrrp.check(&at, self.node.private_address, &mut problems);
            let vips: Vec<Ipv4Addr> = self.services.iter().map(|s| s.vip).collect();
            vrrp.check_snat(&at, &self.node, &vips, &mut problems);
            for (index, name) in vrrp.track_services.iter().enumerate() {
                if !self.services.iter().any(|s| &s.name == name) {
                    // On both nodes the same typo would keep both in FAULT.
                    problems.push_with_hint(
                        at.key("track_services").index(index, None),
                        format!("no service named {name:?}"),
                        "name one of the [[service]] tables",
                    );
                }
            }
        }
        if let Some(sync) = &self.sync {
            let peers = self.vrrp.as_ref().map(|v| v.unicast_peers.as_slice());
            sync.check(
                &root.key("sync"),
                self.node.private_address,
                peers,
                &mut problems,
            );
        }
        self.check_sizes(&mut problems);
        self.check_services(&mut problems);
        problems.into_vec()
    }

    fn check_sizes(&self, problems: &mut Problems) {
        let services = FieldPath::root().key("service");
        if self.services.len() > MAX_SERVICES as usize {
            problems.push(
                services.index(MAX_SERVICES as usize, None),
                format!(
                    "{} services configured; at most {MAX_SERVICES} fit",
                    self.services.len()
                ),
            );
        }
        let total_backends: usize = self.services.iter().map(|s| s.backends.len()).sum();
        if total_backends > MAX_BACKENDS as usize {
            problems.push(
                services,
                format!("{total_backends} backends configured; at most {MAX_BACKENDS} fit"),
            );
        }
    }

    fn check_services(&self, problems: &mut Problems) {
        let mut names = HashSet::new();
        let mut endpoints = HashSet::new();
        for (index, service) in self.services.iter().enumerate() {
            let at = service.path(index);
            service.check_own_fields(&at, problems);
            if !names.insert(service.name.as_str()) {
                problems.push_with_hint(at.key("name"), "is used twice", "names must be unique");
            }
            if !endpoints.insert((service.vip, service.port, service.protocol)) {
                problems.push_with_hint(
                    at.key("port"),
                    format!(
                        "{}:{}/{} is already another service's",
                        service.vip, service.port, service.protocol
                    ),
                    "each (vip, port, protocol) once",
                );
            }
            if service.vip == self.node.private_address {
                problems.push_with_hint(
                    at.key("vip"),
                    format!("{} is node.private_address, the NAT source", service.vip),
                    "give the service its own address",
                );
            }
            self.check_backends(service, &at, problems);
        }
    }

    fn check_backends(&self, service: &ServiceConfig, at: &FieldPath, problems: &mut Problems) {
        let mut seen = HashSet::new();
        for (index, backend) in service.backends.iter().enumerate() {
            let port = backend.port_or(service.port);
            let here = at.key("backend").element(
                index,
                Element::Backend {
                    address: &backend.address,
                    port: &port,
                },
            );
            if !seen.insert((backend.address, port)) {
                problems.push_with_hint(
                    here.key("address"),
                    "listed twice",
                    "list each backend once (change its weight instead)",
                );
            }
            problems.extend(
                self.backend_problems(backend.address, port, backend.weight.get())
                    .into_iter()
                    .map(|problem| problem.under(&here)),
            );
            if let Some(check) = &backend.health_check {
                check.check(&here.key("health_check"), problems);
            }
        }
    }

    /// What is wrong with a backend `address:port` of `weight` in this
    /// config: the one set of rules for every way a backend gets in (the
    /// config file, `lb-agent backends add`, the state file). Paths are
    /// relative to the backend (`address`, `port`, `weight`).
    pub fn backend_problems(&self, address: Ipv4Addr, port: u16, weight: u32) -> Vec<Problem> {
        let mut problems = Problems::default();
        let root = FieldPath::root();
        let floating = self
            .vrrp
            .as_ref()
            .is_some_and(|v| v.virtual_addresses.contains(&address));
        if is_unusable(address) {
            problems.push_with_hint(
                root.key("address"),
                format!("{address} is not a unicast address a server can have (0.0.0.0/8, loopback, multicast, 240.0.0.0/4 and broadcast cannot be)"),
                "use the server's address on the backend network",
            );
        } else if self.services.iter().any(|s| s.vip == address) || floating {
            problems.push_with_hint(
                root.key("address"),
                format!(
                    "{address} is a VIP of this balancer (a service's vip or a floating address)"
                ),
                "a backend must be a server's own address, not a VIP",
            );
        } else if address == self.node.private_address
            || self.node.snat_addresses.contains(&address)
            || self.floating_snat_addresses().contains(&address)
        {
            problems.push_with_hint(
                root.key("address"),
                format!("{address} is this node's own address (node.private_address, node.snat_addresses or vrrp.snat_address/snat_pool), so the balancer would send connections to itself"),
                "use the server's address",
            );
        }
        if port == 0 {
            problems.push_with_hint(root.key("port"), "0 is not a backend port", "use 1-65535");
        }
        if let Err(error) = Weight::new(weight) {
            problems.push(root.key("weight"), error.to_string());
        }
        problems.into_vec()
    }
}
