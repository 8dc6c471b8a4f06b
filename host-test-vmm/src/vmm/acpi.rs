//! ACPI tables for Linux guests: RSDP, XSDT, FADT, MADT and a DSDT that
//! describes the one device Linux cannot find otherwise, the VMBus
//! (`\_SB.VMOD.VMBS`, `_HID "VMBUS"`; fact sheet §10.2).
//!
//! The platform is ACPI "hardware-reduced" (no PM1 blocks, no SCI, no legacy
//! PIC or PIT setup in Linux): the only fixed hardware is the sleep
//! control/status register pair at [`SLEEP_CONTROL_PORT`], which is how
//! `kernel_power_off()` reaches the VMM (`\_S5_` gives SLP_TYP 5). The tables
//! live in the BIOS area at [`ACPI_BASE`], which the e820 map reserves.

use acpi_tables::aml;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::{GenericAddress, Sdt};
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::VmmError;

/// Where the tables start (the RSDP is first, inside the 0xE0000..0x100000
/// area Linux also scans).
pub const ACPI_BASE: u64 = 0xE_0000;
/// End of the area the tables may use.
pub const ACPI_END: u64 = 0x10_0000;
/// I/O port of the ACPI sleep control register (FADT SLEEP_CONTROL_REG).
pub const SLEEP_CONTROL_PORT: u16 = 0x3C0;
/// I/O port of the ACPI sleep status register (FADT SLEEP_STATUS_REG).
pub const SLEEP_STATUS_PORT: u16 = 0x3C1;
/// SLP_TYP the DSDT's `\_S5_` object announces for soft-off.
pub const SLP_TYP_S5: u8 = 5;
/// SLP_EN in the sleep control register (ACPI 6.4 §4.8.3.7).
const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;
/// The physical address of the IOAPIC KVM's in-kernel irqchip emulates.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
const LAPIC_ADDR: u32 = 0xFEE0_0000;

const OEM_ID: [u8; 6] = *b"HVKIT ";
const OEM_TABLE: [u8; 8] = *b"HVKITVMM";

/// What a write to the sleep control register asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepRequest {
    /// SLP_EN with SLP_TYP = S5: power off.
    PowerOff,
    /// SLP_EN with another sleep type (not supported: the VMM ignores it).
    Other(u8),
    /// SLP_EN clear: nothing to do.
    None,
}

/// Decodes a byte written to [`SLEEP_CONTROL_PORT`].
pub fn decode_sleep_control(value: u8) -> SleepRequest {
    if value & SLEEP_CONTROL_SLP_EN == 0 {
        return SleepRequest::None;
    }
    match (value >> 2) & 7 {
        SLP_TYP_S5 => SleepRequest::PowerOff,
        t => SleepRequest::Other(t),
    }
}

/// The tables, laid out for [`ACPI_BASE`].
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// Guest-physical address of the RSDP (boot_params.acpi_rsdp_addr).
    pub rsdp_addr: u64,
    /// (guest-physical address, bytes) of every table, RSDP first.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

fn align(v: u64) -> u64 {
    (v + 63) & !63
}

/// The DSDT body: `\_SB.VMOD.VMBS` (the VMBus) and `\_S5_`.
fn dsdt() -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE, 1);
    let crs_empty = aml::ResourceTemplate::new(vec![]);
    // Linux's vmbus_acpi_add walks _CRS and fails without one; an End Tag only
    // (no MMIO windows: no synthetic video or vPCI is offered) is enough.
    let vmbs_hid = aml::Name::new("_HID".into(), &"VMBUS");
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs_empty);
    let vmbus = aml::Device::new("VMBS".into(), vec![&vmbs_hid, &uid, &crs]);
    // Hyper-V's own layout: a module device (ACPI0004) holding the VMBus.
    let vmod_hid = aml::Name::new("_HID".into(), &"ACPI0004");
    let vmod = aml::Device::new("VMOD".into(), vec![&vmod_hid, &uid, &vmbus]);
    aml::Scope::new("\\_SB_".into(), vec![&vmod]).to_aml_bytes(&mut dsdt);
    let s5 = aml::Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]);
    aml::Name::new("\\_S5_".into(), &s5).to_aml_bytes(&mut dsdt);
    dsdt
}

/// FADT (ACPI 6.x layout, 276 bytes), hardware-reduced.
fn fadt(dsdt_addr: u64) -> Sdt {
    let mut f = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    // IAPC_BOOT_ARCH: no VGA (bit 2), no CMOS RTC (bit 5): nothing to probe there.
    f.write(109, (1u16 << 2) | (1 << 5));
    // Flags: HW_REDUCED_ACPI (bit 20); WBINVD (bit 0) as every modern platform.
    f.write(112, (1u32 << 20) | 1);
    f.write(131, 3u8); // FADT minor version (6.3)
    f.write(140, dsdt_addr); // X_DSDT
    f.write(
        244,
        GenericAddress::io_port_address::<u8>(SLEEP_CONTROL_PORT),
    );
    f.write(
        256,
        GenericAddress::io_port_address::<u8>(SLEEP_STATUS_PORT),
    );
    f.write(268, *b"HVKITVMM"); // hypervisor vendor identity
    f.update_checksum();
    f
}

/// MADT: one enabled local APIC per vCPU (APIC ID = VP index), the in-kernel
/// IOAPIC and the usual ISA IRQ0 -> GSI2 override.
fn madt(vp_count: u32) -> Sdt {
    let mut m = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, 1);
    m.write(36, LAPIC_ADDR);
    m.write(40, 1u32); // PCAT_COMPAT: KVM's irqchip includes the dual 8259
    for vp in 0..vp_count {
        // Type 0, length 8, ACPI processor UID, APIC ID, flags = enabled.
        m.append_slice(&[0, 8, vp as u8, vp as u8, 1, 0, 0, 0]);
    }
    // Type 1 IOAPIC: length 12, id, reserved, address, GSI base 0.
    let mut io = vec![1u8, 12, vp_count as u8, 0];
    io.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    io.extend_from_slice(&0u32.to_le_bytes());
    m.append_slice(&io);
    // Type 2 interrupt source override: ISA bus 0, IRQ 0 -> GSI 2, flags 0.
    let mut iso = vec![2u8, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&0u16.to_le_bytes());
    m.append_slice(&iso);
    m.update_checksum();
    m
}

impl AcpiTables {
    /// Builds the tables for `vp_count` vCPUs.
    pub fn build(vp_count: u32) -> Result<Self, VmmError> {
        let rsdp_addr = ACPI_BASE;
        let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
        // XSDT: header + two 8-byte pointers (FADT, MADT).
        let xsdt_len = 36 + 2 * 8;
        let dsdt_addr = align(xsdt_addr + xsdt_len);
        let dsdt = dsdt();
        let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
        let fadt = fadt(dsdt_addr);
        let madt_addr = align(fadt_addr + fadt.len() as u64);
        let madt = madt(vp_count);
        let end = madt_addr + madt.len() as u64;
        if end > ACPI_END {
            return Err(VmmError::Memory(format!(
                "ACPI tables end at {end:#x}, beyond the BIOS area ({ACPI_END:#x}); use fewer vCPUs"
            )));
        }
        let mut xsdt = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE, 1);
        xsdt.append(fadt_addr);
        xsdt.append(madt_addr);
        xsdt.update_checksum();
        let mut rsdp_bytes = Vec::new();
        Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);
        Ok(Self {
            rsdp_addr,
            blobs: vec![
                (rsdp_addr, rsdp_bytes),
                (xsdt_addr, xsdt.as_slice().to_vec()),
                (dsdt_addr, dsdt.as_slice().to_vec()),
                (fadt_addr, fadt.as_slice().to_vec()),
                (madt_addr, madt.as_slice().to_vec()),
            ],
        })
    }

    /// Writes every table into guest RAM.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
        for (addr, bytes) in &self.blobs {
            mem.write_slice(bytes, GuestAddress(*addr))
                .map_err(|e| VmmError::Memory(format!("writing ACPI table at {addr:#x}: {e}")))?;
        }
        Ok(())
    }

    /// The table with `signature` (tests and diagnostics).
    pub fn table(&self, signature: &[u8]) -> Option<&[u8]> {
        self.blobs
            .iter()
            .map(|(_, b)| b.as_slice())
            .find(|b| b.starts_with(signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_lengths_and_pointers() {
        let t = AcpiTables::build(2).unwrap();
        let rsdp = &t.blobs[0].1;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp.len(), 36);
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "RSDP revision 2 (XSDT)");
        for (addr, b) in &t.blobs[1..] {
            assert_eq!(u32_at(b, 4) as usize, b.len(), "length of {addr:#x}");
            assert_eq!(sum(b), 0, "checksum of {:?}", std::str::from_utf8(&b[..4]));
            assert!(*addr >= ACPI_BASE && addr + b.len() as u64 <= ACPI_END);
        }
        let xsdt_addr = u64_at(rsdp, 24);
        let xsdt = t.blobs.iter().find(|(a, _)| *a == xsdt_addr).unwrap();
        assert_eq!(&xsdt.1[..4], b"XSDT");
        let ptrs: Vec<u64> = (36..xsdt.1.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt.1, o))
            .collect();
        let sig = |a: u64| {
            t.blobs
                .iter()
                .find(|(x, _)| *x == a)
                .map(|(_, b)| b[..4].to_vec())
        };
        assert_eq!(sig(ptrs[0]).unwrap(), b"FACP");
        assert_eq!(sig(ptrs[1]).unwrap(), b"APIC");
        let fadt = t.table(b"FACP").unwrap();
        assert_eq!(fadt.len(), 276);
        assert_eq!(sig(u64_at(fadt, 140)).unwrap(), b"DSDT", "X_DSDT");
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "hardware-reduced");
        // Sleep control/status GAS: system I/O space, our ports (Linux needs both for S5).
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), u64::from(SLEEP_CONTROL_PORT));
        assert_eq!(fadt[256], 1);
        assert_eq!(u64_at(fadt, 260), u64::from(SLEEP_STATUS_PORT));
    }

    #[test]
    fn madt_has_one_lapic_per_vcpu_and_the_ioapic() {
        let t = AcpiTables::build(3).unwrap();
        let m = t.table(b"APIC").unwrap();
        assert_eq!(u32_at(m, 36), 0xFEE0_0000);
        let mut lapics = Vec::new();
        let mut ioapic = None;
        let mut o = 44;
        while o < m.len() {
            let (ty, len) = (m[o], m[o + 1] as usize);
            assert!(len >= 2 && o + len <= m.len());
            match ty {
                0 => lapics.push((m[o + 3], m[o + 4] & 1)),
                1 => ioapic = Some(u32_at(m, o + 4)),
                _ => {}
            }
            o += len;
        }
        assert_eq!(lapics, vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(ioapic, Some(IOAPIC_ADDR));
    }

    fn find(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_describes_the_vmbus_with_a_crs_and_s5() {
        let t = AcpiTables::build(1).unwrap();
        let d = t.table(b"DSDT").unwrap();
        // DeviceOp (ExtOpPrefix 0x5B 0x82) named VMBS under VMOD.
        assert!(find(d, b"VMOD"));
        assert!(find(d, b"VMBS"));
        // _HID "VMBUS" as a string (StringPrefix 0x0D).
        assert!(find(d, b"_HID\x0dVMBUS\x00"), "VMBus _HID string");
        assert!(find(d, b"_UID"));
        // _CRS: a Buffer whose content is only an End Tag (0x79 checksum).
        assert!(find(d, b"_CRS\x11"), "_CRS is a buffer");
        assert!(find(d, &[0x79, 0x00]), "End Tag");
        // \_S5_ package starting with SLP_TYP 5.
        assert!(find(d, b"_S5_\x12"));
        assert!(find(d, &[0x0A, SLP_TYP_S5]));
    }

    #[test]
    fn sleep_control_decoding() {
        assert_eq!(
            decode_sleep_control((5 << 2) | 0x20),
            SleepRequest::PowerOff
        );
        assert_eq!(decode_sleep_control(5 << 2), SleepRequest::None);
        assert_eq!(
            decode_sleep_control((3 << 2) | 0x20),
            SleepRequest::Other(3)
        );
    }
}
