use cairn_init::error::BootError;
use cairn_init::{say, stage1, stage2, sys};
use std::time::Duration;

const FAIL_DELAY: Duration = Duration::from_secs(5);

/// Every path that is not a clean shutdown ends here: say why, record it,
/// reboot so systemd-boot's counter moves on. Never returns, never hangs.
fn fail(reason: &str) -> ! {
    say!("boot failed: {reason}");
    if sys::getpid() != 1 {
        std::process::exit(1);
    }
    stage2::record_failure(reason);
    sys::sync();
    std::thread::sleep(FAIL_DELAY);
    let e = sys::reboot(libc::RB_AUTOBOOT);
    say!("reboot failed: {e}; exiting (the kernel panics and reboots)");
    std::process::exit(1)
}

fn power(cmd: libc::c_int, what: &str) -> ! {
    sys::sync();
    say!("{what}");
    let e = sys::reboot(cmd);
    fail(&format!("{what} failed: {e}"))
}

fn run() -> Result<(), BootError> {
    let argv0 = std::env::args().next().unwrap_or_default();
    if sys::getpid() != 1 {
        return Err(BootError::Stop(format!(
            "{argv0} must run as PID 1 (only --version and --self-report work otherwise)"
        )));
    }
    // The kernel starts the initramfs's /init; stage 1 execs /sbin/init.
    if argv0 == "/init" {
        match stage1::run()? {
            stage1::Outcome::PowerOff => power(libc::RB_POWER_OFF, "powering off"),
        }
    }
    match stage2::run()? {
        stage2::Shutdown::Reboot => power(libc::RB_AUTOBOOT, "rebooting"),
        stage2::Shutdown::PowerOff => power(libc::RB_POWER_OFF, "powering off"),
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--version") => {
            println!("cairn-init {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        // Run by a health check: reports the confinement it was started in.
        Some("--self-report") => {
            if let Err(e) = cairn_init::privs::self_report(&mut std::io::stdout().lock()) {
                eprintln!("self-report: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    // panic=abort in the init profile: the hook is the last code that runs.
    std::panic::set_hook(Box::new(|info| fail(&format!("init panicked: {info}"))));
    if let Err(e) = run() {
        fail(&e.to_string())
    }
}
