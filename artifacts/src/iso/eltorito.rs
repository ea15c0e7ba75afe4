//! El Torito: the boot record volume descriptor and a one-entry boot
//! catalog pointing UEFI firmware at the ESP image.

use super::ecma119::STANDARD_ID;

/// Platform id of the validation entry: EFI (UEFI spec 13.3.2.1).
pub(crate) const PLATFORM_EFI: u8 = 0xEF;
const BOOTABLE: u8 = 0x88;
const NO_EMULATION: u8 = 0;

/// Boot Record Volume Descriptor (El Torito 2.0).
pub(crate) fn boot_record(catalog_block: u32) -> [u8; 2048] {
    let mut d = [0u8; 2048];
    d[1..6].copy_from_slice(STANDARD_ID);
    d[6] = 1;
    let id = b"EL TORITO SPECIFICATION";
    d[7..7 + id.len()].copy_from_slice(id);
    d[0x47..0x4B].copy_from_slice(&catalog_block.to_le_bytes());
    d
}

/// Sector count of the default entry, in 512-byte virtual sectors. The UEFI
/// spec reads 0 or 1 as "the image reaches to the end of the medium", which
/// is the only way to describe an image of 32 MiB or more in 16 bits; below
/// that we give the exact count so tools show the real size.
pub(crate) fn sector_count(image_bytes: u64) -> u16 {
    let sectors = image_bytes.div_ceil(512);
    u16::try_from(sectors).unwrap_or(0)
}

/// A catalog of a validation entry (platform EFI) and the default entry
/// (bootable, no emulation) loading `image_block`.
pub(crate) fn catalog(image_block: u32, count: u16) -> [u8; 2048] {
    let mut c = [0u8; 2048];
    let v = &mut c[0..32];
    v[0] = 1; // header id
    v[1] = PLATFORM_EFI;
    v[30] = 0x55;
    v[31] = 0xAA;
    // The 16-bit little-endian words of the entry sum to zero.
    let sum = v.chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    v[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    let e = &mut c[32..64];
    e[0] = BOOTABLE;
    e[1] = NO_EMULATION;
    e[6..8].copy_from_slice(&count.to_le_bytes());
    e[8..12].copy_from_slice(&image_block.to_le_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_checksum_sums_to_zero() {
        let c = catalog(1234, 5);
        let sum = c[..32].chunks_exact(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(sum, 0);
    }

    #[test]
    fn large_images_count_zero() {
        assert_eq!(sector_count(4 << 20), 8192);
        assert_eq!(sector_count(65535 * 512), 65535);
        assert_eq!(sector_count(65536 * 512), 0);
    }
}
