//! `recyclegpt bench report` end to end: it benchmarks a random shape and the embedded model,
//! serves the model on 127.0.0.1, benchmarks a peer server beside it, and writes report.json
//! and the four SVG charts.
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

mod common;

#[test]
fn bench_report_writes_json_and_charts_from_one_run() {
    let out = common::scratch("bench-report");
    // The peer: another OpenAI-compatible server of the same model, already running (here a
    // second recyclegpt, with a random module, in this process).
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare");
    let peer = runtime.block_on(common::server::TestServer::start(&model, |c| c.served_model_name = None));
    let status = Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
        .args(["bench", "report", "--shape", "M1", "--rounds", "1", "--clients", "1,2", "--requests-per-client", "1"])
        .args(["--max-tokens", "8", "--peer-decode", "llama.cpp=123.4", "--peer"])
        .arg(format!("other-server={}", peer.base))
        .arg("--out")
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("runs recyclegpt");
    runtime.block_on(peer.shutdown()).expect("the peer stops");
    assert!(status.success());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json")).expect("JSON");
    let decode = report["decode"].as_array().expect("decode runs");
    let shapes: Vec<&str> = decode.iter().filter_map(|d| d["shape"].as_str()).collect();
    assert_eq!(shapes, ["M1", "shakespeare"]);
    for run in decode {
        for mode in ["off", "auto", "alternate", "verify"] {
            assert!(run["tokens_per_second"][mode].as_f64().is_some_and(|r| r > 0.0), "{mode} in {run}");
        }
    }
    // The embedded model's trained module agrees far more than M1's random one.
    let agreement = |i: usize| decode[i]["module_agreement"].as_f64().expect("agreement");
    assert!(agreement(1) > 0.4 && agreement(0) < 0.2, "{} vs {}", agreement(1), agreement(0));
    let serve = report["serve"].as_array().expect("serve runs");
    assert_eq!(serve.len(), 10, "2 client counts × 4 modes, and the peer at each count");
    for run in serve {
        assert_eq!(run["failed"].as_u64(), Some(0), "{run}");
        assert!(run["tokens_per_second"].as_f64().is_some_and(|r| r > 0.0));
    }
    let peer_runs: Vec<u64> =
        serve.iter().filter(|r| r["server"] == "other-server").filter_map(|r| r["clients"].as_u64()).collect();
    assert_eq!(peer_runs, [1, 2]);
    assert_eq!(report["peer_decode"][0], serde_json::json!(["llama.cpp", 123.4]));
    assert!(report["machine"]["read_bandwidth_gb_per_s"].as_f64().is_some_and(|b| b > 0.0));
    let charts = report["charts"].as_array().expect("charts");
    assert_eq!(charts.len(), 4);
    for chart in charts {
        let svg = std::fs::read_to_string(out.join(chart.as_str().expect("a name"))).expect("the chart file");
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{chart} is an SVG");
        assert!(svg.contains("verify"), "{chart} shows the verify mode");
    }
    let chart = |name: &str| std::fs::read_to_string(out.join(name)).expect("the chart file");
    assert!(chart("decode_tokens_per_second.svg").contains("llama.cpp"), "the peer's decode bar");
    assert!(chart("serve_throughput.svg").contains("other-server"), "the peer's serving line");
}
