//! Times as history shows them: `[12:01]` for a line said today (UTC),
//! `[2026-12-05 23:50]` for an older one, and IRC's `server-time` tag
//! (`2026-12-06T12:01:02.345Z`).
//!
//! Pure arithmetic on milliseconds since the Unix epoch (the relay log's
//! time stamps): a confined child has no time zone database, and every
//! client of a room sees the same UTC times.

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub milli: u32,
}

const DAY_MS: u64 = 86_400_000;

/// The UTC date and time `ms` milliseconds after the epoch.
pub fn civil(ms: u64) -> Civil {
    let days = (ms / DAY_MS) as i64;
    let in_day = ms % DAY_MS;
    // Days to a proleptic Gregorian date (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (in_day / 3_600_000) as u32,
        minute: (in_day / 60_000 % 60) as u32,
        second: (in_day / 1000 % 60) as u32,
        milli: (in_day % 1000) as u32,
    }
}

/// The mark of a history line said at `time` when it is `now`, without
/// brackets: `12:01` the same UTC day, `2026-12-05 23:50` before; None if
/// the time is unknown (0: an entry of an older chatd).
pub fn stamp(time: u64, now: u64) -> Option<String> {
    if time == 0 {
        return None;
    }
    let c = civil(time);
    Some(if time / DAY_MS == now / DAY_MS {
        format!("{:02}:{:02}", c.hour, c.minute)
    } else {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            c.year, c.month, c.day, c.hour, c.minute
        )
    })
}

/// IRCv3 `server-time`: `YYYY-MM-DDThh:mm:ss.sssZ`.
pub fn iso8601(time: u64) -> String {
    let c = civil(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        // date -u -d @951782400 → 2000-02-29 (a leap day of a 400-year leap year)
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(1_798_200_000_123), "2026-12-25T12:00:00.123Z");
        assert_eq!(iso8601(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(iso8601(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let mut prev = civil(0);
        for d in 1..200_000u64 {
            let c = civil(d * DAY_MS);
            let next_day = c.day == prev.day + 1 && c.month == prev.month && c.year == prev.year;
            let next_month = c.day == 1 && (c.month == prev.month + 1 && c.year == prev.year);
            let next_year =
                c.day == 1 && c.month == 1 && prev.month == 12 && c.year == prev.year + 1;
            assert!(next_day || next_month || next_year, "{prev:?} -> {c:?}");
            prev = c;
        }
    }

    #[test]
    fn stamps() {
        let t = 1_798_200_000_123; // 2026-12-25 12:00
        assert_eq!(stamp(t, t + 1000).as_deref(), Some("12:00"));
        assert_eq!(stamp(t, t + DAY_MS).as_deref(), Some("2026-12-25 12:00"));
        assert_eq!(stamp(0, t), None);
    }
}
