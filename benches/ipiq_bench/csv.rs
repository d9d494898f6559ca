//! The little CSV this benchmark reads and writes (RFC 4180: comma-separated fields, a field
//! with a comma, quote or line break quoted, a quote inside one doubled).

/// One field, quoted if it must be.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One record (no line break at the end).
pub fn record<S: AsRef<str>>(fields: &[S]) -> String {
    fields
        .iter()
        .map(|f| field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits one line into its fields; an unterminated quote or a quote in the middle of an
/// unquoted field is an error. (Records here never span lines.)
pub fn parse(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut f = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field".to_string()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        f.push('"');
                    }
                    Some('"') => break,
                    Some(c) => f.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(f);
                    return Ok(fields);
                }
                Some(',') => fields.push(f),
                Some(c) => return Err(format!("{c:?} after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(f);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".to_string()),
                    Some(c) => f.push(c),
                }
            }
            fields.push(f);
        }
    }
}
