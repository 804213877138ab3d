use super::*;

/// `architectures` picks the family's options; another family is refused with the served
/// ones named; a sliding window bounds the context.
#[test]
fn config_json_names_the_family() {
    let dir = std::env::temp_dir().join(format!("recyclegpt-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let read = |extra: serde_json::Value| {
        let mut json = serde_json::json!({
            "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 8192
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let path = dir.join("config.json");
        std::fs::write(&path, json.to_string()).unwrap();
        LlamaConfig::from_file(&path)
    };
    let qwen2 = read(serde_json::json!({"architectures": ["Qwen2ForCausalLM"]})).unwrap();
    assert!(qwen2.qkv_bias && !qwen2.qk_norm);
    let qwen3 = read(serde_json::json!({"architectures": ["Qwen3ForCausalLM"]})).unwrap();
    assert!(!qwen3.qkv_bias && qwen3.qk_norm);
    let mistral = read(serde_json::json!({"architectures": ["MistralForCausalLM"], "sliding_window": 4096})).unwrap();
    assert_eq!((mistral.max_position_embeddings, mistral.qkv_bias), (4096, false));
    let unused =
        serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "sliding_window": 4096, "use_sliding_window": false});
    assert_eq!(read(unused).unwrap().max_position_embeddings, 8192);
    let error = read(serde_json::json!({"architectures": ["GPTNeoXForCausalLM"]})).unwrap_err().to_string();
    assert!(error.contains("`GPTNeoXForCausalLM` is not supported") && error.contains("Gemma3ForCausalLM"), "{error}");
    let partial = serde_json::json!({"architectures": ["Phi3ForCausalLM"], "partial_rotary_factor": 0.75});
    assert!(read(partial).unwrap_err().to_string().contains("partial_rotary_factor"));
    // Gemma 3: its window is per layer (the context stays whole), from `layer_types`.
    let types = serde_json::json!(["sliding_attention", "full_attention"]);
    let gemma3 = serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "sliding_window": 512,
        "layer_types": types, "num_hidden_layers": 2, "hidden_activation": "gelu_pytorch_tanh"});
    let gemma3 = read(gemma3).unwrap();
    assert_eq!(gemma3.max_position_embeddings, 8192);
    assert_eq!(gemma3.sliding_window, Some(SlidingWindow { size: 512, pattern: 2, rope_theta: 10_000.0 }));
    assert!(gemma3.sandwich_norms && gemma3.qk_norm && gemma3.scale_embeddings && gemma3.tie_word_embeddings);
    let irregular = serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "sliding_window": 512,
        "layer_types": ["full_attention", "sliding_attention"], "num_hidden_layers": 2});
    let error = read(irregular).unwrap_err().to_string();
    assert!(error.contains("layer_types"), "{error}");
    let capped = serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "final_logit_softcapping": 30.0});
    assert!(read(capped).unwrap_err().to_string().contains("soft-capping"));
    // Gemma 3 4B's linear RoPE scaling: the global layers' frequencies divided by its factor.
    let scaled = serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "head_dim": 16,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}});
    let scaled = read(scaled).unwrap();
    assert_eq!((scaled.rope_scaling, scaled.rope_freq_factors), (None, Some(vec![8.0; 8])));
    // Another family's config with an odd value in a field only Gemma reads still loads.
    let odd = serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "layer_types": 3});
    assert!(read(odd).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_draft_vocabulary_must_hold_between_one_token_and_the_whole_vocabulary() {
    let mut config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4
    }))
    .unwrap();
    let mut recycle = config.default_recycle(1);
    for (size, valid) in [(0, false), (1, true), (100, true), (101, false)] {
        recycle.draft_vocab_size = Some(size);
        config.recycle = Some(recycle.clone());
        assert_eq!(config.validate().is_ok(), valid, "draft_vocab_size {size}");
    }
}

#[test]
fn feature_layers_must_rise_within_the_base() {
    let mut config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4
    }))
    .unwrap();
    let mut recycle = config.default_recycle(1);
    for (layers, valid) in [
        (vec![1, 2, 4], true),
        (vec![4], true),
        (vec![], false),
        (vec![0, 2], false),
        (vec![2, 2], false),
        (vec![1, 5], false),
    ] {
        recycle.feature_layers = Some(layers.clone());
        config.recycle = Some(recycle.clone());
        assert_eq!(config.validate().is_ok(), valid, "feature_layers {layers:?}");
    }
    assert_eq!(recycle.taps(4), [1, 5]);
    recycle.feature_layers = None;
    assert_eq!(recycle.taps(4), [4]);
}
