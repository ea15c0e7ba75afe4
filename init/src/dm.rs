//! dm-verity through the device-mapper ioctl interface, so stage 1 needs no
//! veritysetup or dmsetup binary. The table line is the contract of design.md.

use contract::cmdline::hex;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DmError {
    #[error("opening /dev/mapper/control: {0}")]
    Control(#[source] std::io::Error),
    #[error("device-mapper {op} for {name:?}: {source}")]
    Ioctl {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("device-mapper {what} {value:?} is too long (limit {limit} bytes)")]
    TooLong {
        what: &'static str,
        value: String,
        limit: usize,
    },
}

pub const VERITY_BLOCK: u64 = 4096;

/// The verity target parameters for a slot of design.md: data and hash on
/// the same device, hash tree right after the superblock that follows the data.
pub fn verity_params(dev: &str, data_blocks: u64, root_hash: &[u8; 32], salt: &[u8; 32]) -> String {
    format!(
        "1 {dev} {dev} {VERITY_BLOCK} {VERITY_BLOCK} {data_blocks} {} sha256 {} {}",
        data_blocks + 1,
        hex(root_hash),
        hex(salt)
    )
}

/// The whole table line as dmsetup would print it (start, length in 512-byte
/// sectors, target, params).
pub fn verity_table(dev: &str, data_blocks: u64, root_hash: &[u8; 32], salt: &[u8; 32]) -> String {
    format!(
        "0 {} verity {}",
        data_blocks * (VERITY_BLOCK / 512),
        verity_params(dev, data_blocks, root_hash, salt)
    )
}

// Layout of struct dm_ioctl and dm_target_spec from <linux/dm-ioctl.h>.
const DM_NAME_LEN: usize = 128;
pub const DM_IOCTL_SIZE: usize = 312;
pub const DM_SPEC_SIZE: usize = 40;
// Field offsets in struct dm_ioctl (checked against the C header in tests).
pub const OFF_DATA_SIZE: usize = 12;
pub const OFF_DATA_START: usize = 16;
pub const OFF_TARGET_COUNT: usize = 20;
pub const OFF_FLAGS: usize = 28;
pub const OFF_DEV: usize = 40;
pub const OFF_NAME: usize = 48;
// ... and in struct dm_target_spec.
pub const SPEC_OFF_LENGTH: usize = 8;
pub const SPEC_OFF_NEXT: usize = 20;
pub const SPEC_OFF_TYPE: usize = 24;
const DM_VERSION: [u32; 3] = [4, 0, 0];
pub const DM_READONLY_FLAG: u32 = 1 << 0;

const fn dm_iowr(nr: u32) -> u32 {
    (3 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | nr
}
pub const DM_DEV_CREATE: u32 = dm_iowr(3);
pub const DM_DEV_REMOVE: u32 = dm_iowr(4);
pub const DM_DEV_SUSPEND: u32 = dm_iowr(6);
pub const DM_TABLE_LOAD: u32 = dm_iowr(9);

/// Builds the ioctl buffer: header, then (for a table load) one target spec
/// with its NUL-terminated params, padded to 8 bytes.
pub fn ioctl_buffer(
    name: &str,
    flags: u32,
    target: Option<(u64, &str, &str)>,
) -> Result<Vec<u8>, DmError> {
    if name.len() >= DM_NAME_LEN || name.is_empty() {
        return Err(DmError::TooLong {
            what: "name",
            value: name.into(),
            limit: DM_NAME_LEN - 1,
        });
    }
    let mut buf = vec![0u8; DM_IOCTL_SIZE];
    if let Some((len_sectors, ttype, params)) = target {
        if ttype.len() >= 16 {
            return Err(DmError::TooLong {
                what: "target type",
                value: ttype.into(),
                limit: 15,
            });
        }
        let spec_len = (DM_SPEC_SIZE + params.len() + 1).next_multiple_of(8);
        let mut spec = vec![0u8; spec_len];
        spec[SPEC_OFF_LENGTH..SPEC_OFF_LENGTH + 8].copy_from_slice(&len_sectors.to_ne_bytes());
        spec[SPEC_OFF_NEXT..SPEC_OFF_NEXT + 4].copy_from_slice(&(spec_len as u32).to_ne_bytes());
        spec[SPEC_OFF_TYPE..SPEC_OFF_TYPE + ttype.len()].copy_from_slice(ttype.as_bytes());
        spec[DM_SPEC_SIZE..DM_SPEC_SIZE + params.len()].copy_from_slice(params.as_bytes());
        buf.extend_from_slice(&spec);
        buf[OFF_TARGET_COUNT..OFF_TARGET_COUNT + 4].copy_from_slice(&1u32.to_ne_bytes());
    }
    // Room for the kernel's reply (it writes status/deps into the data area).
    buf.resize(buf.len() + 4096, 0);
    for (i, v) in DM_VERSION.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    let total = buf.len() as u32;
    buf[OFF_DATA_SIZE..OFF_DATA_SIZE + 4].copy_from_slice(&total.to_ne_bytes());
    buf[OFF_DATA_START..OFF_DATA_START + 4].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes());
    buf[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&flags.to_ne_bytes());
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    Ok(buf)
}

fn dm_ioctl(
    ctl: &std::fs::File,
    op: &'static str,
    req: u32,
    buf: &mut [u8],
    name: &str,
) -> Result<(), DmError> {
    // SAFETY: buf is a dm_ioctl header followed by its data area, and
    // data_size tells the kernel how far it may read and write.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), req as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(DmError::Ioctl {
            op,
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Decodes the kernel's `dev` field (new_encode_dev) into major:minor.
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// Creates a read-only verity device named `name` and activates it.
/// Returns its (major, minor). On failure the half-created device is removed.
pub fn create_verity(
    name: &str,
    table_len_sectors: u64,
    params: &str,
) -> Result<(u32, u32), DmError> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(DmError::Control)?;
    let mut b = ioctl_buffer(name, 0, None)?;
    dm_ioctl(&ctl, "DM_DEV_CREATE", DM_DEV_CREATE, &mut b, name)?;
    let dev = u64::from_ne_bytes(b[OFF_DEV..OFF_DEV + 8].try_into().expect("8 bytes"));
    let result = (|| {
        let mut b = ioctl_buffer(
            name,
            DM_READONLY_FLAG,
            Some((table_len_sectors, "verity", params)),
        )?;
        dm_ioctl(&ctl, "DM_TABLE_LOAD", DM_TABLE_LOAD, &mut b, name)?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes, which swaps in the
        // loaded table.
        let mut b = ioctl_buffer(name, 0, None)?;
        dm_ioctl(
            &ctl,
            "DM_DEV_SUSPEND (resume)",
            DM_DEV_SUSPEND,
            &mut b,
            name,
        )
    })();
    if let Err(e) = result {
        if let Ok(mut b) = ioctl_buffer(name, 0, None) {
            let _ = dm_ioctl(&ctl, "DM_DEV_REMOVE", DM_DEV_REMOVE, &mut b, name);
        }
        return Err(e);
    }
    Ok(decode_dev(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_line_matches_design() {
        let mut h = [0u8; 32];
        h[0] = 0xab;
        h[31] = 0x01;
        let s = [0x11u8; 32];
        let t = verity_table("259:2", 1000, &h, &s);
        assert_eq!(
            t,
            format!(
                "0 8000 verity 1 259:2 259:2 4096 4096 1000 1001 sha256 ab{}01 {}",
                "00".repeat(30),
                "11".repeat(32)
            )
        );
    }

    #[test]
    fn ioctl_numbers_match_linux_header() {
        // _IOWR(0xfd, 3, struct dm_ioctl) as computed by the C macro.
        assert_eq!(DM_DEV_CREATE, 0xc138fd03);
        assert_eq!(DM_TABLE_LOAD, 0xc138fd09);
        assert_eq!(DM_DEV_SUSPEND, 0xc138fd06);
    }

    #[test]
    fn buffer_layout() {
        let b = ioctl_buffer("root", DM_READONLY_FLAG, Some((8000, "verity", "abc"))).unwrap();
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 4);
        assert_eq!(
            u32::from_ne_bytes(b[12..16].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u32::from_ne_bytes(b[16..20].try_into().unwrap()), 312);
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(b[28..32].try_into().unwrap()), 1);
        assert_eq!(&b[48..53], b"root\0");
        let spec = &b[312..];
        assert_eq!(u64::from_ne_bytes(spec[8..16].try_into().unwrap()), 8000);
        assert_eq!(u32::from_ne_bytes(spec[20..24].try_into().unwrap()), 48);
        assert_eq!(&spec[24..31], b"verity\0");
        assert_eq!(&spec[40..44], b"abc\0");
        assert!(ioctl_buffer(&"x".repeat(128), 0, None).is_err());
        assert!(ioctl_buffer("", 0, None).is_err());
    }

    #[test]
    fn dev_decoding() {
        // 253:0 and 259:300 as encoded by the kernel's new_encode_dev.
        assert_eq!(decode_dev(0xfd00), (253, 0));
        let enc = |ma: u64, mi: u64| (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
        assert_eq!(decode_dev(enc(259, 300)), (259, 300));
    }
}
