//! The load: wrk runs with the three request bodies, and an HTTP client that fills a queue
//! with many rows quickly (for the delivery and memory measurements).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// One kind of request every server under test gets.
pub struct Body {
    pub name: &'static str,
    pub rows: u64,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: String,
}

/// A row of 10 fields, about 200 bytes of JSON; `i` varies its values.
pub fn row_json(i: u64) -> String {
    format!(
        concat!(
            r#"{{"OrderId":"{:010}","Position":"{:06}","Customer":"CUST-{:06}","#,
            r#""Material":"MAT-{:08}","Quantity":{},"Price":{}.{:02},"Currency":"EUR","#,
            r#""Plant":"DE{:02}","DeliveryDate":"{:02}.03.2021","Status":"OPEN"}}"#
        ),
        145_632_053 + i,
        (i % 1000) * 10,
        i % 100_000,
        i % 10_000_000,
        1 + i % 50,
        10 + i % 990,
        i % 100,
        i % 20,
        1 + i % 28,
    )
}

/// A row of `fields` fields (about 20 bytes of JSON each): the first ten are
/// [`row_json`]'s, then `Extra01`, `Extra02`, … with short varying text.
pub fn wide_row_json(i: u64, fields: u32) -> String {
    if fields == 10 {
        return row_json(i);
    }
    let names = [
        ("OrderId", format!("\"{:010}\"", 145_632_053 + i)),
        ("Position", format!("\"{:06}\"", (i % 1000) * 10)),
        ("Customer", format!("\"CUST-{:06}\"", i % 100_000)),
        ("Material", format!("\"MAT-{:08}\"", i % 10_000_000)),
        ("Quantity", format!("{}", 1 + i % 50)),
        ("Price", format!("{}.{:02}", 10 + i % 990, i % 100)),
        ("Currency", "\"EUR\"".to_owned()),
        ("Plant", format!("\"DE{:02}\"", i % 20)),
        ("DeliveryDate", format!("\"{:02}.03.2021\"", 1 + i % 28)),
        ("Status", "\"OPEN\"".to_owned()),
    ];
    let mut s = String::with_capacity(fields as usize * 24);
    s.push('{');
    for f in 0..fields {
        if f > 0 {
            s.push(',');
        }
        match names.get(f as usize) {
            Some((name, value)) => {
                s.push_str(&format!("\"{name}\":{value}"));
            }
            None => s.push_str(&format!(
                "\"Extra{f:03}\":\"v{:06}\"",
                (i + u64::from(f)) % 1_000_000
            )),
        }
    }
    s.push('}');
    s
}

/// `n` rows as one JSON array.
pub fn array_json(first: u64, n: u64) -> String {
    let mut s = String::with_capacity(n as usize * 210 + 2);
    s.push('[');
    for i in first..first + n {
        if i > first {
            s.push(',');
        }
        s.push_str(&row_json(i));
    }
    s.push(']');
    s
}

/// The three request kinds: one row per request in the query string, one row as
/// a JSON object, 100 rows as a JSON array.
pub fn bodies() -> Vec<Body> {
    vec![
        Body {
            name: "1 row, query string GET",
            rows: 1,
            method: "GET",
            path: "/hooks/bench?OrderId=0145632053&Position=000010&Customer=CUST-004711&Material=MAT-00123456&Quantity=12&Price=1234.50&Currency=EUR&Plant=DE01&DeliveryDate=12.03.2021&Status=OPEN".into(),
            content_type: None,
            body: String::new(),
        },
        Body {
            name: "1 row, JSON POST",
            rows: 1,
            method: "POST",
            path: "/hooks/bench".into(),
            content_type: Some("application/json"),
            body: row_json(0),
        },
        Body {
            name: "100 rows, JSON array POST",
            rows: 100,
            method: "POST",
            path: "/hooks/bench".into(),
            content_type: Some("application/json"),
            body: array_json(0, 100),
        },
    ]
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WrkResult {
    pub req_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Settings shared by every wrk run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

/// Runs wrk against `addr` with `body` and fails on any non-2xx answer or socket error.
pub fn wrk(work: &Path, addr: SocketAddr, body: &Body, load: Load) -> anyhow::Result<WrkResult> {
    let slug: String = body
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let body_file = work.join(format!("{slug}.body"));
    std::fs::write(&body_file, &body.body)?;
    let script = work.join(format!("{slug}.lua"));
    let mut lua = format!("wrk.method = \"{}\"\n", body.method);
    if let Some(ct) = body.content_type {
        lua.push_str(&format!("wrk.headers[\"Content-Type\"] = \"{ct}\"\n"));
    }
    if !body.body.is_empty() {
        lua.push_str(&format!(
            "local f = assert(io.open(\"{}\", \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n",
            body_file.display()
        ));
    }
    lua.push_str(concat!(
        "done = function(summary, latency, requests)\n",
        "  local e = summary.errors\n",
        "  io.write(string.format(\"WEIR_BENCH %d %d %d %d %d %d %d %.1f %.1f\\n\",\n",
        "    summary.requests, summary.duration, e.status, e.connect, e.read, e.write,\n",
        "    e.timeout, latency:percentile(50), latency:percentile(99)))\n",
        "end\n",
    ));
    std::fs::write(&script, lua)?;
    let url = format!("http://{addr}{}", body.path);
    let out = Command::new("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script)
        .arg(&url)
        .output()
        .context("running wrk (is it installed? bench/run.sh installs it)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WEIR_BENCH "))
        .with_context(|| format!("wrk printed no summary:\n{stdout}"))?;
    let n: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    if n.len() != 9 || n.iter().any(|v| v.is_nan()) {
        bail!("unreadable wrk summary: {line}");
    }
    let (requests, duration_us) = (n[0] as u64, n[1]);
    let (status, connect, read, write, timeout) = (n[2], n[3], n[4], n[5], n[6]);
    if status > 0.0 || connect + read + write + timeout > 0.0 {
        bail!(
            "{} against {url}: {status} non-2xx answers, socket errors connect {connect} read {read} write {write} timeout {timeout}; the numbers would mean nothing\n{stdout}",
            body.name
        );
    }
    if requests == 0 {
        bail!("{}: wrk made no request:\n{stdout}", body.name);
    }
    Ok(WrkResult {
        req_per_s: requests as f64 / (duration_us / 1e6),
        p50_us: n[7],
        p99_us: n[8],
    })
}

/// Posts rows `first..first+n` to `/hooks/bench` as JSON arrays of `per_request` rows, from
/// `concurrency` connections. Every answer must be 202. Returns the raw JSON bytes of the rows
/// (each object's text, without the array's brackets and commas).
pub async fn fill(
    addr: SocketAddr,
    first: u64,
    n: u64,
    per_request: u64,
    concurrency: u64,
) -> anyhow::Result<u64> {
    fill_wide(addr, first, n, per_request, concurrency, 10).await
}

/// [`fill`] with rows of `fields` fields ([`wide_row_json`]).
pub async fn fill_wide(
    addr: SocketAddr,
    first: u64,
    n: u64,
    per_request: u64,
    concurrency: u64,
    fields: u32,
) -> anyhow::Result<u64> {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/hooks/bench");
    let requests = n.div_ceil(per_request);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let mut raw = 0u64;
            let mut r = worker;
            while r < requests {
                let start = first + r * per_request;
                let count = per_request.min(first + n - start);
                let body = if fields == 10 {
                    array_json(start, count)
                } else {
                    let rows: Vec<String> = (start..start + count)
                        .map(|i| wide_row_json(i, fields))
                        .collect();
                    format!("[{}]", rows.join(","))
                };
                raw += body.len() as u64 - 2 - (count - 1);
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .context("posting rows")?;
                let status = resp.status();
                if status.as_u16() != 202 {
                    let text = resp.text().await.unwrap_or_default();
                    bail!("filling the queue: {status} {text}");
                }
                r += concurrency;
            }
            Ok(raw)
        });
    }
    let mut raw = 0;
    while let Some(done) = tasks.join_next().await {
        raw += done.context("fill task")??;
    }
    Ok(raw)
}
