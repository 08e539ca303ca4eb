//! Calendar arithmetic and RFC 3339 text: the one place Veil turns Unix times into dates and back.
//!
//! Pure, like the rest of the crate: nothing here reads a clock. Callers pass times in and get text or
//! numbers back, so the same code serves certificate validity (`attestation`), the `veil attest --at` flag,
//! IMDS credential expirations in the parent, and an EIF's build time from `SOURCE_DATE_EPOCH`.
//!
//! The calendar is the proleptic Gregorian one in UTC, without a leap-second table: a `:60` second reads as
//! the first second of the next minute, as POSIX time does. The civil conversions are Howard Hinnant's
//! `days_from_civil` and `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>), exact for
//! every date they accept. RFC 3339 text is limited to what four-digit years and Unix time share:
//! 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z ([`MAX_UNIX_SECONDS`]); every time Veil handles is in it.

use std::time::Duration;

/// 9999-12-31T23:59:59Z, the last second RFC 3339's four-digit years can write.
pub const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 0000-03-01 (the start of Hinnant's shifted year) to 1970-01-01.
const UNIX_EPOCH_DAYS: i64 = 719_468;
/// Days in 400 Gregorian years, the calendar's period.
const DAYS_PER_ERA: i64 = 146_097;

/// How a formatted UTC time spells its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UtcSuffix {
    /// `2025-01-06T16:07:05Z`: what X.509 tools, AWS APIs and Veil's reports print.
    Z,
    /// `2025-01-06T16:07:05+00:00`: nitro-cli's shape (chrono's `to_rfc3339`), kept for EIF metadata.
    Offset,
}

impl UtcSuffix {
    fn as_str(self) -> &'static str {
        match self {
            UtcSuffix::Z => "Z",
            UtcSuffix::Offset => "+00:00",
        }
    }
}

/// Why a text is not an RFC 3339 time this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// Not the shape `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
    #[error("not an RFC 3339 time (YYYY-MM-DDTHH:MM:SS[.fraction] and Z or +HH:MM)")]
    Syntax,
    /// A field (`month`, `day`, `hour`, `minute`, `second`, `offset`) is out of its range; the day is
    /// checked against its month, leap years included.
    #[error("the {0} is out of range")]
    Field(&'static str),
    /// A valid time, but before 1970-01-01T00:00:00Z or after 9999-12-31T23:59:59Z.
    #[error("the time is before 1970 or after 9999")]
    OutOfRange,
}

/// The system clock in whole Unix seconds (0 if it reads before 1970). Code whose checks must not
/// depend on the clock takes the time as an argument instead; this is for the callers at the edge.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// True for the leap years of the Gregorian calendar.
pub fn is_leap_year(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1 to 12) of `year`; 0 for a month that does not exist.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to the date `year`-`month`-`day` (negative before it).
///
/// Total for every input; the date is the caller's to check (with [`days_in_month`]): days past a month's
/// end count on into the next month.
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    // Years start on 1 March, so that the leap day is the last day of the year.
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - UNIX_EPOCH_DAYS
}

/// The date (year, month 1-12, day 1-31) `days` after 1970-01-01: the inverse of [`days_from_civil`].
pub fn civil_from_days(days: i32) -> (i32, u32, u32) {
    let z = i64::from(days) + UNIX_EPOCH_DAYS;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z - era * DAYS_PER_ERA;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // |days| < 2^31 keeps |year| under 6 million, and day and month are 1..=31 and 1..=12 by construction.
    (year as i32, month as u32, day as u32)
}

/// Reads an RFC 3339 date-time as the time since the Unix epoch.
///
/// Accepted: `YYYY-MM-DD`, then `T` (or `t`, or a space, as RFC 3339 allows), `HH:MM:SS`, an optional
/// fraction of any length (digits after the ninth are dropped: the result has nanosecond precision), and
/// `Z`, `z` or a `+HH:MM`/`-HH:MM` offset. Every field is range-checked, the day against its month.
pub fn parse_rfc3339(text: &str) -> Result<Duration, TimeError> {
    let b = text.as_bytes();
    let number = |at: usize, len: usize| -> Result<u32, TimeError> {
        let digits = b.get(at..at + len).ok_or(TimeError::Syntax)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(TimeError::Syntax);
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let punct = |at: usize, allowed: &[u8]| -> Result<(), TimeError> {
        b.get(at).filter(|c| allowed.contains(c)).map(|_| ()).ok_or(TimeError::Syntax)
    };
    let year = number(0, 4)?;
    punct(4, b"-")?;
    let month = number(5, 2)?;
    punct(7, b"-")?;
    let day = number(8, 2)?;
    punct(10, b"Tt ")?;
    let hour = number(11, 2)?;
    punct(13, b":")?;
    let minute = number(14, 2)?;
    punct(16, b":")?;
    let second = number(17, 2)?;

    let mut rest = b.get(19..).ok_or(TimeError::Syntax)?;
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return Err(TimeError::Syntax);
        }
        // The first nine digits, scaled to nanoseconds: ".5" is 500_000_000.
        for place in 0..9 {
            nanos = nanos * 10 + fraction.get(place).filter(|_| place < len).map_or(0, |d| u32::from(d - b'0'));
        }
        rest = &fraction[len..];
    }
    let offset_seconds = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |hi: u8, lo: u8| -> Result<i64, TimeError> {
                if hi.is_ascii_digit() && lo.is_ascii_digit() {
                    Ok(i64::from(hi - b'0') * 10 + i64::from(lo - b'0'))
                } else {
                    Err(TimeError::Syntax)
                }
            };
            let (hours, minutes) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if hours > 23 || minutes > 59 {
                return Err(TimeError::Field("offset"));
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return Err(TimeError::Syntax),
    };

    // Four digits: the year fits an i32 whatever they say.
    let year = year as i32;
    if !(1..=12).contains(&month) {
        return Err(TimeError::Field("month"));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(TimeError::Field("day"));
    }
    if hour > 23 {
        return Err(TimeError::Field("hour"));
    }
    if minute > 59 {
        return Err(TimeError::Field("minute"));
    }
    if second > 60 {
        return Err(TimeError::Field("second"));
    }
    let seconds = days_from_civil(year, month, day) * SECONDS_PER_DAY + i64::from(hour * 3600 + minute * 60 + second)
        - offset_seconds;
    if !(0..=MAX_UNIX_SECONDS).contains(&seconds) {
        return Err(TimeError::OutOfRange);
    }
    Ok(Duration::new(seconds.unsigned_abs(), nanos))
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time, if RFC 3339 can write it.
fn date_time(unix_seconds: i64) -> Option<String> {
    if !(0..=MAX_UNIX_SECONDS).contains(&unix_seconds) {
        return None;
    }
    let days = i32::try_from(unix_seconds / SECONDS_PER_DAY).ok()?;
    let second_of_day = unix_seconds % SECONDS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    ))
}

/// RFC 3339 text of a Unix time in whole seconds, UTC: `2025-01-06T16:07:05Z` (or `+00:00`); `None` before
/// 1970 or after 9999.
pub fn format_rfc3339(unix_seconds: i64, suffix: UtcSuffix) -> Option<String> {
    Some(format!("{}{}", date_time(unix_seconds)?, suffix.as_str()))
}

/// RFC 3339 text of a Unix time in milliseconds, UTC, with three fractional digits:
/// `2025-01-06T16:07:05.472Z`; `None` after 9999.
pub fn format_rfc3339_millis(unix_millis: u64, suffix: UtcSuffix) -> Option<String> {
    let seconds = i64::try_from(unix_millis / 1000).ok()?;
    Some(format!("{}.{:03}{}", date_time(seconds)?, unix_millis % 1000, suffix.as_str()))
}

/// For people: [`format_rfc3339`] with `Z`, or `@SECONDS` for a time RFC 3339 cannot write (a certificate
/// may claim any time).
pub fn format_unix_seconds(unix_seconds: i64) -> String {
    format_rfc3339(unix_seconds, UtcSuffix::Z).unwrap_or_else(|| format!("@{unix_seconds}"))
}

/// For people: [`format_rfc3339_millis`] with `Z`, or `@MILLISECONDSms` for a time after 9999.
pub fn format_unix_millis(unix_millis: u64) -> String {
    format_rfc3339_millis(unix_millis, UtcSuffix::Z).unwrap_or_else(|| format!("@{unix_millis}ms"))
}

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]; // 1970-01-01 was a Thursday
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// An HTTP `Date` (RFC 9110 §5.6.7, IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`; `None` before 1970 or
/// after 9999.
pub fn format_http_date(unix_seconds: u64) -> Option<String> {
    let secs = i64::try_from(unix_seconds).ok()?;
    let days = i32::try_from(secs.div_euclid(86_400)).ok()?;
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        return None;
    }
    let sod = secs.rem_euclid(86_400);
    Some(format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    ))
}

/// Reads an HTTP `Date` in IMF-fixdate form (the one form RFC 9110 lets senders generate) as Unix
/// seconds; `None` for anything else. The weekday must be the date's; every field is range-checked.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || &b[25..] != b" GMT" {
        return None;
    }
    if b[19] != b':' || b[22] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = &b[r];
        s.iter().all(u8::is_ascii_digit).then(|| s.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')))
    };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| m.as_bytes() == &b[8..11])? as u32 + 1;
    let year = num(12..16)? as i32;
    let (hour, minute, second) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if year < 1970 || day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if WEEKDAYS[days.rem_euclid(7) as usize].as_bytes() != &b[..3] {
        return None;
    }
    Some(days as u64 * 86_400 + u64::from(hour) * 3600 + u64::from(minute) * 60 + u64::from(second.min(59)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_round_trip_and_rfc9110s_example_reads() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap(), 784_111_777);
        assert_eq!(format_http_date(784_111_777).unwrap(), "Sun, 06 Nov 1994 08:49:37 GMT");
        for t in [0u64, 951_782_400, 1_764_547_200, 4_102_444_799] {
            assert_eq!(parse_http_date(&format_http_date(t).unwrap()).unwrap(), t);
        }
        for bad in [
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "",
        ] {
            assert!(parse_http_date(bad).is_none(), "{bad}");
        }
    }

    fn parse_s(text: &str) -> Result<u64, TimeError> {
        parse_rfc3339(text).map(|d| d.as_secs())
    }

    #[test]
    fn civil_dates_round_trip_over_the_whole_range() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(9999, 12, 31), 2_932_896);
        assert_eq!(days_from_civil(0, 1, 1), -719_528);
        // Every day from year 0 to 9999, one after the other, with each month's length.
        let mut days = days_from_civil(0, 1, 1);
        for year in 0..=9999 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(year, month, day), days, "{year}-{month}-{day}");
                    assert_eq!(civil_from_days(days as i32), (year, month, day));
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        assert!(is_leap_year(2024) && is_leap_year(2000) && is_leap_year(1972) && is_leap_year(0));
        assert!(!is_leap_year(1900) && !is_leap_year(2100) && !is_leap_year(2023) && !is_leap_year(1970));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2025, 13), 0);
    }

    #[test]
    fn formats_both_utc_shapes() {
        assert_eq!(format_unix_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_seconds(1_665_651_482), "2022-10-13T08:58:02Z");
        assert_eq!(format_unix_seconds(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_seconds(MAX_UNIX_SECONDS), "9999-12-31T23:59:59Z");
        assert_eq!(format_unix_millis(1_665_651_482_136), "2022-10-13T08:58:02.136Z");
        assert_eq!(format_unix_millis(7), "1970-01-01T00:00:00.007Z");
        // nitro-cli's shape: `date -u -d @1700000000` is Tue Nov 14 22:13:20 UTC 2023.
        assert_eq!(format_rfc3339(0, UtcSuffix::Offset).unwrap(), "1970-01-01T00:00:00+00:00");
        assert_eq!(format_rfc3339(1_700_000_000, UtcSuffix::Offset).unwrap(), "2023-11-14T22:13:20+00:00");
        assert_eq!(format_rfc3339(951_782_400, UtcSuffix::Offset).unwrap(), "2000-02-29T00:00:00+00:00");
        assert_eq!(format_rfc3339_millis(1_500, UtcSuffix::Offset).unwrap(), "1970-01-01T00:00:01.500+00:00");
    }

    #[test]
    fn times_rfc3339_cannot_write_are_none_or_raw_numbers() {
        assert_eq!(format_rfc3339(-1, UtcSuffix::Z), None);
        assert_eq!(format_rfc3339(MAX_UNIX_SECONDS + 1, UtcSuffix::Z), None);
        assert_eq!(format_rfc3339(i64::MIN, UtcSuffix::Offset), None);
        assert_eq!(format_unix_seconds(-1), "@-1");
        assert_eq!(format_unix_seconds(i64::MAX), format!("@{}", i64::MAX));
        assert_eq!(format_unix_millis(u64::MAX), format!("@{}ms", u64::MAX));
        assert_eq!(format_unix_millis(253_402_300_800_000), "@253402300800000ms");
        assert_eq!(format_unix_millis(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse_s("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_s("2026-11-25T04:41:48Z"), Ok(1_795_581_708));
        assert_eq!(parse_s("2022-10-13T11:58:02+00:00"), Ok(1_665_662_282));
        assert_eq!(parse_s("9999-12-31T23:59:59Z"), Ok(MAX_UNIX_SECONDS as u64));
        let ms = |t: &str| parse_rfc3339(t).map(|d| d.as_millis());
        assert_eq!(ms("2025-01-06T16:07:05.472Z"), Ok(1_736_179_625_472));
        assert_eq!(ms("2025-01-06T17:07:05.472+01:00"), Ok(1_736_179_625_472));
        assert_eq!(ms("2025-01-06T11:37:05.472-04:30"), Ok(1_736_179_625_472));
        assert_eq!(ms("2025-01-06t16:07:05.472z"), Ok(1_736_179_625_472));
        assert_eq!(ms("2025-01-06 16:07:05.472Z"), Ok(1_736_179_625_472));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00.5Z"), Ok(Duration::new(951_825_600, 500_000_000)));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.1234567891Z"), Ok(Duration::new(0, 123_456_789)));
        // A leap second is the first second of the next minute.
        assert_eq!(parse_s("2016-12-31T23:59:60Z"), parse_s("2017-01-01T00:00:00Z"));
        // An offset can bring a local 1969 time into the Unix era.
        assert_eq!(parse_s("1969-12-31T23:00:00-01:00"), Ok(0));
    }

    #[test]
    fn refuses_what_is_not_an_rfc3339_time() {
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T04:41:48",
            "2026-11-25T04:41:48 Z",
            "2026-11-25T04:41Z",
            "x026-11-25T04:41:48Z",
            "2026-1-25T04:41:48Z",
            "2026/11/25T04:41:48Z",
            "2026-11-25X04:41:48Z",
            "2026-11-25T04:41:48.Z",
            "2026-11-25T04:41:48.12aZ",
            "2026-11-25T04:41:48+0100",
            "2026-11-25T04:41:48+1:00",
            "2026-11-25T04:41:48++1:00",
            "2026-11-25T04:41:48UTC",
            "yesterday",
            "2026-11-25T04:41:48Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), Err(TimeError::Syntax), "{bad:?}");
        }
        for (bad, field) in [
            ("2025-13-06T16:07:05Z", "month"),
            ("2025-00-06T16:07:05Z", "month"),
            ("2025-01-00T16:07:05Z", "day"),
            ("2025-01-32T16:07:05Z", "day"),
            ("2025-02-29T00:00:00Z", "day"),
            ("1900-02-29T00:00:00Z", "day"),
            ("2025-04-31T00:00:00Z", "day"),
            ("2025-01-06T24:00:00Z", "hour"),
            ("2025-01-06T16:60:00Z", "minute"),
            ("2025-01-06T16:07:61Z", "second"),
            ("2025-01-06T16:07:05+24:00", "offset"),
            ("2025-01-06T16:07:05+01:60", "offset"),
        ] {
            assert_eq!(parse_rfc3339(bad), Err(TimeError::Field(field)), "{bad:?}");
        }
        assert_eq!(parse_s("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
        assert_eq!(parse_s("2000-02-29T00:00:00Z"), Ok(951_782_400));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Err(TimeError::OutOfRange));
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00Z"), Err(TimeError::OutOfRange));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59-00:01"), Err(TimeError::OutOfRange));
    }

    #[test]
    fn parse_and_format_agree() {
        for secs in [0, 1, 59, 86_399, 86_400, 951_782_400, 1_700_000_000, 4_107_542_400, MAX_UNIX_SECONDS] {
            let text = format_unix_seconds(secs);
            assert_eq!(parse_s(&text), Ok(secs as u64), "{text}");
            let text = format_rfc3339(secs, UtcSuffix::Offset).unwrap();
            assert_eq!(parse_s(&text), Ok(secs as u64), "{text}");
        }
    }
}
