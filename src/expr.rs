//! CEL expressions (the `cel` crate): compiled once when the config loads, evaluated against
//! rows (filters, expression columns), batches (HTTP sink requests) and responses (success
//! rules).
//!
//! Values cross into CEL by kind: strings stay strings, JSON numbers become `int` (when they
//! are whole and fit) or `double`, booleans `bool`, null `null`, arrays parsed JSON lists.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

use crate::row::{Kind, Row};

/// The environment every expression compiles and runs in: the standard library plus the
/// strings extension (`upperAscii`, `replace`, `split`, `join`, `format`, …).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // The extension only declares fresh names in a fresh environment: it cannot conflict.
    env.add_extension(cel::extensions::strings)
        .expect("the strings extension declares into a fresh environment");
    Arc::new(env)
});

/// A compiled CEL expression with its source text. Cheap to clone.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
}

/// Why an expression could not be evaluated, or did not give the type asked for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Execution(#[from] cel::ExecutionError),
    #[error("gave {got}, not {want}")]
    Type { got: String, want: &'static str },
}

impl Expr {
    /// Compiles `source`. `variables` are the names it may use; a reference to any other
    /// top-level name that no macro binds (`rows.map(r, …)`) is reported here, at load.
    pub fn compile(source: &str, variables: &[&str]) -> Result<Expr, String> {
        let program = ENV
            .compile(source)
            .map_err(|e| format!("not a CEL expression: {}", e.to_string().trim()))?;
        let refs = program.references();
        let unknown: Vec<&str> = refs
            .variables()
            .into_iter()
            .filter(|v| !variables.contains(v) && !binds(source, v))
            .collect();
        if let Some(v) = unknown.first() {
            return Err(format!(
                "uses \"{v}\", which is not defined here (use {})",
                variables.join(", ")
            ));
        }
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the given variables.
    pub fn eval(&self, vars: &[(&str, &Value)]) -> Result<Value, EvalError> {
        let mut ctx = Context::with_env(ENV.clone());
        for (name, value) in vars {
            ctx.add_variable_from_value(*name, (*value).clone());
        }
        Ok(self.program.execute(&ctx)?)
    }

    /// Evaluates to a `bool`.
    pub fn eval_bool(&self, vars: &[(&str, &Value)]) -> Result<bool, EvalError> {
        match self.eval(vars)? {
            Value::Bool(b) => Ok(b),
            other => Err(type_error(&other, "a bool")),
        }
    }

    /// Evaluates to text: strings as they are, numbers and bools written out, null empty.
    pub fn eval_text(&self, vars: &[(&str, &Value)]) -> Result<String, EvalError> {
        let v = self.eval(vars)?;
        text_of(&v).ok_or_else(|| type_error(&v, "a string, number, bool or null"))
    }

    /// Evaluates to JSON.
    pub fn eval_json(&self, vars: &[(&str, &Value)]) -> Result<serde_json::Value, EvalError> {
        let v = self.eval(vars)?;
        v.json()
            .map_err(|_| type_error(&v, "something JSON can hold"))
    }
}

/// True when `name` is bound by a comprehension macro in `source` (`.map(name, …)`,
/// `.filter(name, …)`, `.exists(name, …)`, …), so it is not a free variable.
fn binds(source: &str, name: &str) -> bool {
    ["map", "filter", "all", "exists", "exists_one"]
        .iter()
        .any(|m| {
            let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
            compact.contains(&format!(".{m}({name},"))
        })
}

fn type_error(v: &Value, want: &'static str) -> EvalError {
    EvalError::Type {
        got: v.type_of().to_string(),
        want,
    }
}

/// The text of a scalar value, as it goes into a CSV cell or a URL.
pub fn text_of(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        _ => return None,
    })
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        self.source == other.source
    }
}

impl Eq for Expr {}

/// A row as a CEL map of field name → value.
pub fn row_value(row: &Row) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    for f in row.fields() {
        let v = match f.kind {
            Kind::String => Value::String(Arc::new(f.text.to_owned())),
            Kind::Bool => Value::Bool(f.text == "true"),
            Kind::Null => Value::Null,
            Kind::Number => number(f.text),
            Kind::Json => serde_json::from_str::<serde_json::Value>(f.text)
                .map(json_value)
                .unwrap_or_else(|_| Value::String(Arc::new(f.text.to_owned()))),
        };
        map.insert(Key::from(f.name), v);
    }
    Value::Map(Map { map: Arc::new(map) })
}

/// A JSON number's text as `int` when it is whole and fits, else `double`.
fn number(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    text.parse::<f64>()
        .map(Value::Float)
        .unwrap_or_else(|_| Value::String(Arc::new(text.to_owned())))
}

/// JSON as a CEL value.
pub fn json_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => number(&n.to_string()),
        serde_json::Value::String(s) => Value::String(Arc::new(s)),
        serde_json::Value::Array(a) => {
            Value::List(Arc::new(a.into_iter().map(json_value).collect()))
        }
        serde_json::Value::Object(o) => {
            let map: HashMap<Key, Value> = o
                .into_iter()
                .map(|(k, v)| (Key::from(k), json_value(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A map with string keys, for `pipeline`, `response` and headers.
pub fn map_value<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::from(k), v))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// The `pipeline` variable: `{name}`.
pub fn pipeline_value(name: &str) -> Value {
    map_value([("name", Value::from(name))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> Row {
        crate::ingest::parse::json(json.as_bytes())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn row_values_keep_their_json_types() {
        let r = row_value(&row(
            r#"{"s":"007","i":42,"f":1.5,"b":true,"n":null,"a":[1,"x"],"o":{"p":2}}"#,
        ));
        let e = Expr::compile(
            "row.s == '007' && row.i == 42 && row.f == 1.5 && row.b && row.n == null \
             && row.a[0] == 1 && row.a[1] == 'x' && row['o.p'] == 2",
            &["row"],
        )
        .unwrap();
        assert!(e.eval_bool(&[("row", &r)]).unwrap());
    }

    #[test]
    fn strings_extension_and_text_results() {
        let r = row_value(&row(r#"{"code":"ab","d":"12.03.2021","n":3}"#));
        let e = Expr::compile(
            "row.code.upperAscii() + '-' + row.d.split('.')[2] + '-' + string(row.n)",
            &["row"],
        )
        .unwrap();
        assert_eq!(e.eval_text(&[("row", &r)]).unwrap(), "AB-2021-3");
    }

    #[test]
    fn syntax_errors_and_unknown_names_are_reported_at_compile() {
        assert!(
            Expr::compile("row.a ==", &["row"])
                .unwrap_err()
                .starts_with("not a CEL expression")
        );
        let e = Expr::compile("rwo.a == 1", &["row"]).unwrap_err();
        assert!(e.contains("\"rwo\""), "{e}");
        assert!(Expr::compile("rows.map(r, r.a)", &["rows"]).is_ok());
    }

    #[test]
    fn a_non_bool_filter_result_is_a_type_error() {
        let e = Expr::compile("'x'", &[]).unwrap();
        assert!(matches!(e.eval_bool(&[]), Err(EvalError::Type { .. })));
    }
}
