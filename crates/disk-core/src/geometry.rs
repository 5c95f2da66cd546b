//! CHS (cylinder/head/sector) geometry as the VHD specification computes it.

/// A disk geometry as stored in a VHD footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    /// Cylinders (up to 65535).
    pub cylinders: u16,
    /// Heads (up to 16).
    pub heads: u8,
    /// Sectors per track (up to 255).
    pub sectors_per_track: u8,
}

impl Chs {
    /// The largest geometry the VHD footer can express: 65535/16/255.
    pub const MAX: Chs = Chs {
        cylinders: 65535,
        heads: 16,
        sectors_per_track: 255,
    };

    /// The geometry the VHD specification (appendix "CHS Calculation") derives for a disk of
    /// `total_sectors` 512-byte sectors. Disks past the maximum get [`Chs::MAX`].
    pub fn for_sectors(total_sectors: u64) -> Chs {
        let total = total_sectors.min(65535 * 16 * 255);
        let (spt, heads, cyl_times_heads) = if total >= 65535 * 16 * 63 {
            (255u64, 16u64, total / 255)
        } else {
            let mut spt = 17u64;
            let mut cth = total / spt;
            let mut heads = cth.div_ceil(1024).max(4);
            if cth >= heads * 1024 || heads > 16 {
                spt = 31;
                heads = 16;
                cth = total / spt;
            }
            if cth >= heads * 1024 {
                spt = 63;
                heads = 16;
                cth = total / spt;
            }
            (spt, heads, cth)
        };
        Chs {
            cylinders: (cyl_times_heads / heads).min(65535) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }

    /// Sectors the geometry addresses: cylinders × heads × sectors per track.
    pub fn total_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        // 10 MiB: the 17-sector branch; 127 GiB: the 255-sector branch (the geometry Virtual PC
        // recorded in qemu-iotests' virtualpc-dynamic.vhd).
        let g = Chs::for_sectors(20480);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (301, 4, 17));
        let g = Chs::for_sectors(127 * 1024 * 1024 * 2);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (65278, 16, 255));
        assert_eq!(Chs::for_sectors(u64::MAX), Chs::MAX);
        assert_eq!(Chs::MAX.total_sectors(), 267_382_800);
    }

    #[test]
    fn never_exceeds_requested_size() {
        for sectors in (1u64..5_000_000).step_by(9973) {
            assert!(Chs::for_sectors(sectors).total_sectors() <= sectors);
        }
    }
}
