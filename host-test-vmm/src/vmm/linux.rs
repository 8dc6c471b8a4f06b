//! Booting a real Linux kernel (the Linux x86 64-bit boot protocol,
//! `Documentation/arch/x86/boot.rst`), next to hvkit's own direct boot
//! protocol for the bare-metal test guest.
//!
//! Which protocol a `--kernel` file gets: a bzImage (setup header magic
//! `HdrS` at 0x202) is always Linux; an ELF is Linux when it carries an ELF
//! note named `"Linux"` (every vmlinux does: build salt, version notes) and
//! hvkit's protocol otherwise. `run --boot linux|hvkit` overrides the guess.
//!
//! Guest-physical layout (everything below 1 MiB belongs to the VMM; the
//! kernel also reserves the first MiB itself):
//!
//! | what | where |
//! |---|---|
//! | GDT (0x10 = `__BOOT_CS`, 0x18 = `__BOOT_DS`) | 0x500 |
//! | boot_params ("zero page") | 0x7000 |
//! | boot stack top | 0x8FF0 |
//! | identity page tables for 0..4 GiB (2 MiB pages) | 0x10000..0x16000 |
//! | command line | 0x20000 |
//! | ACPI tables (RSDP first) | 0xE0000.. ([`super::acpi`]) |
//! | vmlinux segments / bzImage protected-mode part | their `p_paddr` / 1 MiB |
//! | initrd | top of RAM, page aligned |
//!
//! A bzImage decompresses itself at CPL0, which PVM emulates at about 1 MIPS:
//! use the uncompressed vmlinux there.

use std::io::Cursor;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::acpi::AcpiTables;
use super::boot;
use super::error::VmmError;

/// Where the zero page goes (RSI at entry).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line accepted (including the NUL).
pub const CMDLINE_MAX: usize = 0x1000;
const BOOT_STACK: u64 = 0x8FF0;
/// End of the VMM's own low structures (GDT .. command line), kept out of usable RAM.
const VMM_LOW_END: u64 = CMDLINE_ADDR + CMDLINE_MAX as u64;
/// Start of the extended BIOS data area (reserved, as on a PC).
const EBDA_START: u64 = 0x9_FC00;
const HIGH_RAM_START: u64 = 0x10_0000;
/// The protected-mode part of a bzImage loads here.
const BZIMAGE_LOAD: u64 = 0x10_0000;
/// Highest initrd end for a kernel that does not say otherwise.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7FFF_FFFF;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xAA55;
const LOADED_HIGH: u8 = 1;
const XLF_KERNEL_64: u16 = 1;

const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const BOOT_TSS: u16 = 0x20;

/// The default kernel command line, linux/README.md's recommendation: serial
/// console, the features this KVM cannot emulate at CPL0 switched off (see
/// /work/shared/reference/kvm-on-these-machines.md), root on the first storvsc disk.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 noxsave \
clearcpuid=smap,popcnt,fsgsbase,rdrand,rdseed,rdpid noapic reboot=k panic=-1 \
8250.nr_uarts=1 root=/dev/sda rootfstype=ext4 rw rootwait";

/// How a `--kernel` file is booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// hvkit's direct 64-bit protocol (docs/ARCHITECTURE.md): the test guest.
    Hvkit,
    /// The Linux x86 boot protocol.
    Linux,
}

/// The two kernel formats Linux is accepted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF (`vmlinux`).
    Vmlinux,
    /// `arch/x86/boot/bzImage`.
    BzImage,
}

/// The format of `image` if it looks like a Linux kernel, else `None`.
pub fn detect(image: &[u8]) -> Option<KernelFormat> {
    if image.len() >= 0x206 && image[0x202..0x206] == HDRS_MAGIC.to_le_bytes() {
        return Some(KernelFormat::BzImage);
    }
    if image.starts_with(b"\x7fELF") && elf_has_note(image, b"Linux") {
        return Some(KernelFormat::Vmlinux);
    }
    None
}

/// What a Linux boot needs besides the kernel.
#[derive(Debug, Clone, Default)]
pub struct LinuxBoot {
    /// Kernel command line.
    pub cmdline: String,
    /// Initial ramdisk (uncompressed cpio recommended on PVM).
    pub initrd: Option<Vec<u8>>,
}

/// A Linux kernel loaded into guest RAM.
#[derive(Debug, Clone)]
pub struct LoadedLinux {
    /// 64-bit entry point (physical).
    pub entry: u64,
    /// boot_params address (RSI at entry).
    pub zero_page: u64,
    /// Function symbols of a vmlinux, for naming RIPs in errors.
    pub symbols: Symbols,
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParams(boot_params);
// SAFETY: boot_params is a packed C struct of integers and arrays of integers:
// no padding, every bit pattern valid.
unsafe impl ByteValued for BootParams {}

fn mem_err(what: &str) -> impl FnOnce(vm_memory::GuestMemoryError) -> VmmError + '_ {
    move |e| VmmError::Memory(format!("{what}: {e}"))
}

/// The e820 map for `ram` bytes of RAM (see the module table).
pub fn e820_map(ram: u64) -> Vec<boot_e820_entry> {
    let e = |addr: u64, end: u64, r#type: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    vec![
        e(0, boot::GDT_ADDR, E820_RAM),
        e(boot::GDT_ADDR, VMM_LOW_END, E820_RESERVED),
        e(VMM_LOW_END, EBDA_START, E820_RAM),
        e(EBDA_START, 0xA_0000, E820_RESERVED),
        e(super::acpi::ACPI_BASE, HIGH_RAM_START, E820_RESERVED),
        e(HIGH_RAM_START, ram, E820_RAM),
    ]
}

/// Writes GDT, page tables, kernel, initrd, command line, ACPI tables and
/// the zero page into zeroed guest RAM.
pub fn load(
    mem: &GuestMemoryMmap,
    ram: u64,
    vp_count: u32,
    kernel: &[u8],
    cfg: &LinuxBoot,
) -> Result<LoadedLinux, VmmError> {
    let format = detect(kernel).ok_or_else(|| {
        VmmError::BadElf(
            "not a Linux kernel: neither a bzImage (no \"HdrS\" at 0x202) nor an ELF with a \"Linux\" note; use --boot hvkit for the test guest"
                .into(),
        )
    })?;
    boot::write_page_tables(mem)?;
    let gdt = [0u64, 0, GDT_CODE64, GDT_DATA, 0];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(boot::GDT_ADDR + 8 * i as u64))
            .map_err(mem_err("GDT"))?;
    }

    let mut image = Cursor::new(kernel);
    let (entry, kernel_end, mut hdr, symbols) = match format {
        KernelFormat::Vmlinux => {
            let r = Elf::load(mem, None, &mut image, Some(GuestAddress(HIGH_RAM_START)))
                .map_err(|e| VmmError::BadElf(format!("loading vmlinux: {e}")))?;
            let hdr = setup_header {
                type_of_loader: 0xFF,
                boot_flag: KERNEL_BOOT_FLAG_MAGIC,
                header: HDRS_MAGIC,
                version: 0x020F,
                kernel_alignment: 0x100_0000,
                initrd_addr_max: DEFAULT_INITRD_ADDR_MAX as u32,
                ..Default::default()
            };
            (
                r.kernel_load.0,
                r.kernel_end,
                hdr,
                Symbols::from_elf(kernel),
            )
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(
                mem,
                Some(GuestAddress(BZIMAGE_LOAD)),
                &mut image,
                Some(GuestAddress(HIGH_RAM_START)),
            )
            .map_err(|e| VmmError::BadElf(format!("loading bzImage: {e}")))?;
            let hdr = r
                .setup_header
                .ok_or_else(|| VmmError::BadElf("bzImage without a setup header".into()))?;
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(VmmError::BadElf(
                    "this bzImage has no 64-bit entry point (XLF_KERNEL_64 clear)".into(),
                ));
            }
            // The 64-bit entry is 0x200 past the start of the protected-mode code.
            let end = BZIMAGE_LOAD + kernel.len() as u64;
            (BZIMAGE_LOAD + 0x200, end, hdr, Symbols::default())
        }
    };
    if kernel_end > ram {
        return Err(VmmError::Memory(format!(
            "the kernel ends at {kernel_end:#x}, beyond RAM ({ram:#x}); give the guest more memory"
        )));
    }
    hdr.type_of_loader = 0xFF;
    hdr.loadflags |= LOADED_HIGH;

    let cmdline = cfg.cmdline.as_bytes();
    if cmdline.len() >= CMDLINE_MAX || cmdline.contains(&0) {
        return Err(VmmError::Memory(format!(
            "the kernel command line must be shorter than {CMDLINE_MAX} bytes and contain no NUL"
        )));
    }
    mem.write_slice(cmdline, GuestAddress(CMDLINE_ADDR))
        .map_err(mem_err("command line"))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64))
        .map_err(mem_err("command line"))?;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(initrd) = &cfg.initrd {
        let max = match u64::from(hdr.initrd_addr_max) {
            0 => DEFAULT_INITRD_ADDR_MAX,
            m => m,
        };
        let top = ram.min(max + 1);
        let addr = top
            .checked_sub(initrd.len() as u64)
            .map(|a| a & !0xFFF)
            .filter(|a| *a >= kernel_end.max(HIGH_RAM_START))
            .ok_or_else(|| {
                VmmError::Memory(format!(
                    "the initrd ({} bytes) does not fit between the kernel end ({kernel_end:#x}) and {top:#x}; give the guest more memory",
                    initrd.len()
                ))
            })?;
        mem.write_slice(initrd, GuestAddress(addr))
            .map_err(mem_err("initrd"))?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = initrd.len() as u32;
    }

    let acpi = AcpiTables::build(vp_count)?;
    acpi.write(mem)?;

    let mut params = BootParams::default();
    params.0.hdr = hdr;
    params.0.acpi_rsdp_addr = acpi.rsdp_addr;
    let map = e820_map(ram);
    for (slot, e) in params.0.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    params.0.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(mem_err("zero page"))?;
    tracing::info!(
        ?format,
        entry = format_args!("{entry:#x}"),
        kernel_end = format_args!("{kernel_end:#x}"),
        initrd = cfg.initrd.as_ref().map(Vec::len),
        cmdline = %cfg.cmdline,
        "Linux kernel loaded"
    );
    Ok(LoadedLinux {
        entry,
        zero_page: ZERO_PAGE_ADDR,
        symbols,
    })
}

/// Flat 64-bit code (L=1, P, DPL0, execute/read, accessed).
const GDT_CODE64: u64 = 0x00AF_9B00_0000_FFFF;
/// Flat data (G, D/B, P, DPL0, read/write, accessed).
const GDT_DATA: u64 = 0x00CF_9300_0000_FFFF;

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_: if code { 0xB } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// Puts the boot vCPU in the state the 64-bit boot protocol asks for: long
/// mode, identity paging, CS = `__BOOT_CS`, data = `__BOOT_DS`, interrupts
/// off, RSI = boot_params.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, loaded: &LoadedLinux) -> Result<(), VmmError> {
    let mut sregs = vcpu.get_sregs().map_err(VmmError::kvm("KVM_GET_SREGS"))?;
    boot::long_mode_sregs(&mut sregs);
    sregs.cs = segment(BOOT_CS, true);
    let data = segment(BOOT_DS, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        limit: 0x67,
        selector: BOOT_TSS,
        type_: 0xB,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = boot::GDT_ADDR;
    sregs.gdt.limit = 5 * 8 - 1;
    vcpu.set_sregs(&sregs)
        .map_err(VmmError::kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: loaded.entry,
        rsp: BOOT_STACK,
        rsi: loaded.zero_page,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(VmmError::kvm("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(VmmError::kvm("KVM_SET_FPU"))?;
    Ok(())
}

/// Function symbols of an ELF (`.symtab`), sorted by address.
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    syms: Vec<(u64, u64, String)>,
}

fn rd<const N: usize>(b: &[u8], off: u64) -> Option<[u8; N]> {
    let off = usize::try_from(off).ok()?;
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: u64) -> Option<u16> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: u64) -> Option<u32> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: u64) -> Option<u64> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}

/// True if a PT_NOTE segment of the ELF64 `b` holds a note named `name`.
fn elf_has_note(b: &[u8], name: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(b, 0x20), u16_at(b, 0x36), u16_at(b, 0x38))
    else {
        return false;
    };
    for i in 0..u64::from(phnum) {
        let ph = phoff.saturating_add(i * u64::from(phentsize));
        if u32_at(b, ph) != Some(PT_NOTE) {
            continue;
        }
        let (Some(off), Some(size)) = (u64_at(b, ph + 8), u64_at(b, ph + 32)) else {
            continue;
        };
        let mut p = off;
        let end = off.saturating_add(size);
        while p.saturating_add(12) <= end {
            let (Some(namesz), Some(descsz)) = (u32_at(b, p), u32_at(b, p + 4)) else {
                break;
            };
            let n = usize::try_from(p + 12).ok();
            let got = n.and_then(|n| b.get(n..n.checked_add(namesz as usize)?));
            if got.is_some_and(|g| g.strip_suffix(b"\0").unwrap_or(g) == name) {
                return true;
            }
            let align4 = |v: u32| (u64::from(v) + 3) & !3;
            p = p + 12 + align4(namesz) + align4(descsz);
        }
    }
    false
}

impl Symbols {
    /// Reads `.symtab` of an ELF64 image; empty if there is none or it is malformed.
    pub fn from_elf(b: &[u8]) -> Self {
        Self::parse(b).unwrap_or_default()
    }

    fn parse(b: &[u8]) -> Option<Self> {
        const SHT_SYMTAB: u32 = 2;
        const STT_FUNC: u8 = 2;
        let shoff = u64_at(b, 0x28)?;
        let shentsize = u64::from(u16_at(b, 0x3A)?);
        let shnum = u64::from(u16_at(b, 0x3C)?);
        let mut syms = Vec::new();
        for i in 0..shnum {
            let sh = shoff.checked_add(i.checked_mul(shentsize)?)?;
            if u32_at(b, sh + 4)? != SHT_SYMTAB {
                continue;
            }
            let (off, size, link, entsize) = (
                u64_at(b, sh + 24)?,
                u64_at(b, sh + 32)?,
                u32_at(b, sh + 40)?,
                u64_at(b, sh + 56)?,
            );
            let strsh = shoff.checked_add(u64::from(link).checked_mul(shentsize)?)?;
            let stroff = u64_at(b, strsh + 24)?;
            if entsize < 24 {
                return None;
            }
            for k in 0..size / entsize {
                let s = off + k * entsize;
                let info = rd::<1>(b, s + 4)?[0];
                if info & 0xF != STT_FUNC {
                    continue;
                }
                let name_off = usize::try_from(stroff + u64::from(u32_at(b, s)?)).ok()?;
                let name = b.get(name_off..)?;
                let name = &name[..name.iter().position(|c| *c == 0)?];
                syms.push((
                    u64_at(b, s + 8)?,
                    u64_at(b, s + 16)?,
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
        }
        syms.sort_by_key(|s| s.0);
        Some(Self { syms })
    }

    /// `name+0xoff/0xsize` for an address inside a known function.
    pub fn describe(&self, addr: u64) -> Option<String> {
        let i = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.syms[i];
        (addr - start < (*size).max(1)).then(|| format!("{name}+{:#x}/{size:#x}", addr - start))
    }

    /// Number of function symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// True without symbols.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// An ELF64 with one PT_LOAD at 16 MiB (entry there), a PT_NOTE "Linux"
    /// note, and a .symtab with one function `startup_64` at the entry.
    pub(crate) fn fake_vmlinux(with_note: bool) -> Vec<u8> {
        fake_vmlinux_with(&[0xF4; 16], with_note) // hlt
    }

    /// [`fake_vmlinux`] with `code` (at most 16 bytes) at the entry point.
    pub(crate) fn fake_vmlinux_with(code_in: &[u8], with_note: bool) -> Vec<u8> {
        let entry = 0x100_0000u64;
        let mut code = [0xF4u8; 16];
        code[..code_in.len()].copy_from_slice(code_in);
        let mut note = Vec::new();
        note.extend_from_slice(&6u32.to_le_bytes()); // namesz "Linux\0"
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&1u32.to_le_bytes()); // type
        note.extend_from_slice(b"Linux\0\0\0");
        note.extend_from_slice(&0u32.to_le_bytes());
        let strtab = b"\0startup_64\0";
        let mut symtab = vec![0u8; 24]; // null symbol
        let mut sym = Vec::new();
        sym.extend_from_slice(&1u32.to_le_bytes()); // name
        sym.push(0x12); // GLOBAL FUNC
        sym.push(0);
        sym.extend_from_slice(&1u16.to_le_bytes());
        sym.extend_from_slice(&entry.to_le_bytes());
        sym.extend_from_slice(&16u64.to_le_bytes());
        symtab.extend_from_slice(&sym);

        let phoff = 64u64;
        let phnum = 2u64;
        let code_off = phoff + 56 * phnum;
        let note_off = code_off + code.len() as u64;
        let symtab_off = note_off + note.len() as u64;
        let strtab_off = symtab_off + symtab.len() as u64;
        let shoff = (strtab_off + strtab.len() as u64 + 7) & !7;
        let mut b = Vec::new();
        b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b.extend_from_slice(&62u16.to_le_bytes()); // x86_64
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&entry.to_le_bytes());
        b.extend_from_slice(&phoff.to_le_bytes());
        b.extend_from_slice(&shoff.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, phnum as u16, 64, 3, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let ph = |b: &mut Vec<u8>, ty: u32, off: u64, addr: u64, size: u64| {
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&5u32.to_le_bytes());
            for v in [off, addr, addr, size, size, 0x1000] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        };
        ph(&mut b, 1, code_off, entry, code.len() as u64);
        let note_type = if with_note { 4 } else { 6 }; // PT_NOTE or PT_PHDR
        ph(&mut b, note_type, note_off, 0, note.len() as u64);
        b.extend_from_slice(&code);
        b.extend_from_slice(&note);
        b.extend_from_slice(&symtab);
        b.extend_from_slice(strtab);
        b.resize(shoff as usize, 0);
        let sh = |b: &mut Vec<u8>, ty: u32, off: u64, size: u64, link: u32, entsize: u64| {
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            for v in [0u64, 0, off, size] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&link.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&8u64.to_le_bytes());
            b.extend_from_slice(&entsize.to_le_bytes());
        };
        sh(&mut b, 0, 0, 0, 0, 0);
        sh(&mut b, 2, symtab_off, symtab.len() as u64, 2, 24);
        sh(&mut b, 3, strtab_off, strtab.len() as u64, 0, 0);
        b
    }

    fn ram(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn detects_vmlinux_by_its_note_and_bzimage_by_hdrs() {
        assert_eq!(detect(&fake_vmlinux(true)), Some(KernelFormat::Vmlinux));
        assert_eq!(
            detect(&fake_vmlinux(false)),
            None,
            "no Linux note: hvkit ELF"
        );
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect(b"\x7fELF"), None);
        assert_eq!(detect(&[]), None);
    }

    #[test]
    fn the_bundled_elf_shape_is_not_linux() {
        let flat = crate::vmm::elf::ElfImage::build_flat(&[0xF4], 0x20_0000);
        assert_eq!(detect(&flat), None);
    }

    #[test]
    fn symbols_name_a_rip() {
        let s = Symbols::from_elf(&fake_vmlinux(true));
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.describe(0x100_0004).as_deref(),
            Some("startup_64+0x4/0x10")
        );
        assert_eq!(s.describe(0x100_0010), None);
        assert_eq!(s.describe(0x10), None);
        assert!(Symbols::from_elf(b"garbage").is_empty());
    }

    #[test]
    fn e820_reserves_vmm_structures_bios_area_and_maps_high_ram() {
        let m = e820_map(256 << 20);
        let covers = |addr: u64, ty: u32| {
            m.iter()
                .any(|e| e.r#type == ty && e.addr <= addr && addr < e.addr + e.size)
        };
        for a in [
            boot::GDT_ADDR,
            ZERO_PAGE_ADDR,
            boot::PML4_ADDR,
            CMDLINE_ADDR,
        ] {
            assert!(covers(a, E820_RESERVED), "{a:#x} reserved");
        }
        assert!(covers(0xE0000, E820_RESERVED) && covers(0xFFFFF, E820_RESERVED));
        assert!(
            covers(0x50000, E820_RAM),
            "low RAM for the realmode trampoline"
        );
        assert!(covers(0x100000, E820_RAM) && covers((256 << 20) - 1, E820_RAM));
        for w in m.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "sorted, no overlap");
        }
    }

    #[test]
    fn load_writes_zero_page_cmdline_initrd_and_acpi() {
        let size = 64u64 << 20;
        let mem = ram(size);
        let initrd = vec![0xA5u8; 10_000];
        let cfg = LinuxBoot {
            cmdline: "console=ttyS0 root=/dev/sda".into(),
            initrd: Some(initrd.clone()),
        };
        let l = load(&mem, size, 2, &fake_vmlinux(true), &cfg).unwrap();
        assert_eq!(l.entry, 0x100_0000);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x100_0000)).unwrap(), 0xF4);
        let p: BootParams = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let hdr = p.0.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xFF);
        assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE_ADDR);
        let mut c = vec![0u8; cfg.cmdline.len() + 1];
        mem.read_slice(&mut c, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&c[..cfg.cmdline.len()], cfg.cmdline.as_bytes());
        assert_eq!(c[cfg.cmdline.len()], 0);
        let (ri, rs) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as usize);
        assert_eq!(rs, initrd.len());
        assert_eq!(ri % 4096, 0);
        assert!(ri + rs as u64 <= size);
        let mut back = vec![0u8; rs];
        mem.read_slice(&mut back, GuestAddress(ri)).unwrap();
        assert_eq!(back, initrd);
        let rsdp = { p.0.acpi_rsdp_addr };
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        assert_eq!({ p.0.e820_entries } as usize, e820_map(size).len());
        // GDT: __BOOT_CS at 0x10, __BOOT_DS at 0x18.
        let cs: u64 = mem.read_obj(GuestAddress(boot::GDT_ADDR + 0x10)).unwrap();
        let ds: u64 = mem.read_obj(GuestAddress(boot::GDT_ADDR + 0x18)).unwrap();
        assert_eq!((cs, ds), (GDT_CODE64, GDT_DATA));
    }

    #[test]
    fn load_rejects_what_does_not_fit() {
        let size = 32u64 << 20;
        let mem = ram(size);
        let cfg = LinuxBoot {
            cmdline: "x".repeat(CMDLINE_MAX),
            initrd: None,
        };
        assert!(load(&mem, size, 1, &fake_vmlinux(true), &cfg).is_err());
        let cfg = LinuxBoot {
            cmdline: String::new(),
            initrd: Some(vec![0; 40 << 20]),
        };
        assert!(load(&mem, size, 1, &fake_vmlinux(true), &cfg).is_err());
        let cfg = LinuxBoot::default();
        assert!(load(&mem, size, 1, &fake_vmlinux(false), &cfg).is_err());
    }

    /// Boots `code` as a "vmlinux" on KVM (1 vCPU, no Hyper-V) and returns how the run ended.
    fn boot(code: &[u8]) -> crate::vmm::RunEnd {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "/dev/kvm is absent: the Linux entry tests need KVM"
        );
        let mut cfg = crate::vmm::VmConfig::new(fake_vmlinux_with(code, true));
        cfg.memory = 64 << 20;
        cfg.serial = crate::vmm::SerialOutput::Null;
        cfg.timeout = Some(std::time::Duration::from_secs(60));
        cfg.hv = crate::vmm::hv_glue::no_hyperv();
        cfg.expected_checks.clear();
        cfg.linux = Some(LinuxBoot::default());
        crate::vmm::run(cfg).expect("partition").end
    }

    #[test]
    fn entry_state_is_the_64bit_boot_protocol() {
        use crate::vmm::RunEnd;
        // mov %esi,%eax; out %eax,$0xF4: RSI must be the zero page.
        assert_eq!(
            boot(&[0x89, 0xF0, 0xE7, 0xF4]),
            RunEnd::DebugExit {
                code: ZERO_PAGE_ADDR as u32,
                vp: 0
            }
        );
        // mov %cs,%eax; out %eax,$0xF4: CS must be __BOOT_CS.
        assert_eq!(
            boot(&[0x8C, 0xC8, 0xE7, 0xF4]),
            RunEnd::DebugExit {
                code: u32::from(BOOT_CS),
                vp: 0
            }
        );
        // mov %ds,%eax; out %eax,$0xF4: data segments are __BOOT_DS.
        assert_eq!(
            boot(&[0x8C, 0xD8, 0xE7, 0xF4]),
            RunEnd::DebugExit {
                code: u32::from(BOOT_DS),
                vp: 0
            }
        );
    }

    #[test]
    fn acpi_s5_write_powers_off_and_i8042_reset_resets() {
        use crate::vmm::RunEnd;
        // mov $0x34,%al (SLP_TYP 5 | SLP_EN); mov $0x3C0,%dx; out %al,(%dx); hlt
        assert_eq!(
            boot(&[0xB0, 0x34, 0x66, 0xBA, 0xC0, 0x03, 0xEE, 0xF4]),
            RunEnd::PoweredOff { vp: 0 }
        );
        // mov $0xFE,%al; out %al,$0x64; hlt
        assert_eq!(
            boot(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4]),
            RunEnd::Reset { vp: 0 }
        );
        // SLP_EN with another sleep type is ignored: the guest goes on to exit with 7.
        // mov $0x2C,%al; mov $0x3C0,%dx; out %al,(%dx); mov $7,%al; out %al,$0xF4
        assert_eq!(
            boot(&[0xB0, 0x2C, 0x66, 0xBA, 0xC0, 0x03, 0xEE, 0xB0, 0x07, 0xE6, 0xF4]),
            RunEnd::DebugExit { code: 7, vp: 0 }
        );
    }

    #[test]
    fn fwait_never_stops_a_run() {
        // fwait; mov $5,%al; out %al,$0xF4. PVM cannot emulate fwait at CPL0 (Linux's
        // fpu__drop runs it): the assist skips it. Elsewhere it runs natively.
        assert_eq!(
            boot(&[0x9B, 0xB0, 0x05, 0xE6, 0xF4]),
            crate::vmm::RunEnd::DebugExit { code: 5, vp: 0 }
        );
    }

    #[test]
    fn an_unemulated_instruction_names_rip_bytes_and_symbol() {
        use crate::vmm::RunEnd;
        // popcnt %rax,%rax; xor %eax,%eax; out %al,$0xF4
        match boot(&[0xF3, 0x48, 0x0F, 0xB8, 0xC0, 0x31, 0xC0, 0xE6, 0xF4]) {
            RunEnd::Error { message, .. } => {
                assert!(message.contains("RIP 0x1000000"), "{message}");
                assert!(message.contains("(startup_64+0x0/0x10)"), "{message}");
                assert!(message.contains("f3 48 0f b8 c0"), "{message}");
            }
            RunEnd::DebugExit { code: 0, .. } => {
                eprintln!("popcnt ran natively: not a PVM host");
            }
            other => panic!("unexpected end {other:?}"),
        }
    }
}
