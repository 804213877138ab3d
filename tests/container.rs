//! The container and deployment files, checked without a Docker engine: the Dockerfiles parse
//! and follow the usual lint rules, every path they copy exists and is in the build context, the
//! command lines they run are ones the binary accepts, and the compose file, Prometheus config
//! and Kubernetes manifests point at the ports, paths, variables and metrics the server has.
mod common;

use common::dockerfile::{copy_parts, exec_form, Dockerfile, Stage};
use common::server::TestServer;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dockerfile(path: &str) -> Dockerfile {
    Dockerfile::parse(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs the binary with `args` + `--help`: clap parses every argument before acting on the
/// trailing `--help`, so an unknown flag or a bad value fails here.
fn assert_cli_accepts(args: &[String], context: &str) {
    let mut with_help = args.to_vec();
    with_help.push("--help".into());
    let out = Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
        .args(&with_help)
        .current_dir(root())
        .output()
        .expect("runs recyclegpt");
    assert!(
        out.status.success(),
        "{context}: `recyclegpt {}` was refused: {}",
        with_help.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The environment variables `recyclegpt serve` reads (from its `--help`).
fn serve_env_vars() -> Vec<String> {
    let out =
        Command::new(env!("CARGO_BIN_EXE_recyclegpt")).args(["serve", "--help"]).output().expect("runs recyclegpt");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.split("[env: ").skip(1).filter_map(|rest| rest.split('=').next().map(str::to_string)).collect()
}

fn dockerignore_excludes(path: &str) -> bool {
    read(".dockerignore").lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).any(|pattern| {
        let pattern = pattern.trim_end_matches('/');
        path == pattern || path.starts_with(&format!("{pattern}/"))
    })
}

/// The checks both Dockerfiles must pass; `runtime_base` is the expected runtime image prefix.
fn check_dockerfile(path: &str, runtime_base: &str) {
    let file = dockerfile(path);
    assert!(file.stages.len() >= 3, "{path}: a multi-stage build (planner, builder, runtime)");
    for stage in &file.stages {
        assert!(
            stage.base.contains(':') && !stage.base.ends_with(":latest") || file.stage(&stage.base).is_some(),
            "{path}: base image {} has no pinned tag",
            stage.base
        );
        for run in stage.all("RUN") {
            if run.args.contains("apt-get install") {
                assert!(
                    run.args.contains("--no-install-recommends"),
                    "{path}:{}: apt-get install without --no-install-recommends",
                    run.line
                );
                assert!(
                    run.args.contains("rm -rf /var/lib/apt/lists"),
                    "{path}:{}: apt lists are not cleaned",
                    run.line
                );
                assert!(
                    run.args.contains("apt-get update"),
                    "{path}:{}: install without update in the same layer",
                    run.line
                );
            }
        }
        for copy in stage.all("COPY") {
            let (from, sources, dest) = copy_parts(&copy.args);
            assert!(
                !dest.is_empty() && !sources.is_empty(),
                "{path}:{}: COPY needs a source and a destination",
                copy.line
            );
            match from {
                Some(stage_name) => {
                    assert!(file.stage(&stage_name).is_some(), "{path}:{}: no stage named {stage_name}", copy.line)
                }
                None => {
                    for source in sources {
                        assert!(root().join(&source).exists(), "{path}:{}: {source} does not exist", copy.line);
                        assert!(
                            !dockerignore_excludes(&source),
                            "{path}:{}: {source} is excluded by .dockerignore",
                            copy.line
                        );
                    }
                }
            }
        }
    }
    // The dependency layer is built from the recipe before the project's sources arrive.
    let builder = file.stage("builder").unwrap_or_else(|| panic!("{path}: a `builder` stage"));
    let cook = builder.all("RUN").find(|r| r.args.contains("cargo chef cook")).map(|r| r.line);
    let first_source = builder.all("COPY").find(|c| c.args.contains("crates")).map(|c| c.line);
    assert!(
        matches!((cook, first_source), (Some(c), Some(s)) if c < s),
        "{path}: dependencies are cooked before the sources are copied"
    );

    let runtime: &Stage = file.runtime();
    assert!(runtime.base.starts_with(runtime_base), "{path}: runtime image {} (want {runtime_base}*)", runtime.base);
    let user = runtime.last("USER").unwrap_or_else(|| panic!("{path}: the runtime stage sets a USER"));
    assert!(user.args != "root" && user.args != "0", "{path}: the runtime user is not root");
    assert!(runtime.all("EXPOSE").any(|e| e.args.split_whitespace().any(|p| p == "8000")), "{path}: EXPOSE 8000");
    let health = runtime.last("HEALTHCHECK").unwrap_or_else(|| panic!("{path}: a HEALTHCHECK"));
    assert!(health.args.contains("http://127.0.0.1:8000/health"), "{path}: the health check asks /health");
    let entrypoint = exec_form(&runtime.last("ENTRYPOINT").expect("ENTRYPOINT").args).expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, ["recyclegpt"], "{path}: `docker run IMAGE --help` reaches the CLI");
    let cmd = exec_form(&runtime.last("CMD").expect("CMD").args).expect("exec-form CMD");
    assert_cli_accepts(&cmd, path);
    assert_cli_accepts(&[], &format!("{path} (docker run IMAGE --help)"));
    // The runtime copies the binary from the builder, and the model and config its CMD names.
    let copies: Vec<String> = runtime.all("COPY").map(|c| c.args.clone()).collect();
    assert!(
        copies.iter().any(|c| c.contains("--from=builder") && c.contains("target/release/recyclegpt")),
        "{path}: copies the binary"
    );
    for needed in ["models", "config"] {
        assert!(copies.iter().any(|c| copy_parts(c).1.contains(&needed.to_string())), "{path}: copies {needed}/");
    }
    let env_vars = serve_env_vars();
    for env in runtime.all("ENV") {
        for pair in env.args.split_whitespace() {
            let name = pair.split('=').next().unwrap_or_default();
            assert!(env_vars.iter().any(|v| v == name), "{path}: ENV {name} is not read by `recyclegpt serve`");
        }
    }
}

#[test]
fn the_cpu_dockerfile_builds_a_slim_non_root_image_that_serves_the_default_model() {
    check_dockerfile("Dockerfile", "debian:bookworm-slim");
    // The default model path of `serve` is where the image puts the model.
    let cmd = exec_form(&dockerfile("Dockerfile").runtime().last("CMD").expect("CMD").args).expect("exec form");
    let config_arg = cmd.iter().position(|a| a == "--config").map(|i| cmd[i + 1].clone()).expect("--config");
    let config = std::fs::read_to_string(root().join(&config_arg)).expect("the config the image uses");
    let model: toml::Value = toml::from_str(&config).expect("config parses");
    let model = model.get("model").and_then(|m| m.as_str()).expect("model key");
    assert!(root().join(model).join("model.safetensors").exists(), "{model} is in the image");
}

#[test]
fn the_cuda_dockerfile_builds_with_the_cuda_feature_on_nvidia_images() {
    check_dockerfile("docker/Dockerfile.cuda", "nvidia/cuda:");
    let file = dockerfile("docker/Dockerfile.cuda");
    let builder = file.stage("builder").expect("builder");
    assert!(builder.all("RUN").any(|r| r.args.contains("cargo build") && r.args.contains("--features cuda")));
    assert!(file.stages[0].base.contains("-devel-") && file.runtime().base.contains("-runtime-"));
}

#[test]
fn compose_runs_the_server_and_a_prometheus_that_scrapes_it() {
    let compose = &yaml("docker/compose.yaml")[0];
    let server = &compose["services"]["recyclegpt"];
    let context = server["build"]["context"].as_str().expect("build context");
    let dockerfile = server["build"]["dockerfile"].as_str().expect("dockerfile");
    assert!(root().join("docker").join(context).join(dockerfile).exists(), "compose builds an existing Dockerfile");
    let ports: Vec<&str> = server["ports"].as_vec().expect("ports").iter().filter_map(Yaml::as_str).collect();
    assert!(ports.contains(&"8000:8000"));
    let env_vars = serve_env_vars();
    if let Some(env) = server["environment"].as_hash() {
        for name in env.keys().filter_map(Yaml::as_str) {
            assert!(env_vars.iter().any(|v| v == name), "compose sets {name}, which serve does not read");
        }
    }
    let prometheus = &compose["services"]["prometheus"];
    let volume = prometheus["volumes"][0].as_str().expect("prometheus config volume");
    let host_path = volume.split(':').next().expect("host path");
    let scrape = &yaml(&format!("docker/{}", host_path.trim_start_matches("./")))[0];
    let job = &scrape["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    assert_eq!(job["static_configs"][0]["targets"][0].as_str(), Some("recyclegpt:8000"), "scrapes the compose service");
}

fn manifests() -> Vec<Yaml> {
    let kustomization = &yaml("docker/kubernetes/kustomization.yaml")[0];
    kustomization["resources"]
        .as_vec()
        .expect("resources")
        .iter()
        .flat_map(|r| yaml(&format!("docker/kubernetes/{}", r.as_str().expect("a file name"))))
        .collect()
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("a {kind} manifest"))
}

#[test]
fn kubernetes_manifests_probe_health_and_scale_on_a_metric_the_server_exports() {
    let docs = manifests();
    let deployment = kind(&docs, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> =
        container["args"].as_vec().expect("args").iter().filter_map(|a| a.as_str().map(String::from)).collect();
    assert_cli_accepts(&args, "deployment.yaml");
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(8000));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"].as_str(), Some("/health"), "{probe}");
    }
    for resource in ["cpu", "memory"] {
        assert!(!container["resources"]["requests"][resource].is_badvalue(), "requests.{resource}");
        assert!(!container["resources"]["limits"][resource].is_badvalue(), "limits.{resource}");
    }
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = kind(&docs, "Service");
    for (key, value) in service["spec"]["selector"].as_hash().expect("selector") {
        assert_eq!(&labels[key.as_str().expect("key")], value, "the Service selects the Deployment's pods");
    }
    let hpa = kind(&docs, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);
    let metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"].as_str().expect("a pods metric");
    let adapter = kind(&docs, "ConfigMap")["data"]["config.yaml"].as_str().expect("adapter config");
    let rules = &YamlLoader::load_from_str(adapter).expect("adapter rules parse")[0]["rules"];
    assert!(
        rules.as_vec().expect("rules").iter().any(|r| r["name"]["as"].as_str() == Some(metric)),
        "the adapter serves {metric}"
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let exported = runtime.block_on(async {
        let server = TestServer::start(&root().join("models/shakespeare"), |_| {}).await;
        let text = reqwest::get(server.url("/metrics")).await.expect("GET /metrics").text().await.expect("text");
        server.shutdown().await.expect("shutdown");
        text
    });
    assert!(exported.lines().any(|l| l.starts_with(metric)), "the server exports {metric}");
}

#[test]
fn the_dockerfile_reader_rejects_what_docker_would() {
    assert!(Dockerfile::parse("FROM a:1\nRNU echo").is_err(), "unknown instruction");
    assert!(Dockerfile::parse("RUN echo\nFROM a:1").is_err(), "RUN before FROM");
    assert!(Dockerfile::parse("FROM a:1\nRUN echo \\").is_err(), "dangling continuation");
    let file = Dockerfile::parse("ARG V=2\nFROM img:${V} AS one\nRUN a \\\n  # note\n  b\nFROM one").expect("parses");
    assert_eq!(file.stages[0].base, "img:2");
    assert_eq!(file.stages[0].instructions[0].args, "a b");
    assert!(Path::new(&file.stages[1].base).to_str() == Some("one"));
}
