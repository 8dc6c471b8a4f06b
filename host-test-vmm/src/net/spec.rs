//! `--net tap=NAME[,mac=..][,mtu=..]` / `--net switch=NAME[,mac=..][,mtu=..]`:
//! one synthetic NIC and its backend, and building the NICs of a partition.

use super::backend::{FrameBackend, MacAddr};
use super::netvsp::{net_instance_id, Nic, NicConfig, NicError, MAX_MTU};
use super::switch::SwitchRegistry;
use super::tap::{TapBackend, TapError};
use crate::vmbus::TraceWriter;
use std::str::FromStr;
use std::sync::Arc;

/// Where a NIC's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendSpec {
    /// A TAP device of this name (created if missing; needs CAP_NET_ADMIN).
    Tap(String),
    /// A port of the in-VMM switch of this name (shared by every NIC naming it).
    Switch(String),
}

/// A NIC on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The backend.
    pub backend: NetBackendSpec,
    /// The MAC (default: generated, locally administered).
    pub mac: Option<MacAddr>,
    /// The MTU (default 1500).
    pub mtu: Option<u32>,
}

impl FromStr for NetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut backend = None;
        let mut mac = None;
        let mut mtu = None;
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match k {
                "tap" | "switch" if backend.is_some() => {
                    return Err("give one of tap= or switch=".into())
                }
                "tap" if !v.is_empty() && v.len() < 16 => {
                    backend = Some(NetBackendSpec::Tap(v.to_owned()))
                }
                "tap" => return Err(format!("tap={v:?}: an interface name of 1..=15 bytes")),
                "switch" if !v.is_empty() => backend = Some(NetBackendSpec::Switch(v.to_owned())),
                "mac" => mac = Some(v.parse::<MacAddr>()?),
                "mtu" => {
                    let n: u32 = v
                        .parse()
                        .ok()
                        .filter(|n| (68..=MAX_MTU).contains(n))
                        .ok_or_else(|| format!("mtu={v}: expected 68..={MAX_MTU}"))?;
                    mtu = Some(n);
                }
                _ => return Err(format!("{part:?}: expected tap=, switch=, mac= or mtu=")),
            }
        }
        let backend = backend.ok_or("missing tap=NAME or switch=NAME")?;
        Ok(Self { backend, mac, mtu })
    }
}

/// Why the NICs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A TAP device could not be opened.
    #[error("NIC {nic}: {source}")]
    Tap {
        /// The NIC.
        nic: String,
        /// Why.
        #[source]
        source: TapError,
    },
    /// Bad NIC settings.
    #[error("NIC {nic}: {source}")]
    Nic {
        /// The NIC.
        nic: String,
        /// Why.
        #[source]
        source: NicError,
    },
    /// Two NICs with one MAC.
    #[error("MAC {0} is given to two NICs")]
    DuplicateMac(MacAddr),
}

/// The NICs of `specs`, named net0, net1, ... with instance GUIDs
/// `net_instance_id(i)`; switches come from `switches`.
pub fn build_nics(
    specs: &[NetSpec],
    switches: &SwitchRegistry,
    trace: Option<Arc<TraceWriter>>,
) -> Result<Vec<Arc<Nic>>, NetError> {
    let mut out: Vec<Arc<Nic>> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut cfg = NicConfig::numbered(i as u16);
        cfg.instance_id = net_instance_id(i as u16);
        if let Some(m) = spec.mac {
            cfg.mac = m;
        }
        if out.iter().any(|n| n.mac() == cfg.mac) {
            return Err(NetError::DuplicateMac(cfg.mac));
        }
        cfg.mtu = spec.mtu.unwrap_or(cfg.mtu);
        cfg.trace = trace.clone();
        let backend: Arc<dyn FrameBackend> = match &spec.backend {
            NetBackendSpec::Tap(name) => {
                TapBackend::open(name).map_err(|source| NetError::Tap {
                    nic: cfg.name.clone(),
                    source,
                })?
            }
            NetBackendSpec::Switch(name) => Arc::new(switches.get(name).port(&cfg.name)),
        };
        let name = cfg.name.clone();
        out.push(Nic::new(cfg, backend).map_err(|source| NetError::Nic { nic: name, source })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        let s: NetSpec = "tap=hvt0,mac=02:15:00:00:00:01".parse().unwrap();
        assert_eq!(s.backend, NetBackendSpec::Tap("hvt0".into()));
        assert_eq!(s.mac.unwrap().to_string(), "02:15:00:00:00:01");
        let s: NetSpec = "switch=lan,mtu=9000".parse().unwrap();
        assert_eq!(s.backend, NetBackendSpec::Switch("lan".into()));
        assert_eq!(s.mtu, Some(9000));
        for bad in [
            "",
            "mac=02:15:00:00:00:01",
            "tap=",
            "tap=0123456789abcdef",
            "tap=a,switch=b",
            "switch=lan,mtu=10",
            "switch=lan,mac=01:00:00:00:00:01",
            "switch=lan,speed=1",
            "hvt0",
        ] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn build_switch_nics() {
        let reg = SwitchRegistry::new();
        let specs: Vec<NetSpec> = ["switch=a", "switch=a,mac=02:15:00:00:00:09"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let nics = build_nics(&specs, &reg, None).unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].name(), "net0");
        assert_eq!(nics[1].mac().to_string(), "02:15:00:00:00:09");
        assert_ne!(nics[0].instance_id(), nics[1].instance_id());
        assert_eq!(reg.get("a").stats().ports, 2);
        let dup: Vec<NetSpec> = [
            "switch=a,mac=02:15:00:00:00:09",
            "switch=b,mac=02:15:00:00:00:09",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert!(matches!(
            build_nics(&dup, &reg, None),
            Err(NetError::DuplicateMac(_))
        ));
    }
}
