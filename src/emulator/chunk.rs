//! Parsing one CSV chunk with the job's `csvParsingOptions` into a header and rows of text.
//!
//! Every chunk carries its own header row. Values are kept exactly as text: no trimming, no
//! type inference, embedded quotes and line breaks survive.

use super::model::CsvOptions;

/// A parsed chunk: the header row and the data rows, each as wide as the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CsvTable {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Why a chunk could not be parsed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CsvError {
    #[error("{option} must be a single ASCII character for the emulator, got {value:?}")]
    UnsupportedOption { option: &'static str, value: String },
    #[error("the chunk has no header row")]
    NoHeader,
    #[error("the chunk is not valid CSV: {0}")]
    Parse(#[from] csv::Error),
}

/// Parses `bytes` as CSV with a header row; defaults are `,` `"` `"` and any of CR, LF, CRLF.
pub(super) fn parse_csv(bytes: &[u8], options: &CsvOptions) -> Result<CsvTable, CsvError> {
    let mut builder = csv::ReaderBuilder::new();
    builder.has_headers(true).flexible(false);
    if let Some(separator) = &options.separator {
        builder.delimiter(single_byte("separatorSequence", separator)?);
    }
    let quote = match &options.quote {
        Some(quote) => single_byte("quoteSequence", quote)?,
        None => b'"',
    };
    builder.quote(quote);
    if let Some(escape) = &options.escape {
        let escape = single_byte("escapeSequence", escape)?;
        // A doubled quote stays an escaped quote too; a distinct escape byte is recognised as well.
        if escape != quote {
            builder.escape(Some(escape));
        }
    }
    if let Some(line_ending) = &options.line_ending {
        match line_ending.as_str() {
            "\r\n" | "\n" | "\r" => {}
            other => {
                builder.terminator(csv::Terminator::Any(single_byte("lineEnding", other)?));
            }
        }
    }

    let mut reader = builder.from_reader(bytes);
    let headers: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    if headers.is_empty() {
        return Err(CsvError::NoHeader);
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        rows.push(record?.iter().map(str::to_owned).collect());
    }
    Ok(CsvTable { headers, rows })
}

fn single_byte(option: &'static str, value: &str) -> Result<u8, CsvError> {
    match value.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(CsvError::UnsupportedOption {
            option,
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(separator: &str, quote: &str, escape: &str) -> CsvOptions {
        CsvOptions {
            separator: Some(separator.into()),
            quote: Some(quote.into()),
            escape: Some(escape.into()),
            line_ending: None,
            ..CsvOptions::default()
        }
    }

    #[test]
    fn defaults_parse_quoted_values_with_doubled_quotes_and_line_breaks() {
        let table = parse_csv(
            b"id,name\r\n007,\"say \"\"hi\"\"\r\nbye\"\r\n2,M\xc3\xbcller\r\n",
            &CsvOptions::default(),
        )
        .unwrap();
        assert_eq!(table.headers, vec!["id", "name"]);
        assert_eq!(
            table.rows,
            vec![
                vec!["007".to_owned(), "say \"hi\"\r\nbye".to_owned()],
                vec!["2".to_owned(), "Müller".to_owned()],
            ]
        );
    }

    #[test]
    fn a_semicolon_separator_and_backslash_escape_are_honoured() {
        let table = parse_csv(b"a;b\n\"x;y\";\"q\\\"q\"\n", &options(";", "\"", "\\")).unwrap();
        assert_eq!(table.rows, vec![vec!["x;y".to_owned(), "q\"q".to_owned()]]);
    }

    #[test]
    fn a_custom_quote_character_is_honoured() {
        let table = parse_csv(b"a,b\n'1,5',2\n", &options(",", "'", "'")).unwrap();
        assert_eq!(table.rows, vec![vec!["1,5".to_owned(), "2".to_owned()]]);
    }

    #[test]
    fn a_multi_character_separator_is_reported_not_guessed() {
        let err = parse_csv(b"a||b\n", &options("||", "\"", "\"")).unwrap_err();
        assert!(matches!(
            err,
            CsvError::UnsupportedOption {
                option: "separatorSequence",
                ..
            }
        ));
    }

    #[test]
    fn a_row_wider_than_the_header_is_an_error() {
        assert!(matches!(
            parse_csv(b"a,b\n1,2,3\n", &CsvOptions::default()),
            Err(CsvError::Parse(_))
        ));
    }

    #[test]
    fn an_empty_chunk_has_no_header() {
        assert!(matches!(
            parse_csv(b"", &CsvOptions::default()),
            Err(CsvError::NoHeader)
        ));
    }

    #[test]
    fn a_header_only_chunk_has_no_rows() {
        let table = parse_csv(b"a,b\n", &CsvOptions::default()).unwrap();
        assert!(table.rows.is_empty());
    }
}
