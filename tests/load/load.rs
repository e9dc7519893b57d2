//! Every request kind on every fixture, tensor-parallel halves, and invalid requests
//! refused with the destinations untouched.

use super::*;

#[test]
fn every_request_kind_on_every_fixture_matches_the_view_sliced_by_hand() {
    for path in fixture_paths() {
        let refs = reference(&path);
        let loader = Loader::open(&path).unwrap();
        assert_eq!(loader.tensors().len(), refs.len(), "{}", path.display());
        let reqs = all_requests(&refs);
        for opts in methods() {
            let got = load_all(&loader, &reqs, &opts);
            for (r, g) in reqs.iter().zip(&got) {
                assert!(
                    *g == expected(&refs, r),
                    "{}: {r:?} with {opts:?}",
                    path.display()
                );
            }
        }
        for staging in [4096, 1 << 20] {
            let got = load_sink(&loader, &reqs, staging, &LoadOptions::default());
            for (r, g) in reqs.iter().zip(&got) {
                assert!(*g == expected(&refs, r), "{}: sink {r:?}", path.display());
            }
        }
    }
}

#[test]
fn tensor_parallel_halves_join_into_the_whole_tensor() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let refs = reference(&model);
    for (name, (dtype, shape, data)) in &refs {
        if shape.len() != 2 {
            continue;
        }
        let halves = |dim| {
            let reqs = [
                Request::new(name).shard(dim, 0, 2),
                Request::new(name).shard(dim, 1, 2),
            ];
            load_all(&loader, &reqs, &LoadOptions::default())
        };
        let rows = halves(0);
        assert_eq!([&rows[0][..], &rows[1][..]].concat(), *data, "{name} dim 0");
        let cols = halves(1);
        let e = (dtype.bits() / 8) as usize;
        let (n, m) = (shape[0] as usize, shape[1] as usize);
        let (m0, m1) = (cols[0].len() / n / e, cols[1].len() / n / e);
        assert_eq!(m0 + m1, m);
        let mut joined = Vec::new();
        for r in 0..n {
            joined.extend_from_slice(&cols[0][r * m0 * e..(r + 1) * m0 * e]);
            joined.extend_from_slice(&cols[1][r * m1 * e..(r + 1) * m1 * e]);
        }
        assert_eq!(joined, *data, "{name} dim 1");
    }
}

// ---------------------------------------------------------------------------------------
// Invalid requests

#[test]
fn every_invalid_request_is_refused_before_any_destination_byte_changes() {
    let path = common::fixtures().join("safetensors/with_metadata.safetensors");
    let loader = Loader::open(&path).unwrap();
    let w = loader.tensor("encoder.weight").unwrap().clone(); // F32 [32, 16]
    let good = Request::new("encoder.weight");
    let need = w.nbytes as usize;
    let cases: Vec<(Request, usize, ErrorKind, &str)> = vec![
        (
            Request::new("no.such"),
            need,
            ErrorKind::InvalidArgument,
            "no such tensor",
        ),
        (
            good.clone().slice(2, 0, 1),
            need,
            ErrorKind::InvalidArgument,
            "dimension 2",
        ),
        (
            good.clone().slice(0, 5, 33),
            need,
            ErrorKind::InvalidArgument,
            "out of range",
        ),
        (
            good.clone().slice(1, 9, 3),
            need,
            ErrorKind::InvalidArgument,
            "out of range",
        ),
        (
            good.clone().shard(0, 2, 2),
            need,
            ErrorKind::InvalidArgument,
            "not a valid shard",
        ),
        (
            good.clone().shard(0, 0, 0),
            need,
            ErrorKind::InvalidArgument,
            "not a valid shard",
        ),
        (
            good.clone(),
            need - 1,
            ErrorKind::InvalidArgument,
            "destination holds",
        ),
        (
            good.clone().to(DType::I32),
            need,
            ErrorKind::Unsupported,
            "cannot convert",
        ),
        (
            good.clone().to(DType::F16),
            need / 2 - 1,
            ErrorKind::InvalidArgument,
            "destination",
        ),
    ];
    for (bad, cap, kind, text) in &cases {
        // A good request first, the bad one second: neither destination may change.
        let reqs = [good.clone(), bad.clone()];
        let mut a = vec![0x5Au8; need];
        let mut b = vec![0x5Au8; *cap];
        let err = loader
            .load(
                &reqs,
                &mut [&mut a[..], &mut b[..]],
                &LoadOptions::default(),
            )
            .unwrap_err();
        assert_eq!(err.kind(), *kind, "{bad:?}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("request 1") && msg.contains(text),
            "{bad:?}: {msg}"
        );
        assert!(msg.contains(&bad.name), "{msg}");
        assert!(
            a.iter().chain(&b).all(|&x| x == 0x5A),
            "{bad:?} wrote bytes"
        );
    }
    // All at once: one error naming every bad request.
    let reqs: Vec<Request> = std::iter::once(good.clone())
        .chain(cases.iter().map(|c| c.0.clone()))
        .collect();
    let mut bufs: Vec<Vec<u8>> = std::iter::once(need)
        .chain(cases.iter().map(|c| c.1))
        .map(|n| vec![0x5A; n])
        .collect();
    let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let err = loader
        .load(&reqs, &mut dsts, &LoadOptions::default())
        .unwrap_err();
    let msg = err.to_string();
    for i in 1..reqs.len() {
        assert!(
            msg.contains(&format!("request {i} ")),
            "request {i} not named: {msg}"
        );
    }
    assert!(!msg.contains("request 0 "), "{msg}");
    assert!(bufs.iter().flatten().all(|&x| x == 0x5A));
    // Sinks validate the same way and never call the sink.
    let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> { panic!("sink called") };
    let err = loader
        .load_to_sink(&reqs, Staging::Size(4096), &sink, &LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("request 1 "));
    // A destination count that differs from the request count.
    let mut a = vec![0u8; need];
    let err = loader
        .load(
            &[good.clone(), good],
            &mut [&mut a[..]],
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn sub_byte_slices_off_byte_boundaries_are_unsupported() {
    let path = common::fixtures().join("safetensors/all_dtypes.safetensors");
    let loader = Loader::open(&path).unwrap();
    for t in loader.tensors() {
        if t.dtype.bits() % 8 == 0 || t.shape.len() < 2 {
            continue;
        }
        let last = t.shape.len() - 1;
        let inner_bits = t.dtype.bits() as u64; // one element past the last dimension
        if (t.shape[last] * inner_bits) % 8 == 0 && t.shape[last] >= 2 {
            let err = loader
                .output(&Request::new(&t.name).slice(last, 0, 1))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        }
    }
}
