//! The disks `host-test-vmm demo` attaches when no `--disk` is given, so the
//! bundled test guest always finds storage to check.
//!
//! | LUN | size | access | contents |
//! |---|---|---|---|
//! | 0 | [`DEMO_LUN0_BYTES`] (8 MiB, 16384 blocks) | read-write | [`block_pattern`] |
//! | 1 | [`DEMO_LUN1_BYTES`] (1 MiB, 2048 blocks) | read-only | [`block_pattern`] |
//!
//! Both are fresh files in a new temporary directory for every run, so a
//! guest's writes never carry over between runs.

use super::spec::DiskSpec;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Size of demo LUN 0 (read-write).
pub const DEMO_LUN0_BYTES: u64 = 8 << 20;
/// Size of demo LUN 1 (read-only).
pub const DEMO_LUN1_BYTES: u64 = 1 << 20;
/// First 8 bytes of every demo block.
pub const DEMO_MAGIC: [u8; 8] = *b"HVKITDSK";

/// The 512 bytes of block `lba` of demo LUN `lun`: [`DEMO_MAGIC`], then
/// `lun` (u32 LE) at 8, `lba` (u64 LE) at 12, zeros after.
pub fn block_pattern(lun: u8, lba: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..8].copy_from_slice(&DEMO_MAGIC);
    b[8..12].copy_from_slice(&u32::from(lun).to_le_bytes());
    b[12..20].copy_from_slice(&lba.to_le_bytes());
    b
}

fn write_image(path: &Path, lun: u8, bytes: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for lba in 0..bytes / 512 {
        f.write_all(&block_pattern(lun, lba))?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Create the demo images in a new directory under `parent`; returns the
/// directory (remove it after the run) and the specs.
pub fn create_demo_disks(parent: &Path) -> std::io::Result<(PathBuf, Vec<DiskSpec>)> {
    let dir = parent.join(format!(
        "hvkit-demo-disks-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir)?;
    let mut specs = Vec::new();
    for (lun, bytes, readonly) in [(0u8, DEMO_LUN0_BYTES, false), (1, DEMO_LUN1_BYTES, true)] {
        let path = dir.join(format!("lun{lun}.img"));
        write_image(&path, lun, bytes)?;
        specs.push(DiskSpec {
            path,
            readonly,
            lun: Some(lun),
        });
    }
    Ok((dir, specs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_images_have_the_pattern() {
        let (dir, specs) = create_demo_disks(&std::env::temp_dir()).unwrap();
        assert_eq!(specs.len(), 2);
        assert!(!specs[0].readonly && specs[1].readonly);
        let raw = std::fs::read(&specs[1].path).unwrap();
        assert_eq!(raw.len() as u64, DEMO_LUN1_BYTES);
        assert_eq!(&raw[512 * 7..512 * 8], &block_pattern(1, 7)[..]);
        assert_eq!(&raw[512 * 7 + 12..512 * 7 + 20], &7u64.to_le_bytes());
        assert_eq!(
            std::fs::metadata(&specs[0].path).unwrap().len(),
            DEMO_LUN0_BYTES
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
