//! `${VAR}` (and `${VAR:-default}`) substitution in every string of the parsed TOML tree,
//! with key paths in errors.

use std::collections::HashMap;

use super::ConfigError;

/// Replaces `${NAME}` in every string value of `value` from `env`; `${NAME:-text}` uses
/// `text` when NAME is unset or empty. `$${` writes a literal `${`. Every missing variable
/// is reported with the key path it appears at.
pub(super) fn substitute(
    value: &mut toml::Value,
    path: &str,
    env: &HashMap<String, String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => errors.push(ConfigError::new(path, message)),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                substitute(item, &child, env, errors);
            }
        }
        _ => {}
    }
}

fn expand(s: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "\"${\" is not closed by \"}\"".to_owned())?;
            let (name, default) = match tail[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&tail[..end], None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "\"${{{name}}}\" is not a valid environment variable reference"
                ));
            }
            match (
                env.get(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([("KEY".to_owned(), "s3cr3t".to_owned())])
    }

    #[test]
    fn variables_are_replaced_anywhere_in_a_string() {
        assert_eq!(expand("AppKey ${KEY}!", &env()).unwrap(), "AppKey s3cr3t!");
        assert_eq!(expand("price $5", &env()).unwrap(), "price $5");
        assert_eq!(expand("$${KEY}", &env()).unwrap(), "${KEY}");
    }

    #[test]
    fn a_default_applies_when_the_variable_is_unset_or_empty() {
        assert_eq!(expand("${NOPE:-local}", &env()).unwrap(), "local");
        assert_eq!(expand("${KEY:-local}", &env()).unwrap(), "s3cr3t");
        let empty = HashMap::from([("E".to_owned(), String::new())]);
        assert_eq!(expand("${E:-fallback}", &empty).unwrap(), "fallback");
        assert_eq!(expand("${E}", &empty).unwrap(), "");
    }

    #[test]
    fn a_missing_variable_is_named() {
        assert_eq!(
            expand("${NOPE}", &env()).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(expand("${KEY", &env()).is_err());
        assert!(expand("${1X}", &env()).is_err());
    }

    #[test]
    fn errors_carry_the_key_path() {
        let mut v: toml::Value = toml::from_str("[[p]]\nk = [\"${NOPE}\"]").unwrap();
        let mut errors = vec![];
        substitute(&mut v, "", &env(), &mut errors);
        assert_eq!(
            errors[0].to_string(),
            "p[0].k[0]: environment variable NOPE is not set"
        );
    }
}
