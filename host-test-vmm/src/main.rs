//! `host-test-vmm`: boot a bare-metal ELF guest in a KVM partition that plays
//! the Hyper-V root partition, and report what the guest checked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use host_test_vmm::api;
use host_test_vmm::bench;
use host_test_vmm::vmbus::TraceWriter;
use host_test_vmm::vmm::hv_glue;
use host_test_vmm::vmm::linux::LinuxBoot;
use host_test_vmm::vmm::{self, RunEnd, SerialOutput, VmConfig, VmmError};

#[derive(Parser)]
#[command(
    name = "host-test-vmm",
    version,
    about = "KVM VMM that plays the Hyper-V root partition for testing Hyper-V guests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a guest: an ELF with hvkit's direct 64-bit boot protocol (docs/ARCHITECTURE.md)
    /// or a Linux kernel (vmlinux or bzImage) with the Linux boot protocol.
    Run {
        /// Guest image: ELF64 x86_64 executable, vmlinux or bzImage.
        #[arg(long)]
        kernel: PathBuf,
        /// Boot protocol; `auto` picks Linux for a bzImage or an ELF with a "Linux" note
        /// (every vmlinux), hvkit's otherwise.
        #[arg(long, value_enum, default_value_t = BootArg::Auto)]
        boot: BootArg,
        /// Linux only: initial ramdisk (prefer an uncompressed cpio on PVM).
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        /// Linux only: kernel command line (default: linux/README.md's recommendation).
        #[arg(long, value_name = "STR")]
        cmdline: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Build (if needed) and boot the bundled test guest (tests/guest).
    Demo {
        /// Do not attach the two generated disks (LUN 0: 8 MiB read-write, LUN 1: 1 MiB
        /// read-only, every block tagged "HVKITDSK" + LUN + LBA) that the guest's storage checks
        /// read; they are attached by default unless --disk is given.
        #[arg(long)]
        no_demo_disks: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Client of a running partition's control API: send one command, print the JSON reply.
    Ctl {
        /// The partition's control socket (`run|demo --api-socket PATH`).
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        #[command(subcommand)]
        command: api::client::CtlCommand,
    },
    /// Benchmarks on a real partition: print a table and write JSON.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Fast HvSignalEvent through the hypercall page vs a bare OUT exit.
    Hypercall {
        /// Operations per loop per round.
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
        /// Rounds (each runs both loops; the median round counts).
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Where to write the JSON result.
        #[arg(long, default_value = "target/bench/hypercall.json")]
        json: PathBuf,
    },
    /// VMBus ring throughput vs the rtrb SPSC queue (64-byte packets) and memcpy (4 KiB).
    Ring {
        /// 64-byte packets per side per round (the 4 KiB sides move packets / 16).
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Rounds (each runs every side, in alternating order; the median round counts).
        #[arg(long, default_value_t = 7)]
        rounds: u32,
        /// Packets per commit on the VMBus ring, items per rtrb slice operation.
        #[arg(long, default_value_t = 16)]
        batch: u32,
        /// Where to write the JSON result.
        #[arg(long, default_value = "target/bench/ring.json")]
        json: PathBuf,
    },
    /// Guest frames through netvsp to a TAP device (in a private network namespace) and guest to
    /// guest over the in-VMM switch, vs writing the same frames to the TAP directly.
    Net {
        /// Frames per side and size.
        #[arg(long, default_value_t = 100_000)]
        frames: u64,
        /// Where to write the JSON result.
        #[arg(long, default_value = "target/bench/net.json")]
        json: PathBuf,
    },
    /// Storage reads (4 KiB random, 1 MiB sequential) through the whole stack (storvsc, VMBus,
    /// storvsp, file) vs pread on the same file, at queue depths 1, 8, 32, 64.
    Storage {
        /// Size of the temporary backing file (multiple of 1 MiB; K/M/G suffix).
        #[arg(long, default_value = "64M", value_parser = vmm::parse_memory_size)]
        size: u64,
        /// Seconds per point and side (default 0.5).
        #[arg(long, conflicts_with = "ios")]
        seconds_per_point: Option<f64>,
        /// I/Os per point and side instead of a time budget.
        #[arg(long)]
        ios: Option<u64>,
        /// Rounds (each runs every point on both sides, alternating order; medians count).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Where to write the JSON result.
        #[arg(long, default_value = "target/bench/storage.json")]
        json: PathBuf,
        /// Where to write the SVG plot (stack / direct ratio vs queue depth).
        #[arg(long, default_value = "target/bench/storage.svg")]
        svg: PathBuf,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Number of vCPUs (1..=8).
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest RAM: bytes or K/M/G suffix.
    #[arg(long, default_value = "256M", value_parser = vmm::parse_memory_size)]
    memory: u64,
    /// Serial console: stdout, stderr or file=PATH (default: stdout, or stderr with --report json).
    #[arg(long, value_parser = parse_serial)]
    serial: Option<SerialOutput>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    report: ReportFormat,
    /// Wall-clock limit in seconds (0 = none).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Write the decoded VMBus traffic (control messages and ring packets) as JSON lines.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// A disk on the synthetic SCSI controller (storvsp): path=IMAGE[,readonly=on][,lun=N]
    /// (a raw image file or block device; repeatable; LUNs default to the lowest free).
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<host_test_vmm::storage::DiskSpec>,
    /// A synthetic NIC (netvsp): tap=NAME (a TAP device, needs CAP_NET_ADMIN) or switch=NAME
    /// (the in-VMM L2 switch of that name), [,mac=02:..][,mtu=N] (repeatable: net0, net1, ...).
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<host_test_vmm::net::NetSpec>,
    /// Serve the control API (HTTP/1.1 + JSON) on this unix socket while the guest runs.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BootArg {
    Auto,
    Linux,
    Hvkit,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Json,
    Text,
}

fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "stderr" => Ok(SerialOutput::Stderr),
        "none" => Ok(SerialOutput::Null),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
            _ => Err(format!("{s:?}: expected stdout, stderr, none or file=PATH")),
        },
    }
}

fn bench_hypercall(
    iterations: u32,
    rounds: u32,
    json: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = bench::hypercall_round_trip(bench::HypercallBenchConfig { iterations, rounds })?;
    print!("{}", report.to_table());
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(json, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("JSON written to {}", json.display());
    Ok(())
}

fn bench_ring(
    packets: u64,
    rounds: u32,
    batch: u32,
    json: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = bench::ring_throughput(bench::RingBenchConfig {
        packets,
        rounds,
        batch,
        ..bench::RingBenchConfig::default()
    })?;
    print!("{}", report.to_table());
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(json, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("JSON written to {}", json.display());
    Ok(())
}

fn bench_storage(
    size: u64,
    seconds_per_point: Option<f64>,
    ios: Option<u64>,
    rounds: u32,
    json: &Path,
    svg: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let budget = match (ios, seconds_per_point) {
        (Some(n), _) => bench::Budget::Ios(n),
        (None, s) => bench::Budget::Seconds(s.unwrap_or(0.5)),
    };
    let report = bench::storage_throughput(&bench::StorageBenchConfig {
        size,
        budget,
        rounds,
        ..bench::StorageBenchConfig::default()
    })?;
    print!("{}", report.to_table());
    for (path, text) in [
        (json, serde_json::to_string_pretty(&report)? + "\n"),
        (svg, report.to_svg()),
    ] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)?;
    }
    println!("JSON: {}, SVG: {}", json.display(), svg.display());
    Ok(())
}

/// Linux boot settings for `run`, or `None` for hvkit's protocol.
fn linux_boot(
    image: &[u8],
    boot: BootArg,
    initrd: Option<&Path>,
    cmdline: Option<String>,
) -> Result<Option<LinuxBoot>, Box<dyn std::error::Error>> {
    let linux = match boot {
        BootArg::Linux => true,
        BootArg::Hvkit => false,
        BootArg::Auto => vmm::linux::detect(image).is_some(),
    };
    if !linux {
        if initrd.is_some() || cmdline.is_some() {
            return Err("--initrd and --cmdline need a Linux kernel (--boot linux)".into());
        }
        return Ok(None);
    }
    let initrd = match initrd {
        Some(p) => Some(std::fs::read(p).map_err(|source| VmmError::ReadImage {
            path: p.to_path_buf(),
            source,
        })?),
        None => None,
    };
    Ok(Some(LinuxBoot {
        cmdline: cmdline.unwrap_or_else(|| vmm::linux::DEFAULT_CMDLINE.to_owned()),
        initrd,
    }))
}

/// Boots `kernel`; `exercise`: the host ICs run their exercise script (the
/// test guest only, see `IcConfig::exercise`) and the NICs the net exercise;
/// `demo_peer`: the host network peer joins the demo switch; `linux`: boot
/// it as Linux.
fn run(
    kernel: &Path,
    c: Common,
    exercise: bool,
    demo_peer: bool,
    linux: Option<LinuxBoot>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let mut cfg = VmConfig::from_file(kernel)?;
    let is_linux = linux.is_some();
    if is_linux {
        // A Linux guest prints no hvkit check lines; it passes by powering off.
        cfg.expected_checks.clear();
    }
    cfg.linux = linux;
    cfg.cpus = c.cpus;
    cfg.memory = c.memory;
    cfg.serial = c.serial.unwrap_or(match c.report {
        ReportFormat::Json => SerialOutput::Stderr,
        ReportFormat::Text => SerialOutput::Stdout,
    });
    cfg.timeout = (c.timeout > 0).then(|| Duration::from_secs(c.timeout));
    let trace = match &c.trace {
        Some(path) => Some(Arc::new(TraceWriter::to_file(path).map_err(|source| {
            VmmError::TraceFile {
                path: path.clone(),
                source,
            }
        })?)),
        None => None,
    };
    let storage = if c.disks.is_empty() {
        None
    } else {
        let cc = host_test_vmm::storage::ControllerConfig {
            trace: trace.clone(),
            ..Default::default()
        };
        Some(
            host_test_vmm::storage::StorageController::with_disks(cc, &c.disks)
                .map_err(|e| VmmError::Hv(format!("storage: {e}")))?,
        )
    };
    let switches = host_test_vmm::net::SwitchRegistry::new();
    let net = host_test_vmm::net::build_nics(&c.nets, &switches, trace.clone())?;
    // The demo's NICs get the net exercise (link toggle), and its default
    // switch the host peer; both live as long as the partition's factory.
    let net_exercise = if exercise && !net.is_empty() {
        let peer = if demo_peer {
            let sw = switches.get(host_test_vmm::net::peer::DEMO_SWITCH);
            Some(host_test_vmm::net::Peer::attach(&sw, Default::default())?)
        } else {
            None
        };
        Some(host_test_vmm::net::NetExercise::start(
            net.clone(),
            peer,
            Default::default(),
        )?)
    } else {
        None
    };
    if is_linux {
        // Only real device classes on a Linux guest's bus.
        cfg.hv = hv_glue::hyperv_with_vmbus(hv_glue::VmbusPartitionOptions {
            trace,
            storage,
            net,
            ..hv_glue::VmbusPartitionOptions::default()
        });
    } else if trace.is_some() || storage.is_some() || exercise || !net.is_empty() {
        cfg.hv = hv_glue::hyperv_with_vmbus(hv_glue::VmbusPartitionOptions {
            trace,
            storage,
            net,
            net_exercise,
            ic_exercise: exercise,
            ..hv_glue::VmbusPartitionOptions::test_guest()
        });
    }
    let out = match &c.api_socket {
        Some(socket) => api::run_with_api(cfg, socket)?,
        None => vmm::run(cfg)?,
    };
    match c.report {
        ReportFormat::Json => println!("{}", out.report.to_json()),
        ReportFormat::Text => print!("\n{}", out.report.to_text()),
    }
    if is_linux {
        return Ok(matches!(out.end, RunEnd::PoweredOff { .. }));
    }
    Ok(out.passed())
}

/// `demo`: the test guest with the host ICs' exercise script, the net
/// exercise and, unless `--net` is given, one NIC (MAC
/// `peer::DEMO_GUEST_MAC`) on the demo switch with the host network peer;
/// and, unless `--no-demo-disks` or `--disk`, the two generated disks of
/// `host_test_vmm::storage::demo` (LUN 0 read-write, LUN 1 read-only) for its
/// storage checks; they are deleted after the run.
fn demo(elf: &Path, demo_disks: bool, mut c: Common) -> Result<bool, Box<dyn std::error::Error>> {
    let demo_peer = c.nets.is_empty();
    if demo_peer {
        c.nets.push(host_test_vmm::net::NetSpec {
            backend: host_test_vmm::net::NetBackendSpec::Switch(
                host_test_vmm::net::peer::DEMO_SWITCH.into(),
            ),
            mac: Some(host_test_vmm::net::peer::DEMO_GUEST_MAC),
            mtu: None,
        });
    }
    if !demo_disks || !c.disks.is_empty() {
        return run(elf, c, true, demo_peer, None);
    }
    let (dir, specs) = host_test_vmm::storage::demo::create_demo_disks(&std::env::temp_dir())?;
    c.disks = specs;
    let r = run(elf, c, true, demo_peer, None);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("host-test-vmm: cannot remove {}: {e}", dir.display());
    }
    r
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Ctl {
            api_socket,
            command,
        } => {
            return match api::client::run_ctl(&api_socket, &command) {
                Ok(reply) => {
                    println!("{}", reply.body);
                    if reply.ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("host-test-vmm ctl: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Run {
            kernel,
            boot,
            initrd,
            cmdline,
            common,
        } => std::fs::read(&kernel)
            .map_err(|source| {
                VmmError::ReadImage {
                    path: kernel.clone(),
                    source,
                }
                .into()
            })
            .and_then(|image| linux_boot(&image, boot, initrd.as_deref(), cmdline))
            .and_then(|linux| run(&kernel, common, false, false, linux)),
        Cmd::Demo {
            no_demo_disks,
            common,
        } => vmm::guest_build::build_test_guest()
            .map_err(Into::into)
            .and_then(|elf| demo(&elf, !no_demo_disks, common)),
        Cmd::Bench {
            which:
                BenchCmd::Hypercall {
                    iterations,
                    rounds,
                    json,
                },
        } => {
            return match bench_hypercall(iterations, rounds, &json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("host-test-vmm bench: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Bench {
            which:
                BenchCmd::Ring {
                    packets,
                    rounds,
                    batch,
                    json,
                },
        } => {
            return match bench_ring(packets, rounds, batch, &json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("host-test-vmm bench: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Bench {
            which: BenchCmd::Net { frames, json },
        } => {
            let cfg = host_test_vmm::bench::NetBenchConfig {
                frames,
                ..Default::default()
            };
            return match host_test_vmm::bench::net_throughput(&cfg) {
                Ok(r) => {
                    print!("{}", r.to_table());
                    let text = serde_json::to_string_pretty(&r).unwrap_or_default();
                    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    match std::fs::write(&json, text) {
                        Ok(()) => {
                            println!("JSON: {}", json.display());
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("error: writing {}: {e}", json.display());
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: bench net: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Bench {
            which:
                BenchCmd::Storage {
                    size,
                    seconds_per_point,
                    ios,
                    rounds,
                    json,
                    svg,
                },
        } => {
            return match bench_storage(size, seconds_per_point, ios, rounds, &json, &svg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("host-test-vmm bench: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("host-test-vmm: {e}");
            ExitCode::from(2)
        }
    }
}
