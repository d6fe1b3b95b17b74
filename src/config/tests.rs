//! Config loading and validation, as specifications.

use super::*;

/// The example from the intake issue's config contract, verbatim.
const CONTRACT: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 1048576          # request bodies above this get 413

[[pipelines]]
name = "orders"                   # ingest URL: /hooks/orders
allow_ips = ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]   # optional; absent = anyone
queue_capacity = 100000           # rows held at most
schedule = "5m"                   # interval (humantime) or a 6-field cron expression
max_rows_per_run = 300            # rows one drain takes at most

[pipelines.schema]                # optional
on_mismatch = "ignore"            # "ignore": the row is dropped and counted; "reject": the request gets 422
required = ["OrderId"]
allow_extra = false               # a field not listed below is a mismatch
fields = { OrderId = "string", DeliveryDate = "string", Quantity = "integer", Price = "number", Express = "boolean" }

[[pipelines.columns]]             # optional; CSV columns in order (used by the delivery issue)
name = "Order ID"
from = "OrderId"
[[pipelines.columns]]
name = "Requested Delivery Date"
from = "DeliveryDate"

[pipelines.sink]                  # parsed and validated here; used by the delivery issue
kind = "celonis"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "pushCSV"
mode = "DELTA"                    # or "REPLACE"
keys = ["Order ID"]
app_key = "${CELONIS_APP_KEY}"
"#;

fn env() -> HashMap<String, String> {
    HashMap::from([("CELONIS_APP_KEY".to_owned(), "k3y".to_owned())])
}

fn errors_of(text: &str) -> Vec<String> {
    match Config::load(text, &env()) {
        Ok(_) => panic!("config should not load"),
        Err(ConfigErrors(errs)) => errs.iter().map(|e| e.to_string()).collect(),
    }
}

/// A pipeline with a continuous Celonis sink; `pipeline` goes in the pipeline table, `sink`
/// in the sink table.
fn continuous(pipeline: &str, sink: &str) -> String {
    format!(
        r#"
[[pipelines]]
name = "orders"
{pipeline}
[pipelines.sink]
kind = "celonis"
api = "continuous"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
app_key = "k"
{sink}
"#
    )
}

#[test]
fn api_continuous_uploads_one_parquet_file_per_run_and_data_push_stays_the_default() {
    let c = Config::load(&continuous("", "keys = [\"id\"]"), &env()).unwrap();
    let SinkConfig::Celonis(s) = &c.pipelines[0].sink else {
        panic!("a celonis sink");
    };
    assert_eq!(s.api, CelonisApi::Continuous);
    assert_eq!(
        s.file_type,
        FileType::Parquet {
            rows_per_chunk: usize::MAX
        }
    );
    assert_eq!(c.celonis.uploads_per_second, 10);
    let c = Config::load(CONTRACT, &env()).unwrap();
    let SinkConfig::Celonis(s) = &c.pipelines[0].sink else {
        panic!("a celonis sink");
    };
    assert_eq!(s.api, CelonisApi::DataPush);
    let c = Config::load(
        &format!("[celonis]\nuploads_per_second = 3\n{}", continuous("", "")),
        &env(),
    )
    .unwrap();
    assert_eq!(c.celonis.uploads_per_second, 3);
}

#[test]
fn continuous_refuses_what_the_upload_call_cannot_do_naming_each_key() {
    let errors = errors_of(&continuous(
        "",
        r#"file_type = "csv"
mode = "REPLACE"
api_prefix = "/integration"
poll_timeout = "1m"
rows_per_chunk = 10
chunk_bytes = "1MiB""#,
    ));
    for (key, words) in [
        ("pipelines[0].sink.file_type", "Parquet files only"),
        (
            "pipelines[0].sink.mode",
            "REPLACE needs api = \"data-push\"",
        ),
        (
            "pipelines[0].sink.api_prefix",
            "does not apply to api = \"continuous\"",
        ),
        ("pipelines[0].sink.poll_timeout", "no job to poll"),
        ("pipelines[0].sink.rows_per_chunk", "max_rows_per_run"),
        ("pipelines[0].sink.chunk_bytes", "it uploads Parquet files"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(key) && e.contains(words)),
            "{key}: {errors:?}"
        );
    }
    let errors = errors_of(&continuous(
        "",
        "keys = [\"id\"]\ndelete_when = \"row.op == 'delete'\"",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("pipelines[0].sink.delete_when") && e.contains("cannot delete")),
        "{errors:?}"
    );
    let errors = errors_of(&continuous("", "").replace("\"continuous\"", "\"kafka\""));
    assert!(
        errors.iter().any(|e| e.starts_with("pipelines[0].sink.api")
            && e.contains("\"data-push\" or \"continuous\"")),
        "{errors:?}"
    );
}

#[test]
fn a_user_column_named_like_the_order_column_is_an_error_with_keys() {
    let columns = r#"
[[pipelines.columns]]
name = "id"
from = "id"
[[pipelines.columns]]
name = "Weir_Seq"
from = "seq"
"#;
    let errors = errors_of(&continuous(columns, "keys = [\"id\"]"));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("pipelines[0].columns[1].name") && e.contains("order column")),
        "{errors:?}"
    );
    let schema = "[pipelines.schema]\nfields = { id = \"string\", weir_seq = \"integer\" }";
    let errors = errors_of(&continuous(schema, "keys = [\"id\"]"));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("pipelines[0].schema.fields.weir_seq")),
        "{errors:?}"
    );
    // Without keys weir adds no order column, so the name is free.
    Config::load(&continuous(columns, ""), &env()).unwrap();
}

#[test]
fn schedule_continuous_takes_max_wait_and_other_schedules_refuse_it() {
    let c = Config::load(&continuous("schedule = \"continuous\"", ""), &env()).unwrap();
    assert_eq!(c.pipelines[0].schedule, Schedule::Continuous);
    assert_eq!(c.pipelines[0].max_wait, DEFAULT_MAX_WAIT);
    let c = Config::load(
        &continuous("schedule = \"continuous\"\nmax_wait = \"5s\"", ""),
        &env(),
    )
    .unwrap();
    assert_eq!(c.pipelines[0].max_wait, Duration::from_secs(5));
    let errors = errors_of(&continuous("schedule = \"5m\"\nmax_wait = \"5s\"", ""));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("pipelines[0].max_wait")
                && e.contains("schedule = \"continuous\"")),
        "{errors:?}"
    );
    let errors = errors_of(&continuous(
        "schedule = \"continuous\"\nmax_wait = \"10ms\"",
        "",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("pipelines[0].max_wait") && e.contains("at least 100ms")),
        "{errors:?}"
    );
}

#[test]
fn the_contract_example_loads_with_every_setting_resolved() {
    let c = Config::load(CONTRACT, &env()).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.max_body_bytes, 1_048_576);
    let p = &c.pipelines[0];
    assert_eq!(p.name, "orders");
    assert_eq!(p.allow_ips.as_ref().unwrap().len(), 3);
    assert_eq!(p.queue_capacity, 100_000);
    assert_eq!(p.schedule, Schedule::Every(Duration::from_secs(300)));
    assert_eq!(p.max_rows_per_run, 300);
    let schema = p.schema.as_ref().unwrap();
    assert_eq!(schema.on_mismatch, OnMismatch::Ignore);
    assert!(!schema.allow_extra);
    let names: Vec<_> = schema.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["OrderId", "DeliveryDate", "Quantity", "Price", "Express"],
        "config order kept"
    );
    assert_eq!(schema.field_type("Quantity"), Some(FieldType::Integer));
    assert_eq!(
        p.columns[1],
        Column {
            name: "Requested Delivery Date".into(),
            source: ColumnSource::Field("DeliveryDate".into()),
            typing: Typing::default(),
            input: Default::default(),
        }
    );
    let SinkConfig::Celonis(sink) = &p.sink else {
        panic!("a celonis sink")
    };
    assert_eq!(sink.base_url.as_str(), "https://myteam.eu-1.celonis.cloud/");
    assert_eq!(sink.mode, PushMode::Delta);
    assert_eq!(sink.keys, ["Order ID"]);
    match &sink.auth {
        CelonisAuth::AppKey(k) => assert_eq!(k.expose(), "k3y"),
        other => panic!("unexpected auth {other:?}"),
    }
}

#[test]
fn a_missing_environment_variable_is_named_with_its_key() {
    let errs = match Config::load(CONTRACT, &HashMap::new()) {
        Err(ConfigErrors(e)) => e,
        Ok(_) => panic!("should fail"),
    };
    assert_eq!(
        errs[0].to_string(),
        "pipelines[0].sink.app_key: environment variable CELONIS_APP_KEY is not set"
    );
}

#[test]
fn a_bad_cidr_names_its_index() {
    let text = CONTRACT.replace("\"10.0.0.0/8\"]", "\"10.0.0.0/33\"]");
    assert_eq!(
        errors_of(&text),
        ["pipelines[0].allow_ips[2]: \"10.0.0.0/33\" is not a CIDR"]
    );
}

#[test]
fn unknown_keys_are_errors_so_typos_do_not_disable_anything() {
    let text = CONTRACT.replace("allow_extra = false", "alow_extra = false");
    let errs = errors_of(&text);
    assert!(errs[0].contains("unknown field `alow_extra`"), "{errs:?}");
}

#[test]
fn every_mistake_is_reported_at_once() {
    let text = CONTRACT
        .replace("queue_capacity = 100000", "queue_capacity = 0")
        .replace("schedule = \"5m\"", "schedule = \"every tuesday\"")
        .replace("from = \"DeliveryDate\"", "from = \"DeliveryDat\"")
        .replace("mode = \"DELTA\"", "mode = \"UPSERT\"");
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs[0].starts_with("pipelines[0].queue_capacity: 0 must be greater than 0"));
    assert!(errs[1].starts_with("pipelines[0].schedule: \"every tuesday\" is neither"));
    assert!(errs[2].starts_with("pipelines[0].columns[1].from: \"DeliveryDat\" is not a field"));
    assert!(errs[3].starts_with("pipelines[0].sink.mode: \"UPSERT\""));
}

#[test]
fn pipeline_names_are_checked_and_unique() {
    let mut text = CONTRACT.to_owned();
    text.push_str(
        &CONTRACT[CONTRACT.find("[[pipelines]]").unwrap()..].replace("\"orders\"", "\"or ders\""),
    );
    text.push_str(&CONTRACT[CONTRACT.find("[[pipelines]]").unwrap()..]);
    let errs = errors_of(&text);
    assert!(
        errs.contains(
            &"pipelines[1].name: \"or ders\" may only contain letters, digits, '_' and '-'"
                .to_owned()
        ),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"pipelines[2].name: \"orders\" is used by an earlier pipeline".to_owned()),
        "{errs:?}"
    );
}

#[test]
fn cron_schedules_need_six_fields() {
    let ok = CONTRACT.replace("schedule = \"5m\"", "schedule = \"0 */5 * * * *\"");
    let c = Config::load(&ok, &env()).unwrap();
    assert_eq!(
        c.pipelines[0].schedule,
        Schedule::Cron("0 */5 * * * *".into())
    );
    let bad = CONTRACT.replace("schedule = \"5m\"", "schedule = \"0 99 * * * *\"");
    assert_eq!(
        errors_of(&bad),
        ["pipelines[0].schedule: \"0 99 * * * *\" is not a valid cron expression"]
    );
}

#[test]
fn keys_must_name_csv_columns() {
    let text = CONTRACT.replace("keys = [\"Order ID\"]", "keys = [\"OrderId\"]");
    assert_eq!(
        errors_of(&text),
        ["pipelines[0].sink.keys[0]: \"OrderId\" is not one of the CSV columns"]
    );
}

#[test]
fn team_and_cluster_build_the_url() {
    let text = CONTRACT.replace(
        "url = \"https://myteam.eu-1.celonis.cloud\"",
        "team = \"acme\"\ncluster = \"us-2\"\napi_prefix = \"/data-ingestion\"",
    );
    let c = Config::load(&text, &env()).unwrap();
    let SinkConfig::Celonis(sink) = &c.pipelines[0].sink else {
        panic!("a celonis sink")
    };
    assert_eq!(sink.base_url.as_str(), "https://acme.us-2.celonis.cloud/");
    assert_eq!(sink.api_prefix, "/data-ingestion");
}

#[test]
fn disk_queues_default_their_directory_under_data_dir() {
    let text = format!(
        "data_dir = \"/var/lib/weir\"\n{}",
        CONTRACT.replace(
            "max_rows_per_run = 300",
            "max_rows_per_run = 300\nqueue = { kind = \"disk\", max_bytes = \"1GiB\" }",
        )
    );
    let c = Config::load(&text, &env()).unwrap();
    assert_eq!(
        c.pipelines[0].queue,
        QueueConfig::Disk {
            dir: PathBuf::from("/var/lib/weir/orders"),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            retention: Duration::from_secs(7 * 86_400),
        }
    );
}

#[test]
fn csv_options_must_be_single_characters() {
    let text =
        format!("{CONTRACT}\n[pipelines.sink.csv]\nseparator = \";;\"\nline_ending = \"\\r\\n\"\n");
    assert_eq!(
        errors_of(&text),
        ["pipelines[0].sink.csv.separator: \";;\" must be a single ASCII character"]
    );
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = Config::load(CONTRACT, &env()).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("k3y"), "{debug}");
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(parse_size("1048576"), Some(1_048_576));
    assert_eq!(parse_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_size("1 GB"), Some(1_000_000_000));
    assert_eq!(parse_size("12 parsecs"), None);
    assert_eq!(parse_size("99999999999999TiB"), None);
}

/// A pipeline with an HTTP sink; `sink` goes inside `[pipelines.sink]`.
fn http_pipeline(pipeline: &str, sink: &str) -> String {
    format!(
        r#"
[[pipelines]]
name = "events"
{pipeline}

[pipelines.sink]
kind = "http"
{sink}
"#
    )
}

#[test]
fn bad_expressions_are_reported_with_their_key_paths() {
    let text = http_pipeline(
        r#"filter = "row.EntityName == "
[[pipelines.columns]]
name = "a"
expr = "rwo.a"
[[pipelines.columns]]
name = "b"
from = "b"
expr = "row.b""#,
        r#"base_url = "https://api.example.com"
path = { expr = "'/v1/' + pipeline.name +" }
headers = { "X-Count" = { expr = "size(rows" } }
body = { expr = "rows.map(r, r.x" }
success = "response.status = 200""#,
    );
    let errors = errors_of(&text);
    let paths: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "pipelines[0].columns[0].expr",
            "pipelines[0].columns[1].expr",
            "pipelines[0].filter",
            "pipelines[0].sink.path.expr",
            "pipelines[0].sink.headers.X-Count.expr",
            "pipelines[0].sink.body.expr",
            "pipelines[0].sink.success",
        ],
        "{errors:#?}"
    );
    assert!(errors[0].contains("\"rwo\""), "{}", errors[0]);
    assert!(errors[2].contains("not a CEL expression"), "{}", errors[2]);
}

#[test]
fn a_row_variable_only_exists_for_requests_per_row() {
    let per_run = http_pipeline(
        "",
        r#"base_url = "https://api.example.com"
path = { expr = "'/items/' + row.id" }"#,
    );
    assert_eq!(errors_of(&per_run).len(), 1);
    assert!(errors_of(&per_run)[0].starts_with("pipelines[0].sink.path.expr: uses \"row\""));
    let per_row = format!("{per_run}\nbatch_per = \"row\"\nconcurrency = 2");
    let c = Config::load(&per_row, &env()).unwrap();
    let SinkConfig::Http(h) = &c.pipelines[0].sink else {
        panic!("an http sink")
    };
    assert_eq!((h.batch_per, h.concurrency), (BatchPer::Row, 2));
}

#[test]
fn the_http_sink_resolves_every_key_and_defaults() {
    let text = http_pipeline(
        r#"filter = "row.EntityName == 'Customer groups'""#,
        r#"base_url = "https://api.example.com"
method = "put"
path = { expr = "'/v1/tables/' + pipeline.name" }
query = { environment = "production", count = { expr = "string(size(rows))" } }
headers = { "X-Source" = "weir" }
body = "ndjson"
success = "response.status == 200 && response.body.result == 'ok'"
auth = { kind = "api_key", location = "query", name = "key", value = "${CELONIS_APP_KEY}" }"#,
    );
    let c = Config::load(&text, &env()).unwrap();
    let p = &c.pipelines[0];
    assert_eq!(
        p.filter.as_ref().unwrap().source(),
        "row.EntityName == 'Customer groups'"
    );
    let SinkConfig::Http(h) = &p.sink else {
        panic!("an http sink")
    };
    assert_eq!(h.method, reqwest::Method::PUT);
    assert_eq!(h.base_url, Text::Literal("https://api.example.com".into()));
    assert!(matches!(&h.path, Text::Expr(e) if e.source() == "'/v1/tables/' + pipeline.name"));
    let names: Vec<&str> = h.query.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["environment", "count"]);
    assert_eq!(h.body, BodyMode::Ndjson);
    assert_eq!(h.batch_per, BatchPer::Run);
    assert!(h.success.is_some());
    assert_eq!(
        h.auth,
        HttpAuth::ApiKey {
            location: ApiKeyLocation::Query,
            name: "key".into(),
            value: Secret::new("k3y"),
        }
    );
    assert!(!format!("{c:?}").contains("k3y"));
    assert!(!describe(&c).contains("k3y"), "{}", describe(&c));
}

#[test]
fn celonis_oauth_defaults_its_token_url_and_scope_and_hides_the_secret() {
    let text = CONTRACT.replace(
        r#"app_key = "${CELONIS_APP_KEY}""#,
        r#"auth = { kind = "oauth2", client_id = "weir", client_secret = "${CELONIS_APP_KEY}" }"#,
    );
    let c = Config::load(&text, &env()).unwrap();
    let SinkConfig::Celonis(s) = &c.pipelines[0].sink else {
        panic!("a celonis sink")
    };
    let CelonisAuth::OAuth2(o) = &s.auth else {
        panic!("oauth2 auth")
    };
    assert_eq!(
        o.token_url.as_str(),
        "https://myteam.eu-1.celonis.cloud/oauth2/token"
    );
    assert_eq!(o.scopes, ["integration.data-pools:data_push"]);
    assert_eq!(o.client_auth, ClientAuth::Basic);
    let shown = describe(&c);
    assert!(shown.contains("oauth2 client weir secret ***"), "{shown}");
    assert!(!shown.contains("k3y"));
}

#[test]
fn auth_mistakes_name_their_keys() {
    let text = http_pipeline(
        "",
        r#"base_url = "not a url"
body = "xml"
target_name = "t"
auth = { kind = "oauth2", client_id = "c", client_auth = "jwt", token = "t" }"#,
    );
    assert_eq!(
        errors_of(&text),
        [
            "pipelines[0].sink.target_name: only applies to kind = \"celonis\"",
            "pipelines[0].sink.base_url: \"not a url\" is not an http(s) URL",
            "pipelines[0].sink.body: \"xml\" is not \"json_array\", \"ndjson\", \"csv\" or { expr = \"…\" }",
            "pipelines[0].sink.auth.token: does not apply to kind = \"oauth2\"",
            "pipelines[0].sink.auth.token_url: is required",
            "pipelines[0].sink.auth.client_secret: is required",
            "pipelines[0].sink.auth.client_auth: \"jwt\" is not \"basic\" or \"post\"",
        ]
    );
}

#[test]
fn the_emulator_table_takes_oauth_clients() {
    let text = format!(
        "{CONTRACT}\n[emulator]\noauth_clients = {{ weir = \"s3cret\" }}\ntoken_ttl = \"15m\"\n"
    );
    let c = Config::load(&text, &env()).unwrap();
    let e = c.emulator.unwrap();
    assert_eq!(
        e.oauth_clients,
        [("weir".to_owned(), Secret::new("s3cret"))]
    );
    assert_eq!(e.token_ttl, Duration::from_secs(900));
}

#[test]
fn the_emulator_pools_are_uuids_and_check_lists_them() {
    let text =
        format!("{CONTRACT}\n[emulator]\npools = [\"8F2C1F9E-0000-4000-8000-000000000001\"]\n");
    let c = Config::load(&text, &env()).unwrap();
    let pools = c.emulator.as_ref().and_then(|e| e.pools.clone());
    assert_eq!(
        pools,
        Some(vec!["8f2c1f9e-0000-4000-8000-000000000001".to_owned()])
    );
    let shown = describe(&c);
    assert!(
        shown.contains("emulator pools: [8f2c1f9e-0000-4000-8000-000000000001]"),
        "{shown}"
    );
    let without = Config::load(&format!("{CONTRACT}\n[emulator]\n"), &env()).unwrap();
    assert_eq!(without.emulator.and_then(|e| e.pools), None);
    assert_eq!(
        errors_of(&format!("{CONTRACT}\n[emulator]\npools = [\"pool-1\"]\n")),
        ["emulator.pools[0]: \"pool-1\" is not a data pool id (a UUID)"]
    );
}

#[test]
fn a_memory_queue_is_bounded_to_256_mib_by_default_and_check_says_so() {
    let c = Config::load(CONTRACT, &env()).unwrap();
    assert_eq!(
        c.pipelines[0].queue,
        QueueConfig::Memory {
            max_bytes: 256 << 20
        }
    );
    let shown = describe(&c);
    assert!(
        shown.contains("queue: memory, 100000 rows, 268435456 bytes"),
        "{shown}"
    );
    let set = CONTRACT.replace(
        "max_rows_per_run = 300",
        "max_rows_per_run = 300\nqueue = { kind = \"memory\", max_bytes = \"1MiB\" }",
    );
    let c = Config::load(&set, &env()).unwrap();
    assert_eq!(
        c.pipelines[0].queue,
        QueueConfig::Memory { max_bytes: 1 << 20 }
    );
}

#[test]
fn a_run_is_bounded_to_64_mib_of_row_data_unless_max_bytes_per_run_says_otherwise() {
    let c = Config::load(CONTRACT, &env()).unwrap();
    assert_eq!(c.pipelines[0].max_bytes_per_run, 64 << 20);
    assert!(
        describe(&c).contains("at most 300 rows and 67108864 bytes per run"),
        "{}",
        describe(&c)
    );
    let set = CONTRACT.replace(
        "max_rows_per_run = 300",
        "max_rows_per_run = 300\nmax_bytes_per_run = \"8MiB\"",
    );
    assert_eq!(
        Config::load(&set, &env()).unwrap().pipelines[0].max_bytes_per_run,
        8 << 20
    );
    let bad = CONTRACT.replace(
        "max_rows_per_run = 300",
        "max_rows_per_run = 300\nmax_bytes_per_run = 0",
    );
    assert_eq!(
        errors_of(&bad),
        ["pipelines[0].max_bytes_per_run: 0 is not a positive size like 1048576 or \"64MiB\""]
    );
}

#[test]
fn two_pipelines_that_share_a_spool_or_state_directory_are_rejected_naming_both_keys() {
    let second = |name: &str, queue: &str| {
        CONTRACT[CONTRACT.find("[[pipelines]]").unwrap()..]
            .replace("\"orders\"", &format!("\"{name}\""))
            .replace(
                "max_rows_per_run = 300",
                &format!("max_rows_per_run = 300\n{queue}"),
            )
    };
    let disk = |dir: &str| format!("queue = {{ kind = \"disk\", dir = \"{dir}\" }}");
    let text = format!(
        "data_dir = \"/var/lib/weir\"\n{}{}",
        CONTRACT.replace(
            "max_rows_per_run = 300",
            &format!("max_rows_per_run = 300\n{}", disk("/srv/spool")),
        ),
        second("invoices", &disk("/srv/./other/../spool"))
    );
    assert_eq!(
        errors_of(&text),
        [
            "pipelines[1].queue.dir: resolves to /srv/./other/../spool, the spool or state directory of pipelines[0].queue.dir; each pipeline needs its own directory"
        ]
    );
    // A disk spool placed in another pipeline's default state directory.
    let text = format!(
        "data_dir = \"/var/lib/weir\"\n{}{}",
        CONTRACT,
        second("invoices", &disk("/var/lib/weir/orders"))
    );
    assert_eq!(
        errors_of(&text),
        [
            "pipelines[1].queue.dir: resolves to /var/lib/weir/orders, the spool or state directory of pipelines[0].name; each pipeline needs its own directory"
        ]
    );
    let apart = format!(
        "data_dir = \"/var/lib/weir\"\n{}{}",
        CONTRACT,
        second("invoices", &disk("/srv/invoices"))
    );
    assert!(Config::load(&apart, &env()).is_ok());
}

#[test]
fn a_short_retry_max_interval_alone_lowers_the_default_first_retry() {
    let text = CONTRACT.replace(
        "max_rows_per_run = 300",
        "max_rows_per_run = 300\nretry_max_interval = \"1s\"",
    );
    let c = Config::load(&text, &env()).unwrap();
    assert_eq!(c.pipelines[0].retry_max_interval, Duration::from_secs(1));
    assert_eq!(c.pipelines[0].retry_initial, Duration::from_secs(1));
    // A first retry the user wrote himself is still checked against the cap.
    let text = CONTRACT.replace(
        "max_rows_per_run = 300",
        "max_rows_per_run = 300\nretry_initial = \"2s\"\nretry_max_interval = \"1s\"",
    );
    assert_eq!(
        errors_of(&text),
        ["pipelines[0].retry_initial: must not be longer than retry_max_interval"]
    );
}

#[test]
fn sink_wide_number_and_date_conventions_point_to_the_column_options() {
    let text = format!(
        "{CONTRACT}\n[pipelines.sink.csv]\nseparator = \";\"\ndecimal_separator = \",\"\ndate_format = \"dd.MM.yyyy\"\n"
    );
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0]
            .starts_with("pipelines[0].sink.csv.decimal_separator: weir writes numbers with \".\"")
            && errs[0].contains("decimal_separator on the [[pipelines.columns]] entry"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("pipelines[0].sink.csv.date_format:")
            && errs[1].contains("with format on the [[pipelines.columns]] entry"),
        "{errs:?}"
    );
    let text = format!("{CONTRACT}\n[pipelines.sink.csv]\nseparator = \";\"\n");
    assert!(Config::load(&text, &env()).is_ok());
}

#[test]
fn a_column_type_length_or_decimals_that_cannot_apply_names_its_key() {
    let text = r#"
[[pipelines]]
name = "orders"
[pipelines.schema]
fields = { Quantity = "integer", Note = "string" }
[[pipelines.columns]]
name = "Quantity"
from = "Quantity"
type = "BOOLEAN"
[[pipelines.columns]]
name = "Note"
from = "Note"
length = 32001
[[pipelines.columns]]
name = "N2"
from = "Quantity"
type = "DATE"
[[pipelines.columns]]
name = "N3"
from = "Note"
decimals = 2
[pipelines.sink]
kind = "celonis"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "p1"
target_name = "orders"
app_key = "k"
fallback_varchar_length = 0
"#;
    let errs = errors_of(text);
    let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
    assert!(has("pipelines[0].columns[0].type"), "{errs:?}");
    assert!(has("pipelines[0].columns[1].length"), "{errs:?}");
    assert!(has("pipelines[0].columns[2].type"), "{errs:?}");
    assert!(has("pipelines[0].columns[3].decimals"), "{errs:?}");
    assert!(has("pipelines[0].sink.fallback_varchar_length"), "{errs:?}");
}

#[test]
fn check_output_shows_each_columns_type_and_length() {
    let text = r#"
[[pipelines]]
name = "orders"
[pipelines.schema]
fields = { Quantity = "integer", Note = "string", Price = "number" }
[[pipelines.columns]]
name = "Quantity"
from = "Quantity"
[[pipelines.columns]]
name = "Note"
from = "Note"
[[pipelines.columns]]
name = "Price"
from = "Price"
decimals = 2
[pipelines.sink]
kind = "celonis"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "p1"
target_name = "orders"
app_key = "k"
"#;
    let config = Config::load(text, &env()).unwrap();
    let out = describe::describe(&config);
    assert!(
        out.contains(
            r#"columns: "Quantity" <- Quantity INTEGER, "Note" <- Note STRING(255), "Price" <- Price FLOAT(2 decimals)"#
        ),
        "{out}"
    );
}

#[test]
fn date_formats_and_number_conventions_are_checked_against_their_column() {
    let columns = r#"
[[pipelines.columns]]
name = "D"
from = "D"
type = "DATE"
format = "dd.MM.yyyy Q"
[[pipelines.columns]]
name = "S"
from = "S"
format = "dd.MM.yyyy"
[[pipelines.columns]]
name = "N"
from = "N"
type = "INTEGER"
decimal_separator = ","
[[pipelines.columns]]
name = "E"
from = "E"
type = "DATE"
[[pipelines.columns]]
name = "T"
from = "T"
type = "TIME"
format = "dd.MM.yyyy"
"#;
    let text = format!(
        "[[pipelines]]\nname = \"orders\"\n[pipelines.schema]\nfields = {{ D = \"string\", S = \"string\", N = \"string\", E = \"integer\", T = \"string\" }}\n{columns}[pipelines.sink]\nkind = \"celonis\"\nurl = \"https://myteam.eu-1.celonis.cloud\"\ndata_pool_id = \"p1\"\ntarget_name = \"orders\"\napp_key = \"k\"\n"
    );
    let errs = errors_of(&text);
    let has = |prefix: &str, part: &str| {
        errs.iter()
            .any(|e| e.starts_with(prefix) && e.contains(part))
    };
    assert!(
        has("pipelines[0].columns[0].format", "letter Q"),
        "{errs:?}"
    );
    assert!(
        has("pipelines[0].columns[1].format", "only applies to DATE"),
        "{errs:?}"
    );
    assert!(
        has(
            "pipelines[0].columns[2].decimal_separator",
            "only applies to FLOAT"
        ),
        "{errs:?}"
    );
    assert!(has("pipelines[0].columns[3].type", "epoch_ms"), "{errs:?}");
    assert!(has("pipelines[0].columns[4].format", "no hour"), "{errs:?}");
    assert_eq!(errs.len(), 5, "{errs:?}");

    let good = text
        .replace("format = \"dd.MM.yyyy Q\"", "format = \"dd.MM.yyyy\"")
        .replace(
            "format = \"dd.MM.yyyy\"\n[[pipelines.columns]]\nname = \"N\"",
            "[[pipelines.columns]]\nname = \"N\"",
        )
        .replace(
            "type = \"INTEGER\"\ndecimal_separator",
            "type = \"FLOAT\"\ndecimal_separator",
        )
        .replace(
            "name = \"E\"\nfrom = \"E\"\ntype = \"DATE\"",
            "name = \"E\"\nfrom = \"E\"\ntype = \"DATE\"\nformat = \"epoch_s\"",
        )
        .replace(
            "type = \"TIME\"\nformat = \"dd.MM.yyyy\"",
            "type = \"TIME\"\nformat = \"HH:mm\"",
        );
    let config = Config::load(&good, &env()).unwrap();
    let out = describe::describe(&config);
    assert!(
        out.contains(r#""D" <- D DATE format "dd.MM.yyyy""#)
            && out.contains(r#""N" <- N FLOAT(0 decimals) decimal_separator ",""#)
            && out.contains(r#""E" <- E DATE format "epoch_s""#),
        "{out}"
    );
}

fn with_response(response: &str) -> String {
    format!(
        r#"
[[pipelines]]
name = "orders"
response = {response}
[pipelines.sink]
kind = "http"
base_url = "http://127.0.0.1:9"
"#
    )
}

#[test]
fn a_pipeline_answers_202_with_the_counts_unless_its_response_says_otherwise() {
    let c = Config::load(&with_response("{ status = 204 }"), &env()).unwrap();
    assert_eq!(c.pipelines[0].response.status, 204);
    assert_eq!(c.pipelines[0].response.body, None);
    let c = Config::load(
        &with_response(r#"{ status = 200, body = '{"ok": true}' }"#),
        &env(),
    )
    .unwrap();
    let r = &c.pipelines[0].response;
    assert_eq!(
        (r.status, r.body.as_deref(), r.content_type.as_str()),
        (200, Some(r#"{"ok": true}"#), "application/json")
    );
    let c = Config::load(&CONTRACT.replace("k3y", "x"), &env()).unwrap();
    assert_eq!(c.pipelines[0].response, SuccessResponse::default());
    assert_eq!(c.pipelines[0].response.status, 202);
}

#[test]
fn a_response_status_outside_200_201_202_204_or_a_body_with_204_is_refused_by_key() {
    assert_eq!(
        errors_of(&with_response("{ status = 302 }")),
        ["pipelines[0].response.status: 302 is not one of 200, 201, 202 or 204"]
    );
    assert_eq!(
        errors_of(&with_response("{ status = 204, body = 'ok' }")),
        [
            "pipelines[0].response.body: a 204 No Content answer has no body: remove body or use another status"
        ]
    );
    let errors = errors_of(&with_response(
        r#"{ status = 500, content_type = "text/plain" }"#,
    ));
    assert_eq!(errors.len(), 2, "every mistake at once: {errors:?}");
    assert!(errors[0].starts_with("pipelines[0].response.status: "));
    assert!(errors[1].starts_with("pipelines[0].response.content_type: only applies with body"));
    assert!(
        errors_of(&with_response("{ state = 204 }"))[0].contains("unknown field `state`"),
        "unknown keys are errors"
    );
}

#[test]
fn wait_timeout_defaults_to_30s_and_is_bounded_at_five_minutes() {
    let c = Config::load(&with_response("{ status = 202 }"), &env()).unwrap();
    assert_eq!(c.pipelines[0].wait_timeout, Duration::from_secs(30));
    assert!(!c.pipelines[0].allow_sync);
    let text = with_response("{ status = 202 }").replace(
        "response =",
        "wait_timeout = \"5m\"\nallow_sync = true\nresponse =",
    );
    let c = Config::load(&text, &env()).unwrap();
    assert_eq!(c.pipelines[0].wait_timeout, Duration::from_secs(300));
    assert!(c.pipelines[0].allow_sync);
    for bad in ["\"6m\"", "\"0s\""] {
        let text = with_response("{ status = 202 }")
            .replace("response =", &format!("wait_timeout = {bad}\nresponse ="));
        assert_eq!(
            errors_of(&text),
            ["pipelines[0].wait_timeout: must be longer than 0s and at most 5m"],
            "{bad}"
        );
    }
}

#[test]
fn file_type_and_rows_per_chunk_are_checked_and_name_their_key() {
    let sink = |extra: &str| {
        format!(
            r#"
[[pipelines]]
name = "orders"
[pipelines.sink]
kind = "celonis"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "p1"
target_name = "orders"
app_key = "k"
{extra}
"#
        )
    };
    let errs = errors_of(&sink("file_type = \"xlsx\""));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("pipelines[0].sink.file_type")),
        "{errs:?}"
    );
    let errs = errors_of(&sink("rows_per_chunk = 10"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("pipelines[0].sink.rows_per_chunk")),
        "{errs:?}"
    );
    let errs = errors_of(&sink("file_type = \"parquet\"\nrows_per_chunk = 0"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("pipelines[0].sink.rows_per_chunk")),
        "{errs:?}"
    );
    let errs = errors_of(&sink("file_type = \"parquet\"\nchunk_bytes = \"1MiB\""));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("pipelines[0].sink.chunk_bytes")),
        "{errs:?}"
    );
}

#[test]
fn check_output_shows_how_a_keyed_table_treats_duplicates_and_deletes() {
    let text = r#"
[[pipelines]]
name = "orders"
[pipelines.sink]
kind = "celonis"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "p1"
target_name = "orders"
app_key = "k"
keys = ["OrderId"]
dedupe = "server"
delete_when = "row.op == 'delete'"
upsert_strategy = "UPSERT_WITH_UNCHANGED_METADATA"
"#;
    let config = Config::load(text, &env()).unwrap();
    let out = describe::describe(&config);
    assert!(
        out.contains(
            "  per key: latest row of a key wins (dedupe server: every row with weir_seq, \
             duplicateRemovalColumn=weir_seq), deleted when row.op == 'delete', upsert strategy \
             UPSERT_WITH_UNCHANGED_METADATA\n"
        ),
        "{out}"
    );
}

/// A pipeline with a schema, columns and `rules` as its pseudonymise rules.
fn pseudonymised(rules: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[[pipelines]]
name = "orders"

[pipelines.schema]
fields = {{ OrderId = "string", "customer.email" = "string", EmployeeId = "integer", Name = "string" }}

[[pipelines.columns]]
name = "Order ID"
from = "OrderId"
[[pipelines.columns]]
name = "Email"
from = "customer.email"
[[pipelines.columns]]
name = "Employee"
from = "EmployeeId"
[[pipelines.columns]]
name = "Name"
from = "Name"
length = 3

{rules}

[pipelines.sink]
kind = "celonis"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
keys = ["Order ID"]
app_key = "k"
"#
    )
}

#[test]
fn pseudonymise_rules_load_with_their_methods_and_the_key_from_the_environment() {
    let text = pseudonymised(
        r#"
[[pipelines.pseudonymise]]
fields = ["customer.email", "OrderId"]
key = "${PSEUDO_KEY}"
[[pipelines.pseudonymise]]
fields = ["Name"]
method = "drop"
"#,
    );
    let env = HashMap::from([("PSEUDO_KEY".to_owned(), "0123456789abcdef-key".to_owned())]);
    let c = Config::load(&text, &env).unwrap();
    let p = &c.pipelines[0].pseudonymise;
    let fields: Vec<(&str, &str)> = p.fields().iter().map(|(f, m)| (*f, m.name())).collect();
    assert_eq!(
        fields,
        vec![
            ("Name", "drop"),
            ("OrderId", "hmac-sha256"),
            ("customer.email", "hmac-sha256")
        ]
    );
    // A missing key variable names its key.
    let e = Config::load(&text, &HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pipelines[0].pseudonymise[0].key"), "{e}");
}

#[test]
fn pseudonymise_mistakes_name_their_key() {
    for (rules, key, needle) in [
        (
            "[pipelines.pseudonymise]\nfields = [\"customer.email\"]",
            "pipelines[0].pseudonymise.key",
            "is required for hmac-sha256",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"customer.email\"]\nkey = \"short\"",
            "pipelines[0].pseudonymise.key",
            "at least 16 characters",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"customer.email\"]\nmethod = \"sha256\"",
            "pipelines[0].pseudonymise.salt",
            "is required for sha256",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"customer.email\"]\nmethod = \"rot13\"",
            "pipelines[0].pseudonymise.method",
            "\"rot13\" is not a method",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"customer.email\"]\nmethod = \"mask\"\nkey = \"0123456789abcdef\"",
            "pipelines[0].pseudonymise.key",
            "only applies to method = \"hmac-sha256\"",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"customer.phone\"]\nmethod = \"mask\"",
            "pipelines[0].pseudonymise.fields",
            "\"customer.phone\" is not a field of the schema or any column's from",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"EmployeeId\"]\nmethod = \"mask\"",
            "pipelines[0].pseudonymise.fields",
            "feeds column \"Employee\" of type INTEGER",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"Name\"]\nmethod = \"mask\"",
            "pipelines[0].pseudonymise.fields",
            "longer than column \"Name\" (length 3)",
        ),
        (
            "[pipelines.pseudonymise]\nfields = [\"OrderId\"]\nmethod = \"mask\"",
            "pipelines[0].pseudonymise.fields",
            "feeds the sink's key \"Order ID\"",
        ),
        (
            "[[pipelines.pseudonymise]]\nfields = [\"Name\"]\nmethod = \"drop\"\n[[pipelines.pseudonymise]]\nfields = [\"Name\"]\nmethod = \"drop\"",
            "pipelines[0].pseudonymise",
            "field \"Name\" is given twice",
        ),
    ] {
        let errors = errors_of(&pseudonymised(rules));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(key) && e.contains(needle)),
            "{rules}: {errors:?}"
        );
    }
}

#[test]
fn a_global_proxy_fills_every_sink_without_its_own_and_mistakes_name_their_key() {
    let text = CONTRACT.replace(
        "[[pipelines]]",
        "[proxy]\nurl = \"http://proxy.corp:3128\"\nusername = \"weir\"\npassword = \"pw\"\nno_proxy = [\"*.internal\", \"10.0.0.0/8\"]\n\n[[pipelines]]",
    );
    let c = Config::load(&text, &env()).unwrap();
    let SinkConfig::Celonis(s) = &c.pipelines[0].sink else {
        panic!("celonis sink")
    };
    let p = s.proxy.as_ref().expect("the global proxy");
    assert_eq!(p.shown(), "http://proxy.corp:3128");
    assert_eq!(p.no_proxy, vec![".internal", "10.0.0.0/8"]);
    assert_eq!(p.password.as_ref().map(|s| s.expose()), Some("pw"));
    // The sink's own proxy wins over [proxy].
    let own = text.replace(
        "app_key = \"${CELONIS_APP_KEY}\"",
        "app_key = \"${CELONIS_APP_KEY}\"\nproxy = { url = \"http://other:8080\" }",
    );
    let c = Config::load(&own, &env()).unwrap();
    let SinkConfig::Celonis(s) = &c.pipelines[0].sink else {
        panic!("celonis sink")
    };
    assert_eq!(s.proxy.as_ref().unwrap().shown(), "http://other:8080");

    for (proxy, key, needle) in [
        (
            "url = \"proxy:3128\"",
            "proxy.url",
            "is not an http(s) proxy URL",
        ),
        (
            "url = \"http://u:p@proxy:3128\"",
            "proxy.url",
            "holds credentials",
        ),
        (
            "url = \"http://proxy:3128\"\npassword = \"pw\"",
            "proxy.password",
            "needs username",
        ),
        (
            "url = \"http://proxy:3128\"\nno_proxy = [\"a*b\"]",
            "proxy.no_proxy[0]",
            "is not a host pattern",
        ),
    ] {
        let text = CONTRACT.replace(
            "[[pipelines]]",
            &format!("[proxy]\n{proxy}\n\n[[pipelines]]"),
        );
        let errors = errors_of(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(key) && e.contains(needle)),
            "{proxy}: {errors:?}"
        );
        assert!(!errors.iter().any(|e| e.contains(":p@")), "{errors:?}");
    }
}

#[test]
fn pipelines_sharing_a_hook_are_checked_by_key() {
    let pipeline = |name: &str, extra: &str| {
        format!(
            "[[pipelines]]\nname = \"{name}\"\n{extra}\n[pipelines.sink]\nkind = \"celonis\"\nurl = \"https://t.eu-1.celonis.cloud\"\ndata_pool_id = \"8f2c1f9e-0000-4000-8000-000000000001\"\ntarget_name = \"{name}\"\napp_key = \"k\"\n"
        )
    };
    let ok = format!(
        "{}{}",
        pipeline(
            "a",
            "hook = \"finops\"\nunrouted = \"reject\"\nrate_limit = \"10/s\""
        ),
        pipeline("b", "hook = \"finops\"\nunrouted = \"reject\"")
    );
    let c = Config::load(&ok, &HashMap::new()).unwrap();
    assert_eq!(c.pipelines[1].hook, "finops");
    assert!(c.pipelines[1].unrouted_reject);
    for (text, key, needle) in [
        (
            format!(
                "{}{}",
                pipeline("a", "hook = \"finops\""),
                pipeline("b", "hook = \"finops\"\nrate_limit = \"10/s\"")
            ),
            "pipelines[1].rate_limit",
            "shares hook \"finops\" with a, whose rate_limit applies to the hook",
        ),
        (
            format!(
                "{}{}",
                pipeline("a", "hook = \"finops\"\nunrouted = \"reject\""),
                pipeline("b", "hook = \"finops\"")
            ),
            "pipelines[1].unrouted",
            "must agree on unrouted",
        ),
        (
            pipeline("a", "unrouted = \"reject\""),
            "pipelines[0].unrouted",
            "only applies to pipelines that share a hook",
        ),
        (
            pipeline("a", "hook = \"fin ops\""),
            "pipelines[0].hook",
            "may only contain",
        ),
    ] {
        let errors = match Config::load(&text, &HashMap::new()) {
            Ok(_) => panic!("should not load: {text}"),
            Err(ConfigErrors(errs)) => errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        };
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(key) && e.contains(needle)),
            "{key}: {errors:?}"
        );
    }
}

/// A pipeline named orders with `pipeline` in its table and a Celonis data-push sink.
fn with_queue(pipeline: &str) -> String {
    format!(
        r#"
[[pipelines]]
name = "orders"
{pipeline}
[pipelines.sink]
kind = "celonis"
url = "https://myteam.eu-1.celonis.cloud"
data_pool_id = "8f2c1f9e-0000-4000-8000-000000000001"
target_name = "orders"
app_key = "k"
"#
    )
}

#[test]
fn a_nats_queue_has_defaults_and_keeps_delivered_rows_for_the_pipelines_retention() {
    let config = Config::load(
        &with_queue("retention = \"2d\"\nqueue = { kind = \"nats\" }"),
        &env(),
    )
    .unwrap();
    let QueueConfig::Nats(n) = &config.pipelines[0].queue else {
        panic!("a NATS queue: {:?}", config.pipelines[0].queue);
    };
    assert_eq!(
        (
            n.url.as_str(),
            n.stream.as_str(),
            n.replicas,
            n.max_bytes,
            n.create,
            n.wait_for_nats,
            n.lease_ttl,
            n.publish_timeout,
            n.retention,
            &n.auth,
        ),
        (
            "nats://127.0.0.1:4222",
            "WEIR_orders",
            1,
            1 << 30,
            true,
            false,
            Duration::from_secs(15),
            Duration::from_secs(5),
            Duration::from_secs(2 * 86_400),
            &NatsAuth::None,
        )
    );
    let config = Config::load(
        &with_queue(
            "retention = \"2d\"\nqueue = { kind = \"nats\", retention = \"0s\", user = \"weir\", password = \"pw\" }",
        ),
        &env(),
    )
    .unwrap();
    let QueueConfig::Nats(n) = &config.pipelines[0].queue else {
        panic!("a NATS queue");
    };
    assert_eq!(
        n.retention,
        Duration::ZERO,
        "the queue's own retention wins"
    );
    assert_eq!(n.auth, NatsAuth::UserPassword("weir".into(), "pw".into()));
}

#[test]
fn a_nats_queue_names_each_key_it_refuses() {
    let errors = errors_of(&with_queue(
        r#"queue = { kind = "nats", url = "http://nats:4222", stream = "a.b", replicas = 7, lease_ttl = "500ms", dir = "/x", token = "t", nkey_seed = "SUabc" }"#,
    ));
    for expected in [
        "pipelines[0].queue.url: \"http://nats:4222\" is not a NATS URL",
        "pipelines[0].queue.stream: \"a.b\" is not a stream name",
        "pipelines[0].queue.replicas: 7 replicas",
        "pipelines[0].queue.lease_ttl: must be at least 1s",
        "pipelines[0].queue.dir: does not apply to kind = \"nats\"",
        "pipelines[0].queue: sign in one way",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected} not in {errors:#?}"
        );
    }
    let errors = errors_of(&with_queue(
        r#"queue = { kind = "disk", lease_ttl = "2s" }"#,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("pipelines[0].queue.lease_ttl: only applies to kind = \"nats\"")),
        "{errors:#?}"
    );
}
