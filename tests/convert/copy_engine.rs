//! The copy engine against a plain reference copy: chunk boundaries, every method, thread
//! counts, truncated sources, and random extent layouts.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use npkio::internals::copy::{
    copy_extents, copy_extents_from, copy_extents_into, copy_from_memory, copy_from_memory_into,
    default_threads, preallocate, CopyMethod, CopyOptions, Extent, NewFiles, Side, SourceFiles,
    BOUNCE_SIZE, DEFAULT_CHUNK_SIZE, NO_EXTENT,
};
use proptest::prelude::*;

const METHODS: [CopyMethod; 5] = [
    CopyMethod::Auto,
    CopyMethod::Mmap,
    CopyMethod::MmapSource,
    CopyMethod::ReadWrite,
    CopyMethod::CopyFileRange,
];

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn dst_file(len: u64) -> File {
    let f = tempfile::tempfile().unwrap();
    preallocate(&f, len).unwrap();
    f
}

fn contents(f: &File) -> Vec<u8> {
    let mut f = f.try_clone().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

/// The obviously correct copy the engine must agree with.
fn reference(srcs: &[Vec<u8>], dst_lens: &[u64], extents: &[Extent]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = dst_lens.iter().map(|&l| vec![0u8; l as usize]).collect();
    for e in extents.iter().filter(|e| e.len > 0) {
        let (s, d, n) = (e.src_offset as usize, e.dst_offset as usize, e.len as usize);
        out[e.dst][d..d + n].copy_from_slice(&srcs[e.src][s..s + n]);
    }
    out
}

fn opts(method: CopyMethod, threads: usize, chunk_size: usize) -> CopyOptions {
    CopyOptions {
        chunk_size,
        threads,
        method,
    }
}

/// Copies with every method, thread counts 1 and 4, from files and from memory, into open
/// files and into files created on first use, and from files opened on first use (keeping
/// one or many open), and compares each destination with the reference; also checks that
/// progress adds up to the total.
fn check_layout(srcs: &[Vec<u8>], dst_lens: &[u64], extents: &[Extent], chunk: usize) {
    let want = reference(srcs, dst_lens, extents);
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let src_files: Vec<File> = srcs.iter().map(|s| file_with(s)).collect();
    let src_refs: Vec<&File> = src_files.iter().collect();
    let mem_refs: Vec<&[u8]> = srcs.iter().map(|s| s.as_slice()).collect();
    for method in METHODS {
        for threads in [1, 4] {
            for from_memory in [false, true] {
                let label = format!("{method:?} threads={threads} memory={from_memory}");
                let done = AtomicU64::new(0);
                let progress = |n: u64| {
                    done.fetch_add(n, Ordering::Relaxed);
                };
                let o = opts(method, threads, chunk);
                let dsts: Vec<File> = dst_lens.iter().map(|&l| dst_file(l)).collect();
                let dst_refs: Vec<&File> = dsts.iter().collect();
                let r = if from_memory {
                    copy_from_memory(&mem_refs, &dst_refs, extents, &o, Some(&progress))
                } else {
                    copy_extents(&src_refs, &dst_refs, extents, &o, Some(&progress))
                };
                r.unwrap_or_else(|e| panic!("{label}: {e}"));
                for (i, d) in dsts.iter().enumerate() {
                    assert!(
                        contents(d) == want[i],
                        "{label} chunk={chunk}: destination {i} differs"
                    );
                }
                assert_eq!(done.load(Ordering::Relaxed), total, "{label}: progress");

                // From sources opened on first use: every source used is opened, and each
                // is closed after its last use (no descriptor is left to the caller).
                if !from_memory {
                    for limit in [1, 64] {
                        let opens = AtomicU64::new(0);
                        let files = SourceFiles::new(srcs.len(), limit, |i| {
                            opens.fetch_add(1, Ordering::Relaxed);
                            src_files[i].try_clone()
                        });
                        let dsts: Vec<File> = dst_lens.iter().map(|&l| dst_file(l)).collect();
                        let dst_refs: Vec<&File> = dsts.iter().collect();
                        copy_extents_from(&files, &dst_refs, extents, &o, None)
                            .unwrap_or_else(|e| panic!("{label}, sources on use: {e}"));
                        for (i, d) in dsts.iter().enumerate() {
                            assert!(
                                contents(d) == want[i],
                                "{label} chunk={chunk} limit={limit}: destination {i} differs"
                            );
                        }
                        let used = (0..srcs.len())
                            .filter(|&s| extents.iter().any(|e| e.src == s && e.len > 0))
                            .count() as u64;
                        assert!(opens.load(Ordering::Relaxed) >= used, "{label}");
                    }
                }

                // The same into files the workers create, each exactly once.
                let created: Vec<AtomicU64> = dst_lens.iter().map(|_| AtomicU64::new(0)).collect();
                let new_files = NewFiles::new(dst_lens.len(), |i| {
                    created[i].fetch_add(1, Ordering::Relaxed);
                    Ok(dst_file(dst_lens[i]))
                });
                let r = if from_memory {
                    copy_from_memory_into(&mem_refs, &new_files, extents, &o, None)
                } else {
                    copy_extents_into(&src_refs, &new_files, extents, &o, None)
                };
                r.unwrap_or_else(|e| panic!("{label}, created on first use: {e}"));
                for (i, f) in new_files.into_files().into_iter().enumerate() {
                    let needed = extents.iter().any(|e| e.dst == i && e.len > 0);
                    assert_eq!(created[i].load(Ordering::Relaxed), u64::from(needed));
                    match f {
                        Some(f) => assert!(
                            contents(&f) == want[i],
                            "{label} chunk={chunk}: created destination {i} differs"
                        ),
                        None => assert!(!needed, "{label}: destination {i} was not created"),
                    }
                }
            }
        }
    }
}

fn ext(src: usize, src_offset: u64, dst: usize, dst_offset: u64, len: u64) -> Extent {
    Extent {
        src,
        src_offset,
        dst,
        dst_offset,
        len,
    }
}

const PAGE: u64 = 4096;
const CHUNK: usize = 64 << 10;

#[test]
fn extents_smaller_than_a_page_are_copied() {
    let src = pattern(10_000, 1);
    let extents = [
        ext(0, 3, 0, 5, 100),
        ext(0, 4000, 0, 200, 1),
        ext(0, 9000, 0, 4095, 2),
    ];
    check_layout(&[src], &[PAGE * 2], &extents, CHUNK);
}

#[test]
fn exactly_one_chunk_and_one_chunk_plus_one_byte() {
    let c = CHUNK as u64;
    let src = pattern(3 * CHUNK + 10, 2);
    let extents = [ext(0, 0, 0, 0, c), ext(0, 7, 0, c, c + 1)];
    check_layout(&[src], &[3 * c], &extents, CHUNK);
}

#[test]
fn unaligned_destination_offsets_span_chunk_boundaries() {
    let c = CHUNK as u64;
    let src = pattern(4 * CHUNK, 3);
    let extents = [
        ext(0, 1, 0, 1, 3 * c - 5),
        ext(0, 11, 0, 3 * c + 100, c - 200),
    ];
    check_layout(&[src], &[4 * c + 10], &extents, CHUNK);
}

#[test]
fn chunk_size_smaller_than_a_page_still_copies() {
    let src = pattern(20_000, 4);
    let extents = [ext(0, 13, 0, 4093, 15_000)];
    check_layout(&[src], &[20_000], &extents, 1000);
}

#[test]
fn empty_extents_do_nothing_even_with_bad_indices() {
    let src = pattern(100, 5);
    let extents = [ext(7, u64::MAX, 9, u64::MAX, 0), ext(0, 0, 0, 10, 50)];
    check_layout(&[src], &[100], &extents, CHUNK);
    let d = dst_file(8);
    copy_extents(&[], &[&d], &[], &CopyOptions::default(), None).unwrap();
    assert_eq!(contents(&d), vec![0u8; 8]);
}

#[test]
fn many_small_extents() {
    let src = pattern(64 << 10, 6);
    let extents: Vec<Extent> = (0..500u64)
        .map(|i| ext(0, (i * 97) % 60_000, 0, i * 131, 1 + i % 120))
        .collect();
    check_layout(&[src], &[500 * 131], &extents, CHUNK);
}

/// Small extents laid end to end (a SafeTensors file of many small tensors) are gathered into
/// large writes: every byte lands, with chunks that run across many extents and across piece
/// boundaries of the buffer, whatever the sources' order.
#[test]
fn small_extents_end_to_end_are_gathered() {
    let srcs: Vec<Vec<u8>> = (0..300)
        .map(|i| pattern(7_000 + i * 13, i as u64))
        .collect();
    let mut at = 5u64;
    let mut extents = Vec::new();
    for (k, i) in (0..300).chain(0..300).enumerate() {
        let len = srcs[i].len() as u64 / 2 - (k % 3) as u64;
        let src_offset = if k < 300 { 0 } else { srcs[i].len() as u64 / 2 };
        extents.push(ext(i, src_offset, 0, at, len));
        at += len;
    }
    let total = at;
    assert!(total > 2 * BOUNCE_SIZE as u64);
    for chunk in [CHUNK, 1 << 20, DEFAULT_CHUNK_SIZE] {
        check_layout(&srcs, &[total], &extents, chunk);
    }
}

/// In a gathered chunk, the extent whose source is short is the one reported, and nothing
/// is read past it.
#[test]
fn a_short_source_inside_a_gathered_chunk_names_its_extent() {
    let srcs: Vec<Vec<u8>> = (0..50).map(|i| pattern(3_000, i)).collect();
    let files: Vec<File> = srcs.iter().map(|s| file_with(s)).collect();
    // Source 17 ends 100 bytes early.
    files[17].set_len(2_900).unwrap();
    let refs: Vec<&File> = files.iter().collect();
    let extents: Vec<Extent> = (0..50)
        .map(|i| ext(i, 0, 0, i as u64 * 3_000, 3_000))
        .collect();
    for threads in [1, 2, 4] {
        let d = dst_file(150_000);
        let o = opts(CopyMethod::Auto, threads, DEFAULT_CHUNK_SIZE);
        let err = copy_extents(&refs, &[&d], &extents, &o, None).expect_err("short source");
        assert_eq!(
            (err.extent, err.side),
            (17, Side::Read),
            "threads={threads}"
        );
        let on_use = SourceFiles::new(50, 4, |i| files[i].try_clone());
        let err = copy_extents_from(&on_use, &[&d], &extents, &o, None).expect_err("short");
        assert_eq!(
            (err.extent, err.side),
            (17, Side::Read),
            "threads={threads}"
        );
        assert_eq!(err.source.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}

/// Small extents end to end in one source, each to its own destination (an import of many
/// small tensors) are read together and scattered: every byte lands, every destination
/// created once, with runs longer than a buffer and extents too large to be scattered
/// between them.
#[test]
fn small_extents_end_to_end_in_a_source_are_scattered() {
    let sizes: Vec<u64> = (0..40u64)
        .map(|i| match i % 20 {
            7 => 300_000,
            _ => 1 + i * 1937 % 120_000,
        })
        .collect();
    let total: u64 = sizes.iter().sum();
    let src = pattern(total as usize + 100, 77);
    let mut at = 100u64;
    let extents: Vec<Extent> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let e = ext(0, at, i, i as u64 % 3, len);
            at += len;
            e
        })
        .collect();
    let dst_lens: Vec<u64> = extents.iter().map(|e| e.dst_offset + e.len).collect();
    for chunk in [4096, DEFAULT_CHUNK_SIZE] {
        check_layout(std::slice::from_ref(&src), &dst_lens, &extents, chunk);
    }
}

/// In a scattered chunk, the extent whose bytes the source does not hold is the one
/// reported, with the source's end and that extent's end; the extents before it were
/// written, none after it.
#[test]
fn a_short_source_inside_a_scattered_chunk_names_its_extent() {
    let src = pattern(50 * 1000, 3);
    let s = file_with(&src[..23_500]);
    let extents: Vec<Extent> = (0..50)
        .map(|i| ext(0, i * 1000, i as usize, 0, 1000))
        .collect();
    for threads in [1, 2, 4] {
        let o = opts(CopyMethod::Auto, threads, DEFAULT_CHUNK_SIZE);
        let new_files = NewFiles::new(50, |_| tempfile::tempfile());
        let err = copy_extents_into(&[&s], &new_files, &extents, &o, None).expect_err("short");
        assert_eq!(
            (err.extent, err.side),
            (23, Side::Read),
            "threads={threads}"
        );
        assert_eq!(err.source.kind(), std::io::ErrorKind::UnexpectedEof);
        let msg = err.source.to_string();
        assert!(msg.contains("23500") && msg.contains("24000"), "{msg}");
        let files = new_files.into_files();
        assert!(files[23..].iter().all(Option::is_none), "threads={threads}");
        let on_use = SourceFiles::new(1, 1, |_| s.try_clone());
        let d = dst_file(1000);
        let one_dst: Vec<Extent> = (0..50).map(|i| ext(0, i * 1000, 0, 0, 1000)).collect();
        let err = copy_extents_from(&on_use, &[&d], &one_dst, &o, None).expect_err("short");
        assert_eq!(
            (err.extent, err.side),
            (23, Side::Read),
            "threads={threads}"
        );
    }
}

#[test]
fn multiple_sources_and_destinations() {
    let srcs = vec![pattern(50_000, 7), pattern(300_000, 8), pattern(1, 9)];
    let extents = [
        ext(1, 0, 2, 0, 300_000),
        ext(0, 10, 0, 4096, 40_000),
        ext(2, 0, 1, 7, 1),
        ext(0, 0, 1, 8, 50_000),
        ext(1, 5, 0, 50_000, 70_000),
    ];
    check_layout(&srcs, &[120_000, 50_008, 300_000], &extents, CHUNK);
}

#[test]
fn default_chunk_size_copies_a_multi_chunk_extent() {
    let n = DEFAULT_CHUNK_SIZE * 2 + 12_345;
    let src = pattern(n, 10);
    let extents = [ext(0, 0, 0, 100, n as u64)];
    check_layout(&[src], &[n as u64 + 100], &extents, DEFAULT_CHUNK_SIZE);
}

#[test]
fn destination_shorter_than_the_extent_still_gets_the_bytes() {
    // Not preallocated: mapped methods must not map past the end.
    let src = pattern(100_000, 11);
    let s = file_with(&src);
    for method in METHODS {
        let d = tempfile::tempfile().unwrap();
        let e = [ext(0, 0, 0, 10, 100_000)];
        copy_extents(&[&s], &[&d], &e, &opts(method, 2, CHUNK), None).unwrap();
        let got = contents(&d);
        assert_eq!(&got[10..], &src[..], "{method:?}");
        copy_from_memory(&[&src], &[&d], &e, &opts(method, 2, CHUNK), None).unwrap();
        assert_eq!(&contents(&d)[10..], &src[..], "{method:?}");
    }
}

#[test]
fn source_shorter_than_the_extent_is_a_read_eof_error() {
    let src = pattern(10_000, 12);
    let s = file_with(&src);
    for method in METHODS {
        for threads in [1, 4] {
            let d = dst_file(20_000);
            let e = [ext(0, 0, 0, 0, 5000), ext(0, 5000, 0, 5000, 6000)];
            let err = copy_extents(&[&s], &[&d], &e, &opts(method, threads, 4096), None)
                .expect_err("short source");
            assert_eq!(err.extent, 1, "{method:?}");
            assert_eq!(err.side, Side::Read, "{method:?}");
            assert_eq!(err.source.kind(), std::io::ErrorKind::UnexpectedEof);
            let err = copy_from_memory(&[&src], &[&d], &e, &opts(method, threads, 4096), None)
                .expect_err("short slice");
            assert_eq!((err.extent, err.side), (1, Side::Read));
            assert_eq!(err.source.kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }
}

#[test]
fn source_truncated_during_the_copy_is_a_read_error_not_a_signal() {
    // The source shrinks after the first chunk is done, as if another process truncated it
    // (the up-front length check has passed by then).
    let n = 1 << 20;
    let src = pattern(n, 13);
    for method in METHODS {
        for threads in [1, 4] {
            let s = file_with(&src);
            let d = dst_file(n as u64);
            let truncator = s.try_clone().unwrap();
            let once = std::sync::Once::new();
            let progress = |_: u64| {
                once.call_once(|| truncator.set_len(4096).unwrap());
            };
            let e = [ext(0, 0, 0, 0, n as u64)];
            let err = copy_extents(
                &[&s],
                &[&d],
                &e,
                &opts(method, threads, 8192),
                Some(&progress),
            )
            .expect_err("truncated source");
            assert_eq!(err.side, Side::Read, "{method:?} t{threads}: {err}");
            assert_eq!(err.extent, 0);
            assert_eq!(
                err.source.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "{method:?} t{threads}: {err}"
            );
        }
    }
}

#[test]
fn a_destination_that_cannot_be_created_is_a_write_error_of_its_extent() {
    let src = pattern(300_000, 14);
    let s = file_with(&src);
    let e = [
        ext(0, 0, 0, 0, 100_000),
        ext(0, 100_000, 1, 0, 100_000),
        ext(0, 200_000, 2, 0, 100_000),
    ];
    for method in METHODS {
        for threads in [1, 4] {
            let new_files = NewFiles::new(3, |i| {
                if i == 1 {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "creating destination 1: refused",
                    ))
                } else {
                    Ok(dst_file(100_000))
                }
            });
            let err = copy_extents_into(&[&s], &new_files, &e, &opts(method, threads, 8192), None)
                .expect_err("destination 1 cannot be created");
            assert_eq!(
                (err.extent, err.side),
                (1, Side::Write),
                "{method:?} t{threads}"
            );
            assert_eq!(err.source.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(err.to_string().contains("refused"), "{err}");
            assert!(new_files.into_files()[1].is_none());
        }
    }
}

#[test]
fn invalid_requests_are_invalid_input_errors() {
    let s = file_with(&[1, 2, 3]);
    let d = dst_file(3);
    let ok = ext(0, 0, 0, 0, 3);
    let cases = [
        (opts(CopyMethod::Auto, 1, 0), ok, NO_EXTENT),
        (CopyOptions::default(), ext(1, 0, 0, 0, 3), 0),
        (CopyOptions::default(), ext(0, 0, 1, 0, 3), 0),
        (CopyOptions::default(), ext(0, u64::MAX, 0, 0, 3), 0),
        (CopyOptions::default(), ext(0, 0, 0, u64::MAX - 1, 3), 0),
    ];
    for (o, e, at) in cases {
        let err = copy_extents(&[&s], &[&d], &[e], &o, None).expect_err("invalid");
        assert_eq!(err.source.kind(), std::io::ErrorKind::InvalidInput, "{e:?}");
        assert_eq!(err.extent, at);
        let err = copy_from_memory(&[&[1, 2, 3]], &[&d], &[e], &o, None).expect_err("invalid");
        assert_eq!(err.source.kind(), std::io::ErrorKind::InvalidInput, "{e:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn preallocate_sets_the_exact_length() {
    let f = tempfile::tempfile().unwrap();
    preallocate(&f, 123_457).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 123_457);
    preallocate(&f, 10).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10);
    preallocate(&f, 0).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
}

#[test]
fn defaults() {
    let o = CopyOptions::default();
    assert_eq!(o.chunk_size, DEFAULT_CHUNK_SIZE);
    assert_eq!(o.threads, 0);
    assert_eq!(o.method, CopyMethod::Auto);
    assert!((1..=2).contains(&default_threads()));
}

/// Random extents that do not overlap in their destinations.
fn layout() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u64>, Vec<Extent>, usize)> {
    let srcs = prop::collection::vec(1usize..40_000, 1..4);
    let dsts = 1usize..4;
    let pieces = prop::collection::vec(
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            // Mostly end to end, as the tensors of a SafeTensors file are.
            prop_oneof![3 => Just(0u64), 1 => 0u64..300],
            prop_oneof![1 => 0u64..64, 2 => 0u64..20_000],
            // Often continuing the source where the extent before left it.
            any::<bool>(),
        ),
        0..40,
    );
    let chunk = prop_oneof![Just(1000usize), Just(4096), Just(5000), Just(16384)];
    (srcs, dsts, pieces, chunk).prop_map(|(src_lens, n_dst, pieces, chunk)| {
        let srcs: Vec<Vec<u8>> = src_lens
            .iter()
            .enumerate()
            .map(|(i, &l)| pattern(l, i as u64 + 100))
            .collect();
        let mut cursor = vec![0u64; n_dst];
        let mut extents: Vec<Extent> = Vec::new();
        for (s, d, off, gap, len, follow) in pieces {
            let src = s as usize % srcs.len();
            let dst = d as usize % n_dst;
            let slen = srcs[src].len() as u64;
            let src_offset = match extents.last() {
                Some(p) if follow && p.src == src && p.src_offset + p.len < slen => {
                    p.src_offset + p.len
                }
                _ => off as u64 % slen,
            };
            let len = len.min(slen - src_offset);
            let dst_offset = cursor[dst] + gap;
            cursor[dst] = dst_offset + len;
            extents.push(ext(src, src_offset, dst, dst_offset, len));
        }
        (srcs, cursor, extents, chunk)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_layouts_match_the_reference((srcs, dst_lens, extents, chunk) in layout()) {
        check_layout(&srcs, &dst_lens, &extents, chunk);
    }
}
