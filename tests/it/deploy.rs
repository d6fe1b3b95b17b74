//! The deploy files, checked structurally: the Kubernetes manifests agree with each other
//! and with the config they carry, the container config loads, and the systemd unit keeps
//! the shutdown protocol's time.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use weir::config::{Config, QueueConfig};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of every manifest in `deploy/{dir}`, by kind.
fn manifests_in(dir: &str) -> HashMap<String, Vec<Value>> {
    let mut by_kind: HashMap<String, Vec<Value>> = HashMap::new();
    let dir = root().join("deploy").join(dir);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", path.display()));
            by_kind.entry(kind.to_owned()).or_default().push(v);
        }
    }
    by_kind
}

fn manifests() -> HashMap<String, Vec<Value>> {
    manifests_in("kubernetes")
}

#[test]
fn the_scale_out_manifests_run_three_replicas_on_a_three_node_nats_cluster() {
    let m = manifests_in("kubernetes/scale-out");
    let env: HashMap<String, String> = m["Secret"][0]["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let weir_config = m["ConfigMap"]
        .iter()
        .find(|c| c["metadata"]["name"] == "weir-scale-out-config")
        .unwrap();
    let toml = weir_config["data"]["weir.toml"].as_str().unwrap();
    let config = Config::load(toml, &env).unwrap_or_else(|e| panic!("scale-out weir.toml:\n{e}"));
    let QueueConfig::Nats(nats) = &config.pipelines[0].queue else {
        panic!("the scale-out queue is NATS");
    };
    assert_eq!(nats.replicas, 3, "the stream keeps three copies");
    let sts = &m["StatefulSet"][0];
    assert_eq!(sts["spec"]["replicas"], 3, "three NATS nodes");
    for u in nats.url.split(',') {
        let host = u.trim().trim_start_matches("nats://");
        let pod = host.split('.').next().unwrap();
        assert!(
            ["nats-0", "nats-1", "nats-2"].contains(&pod),
            "{u} names a pod of the NATS StatefulSet"
        );
    }
    let deploy = &m["Deployment"][0];
    assert_eq!(deploy["spec"]["replicas"], 3, "three weir replicas");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["envFrom"][0]["secretRef"]["name"],
        m["Secret"][0]["metadata"]["name"]
    );
    assert_eq!(
        pod["volumes"][1]["configMap"]["name"],
        "weir-scale-out-config"
    );
    let pdbs = &m["PodDisruptionBudget"];
    assert_eq!(pdbs.len(), 2, "one budget for weir, one for NATS");
    assert!(pdbs.iter().all(|p| p["spec"]["maxUnavailable"] == 1));
    let listed: Vec<String> = m["Kustomization"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    for entry in std::fs::read_dir(root().join("deploy/kubernetes/scale-out")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "kustomization.yaml" {
            assert!(listed.contains(&name), "kustomization.yaml lists {name}");
        }
    }
}

fn port_of(addr: &std::net::SocketAddr) -> u64 {
    u64::from(addr.port())
}

#[test]
fn the_kubernetes_manifests_are_consistent_with_their_config() {
    let m = manifests();
    let secret = &m["Secret"][0];
    let env: HashMap<String, String> = secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let toml = m["ConfigMap"][0]["data"]["weir.toml"].as_str().unwrap();
    // Every ${VAR} the config uses is provided by the Secret.
    let config = Config::load(toml, &env).unwrap_or_else(|e| panic!("configmap weir.toml:\n{e}"));
    assert!(
        matches!(config.pipelines[0].queue, QueueConfig::Disk { .. }),
        "the spool is on disk"
    );
    assert_eq!(config.data_dir, Path::new("/data"));
    let admin = config.admin.as_ref().expect("admin api configured");

    let sts = &m["StatefulSet"][0];
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let ports: HashMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["http"], port_of(&config.server.listen));
    assert_eq!(ports["admin"], port_of(&admin.listen));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    assert!(container["resources"]["requests"].is_object());
    assert!(pod["securityContext"]["runAsNonRoot"].as_bool().unwrap());

    // The spool is on a PersistentVolumeClaim mounted where data_dir points.
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == claim)
        .unwrap();
    assert_eq!(mount["mountPath"], "/data");

    // SIGTERM comes after preStop; the pod must live through preStop plus shutdown_grace.
    let pre_stop: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > pre_stop + config.server.shutdown_grace.as_secs(),
        "terminationGracePeriodSeconds {grace} too short"
    );

    // Services point at the named ports, and kustomize lists every file.
    for svc in &m["Service"] {
        for p in svc["spec"]["ports"].as_array().unwrap() {
            assert!(
                ports.contains_key(p["targetPort"].as_str().unwrap()),
                "{svc}"
            );
        }
    }
    let listed: Vec<&str> = m["Kustomization"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for file in [
        "configmap.yaml",
        "secret.yaml",
        "service.yaml",
        "statefulset.yaml",
    ] {
        assert!(listed.contains(&file), "kustomization lists {file}");
    }
}

#[test]
fn the_container_config_loads_and_matches_the_dockerfile() {
    let text = std::fs::read_to_string(root().join("deploy/docker/weir.toml")).unwrap();
    let env = HashMap::from([(
        "WEIR_ADMIN_TOKEN".to_owned(),
        "a-long-random-admin-token".to_owned(),
    )]);
    let config = Config::load(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let expose = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE"))
        .unwrap();
    for addr in [config.server.listen, config.admin.unwrap().listen] {
        assert!(
            addr.ip().is_unspecified(),
            "{addr} must listen on all interfaces in a container"
        );
        assert!(
            expose.contains(&addr.port().to_string()),
            "{expose} exposes {addr}"
        );
    }
    assert!(dockerfile.contains("COPY deploy/docker/weir.toml /etc/weir/weir.toml"));
    assert!(dockerfile.contains("USER weir"));
}

#[test]
fn the_systemd_unit_checks_the_config_raises_the_file_limit_and_outlives_the_grace_period() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/weir.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(value("ExecStartPre"), "/usr/local/bin/weir check");
    assert_eq!(value("StateDirectory"), "weir");
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("ProtectSystem"), "strict");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("LimitNOFILE"), "65536");
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > 30,
        "TimeoutStopSec must exceed the default shutdown_grace of 30s"
    );
}

/// Every config weir ships: `config/*.toml`, the container's, and the ConfigMap's.
fn shipped_configs() -> Vec<(String, String)> {
    let mut configs = Vec::new();
    for dir in ["config", "deploy/docker"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                configs.push((path.display().to_string(), text));
            }
        }
    }
    let toml = manifests()["ConfigMap"][0]["data"]["weir.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    configs.push(("deploy/kubernetes/configmap.yaml".to_owned(), toml));
    assert!(configs.len() >= 3, "{configs:?}");
    configs
}

/// Whether a config's admin API listens on loopback only (a laptop config).
fn admin_on_loopback(config: &toml::Table) -> bool {
    let listen = config["admin"]["listen"].as_str().unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    addr.ip().is_loopback()
}

/// The shipped configs whose admin API is reachable beyond the machine (container, Kubernetes).
fn deployed_configs() -> Vec<(String, String)> {
    shipped_configs()
        .into_iter()
        .filter(|(_, text)| !admin_on_loopback(&toml::from_str(text).unwrap()))
        .collect()
}

#[test]
fn no_deployed_config_falls_back_to_a_default_admin_token() {
    let deployed = deployed_configs();
    assert!(deployed.len() >= 2, "{deployed:?}");
    for (name, text) in deployed {
        let config = toml::from_str::<toml::Table>(&text).unwrap();
        let tokens = config["admin"]["tokens"].as_array().unwrap();
        let write = tokens
            .iter()
            .find(|t| t["scope"].as_str() == Some("write"))
            .unwrap_or_else(|| panic!("{name}: no write token"));
        assert_eq!(
            write["token"].as_str(),
            Some("${WEIR_ADMIN_TOKEN}"),
            "{name}: the write token must come from WEIR_ADMIN_TOKEN with no default"
        );
    }
}

#[test]
fn only_a_loopback_admin_api_may_have_a_default_token() {
    for (name, text) in shipped_configs() {
        let config = toml::from_str::<toml::Table>(&text).unwrap();
        if text.contains("${WEIR_ADMIN_TOKEN:-") {
            assert!(
                admin_on_loopback(&config),
                "{name}: a default admin token on a non-loopback listener"
            );
        }
    }
}

#[test]
fn a_deployed_config_without_weir_admin_token_fails_weir_check() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, text)) in deployed_configs().into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        check.arg("check").arg("-c").arg(&path).env_clear();
        // The ConfigMap's other variables come from its Secret; only the admin token is absent.
        for (key, value) in secret_env() {
            if key != "WEIR_ADMIN_TOKEN" {
                check.env(key, value);
            }
        }
        let out = check.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name} passed without WEIR_ADMIN_TOKEN"
        );
        assert!(
            stderr.contains("admin.tokens[0].token")
                && stderr.contains("environment variable WEIR_ADMIN_TOKEN is not set"),
            "{name}: {stderr}"
        );
    }
}

/// The variables the Kubernetes Secret provides.
fn secret_env() -> HashMap<String, String> {
    manifests()["Secret"][0]["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn emulator_hooks_need_the_key_when_it_listens_beyond_loopback() {
    // The container's emulator listens on all interfaces; the test only talks to loopback.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let stop = tokio_util::sync::CancellationToken::new();
    let emulator = weir::emulator::Emulator::new(weir::emulator::EmulatorConfig {
        app_keys: vec!["local-emulator-key".into()],
        ..Default::default()
    })
    .unwrap();
    let served = tokio::spawn(emulator.serve(listener, stop.clone()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, "/emulator/tables/pushCSV"),
        (reqwest::Method::GET, "/emulator/jobs"),
        (reqwest::Method::DELETE, "/emulator/faults"),
        (reqwest::Method::GET, "/emulator/oauth"),
    ] {
        let url = format!("{base}{path}");
        let bare = client.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(bare.status(), 401, "{method} {path} without the key");
        let wrong = client
            .request(method.clone(), &url)
            .header("authorization", "AppKey another-key")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{method} {path} with another key");
        let keyed = client
            .request(method.clone(), &url)
            .header("authorization", "AppKey local-emulator-key")
            .send()
            .await
            .unwrap();
        assert_ne!(keyed.status(), 401, "{method} {path} with the key");
    }
    stop.cancel();
    served.await.unwrap().unwrap();
}
