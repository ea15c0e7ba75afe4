//! Calendar time of a Unix timestamp, for every format that writes dates:
//! ISO 9660 and FAT directory entries, X.509 validity (signing), OCI
//! annotations. UTC, proleptic Gregorian; the timestamp is always the
//! caller's (`SOURCE_DATE_EPOCH`), never the wall clock.
//!
//! One conversion for all of them, so a date can not be right in one image
//! format and a day off in another.

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: u64,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// The last second RFC 3339's four-digit year can write: 9999-12-31T23:59:59Z.
pub const LAST_RFC3339_EPOCH: u64 = 253_402_300_799;

const DAY: u64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: u64 = 719_468;
/// Days in a 400-year era of the Gregorian calendar.
const ERA_DAYS: u64 = 146_097;

impl Civil {
    /// Howard Hinnant's civil-from-days: days are counted from 0000-03-01 so
    /// the leap day falls at the end of a (March-based) year, then split
    /// into 400-year eras, years of the era, and months of 153 days per five.
    pub fn from_epoch(epoch: u64) -> Civil {
        let days = epoch / DAY;
        let secs = epoch % DAY;
        let z = days + EPOCH_SHIFT;
        let era = z / ERA_DAYS;
        let doe = z % ERA_DAYS;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153; // March-based month
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + u64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
        }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`. Years after 9999 print more than four digits,
    /// which RFC 3339 does not allow: callers bound the timestamp by
    /// [`LAST_RFC3339_EPOCH`].
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ymd_hms(c: Civil) -> (u64, u8, u8, u8, u8, u8) {
        (c.year, c.month, c.day, c.hour, c.minute, c.second)
    }

    #[test]
    fn known_dates() {
        assert_eq!(ymd_hms(Civil::from_epoch(0)), (1970, 1, 1, 0, 0, 0));
        // 2023-11-14 22:13:20 UTC
        assert_eq!(
            ymd_hms(Civil::from_epoch(1_700_000_000)),
            (2023, 11, 14, 22, 13, 20)
        );
        // Leap day 2024-02-29 12:00:00
        assert_eq!(
            ymd_hms(Civil::from_epoch(1_709_208_000)),
            (2024, 2, 29, 12, 0, 0)
        );
        // 2000 is a leap year (divisible by 400), 2100 is not.
        assert_eq!(
            ymd_hms(Civil::from_epoch(951_782_400)),
            (2000, 2, 29, 0, 0, 0)
        );
        assert_eq!(
            ymd_hms(Civil::from_epoch(4_107_542_400)),
            (2100, 3, 1, 0, 0, 0)
        );
        assert_eq!(
            Civil::from_epoch(LAST_RFC3339_EPOCH).rfc3339(),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(
            Civil::from_epoch(1_735_689_600).rfc3339(),
            "2025-01-01T00:00:00Z"
        );
    }

    /// Every day from 1970 to 9999 follows the one before: the day of month
    /// steps by one or restarts at 1 in the next month, months wrap into the
    /// next year, and each month has its Gregorian length.
    #[test]
    fn days_are_consecutive() {
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let len = |y: u64, m: u8| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut prev = Civil::from_epoch(0);
        for d in 1..=LAST_RFC3339_EPOCH / DAY {
            let c = Civil::from_epoch(d * DAY);
            let next = if prev.day < len(prev.year, prev.month) {
                (prev.year, prev.month, prev.day + 1)
            } else if prev.month < 12 {
                (prev.year, prev.month + 1, 1)
            } else {
                (prev.year + 1, 1, 1)
            };
            assert_eq!((c.year, c.month, c.day), next, "day {d}");
            prev = c;
        }
        assert_eq!((prev.year, prev.month, prev.day), (9999, 12, 31));
    }
}
