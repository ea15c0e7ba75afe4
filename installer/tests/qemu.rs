//! The boot model against the real thing: systemd-boot 252 under OVMF picks
//! an entry on an image this installer wrote, and its boot-counting rename
//! shows which one. The test UKIs carry dummy kernels, so nothing boots past
//! the loader; the rename happens before the launch, which is all we need.

mod common;

use common::firmware::power_on;
use common::*;
use installer::install::install;
use installer::upgrade::upgrade;

#[test]
fn systemd_boot_picks_what_the_model_predicts() {
    let fx = Fixture::new();
    let b1 = bundle(&fx.path("b1"), "1.0.0");
    let b2 = bundle(&fx.path("b2"), "2.0.0");
    let img = fx.image("d.img", DISK_SIZE);
    install(&install_opts(&img, &b1.dir)).unwrap();
    upgrade(&upgrade_opts(&img, &b2.dir)).unwrap();
    let predicted = installer::status::status(&img).unwrap().next_boot.unwrap();
    assert_eq!(predicted.file, "cairn-2.0.0+3.efi");
    let after = power_on(&fx, &img);
    assert_eq!(after, ["cairn-2.0.0+2-1.efi", "cairn-1.0.0+3.efi"]);
    assert_eq!(Some(after[0].clone()), predicted.renamed_to);

    // With 2.0.0's tries used up, the loader falls back to 1.0.0.
    with_esp(&img, |v| {
        v.rename("EFI/Linux/cairn-2.0.0+2-1.efi", "cairn-2.0.0+0-3.efi")
            .unwrap()
    });
    let predicted = installer::status::status(&img).unwrap().next_boot.unwrap();
    assert_eq!(predicted.file, "cairn-1.0.0+3.efi");
    let after = power_on(&fx, &img);
    assert_eq!(after, ["cairn-1.0.0+2-1.efi", "cairn-2.0.0+0-3.efi"]);
}
