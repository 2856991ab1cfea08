//! HTTP-date (RFC 9110 5.6.7) to Unix seconds: IMF-fixdate, and the obsolete RFC 850 and
//! asctime forms recipients must accept. Anything else is `None` (an invalid `Expires`
//! means "already expired" to the caller).

const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

fn month(name: &[u8]) -> Option<u32> {
    if name.len() != 3 {
        return None;
    }
    let lower = [
        name[0].to_ascii_lowercase(),
        name[1].to_ascii_lowercase(),
        name[2].to_ascii_lowercase(),
    ];
    MONTHS
        .iter()
        .position(|m| **m == lower)
        .map(|i| i as u32 + 1)
}

fn number(s: &[u8], max_len: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_len || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn clock(s: &[u8]) -> Option<(u32, u32, u32)> {
    let mut it = s.split(|&b| b == b':');
    let (h, m, sec) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || h.len() != 2 || m.len() != 2 || sec.len() != 2 {
        return None;
    }
    let (h, m, sec) = (number(h, 2)?, number(m, 2)?, number(sec, 2)?);
    (h < 24 && m < 60 && sec < 61).then_some((h, m, sec))
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn assemble(year: u32, mon: u32, day: u32, (h, m, s): (u32, u32, u32)) -> Option<i64> {
    if !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(i64::from(year), mon, day);
    Some(days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s))
}

/// Parses an HTTP-date.
pub fn parse(value: &[u8]) -> Option<i64> {
    let v = value.trim_ascii();
    let words: Vec<&[u8]> = v.split(|&b| b == b' ').filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [wd, day, mon, year, time, gmt] if wd.ends_with(b",") && *gmt == b"GMT" => {
            if day.len() != 2 || year.len() != 4 {
                return None;
            }
            assemble(number(year, 4)?, month(mon)?, number(day, 2)?, clock(time)?)
        }
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [wd, date, time, gmt] if wd.ends_with(b",") && *gmt == b"GMT" => {
            let mut parts = date.split(|&b| b == b'-');
            let (day, mon, year) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || day.len() != 2 || year.len() != 2 {
                return None;
            }
            let yy = number(year, 2)?;
            // RFC 9110: a two-digit year more than 50 years in the future is in the past.
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            assemble(year, month(mon)?, number(day, 2)?, clock(time)?)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_wd, mon, day, time, year] if year.len() == 4 => {
            assemble(number(year, 4)?, month(mon)?, number(day, 2)?, clock(time)?)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms() {
        let t = 784_111_777;
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(parse(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse(b"Fri, 01 Jan 2038 01:01:01 GMT"), Some(2_145_920_461));
    }

    #[test]
    fn invalid_dates() {
        for bad in [
            &b""[..],
            b"0",
            b"-1",
            b"now",
            b"Sun, 06 Nov 1994 08:49:37",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 8:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37:00 GMT",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
