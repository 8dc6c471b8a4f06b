//! Minimal ELF64 reader for bare-metal guests: just enough to validate the
//! image and place its PT_LOAD segments at their physical addresses.

use zerocopy::{FromBytes, Immutable, KnownLayout};

use super::boot::LOW_MEMORY_END;
use super::error::VmmError;

/// ELF64 file header (System V gABI, "ELF Header").
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Header {
    ident: [u8; 16],
    e_type: u16,
    machine: u16,
    version: u32,
    entry: u64,
    phoff: u64,
    shoff: u64,
    flags: u32,
    ehsize: u16,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}
const _: () = assert!(size_of::<Elf64Header>() == 64);

/// ELF64 program header (gABI, "Program Header").
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}
const _: () = assert!(size_of::<Elf64Phdr>() == 56);

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;

/// One segment to copy into guest RAM.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Guest-physical load address.
    pub paddr: u64,
    /// Bytes from the file (the rest up to `memsz` is zero).
    pub data: Vec<u8>,
    /// Size in memory.
    pub memsz: u64,
}

/// A validated guest image.
#[derive(Debug, Clone)]
pub struct ElfImage {
    /// Entry point (the protocol runs it with identity mapping, so it is also a physical address).
    pub entry: u64,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
}

fn bad(msg: impl Into<String>) -> VmmError {
    VmmError::BadElf(msg.into())
}

impl ElfImage {
    /// Parses `bytes` and checks every segment against a RAM of `ram_size` bytes.
    pub fn parse(bytes: &[u8], ram_size: u64) -> Result<Self, VmmError> {
        let (hdr, _) = Elf64Header::read_from_prefix(bytes).map_err(|_| {
            bad(format!(
                "file is {} bytes, too short for an ELF header",
                bytes.len()
            ))
        })?;
        if hdr.ident[..4] != *b"\x7fELF" {
            return Err(bad("not an ELF file (missing \\x7fELF magic)"));
        }
        if hdr.ident[4] != ELFCLASS64 {
            return Err(bad(
                "not ELF64 (32-bit ELF class); build the guest for x86_64",
            ));
        }
        if hdr.ident[5] != ELFDATA2LSB {
            return Err(bad("not little-endian"));
        }
        if hdr.machine != EM_X86_64 {
            return Err(bad(format!("machine {} is not x86_64 (62)", hdr.machine)));
        }
        if hdr.e_type != ET_EXEC {
            return Err(bad(format!(
                "ELF type {} is not an executable (ET_EXEC)",
                hdr.e_type
            )));
        }
        if usize::from(hdr.phentsize) != size_of::<Elf64Phdr>() {
            return Err(bad(format!(
                "program header size {} is not 56",
                hdr.phentsize
            )));
        }
        let mut segments = Vec::new();
        for index in 0..usize::from(hdr.phnum) {
            let off = usize::try_from(hdr.phoff)
                .ok()
                .and_then(|o| o.checked_add(index * size_of::<Elf64Phdr>()))
                .ok_or_else(|| bad("program header offset overflows"))?;
            let ph = bytes
                .get(off..)
                .and_then(|b| Elf64Phdr::read_from_prefix(b).ok())
                .map(|(p, _)| p)
                .ok_or_else(|| {
                    bad(format!(
                        "program header {index} lies beyond the end of the file"
                    ))
                })?;
            if ph.p_type != PT_LOAD || ph.memsz == 0 {
                continue;
            }
            if ph.filesz > ph.memsz {
                return Err(bad(format!(
                    "segment {index}: file size exceeds memory size"
                )));
            }
            let end = ph
                .paddr
                .checked_add(ph.memsz)
                .ok_or_else(|| bad(format!("segment {index}: address overflows")))?;
            if ph.paddr < LOW_MEMORY_END {
                return Err(VmmError::SegmentBelow1MiB {
                    index,
                    start: ph.paddr,
                });
            }
            if end > ram_size {
                return Err(VmmError::SegmentOutsideRam {
                    index,
                    start: ph.paddr,
                    end,
                    ram: ram_size,
                });
            }
            let data = usize::try_from(ph.offset)
                .ok()
                .zip(usize::try_from(ph.filesz).ok())
                .and_then(|(o, n)| bytes.get(o..o.checked_add(n)?))
                .ok_or_else(|| {
                    bad(format!(
                        "segment {index}: file data lies beyond the end of the file"
                    ))
                })?;
            segments.push(Segment {
                paddr: ph.paddr,
                data: data.to_vec(),
                memsz: ph.memsz,
            });
        }
        if segments.is_empty() {
            return Err(bad("no PT_LOAD segment"));
        }
        if !segments
            .iter()
            .any(|s| (s.paddr..s.paddr + s.memsz).contains(&hdr.entry))
        {
            return Err(bad(format!(
                "entry point {:#x} is not inside any loaded segment",
                hdr.entry
            )));
        }
        Ok(Self {
            entry: hdr.entry,
            segments,
        })
    }

    /// Builds a one-segment ELF64 executable around `code` loaded (and entered) at
    /// `paddr`: used by tests and by library users who hand-assemble guests.
    pub fn build_flat(code: &[u8], paddr: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 56 + code.len());
        let phoff = 64u64;
        let data_off = 64u64 + 56;
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[ELFCLASS64, ELFDATA2LSB, 1, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&ET_EXEC.to_le_bytes());
        out.extend_from_slice(&EM_X86_64.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&paddr.to_le_bytes()); // entry
        out.extend_from_slice(&phoff.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&64u16.to_le_bytes());
        out.extend_from_slice(&56u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // phnum
        out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&PT_LOAD.to_le_bytes());
        out.extend_from_slice(&7u32.to_le_bytes()); // RWX
        out.extend_from_slice(&data_off.to_le_bytes());
        out.extend_from_slice(&paddr.to_le_bytes()); // vaddr
        out.extend_from_slice(&paddr.to_le_bytes()); // paddr
        out.extend_from_slice(&(code.len() as u64).to_le_bytes());
        out.extend_from_slice(&(code.len() as u64).to_le_bytes());
        out.extend_from_slice(&0x1000u64.to_le_bytes());
        out.extend_from_slice(code);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn flat_image_round_trips() {
        let img = ElfImage::parse(&ElfImage::build_flat(&[0xF4], 2 * MIB), 16 * MIB).unwrap();
        assert_eq!(img.entry, 2 * MIB);
        assert_eq!(img.segments.len(), 1);
        assert_eq!(img.segments[0].data, vec![0xF4]);
    }

    #[test]
    fn rejects_non_elf_and_wrong_class_and_machine() {
        assert!(matches!(
            ElfImage::parse(b"hello", MIB * 16),
            Err(VmmError::BadElf(_))
        ));
        let mut e = ElfImage::build_flat(&[0x90], 2 * MIB);
        e[4] = 1;
        let msg = ElfImage::parse(&e, 16 * MIB).unwrap_err().to_string();
        assert!(msg.contains("not ELF64"), "{msg}");
        let mut e = ElfImage::build_flat(&[0x90], 2 * MIB);
        e[18] = 3; // EM_386
        let msg = ElfImage::parse(&e, 16 * MIB).unwrap_err().to_string();
        assert!(msg.contains("not x86_64"), "{msg}");
    }

    #[test]
    fn rejects_segments_below_1mib_or_outside_ram() {
        let e = ElfImage::build_flat(&[0x90], 0x8000);
        assert!(matches!(
            ElfImage::parse(&e, 16 * MIB),
            Err(VmmError::SegmentBelow1MiB { .. })
        ));
        let e = ElfImage::build_flat(&[0x90; 16], 16 * MIB - 8);
        assert!(matches!(
            ElfImage::parse(&e, 16 * MIB),
            Err(VmmError::SegmentOutsideRam { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = ElfImage::parse(&bytes, 16 * MIB);
        }
    }
}
