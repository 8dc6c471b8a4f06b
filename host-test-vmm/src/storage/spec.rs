//! `--disk path=IMG[,readonly=on][,lun=N]`: one disk of the storage
//! controller.

use std::path::PathBuf;
use std::str::FromStr;

/// Highest LUN a guest can address (fact sheet §8.1: vm_srb.lun 0..=254).
pub const MAX_LUN: u8 = 254;

/// A disk on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image file (or block device).
    pub path: PathBuf,
    /// Opened read-only; guest writes get DATA PROTECT.
    pub readonly: bool,
    /// The LUN; `None` takes the lowest free one.
    pub lun: Option<u8>,
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={v}: expected on or off")),
    }
}

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut path = None;
        let mut readonly = false;
        let mut lun = None;
        for (i, part) in s.split(',').enumerate() {
            let (k, v) = match part.split_once('=') {
                Some(kv) => kv,
                // A bare first item is the path (`--disk disk.img,readonly=on`).
                None if i == 0 && !part.is_empty() => ("path", part),
                None => return Err(format!("{part:?}: expected key=value")),
            };
            match k {
                "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
                "readonly" | "ro" => readonly = parse_bool(k, v)?,
                "lun" => {
                    let n: u8 = v
                        .parse()
                        .map_err(|_| format!("lun={v}: expected 0..={MAX_LUN}"))?;
                    if n > MAX_LUN {
                        return Err(format!("lun={v}: expected 0..={MAX_LUN}"));
                    }
                    lun = Some(n);
                }
                _ => return Err(format!("{part:?}: expected path=, readonly= or lun=")),
            }
        }
        let path = path.ok_or_else(|| "missing path=IMAGE".to_owned())?;
        Ok(Self {
            path,
            readonly,
            lun,
        })
    }
}

/// Give every spec a LUN: explicit ones first (duplicates refused), then the
/// others take the lowest free LUNs in command-line order.
pub fn assign_luns(specs: &[DiskSpec]) -> Result<Vec<(u8, DiskSpec)>, String> {
    let mut used = [false; MAX_LUN as usize + 1];
    for s in specs {
        if let Some(l) = s.lun {
            if std::mem::replace(&mut used[l as usize], true) {
                return Err(format!("lun {l} given twice"));
            }
        }
    }
    let mut out = Vec::new();
    for s in specs {
        let l = match s.lun {
            Some(l) => l,
            None => {
                let l = used
                    .iter()
                    .position(|u| !u)
                    .ok_or_else(|| "more than 255 disks".to_owned())?;
                used[l] = true;
                l as u8
            }
        };
        out.push((l, s.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        let d: DiskSpec = "path=/tmp/a.img,readonly=on,lun=3".parse().unwrap();
        assert_eq!(
            d,
            DiskSpec {
                path: "/tmp/a.img".into(),
                readonly: true,
                lun: Some(3)
            }
        );
        let d: DiskSpec = "b.img".parse().unwrap();
        assert_eq!((d.readonly, d.lun), (false, None));
        let d: DiskSpec = "path=c.img,readonly=off".parse().unwrap();
        assert!(!d.readonly);
        for bad in [
            "",
            "readonly=on",
            "path=",
            "path=a,lun=255",
            "path=a,lun=x",
            "path=a,readonly=maybe",
            "path=a,size=3",
            "path=a,junk",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn luns_assigned() {
        let specs: Vec<DiskSpec> = ["a,lun=0", "b", "c,lun=1", "d"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let l: Vec<u8> = assign_luns(&specs).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(l, vec![0, 2, 1, 3]);
        let dup: Vec<DiskSpec> = ["a,lun=4", "b,lun=4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(assign_luns(&dup).is_err());
    }
}
