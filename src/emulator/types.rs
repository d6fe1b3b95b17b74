//! Column types as Celonis keeps them (`ColumnTransport`), their SQLite form, and turning chunk values into typed values.
//!
//! Each Celonis type has one SQLite declared type, so a table's types survive in the database
//! file itself and later jobs see them: STRING(n) is `VARCHAR(n)` (TEXT), INTEGER `INTEGER`,
//! FLOAT `FLOAT` or `FLOAT(decimals)` (REAL), BOOLEAN `BOOLEAN` (INTEGER 0/1), and DATE,
//! DATETIME and TIME are `DATE`, `DATETIME` and `TIME`, stored as ISO-8601 text in one normal
//! form: `2024-03-01`, `2024-03-01T13:45:00.000Z` (UTC, values with an offset are converted)
//! and `13:45:00.000`. A column declared plain `TEXT` comes from an emulator database written
//! before types existed and reads back as a STRING without a length.

use rusqlite::types::Value as SqlValue;

/// The `ColumnTransport.columnType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ColumnType {
    String,
    Integer,
    Float,
    Boolean,
    Date,
    DateTime,
    Time,
}

impl ColumnType {
    pub(super) fn parse(name: &str) -> Option<ColumnType> {
        Some(match name {
            "STRING" => ColumnType::String,
            "INTEGER" => ColumnType::Integer,
            "FLOAT" => ColumnType::Float,
            "BOOLEAN" => ColumnType::Boolean,
            "DATE" => ColumnType::Date,
            "DATETIME" => ColumnType::DateTime,
            "TIME" => ColumnType::Time,
            _ => return None,
        })
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "STRING",
            ColumnType::Integer => "INTEGER",
            ColumnType::Float => "FLOAT",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Date => "DATE",
            ColumnType::DateTime => "DATETIME",
            ColumnType::Time => "TIME",
        }
    }
}

/// One column of a table: its name, type, STRING length and FLOAT decimals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ColumnDef {
    pub name: String,
    pub kind: ColumnType,
    /// STRING length in characters; `None` only for columns of a pre-typed database.
    pub length: Option<usize>,
    pub decimals: Option<u32>,
    pub pk: bool,
}

impl ColumnDef {
    pub(super) fn string(name: &str, length: usize) -> ColumnDef {
        ColumnDef {
            name: name.to_owned(),
            kind: ColumnType::String,
            length: Some(length),
            decimals: None,
            pk: false,
        }
    }

    pub(super) fn of(name: &str, kind: ColumnType) -> ColumnDef {
        ColumnDef {
            name: name.to_owned(),
            kind,
            length: None,
            decimals: None,
            pk: false,
        }
    }

    /// The SQLite declared type.
    pub(super) fn declared(&self) -> String {
        match (self.kind, self.length, self.decimals) {
            (ColumnType::String, Some(length), _) => format!("VARCHAR({length})"),
            (ColumnType::String, None, _) => "TEXT".to_owned(),
            (ColumnType::Float, _, Some(decimals)) => format!("FLOAT({decimals})"),
            (kind, _, _) => kind.as_str().to_owned(),
        }
    }

    /// Reads a declared type back; anything unknown is an unbounded STRING.
    pub(super) fn from_declared(name: &str, declared: &str) -> ColumnDef {
        let declared = declared.trim().to_ascii_uppercase();
        let (base, argument) = match declared.split_once('(') {
            Some((base, rest)) => (
                base.trim().to_owned(),
                rest.trim_end_matches(')').trim().parse::<usize>().ok(),
            ),
            None => (declared.clone(), None),
        };
        let mut def = ColumnDef::of(name, ColumnType::String);
        match base.as_str() {
            "VARCHAR" => def.length = argument,
            "FLOAT" => {
                def.kind = ColumnType::Float;
                def.decimals = argument.and_then(|d| u32::try_from(d).ok());
            }
            other => {
                if let Some(kind) = ColumnType::parse(other) {
                    def.kind = kind;
                }
            }
        }
        def
    }

    /// Same type as `other` (names aside); a STRING of another length is another type.
    pub(super) fn same_type(&self, other: &ColumnDef) -> bool {
        self.kind == other.kind && (self.kind != ColumnType::String || self.length == other.length)
    }

    /// `STRING(80)`, `INTEGER`, `FLOAT(2)` as Celonis would show it.
    pub(super) fn describe(&self) -> String {
        match (self.kind, self.length, self.decimals) {
            (ColumnType::String, Some(length), _) => format!("STRING({length})"),
            (ColumnType::Float, _, Some(decimals)) => format!("FLOAT({decimals})"),
            (kind, _, _) => kind.as_str().to_owned(),
        }
    }
}

/// How a CSV column's text is read: the job's options with the column's `additionalColumnOptions` over them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TextFormat {
    pub date_format: Option<String>,
    pub decimal_separator: Option<String>,
    pub thousand_separator: Option<String>,
}

/// A value as a chunk brought it, before the column's type is applied.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    /// CSV text, parsed with the column's [`TextFormat`].
    Text(String),
    Int(i64),
    Real(f64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Milliseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    /// Milliseconds since midnight.
    TimeOfDay(i64),
}

/// The value after the type: stored, or why it does not fit.
pub(super) enum Converted {
    Value(SqlValue),
    /// A STRING value longer than its length, cropped to it.
    Cropped(SqlValue),
}

/// Converts one cell to its column's SQLite value; the error says why, without the value.
pub(super) fn convert(
    def: &ColumnDef,
    cell: Cell,
    format: &TextFormat,
) -> Result<Converted, String> {
    if let Cell::Text(text) = &cell
        && text.is_empty()
        && def.kind != ColumnType::String
    {
        return Ok(Converted::Value(SqlValue::Null));
    }
    let value = match def.kind {
        ColumnType::String => {
            let text = match cell {
                Cell::Null => return Ok(Converted::Value(SqlValue::Null)),
                Cell::Text(text) => text,
                Cell::Int(i) => i.to_string(),
                Cell::Real(f) => f.to_string(),
                Cell::Bool(b) => b.to_string(),
                Cell::Date(days) => format_date(days),
                Cell::Timestamp(ms) => format_datetime(ms),
                Cell::TimeOfDay(ms) => format_time(ms),
            };
            // Celonis crops by characters (VARCHAR length is in characters, reference §3.2).
            if let Some(length) = def.length
                && let Some((end, _)) = text.char_indices().nth(length)
            {
                return Ok(Converted::Cropped(SqlValue::Text(text[..end].to_owned())));
            }
            SqlValue::Text(text)
        }
        ColumnType::Integer => match cell {
            Cell::Null => SqlValue::Null,
            Cell::Int(i) => SqlValue::Integer(i),
            Cell::Bool(b) => SqlValue::Integer(i64::from(b)),
            Cell::Real(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => SqlValue::Integer(f as i64),
            Cell::Text(text) => SqlValue::Integer(
                normalise_number(&text, format)
                    .parse::<i64>()
                    .map_err(|_| "is not an INTEGER".to_owned())?,
            ),
            _ => return Err("is not an INTEGER".into()),
        },
        ColumnType::Float => match cell {
            Cell::Null => SqlValue::Null,
            Cell::Int(i) => SqlValue::Real(i as f64),
            Cell::Real(f) => SqlValue::Real(f),
            Cell::Text(text) => {
                let number = normalise_number(&text, format);
                let parsed = number
                    .parse::<f64>()
                    .ok()
                    .filter(|f: &f64| f.is_finite())
                    .ok_or_else(|| "is not a FLOAT".to_owned())?;
                SqlValue::Real(parsed)
            }
            _ => return Err("is not a FLOAT".into()),
        },
        ColumnType::Boolean => match cell {
            Cell::Null => SqlValue::Null,
            Cell::Bool(b) => SqlValue::Integer(i64::from(b)),
            Cell::Int(i @ (0 | 1)) => SqlValue::Integer(i),
            Cell::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => SqlValue::Integer(1),
                "false" | "0" => SqlValue::Integer(0),
                _ => return Err("is not a BOOLEAN (true, false, 1 or 0)".into()),
            },
            _ => return Err("is not a BOOLEAN".into()),
        },
        ColumnType::Date | ColumnType::DateTime | ColumnType::Time => {
            let moment = match cell {
                Cell::Null => return Ok(Converted::Value(SqlValue::Null)),
                Cell::Date(days) => i64::from(days) * DAY_MS,
                Cell::Timestamp(ms) => ms,
                Cell::TimeOfDay(ms) => ms,
                Cell::Text(text) => parse_moment(&text, format.date_format.as_deref())?,
                _ => return Err(format!("is not a {}", def.kind.as_str())),
            };
            SqlValue::Text(match def.kind {
                ColumnType::Date => format_date(moment.div_euclid(DAY_MS) as i32),
                ColumnType::DateTime => format_datetime(moment),
                _ => format_time(moment.rem_euclid(DAY_MS)),
            })
        }
    };
    Ok(Converted::Value(value))
}

/// Removes thousands separators and makes the decimal separator a point.
fn normalise_number(text: &str, format: &TextFormat) -> String {
    let mut text = text.trim().to_owned();
    if let Some(thousands) = format
        .thousand_separator
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        text = text.replace(thousands, "");
    }
    if let Some(decimal) = format
        .decimal_separator
        .as_deref()
        .filter(|s| !s.is_empty())
        && decimal != "."
    {
        text = text.replace(decimal, ".");
    }
    text
}

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub(super) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

pub(super) fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(i64::from(days));
    format!("{y:04}-{m:02}-{d:02}")
}

pub(super) fn format_datetime(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    format!(
        "{}T{}Z",
        format_date(days as i32),
        format_time(ms.rem_euclid(DAY_MS))
    )
}

pub(super) fn format_time(ms: i64) -> String {
    let (s, ms) = (ms / 1000, ms % 1000);
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, s / 60 % 60, s % 60)
}

/// The patterns tried, in order, for a date, datetime or time column with no `dateFormat`.
const ISO_PATTERNS: &[&str] = &[
    "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
    "yyyy-MM-dd'T'HH:mm:ssXXX",
    "yyyy-MM-dd'T'HH:mm:ss.SSS",
    "yyyy-MM-dd'T'HH:mm:ss",
    "yyyy-MM-dd HH:mm:ss.SSS",
    "yyyy-MM-dd HH:mm:ss",
    "yyyy-MM-dd",
    "HH:mm:ss.SSS",
    "HH:mm:ss",
];

/// Milliseconds since the epoch (UTC) of a date, datetime or time text.
fn parse_moment(text: &str, pattern: Option<&str>) -> Result<i64, String> {
    match pattern {
        Some(pattern) => {
            let tokens = compile(pattern)?;
            parse_with(&tokens, text).ok_or_else(|| format!("does not match dateFormat {pattern}"))
        }
        None => ISO_PATTERNS
            .iter()
            .find_map(|p| parse_with(&compile(p).ok()?, text))
            .ok_or_else(|| "is not an ISO-8601 date, datetime or time".to_owned()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// A numeric field: its letter and how many times it was repeated.
    Field(char, usize),
    /// `X`, `XX`, `XXX` or `Z`: an offset.
    Offset(char, usize),
}

/// Compiles the common subset of Java date patterns: y M d H m s S, X/Z offsets, quoted text.
fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut literal = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("dateFormat {pattern} has an unclosed quote")),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        literal.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        literal.push(other);
                        i += 1;
                    }
                }
            }
            if literal.is_empty() {
                literal.push('\'');
            }
            tokens.push(Token::Literal(literal));
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        match c {
            'y' | 'M' | 'd' | 'H' | 'm' | 's' | 'S' => tokens.push(Token::Field(c, run)),
            'X' | 'Z' => tokens.push(Token::Offset(c, run)),
            c if c.is_ascii_alphabetic() => {
                return Err(format!(
                    "dateFormat {pattern} uses {c}, which the emulator does not support"
                ));
            }
            _ => tokens.push(Token::Literal(chars[i..i + run].iter().collect())),
        }
        i += run;
    }
    Ok(tokens)
}

fn parse_with(tokens: &[Token], text: &str) -> Option<i64> {
    let (mut year, mut month, mut day) = (1970i64, 1u32, 1u32);
    let (mut hour, mut minute, mut second, mut millis) = (0i64, 0i64, 0i64, 0i64);
    let mut offset_minutes = 0i64;
    let mut rest = text.trim();
    for token in tokens {
        match token {
            Token::Literal(literal) => rest = rest.strip_prefix(literal.as_str())?,
            Token::Field(letter, width) => {
                // A single letter takes one or two digits (two letters or more: exactly that many; `yyyy` four).
                let max = match (*letter, *width) {
                    ('S', w) => w,
                    (_, 1) => 2,
                    (_, w) => w,
                };
                let digits = rest
                    .chars()
                    .take(max)
                    .take_while(char::is_ascii_digit)
                    .count();
                if digits == 0 || (*width > 1 && digits != max) {
                    return None;
                }
                let value: i64 = rest[..digits].parse().ok()?;
                rest = &rest[digits..];
                match letter {
                    'y' => year = value,
                    'M' => month = u32::try_from(value).ok().filter(|m| (1..=12).contains(m))?,
                    'd' => day = u32::try_from(value).ok().filter(|d| (1..=31).contains(d))?,
                    'H' if value < 24 => hour = value,
                    'm' if value < 60 => minute = value,
                    's' if value < 60 => second = value,
                    'S' => millis = value * 1000 / 10i64.pow(digits as u32),
                    _ => return None,
                }
            }
            Token::Offset(letter, width) => {
                if *letter == 'X'
                    && let Some(after) = rest.strip_prefix('Z')
                {
                    rest = after;
                    continue;
                }
                let sign = match rest.chars().next()? {
                    '+' => 1,
                    '-' => -1,
                    _ => return None,
                };
                rest = &rest[1..];
                let hours: i64 = rest.get(..2)?.parse().ok()?;
                rest = &rest[2..];
                let colon = *letter == 'X' && *width >= 3;
                if colon {
                    rest = rest.strip_prefix(':')?;
                }
                let minutes = if *letter == 'X'
                    && *width == 1
                    && !rest.starts_with(|c: char| c.is_ascii_digit())
                {
                    0
                } else {
                    let m: i64 = rest.get(..2)?.parse().ok()?;
                    rest = &rest[2..];
                    m
                };
                offset_minutes = sign * (hours * 60 + minutes);
            }
        }
    }
    if !rest.is_empty() {
        return None;
    }
    // Reject 31.02. and the like: the day must survive a round trip.
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    Some(days * DAY_MS + ((hour * 60 + minute - offset_minutes) * 60 + second) * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(text: &str, pattern: Option<&str>) -> Result<String, String> {
        parse_moment(text, pattern).map(format_datetime)
    }

    #[test]
    fn java_patterns_parse_dates_datetimes_and_offsets() {
        assert_eq!(
            moment("01.03.2024", Some("dd.MM.yyyy")).unwrap(),
            "2024-03-01T00:00:00.000Z"
        );
        assert_eq!(
            moment(
                "2024-03-01T13:45:00.250+02:00",
                Some("yyyy-MM-dd'T'HH:mm:ss.SSSXXX")
            )
            .unwrap(),
            "2024-03-01T11:45:00.250Z"
        );
        assert_eq!(
            moment("2024-03-01T00:30:00Z", Some("yyyy-MM-dd'T'HH:mm:ssX")).unwrap(),
            "2024-03-01T00:30:00.000Z"
        );
        assert_eq!(
            moment("20240301 0130 -0100", Some("yyyyMMdd HHmm Z")).unwrap(),
            "2024-03-01T02:30:00.000Z"
        );
        assert_eq!(
            moment("at 1.3.2024", Some("'at' d.M.yyyy")).unwrap(),
            "2024-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn text_that_does_not_match_the_pattern_or_the_calendar_is_rejected() {
        assert!(moment("2024-03-01", Some("dd.MM.yyyy")).is_err());
        assert!(moment("31.02.2024", Some("dd.MM.yyyy")).is_err());
        assert!(moment("01.03.2024 extra", Some("dd.MM.yyyy")).is_err());
        assert!(
            moment("x", Some("EEE"))
                .unwrap_err()
                .contains("does not support")
        );
    }

    #[test]
    fn without_a_pattern_iso_8601_is_accepted() {
        assert_eq!(
            moment("2024-03-01", None).unwrap(),
            "2024-03-01T00:00:00.000Z"
        );
        assert_eq!(
            moment("2024-03-01T10:00:00-05:00", None).unwrap(),
            "2024-03-01T15:00:00.000Z"
        );
        assert_eq!(parse_moment("13:45:10", None).unwrap(), 49_510_000);
    }

    #[test]
    fn numbers_follow_the_separators() {
        let german = TextFormat {
            date_format: None,
            decimal_separator: Some(",".into()),
            thousand_separator: Some(".".into()),
        };
        let float = ColumnDef::of("f", ColumnType::Float);
        match convert(&float, Cell::Text("1.234,5".into()), &german).unwrap() {
            Converted::Value(SqlValue::Real(f)) => assert_eq!(f, 1234.5),
            _ => panic!("not a float"),
        }
        let int = ColumnDef::of("i", ColumnType::Integer);
        assert!(convert(&int, Cell::Text("12a".into()), &german).is_err());
        assert!(convert(&float, Cell::Text("NaN".into()), &TextFormat::default()).is_err());
        assert!(convert(&float, Cell::Text("inf".into()), &TextFormat::default()).is_err());
        assert!(convert(&float, Cell::Text("1.5e3".into()), &TextFormat::default()).is_ok());
    }

    #[test]
    fn strings_are_cropped_by_characters_not_bytes() {
        let def = ColumnDef::string("s", 3);
        match convert(&def, Cell::Text("äöüß".into()), &TextFormat::default()).unwrap() {
            Converted::Cropped(SqlValue::Text(t)) => assert_eq!(t, "äöü"),
            _ => panic!("not cropped"),
        }
        assert!(matches!(
            convert(&def, Cell::Text("äöü".into()), &TextFormat::default()).unwrap(),
            Converted::Value(_)
        ));
    }

    #[test]
    fn declared_types_round_trip() {
        for def in [
            ColumnDef::string("a", 80),
            ColumnDef::of("b", ColumnType::Integer),
            ColumnDef::of("c", ColumnType::DateTime),
            ColumnDef {
                decimals: Some(2),
                ..ColumnDef::of("d", ColumnType::Float)
            },
        ] {
            assert_eq!(ColumnDef::from_declared(&def.name, &def.declared()), def);
        }
        assert_eq!(
            ColumnDef::from_declared("old", "TEXT"),
            ColumnDef::of("old", ColumnType::String)
        );
    }

    #[test]
    fn civil_dates_round_trip_around_the_epoch() {
        for days in [-800_000, -1, 0, 1, 19_783, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_date(19_783), "2024-03-01");
    }
}
