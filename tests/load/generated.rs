//! Generated checkpoints: proptest tensors of every dtype in all three container kinds,
//! strided slices, and reads straight into destinations laid out like the file.

use super::*;

#[derive(Debug, Clone)]
struct Gen {
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn tensor() -> impl Strategy<Value = Gen> {
    (
        prop::sample::select(&DTYPES[..]),
        prop::collection::vec(0u64..7, 0..=4),
    )
        .prop_filter("SafeTensors dtype with whole bytes", |(d, s)| {
            d.safetensors_name().is_some() && byte_len(*d, s).is_some()
        })
        .prop_flat_map(|(dtype, shape)| {
            let n = byte_len(dtype, &shape).unwrap() as usize;
            prop::collection::vec(any::<u8>(), n).prop_map(move |data| Gen {
                dtype,
                shape: shape.clone(),
                data,
            })
        })
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Single,
    Sharded,
    NumPack,
}

/// Writes the tensors as one of the three container kinds; returns the path to open.
fn write(dir: &Path, kind: Kind, tensors: &[Gen], drop_rows: &[u64]) -> PathBuf {
    let named: Vec<(String, DType, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("t{i}"), t.dtype, t.shape.clone(), t.data.clone()))
        .collect();
    match kind {
        Kind::Single => {
            let p = dir.join("m.safetensors");
            write_safetensors(&p, &named);
            p
        }
        Kind::Sharded => {
            let half = named.len() / 2;
            let mut map = BTreeMap::new();
            let mut total = 0;
            for (k, part) in [&named[..half], &named[half..]].iter().enumerate() {
                let file = format!("model-{:05}-of-00002.safetensors", k + 1);
                write_safetensors(&dir.join(&file), part);
                for t in part.iter() {
                    map.insert(t.0.clone(), file.clone());
                    total += t.3.len() as u64;
                }
            }
            let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
            dir.to_path_buf()
        }
        Kind::NumPack => {
            let st = dir.join("src.safetensors");
            write_safetensors(&st, &named);
            let npk = dir.join("m.npk");
            npkio::from_safetensors_file(&st, &npk, None::<&[&str]>, false, 4096).unwrap();
            let mut store = NumPack::open(&npk).unwrap();
            for (n, t) in named.iter().map(|t| (&t.0, t)) {
                let rows = t.2.first().copied().unwrap_or(0);
                if t.1.bits() % 8 == 0 && rows >= 2 {
                    let drop: Vec<u64> = drop_rows
                        .iter()
                        .map(|r| r % rows)
                        .take(rows as usize - 1)
                        .collect();
                    let mut drop = drop;
                    drop.sort();
                    drop.dedup();
                    store.drop_rows(n, &drop).unwrap();
                }
            }
            drop(store);
            npk
        }
    }
}

fn slice_strategy() -> impl Strategy<Value = (u8, usize, u64, u64, u64)> {
    // (kind: 0 whole, 1 range, 2 shard; dim; a; b; world)
    (0u8..3, 0usize..4, 0u64..8, 0u64..8, 1u64..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn generated_checkpoints_load_like_their_views(
        tensors in prop::collection::vec(tensor(), 1..6),
        kind in prop::sample::select(vec![Kind::Single, Kind::Sharded, Kind::NumPack]),
        drop_rows in prop::collection::vec(0u64..8, 0..3),
        slices in prop::collection::vec(slice_strategy(), 1..12),
        method in prop::sample::select(vec![Method::Auto, Method::Buffered, Method::Direct]),
        threads in 1usize..5,
        chunk in prop::sample::select(vec![4096usize, 8192, 1 << 20]),
        sink in any::<bool>(),
    ) {
        let dir = disk_dir();
        let path = write(dir.path(), kind, &tensors, &drop_rows);
        let refs = reference(&path);
        let loader = Loader::open(&path).unwrap();
        prop_assert_eq!(loader.tensors().len(), refs.len());
        let names: Vec<&String> = refs.keys().collect();
        let mut reqs = Vec::new();
        for (i, &(k, dim, a, b, world)) in slices.iter().enumerate() {
            let name = names[i % names.len()];
            let (dtype, shape, _) = &refs[name];
            let mut r = Request::new(name.as_str());
            if k > 0 && !shape.is_empty() {
                let dim = dim % shape.len();
                let len = shape[dim];
                let inner_bits = shape[dim + 1..].iter().product::<u64>() * dtype.bits() as u64;
                if inner_bits % 8 == 0 {
                    r = if k == 1 {
                        let (s, e) = (a.min(b).min(len), a.max(b).min(len));
                        r.slice(dim, s, e)
                    } else {
                        r.shard(dim, a % world, world)
                    };
                }
            }
            if matches!(dtype, DType::BF16 | DType::F16) && a % 2 == 0 {
                r = r.to(DType::F32);
            } else if *dtype == DType::F32 && a % 3 == 0 {
                r = r.to(if b % 2 == 0 { DType::BF16 } else { DType::F16 });
            }
            reqs.push(r);
        }
        let opts = LoadOptions::default().method(method).threads(threads).chunk_size(chunk);
        let got = if sink {
            load_sink(&loader, &reqs, chunk.max(4096), &opts)
        } else {
            load_all(&loader, &reqs, &opts)
        };
        for (r, g) in reqs.iter().zip(&got) {
            prop_assert!(*g == expected(&refs, r), "{:?}", r);
        }
    }
}

#[test]
fn strided_slices_take_every_read_rule() {
    // Rows of 40 bytes with a 400 KB gap (one read per row), of 80 KB (one read per row
    // straight into the destination), and short gaps (one read for the span of a group).
    let dir = disk_dir();
    let path = dir.path().join("wide.safetensors");
    let tensors = vec![
        (
            "wide".to_string(),
            DType::F32,
            vec![5, 100_000],
            pattern(2_000_000, 6),
        ),
        (
            "half".to_string(),
            DType::BF16,
            vec![6, 3, 20_000],
            pattern(720_000, 7),
        ),
        (
            "narrow".to_string(),
            DType::F16,
            vec![300, 50],
            pattern(30_000, 8),
        ),
    ];
    write_safetensors(&path, &tensors);
    let loader = Loader::open(&path).unwrap();
    let refs = reference(&path);
    let mut reqs = Vec::new();
    for (name, dim, s, e) in [
        ("wide", 1, 10, 20),
        ("wide", 1, 0, 20_000),
        ("wide", 1, 99_990, 100_000),
        ("half", 1, 1, 2),
        ("half", 2, 0, 17),
        ("half", 2, 1000, 19_999),
        ("narrow", 1, 3, 9),
    ] {
        reqs.push(Request::new(name).slice(dim, s, e));
        let to = if name == "wide" {
            DType::BF16
        } else {
            DType::F32
        };
        reqs.push(Request::new(name).slice(dim, s, e).to(to));
    }
    for method in [Method::Buffered, Method::Direct, Method::Auto] {
        let opts = LoadOptions::default().method(method);
        let got = load_all(&loader, &reqs, &opts);
        for (r, g) in reqs.iter().zip(&got) {
            assert!(*g == expected(&refs, r), "{r:?} {method:?}");
        }
        let got = load_sink(&loader, &reqs, 4096, &opts);
        for (r, g) in reqs.iter().zip(&got) {
            assert!(*g == expected(&refs, r), "sink {r:?} {method:?}");
        }
    }
    // The per-row rule reads no gap bytes.
    let r = [Request::new("wide").slice(1, 10, 20)];
    let mut out = [0u8; 5 * 10 * 4];
    let report = loader
        .load(&r, &mut [&mut out[..]], &LoadOptions::default())
        .unwrap();
    assert_eq!(report.bytes_read, 200);
}

#[test]
fn direct_reads_go_straight_into_destinations_aligned_like_the_file() {
    let dir = disk_dir();
    let path = dir.path().join("aligned.safetensors");
    let tensors = vec![
        ("a".to_string(), DType::U8, vec![50_001], pattern(50_001, 9)),
        (
            "b".to_string(),
            DType::U8,
            vec![3, 30_000],
            pattern(90_000, 10),
        ),
    ];
    write_safetensors(&path, &tensors);
    let ck = Checkpoint::open(&path).unwrap();
    let start = ck.shards()[0].data_start();
    let loader = Loader::open(&path).unwrap();
    for (name, _, _, data) in &tensors {
        let info = ck.infos().find(|t| &t.name == name).unwrap();
        let file_off = start + info.data_offsets.0;
        let mut buf = vec![0u8; data.len() + 8192];
        let skew = (file_off as usize + 4096 - buf.as_ptr() as usize % 4096) % 4096;
        let dst = &mut buf[skew..skew + data.len()];
        let opts = LoadOptions::default()
            .method(Method::Direct)
            .threads(2)
            .chunk_size(16384);
        let report = loader
            .load(&[Request::new(name)], &mut [dst], &opts)
            .unwrap();
        assert_eq!(&buf[skew..skew + data.len()], &data[..], "{name}");
        if !report.direct_refused {
            assert!(
                report.direct_bytes >= data.len() as u64 - 2 * 4096,
                "{report:?}"
            );
        }
        assert!(buf[..skew]
            .iter()
            .chain(&buf[skew + data.len()..])
            .all(|&b| b == 0));
    }
}

#[test]
fn an_arena_laid_out_like_the_file_is_read_in_place_across_tensors() {
    let dir = disk_dir();
    let path = dir.path().join("arena.safetensors");
    let tensors = vec![
        (
            "a".to_string(),
            DType::U8,
            vec![50_001],
            pattern(50_001, 11),
        ),
        (
            "b".to_string(),
            DType::F32,
            vec![3, 10_000],
            pattern(120_000, 12),
        ),
        ("c".to_string(), DType::U8, vec![7], pattern(7, 13)),
        (
            "d".to_string(),
            DType::U8,
            vec![20_000],
            pattern(20_000, 14),
        ),
    ];
    write_safetensors(&path, &tensors);
    let file_len = std::fs::metadata(&path).unwrap().len() as usize;
    let ck = Checkpoint::open(&path).unwrap();
    let start = ck.shards()[0].data_start() as usize;
    let loader = Loader::open(&path).unwrap();
    let mut arena = vec![0u8; file_len + 4096];
    let base = (4096 - arena.as_ptr() as usize % 4096) % 4096;
    // Requests in file order, each destination at its file offset in the arena.
    let mut infos: Vec<_> = ck.infos().collect();
    infos.sort_by_key(|t| t.data_offsets.0);
    let reqs: Vec<Request> = infos.iter().map(|t| Request::new(&t.name)).collect();
    let mut rest = &mut arena[base + start..base + file_len];
    let mut dsts = Vec::new();
    for t in &infos {
        let (x, y) = rest.split_at_mut(t.len() as usize);
        dsts.push(x);
        rest = y;
    }
    let opts = LoadOptions::default()
        .method(Method::Direct)
        .threads(3)
        .chunk_size(16384);
    loader.load(&reqs, &mut dsts, &opts).unwrap();
    let file = std::fs::read(&path).unwrap();
    assert!(arena[base + start..base + file_len] == file[start..]);
    assert!(arena[..base + start].iter().all(|&b| b == 0));
    assert!(arena[base + file_len..].iter().all(|&b| b == 0));
}
