//! Installing cairn releases to disks (filled in by the installer issue).
