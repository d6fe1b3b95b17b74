//! Column values in the one canonical form weir writes for Celonis: reading the sender's date
//! patterns (Java-style, as Celonis documents them) and number conventions, and writing ISO-8601
//! dates and `.`-decimal numbers.
//!
//! A DATE column's values become `yyyy-MM-dd`, a DATETIME's `yyyy-MM-ddTHH:mm:ss.SSSZ` (UTC), a
//! TIME's `HH:mm:ss.SSS`; the sink declares exactly these patterns in `csvParsingOptions`, so
//! what Celonis parses is what the sender meant.

use std::fmt;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// The `dateFormat` a DATE column's canonical values match.
pub const DATE_PATTERN: &str = "yyyy-MM-dd";
/// The `dateFormat` a DATETIME column's canonical values match (the job-wide `dateFormat`).
pub const DATETIME_PATTERN: &str = "yyyy-MM-dd'T'HH:mm:ss.SSSXXX";
/// The `dateFormat` a TIME column's canonical values match.
pub const TIME_PATTERN: &str = "HH:mm:ss.SSS";

/// Which of the three date types a value is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    Date,
    DateTime,
    Time,
}

impl Moment {
    fn name(self) -> &'static str {
        match self {
            Moment::Date => "DATE",
            Moment::DateTime => "DATETIME",
            Moment::Time => "TIME",
        }
    }
}

/// How a sender writes a date, datetime or time (a column's `format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateFormat {
    /// No `format`: ISO-8601 (`2021-03-12`, `2021-03-12T08:30:00+01:00`, `08:30:00`).
    Iso8601,
    /// `epoch_ms`: milliseconds since 1970-01-01T00:00:00Z.
    EpochMillis,
    /// `epoch_s`: seconds since 1970-01-01T00:00:00Z.
    EpochSeconds,
    /// A Java-style pattern such as `dd.MM.yyyy`, compiled once.
    Pattern(Pattern),
}

/// A compiled Java-style date pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    items: Vec<Item<'static>>,
    has_date: bool,
    has_time: bool,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl DateFormat {
    /// Reads a column's `format` for a column of type `moment`; the error says what is wrong.
    pub fn parse(text: &str, moment: Moment) -> Result<DateFormat, String> {
        match text {
            "epoch_ms" => return Ok(DateFormat::EpochMillis),
            "epoch_s" => return Ok(DateFormat::EpochSeconds),
            "iso8601" => return Ok(DateFormat::Iso8601),
            _ => {}
        }
        let pattern = Pattern::compile(text)?;
        let needs_date = moment != Moment::Time;
        let needs_time = moment != Moment::Date;
        if needs_date && !pattern.has_date {
            return Err(format!(
                "\"{text}\" has no year, month and day (y, M, d), which a {} needs",
                moment.name()
            ));
        }
        if needs_time && !pattern.has_time {
            return Err(format!(
                "\"{text}\" has no hour (H or h), which a {} needs",
                moment.name()
            ));
        }
        Ok(DateFormat::Pattern(pattern))
    }

    /// Whether values in this format may arrive as numbers (epoch formats).
    pub fn is_epoch(&self) -> bool {
        matches!(self, DateFormat::EpochMillis | DateFormat::EpochSeconds)
    }

    /// What `weir check` shows.
    pub fn describe(&self) -> &str {
        match self {
            DateFormat::Iso8601 => "iso8601",
            DateFormat::EpochMillis => "epoch_ms",
            DateFormat::EpochSeconds => "epoch_s",
            DateFormat::Pattern(p) => &p.source,
        }
    }

    /// Reads `text` as a `moment` and writes it in its canonical form; the error says why the
    /// text does not fit (without repeating it).
    pub fn canonical(&self, text: &str, moment: Moment) -> Result<String, String> {
        let at = match self {
            DateFormat::EpochMillis | DateFormat::EpochSeconds => {
                let n: i64 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("is not a whole number of {}", self.unit()))?;
                let ms = if *self == DateFormat::EpochSeconds {
                    n.checked_mul(1000)
                } else {
                    Some(n)
                };
                ms.and_then(DateTime::<Utc>::from_timestamp_millis)
                    .ok_or_else(|| format!("is out of range for {}", self.unit()))?
                    .naive_utc()
            }
            DateFormat::Iso8601 => iso8601(text.trim(), moment)?,
            DateFormat::Pattern(p) => p.read(text, moment)?,
        };
        Ok(write(at, moment))
    }

    fn unit(&self) -> &'static str {
        if *self == DateFormat::EpochSeconds {
            "seconds since 1970 (epoch_s)"
        } else {
            "milliseconds since 1970 (epoch_ms)"
        }
    }
}

/// The canonical text of `at` for a column of type `moment`.
fn write(at: NaiveDateTime, moment: Moment) -> String {
    match moment {
        Moment::Date => at.format("%Y-%m-%d").to_string(),
        Moment::DateTime => at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Moment::Time => at.format("%H:%M:%S%.3f").to_string(),
    }
}

/// ISO-8601 as senders write it: a date, a date and time with or without an offset (`T` or a
/// space between them; no offset is UTC), or a time.
fn iso8601(text: &str, moment: Moment) -> Result<NaiveDateTime, String> {
    let bad = || {
        format!(
            "is not an ISO-8601 {} (set the column's format)",
            moment.name()
        )
    };
    if moment == Moment::Time {
        return NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
            .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M"))
            .map(|t| NaiveDate::default().and_time(t))
            .map_err(|_| bad());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(NaiveTime::MIN));
    }
    if moment == Moment::Date {
        // A DATE column takes the date of a full timestamp as the sender wrote it.
        if let Some((date, _)) = text.split_once(['T', ' '])
            && let Ok(d) = NaiveDate::parse_from_str(date, "%Y-%m-%d")
        {
            return Ok(d.and_time(NaiveTime::MIN));
        }
        return Err(bad());
    }
    let spaced = text.replacen(' ', "T", 1);
    if let Ok(dt) = DateTime::parse_from_rfc3339(&spaced) {
        return Ok(dt.naive_utc());
    }
    NaiveDateTime::parse_from_str(&spaced, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(&spaced, "%Y-%m-%dT%H:%M"))
        .map_err(|_| bad())
}

impl Pattern {
    /// Translates a Java-style pattern into chrono's items, refusing what weir cannot read.
    fn compile(source: &str) -> Result<Pattern, String> {
        let mut strftime = String::new();
        let (mut has_date, mut has_time) = ((false, false, false), false);
        let chars: Vec<char> = source.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let run = chars[i..].iter().take_while(|&&x| x == c).count();
            if c == '\'' {
                // '' is a quote; 'text' is literal text.
                if run >= 2 && run % 2 == 0 {
                    strftime.push_str(&"'".repeat(run / 2));
                    i += run;
                    continue;
                }
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or_else(|| format!("\"{source}\" has an unclosed quote"))?;
                for &l in &chars[i + 1..i + 1 + end] {
                    push_literal(&mut strftime, l);
                }
                i += end + 2;
                continue;
            }
            let spec = match (c, run) {
                ('y' | 'u', 2) => "%y",
                ('y' | 'u', _) => "%Y",
                ('M' | 'L', 1 | 2) => "%m",
                ('M' | 'L', 3) => "%b",
                ('M' | 'L', _) => "%B",
                ('d', 1 | 2) => "%d",
                ('D', 1..=3) => "%j",
                ('E', 1..=3) => "%a",
                ('E', _) => "%A",
                ('a', 1) => "%p",
                ('H', 1 | 2) => "%H",
                ('h', 1 | 2) => "%I",
                ('m', 1 | 2) => "%M",
                ('s', 1 | 2) => "%S",
                ('S', 3) => "%3f",
                ('S', 6) => "%6f",
                ('S', 9) => "%9f",
                ('S', _) => {
                    return Err(format!(
                        "\"{source}\" has {run} S: fractions of a second take SSS, SSSSSS or SSSSSSSSS"
                    ));
                }
                ('X' | 'x' | 'Z', 1..=3) => "%#z",
                (c, _) if c.is_ascii_alphabetic() => {
                    return Err(format!(
                        "\"{source}\" uses the letter {c} ({run} times), which weir does not read: quote literal text ('T')"
                    ));
                }
                (c, _) => {
                    for _ in 0..run {
                        push_literal(&mut strftime, c);
                    }
                    i += run;
                    continue;
                }
            };
            match c {
                'y' | 'u' => has_date.0 = true,
                'M' | 'L' => has_date.1 = true,
                'd' => has_date.2 = true,
                'D' => (has_date.1, has_date.2) = (true, true),
                'H' | 'h' => has_time = true,
                _ => {}
            }
            strftime.push_str(spec);
            i += run;
        }
        let items = StrftimeItems::new(&strftime)
            .parse_to_owned()
            .map_err(|e| format!("\"{source}\" cannot be read: {e}"))?;
        Ok(Pattern {
            source: source.to_owned(),
            items,
            has_date: has_date.0 && has_date.1 && has_date.2,
            has_time,
        })
    }

    /// Reads `text`; without an offset in the pattern the time is UTC.
    fn read(&self, text: &str, moment: Moment) -> Result<NaiveDateTime, String> {
        let mut parsed = Parsed::new();
        chrono::format::parse(&mut parsed, text, self.items.iter())
            .map_err(|e| format!("does not match the format \"{}\" ({e})", self.source))?;
        let date = if self.has_date {
            parsed.to_naive_date()
        } else {
            Ok(NaiveDate::default())
        };
        // Java reads a pattern without minutes or seconds as :00; chrono needs the minute.
        if self.has_time && parsed.minute().is_none() {
            let _ = parsed.set_minute(0);
        }
        let time = if self.has_time {
            parsed.to_naive_time()
        } else {
            Ok(NaiveTime::MIN)
        };
        let invalid = |e: chrono::format::ParseError| {
            format!(
                "is not a valid {} in \"{}\" ({e})",
                moment.name(),
                self.source
            )
        };
        let at = date.map_err(invalid)?.and_time(time.map_err(invalid)?);
        Ok(match parsed.offset() {
            Some(offset) => at - chrono::TimeDelta::seconds(i64::from(offset)),
            None => at,
        })
    }
}

/// Adds literal text to a strftime string (`%` escaped).
fn push_literal(strftime: &mut String, c: char) {
    if c == '%' {
        strftime.push_str("%%");
    } else {
        strftime.push(c);
    }
}

/// How a sender writes numbers: a column's `decimal_separator` and `thousands_separator`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumberFormat {
    pub decimal_separator: Option<char>,
    pub thousands_separator: Option<char>,
}

impl NumberFormat {
    /// Whether the sender's convention differs from the canonical one.
    pub fn is_canonical(&self) -> bool {
        self.decimal_separator.is_none_or(|c| c == '.') && self.thousands_separator.is_none()
    }

    /// `text` with the thousands separators removed and the decimal separator made a `.`.
    pub fn canonical(&self, text: &str) -> String {
        text.trim()
            .chars()
            .filter(|&c| Some(c) != self.thousands_separator)
            .map(|c| {
                if Some(c) == self.decimal_separator {
                    '.'
                } else {
                    c
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(format: &str, moment: Moment, text: &str) -> Result<String, String> {
        DateFormat::parse(format, moment)?.canonical(text, moment)
    }

    #[test]
    fn java_patterns_read_what_senders_write() {
        assert_eq!(
            read("dd.MM.yyyy", Moment::Date, "12.03.2021").as_deref(),
            Ok("2021-03-12")
        );
        assert_eq!(
            read(
                "yyyy-MM-dd'T'HH:mm:ssXXX",
                Moment::DateTime,
                "2021-03-12T08:30:00+01:00"
            )
            .as_deref(),
            Ok("2021-03-12T07:30:00.000Z")
        );
        assert_eq!(
            read(
                "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
                Moment::DateTime,
                "2021-03-12T08:30:00.250Z"
            )
            .as_deref(),
            Ok("2021-03-12T08:30:00.250Z")
        );
        assert_eq!(
            read("dd/MM/yyyy HH:mm", Moment::DateTime, "01/02/2021 23:05").as_deref(),
            Ok("2021-02-01T23:05:00.000Z"),
            "a pattern without an offset is UTC"
        );
        assert_eq!(
            read("MM/dd/yy hh:mm a", Moment::DateTime, "03/12/21 08:30 PM").as_deref(),
            Ok("2021-03-12T20:30:00.000Z")
        );
        assert_eq!(
            read("d MMM yyyy", Moment::Date, "5 Mar 2021").as_deref(),
            Ok("2021-03-05")
        );
        assert_eq!(
            read("HH:mm", Moment::Time, "08:30").as_deref(),
            Ok("08:30:00.000")
        );
        assert_eq!(
            read("yyyyMMdd", Moment::Date, "20210312").as_deref(),
            Ok("2021-03-12")
        );
        assert_eq!(
            read("yyyy-MM-dd''HH", Moment::DateTime, "2021-03-12'08").as_deref(),
            Ok("2021-03-12T08:00:00.000Z")
        );
    }

    #[test]
    fn text_that_does_not_fit_the_pattern_or_the_calendar_is_refused() {
        let e = read("dd.MM.yyyy", Moment::Date, "2021-03-12").unwrap_err();
        assert!(
            e.contains("does not match the format \"dd.MM.yyyy\""),
            "{e}"
        );
        let e = read("dd.MM.yyyy", Moment::Date, "31.02.2021").unwrap_err();
        assert!(e.contains("dd.MM.yyyy"), "{e}");
        assert!(read("dd.MM.yyyy", Moment::Date, "12.03.2021 extra").is_err());
        assert!(read("HH:mm", Moment::Time, "25:00").is_err());
    }

    #[test]
    fn patterns_weir_cannot_read_are_refused_naming_the_problem() {
        let e = DateFormat::parse("dd.MM.yyyy Q", Moment::Date).unwrap_err();
        assert!(e.contains("letter Q"), "{e}");
        let e = DateFormat::parse("yyyy-MM-dd'T", Moment::Date).unwrap_err();
        assert!(e.contains("unclosed quote"), "{e}");
        let e = DateFormat::parse("HH:mm", Moment::Date).unwrap_err();
        assert!(e.contains("year, month and day"), "{e}");
        let e = DateFormat::parse("dd.MM.yyyy", Moment::DateTime).unwrap_err();
        assert!(e.contains("no hour"), "{e}");
        let e = DateFormat::parse("HH:mm:ss.SS", Moment::Time).unwrap_err();
        assert!(e.contains("2 S"), "{e}");
    }

    #[test]
    fn without_a_format_iso_8601_is_read() {
        let iso = DateFormat::Iso8601;
        assert_eq!(
            iso.canonical("2021-03-12", Moment::Date).as_deref(),
            Ok("2021-03-12")
        );
        assert_eq!(
            iso.canonical("2021-03-12T08:30:00+01:00", Moment::Date)
                .as_deref(),
            Ok("2021-03-12"),
            "a DATE keeps the date as written"
        );
        assert_eq!(
            iso.canonical("2021-03-12T08:30:00-02:00", Moment::DateTime)
                .as_deref(),
            Ok("2021-03-12T10:30:00.000Z")
        );
        assert_eq!(
            iso.canonical("2021-03-12 08:30:00.5", Moment::DateTime)
                .as_deref(),
            Ok("2021-03-12T08:30:00.500Z")
        );
        assert_eq!(
            iso.canonical("2021-03-12", Moment::DateTime).as_deref(),
            Ok("2021-03-12T00:00:00.000Z")
        );
        assert_eq!(
            iso.canonical("08:30:15", Moment::Time).as_deref(),
            Ok("08:30:15.000")
        );
        let e = iso.canonical("12.03.2021", Moment::Date).unwrap_err();
        assert!(e.contains("ISO-8601 DATE"), "{e}");
    }

    #[test]
    fn epoch_formats_read_whole_numbers() {
        let ms = DateFormat::parse("epoch_ms", Moment::DateTime).unwrap();
        assert_eq!(
            ms.canonical("1615537800250", Moment::DateTime).as_deref(),
            Ok("2021-03-12T08:30:00.250Z")
        );
        let s = DateFormat::parse("epoch_s", Moment::Date).unwrap();
        assert_eq!(
            s.canonical("1615537800", Moment::Date).as_deref(),
            Ok("2021-03-12")
        );
        assert!(s.canonical("16155.5", Moment::Date).is_err());
        assert!(s.canonical("99999999999999999", Moment::Date).is_err());
    }

    #[test]
    fn number_conventions_become_a_point_decimal() {
        let de = NumberFormat {
            decimal_separator: Some(','),
            thousands_separator: Some('.'),
        };
        assert_eq!(de.canonical("1.234,5"), "1234.5");
        assert_eq!(de.canonical(" -0,25 "), "-0.25");
        assert!(!de.is_canonical());
        assert!(NumberFormat::default().is_canonical());
    }
}
