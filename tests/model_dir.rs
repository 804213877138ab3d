//! Loading model directories: sharded and half-precision checkpoints load; broken ones give an
//! error that names the file and the problem, never a panic.
mod common;

use candle_core::{DType, Device, Tensor};
use common::{load, scratch, stories260k};
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleGpt, RecycleInit, SeqInput};
use std::collections::HashMap;
use std::path::Path;

/// A copy of the HuggingFace test model that a test may break.
fn copy_model(shared: &Path, name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    for entry in std::fs::read_dir(shared.join("hf")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn load_error(dir: &Path) -> String {
    match LoadedModel::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn first_logits(model: &RecycleGpt) -> Vec<f32> {
    let mut cache = model.new_cache(16).unwrap();
    let tokens = [1, 403, 407, 261, 378];
    model
        .forward(&mut [SeqInput { tokens: &tokens, cache: &mut cache, logits_rows: vec![4] }])
        .unwrap()
        .logits
        .remove(0)
}

#[test]
fn sharded_and_half_precision_checkpoints_load() {
    let Some(shared) = stories260k() else { return };
    let reference = first_logits(&load(&shared.join("hf"), RecycleInit::FromFiles).model);

    let sharded = copy_model(&shared, "sharded");
    let all = tensors(&sharded);
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let shard: HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), all[*n].clone())).collect();
        candle_core::safetensors::save(&shard, sharded.join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(first_logits(&load(&sharded, RecycleInit::FromFiles).model), reference);

    for (name, dtype) in [("f16", DType::F16), ("bf16", DType::BF16)] {
        let half = copy_model(&shared, name);
        let converted: HashMap<String, Tensor> =
            tensors(&half).into_iter().map(|(n, t)| (n, t.to_dtype(dtype).unwrap())).collect();
        candle_core::safetensors::save(&converted, half.join("model.safetensors")).unwrap();
        let plain = load(&half, RecycleInit::FromFiles);
        let logits = first_logits(&plain.model);
        let diff = logits.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 0.5, "{name}: logits differ by {diff}");
        // As stored (`--quantize auto` on the CPU), the layers keep the file's 16 bits: half the
        // bytes of f32, the same values, so the same logits but for summation order.
        let stored = load_as_stored(&half);
        let ratio = stored.model.layer_bytes() as f64 / plain.model.layer_bytes() as f64;
        assert!((0.45..=0.55).contains(&ratio), "{name}: the layers read {ratio} of f32's bytes");
        let largest = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (got, want) in first_logits(&stored.model).iter().zip(&logits) {
            assert!((got - want).abs() <= 1e-4 * largest, "{name}: logit {got} against {want}");
        }
    }
    // An f32 checkpoint stays unquantized as stored.
    let f32_dir = shared.join("hf");
    assert_eq!(
        load_as_stored(&f32_dir).model.layer_bytes(),
        load(&f32_dir, RecycleInit::FromFiles).model.layer_bytes()
    );
}

/// `dir` loaded as `--quantize auto` loads it on the CPU.
fn load_as_stored(dir: &Path) -> LoadedModel {
    let quantize = Some(recyclegpt_model::Quantization::AsStored);
    let options = LoadOptions { quantize, recycle_init: RecycleInit::FromFiles, ..LoadOptions::default() };
    LoadedModel::load(dir, &options).expect("loads")
}

#[test]
fn broken_directories_name_the_file_and_the_problem() {
    let Some(shared) = stories260k() else { return };

    let missing_dir = scratch("missing").join("nowhere");
    assert!(load_error(&missing_dir).contains("model directory not found"));

    let dir = copy_model(&shared, "no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("not found"), "{e}");

    let dir = copy_model(&shared, "no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("no model.safetensors"), "{e}");

    let dir = copy_model(&shared, "bad-json");
    std::fs::write(dir.join("config.json"), "{\"vocab_size\": 512,").unwrap();
    let e = load_error(&dir);
    assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");

    let dir = copy_model(&shared, "bad-heads");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["num_key_value_heads"] = 3.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("config.json") && e.contains("do not divide"), "{e}");

    let dir = copy_model(&shared, "wrong-shape");
    let mut all = tensors(&dir);
    all.insert("model.layers.2.mlp.up_proj.weight".into(), Tensor::zeros((171, 64), DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("model.layers.2.mlp.up_proj.weight") && e.contains("[172, 64]"),
        "{e}"
    );

    let dir = copy_model(&shared, "missing-tensor");
    let mut all = tensors(&dir);
    all.remove("model.layers.4.self_attn.k_proj.weight");
    candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("model.layers.4.self_attn.k_proj.weight") && e.contains("missing"), "{e}");

    let dir = copy_model(&shared, "truncated");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");

    let dir = copy_model(&shared, "recycle-without-weights");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["recycle"] = serde_json::json!({
        "num_layers": 1, "intermediate_size": 172, "num_attention_heads": 8, "num_key_value_heads": 4
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("recycle.safetensors") && e.contains("missing"), "{e}");
}

#[test]
fn a_saved_recycle_module_loads_from_its_files() {
    let Some(shared) = stories260k() else { return };
    let dir = copy_model(&shared, "with-recycle");
    let d = 64;
    let mut module: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: &str, shape: &[usize]| {
        module.insert(name.to_string(), Tensor::randn(0f32, 0.05, shape, &Device::Cpu).unwrap());
    };
    put("hnorm.weight", &[d]);
    put("enorm.weight", &[d]);
    put("norm.weight", &[d]);
    put("eh_proj.weight", &[d, 2 * d]);
    for (name, shape) in [
        ("input_layernorm.weight", vec![d]),
        ("post_attention_layernorm.weight", vec![d]),
        ("self_attn.q_proj.weight", vec![d, d]),
        ("self_attn.k_proj.weight", vec![32, d]),
        ("self_attn.v_proj.weight", vec![32, d]),
        ("self_attn.o_proj.weight", vec![d, d]),
        ("mlp.gate_proj.weight", vec![100, d]),
        ("mlp.up_proj.weight", vec![100, d]),
        ("mlp.down_proj.weight", vec![d, 100]),
    ] {
        put(&format!("layers.0.{name}"), &shape);
    }
    candle_core::safetensors::save(&module, dir.join("recycle.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["recycle"] = serde_json::json!({
        "num_layers": 1, "intermediate_size": 100, "num_attention_heads": 8, "num_key_value_heads": 4
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let loaded = load(&dir, RecycleInit::FromFiles);
    assert!(loaded.model.has_recycle());
    assert_eq!(loaded.model.recycle_source(), recyclegpt_model::RecycleSource::Trained);

    // A module file whose tensor has the wrong shape is named in the error.
    config["recycle"]["intermediate_size"] = 99.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let e = load_error(&dir);
    assert!(e.contains("recycle.safetensors") && e.contains("layers.0.mlp.gate_proj.weight"), "{e}");
}
