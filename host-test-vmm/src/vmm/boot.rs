//! The direct 64-bit boot protocol of docs/ARCHITECTURE.md: GDT, identity page
//! tables, per-vCPU stacks and entry registers.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::elf::ElfImage;
use super::error::VmmError;

/// Everything below this guest-physical address belongs to the VMM.
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// GDT location (0x08 = 64-bit code, 0x10 = data).
pub const GDT_ADDR: u64 = 0x500;
/// PML4 location; PDPT and four page directories follow it.
pub const PML4_ADDR: u64 = 0x1_0000;
const PDPT_ADDR: u64 = PML4_ADDR + 0x1000;
const PD_ADDR: u64 = PML4_ADDR + 0x2000;
/// Top of vCPU 0's stack; vCPU n's stack top is `STACK_TOP - n * STACK_SIZE`.
pub const STACK_TOP: u64 = 0x8_0000;
/// Stack per vCPU.
pub const STACK_SIZE: u64 = 0x8000;
/// Most vCPUs the stack layout leaves room for.
pub const MAX_VCPUS: u32 = 8;
/// Smallest RAM: the low MiB plus one MiB for the guest.
pub const MIN_RAM: u64 = 2 << 20;
/// Largest RAM: RAM must end below the 32-bit MMIO hole (LAPIC at 0xFEE00000).
pub const MAX_RAM: u64 = 3 << 30;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;
/// Flat 64-bit code (L=1, P, DPL0, execute/read, accessed).
const GDT_CODE64: u64 = 0x00AF_9B00_0000_FFFF;
/// Flat data (G, D/B, P, DPL0, read/write, accessed).
const GDT_DATA: u64 = 0x00CF_9300_0000_FFFF;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn mem_err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Memory(e.to_string())
}

/// Writes the VMM's low-memory structures (GDT, page tables) and the guest
/// image into zeroed guest RAM.
pub fn load(mem: &GuestMemoryMmap, image: &ElfImage) -> Result<(), VmmError> {
    let gdt = [0u64, GDT_CODE64, GDT_DATA, 0, 0];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(mem_err)?;
    }
    write_page_tables(mem)?;
    for s in &image.segments {
        mem.write_slice(&s.data, GuestAddress(s.paddr))
            .map_err(mem_err)?;
        // The BSS part is already zero: RAM is fresh or was zeroed by reset.
    }
    Ok(())
}

/// Identity-maps 0..4 GiB with 2 MiB pages at [`PML4_ADDR`], so RAM and the
/// LAPIC page are reachable (both boot protocols use it).
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))
        .map_err(mem_err)?;
    for gib in 0..4u64 {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | 0x3, GuestAddress(PDPT_ADDR + gib * 8))
            .map_err(mem_err)?;
        for e in 0..512u64 {
            let phys = (gib << 30) | (e << 21);
            // Present, writable, 2 MiB page.
            mem.write_obj(phys | 0x83, GuestAddress(pd + e * 8))
                .map_err(mem_err)?;
        }
    }
    Ok(())
}

/// Control registers and EFER for 64-bit mode with the identity page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
}

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
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts `vcpu` (index `vp`) in the protocol's entry state.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    vp: u32,
    vp_count: u32,
    ram_size: u64,
    entry: u64,
) -> Result<(), VmmError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(VmmError::kvm("KVM_GET_SREGS"))?;
    sregs.cs = segment(CODE_SELECTOR, true);
    let data = segment(DATA_SELECTOR, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    // VMX insists on a usable busy TSS even though the guest never switches stacks through it.
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 0xB,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 5 * 8 - 1;
    long_mode_sregs(&mut sregs);
    vcpu.set_sregs(&sregs)
        .map_err(VmmError::kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: entry,
        rsp: STACK_TOP - u64::from(vp) * STACK_SIZE,
        rdi: u64::from(vp),
        rsi: u64::from(vp_count),
        rdx: ram_size,
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

/// Checks the RAM size and vCPU count against the protocol's limits.
pub fn check_limits(ram_size: u64, vp_count: u32) -> Result<(), VmmError> {
    if ram_size < MIN_RAM {
        return Err(VmmError::TooLittleMemory {
            requested: ram_size,
            minimum: MIN_RAM,
        });
    }
    if ram_size > MAX_RAM {
        return Err(VmmError::TooMuchMemory {
            requested: ram_size,
            maximum: MAX_RAM,
        });
    }
    if vp_count == 0 || vp_count > MAX_VCPUS {
        return Err(VmmError::BadCpuCount {
            requested: vp_count,
            maximum: MAX_VCPUS,
        });
    }
    Ok(())
}
