//! Writes `examples/tiny-llama.safetensors`, the small model the README's quick start
//! converts: a two-layer Llama-shaped checkpoint (BF16 weights, F32 norms, `__metadata__`)
//! of about 300 KB, with deterministic contents. Written by the `safetensors` crate itself.
//!
//! `cargo run --example make_tiny_model`

use std::borrow::Cow;
use std::collections::HashMap;

struct T {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &T {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// xorshift: deterministic values without a dependency.
fn values(seed: u64, n: usize) -> impl Iterator<Item = f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n).map(move |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    })
}

fn bf16(seed: u64, shape: &[usize]) -> T {
    let n = shape.iter().product();
    let data = values(seed, n)
        .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    T {
        dtype: safetensors::Dtype::BF16,
        shape: shape.to_vec(),
        data,
    }
}

fn f32_ones(shape: &[usize]) -> T {
    let n: usize = shape.iter().product();
    let data = (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    T {
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data,
    }
}

fn main() {
    let (vocab, hidden, inter, layers) = (256, 64, 172, 2);
    let mut tensors: Vec<(String, T)> = vec![
        (
            "model.embed_tokens.weight".into(),
            bf16(1, &[vocab, hidden]),
        ),
        ("model.norm.weight".into(), f32_ones(&[hidden])),
        ("lm_head.weight".into(), bf16(2, &[vocab, hidden])),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let s = 100 * (l as u64 + 1);
        for (i, proj) in ["q_proj", "k_proj", "v_proj", "o_proj"].iter().enumerate() {
            tensors.push((
                format!("{p}.self_attn.{proj}.weight"),
                bf16(s + i as u64, &[hidden, hidden]),
            ));
        }
        tensors.push((
            format!("{p}.mlp.gate_proj.weight"),
            bf16(s + 10, &[inter, hidden]),
        ));
        tensors.push((
            format!("{p}.mlp.up_proj.weight"),
            bf16(s + 11, &[inter, hidden]),
        ));
        tensors.push((
            format!("{p}.mlp.down_proj.weight"),
            bf16(s + 12, &[hidden, inter]),
        ));
        tensors.push((format!("{p}.input_layernorm.weight"), f32_ones(&[hidden])));
        tensors.push((
            format!("{p}.post_attention_layernorm.weight"),
            f32_ones(&[hidden]),
        ));
    }
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.clone(), t)),
        Some(metadata),
        &out,
    )
    .unwrap();
    println!("wrote {}", out.display());
}
