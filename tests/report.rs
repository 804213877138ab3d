//! `recyclegpt bench report` end to end: it benchmarks a random shape and the embedded model,
//! serves the model on 127.0.0.1, and writes report.json and the four SVG charts.
use serde_json::Value;
use std::process::Command;

mod common;

#[test]
fn bench_report_writes_json_and_charts_from_one_run() {
    let out = common::scratch("bench-report");
    let status = Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
        .args(["bench", "report", "--shape", "M1", "--rounds", "1", "--clients", "1,2", "--requests-per-client", "1"])
        .args(["--max-tokens", "8", "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("runs recyclegpt");
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
    assert_eq!(serve.len(), 8, "2 client counts × 4 modes");
    for run in serve {
        assert_eq!(run["failed"].as_u64(), Some(0), "{run}");
        assert!(run["tokens_per_second"].as_f64().is_some_and(|r| r > 0.0));
    }
    assert!(report["machine"]["read_bandwidth_gb_per_s"].as_f64().is_some_and(|b| b > 0.0));
    let charts = report["charts"].as_array().expect("charts");
    assert_eq!(charts.len(), 4);
    for chart in charts {
        let svg = std::fs::read_to_string(out.join(chart.as_str().expect("a name"))).expect("the chart file");
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{chart} is an SVG");
        assert!(svg.contains("verify"), "{chart} shows the verify mode");
    }
}
