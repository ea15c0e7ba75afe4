//! The device-mapper ABI constants against <linux/dm-ioctl.h>, compiled
//! with the system C compiler (the kernel's own definition of the format).

use cairn_init::dm::*;
use std::process::Command;

const PROBE: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <linux/ioctl.h>
#include <linux/dm-ioctl.h>
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct dm_ioctl),
        offsetof(struct dm_ioctl, data_size), offsetof(struct dm_ioctl, data_start),
        offsetof(struct dm_ioctl, target_count), offsetof(struct dm_ioctl, flags),
        offsetof(struct dm_ioctl, dev), offsetof(struct dm_ioctl, name),
        sizeof(struct dm_target_spec));
    printf("%zu %zu %zu\n", offsetof(struct dm_target_spec, length),
        offsetof(struct dm_target_spec, next), offsetof(struct dm_target_spec, target_type));
    printf("%lu %lu %lu %lu %u\n", (unsigned long)DM_DEV_CREATE, (unsigned long)DM_DEV_REMOVE,
        (unsigned long)DM_DEV_SUSPEND, (unsigned long)DM_TABLE_LOAD, (unsigned)DM_READONLY_FLAG);
    return 0;
}
"#;

#[test]
fn layout_and_ioctl_numbers_match_the_kernel_header() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("probe.c");
    let bin = d.path().join("probe");
    std::fs::write(&src, PROBE).unwrap();
    let o = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("cc (build-essential) and linux-libc-dev must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(Command::new(&bin).output().unwrap().stdout).unwrap();
    let nums: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    let ours: Vec<u64> = [
        DM_IOCTL_SIZE,
        OFF_DATA_SIZE,
        OFF_DATA_START,
        OFF_TARGET_COUNT,
        OFF_FLAGS,
        OFF_DEV,
        OFF_NAME,
        DM_SPEC_SIZE,
        SPEC_OFF_LENGTH,
        SPEC_OFF_NEXT,
        SPEC_OFF_TYPE,
    ]
    .iter()
    .map(|v| *v as u64)
    .chain(
        [
            DM_DEV_CREATE,
            DM_DEV_REMOVE,
            DM_DEV_SUSPEND,
            DM_TABLE_LOAD,
            DM_READONLY_FLAG,
        ]
        .map(u64::from),
    )
    .collect();
    assert_eq!(nums, ours);
}
