//! What opening a NumPack store of many arrays and reading every one costs: the time of
//! `NumPack::open` and of a view of each array (each one a lazy open of its data file).
//!
//! ```sh
//! cargo run --release --example store_open_bench -- [ARRAYS] [RUNS] [DIR]
//! ```
//!
//! Writes (once; reused when it has the right number of arrays) a store of `ARRAYS`
//! (default 18000) float32 arrays of 64 values in `DIR` (default `target/store-open-bench`),
//! then for `RUNS` runs (default 15) times the open and the reads, and prints the medians;
//! then the reads through a handle opened before another writer replaced one array.

use std::time::Instant;

use npkio::{ArrayInput, DType, NumPack};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arrays: usize = args.first().map_or(18_000, |a| a.parse().expect("ARRAYS"));
    let runs: usize = args.get(1).map_or(15, |a| a.parse().expect("RUNS"));
    let dir = std::path::PathBuf::from(
        args.get(2)
            .map_or("target/store-open-bench", String::as_str),
    );
    if NumPack::open(&dir).map(|s| s.len()).ok() != Some(arrays) {
        let _ = std::fs::remove_dir_all(&dir);
        let data: Vec<u8> = (0..64u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let names: Vec<String> = (0..arrays).map(|i| format!("layer.{i}.weight")).collect();
        let inputs: Vec<ArrayInput<'_>> = names
            .iter()
            .map(|n| ArrayInput {
                name: n,
                dtype: DType::F32,
                shape: &[64],
                data: &data,
            })
            .collect();
        NumPack::create(&dir, false).unwrap().save(&inputs).unwrap();
    }
    let (mut opens, mut reads, mut stale) = (Vec::new(), Vec::new(), Vec::new());
    let data: Vec<u8> = (0..64u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
    for _ in 0..runs {
        let t = Instant::now();
        let store = NumPack::open(&dir).unwrap();
        opens.push(t.elapsed().as_secs_f64() * 1e3);
        let names: Vec<String> = store.names().into_iter().map(str::to_string).collect();
        let t = Instant::now();
        let mut sum = 0u64;
        for n in &names {
            sum += store.view(n).unwrap().data.len() as u64;
        }
        reads.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(sum, arrays as u64 * 256);
    }
    for _ in 0..runs {
        // Reading every array through a handle opened before another writer replaced one
        // of them (with the same dtype and shape): the others read as the store is now.
        let store = NumPack::open(&dir).unwrap();
        let names: Vec<String> = store.names().into_iter().map(str::to_string).collect();
        let one = ArrayInput {
            name: &names[0],
            dtype: DType::F32,
            shape: &[64],
            data: &data,
        };
        NumPack::open(&dir).unwrap().save(&[one]).unwrap();
        let t = Instant::now();
        let read: usize = names
            .iter()
            .map(|n| store.view(n).unwrap().data.len())
            .sum();
        stale.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(read, arrays * 256);
    }
    println!(
        "{arrays} arrays, {runs} runs: open median {:.1} ms, reading all median {:.1} ms",
        median(opens),
        median(reads)
    );
    println!(
        "reading all through a handle opened before another writer's change: median {:.1} ms",
        median(stale)
    );
}
