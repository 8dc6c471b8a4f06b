//! The run report: the guest's `hvkit-check:` lines, corroborated by what the
//! host itself observed, plus exit/hypercall/MSR/interrupt counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::irq::InterruptCounts;
use super::stats::ExitCounts;
use super::vcpu::RunEnd;
use crate::net::NetReport;
use crate::vmbus::VmbusStats;
use vmbus_guest::message::ChannelMessageType;

/// The checks the bundled test guest is expected to report (docs/ARCHITECTURE.md).
pub const EXPECTED_CHECKS: &[&str] = &[
    "cpuid-detect",
    "guest-os-id",
    "hypercall-page",
    "post-message",
    "signal-event",
    "synic-message",
    "synic-interrupt",
    "eom-redelivery",
    "reference-tsc",
    "stimer-oneshot",
    "stimer-periodic",
    "vmbus-connect",
    "vmbus-offers",
    "vmbus-gpadl",
    "vmbus-open",
    "vmbus-echo",
    "vmbus-ring-wrap",
    "vmbus-close",
    "vmbus-rescind",
    "storage-init",
    "storage-inquiry",
    "storage-capacity",
    "storage-rw-verify",
    "storage-flush",
    "storage-unmap",
    "storage-readonly",
    "storage-qd32",
    "net-init",
    "net-mac",
    "net-link",
    "net-arp",
    "net-icmp",
    "net-udp",
    "ic-heartbeat",
    "ic-timesync",
    "ic-kvp",
    "ic-vss",
    "ic-fcopy",
    "ic-shutdown",
];

/// One `hvkit-check:` line as the guest printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCheck {
    /// Check name.
    pub name: String,
    /// The guest's verdict.
    pub ok: bool,
    /// Free text after the verdict.
    pub detail: String,
}

/// Parses `hvkit-check: <name> <ok|fail> <detail...>`; anything but `ok` is a failure.
pub fn parse_check_line(line: &str) -> Option<GuestCheck> {
    let rest = line.trim().strip_prefix("hvkit-check:")?.trim_start();
    let (name, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if name.is_empty() {
        return None;
    }
    let rest = rest.trim_start();
    let (verdict, detail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let ok = verdict == "ok";
    let detail = if ok || verdict == "fail" {
        detail.trim().to_owned()
    } else {
        format!("malformed verdict {verdict:?}: {}", detail.trim())
    };
    Some(GuestCheck {
        name: name.to_owned(),
        ok,
        detail,
    })
}

/// One check in the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckResult {
    /// Check name.
    pub name: String,
    /// Final verdict (guest verdict, overridden by host evidence).
    pub ok: bool,
    /// Guest detail, plus the host's reason when it overrides the guest.
    pub detail: String,
}

/// The full report (`--report json` prints it as one object).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Checks: expected ones first (in order), then any extra ones the guest printed.
    pub checks: Vec<CheckResult>,
    /// Host-side counters.
    pub exits: Value,
    /// The emulation's own counters (`hv.stats()`).
    pub hv: Value,
    /// The VMBus server's counters, when the partition has one.
    pub vmbus: Option<VmbusStats>,
    /// Debug-exit code, when the guest exited through port 0xF4.
    pub exit_code: Option<u32>,
    /// How the run ended.
    pub end: RunEnd,
    /// Guest crash report (CRASH_CTL), if any.
    pub crash: Option<Value>,
    /// Every check ok and debug exit with code 0.
    pub passed: bool,
}

/// Inputs of [`build`].
pub struct Inputs<'a> {
    /// Expected check names.
    pub expected: &'a [&'a str],
    /// Parsed guest lines.
    pub checks: Vec<GuestCheck>,
    /// VMM exit counters.
    pub exits: ExitCounts,
    /// Interrupt counters.
    pub interrupts: InterruptCounts,
    /// `hv.stats()`.
    pub hv_stats: Value,
    /// `hv.crash()`.
    pub crash: Option<Value>,
    /// EOM-triggered re-deliveries counted by the emulation.
    pub eom_redeliveries: Option<u64>,
    /// Synthetic timer expirations counted by the emulation.
    pub timer_expirations: Option<u64>,
    /// The VMBus server's counters, when the partition has one.
    pub vmbus: Option<VmbusStats>,
    /// NIC and host-peer counters, when the partition has NICs.
    pub net: Option<NetReport>,
    /// How the run ended.
    pub end: RunEnd,
}

const HVCALL_POST_MESSAGE: u16 = 0x005C;
const HVCALL_SIGNAL_EVENT: u16 = 0x005D;
const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
const MSR_HYPERCALL: u32 = 0x4000_0001;
const MSR_REFERENCE_TSC: u32 = 0x4000_0021;
const MSR_STIMER_CONFIG: [u32; 4] = [0x4000_00B0, 0x4000_00B2, 0x4000_00B4, 0x4000_00B6];

/// Why the host contradicts an `ok` from the guest, if it does.
fn contradiction(name: &str, inp: &Inputs<'_>, detail: &str) -> Option<String> {
    let ok_calls = |code: u16| inp.exits.hypercalls.get(&code).map_or(0, |c| c.ok);
    let writes = |msr: u32| inp.exits.msr_writes.get(&msr).copied().unwrap_or(0);
    let irqs = inp.interrupts.delivered;
    match name {
        "guest-os-id" if writes(MSR_GUEST_OS_ID) == 0 => {
            Some("host saw no write to GUEST_OS_ID (0x40000000)".into())
        }
        "hypercall-page" if writes(MSR_HYPERCALL) == 0 => {
            Some("host saw no write to the HYPERCALL MSR (0x40000001)".into())
        }
        "post-message" if ok_calls(HVCALL_POST_MESSAGE) == 0 => {
            Some("host saw no successful HvPostMessage (0x5c)".into())
        }
        "signal-event" if ok_calls(HVCALL_SIGNAL_EVENT) == 0 => {
            Some("host saw no successful HvSignalEvent (0x5d)".into())
        }
        "synic-message" | "synic-interrupt" if irqs == 0 => {
            Some("host injected no interrupt".into())
        }
        "eom-redelivery" if inp.eom_redeliveries.unwrap_or(0) == 0 => {
            Some("hv stats show no EOM-triggered redelivery".into())
        }
        "reference-tsc" if writes(MSR_REFERENCE_TSC) == 0 => {
            Some("host saw no write to REFERENCE_TSC (0x40000021)".into())
        }
        "stimer-oneshot" | "stimer-periodic"
            if MSR_STIMER_CONFIG.iter().all(|m| writes(*m) == 0) =>
        {
            Some("host saw no write to any STIMERn_CONFIG".into())
        }
        "stimer-oneshot" | "stimer-periodic" if inp.timer_expirations.unwrap_or(0) == 0 => {
            Some("hv stats show no timer expiration".into())
        }
        "stimer-oneshot" | "stimer-periodic" if irqs == 0 => {
            Some("host injected no interrupt".into())
        }
        n if n.starts_with("vmbus-") => vmbus_contradiction(n, inp.vmbus.as_ref()),
        n if n.starts_with("net-") => net_contradiction(n, inp.net.as_ref(), detail),
        _ => None,
    }
}

/// UDP datagrams the guest's `net-udp` sends (sizes 1 … MTU-limited maximum).
const NET_UDP_DATAGRAMS: u64 = 5;

/// What the NICs (and the demo peer, when there is one) must have seen for a
/// guest's network check to stand. `detail` is the guest's own line.
fn net_contradiction(name: &str, net: Option<&NetReport>, detail: &str) -> Option<String> {
    let Some(net) = net else {
        return Some("the partition has no NIC".into());
    };
    let any = |f: &dyn Fn(&crate::net::NicReport) -> bool| net.nics.iter().any(f);
    let traffic = || any(&|n| n.stats.tx_frames > 0 && n.stats.rx_frames > 0);
    match name {
        // Counters, not state: the state resets when the channel closes at the end.
        "net-init" if !any(&|n| n.stats.control_messages >= 2) => {
            Some("no NIC handled the guest's RNDIS control messages".into())
        }
        "net-mac" => {
            let said = detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix("mac="))
                .unwrap_or("");
            (!any(&|n| n.mac == said)).then(|| {
                let macs: Vec<&str> = net.nics.iter().map(|n| n.mac.as_str()).collect();
                format!("the guest reported mac={said}, the host configured {macs:?}")
            })
        }
        "net-link" if !any(&|n| n.link_toggled && n.stats.link_indications >= 2) => {
            Some("no NIC had its link toggled with both indications sent (net exercise)".into())
        }
        "net-arp" | "net-icmp" | "net-udp" if !traffic() => {
            Some("no NIC carried frames both ways".into())
        }
        _ => {
            let p = net.peer.as_ref()?;
            match name {
                "net-arp" if p.arp_replies_out == 0 || p.arp_replies_in == 0 => Some(format!(
                    "the host peer sent {} ARP replies and got {} to its own requests",
                    p.arp_replies_out, p.arp_replies_in
                )),
                "net-icmp" if p.icmp_replies_out == 0 || p.ping_replies_in < 3 => Some(format!(
                    "the host peer answered {} echo requests and got {} replies to its {} pings",
                    p.icmp_replies_out, p.ping_replies_in, p.pings_sent
                )),
                "net-udp" if p.udp_echoed < NET_UDP_DATAGRAMS => Some(format!(
                    "the host peer echoed {} UDP datagrams ({:?} bytes), expected {NET_UDP_DATAGRAMS}",
                    p.udp_echoed, p.udp_sizes
                )),
                _ => None,
            }
        }
    }
}

/// What the VMBus server must have seen for a guest's VMBus check to stand.
fn vmbus_contradiction(name: &str, v: Option<&VmbusStats>) -> Option<String> {
    let Some(v) = v else {
        return Some("the partition has no VMBus server".into());
    };
    let got = |t: ChannelMessageType| {
        t.name()
            .and_then(|n| v.messages_in.get(n))
            .copied()
            .unwrap_or(0)
    };
    let echoed: u64 = v.channels.values().map(|c| c.packets_out).sum();
    match name {
        "vmbus-connect"
            if v.version.is_none() && got(ChannelMessageType::INITIATE_CONTACT) == 0 =>
        {
            Some("the server negotiated no version".into())
        }
        "vmbus-offers" if v.offers_sent == 0 => Some("the server sent no offer".into()),
        "vmbus-gpadl" if v.gpadls_created == 0 => Some("the server created no GPADL".into()),
        "vmbus-open" if v.channels.values().all(|c| c.opens == 0) => {
            Some("the server opened no channel".into())
        }
        "vmbus-echo" | "vmbus-ring-wrap" if echoed == 0 => {
            Some("the server sent no packet to the guest".into())
        }
        "vmbus-close" if v.channels.values().all(|c| c.closes == 0) => {
            Some("the server closed no channel".into())
        }
        "vmbus-rescind" if v.rescinds_sent == 0 || got(ChannelMessageType::RELID_RELEASED) == 0 => {
            Some(format!(
                "the server sent {} rescind(s) and saw {} RelIdReleased",
                v.rescinds_sent,
                got(ChannelMessageType::RELID_RELEASED)
            ))
        }
        _ => None,
    }
}

fn hex_keys<K: Copy + Into<u64>, V: serde::Serialize>(m: &BTreeMap<K, V>, width: usize) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| {
                (
                    format!("{:#0width$x}", (*k).into(), width = width + 2),
                    json!(v),
                )
            })
            .collect(),
    )
}

/// Builds the report.
pub fn build(inp: Inputs<'_>) -> Report {
    // A name reported several times keeps the last detail and fails if any report failed.
    let mut seen: BTreeMap<&str, (bool, String)> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for c in &inp.checks {
        let e = seen.entry(&c.name).or_insert_with(|| {
            order.push(&c.name);
            (true, String::new())
        });
        e.0 &= c.ok;
        e.1 = c.detail.clone();
    }
    let mut names: Vec<&str> = inp.expected.to_vec();
    names.extend(order.iter().filter(|n| !inp.expected.contains(n)));
    let checks: Vec<CheckResult> = names
        .iter()
        .map(|name| match seen.get(name) {
            None => CheckResult {
                name: (*name).into(),
                ok: false,
                detail: "guest never reported it".into(),
            },
            Some((true, detail)) => match contradiction(name, &inp, detail) {
                Some(why) => CheckResult {
                    name: (*name).into(),
                    ok: false,
                    detail: format!("guest said ok ({detail}) but {why}"),
                },
                None => CheckResult {
                    name: (*name).into(),
                    ok: true,
                    detail: detail.clone(),
                },
            },
            Some((false, detail)) => CheckResult {
                name: (*name).into(),
                ok: false,
                detail: detail.clone(),
            },
        })
        .collect();

    let mut exits = serde_json::Map::new();
    for (k, v) in &inp.exits.by_kind {
        exits.insert(k.clone(), json!(v));
    }
    exits.insert("hypercalls".into(), hex_keys(&inp.exits.hypercalls, 4));
    exits.insert("msr_reads".into(), hex_keys(&inp.exits.msr_reads, 8));
    exits.insert("msr_writes".into(), hex_keys(&inp.exits.msr_writes, 8));
    exits.insert(
        "interrupts_injected".into(),
        json!(inp.interrupts.delivered),
    );
    exits.insert("interrupts_blocked".into(), json!(inp.interrupts.blocked));
    exits.insert("interrupts_failed".into(), json!(inp.interrupts.failed));
    exits.insert(
        "interrupts_by_vector".into(),
        hex_keys(&inp.interrupts.by_vector, 2),
    );
    exits.insert(
        "emulation_assists".into(),
        json!(inp.exits.emulation_assists),
    );

    let exit_code = match inp.end {
        RunEnd::DebugExit { code, .. } => Some(code),
        _ => None,
    };
    // A guest with no expected checks (Linux) passes by powering itself off;
    // the test guest by exiting with 0.
    let clean_end = exit_code == Some(0)
        || (inp.expected.is_empty() && matches!(inp.end, RunEnd::PoweredOff { .. }));
    // A guest that reported a crash (CRASH_CTL) never passes, whatever it printed.
    let passed = clean_end && checks.iter().all(|c| c.ok) && inp.crash.is_none();
    Report {
        checks,
        exits: Value::Object(exits),
        hv: inp.hv_stats,
        vmbus: inp.vmbus,
        exit_code,
        end: inp.end,
        crash: inp.crash,
        passed,
    }
}

impl Report {
    /// One JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"report serialization: {e}\"}}"))
    }

    /// A readable table.
    pub fn to_text(&self) -> String {
        let w = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = String::new();
        let _ = writeln!(s, "{:<w$}  {:<6}  detail", "check", "result");
        let _ = writeln!(s, "{:-<w$}  ------  {:-<30}", "", "");
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{:<w$}  {:<6}  {}",
                c.name,
                if c.ok { "ok" } else { "FAIL" },
                c.detail
            );
        }
        let _ = writeln!(s);
        let end = match &self.end {
            RunEnd::DebugExit { code, vp } => format!("debug exit code {code} (vp {vp})"),
            RunEnd::Timeout => "timeout".into(),
            RunEnd::TripleFault { vp, rip } => format!("triple fault on vp {vp} at RIP {rip:#x}"),
            RunEnd::Error { vp, message } => format!("error on vp {vp}: {message}"),
            RunEnd::Stopped => "stopped".into(),
            RunEnd::PoweredOff { vp } => format!("powered off by the guest (vp {vp})"),
            RunEnd::Reset { vp } => format!("reset requested by the guest (vp {vp})"),
        };
        let _ = writeln!(s, "end:      {end}");
        if let Some(c) = &self.crash {
            let _ = writeln!(s, "crash:    {c}");
        }
        let _ = writeln!(s, "exits:    {}", self.exits);
        if !self.hv.is_null() {
            let _ = writeln!(s, "hv:       {}", self.hv);
        }
        let _ = writeln!(s, "result:   {}", if self.passed { "PASS" } else { "FAIL" });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::stats::HypercallCount;

    fn inputs(checks: Vec<GuestCheck>) -> Inputs<'static> {
        Inputs {
            expected: &["post-message", "cpuid-detect"],
            checks,
            exits: ExitCounts::default(),
            interrupts: InterruptCounts::default(),
            hv_stats: Value::Null,
            crash: None,
            eom_redeliveries: None,
            timer_expirations: None,
            vmbus: None,
            net: None,
            end: RunEnd::DebugExit { code: 0, vp: 0 },
        }
    }

    #[test]
    fn vmbus_checks_need_the_servers_evidence() {
        let line = |name: &str| GuestCheck {
            name: name.into(),
            ok: true,
            detail: String::new(),
        };
        let names = ["vmbus-connect", "vmbus-rescind"];
        let mut inp = inputs(names.iter().map(|n| line(n)).collect());
        inp.expected = &["vmbus-connect", "vmbus-rescind"];
        // No server at all: the guest cannot have talked to one.
        let r = build(inputs_clone(&inp));
        assert!(r.checks.iter().all(|c| !c.ok), "{:?}", r.checks);
        // A server that negotiated but never rescinded.
        let mut v = VmbusStats {
            version: Some("5.3".into()),
            ..Default::default()
        };
        inp.vmbus = Some(v.clone());
        let r = build(inputs_clone(&inp));
        assert!(r.checks[0].ok && !r.checks[1].ok, "{:?}", r.checks);
        // Rescind sent and the relid released: both stand.
        v.rescinds_sent = 1;
        v.messages_in.insert("RELID_RELEASED".into(), 1);
        inp.vmbus = Some(v);
        let r = build(inp);
        assert!(r.checks.iter().all(|c| c.ok), "{:?}", r.checks);
    }

    #[test]
    fn net_mac_must_be_the_configured_one() {
        use crate::net::{NetReport, NetStats, NicReport};
        let mut inp = inputs(vec![parse_check_line(
            "hvkit-check: net-mac ok mac=02:15:0a:d5:00:02 ip=10.213.0.2",
        )
        .unwrap()]);
        inp.expected = &["net-mac"];
        let nic = |mac: &str| NicReport {
            name: "net0".into(),
            mac: mac.into(),
            link_toggled: true,
            stats: NetStats::default(),
        };
        inp.net = Some(NetReport {
            nics: vec![nic("02:15:0a:d5:00:02")],
            peer: None,
        });
        assert!(build(inputs_clone(&inp)).checks[0].ok);
        // netvsp told the guest another MAC than the host configured.
        inp.net = Some(NetReport {
            nics: vec![nic("02:15:0a:d5:00:09")],
            peer: None,
        });
        let r = build(inp);
        assert!(
            !r.checks[0].ok && r.checks[0].detail.contains("configured"),
            "{:?}",
            r.checks
        );
    }

    #[test]
    fn parses_check_lines() {
        assert_eq!(
            parse_check_line("hvkit-check: post-message ok echoed 16 bytes\r"),
            Some(GuestCheck {
                name: "post-message".into(),
                ok: true,
                detail: "echoed 16 bytes".into()
            })
        );
        assert!(!parse_check_line("hvkit-check: x fail").unwrap().ok);
        assert!(!parse_check_line("hvkit-check: x maybe").unwrap().ok);
        assert_eq!(parse_check_line("hello"), None);
        assert_eq!(parse_check_line("hvkit-check:"), None);
    }

    #[test]
    fn missing_and_contradicted_checks_fail() {
        let r = build(inputs(vec![parse_check_line(
            "hvkit-check: post-message ok sent",
        )
        .unwrap()]));
        assert!(!r.passed);
        assert!(
            r.checks[0].detail.contains("no successful HvPostMessage"),
            "{:?}",
            r.checks[0]
        );
        assert_eq!(r.checks[1].detail, "guest never reported it");
    }

    #[test]
    fn a_reported_crash_fails_the_run() {
        let mut inp = inputs(vec![
            parse_check_line("hvkit-check: cpuid-detect ok x").unwrap()
        ]);
        inp.expected = &["cpuid-detect"];
        assert!(build(inputs_clone(&inp)).passed);
        inp.crash = Some(json!({"vp": 0}));
        let r = build(inp);
        assert!(!r.passed);
        assert_eq!(
            serde_json::from_str::<Value>(&r.to_json()).unwrap()["crash"]["vp"],
            0
        );
    }

    #[test]
    fn a_guest_without_checks_passes_by_powering_off_and_only_then() {
        let mut i = inputs(vec![]);
        i.expected = &[];
        i.end = RunEnd::PoweredOff { vp: 0 };
        assert!(build(inputs_clone(&i)).passed);
        i.end = RunEnd::Reset { vp: 0 };
        assert!(!build(inputs_clone(&i)).passed);
        i.end = RunEnd::PoweredOff { vp: 0 };
        i.crash = Some(Value::Null);
        assert!(!build(inputs_clone(&i)).passed, "a crash report fails it");
        // The test guest must still exit through the debug port.
        let mut t = inputs(vec![]);
        t.end = RunEnd::PoweredOff { vp: 0 };
        assert!(!build(t).passed);
    }

    fn inputs_clone(i: &Inputs<'static>) -> Inputs<'static> {
        Inputs {
            expected: i.expected,
            checks: i.checks.clone(),
            exits: i.exits.clone(),
            interrupts: i.interrupts.clone(),
            hv_stats: i.hv_stats.clone(),
            crash: i.crash.clone(),
            eom_redeliveries: i.eom_redeliveries,
            timer_expirations: i.timer_expirations,
            vmbus: i.vmbus.clone(),
            net: i.net.clone(),
            end: i.end.clone(),
        }
    }

    #[test]
    fn corroborated_checks_pass_and_json_has_counters() {
        let mut inp = inputs(vec![
            parse_check_line("hvkit-check: post-message ok sent").unwrap(),
            parse_check_line("hvkit-check: cpuid-detect ok Microsoft Hv").unwrap(),
            parse_check_line("hvkit-check: extra fail nope").unwrap(),
        ]);
        inp.exits
            .hypercalls
            .insert(0x5C, HypercallCount { calls: 1, ok: 1 });
        inp.exits.msr_writes.insert(0x4000_0000, 2);
        let r = build(inp);
        assert!(r.checks[0].ok && r.checks[1].ok);
        assert_eq!(r.checks[2].name, "extra");
        assert!(!r.passed, "extra failing check must fail the run");
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["exits"]["hypercalls"]["0x005c"]["ok"], 1);
        assert_eq!(v["exits"]["msr_writes"]["0x40000000"], 2);
        assert_eq!(v["exit_code"], 0);
        assert!(r.to_text().contains("FAIL"));
    }
}
