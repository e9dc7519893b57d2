//! Files that change or resist: `O_DIRECT` on odd sizes, truncated sources, sink errors,
//! caller staging, progress, merged reads.

use super::*;

#[test]
fn direct_reads_handle_a_file_whose_size_is_not_a_block_multiple() {
    let dir = disk_dir();
    let path = dir.path().join("odd.safetensors");
    // Odd sizes everywhere: header, tensors, and the file's end mid-block.
    let tensors = vec![
        ("a".to_string(), DType::U8, vec![4099], pattern(4099, 1)),
        (
            "b".to_string(),
            DType::F32,
            vec![3, 1001],
            pattern(12012, 2),
        ),
        ("c".to_string(), DType::U8, vec![77, 13], pattern(1001, 3)),
    ];
    write_safetensors(&path, &tensors);
    let len = std::fs::metadata(&path).unwrap().len();
    assert_ne!(len % 4096, 0);
    let loader = Loader::open(&path).unwrap();
    let refs = reference(&path);
    let reqs = all_requests(&refs);
    for threads in [1, 4] {
        let opts = LoadOptions::default()
            .method(Method::Direct)
            .threads(threads)
            .chunk_size(4096);
        let sizes: Vec<usize> = reqs
            .iter()
            .map(|r| loader.output(r).unwrap().nbytes as usize)
            .collect();
        let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
        let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let report = loader.load(&reqs, &mut dsts, &opts).unwrap();
        if report.direct_refused {
            eprintln!(
                "note: the filesystem under {} refuses O_DIRECT; the loads fell back to \
                 buffered reads",
                dir.path().display()
            );
        } else {
            assert!(report.direct_bytes > 0, "{report:?}");
        }
        for (r, g) in reqs.iter().zip(&bufs) {
            assert!(*g == expected(&refs, r), "{r:?}");
        }
    }
}

#[test]
fn a_source_truncated_before_the_load_is_an_error_naming_it() {
    let dir = disk_dir();
    let path = dir.path().join("t.safetensors");
    write_safetensors(
        &path,
        &[(
            "x".to_string(),
            DType::U8,
            vec![100_000],
            pattern(100_000, 4),
        )],
    );
    let loader = Loader::open(&path).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(50_000).unwrap();
    let mut out = vec![0x11u8; 100_000];
    for method in [Method::Buffered, Method::Direct] {
        let opts = LoadOptions::default().method(method);
        let err = loader
            .load(&[Request::new("x")], &mut [&mut out[..]], &opts)
            .unwrap_err();
        assert!(err.to_string().contains("t.safetensors"), "{err}");
        assert_eq!(err.array_name(), Some("x"));
        assert!(
            out.iter().all(|&b| b == 0x11),
            "bytes written before the check"
        );
    }
}

#[test]
fn a_source_truncated_during_the_load_is_an_error_not_a_signal() {
    let dir = disk_dir();
    let path = dir.path().join("t.safetensors");
    write_safetensors(
        &path,
        &[(
            "x".to_string(),
            DType::U8,
            vec![1 << 20],
            pattern(1 << 20, 5),
        )],
    );
    for method in [Method::Buffered, Method::Direct] {
        let loader = Loader::open(&path).unwrap();
        // One worker, small chunks: the sink truncates the file on its first chunk, so the
        // next read finds the file short.
        let opts = LoadOptions::default().method(method).threads(1);
        let calls = Mutex::new(0);
        let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> {
            let mut c = calls.lock().unwrap();
            if *c == 0 {
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(4096).unwrap();
            }
            *c += 1;
            Ok(())
        };
        let err = loader
            .load_to_sink(&[Request::new("x")], Staging::Size(64 << 10), &sink, &opts)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(*calls.lock().unwrap(), 1);
        write_safetensors(
            &path,
            &[(
                "x".to_string(),
                DType::U8,
                vec![1 << 20],
                pattern(1 << 20, 5),
            )],
        );
    }
}

#[test]
fn a_sink_error_stops_the_load_and_names_the_request() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> { Err("device full".into()) };
    let err = loader
        .load_to_sink(
            &[Request::new("lm_head.weight")],
            Staging::Size(4096),
            &sink,
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("device full"), "{err}");
    assert_eq!(err.array_name(), Some("lm_head.weight"));
}

#[test]
fn caller_staging_buffers_bound_the_chunks_and_the_workers() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let refs = reference(&model);
    let reqs: Vec<Request> = refs.keys().map(Request::new).collect();
    let mut b1 = vec![0u8; 8192];
    let mut b2 = vec![0u8; 5000];
    let (p1, p2) = (b1.as_ptr() as usize, b2.as_ptr() as usize);
    let got: Vec<Mutex<Vec<u8>>> = reqs
        .iter()
        .map(|r| Mutex::new(vec![0; loader.output(r).unwrap().nbytes as usize]))
        .collect();
    let sink = |req: usize, off: u64, data: &[u8]| -> Result<(), String> {
        let p = data.as_ptr() as usize;
        assert!(p == p1 || p == p2, "data not in a caller buffer");
        assert!(data.len() <= 5000);
        got[req].lock().unwrap()[off as usize..off as usize + data.len()].copy_from_slice(data);
        Ok(())
    };
    let report = loader
        .load_to_sink(
            &reqs,
            Staging::Buffers(vec![&mut b1[..], &mut b2[..]]),
            &sink,
            &LoadOptions::default().threads(8),
        )
        .unwrap();
    assert_eq!(report.threads, 2);
    for (r, g) in reqs.iter().zip(got) {
        assert_eq!(g.into_inner().unwrap(), expected(&refs, r), "{r:?}");
    }
}

#[test]
fn progress_reaches_the_total() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = LoadOptions::default()
        .chunk_size(4096)
        .progress(Some(std::sync::Arc::new(move |d, t| {
            s2.lock().unwrap().push((d, t))
        })));
    let reqs: Vec<Request> = loader
        .tensors()
        .iter()
        .map(|t| Request::new(&t.name))
        .collect();
    let out = load_all(&loader, &reqs, &opts);
    let total: u64 = out.iter().map(|o| o.len() as u64).sum();
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 1);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(*seen.last().unwrap(), (total, total));
}

#[test]
fn neighbouring_tensors_into_one_arena_are_merged_into_few_reads() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let refs = reference(&model);
    // File order, one arena laid out like the file's data section.
    let mut order: Vec<&npkio::load::LoadTensor> = loader.tensors().iter().collect();
    let ck = Checkpoint::open(&model).unwrap();
    let offsets: HashMap<String, u64> = ck
        .infos()
        .map(|t| (t.name.clone(), t.data_offsets.0))
        .collect();
    order.sort_by_key(|t| offsets[&t.name]);
    let total: u64 = order.iter().map(|t| t.nbytes).sum();
    let mut arena = vec![0u8; total as usize];
    let mut rest = &mut arena[..];
    let mut dsts = Vec::new();
    for t in &order {
        let (a, b) = rest.split_at_mut(t.nbytes as usize);
        dsts.push(a);
        rest = b;
    }
    let reqs: Vec<Request> = order.iter().map(|t| Request::new(&t.name)).collect();
    let report = loader
        .load(&reqs, &mut dsts, &LoadOptions::default())
        .unwrap();
    // 8 MiB chunks: one task per 8 MiB of data, not one per tensor.
    assert!(
        report.tasks <= (total as usize).div_ceil(8 << 20) + 1,
        "{report:?}"
    );
    assert!(report.tasks < reqs.len());
    let mut pos = 0;
    for t in &order {
        assert_eq!(
            arena[pos..pos + t.nbytes as usize],
            refs[&t.name].2[..],
            "{}",
            t.name
        );
        pos += t.nbytes as usize;
    }
}
